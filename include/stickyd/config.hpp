// The configuration model (NLB vocabulary) and its loader. Validation is complete
// at load time: a Config that loads is one the daemon can run.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "stickyd/address.hpp"
#include "stickyd/health.hpp"
#include "stickyd/ip_prefix.hpp"
#include "stickyd/log.hpp"

namespace stickyd {

using Duration = std::chrono::milliseconds;

enum class Algorithm { ring, maglev };

struct TargetConfig {
    std::string id;  // defaults to address.to_string()
    SocketAddress address;
    uint32_t weight = 1;
};

struct StickinessConfig {
    // Only "source_ip" exists today, as on the NLB.
    unsigned prefix_v4 = 32;
    unsigned prefix_v6 = 128;
};

enum class HealthProtocol { tcp, http, https };

// [target_group.health_check]: the NLB's health check settings, same names and
// defaults. Intervals and timeouts below the NLB's minimums (5 s, 2 s) are a stickyd
// extension for local testing and demos; the floor is 100 ms.
struct HealthCheckConfig {
    bool enabled = true;
    HealthProtocol protocol = HealthProtocol::tcp;
    std::optional<uint16_t> port;  // nullopt = "traffic-port" (the target's own port)
    std::string path = "/";        // http and https only
    Duration interval{30000};
    // nullopt = the protocol's default (6 s http, else 10 s), reduced to half the
    // interval when that would not be shorter than the interval.
    std::optional<Duration> timeout;
    unsigned healthy_threshold = 5;
    unsigned unhealthy_threshold = 2;
    Matcher matcher;  // http and https only; default "200-399" (set by the constructor)
    // Passive checking: this many consecutive connect failures (refused, timed out)
    // on client traffic make the target unhealthy before the next active check.
    bool passive = true;
    unsigned passive_failures = 2;

    HealthCheckConfig();
    Duration effective_timeout() const;
    Thresholds thresholds() const { return {healthy_threshold, unhealthy_threshold}; }
};

// [target_group.deregistration_delay]: the NLB's deregistration_delay.* attributes.
// A target that is removed (reload, DNS) or drained (admin API) takes no new
// connections; its open ones may finish for `timeout`, then they are reset.
struct DeregistrationConfig {
    Duration timeout{300000};             // deregistration_delay.timeout_seconds
    bool connection_termination = false;  // ...connection_termination.enabled: reset at once
};

// dns = "NAME:PORT" (or a list of them): targets discovered from NAME's A and AAAA
// records (a Kubernetes headless service, a docker-compose service), each with id
// "ip:port" and weight 1.
struct DnsDiscoveryConfig {
    std::string name;
    uint16_t port = 0;
    Duration refresh{5000};  // dns_refresh, the same for every name of a group

