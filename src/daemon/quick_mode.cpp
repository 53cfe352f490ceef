#include "daemon/quick_mode.hpp"

#include <fmt/format.h>

#include <cctype>
#include <charconv>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <utility>

#include "daemon/command_line.hpp"

namespace stickyd {
namespace {

constexpr const char* kQuick = "Quick mode";
constexpr const char* kChecks = "Health checks (quick mode)";

std::vector<CLI::Option*> add_routing_flags(CLI::App& app, QuickFlags& f) {
    return {
        app.add_option("--listen", f.listen, "Address to accept clients on (repeatable)"),
        app.add_option("--target", f.targets,
                       "Backend ADDR (ip:port) or HOST:PORT, a name resolved to its addresses "
                       "(repeatable, order does not matter)"),
        app.add_option("--dns-refresh", f.dns_refresh,
                       "How often a --target HOST:PORT is resolved again (default 5s)"),
        app.add_option("--algorithm", f.algorithm, "ring (default) or maglev")
            ->check(CLI::IsMember({"ring", "maglev"})),
        app.add_option("--prefix-v4", f.prefix_v4, "Hash only this IPv4 prefix (default 32)")
            ->check(number_in(0, 32)),
        app.add_option("--prefix-v6", f.prefix_v6, "Hash only this IPv6 prefix (default 128)")
            ->check(number_in(0, 128)),
        app.add_option("--connect-timeout", f.connect_timeout,
                       "Backend connect timeout (default 2s)"),
        app.add_option("--connect-retries", f.connect_retries,
                       "Extra connect attempts on the next target (default 2)")
            ->check(number_in(0, 16)),
        app.add_option("--shutdown-grace", f.shutdown_grace,
                       "How long SIGTERM waits for connections (default 30s)"),
        app.add_option("--shutdown-delay", f.shutdown_delay,
                       "On SIGTERM, keep accepting this long with /ready at 503 (default 0s)"),
        app.add_option("--idle-timeout", f.idle_timeout,
                       "Close connections idle this long (default 350s)"),
        app.add_flag("--proxy-protocol-v2", f.proxy_protocol_v2,
                     "Send a PROXY v2 header to targets first"),
        app.add_flag("--preserve-client-ip", f.preserve_client_ip,
                     "Connect to targets from the client's IP (needs CAP_NET_ADMIN)"),
        app.add_flag("--accept-proxy-protocol", f.accept_proxy_protocol,
                     "Clients start with a PROXY v1/v2 header; route by it"),
        app.add_option("--proxy-protocol-timeout", f.proxy_protocol_timeout,
                       "How long a client may take to send its header (default 3s)"),
        app.add_flag("--access-log", f.access_log, "Log one info line per finished connection"),
        app.add_option("--allow", f.allow,
                       "Accept only clients in this CIDR prefix (repeatable; default: all)"),
        app.add_option("--deny", f.deny,
                       "Reset clients in this CIDR prefix, even if allowed (repeatable)"),
    };
}

std::vector<CLI::Option*> add_health_flags(CLI::App& app, QuickFlags& f) {
    return {
        app.add_option("--health-check", f.health_check, "tcp (default), http, https or off")
            ->check(CLI::IsMember({"tcp", "http", "https", "off"})),
        app.add_option("--health-path", f.health_path, "HTTP(S) check path (default /)"),
        app.add_option("--health-port", f.health_port, "Check port (default traffic-port)"),
        app.add_option("--health-interval", f.health_interval, "Check interval (default 1s)"),
        app.add_option(
            "--health-timeout", f.health_timeout,
            "Check timeout, below the interval (default 10s tcp / 6s http / 10s https, or half "
            "the interval when the interval is not longer than that: 500ms at the "
            "default 1s)"),
        app.add_option("--healthy-threshold", f.healthy_threshold,
                       "Passes to become healthy (default 2)")
            ->check(number_in(2, 10)),
        app.add_option("--unhealthy-threshold", f.unhealthy_threshold,
                       "Failures to become unhealthy (default 2)")
            ->check(number_in(2, 10)),
        app.add_option("--matcher", f.matcher, "HTTP(S) codes that pass (default 200-399)"),
        app.add_option("--passive-failures", f.passive_failures,
                       "Consecutive client connect failures that make a target unhealthy "
                       "(default 2; 0 = off)")
            ->check(number_in(0, 100)),
        app.add_option("--connection-termination", f.connection_termination,
                       "Reset connections of a target that turns unhealthy (on|off)")
            ->check(CLI::IsMember({"on", "off"})),
        app.add_option("--min-healthy-count", f.min_healthy_count,
                       "Fail open (route to every target) below this many healthy (default 1)"),
        app.add_option("--min-healthy-percent", f.min_healthy_percent,
                       "Fail open below this percentage healthy, 1-100 (default off)"),
    };
}

// A duration flag into `out`, or the error naming the flag and what it expected
// (`expected` also states the range when there is one).
std::optional<std::string> read_duration(std::string_view flag, const std::string& text,
                                         std::string_view expected, Duration& out,
                                         Duration min = Duration{0},
                                         Duration max = Duration::max()) {
    auto value = parse_duration(text);
    if (!value || *value < min || *value > max) {
        return fmt::format("{}: expected {}, got '{}'", flag, expected, text);
    }
    out = *value;
    return std::nullopt;
}

std::optional<std::string> read_health_port(const std::string& text, HealthCheckConfig& hc) {
    if (text == "traffic-port") return std::nullopt;
    unsigned port = 0;
    const char* end = text.data() + text.size();
    auto [ptr, ec] = std::from_chars(text.data(), end, port);
    if (ec != std::errc() || ptr != end || port == 0 || port > 65535) {
        return fmt::format("--health-port: expected traffic-port or 1-65535, got '{}'", text);
    }
    hc.port = static_cast<uint16_t>(port);
    return std::nullopt;
}

std::optional<std::string> read_health_flags(const QuickFlags& f, TargetGroupConfig& group) {
    HealthCheckConfig& hc = group.health_check;
    hc.enabled = f.health_check != "off";
    if (f.health_check == "http") hc.protocol = HealthProtocol::http;
    if (f.health_check == "https") hc.protocol = HealthProtocol::https;
    hc.path = f.health_path;
    if (auto error = read_health_port(f.health_port, hc)) return error;
    if (auto error = read_duration("--health-interval", f.health_interval,
                                   "a duration such as 1s or 30s", hc.interval)) {
        return error;
    }
    if (!f.health_timeout.empty()) {
        Duration timeout{};
        if (auto error = read_duration("--health-timeout", f.health_timeout,
                                       "a duration such as 500ms or 5s", timeout)) {
            return error;
        }
        hc.timeout = timeout;
    }
    hc.healthy_threshold = f.healthy_threshold;
    hc.unhealthy_threshold = f.unhealthy_threshold;
    auto matcher = parse_matcher(f.matcher);
    if (auto* problem = std::get_if<std::string>(&matcher)) return "--matcher: " + *problem;
    hc.matcher = std::get<Matcher>(std::move(matcher));
    hc.passive = f.passive_failures > 0;
    if (hc.passive) hc.passive_failures = f.passive_failures;
    group.connection_termination_on_unhealthy = f.connection_termination == "on";
    group.minimum_healthy_targets.count = f.min_healthy_count;
    if (f.min_healthy_percent != "off") {
        unsigned percent = 0;
        const std::string& text = f.min_healthy_percent;
        auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), percent);
        if (ec != std::errc() || ptr != text.data() + text.size() || percent == 0 ||
            percent > 100) {
            return fmt::format("--min-healthy-percent: expected 1-100 or off, got '{}'", text);
        }
        group.minimum_healthy_targets.percentage = percent;
    }
    return std::nullopt;
}

