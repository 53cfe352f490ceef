// The whole-config rules: ranges again (for a Config built in memory), duplicates,
// references between sections, and the rules that relate keys.
#pragma once

#include "core/config/diagnostics.hpp"
#include "stickyd/config.hpp"

namespace stickyd::config_detail {

// Reports the first broken rule to diag.
void validate_config(Diagnostics& diag, const Config& config);

}  // namespace stickyd::config_detail
