// One line per event on stderr: "2026-11-23T10:00:00.123Z LEVEL message".
#pragma once

#include <fmt/core.h>

#include <optional>
#include <string_view>

namespace stickyd {

enum class LogLevel { trace, debug, info, warn, error };

std::optional<LogLevel> parse_log_level(std::string_view text);
std::string_view to_string(LogLevel level);

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
