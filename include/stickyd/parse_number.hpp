// Decimal integers from environment variables and config text: the whole string must
// be the number, so "12abc", "" and " 12" are all rejected.
#pragma once

#include <charconv>
#include <optional>
#include <string_view>

namespace stickyd {

template <typename T>
std::optional<T> parse_whole_number(std::string_view text) {
    T value{};
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (text.empty() || ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
    return value;
}

}  // namespace stickyd
