// One line per event on stderr: "2026-11-23T10:00:00.123Z LEVEL message".
//
// When stderr is systemd's journal (JOURNAL_STREAM names stderr's device and inode,
// sd-daemon(3)), a line is "<N>LEVEL message" instead: the <N> syslog priority lets
// `journalctl -p warning` select by level, and the journal adds the one timestamp.
#pragma once

#include <fmt/core.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace stickyd {

enum class LogLevel { trace, debug, info, warn, error };

std::optional<LogLevel> parse_log_level(std::string_view text);
std::string_view to_string(LogLevel level);

// The syslog priority journald reads from a "<N>" prefix: 7 debug (and trace),
// 6 info, 4 warning, 3 error.
int syslog_priority(LogLevel level);
// Whether JOURNAL_STREAM's value ("DEV:INODE", decimal) names this stderr.
bool is_journal_stream(std::string_view journal_stream, uint64_t dev, uint64_t inode);
// One whole line, newline included.
std::string format_line(LogLevel level, std::string_view message,
                        std::chrono::system_clock::time_point now, bool journal);

namespace log {

void set_level(LogLevel level);
LogLevel level();
void write(LogLevel level, std::string_view message);

template <typename... Args>
void at(LogLevel lvl, fmt::format_string<Args...> f, Args&&... args) {
    if (lvl >= level()) write(lvl, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) {
    at(LogLevel::debug, f, std::forward<Args>(args)...);
}
template <typename... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
    at(LogLevel::info, f, std::forward<Args>(args)...);
}
template <typename... Args>
void warn(fmt::format_string<Args...> f, Args&&... args) {
    at(LogLevel::warn, f, std::forward<Args>(args)...);
}
template <typename... Args>
void error(fmt::format_string<Args...> f, Args&&... args) {
    at(LogLevel::error, f, std::forward<Args>(args)...);
}

}  // namespace log
}  // namespace stickyd
