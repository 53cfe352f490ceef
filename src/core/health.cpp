#include "stickyd/health.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>

namespace stickyd {

std::string_view to_string(HealthState state) {
    switch (state) {
        case HealthState::initial:
            return "initial";
        case HealthState::healthy:
            return "healthy";
        case HealthState::unhealthy:
            return "unhealthy";
        case HealthState::draining:
            return "draining";
    }
    return "unknown";
}

namespace {

HealthStep become(HealthRecord record, HealthState state) {
    record.state = state;
    record.streak = 0;
    return {record, state};
}

HealthStep stay(HealthRecord record, unsigned streak) {
    record.streak = streak;
    return {record, std::nullopt};
}

}  // namespace

HealthStep next(const HealthRecord& record, bool passed, const Thresholds& thresholds) {
    // A threshold of 0 would mean "change on no evidence"; treat it as 1.
    const unsigned rise = std::max(thresholds.healthy, 1U);
    const unsigned fall = std::max(thresholds.unhealthy, 1U);
    switch (record.state) {
        case HealthState::initial:
            if (passed) return become(record, HealthState::healthy);
            if (record.streak + 1 >= fall) return become(record, HealthState::unhealthy);
            return stay(record, record.streak + 1);
        case HealthState::healthy:
            if (passed) return stay(record, 0);
            if (record.streak + 1 >= fall) return become(record, HealthState::unhealthy);
            return stay(record, record.streak + 1);
        case HealthState::unhealthy:
            if (!passed) return stay(record, 0);
            if (record.streak + 1 >= rise) return become(record, HealthState::healthy);
            return stay(record, record.streak + 1);
        case HealthState::draining:
            return stay(record, 0);
    }
    return stay(record, record.streak);
}

HealthStep passive_failure(const HealthRecord& record) {
    if (record.state == HealthState::initial || record.state == HealthState::healthy) {
        return become(record, HealthState::unhealthy);
    }
    // Already out of rotation: a passive failure is also evidence against recovery.
    return stay(record, 0);
}

bool routable(const HealthRecord& record) {
    return record.state == HealthState::healthy ||
           (record.state == HealthState::initial && record.routable_while_initial);
}

size_t required_healthy(const MinimumHealthyTargets& minimum, size_t in_service) {
    size_t required = minimum.count;
    if (minimum.percentage) {
        const uint64_t share = (uint64_t{*minimum.percentage} * in_service + 99) / 100;
        required = std::max<size_t>(required, share);
    }
    return required;
}

bool fails_open(const MinimumHealthyTargets& minimum, size_t healthy, size_t in_service) {
    return healthy < in_service && healthy < required_healthy(minimum, in_service);
}

std::string to_string(const MinimumHealthyTargets& minimum) {
    if (!minimum.percentage) return fmt::format("count {}", minimum.count);
    return fmt::format("count {}, percentage {}%", minimum.count, *minimum.percentage);
}

// ---------------------------------------------------------------------------------
// Status line: HTTP-version SP 3DIGIT [SP reason-phrase] (CR)LF

namespace {

StatusLine malformed(std::string_view problem) {
    return {StatusLine::Result::malformed, 0, problem};
}

bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

// The reason phrase: HTAB, SP, VCHAR, obs-text; no other control characters.
bool reason_char_ok(char c) {
    const auto u = static_cast<unsigned char>(c);
    return c == '\t' || u >= 0x20;
}

}  // namespace

StatusLine parse_status_line(std::string_view in) {
    // "HTTP/" then digit '.' digit: check what has arrived, byte by byte.
    constexpr std::string_view kName = "HTTP/";
    const size_t name_len = std::min(in.size(), kName.size());
    if (in.substr(0, name_len) != kName.substr(0, name_len)) {
        return malformed("response does not start with \"HTTP/\"");
    }
    if (in.size() <= kName.size()) return {};
    // Version: 1 digit, '.', 1 digit (RFC 9112).
    if (!is_digit(in[5])) return malformed("bad HTTP version");
    if (in.size() < 7) return {};
    if (in[6] != '.') return malformed("bad HTTP version");
    if (in.size() < 8) return {};
    if (!is_digit(in[7])) return malformed("bad HTTP version");
    if (in.size() < 9) return {};
    if (in[8] != ' ') return malformed("expected a space after the HTTP version");
    // Status code: exactly three digits.
    for (size_t i = 9; i < 12; ++i) {
        if (in.size() <= i) return {};
        if (!is_digit(in[i])) return malformed("status code is not three digits");
    }
    const int code = (in[9] - '0') * 100 + (in[10] - '0') * 10 + (in[11] - '0');
    if (code < 100) return malformed("status code below 100");
    // Then SP reason, or the end of the line straight away.
    for (size_t i = 12; i < in.size(); ++i) {
        const char c = in[i];
        if (c == '\n') return {StatusLine::Result::ok, code, {}};
        if (c == '\r') {
            if (i + 1 == in.size()) return {};
            if (in[i + 1] == '\n') return {StatusLine::Result::ok, code, {}};
            return malformed("CR not followed by LF");
        }
        if (i == 12 && c != ' ') return malformed("status code is not three digits");
        if (!reason_char_ok(c)) return malformed("control character in the reason phrase");
        if (i + 1 >= kMaxStatusLine) return malformed("status line too long");
    }
    if (in.size() >= kMaxStatusLine) return malformed("status line too long");
    return {};
}

// ---------------------------------------------------------------------------------
// Matcher

bool Matcher::matches(int code) const {
    return std::any_of(ranges_.begin(), ranges_.end(),
                       [code](const auto& r) { return code >= r.first && code <= r.second; });
}

namespace {

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

std::variant<int, std::string> parse_code(std::string_view text) {
    int value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (text.empty() || ec != std::errc() || end != text.data() + text.size() ||
        !std::all_of(text.begin(), text.end(), is_digit)) {
        return fmt::format("{:?} is not an HTTP status code", text);
    }
    if (value < kMinMatcherCode || value > kMaxMatcherCode) {
        return fmt::format("code {} is outside {}-{}", value, kMinMatcherCode, kMaxMatcherCode);
    }
    return value;
}

}  // namespace

std::variant<Matcher, std::string> parse_matcher(std::string_view text) {
    constexpr std::string_view kExpected =
        "; expected codes and ranges such as \"200\", \"200-399\" or \"200,202,300-399\"";
    Matcher matcher;
    if (trim(text).empty()) return fmt::format("empty{}", kExpected);
    std::string_view rest = text;
    while (true) {
        const size_t comma = rest.find(',');
        const std::string_view item = trim(rest.substr(0, comma));
        if (item.empty()) return fmt::format("empty entry in {:?}{}", text, kExpected);
        const size_t dash = item.find('-');
        auto low = parse_code(trim(item.substr(0, dash)));
        if (auto* problem = std::get_if<std::string>(&low))
            return *problem + std::string(kExpected);
        int high_code = std::get<int>(low);
        if (dash != std::string_view::npos) {
            auto high = parse_code(trim(item.substr(dash + 1)));
            if (auto* problem = std::get_if<std::string>(&high)) {
                return *problem + std::string(kExpected);
            }
            high_code = std::get<int>(high);
            if (high_code < std::get<int>(low)) {
                return fmt::format("range {:?} is backwards; write the lower code first", item);
            }
        }
        matcher.ranges_.emplace_back(static_cast<uint16_t>(std::get<int>(low)),
                                     static_cast<uint16_t>(high_code));
        if (comma == std::string_view::npos) break;
        rest = rest.substr(comma + 1);
    }
    matcher.text_ = std::string(text);
    return matcher;
}

}  // namespace stickyd