// "--target #2 127.0.0.1:9001": which of a repeated flag, as the user typed it.
std::string nth(std::string_view flag, size_t index, const std::vector<std::string>& values) {
    return fmt::format("{} #{} {}", flag, index + 1, values[index]);
}

// Each address once, parsed; the error names the flag, which one, and the example.
std::optional<std::string> read_addresses(std::string_view flag,
                                          const std::vector<std::string>& texts,
                                          std::string_view example,
                                          std::vector<SocketAddress>& out) {
    std::set<std::string> seen;
    for (size_t i = 0; i < texts.size(); ++i) {
        auto address = SocketAddress::parse(texts[i]);
        if (!address) {
            return fmt::format("{}: not an address; expected ip:port such as {}",
                               nth(flag, i, texts), example);
        }
        if (!seen.insert(address->to_string()).second) {
            return fmt::format("{}: duplicate address", nth(flag, i, texts));
        }
        out.push_back(*address);
    }
    return std::nullopt;
}

constexpr std::string_view kAddressExample = "ip:port such as 127.0.0.1:9001 or [::1]:9001";

bool valid_port(std::string_view text) {
    unsigned port = 0;
    auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), port);
    return ec == std::errc() && ptr == text.data() + text.size() && port >= 1 && port <= 65535;
}

