// Where a problem is and how it is said: key paths and the file positions they were
// found at, the collector that keeps the first error, and the wording many errors
// share (did-you-mean, the list of choices, what is wrong with an address).
#pragma once

#include <toml++/toml.h>

#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "stickyd/config.hpp"

namespace stickyd::config_detail {

// ---------------------------------------------------------------------------------
// Did-you-mean (the distance and the choice live in words.hpp, shared with the
// command lines).

std::string did_you_mean(std::string_view word, std::span<const std::string_view> candidates);
std::string quoted_list(std::span<const std::string_view> items);
std::string choice_message(std::string_view got, std::span<const std::string_view> choices);

// ---------------------------------------------------------------------------------
// Addresses.

bool all_digits(std::string_view s);
std::string bad_address_message(std::string_view text, std::string_view example);

// ---------------------------------------------------------------------------------
// Key paths and positions.

struct Position {
    unsigned line = 0;
    unsigned column = 0;
};

Position position_of(const toml::source_region& region);
bool is_bare_key_character(char c);
std::string join_key(std::string_view parent, std::string_view key);
std::string index_key(std::string_view parent, size_t index);

// Where each key path was found in the file. A lookup falls back to the nearest
// recorded ancestor, so a missing or defaulted key is reported at the table that
// should have held it. Empty for a Config built in memory: every position is 0.
class PositionMap {
  public:
    void record(std::string path, Position position) {
        map_.insert_or_assign(std::move(path), position);
    }

    Position find(std::string_view path) const {
        std::string p(path);
        while (!p.empty()) {
            if (auto it = map_.find(p); it != map_.end()) return it->second;
            auto cut = p.find_last_of(".[");
            if (cut == std::string::npos) break;
            p.resize(cut);
        }
        return {};
    }

  private:
    std::map<std::string, Position, std::less<>> map_;
};

// Keeps the first error only. Readers carry on with defaults after a failure instead
// of threading an error through every return; the first problem is the one reported.
class Diagnostics {
  public:
    explicit Diagnostics(std::string_view source) : source_(source) {}

    PositionMap& positions() { return positions_; }

    void fail(std::string_view path, std::string message) {
        fail_at(path, positions_.find(path), std::move(message));
    }

    void fail_at(std::string_view path, Position position, std::string message) {
        if (error_) return;
        error_ = ConfigError{source_, position.line, position.column, std::string(path),
                             std::move(message)};
    }

    bool failed() const { return error_.has_value(); }
    std::optional<ConfigError> take() { return std::move(error_); }

    // " at line N" when the file position of `path` is known, for "the first one is
    // there" hints in duplicate errors.
    std::string at_line(std::string_view path) const {
        auto line = positions_.find(path).line;
        return line == 0 ? std::string() : fmt::format(" at line {}", line);
    }

  private:
    std::string source_;
    PositionMap positions_;
    std::optional<ConfigError> error_;
};

}  // namespace stickyd::config_detail
