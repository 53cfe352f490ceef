// The rules' messages and checks, the rules the admin API applies to one target at a
// time (POST /targets), and how a duration is written.
#include "core/config/rules.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <charconv>

#include "core/config/diagnostics.hpp"

namespace stickyd::config_detail {

std::string bad_dns_message(std::string_view text) {
    return not_dns_message(fmt::format("{:?}", text));
}

std::string not_dns_message(std::string_view got, std::string_view alternative) {
    return fmt::format("expected \"NAME:PORT\" such as {}{}, got {}", kDnsExample, alternative,
                       got);
}

std::string int_range_message(const IntRange& range, std::string_view got) {
    return fmt::format("must be an integer from {} to {}{}, got {}", range.min, range.max,
                       range.note, got);
}

std::optional<std::string> outside_range(int64_t value, const IntRange& range) {
    if (range.contains(value)) return std::nullopt;
    return int_range_message(range, std::to_string(value));
}

std::string format_duration(Duration d) {
    auto ms = d.count();
    if (ms == 0) return "0s";
    if (ms % 3'600'000 == 0) return fmt::format("{}h", ms / 3'600'000);
    if (ms % 60'000 == 0) return fmt::format("{}m", ms / 60'000);
    if (ms % 1000 == 0) return fmt::format("{}s", ms / 1000);
    return fmt::format("{}ms", ms);
}

std::optional<std::string> outside_range(Duration value, const DurationRange& range) {
    if (value >= range.min && value <= range.max) return std::nullopt;
    return fmt::format("must be a duration from {} to {}, got {}", format_duration(range.min),
                       format_duration(range.max), format_duration(value));
}

bool is_valid_group_name(std::string_view name) {
    return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-';
    });
}

bool is_valid_name(std::string_view name) {
    return std::all_of(name.begin(), name.end(), [](char c) {
        const auto u = static_cast<unsigned char>(c);
        return u > ' ' && u < 0x7f && c != '"' && c != '\\';
    });
}

bool has_control_character(std::string_view text) {
    return std::any_of(text.begin(), text.end(), [](char c) {
        const auto u = static_cast<unsigned char>(c);
        return u < 0x20 || u == 0x7f;
    });
}

}  // namespace stickyd::config_detail

namespace stickyd {

using namespace config_detail;

namespace {

std::optional<int64_t> unit_in_ms(std::string_view unit) {
    if (unit.empty() || unit == "s") return 1000;
    if (unit == "ms") return 1;
    if (unit == "m") return 60'000;
    if (unit == "h") return 3'600'000;
    return std::nullopt;
}

std::string_view take_digits(std::string_view text, size_t& pos) {
    size_t start = pos;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') ++pos;
    return text.substr(start, pos - start);
}

// The milliseconds in `digits` tenths/hundredths/... of `unit_ms`, if that is whole.
std::optional<int64_t> fraction_in_ms(std::string_view digits, int64_t unit_ms) {
    while (!digits.empty() && digits.back() == '0') digits.remove_suffix(1);
    if (digits.empty()) return 0;
    // Beyond 9 digits no unit (at most 3.6e6 ms) leaves a whole millisecond.
    if (digits.size() > 9) return std::nullopt;
    int64_t numerator = 0;
    int64_t denominator = 1;
    for (char c : digits) {
        numerator = numerator * 10 + (c - '0');
        denominator *= 10;
    }
    int64_t scaled = numerator * unit_ms;  // < 1e9 * 3.6e6: fits
    if (scaled % denominator != 0) return std::nullopt;
    return scaled / denominator;
}

}  // namespace

std::optional<std::string> target_address_error(std::string_view text) {
    if (SocketAddress::parse(text)) return std::nullopt;
    return bad_address_message(text, kTargetExample);
}

std::optional<std::string> target_id_error(std::string_view id) {
    if (id.empty()) return "must not be empty";
    if (!is_valid_name(id)) return fmt::format("{}, got {:?}", kNameRule, id);
    return std::nullopt;
}

std::optional<std::string> target_weight_error(int64_t weight) {
    return outside_range(weight, kWeightRange);
}

std::string weight_range_message(std::string_view got) {
    return int_range_message(kWeightRange, got);
}

std::optional<std::string> capacity_error(const TargetGroupConfig& group, size_t targets,
                                          uint64_t total_weight) {
    if (group.algorithm == Algorithm::maglev) {
        return maglev_table_size_error(group.maglev_table_size, targets);
    }
    return ring_weight_error(total_weight);
}

std::optional<Duration> parse_duration(std::string_view text) {
    size_t pos = 0;
    std::string_view whole = take_digits(text, pos);
    if (whole.empty()) return std::nullopt;
    std::string_view fraction;
    if (pos < text.size() && text[pos] == '.') {
        ++pos;
        fraction = take_digits(text, pos);
        if (fraction.empty()) return std::nullopt;
    }
    auto unit_ms = unit_in_ms(text.substr(pos));
    if (!unit_ms) return std::nullopt;
    int64_t count = 0;
    auto [end, ec] = std::from_chars(whole.data(), whole.data() + whole.size(), count);
    if (ec != std::errc()) return std::nullopt;
    auto extra = fraction_in_ms(fraction, *unit_ms);
    if (!extra) return std::nullopt;
    int64_t ms = 0;
    if (__builtin_mul_overflow(count, *unit_ms, &ms) || __builtin_add_overflow(ms, *extra, &ms)) {
        return std::nullopt;
    }
    return Duration(ms);
}

}  // namespace stickyd
