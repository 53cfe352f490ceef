// What a valid configuration may still say by mistake: checked by --check-config
// and logged at start and on every reload, never refused (a group may be meant to
// fill later, or kept for a listener to come).
#pragma once

#include <string>
#include <vector>

#include "stickyd/config.hpp"

namespace stickyd {

// One line each, in config order: a static group listing no targets, a group no
// listener uses, a static group smaller than its minimum_healthy_targets.count.
std::vector<std::string> config_warnings(const Config& config);

}  // namespace stickyd
