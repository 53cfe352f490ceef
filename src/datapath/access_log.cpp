#include "datapath/access_log.hpp"

#include <fmt/format.h>

namespace stickyd {
namespace {

// logfmt value: bare when it cannot be misread, else a quoted, escaped string.
std::string value(std::string_view v) {
    if (v.empty()) return "-";
    for (char ch : v) {
        if (ch == ' ' || ch == '"' || ch == '=' || ch == '\\' ||
            static_cast<unsigned char>(ch) < 0x20) {
            return fmt::format("{:?}", v);
        }
    }
    return std::string(v);
}

std::string value(const std::optional<SocketAddress>& address) {
    return address ? address->to_string() : "-";
}

}  // namespace

std::string access_line(const AccessRecord& r, std::chrono::steady_clock::time_point now) {
    const double ms = std::chrono::duration<double, std::milli>(now - r.started).count();
    std::string line =
        fmt::format("access listener={} client={}", value(r.listener), r.client.to_string());
    if (r.source) line += fmt::format(" source={}", r.source->to_string());
    line += fmt::format(" group={} target={} addr={} attempts={} up={} down={} ms={:.1f} end={}",
                        value(r.group), value(r.target), value(r.target_address), r.attempts,
                        r.bytes_up, r.bytes_down, ms, value(r.end.empty() ? "closed" : r.end));
    return line;
}

}  // namespace stickyd
