#include "stickyd/config_warnings.hpp"

#include <fmt/core.h>

#include <algorithm>

#include "stickyd/address.hpp"

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
        if (group.targets.empty() && group.dns.empty()) {
            out.push_back(fmt::format(
                "target group '{}' has no targets (none listed and no dns): {}", group.name,
                used ? "its listeners will close every client" : "it routes nothing"));
        }
        if (!used) {
            out.push_back(fmt::format("target group '{}' is not used by any listener", group.name));
        }
        const unsigned count = group.minimum_healthy_targets.count;
        if (group.dns.empty() && !group.targets.empty() && count > group.targets.size()) {
            out.push_back(fmt::format(
                "target group '{}': minimum_healthy_targets.count {} is more than its {} targets: "
                "one unhealthy target makes it fail open (route to all of them)",
                group.name, count, group.targets.size()));
        }
    }
    return out;
}

namespace {

// 127.0.0.0/8 (ip_key_of has made ::ffff:127.x.y.z IPv4 already) or ::1.
bool is_loopback(const IpKey& ip) {
    if (ip.size == 4) return ip.bytes[0] == 127;
    const auto last = ip.bytes.begin() + 15;
    return std::all_of(ip.bytes.begin(), last, [](uint8_t b) { return b == 0; }) && *last == 1;
}

}  // namespace

std::optional<std::string> admin_address_warning(const GlobalConfig& global) {
    if (!global.admin_address || is_loopback(ip_key_of(global.admin_address->sa()))) {
        return std::nullopt;
    }
    return fmt::format(
        "admin_address {} is not on loopback: whoever reaches it can drain targets (the admin "
        "endpoint has no authentication); keep it on 127.0.0.1 or [::1] and let Prometheus "
        "scrape metrics_address, which serves only /metrics, /status and /ready",
        global.admin_address->to_string());
}

}  // namespace stickyd
