#include "stickyd/config_warnings.hpp"

#include <fmt/core.h>

#include <algorithm>

namespace stickyd {

std::vector<std::string> config_warnings(const Config& config) {
    std::vector<std::string> out;
    // Anyone who can write to the socket can drain targets: say so when that is everyone.
    if (!config.global.admin_socket.empty() && (config.global.admin_socket_mode & 0002) != 0) {
        out.push_back(fmt::format(
            "admin_socket_mode {:04o} lets every local user drain targets and change the "
            "balancer; use a group (admin_socket_group) and 0660",
            config.global.admin_socket_mode));
    }
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
    }
    return out;
}

}  // namespace stickyd
