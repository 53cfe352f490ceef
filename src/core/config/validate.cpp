// validate(): the whole-config rules, applied to every file after it is read and to
// the Config quick mode builds from flags.
#include "core/config/validate.hpp"

#include <fmt/format.h>
#include <sys/un.h>

#include <algorithm>
#include <cctype>
#include <map>

#include "core/config/rules.hpp"
#include "stickyd/balancer.hpp"

namespace stickyd::config_detail {
namespace {

void validate_global(Diagnostics& diag, const GlobalConfig& global) {
    if (auto problem = outside_range(global.threads, kThreadsRange)) {
        diag.fail("global.threads", *problem);
    }
    if (auto problem = outside_range(global.splice_pipes, kSplicePipesRange)) {
        diag.fail("global.splice_pipes", *problem);
    }
    if (auto problem = outside_range(global.shutdown_grace, kShutdownGraceRange)) {
        diag.fail("global.shutdown_grace", *problem);
    }
    if (auto problem = outside_range(global.shutdown_delay, kShutdownDelayRange)) {
        diag.fail("global.shutdown_delay", *problem);
    }
    if (!global.admin_socket.empty()) {
        if (has_control_character(global.admin_socket)) {
            diag.fail(
                "global.admin_socket",
                fmt::format("must not contain control characters, got {:?}", global.admin_socket));
        } else if (!global.admin_socket.starts_with('/')) {
            diag.fail("global.admin_socket",
                      fmt::format("must be an absolute path, got {:?}", global.admin_socket));
        } else if (global.admin_socket.size() >= sizeof(sockaddr_un{}.sun_path)) {
            diag.fail("global.admin_socket",
                      fmt::format("must be shorter than {} bytes (a unix socket path), got {}",
                                  sizeof(sockaddr_un{}.sun_path), global.admin_socket.size()));
        }
    }
    // Group names are looked up when the socket is made; here only what can never be one.
    const std::string& group = global.admin_socket_group;
    if (!group.empty() && (has_control_character(group) ||
                           group.find_first_of(": /") != std::string::npos || group.size() > 64)) {
        diag.fail("global.admin_socket_group",
                  fmt::format("must be a group name such as \"stickyd\", got {:?}", group));
    }
    // The daemon's own user must keep answering stickyctl run as that user.
    if (global.admin_socket_mode > 0777 || (global.admin_socket_mode & 0600) != 0600) {
        diag.fail("global.admin_socket_mode",
                  fmt::format("must let the owner read and write (0600 at least), got {:04o}",
                              global.admin_socket_mode));
    }
}

std::string unknown_group_message(const Config& config, std::string_view name) {
    if (config.target_groups.empty()) {
        return fmt::format("unknown target group {:?}; no [[target_group]] is defined", name);
    }
    std::vector<std::string_view> known;
    for (const auto& group : config.target_groups) known.push_back(group.name);
    return fmt::format("unknown target group {:?}{}; known groups: {}", name,
                       did_you_mean(name, known), quoted_list(known));
}

void validate_listeners(Diagnostics& diag, const Config& config) {
    if (config.listeners.empty()) {
        diag.fail("listener", "no listeners; add a [[listener]] with bind and target_group");
        return;
    }
    std::map<std::string, size_t> binds;
    std::map<std::string, size_t> names;
    for (size_t i = 0; i < config.listeners.size(); ++i) {
        const auto& listener = config.listeners[i];
        const std::string path = index_key("listener", i);
        if (listener.bind.family() == AF_UNSPEC) {
            diag.fail(path + ".bind",
                      fmt::format("not set; expected ip:port such as {}", kBindExample));
        } else if (auto [it, fresh] = binds.emplace(listener.bind.to_string(), i); !fresh) {
            diag.fail(path + ".bind",
                      fmt::format("duplicate bind address {} (also listener[{}]{})", it->first,
                                  it->second, diag.at_line(index_key("listener", it->second))));
        }
        if (listener.name.empty()) {
            diag.fail(path + ".name", "must not be empty");
        } else if (!is_valid_name(listener.name)) {
            diag.fail(path + ".name", fmt::format("{}, got {:?}", kNameRule, listener.name));
        } else if (auto [it, fresh] = names.emplace(listener.name, i); !fresh) {
            diag.fail(path + ".name",
                      fmt::format("duplicate listener name {:?} (also listener[{}]{})", it->first,
                                  it->second, diag.at_line(index_key("listener", it->second))));
        }
        if (!config.find_group(listener.target_group)) {
            diag.fail(path + ".target_group", unknown_group_message(config, listener.target_group));
        }
        if (auto problem = outside_range(listener.idle_timeout, kIdleTimeoutRange)) {
            diag.fail(path + ".idle_timeout", *problem);
        }
        if (auto problem = outside_range(listener.proxy_protocol_timeout, kProxyTimeoutRange)) {
            diag.fail(path + ".proxy_protocol_timeout", *problem);
        }
    }
}

void validate_target(Diagnostics& diag, const std::string& path, const TargetConfig& target) {
    if (target.address.family() == AF_UNSPEC) {
        diag.fail(path + ".address",
                  fmt::format("not set; expected ip:port such as {}", kTargetExample));
    }
    if (auto problem = target_id_error(target.id)) diag.fail(path + ".id", *problem);
    if (auto problem = target_weight_error(target.weight)) diag.fail(path + ".weight", *problem);
}

// Two targets with one address would get two shares of the ring for one backend; two
// with one id would collide on the ring. Both point at the second and name the first.
void refuse_duplicate_targets(Diagnostics& diag, const std::string& group_path,
                              const std::vector<TargetConfig>& targets) {
    std::map<std::string, size_t> addresses;
    std::map<std::string, size_t> ids;
    for (size_t i = 0; i < targets.size(); ++i) {
        const auto& target = targets[i];
        const std::string path = index_key(group_path + ".target", i);
        if (target.address.family() != AF_UNSPEC) {
            auto [it, fresh] = addresses.emplace(target.address.to_string(), i);
            if (!fresh) {
                const std::string first = index_key(group_path + ".target", it->second);
                diag.fail(path + ".address",
                          fmt::format("duplicate address {} in this group (also target[{}]{})",
                                      it->first, it->second, diag.at_line(first + ".address")));
            }
        }
        if (target.id.empty()) continue;
        auto [it, fresh] = ids.emplace(target.id, i);
        if (!fresh) {
            const std::string first = index_key(group_path + ".target", it->second);
            diag.fail(path + ".id",
                      fmt::format("duplicate target id {:?} (first used by target[{}]{})",
                                  it->first, it->second, diag.at_line(first + ".id")));
        }
    }
}

// Each name valid and once (DNS names ignore case), one refresh in range. A file's
// single string is the key itself; a list's names are dns[i].
void validate_dns_names(Diagnostics& diag, const std::string& group_path,
                        const std::vector<DnsDiscoveryConfig>& names) {
    std::map<std::string, size_t> seen;
    for (size_t i = 0; i < names.size(); ++i) {
        const std::string text = names[i].text();
        const std::string path =
            names.size() == 1 ? group_path + ".dns" : index_key(group_path + ".dns", i);
        if (!parse_dns_name(text)) diag.fail(path, bad_dns_message(text));
        if (auto problem = outside_range(names[i].refresh, kDnsRefreshRange)) {
            diag.fail(group_path + ".dns_refresh", *problem);
        }
        std::string folded = text;
        for (char& c : folded) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        auto [it, fresh] = seen.emplace(std::move(folded), i);
        if (!fresh) {
            diag.fail(path, fmt::format("duplicate name {:?} in this group (also dns[{}]{})", text,
                                        it->second,
                                        diag.at_line(index_key(group_path + ".dns", it->second))));
        }
    }
}

// build_maglev throws on a size it cannot use; asking it first turns that into a
// load-time error, with one owner for the rule.
void validate_maglev_table_size(Diagnostics& diag, const std::string& path,
                                const TargetGroupConfig& group) {
    const uint32_t size = group.maglev_table_size;
    if (auto problem = outside_range(size, kMaglevSizeRange)) {
        diag.fail(path, *problem);
    } else if (auto error = maglev_table_size_error(size, group.targets.size())) {
        // The key path already names the key; drop the balancer's own prefix.
        constexpr std::string_view kPrefix = "maglev_table_size ";
        if (std::string_view(*error).starts_with(kPrefix)) error->erase(0, kPrefix.size());
        diag.fail(path, *error);
    }
}

// Ranges again (for configs built in memory) and the rules that relate keys.
void validate_health_check(Diagnostics& diag, const std::string& path,
                           const HealthCheckConfig& hc) {
    if (auto problem = outside_range(hc.interval, kHealthIntervalRange)) {
        diag.fail(path + ".interval", *problem);
    }
    if (hc.timeout) {
        if (auto problem = outside_range(*hc.timeout, kHealthTimeoutRange)) {
            diag.fail(path + ".timeout", *problem);
        } else if (*hc.timeout >= hc.interval) {
            diag.fail(path + ".timeout",
                      fmt::format("must be shorter than the interval ({}), got {}",
                                  format_duration(hc.interval), format_duration(*hc.timeout)));
        }
    }
    if (auto problem = outside_range(hc.healthy_threshold, kHealthThresholdRange)) {
        diag.fail(path + ".healthy_threshold", *problem);
    }
    if (auto problem = outside_range(hc.unhealthy_threshold, kHealthThresholdRange)) {
        diag.fail(path + ".unhealthy_threshold", *problem);
    }
    if (auto problem = outside_range(hc.passive_failures, kPassiveFailuresRange)) {
        diag.fail(path + ".passive_failures", *problem);
    }
    if (hc.port && *hc.port == 0) {
        diag.fail(path + ".port", int_range_message(kHealthPortRange, "0"));
    }
    if (hc.protocol != HealthProtocol::tcp) {
        // The path goes into a request line verbatim: no room for spaces or controls.
        const bool clean = std::all_of(hc.path.begin(), hc.path.end(), [](char c) {
            const auto u = static_cast<unsigned char>(c);
            return u > 0x20 && u != 0x7f;
        });
        if (!hc.path.starts_with('/')) {
            diag.fail(path + ".path", fmt::format("must start with \"/\", got {:?}", hc.path));
        } else if (!clean) {
            diag.fail(
                path + ".path",
                fmt::format("must not contain spaces or control characters, got {:?}", hc.path));
        } else if (hc.path.size() > kMaxHealthPath) {
            diag.fail(path + ".path", fmt::format("must be at most {} characters, got {}",
                                                  kMaxHealthPath, hc.path.size()));
        }
        if (hc.matcher.ranges().empty()) {
            diag.fail(path + ".matcher", "must name at least one status code, e.g. \"200-399\"");
        }
    }
}

void validate_target_group(Diagnostics& diag, const std::string& path,
                           const TargetGroupConfig& group) {
    if (!is_valid_group_name(group.name)) {
        diag.fail(path + ".name",
                  fmt::format("must be one or more of A-Z a-z 0-9 _ . -, got {:?}", group.name));
    }
    if (group.algorithm == Algorithm::maglev) {
        validate_maglev_table_size(diag, path + ".maglev_table_size", group);
    } else {
        uint64_t weight = 0;
        for (const TargetConfig& t : group.targets) weight += t.weight;
        if (auto problem = capacity_error(group, group.targets.size(), weight)) {
            diag.fail(path + ".target", *problem);
        }
    }
    if (auto problem = outside_range(group.connect_timeout, kConnectTimeoutRange)) {
        diag.fail(path + ".connect_timeout", *problem);
    }
    if (auto problem = outside_range(group.connect_retries, kRetriesRange)) {
        diag.fail(path + ".connect_retries", *problem);
    }
    if (auto problem = outside_range(group.stickiness.prefix_v4, kPrefixV4Range)) {
        diag.fail(path + ".stickiness.prefix_v4", *problem);
    }
    if (auto problem = outside_range(group.stickiness.prefix_v6, kPrefixV6Range)) {
        diag.fail(path + ".stickiness.prefix_v6", *problem);
    }
    validate_health_check(diag, path + ".health_check", group.health_check);
    if (auto problem = outside_range(group.deregistration_delay.timeout, kDeregistrationRange)) {
        diag.fail(path + ".deregistration_delay.timeout", *problem);
    }
    if (auto problem = outside_range(group.minimum_healthy_targets.count, kMinHealthyCountRange)) {
        diag.fail(path + ".minimum_healthy_targets.count", *problem);
    }
    if (const auto& percentage = group.minimum_healthy_targets.percentage) {
        if (auto problem = outside_range(*percentage, kMinHealthyPercentRange)) {
            diag.fail(path + ".minimum_healthy_targets.percentage", *problem);
        }
    }
    validate_dns_names(diag, path, group.dns);
    for (size_t i = 0; i < group.targets.size(); ++i) {
        validate_target(diag, index_key(path + ".target", i), group.targets[i]);
    }
    refuse_duplicate_targets(diag, path, group.targets);
}

void validate_target_groups(Diagnostics& diag, const std::vector<TargetGroupConfig>& groups) {
    std::map<std::string, size_t> names;
    for (size_t i = 0; i < groups.size(); ++i) {
        const std::string path = index_key("target_group", i);
        validate_target_group(diag, path, groups[i]);
        auto [it, fresh] = names.emplace(groups[i].name, i);
        if (!fresh) {
            diag.fail(path + ".name",
                      fmt::format("duplicate target group name {:?} (also target_group[{}]{})",
                                  it->first, it->second,
                                  diag.at_line(index_key("target_group", it->second) + ".name")));
        }
    }
}

// IP versions as bits, for the sets of them a group's clients and targets speak.
constexpr unsigned kIpv4 = 1;
constexpr unsigned kIpv6 = 2;

std::string_view version_name(unsigned versions) {
    return versions == kIpv4 ? "IPv4" : "IPv6";
}

// Which IP versions of client a listener hands its group: a PROXY header may name
// either, and "[::]" is dual-stack (open_listener clears IPV6_V6ONLY).
unsigned client_versions(const ListenerConfig& listener) {
    if (listener.accept_proxy_protocol) return kIpv4 | kIpv6;
    switch (ip_version(listener.bind)) {
        case 4:
            return kIpv4;
        case 6: {
            const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(listener.bind.sa());
            return IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr) ? kIpv4 | kIpv6 : kIpv6;
        }
        default:
            return 0;
    }
}

// One connection cannot carry an IPv4 source to an IPv6 target or the other way
// round: such clients are connected from stickyd's own address (counted at run
// time). When that is so for every client a group can get, the key would never take
// effect, which is refused here rather than discovered in production. DNS targets
// are not known yet, so a group with dns is left to the run-time count.
void validate_preserve_client_ip(Diagnostics& diag, const Config& config) {
    for (size_t i = 0; i < config.target_groups.size(); ++i) {
        const TargetGroupConfig& group = config.target_groups[i];
        if (!group.preserve_client_ip || !group.dns.empty()) continue;
        unsigned targets = 0;
        for (const TargetConfig& t : group.targets) {
            if (const int v = ip_version(t.address); v != 0) targets |= v == 4 ? kIpv4 : kIpv6;
        }
        unsigned clients = 0;
        const ListenerConfig* example = nullptr;
        for (const ListenerConfig& listener : config.listeners) {
            if (listener.target_group != group.name) continue;
            clients |= client_versions(listener);
            if (example == nullptr) example = &listener;
        }
        if (targets == 0 || clients == 0 || (targets & clients) != 0) continue;
        diag.fail(index_key("target_group", i) + ".preserve_client_ip",
                  fmt::format("every target is {} but the group's listeners only take {} clients "
                              "(listener {:?} on {}), and one connection cannot carry both: no "
                              "client would keep its address; give the group {} targets or "
                              "remove the key",
                              version_name(targets), version_name(clients), example->name,
                              example->bind.to_string(), version_name(clients)));
    }
}

// Whether two TCP sockets bound to these would clash: the same port on the same IP,
// or on a wildcard that covers the other's ([::] is dual-stack, so it covers IPv4).
bool sockets_clash(const SocketAddress& a, const SocketAddress& b) {
    if (a.port() != b.port()) return false;
    const IpKey ka = ip_key_of(a.sa());
    const IpKey kb = ip_key_of(b.sa());
    if (ka == kb) return true;
    auto covers = [](const IpKey& wildcard, const IpKey& other) {
        const bool any = std::all_of(wildcard.bytes.begin(), wildcard.bytes.begin() + wildcard.size,
                                     [](uint8_t byte) { return byte == 0; });
        return any && (wildcard.size == 16 || other.size == 4);
    };
    return covers(ka, kb) || covers(kb, ka);
}

// The metrics address is the read-only door: sharing a socket with the admin
// address or a listener would either fail to bind or hand it to the wrong server.
void validate_metrics_address(Diagnostics& diag, const Config& config) {
    if (!config.global.metrics_address) return;
    const SocketAddress& metrics = *config.global.metrics_address;
    const std::string path = "global.metrics_address";
    constexpr std::string_view kOwnPort = "give it a port of its own";
    if (config.global.admin_address && sockets_clash(metrics, *config.global.admin_address)) {
        diag.fail(path, fmt::format("{} clashes with admin_address {}; {}", metrics.to_string(),
                                    config.global.admin_address->to_string(), kOwnPort));
    }
    for (size_t i = 0; i < config.listeners.size(); ++i) {
        const SocketAddress& bind = config.listeners[i].bind;
        if (bind.family() == AF_UNSPEC || !sockets_clash(metrics, bind)) continue;
        const std::string listener = index_key("listener", i);
        diag.fail(path,
                  fmt::format("{} clashes with {}.bind {}{}; {}", metrics.to_string(), listener,
                              bind.to_string(), diag.at_line(listener + ".bind"), kOwnPort));
    }
}

}  // namespace

void validate_config(Diagnostics& diag, const Config& config) {
    validate_global(diag, config.global);
    validate_listeners(diag, config);
    validate_target_groups(diag, config.target_groups);
    validate_preserve_client_ip(diag, config);
    validate_metrics_address(diag, config);
}

}  // namespace stickyd::config_detail
