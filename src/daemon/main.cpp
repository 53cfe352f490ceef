// stickyd: command line, start-up, signals and shutdown. Everything that moves
// bytes lives in the workers; this file only wires them up and waits.
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "daemon/command_line.hpp"
#include "daemon/daemon.hpp"
#include "daemon/sd_notify.hpp"
#include "datapath/uring.hpp"
#include "datapath/worker.hpp"
#include "stickyd/config.hpp"
#include "stickyd/config_warnings.hpp"
#include "stickyd/log.hpp"
#include "stickyd/routing.hpp"
#include "stickyd/stop_sequence.hpp"
#include "stickyd_version.h"

namespace stickyd {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitConfig = 1;
constexpr int kExitUsage = kExitUsageError;

struct Options {
    std::string config_path;
    std::string check_path;
    std::vector<std::string> listen;
    std::vector<std::string> targets;
    unsigned threads = 0;
    std::string log_level;
    std::string algorithm = "ring";
    unsigned prefix_v4 = 32;
    unsigned prefix_v6 = 128;
    std::string connect_timeout = "2s";
    unsigned connect_retries = 2;
    std::string shutdown_grace = "30s";
    std::string shutdown_delay = "0s";
    // Health checks: quick mode is for local use, so checks are fast by default.
    std::string health_check = "tcp";
    std::string health_path = "/";
    std::string health_port = "traffic-port";
    std::string health_interval = "1s";
    std::string health_timeout;  // empty = the protocol default, capped below the interval
    unsigned healthy_threshold = 2;
    unsigned unhealthy_threshold = 2;
    std::string matcher = "200-399";
    unsigned passive_failures = 2;  // 0 = passive checking off
    std::string connection_termination = "on";
    std::string idle_timeout = "350s";
    bool proxy_protocol_v2 = false;
    bool accept_proxy_protocol = false;
    std::string proxy_protocol_timeout = "3s";
    bool access_log = false;
    std::optional<std::string> admin_socket;
    std::string admin_address;
};

void print_error(std::string_view message) {
    fmt::print(stderr, "stickyd: {}\n", message);
}

ConfigError flag_error(std::string flag, std::string message) {
    return ConfigError{"<command line>", 0, 0, std::move(flag), std::move(message)};
}

// A quick-mode duration flag into `out`, or the one-line error naming the flag and
// what it expected (`expected` also states the range when there is one).
std::optional<ConfigError> read_duration_flag(std::string flag, const std::string& text,
                                              std::string_view expected, Duration& out,
                                              Duration min = Duration{0},
                                              Duration max = Duration::max()) {
    auto value = parse_duration(text);
    if (!value || *value < min || *value > max) {
        return flag_error(std::move(flag), fmt::format("expected {}, got '{}'", expected, text));
    }
    out = *value;
    return std::nullopt;
}

std::optional<ConfigError> health_from_flags(const Options& opt, TargetGroupConfig& group) {
    HealthCheckConfig& hc = group.health_check;
    if (opt.health_check == "off") {
        hc.enabled = false;
    } else if (opt.health_check == "http") {
        hc.protocol = HealthProtocol::http;
    } else if (opt.health_check != "tcp") {
        return flag_error("--health-check",
                          fmt::format("expected tcp, http or off, got '{}'", opt.health_check));
    }
    hc.path = opt.health_path;
    if (opt.health_port != "traffic-port") {
        unsigned port = 0;
        auto [end, ec] = std::from_chars(opt.health_port.data(),
                                         opt.health_port.data() + opt.health_port.size(), port);
        if (ec != std::errc() || end != opt.health_port.data() + opt.health_port.size() ||
            port == 0 || port > 65535) {
            return flag_error(
                "--health-port",
                fmt::format("expected traffic-port or 1-65535, got '{}'", opt.health_port));
        }
        hc.port = static_cast<uint16_t>(port);
    }
    if (auto error = read_duration_flag("--health-interval", opt.health_interval,
                                        "a duration such as 1s or 30s", hc.interval)) {
        return error;
    }
    if (!opt.health_timeout.empty()) {
        Duration timeout{};
        if (auto error = read_duration_flag("--health-timeout", opt.health_timeout,
                                            "a duration such as 500ms or 5s", timeout)) {
            return error;
        }
        hc.timeout = timeout;
    }
    hc.healthy_threshold = opt.healthy_threshold;
    hc.unhealthy_threshold = opt.unhealthy_threshold;
    auto matcher = parse_matcher(opt.matcher);
    if (auto* problem = std::get_if<std::string>(&matcher))
        return flag_error("--matcher", *problem);
    hc.matcher = std::get<Matcher>(std::move(matcher));
    hc.passive = opt.passive_failures > 0;
    if (hc.passive) hc.passive_failures = opt.passive_failures;
    group.connection_termination_on_unhealthy = opt.connection_termination == "on";
    return std::nullopt;
}

// The quick local NLB emulator: one group built from repeated --target flags.
std::variant<Config, ConfigError> config_from_flags(const Options& opt) {
    Config config;
    TargetGroupConfig group;
    group.name = "default";
    if (opt.algorithm == "ring") {
        group.algorithm = Algorithm::ring;
    } else if (opt.algorithm == "maglev") {
        group.algorithm = Algorithm::maglev;
    } else {
        return flag_error("--algorithm",
                          fmt::format("expected ring or maglev, got '{}'", opt.algorithm));
    }
    group.stickiness.prefix_v4 = opt.prefix_v4;
    group.stickiness.prefix_v6 = opt.prefix_v6;
    if (auto error = read_duration_flag("--connect-timeout", opt.connect_timeout,
                                        "a duration such as 500ms or 2s", group.connect_timeout)) {
        return *error;
    }
    group.connect_retries = opt.connect_retries;
    group.proxy_protocol_v2 = opt.proxy_protocol_v2;
    if (auto error = health_from_flags(opt, group)) return *error;
    Duration idle{};
    if (auto error =
            read_duration_flag("--idle-timeout", opt.idle_timeout, "a duration from 1s to 6000s",
                               idle, Duration{1000}, Duration{6000000})) {
        return *error;
    }
    Duration header_timeout{};
    if (auto error =
            read_duration_flag("--proxy-protocol-timeout", opt.proxy_protocol_timeout,
                               "a duration such as 500ms or 3s", header_timeout, Duration{1})) {
        return *error;
    }
    for (const auto& text : opt.targets) {
        auto address = SocketAddress::parse(text);
        if (!address) {
            return flag_error("--target",
                              fmt::format("'{}' is not an address; expected ip:port such as "
                                          "127.0.0.1:9001 or [::1]:9001",
                                          text));
        }
        group.targets.push_back(TargetConfig{address->to_string(), *address, 1});
    }
    config.target_groups.push_back(std::move(group));
    for (const auto& text : opt.listen) {
        auto address = SocketAddress::parse(text);
        if (!address) {
            return flag_error("--listen",
                              fmt::format("'{}' is not an address; expected ip:port such as "
                                          "127.0.0.1:8000 or [::]:8000",
                                          text));
        }
        ListenerConfig listener{address->to_string(), *address, "default"};
        listener.idle_timeout = idle;
        listener.accept_proxy_protocol = opt.accept_proxy_protocol;
        listener.proxy_protocol_timeout = header_timeout;
        listener.access_log = opt.access_log;
        config.listeners.push_back(std::move(listener));
    }
    if (auto error = read_duration_flag("--shutdown-grace", opt.shutdown_grace,
                                        "a duration such as 30s", config.global.shutdown_grace)) {
        return *error;
    }
    if (auto error = read_duration_flag("--shutdown-delay", opt.shutdown_delay,
                                        "a duration such as 5s", config.global.shutdown_delay)) {
        return *error;
    }
    if (auto error = validate(config, "<command line>")) return *error;
    return config;
}

void raise_nofile_limit() {
    rlimit limit{};
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return;
    if (limit.rlim_cur >= limit.rlim_max) return;
    rlim_t before = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &limit) == 0) {
        log::debug("raised open-file limit from {} to {}", before, limit.rlim_max);
    } else {
        log::warn("cannot raise open-file limit above {}", before);
    }
}

