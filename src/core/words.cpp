#include "stickyd/words.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <vector>

namespace stickyd {
namespace {

std::string lowercase(std::string_view s) {
    std::string out(s);
    for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

}  // namespace

size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
    for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
    for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        for (size_t j = 1; j <= b.size(); ++j) {
            size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
                d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
            }
        }
    }
    return d[a.size()][b.size()];
}

std::optional<std::string_view> closest_match(std::string_view word,
                                              std::span<const std::string_view> candidates) {
    const std::string w = lowercase(word);
    std::optional<std::string_view> best;
    size_t best_distance = SIZE_MAX;
    for (auto candidate : candidates) {
        size_t d = edit_distance(w, lowercase(candidate));
        if (d < best_distance && d < candidate.size()) {
            best = candidate;
            best_distance = d;
        }
    }
    const size_t allowed = std::clamp<size_t>(w.size() / 3, 1, 3);
    if (best && best_distance <= allowed) return best;
    if (w.size() < 4) return std::nullopt;
    for (auto candidate : candidates) {
        if (lowercase(candidate).find(w) != std::string::npos) return candidate;
    }
    return std::nullopt;
}

std::string count_of(size_t n, std::string_view singular, std::string_view plural) {
    if (n == 1) return fmt::format("1 {}", singular);
    if (plural.empty()) return fmt::format("{} {}s", n, singular);
    return fmt::format("{} {}", n, plural);
}

}  // namespace stickyd
