// What a valid configuration may still say by mistake: checked by --check-config
// and logged at start and on every reload, never refused (a group may be meant to
// fill later, or kept for a listener to come).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "stickyd/config.hpp"

namespace stickyd {

// One line each, in config order: an admin socket every local user may write, a
// static group listing no targets, a group no listener uses, a static group smaller
// than its minimum_healthy_targets.count.
std::vector<std::string> config_warnings(const Config& config);

// admin_address on anything but loopback: it has no authentication and can drain
// targets. Said once at start (the address applies on restart only) and by
// --check-config, naming metrics_address as the read-only way to expose /metrics.
std::optional<std::string> admin_address_warning(const GlobalConfig& global);

}  // namespace stickyd
