// Words for people: the did-you-mean hint for a mistyped name (config keys, flags,
// commands), and counts that agree with their noun. Pure.
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace stickyd {

// Optimal string alignment distance: Levenshtein plus adjacent transposition, the
// commonest typo ("wieght").
size_t edit_distance(std::string_view a, std::string_view b);

// The candidate a typo most likely meant (case-insensitive), or nothing when none is
// close enough for the hint to help rather than mislead. A fragment of a longer
// candidate ("timeout" for "connect_timeout") also counts.
std::optional<std::string_view> closest_match(std::string_view word,
                                              std::span<const std::string_view> candidates);

// "1 listener", "2 listeners", "0 retries" (with plural "retries").
std::string count_of(size_t n, std::string_view singular, std::string_view plural = {});

}  // namespace stickyd