// A --target that is not an address: the name it is as dns = "HOST:PORT" would take
// it, or what is wrong with it.
std::variant<DnsDiscoveryConfig, std::string> host_and_port(std::string_view text) {
    const size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) {
        return fmt::format(
            "not an address or HOST:PORT; expected {}, or HOST:PORT such as "
            "localhost:9001",
            kAddressExample);
    }
    const std::string_view host = text.substr(0, colon);
    const std::string_view port = text.substr(colon + 1);
    const bool ipv6 = text.starts_with('[') || host.find(':') != std::string_view::npos;
    if (ipv6 && !(text.starts_with('[') && host.ends_with(']'))) {
        return fmt::format("not an address; expected {}", kAddressExample);
    }
    if (!valid_port(port)) return fmt::format("the port must be from 1 to 65535, got '{}'", port);
    // Digits and dots only: a mistyped IPv4 address, never a host name (no top-level
    // domain is numeric), and not worth a lookup.
    const bool numeric = host.find_first_not_of("0123456789.") == std::string_view::npos;
    if (ipv6 || (numeric && !host.empty())) {
        return fmt::format("not an address; expected {}", kAddressExample);
    }
    if (host.empty()) return "the host is empty; expected HOST:PORT such as localhost:9001";
    auto dns = parse_dns_name(text);
    if (!dns) {
        return fmt::format(
            "'{}' is not a host name (letters, digits, '-', '_' and dots between labels of 1 "
            "to 63)",
            host);
    }
    return *std::move(dns);
}

std::string folded(std::string text) {
    for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return text;
}

// Each --target once: an address a static target, a HOST:PORT one of the group's
// dns names, all refreshed every --dns-refresh.
std::optional<std::string> read_targets(const QuickFlags& f, TargetGroupConfig& group) {
    std::set<std::string> addresses;
    std::set<std::string> names;
    for (size_t i = 0; i < f.targets.size(); ++i) {
        if (auto address = SocketAddress::parse(f.targets[i])) {
            if (!addresses.insert(address->to_string()).second) {
                return fmt::format("{}: duplicate address", nth("--target", i, f.targets));
            }
            group.targets.push_back(TargetConfig{address->to_string(), *address, 1});
            continue;
        }
        auto name = host_and_port(f.targets[i]);
        if (auto* problem = std::get_if<std::string>(&name)) {
            return fmt::format("{}: {}", nth("--target", i, f.targets), *problem);
        }
        auto& dns = std::get<DnsDiscoveryConfig>(name);
        // DNS names ignore case: Web:8080 and web:8080 are the same targets.
        if (!names.insert(folded(dns.text())).second) {
            return fmt::format("{}: duplicate host name", nth("--target", i, f.targets));
        }
        group.dns.push_back(std::move(dns));
    }
    if (f.dns_refresh.empty()) return std::nullopt;
    if (group.dns.empty()) {
        return "--dns-refresh: only applies with a --target HOST:PORT (a name to resolve); add "
               "one or remove the flag";
    }
    Duration refresh{};
    if (auto error = read_duration("--dns-refresh", f.dns_refresh, "a duration from 100ms to 1h",
                                   refresh, Duration{100}, Duration{3600 * 1000})) {
        return error;
    }
    for (DnsDiscoveryConfig& dns : group.dns) dns.refresh = refresh;
    return std::nullopt;
}