// Failing to reach systemd is worth one warning, not one per status tick.
void notified(int rc) {
    static bool warned = false;
    if (rc < 0 && !warned) {
        warned = true;
        log::warn("cannot notify systemd through NOTIFY_SOCKET: {}", std::strerror(-rc));
    }
}

// The listeners close; open connections get shutdown_grace.
void begin_drain(Daemon& daemon, const std::string& why) {
    const Duration grace = daemon.shutdown_grace();
    daemon.withdraw();
    log::info("{}: stopped accepting; waiting up to {} ms for {} open connections", why,
              grace.count(), daemon.active_connections());
    daemon.stop(grace);
}

int run(Config config, DaemonOptions options) {
    log::set_level(config.global.log_level);
    if (auto problem = probe_io_uring()) {
        print_error(*problem);
        return kExitConfig;
    }
    raise_nofile_limit();

    // Signals are taken synchronously by this thread only; workers never see them.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    signal(SIGPIPE, SIG_IGN);

    // The signal loop wakes every `tick` to refresh STATUS= and, under a systemd
    // watchdog, to ping it at half its timeout. Workers then beat twice per tick,
    // so a loop that is turning never misses a ping.
    using std::chrono::milliseconds;
    const auto watchdog = sd::watchdog_interval();
    milliseconds tick{5000};
    if (watchdog) {
        tick = std::clamp(std::chrono::duration_cast<milliseconds>(*watchdog / 2), milliseconds{2},
                          tick);
        options.worker.heartbeat = tick / 2;
    }

    Daemon daemon(std::move(config), std::move(options));
    if (!daemon.start()) return kExitConfig;
    log::info("stickyd {} ready", STICKYD_VERSION);
    notified(sd::ready(daemon.status_line()));

    // A watcher thread turns "all workers returned" into a wake-up for sigwait,
    // so a crashed worker is not hidden behind a daemon that waits forever.
    StopSequence stop;
    int exit_code = kExitOk;
    std::atomic<bool> joined{false};
    std::thread joiner([&] {
        exit_code = daemon.join();
        joined = true;
        kill(getpid(), SIGTERM);
    });
    auto next_tick = std::chrono::steady_clock::now() + tick;
    for (;;) {
        const auto wake = std::min(next_tick, stop.deadline().value_or(next_tick));
        const auto left = std::max(wake - std::chrono::steady_clock::now(),
                                   std::chrono::steady_clock::duration::zero());
        const auto left_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
        const timespec timeout{static_cast<time_t>(left_ns / 1000000000),
                               static_cast<long>(left_ns % 1000000000)};
        const int sig = sigtimedwait(&signals, nullptr, &timeout);
        if (sig < 0) {
            if (errno != EAGAIN) continue;  // EINTR
            const auto now = std::chrono::steady_clock::now();
            if (stop.on_tick(now) == StopSequence::Action::drain) {
                begin_drain(daemon, "delay over");
                notified(sd::status(stop.status(daemon.status_line())));
            }
            if (now < next_tick) continue;  // woken for the end of the withdraw window only
            next_tick = now + tick;
            notified(sd::status(stop.status(daemon.status_line())));
            // Past STOPPING=1 systemd no longer expects pings.
            const bool serving = stop.phase() == StopSequence::Phase::serving;
            if (watchdog && serving && daemon.workers_progressed()) notified(sd::watchdog());
            continue;
        }
        if (joined) break;
        if (sig == SIGHUP) {
            if (stop.phase() != StopSequence::Phase::serving) continue;  // nothing to reload into
            // RELOADING=1 only for a file that validated: a refused reload changes
            // nothing, and says why in STATUS= for `systemctl status`.
            const Daemon::ReloadResult result = daemon.reload([] { notified(sd::reloading()); });
            if (result.applied) {
                notified(sd::ready(daemon.status_line()));
            } else {
                notified(sd::status(result.message));
                // Keep the failure visible until the next tick replaces it.
                next_tick = std::chrono::steady_clock::now() + tick;
            }
            continue;
        }
        const char* name = sig == SIGINT ? "SIGINT" : "SIGTERM";
        switch (stop.on_signal(daemon.shutdown_delay(), std::chrono::steady_clock::now())) {
            case StopSequence::Action::withdraw:
                daemon.withdraw();
                notified(sd::stopping());
                log::info("{} received: not ready; still accepting for the shutdown delay of {} ms",
                          name, daemon.shutdown_delay().count());
                break;
            case StopSequence::Action::drain:
                notified(sd::stopping());
                begin_drain(daemon, std::string(name) + " received");
                break;
            case StopSequence::Action::stop_now:
                log::warn("second signal: closing all connections now");
                daemon.stop(Duration{0});
                break;
            case StopSequence::Action::none:
                break;
        }
        notified(sd::status(stop.status(daemon.status_line())));
    }
    joiner.join();
    // A worker failed: we stop unasked.
    if (stop.phase() == StopSequence::Phase::serving) notified(sd::stopping());
    log::info("stopped");
    return exit_code;
}

