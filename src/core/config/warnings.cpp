#include "stickyd/config_warnings.hpp"

#include <fmt/core.h>

#include <algorithm>

namespace stickyd {

std::vector<std::string> config_warnings(const Config& config) {
    std::vector<std::string> out;
    for (const TargetGroupConfig& group : config.target_groups) {
        const bool used =
            std::any_of(config.listeners.begin(), config.listeners.end(),
                        [&](const ListenerConfig& l) { return l.target_group == group.name; });
        if (group.targets.empty() && !group.dns) {
            out.push_back(fmt::format(
                "target group '{}' has no targets (none listed and no dns): {}", group.name,
                used ? "its listeners will close every client" : "it routes nothing"));
        }
        if (!used) {
            out.push_back(fmt::format("target group '{}' is not used by any listener", group.name));
        }
        const unsigned count = group.minimum_healthy_targets.count;
        if (!group.dns && !group.targets.empty() && count > group.targets.size()) {
            out.push_back(fmt::format(
                "target group '{}': minimum_healthy_targets.count {} is more than its {} targets: "
                "one unhealthy target makes it fail open (route to all of them)",
                group.name, count, group.targets.size()));
        }
    }
    return out;
}

}  // namespace stickyd