std::variant<TargetGroupConfig, std::string> group_from_flags(const QuickFlags& f) {
    TargetGroupConfig group;
    group.name = "default";
    group.algorithm = f.algorithm == "maglev" ? Algorithm::maglev : Algorithm::ring;
    group.stickiness.prefix_v4 = f.prefix_v4;
    group.stickiness.prefix_v6 = f.prefix_v6;
    if (auto error = read_duration("--connect-timeout", f.connect_timeout,
                                   "a duration such as 500ms or 2s", group.connect_timeout)) {
        return *error;
    }
    group.connect_retries = f.connect_retries;
    group.proxy_protocol_v2 = f.proxy_protocol_v2;
    group.preserve_client_ip = f.preserve_client_ip;
    if (auto error = read_health_flags(f, group)) return *error;
    if (auto error = read_targets(f, group)) return *error;
    return group;
}

// "--allow 10.0.0.1/8: host bits are set; did you mean 10.0.0.0/8?"
std::optional<std::string> read_prefixes(std::string_view flag,
                                         const std::vector<std::string>& texts,
                                         std::vector<IpPrefix>& out) {
    for (const std::string& text : texts) {
        auto parsed = parse_prefix(text);
        if (auto* problem = std::get_if<std::string>(&parsed)) {
            return fmt::format("{} {}: {}", flag, text, *problem);
        }
        out.push_back(std::get<IpPrefix>(parsed));
    }
    return std::nullopt;
}

// The one listener template every --listen address shares.
std::variant<ListenerConfig, std::string> listener_from_flags(const QuickFlags& f) {
    ListenerConfig listener;
    listener.target_group = "default";
    if (auto error = read_duration("--idle-timeout", f.idle_timeout, "a duration from 1s to 6000s",
                                   listener.idle_timeout, Duration{1000}, Duration{6000000})) {
        return *error;
    }
    if (auto error = read_duration("--proxy-protocol-timeout", f.proxy_protocol_timeout,
                                   "a duration such as 500ms or 3s",
                                   listener.proxy_protocol_timeout, Duration{1})) {
        return *error;
    }
    listener.accept_proxy_protocol = f.accept_proxy_protocol;
    listener.access_log = f.access_log;
    if (auto error = read_prefixes("--allow", f.allow, listener.allow)) return *error;
    if (auto error = read_prefixes("--deny", f.deny, listener.deny)) return *error;
    return listener;
}

// Config keys a quick-mode flag sets, by their path below the group, listener or
// [global] table.
const std::map<std::string, std::string, std::less<>> kFlagOfKey{
    {"threads", "--threads"},
    {"shutdown_grace", "--shutdown-grace"},
    {"shutdown_delay", "--shutdown-delay"},
    {"admin_socket", "--admin-socket"},
    {"admin_address", "--admin-address"},
    {"metrics_address", "--metrics-address"},
    {"idle_timeout", "--idle-timeout"},
    {"proxy_protocol_timeout", "--proxy-protocol-timeout"},
    {"target", "--target"},
    {"dns_refresh", "--dns-refresh"},
    {"maglev_table_size", "--algorithm"},
    {"connect_timeout", "--connect-timeout"},
    {"connect_retries", "--connect-retries"},
    {"preserve_client_ip", "--preserve-client-ip"},
    {"stickiness.prefix_v4", "--prefix-v4"},
    {"stickiness.prefix_v6", "--prefix-v6"},
    {"health_check.interval", "--health-interval"},
    {"health_check.timeout", "--health-timeout"},
    {"health_check.healthy_threshold", "--healthy-threshold"},
    {"health_check.unhealthy_threshold", "--unhealthy-threshold"},
    {"health_check.passive_failures", "--passive-failures"},
    {"health_check.port", "--health-port"},
    {"health_check.path", "--health-path"},
    {"health_check.matcher", "--matcher"},
    {"minimum_healthy_targets.count", "--min-healthy-count"},
    {"minimum_healthy_targets.percentage", "--min-healthy-percent"},
};

}  // namespace

