#include "stickyd/log.hpp"

#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <ctime>

namespace stickyd {

namespace {
std::atomic<LogLevel> g_level{LogLevel::info};
}

std::optional<LogLevel> parse_log_level(std::string_view text) {
    if (text == "trace") return LogLevel::trace;
    if (text == "debug") return LogLevel::debug;
    if (text == "info") return LogLevel::info;
    if (text == "warn" || text == "warning") return LogLevel::warn;
    if (text == "error") return LogLevel::error;
    return std::nullopt;
}

std::string_view to_string(LogLevel level) {
    switch (level) {
        case LogLevel::trace:
            return "trace";
        case LogLevel::debug:
            return "debug";
        case LogLevel::info:
            return "info";
        case LogLevel::warn:
            return "warn";
        case LogLevel::error:
            return "error";
    }
    return "?";
}

int syslog_priority(LogLevel level) {
    switch (level) {
        case LogLevel::trace:
        case LogLevel::debug:
            return 7;
        case LogLevel::info:
            return 6;
        case LogLevel::warn:
            return 4;
        case LogLevel::error:
            return 3;
    }
    return 6;
}

bool is_journal_stream(std::string_view value, uint64_t dev, uint64_t inode) {
    const size_t colon = value.find(':');
    if (colon == std::string_view::npos) return false;
    auto number = [](std::string_view text, uint64_t& out) {
        const char* end = text.data() + text.size();
        auto [ptr, ec] = std::from_chars(text.data(), end, out);
        return !text.empty() && ec == std::errc{} && ptr == end;
    };
    uint64_t d = 0;
    uint64_t i = 0;
    return number(value.substr(0, colon), d) && number(value.substr(colon + 1), i) && d == dev &&
           i == inode;
}

std::string format_line(LogLevel lvl, std::string_view message,
                        std::chrono::system_clock::time_point now, bool journal) {
    using namespace std::chrono;
    if (journal)
        return fmt::format("<{}>{:<5} {}\n", syslog_priority(lvl), to_string(lvl), message);
    auto secs = system_clock::to_time_t(now);
    auto ms = duration_cast<milliseconds>(now.time_since_epoch()).count() % 1000;
    std::tm tm{};
    gmtime_r(&secs, &tm);
    return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z {:<5} {}\n", tm.tm_year + 1900,
                       tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms,
                       to_string(lvl), message);
}

namespace {

// Decided once: stderr does not change under a running daemon.
bool stderr_is_journal() {
    static const bool journal = [] {
        const char* value = std::getenv("JOURNAL_STREAM");
        struct stat st {};
        if (value == nullptr || ::fstat(STDERR_FILENO, &st) != 0) return false;
        return is_journal_stream(value, st.st_dev, st.st_ino);
    }();
    return journal;
}

}  // namespace

namespace log {

void set_level(LogLevel level) {
    g_level.store(level, std::memory_order_relaxed);
}
LogLevel level() {
    return g_level.load(std::memory_order_relaxed);
}

void write(LogLevel lvl, std::string_view message) {
    // One write(2) per line keeps lines from different threads whole.
    const std::string line =
        format_line(lvl, message, std::chrono::system_clock::now(), stderr_is_journal());
    [[maybe_unused]] auto n = ::write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace log
}  // namespace stickyd
