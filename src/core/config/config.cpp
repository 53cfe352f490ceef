// The configuration loader's entry points: TOML text -> Config, every problem reported
// as one line that names the file position and key path of the offending value.
//
// Its steps, each in its own file of src/core/config/:
//   * toml_guard: what toml++ must not be given is refused before it parses;
//   * the TOML reader (read_config, read_target_group, read_health_check, each with a
//     TableReader) checks shape (known keys, types, keywords, and the ranges a value
//     must satisfy before it fits its field) and records where every key was found;
//   * validate checks the Config as a whole (ranges again, duplicates, references,
//     the maglev table). The command-line quick mode builds a Config in memory and
//     calls validate() too, so a flag and a file can never disagree about what is valid.
// The reader and validate apply one set of rules (rules.hpp); diagnostics says where.
#include "stickyd/config.hpp"

#include <fmt/format.h>

#include <cstring>

#include "core/config/diagnostics.hpp"
#include "core/config/read.hpp"
#include "core/config/toml_guard.hpp"
#include "core/config/validate.hpp"

namespace stickyd {

using namespace config_detail;

HealthCheckConfig::HealthCheckConfig() : matcher(std::get<Matcher>(parse_matcher("200-399"))) {}

Duration HealthCheckConfig::effective_timeout() const {
    if (timeout) return *timeout;
    const Duration fallback = protocol == HealthProtocol::http ? Duration{6000} : Duration{10000};
    // A short interval without a timeout: the NLB default would overlap the next check.
    return fallback < interval ? fallback : interval / 2;
}

const TargetGroupConfig* Config::find_group(std::string_view name) const {
    for (const auto& group : target_groups) {
        if (group.name == name) return &group;
    }
    return nullptr;
}

ConfigResult load_config_file(const std::string& path) {
    std::string text;
    if (int error = read_file_up_to(path, kMaxConfigBytes, text); error != 0) {
        return ConfigError{path, 0, 0, "", fmt::format("cannot read: {}", std::strerror(error))};
    }
    return parse_config(text, path);
}

ConfigResult parse_config(std::string_view toml_text, std::string_view source_name) {
    if (auto error = problem_before_parse(toml_text, source_name)) return *error;
    Diagnostics diag(source_name);
    auto root = parse_toml(diag, toml_text, source_name);
    if (!root) return *diag.take();
    Config config = read_config(diag, *root);
    if (!diag.failed()) validate_config(diag, config);
    if (auto error = diag.take()) return *error;
    return config;
}

std::optional<ConfigError> validate(const Config& config, std::string_view source_name) {
    Diagnostics diag(source_name);
    validate_config(diag, config);
    return diag.take();
}

}  // namespace stickyd
