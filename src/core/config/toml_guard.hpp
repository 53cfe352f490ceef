// toml++ behind a guard: what it must not be given is refused before it parses (the
// size cap, nesting, the inputs toml++ 3.3 mishandles), and what it reports comes
// back as one line.
#pragma once

#include <toml++/toml.h>

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "core/config/diagnostics.hpp"
#include "stickyd/config.hpp"

namespace stickyd::config_detail {

// A thousand targets take about 60 KiB. The cap also keeps `--check-config /dev/zero`
// from reading until memory runs out.
constexpr size_t kMaxConfigBytes = 1024 * 1024;

// Returns 0 or the errno that stopped the read. Stops once `out` holds more than
// `limit` bytes: parse_config reports that, and an endless file is not read on.
int read_file_up_to(const std::string& path, size_t limit, std::string& out);

// The error for text that must not reach toml++ (PreScan, size), if it has one. A
// TOML error on an earlier line is still the one reported: toml++ reads the lines
// before the problem's (which the scan passed) and stops where it would in the whole
// text, unless the cut leaves something open, which it reports as the end of file.
std::optional<ConfigError> problem_before_parse(std::string_view text, std::string_view source);

// toml++ reports syntax errors by exception or by result, depending on how it was built.
std::optional<toml::table> parse_toml(Diagnostics& diag, std::string_view text,
                                      std::string_view source);

}  // namespace stickyd::config_detail