std::vector<CLI::Option*> add_quick_mode_flags(CLI::App& app, QuickFlags& flags) {
    std::vector<CLI::Option*> all = add_routing_flags(app, flags);
    for (CLI::Option* option : all) option->group(kQuick);
    for (CLI::Option* option : add_health_flags(app, flags)) all.push_back(option->group(kChecks));
    return all;
}

std::variant<Config, std::string> config_from_flags(const QuickFlags& flags) {
    Config config;
    auto group = group_from_flags(flags);
    if (auto* error = std::get_if<std::string>(&group)) return *error;
    config.target_groups.push_back(std::move(std::get<TargetGroupConfig>(group)));
    auto listener = listener_from_flags(flags);
    if (auto* error = std::get_if<std::string>(&listener)) return *error;
    std::vector<SocketAddress> binds;
    if (auto error =
            read_addresses("--listen", flags.listen, "127.0.0.1:8000 or [::]:8000", binds)) {
        return *error;
    }
    for (const SocketAddress& bind : binds) {
        ListenerConfig each = std::get<ListenerConfig>(listener);
        each.name = bind.to_string();
        each.bind = bind;
        config.listeners.push_back(std::move(each));
    }
    if (auto error = read_duration("--shutdown-grace", flags.shutdown_grace,
                                   "a duration such as 30s", config.global.shutdown_grace)) {
        return *error;
    }
    if (auto error = read_duration("--shutdown-delay", flags.shutdown_delay,
                                   "a duration such as 5s", config.global.shutdown_delay)) {
        return *error;
    }
    if (auto error = validate(config, "<command line>")) return as_flag_error(*error, flags);
    return config;
}

// Which --target made the group's static target (or dns name) number `n`: the
// n-th of the flags that are (or are not) addresses.
std::optional<size_t> target_flag(const std::vector<std::string>& targets, bool address, size_t n) {
    for (size_t i = 0; i < targets.size(); ++i) {
        if (SocketAddress::parse(targets[i]).has_value() != address) continue;
        if (n-- == 0) return i;
    }
    return std::nullopt;
}

std::string as_flag_error(const ConfigError& error, const QuickFlags& flags) {
    static const std::regex kPath(
        R"((?:global\.|target_group\[0\]\.|listener\[(\d+)\]\.)?(target\[(\d+)\]\.)?(.*))");
    static const std::regex kDns(R"(target_group\[0\]\.dns(?:\[(\d+)\])?)");
    std::smatch m;
    if (std::regex_match(error.key_path, m, kDns)) {
        const size_t n = m[1].matched ? std::stoul(m[1].str()) : 0;
        if (auto i = target_flag(flags.targets, false, n)) {
            return nth("--target", *i, flags.targets) + ": " + error.message;
        }
    }
    if (!std::regex_match(error.key_path, m, kPath)) return error.to_string();
    if (m[2].matched) {
        const size_t n = std::stoul(m[3].str());
        if (auto i = target_flag(flags.targets, true, n)) {
            return nth("--target", *i, flags.targets) + ": " + error.message;
        }
    }
    if (m[1].matched && m[4] == "bind") {
        const size_t i = std::stoul(m[1].str());
        if (i < flags.listen.size()) return nth("--listen", i, flags.listen) + ": " + error.message;
    }
    if (error.key_path == "listener") return "--listen: " + error.message;
    auto flag = kFlagOfKey.find(m[4].str());
    if (flag == kFlagOfKey.end()) return error.to_string();
    return flag->second + ": " + error.message;
}

}  // namespace stickyd
