// The TOML reader: one function per section of the file, each reading its table with
// a TableReader and handing its subtables on. Shape, types and single-key ranges
// are checked here; rules across keys are validate()'s.
#pragma once

#include <toml++/toml.h>

#include <string>

#include "core/config/diagnostics.hpp"
#include "stickyd/config.hpp"

namespace stickyd::config_detail {

// The whole file: [global], [[listener]], and each [[target_group]] (read_config.cpp).
Config read_config(Diagnostics& diag, const toml::table& root);

// One [[target_group]] and its subtables (read_target_group.cpp).
TargetGroupConfig read_target_group(Diagnostics& diag, const toml::table& table, std::string path);

// Its [target_group.health_check] (read_health_check.cpp).
HealthCheckConfig read_health_check(Diagnostics& diag, const toml::table& table, std::string path);

}  // namespace stickyd::config_detail