int check_config(const std::string& path) {
    auto result = load_config_file(path);
    if (auto* error = std::get_if<ConfigError>(&result)) {
        fmt::print(stderr, "{}\n", error->to_string());
        return kExitConfig;
    }
    const auto& config = std::get<Config>(result);
    for (const std::string& warning : config_warnings(config)) {
        fmt::print(stderr, "{}: warning: {}\n", path, warning);
    }
    size_t targets = 0;
    for (const auto& group : config.target_groups) targets += group.targets.size();
    fmt::print("{}: configuration OK ({} listeners, {} target groups, {} targets)\n", path,
               config.listeners.size(), config.target_groups.size(), targets);
    return kExitOk;
}

int main_impl(int argc, char** argv) {
    Options opt;
    CLI::App app{"stickyd: a source-IP sticky TCP load balancer (AWS NLB stickiness, off AWS)",
                 "stickyd"};
    app.set_version_flag("--version,-V", std::string("stickyd ") + STICKYD_VERSION);
    auto* config_opt =
        app.add_option("--config,-c", opt.config_path, "Run with this TOML configuration file");
    auto* check_opt = app.add_option("--check-config", opt.check_path,
                                     "Validate a configuration file, then exit 0 (valid) or 1");
    auto* listen_opt = app.add_option("--listen", opt.listen,
                                      "Quick mode: address to accept clients on (repeatable)");
    auto* target_opt = app.add_option(
        "--target", opt.targets, "Quick mode: backend ip:port (repeatable, order does not matter)");
    app.add_option("--threads", opt.threads, "Worker threads (default: one per CPU)")
        ->check(CLI::Range(1U, 256U));
    app.add_option("--log-level", opt.log_level, "trace, debug, info, warn or error")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
    app.add_option("--admin-socket", opt.admin_socket,
                   "Admin endpoint unix socket (default /run/stickyd/admin.sock; \"\" = none)");
    app.add_option("--admin-address", opt.admin_address,
                   "Also serve the admin endpoint on this ip:port (e.g. 127.0.0.1:9090)");
    auto* algorithm_opt =
        app.add_option("--algorithm", opt.algorithm, "Quick mode: ring (default) or maglev")
            ->check(CLI::IsMember({"ring", "maglev"}));
    auto* prefix4_opt =
        app.add_option("--prefix-v4", opt.prefix_v4, "Quick mode: hash only this IPv4 prefix")
            ->check(CLI::Range(0U, 32U));
    auto* prefix6_opt =
        app.add_option("--prefix-v6", opt.prefix_v6, "Quick mode: hash only this IPv6 prefix")
            ->check(CLI::Range(0U, 128U));
    auto* timeout_opt = app.add_option("--connect-timeout", opt.connect_timeout,
                                       "Quick mode: backend connect timeout (default 2s)");
    auto* retries_opt = app.add_option("--connect-retries", opt.connect_retries,
                                       "Quick mode: extra connect attempts on the next target")
                            ->check(CLI::Range(0U, 16U));
    auto* grace_opt = app.add_option("--shutdown-grace", opt.shutdown_grace,
                                     "Quick mode: how long SIGTERM waits for connections");
    auto* delay_opt = app.add_option(
        "--shutdown-delay", opt.shutdown_delay,
        "Quick mode: on SIGTERM, keep accepting this long with /ready at 503 (default 0s)");
    auto* hc_opt =
        app.add_option("--health-check", opt.health_check, "Quick mode: tcp (default), http or off")
            ->check(CLI::IsMember({"tcp", "http", "off"}));
    auto* hc_path_opt =
        app.add_option("--health-path", opt.health_path, "Quick mode: HTTP check path (default /)");
    auto* hc_port_opt = app.add_option("--health-port", opt.health_port,
                                       "Quick mode: check port (default traffic-port)");
    auto* hc_interval_opt = app.add_option("--health-interval", opt.health_interval,
                                           "Quick mode: check interval (default 1s)");
    auto* hc_timeout_opt =
        app.add_option("--health-timeout", opt.health_timeout,
                       "Quick mode: check timeout, below the interval (default 10s tcp / 6s "
                       "http, or half the interval when the interval is not longer than that: "
                       "500ms at the default 1s)");
    auto* hc_rise_opt = app.add_option("--healthy-threshold", opt.healthy_threshold,
                                       "Quick mode: passes to become healthy (default 2)")
                            ->check(CLI::Range(2U, 10U));
    auto* hc_fall_opt = app.add_option("--unhealthy-threshold", opt.unhealthy_threshold,
                                       "Quick mode: failures to become unhealthy (default 2)")
                            ->check(CLI::Range(2U, 10U));
    auto* hc_matcher_opt = app.add_option("--matcher", opt.matcher,
                                          "Quick mode: HTTP codes that pass (default 200-399)");
    auto* passive_opt =
        app.add_option("--passive-failures", opt.passive_failures,
                       "Quick mode: consecutive client connect failures that make a target "
                       "unhealthy (default 2; 0 = off)")
            ->check(CLI::Range(0U, 100U));
    auto* termination_opt =
        app.add_option("--connection-termination", opt.connection_termination,
                       "Quick mode: reset connections of a target that turns unhealthy (on|off)")
            ->check(CLI::IsMember({"on", "off"}));
    auto* idle_opt = app.add_option("--idle-timeout", opt.idle_timeout,
                                    "Quick mode: close connections idle this long (default 350s)");
    auto* pp2_opt = app.add_flag("--proxy-protocol-v2", opt.proxy_protocol_v2,
                                 "Quick mode: send a PROXY v2 header to targets first");
    auto* accept_pp_opt =
        app.add_flag("--accept-proxy-protocol", opt.accept_proxy_protocol,
                     "Quick mode: clients start with a PROXY v1/v2 header; route by it");
    auto* pp_timeout_opt =
        app.add_option("--proxy-protocol-timeout", opt.proxy_protocol_timeout,
                       "Quick mode: how long a client may take to send its header (default 3s)");
    auto* access_opt = app.add_flag("--access-log", opt.access_log,
                                    "Quick mode: log one info line per finished connection");
    config_opt->excludes(check_opt)->excludes(listen_opt)->excludes(target_opt);
    for (auto* quick : {algorithm_opt,   prefix4_opt,     prefix6_opt, timeout_opt, retries_opt,
                        grace_opt,       delay_opt,       hc_opt,      hc_path_opt, hc_port_opt,
                        hc_interval_opt, hc_timeout_opt,  hc_rise_opt, hc_fall_opt, hc_matcher_opt,
                        passive_opt,     termination_opt, idle_opt,    pp2_opt,     accept_pp_opt,
                        pp_timeout_opt,  access_opt}) {
        quick->excludes(config_opt)->excludes(check_opt);
    }
    check_opt->excludes(listen_opt)->excludes(target_opt);

    if (auto status = parse_command_line(app, argc, argv, "stickyd")) return *status;

    if (!opt.check_path.empty()) return check_config(opt.check_path);

    std::variant<Config, ConfigError> loaded;
    if (!opt.config_path.empty()) {
        loaded = load_config_file(opt.config_path);
    } else if (!opt.listen.empty() || !opt.targets.empty()) {
        if (opt.listen.empty()) {
            print_error("quick mode needs --listen ADDR as well as --target ADDR");
            return kExitUsage;
        }
        if (opt.targets.empty()) {
            print_error("quick mode needs at least one --target ADDR");
            return kExitUsage;
        }
        loaded = config_from_flags(opt);
    } else {
        print_error(
            "nothing to do: give --config FILE, --check-config FILE, or --listen ADDR --target "
            "ADDR... (see stickyd --help)");
        return kExitUsage;
    }
    if (auto* error = std::get_if<ConfigError>(&loaded)) {
        fmt::print(stderr, "{}\n", error->to_string());
        return kExitConfig;
    }
    Config config = std::move(std::get<Config>(loaded));
    DaemonOptions options;
    options.config_path = opt.config_path;
    options.admin_optional = opt.config_path.empty();
    if (opt.threads != 0) options.threads = opt.threads;
    if (!opt.log_level.empty()) options.log_level = *parse_log_level(opt.log_level);
    options.admin_socket = opt.admin_socket;
    if (!opt.admin_address.empty()) {
        auto address = SocketAddress::parse(opt.admin_address);
        if (!address) {
            print_error(
                fmt::format("--admin-address: '{}' is not an address; expected ip:port "
                            "such as 127.0.0.1:9090",
                            opt.admin_address));
            return kExitUsage;
        }
        options.admin_address = *address;
    }
    apply_overrides(config, options);
    if (auto error = validate(config, "<command line>")) {
        fmt::print(stderr, "{}\n", error->to_string());
        return kExitConfig;
    }
    return run(std::move(config), std::move(options));
}

}  // namespace
}  // namespace stickyd

int main(int argc, char** argv) {
    return stickyd::main_impl(argc, argv);
}