    // "NAME:PORT", as written in the file: the name's key in logs, views and maps.
    std::string text() const { return name + ":" + std::to_string(port); }
};

// "NAME:PORT" with a DNS name (letters, digits, '-', '_', '.'; labels 1-63, total
// <= 253) and a port 1-65535, or nullopt. Quick mode's --target HOST:PORT and the
// file's dns key share it. The refresh is left at its default.
std::optional<DnsDiscoveryConfig> parse_dns_name(std::string_view text);

struct TargetGroupConfig {
    std::string name;
    Algorithm algorithm = Algorithm::ring;
    uint32_t maglev_table_size = 65537;
    StickinessConfig stickiness;
    Duration connect_timeout{2000};
    unsigned connect_retries = 2;  // extra attempts, each on the next distinct target
    std::vector<TargetConfig> targets;
    HealthCheckConfig health_check;
    // NLB target_health_state.unhealthy.connection_termination.enabled: reset the open
    // connections of a target that turns unhealthy (true), or let them run (false).
    bool connection_termination_on_unhealthy = true;
    DeregistrationConfig deregistration_delay;
    // [target_group.minimum_healthy_targets]: the NLB's
    // target_group_health.unhealthy_state_routing.minimum_healthy_targets.*.
    MinimumHealthyTargets minimum_healthy_targets;
    // NLB proxy_protocol_v2.enabled: every connection to a target starts with a PROXY
    // v2 header carrying the client's and the listener's addresses; health checks
    // send a LOCAL header.
    bool proxy_protocol_v2 = false;
    // NLB preserve_client_ip.enabled: each connection to a target is made from the
    // client's own IP (its PROXY header's, with accept_proxy_protocol), so the target
    // sees the client as its peer. Needs CAP_NET_ADMIN and, beyond loopback, policy
    // routing that hands the targets' replies back to stickyd. Health checks still
    // come from stickyd's own address.
    bool preserve_client_ip = false;
    // Names whose addresses join `targets` (empty = static targets only). A static
    // target and a discovered address that are the same address are one target:
    // the static one (desired_targets in target_set.hpp).
    std::vector<DnsDiscoveryConfig> dns;
};

struct ListenerConfig {
    std::string name;  // defaults to the bind string
    SocketAddress bind;
    std::string target_group;
    // NLB tcp.idle_timeout.seconds: a connection with no bytes either way for this long
    // is closed on both sides. The NLB allows 60-6000 s; stickyd allows from 1 s so
    // tests and demos can use short ones.
    Duration idle_timeout{350000};
    // Beyond the NLB: clients arrive through another balancer that sends a PROXY v1
    // or v2 header; stickiness then hashes the client address the header carries.
    bool accept_proxy_protocol = false;
    // How long a client may take to send the whole header before it is closed.
    Duration proxy_protocol_timeout{3000};
    // One info line per finished connection (client, target, bytes, duration, end).
    bool access_log = false;
    // The NLB's security groups: a client in `deny`, or outside a non-empty `allow`,
    // is reset at accept before any target is chosen (deny wins). The address checked
    // is the one stickiness hashes: the PROXY header's with accept_proxy_protocol.
    std::vector<IpPrefix> allow{};  // empty: every client not denied
    std::vector<IpPrefix> deny{};
};

struct GlobalConfig {
    unsigned threads = 0;  // 0 = one per online CPU
    // Pipes per worker for bulk flows moved to splice (see WorkerOptions::max_pipes);
    // 0 = never splice.
    unsigned splice_pipes = 16;
    LogLevel log_level = LogLevel::info;
    Duration shutdown_grace{30000};
    // On SIGTERM, how long to keep accepting while /ready answers 503, so routers
    // (BGP, ECMP, a Kubernetes Service) stop sending new clients before the
    // listeners close. Then shutdown_grace applies as before.
    Duration shutdown_delay{0};
    // The admin HTTP endpoint (status, ring, lookup, drain, metrics). Empty = no unix
    // socket. The directory is created if missing. At this default path, a user who
    // cannot write /run/stickyd gets a place of their own (admin_socket_places.hpp).
    std::string admin_socket = "/run/stickyd/admin.sock";
    // Who may use the socket besides its owner: a group (empty = the daemon's own)
    // and the mode (owner read and write at least).
    std::string admin_socket_group;
    unsigned admin_socket_mode = 0660;
    // Optionally also on TCP (e.g. 127.0.0.1:9090 for Prometheus); nullopt = not.
    std::optional<SocketAddress> admin_address;
    // A TCP address serving only the read-only endpoints (/metrics, /status, /ready),
    // for Prometheus and readiness probes: admin_address can drain targets and has no
    // authentication. nullopt = none.
    std::optional<SocketAddress> metrics_address;
};

struct Config {
    GlobalConfig global;
    std::vector<ListenerConfig> listeners;
    std::vector<TargetGroupConfig> target_groups;

    const TargetGroupConfig* find_group(std::string_view name) const;
};

// One-line, human-readable: "FILE:LINE:COL: KEY.PATH: message".
struct ConfigError {
    std::string source;  // file path, or "<command line>"
    unsigned line = 0;   // 0 when unknown
    unsigned column = 0;
    std::string key_path;  // e.g. "target_group[0].target[2].weight"
    std::string message;   // what was wrong and what was expected
    std::string to_string() const;
};

using ConfigResult = std::variant<Config, ConfigError>;

ConfigResult load_config_file(const std::string& path);
ConfigResult parse_config(std::string_view toml_text, std::string_view source_name);

// Cross-field checks shared by the file loader and the command-line quick mode.
std::optional<ConfigError> validate(const Config& config, std::string_view source_name);

// Why the group's balancer cannot hold `targets` targets weighing `total_weight`
// together (a ring's weight cap, a maglev table's size), or nullopt if it can.
// Config validation asks it about the configured targets; the control thread asks
// again about each DNS answer, which can add targets at run time.
std::optional<std::string> capacity_error(const TargetGroupConfig& group, size_t targets,
                                          uint64_t total_weight);

// One target's own rules, worded as the loader words them (without the key path),
// for a target that arrives at run time (POST /targets) rather than in a file:
// what is wrong with the address text (nullopt when SocketAddress::parse takes it),
// an id, or a weight; weight_range_message for a weight that is no integer at all.
std::optional<std::string> target_address_error(std::string_view text);
std::optional<std::string> target_id_error(std::string_view id);
std::optional<std::string> target_weight_error(int64_t weight);
std::string weight_range_message(std::string_view got);

// "500ms", "2s", "5m", "1h" (or a bare integer meaning seconds, as NLB attributes do).
std::optional<Duration> parse_duration(std::string_view text);

}  // namespace stickyd
