// stickyd: parses the command line and dispatches: --check-config validates a file,
// --config or quick mode's flags build a Config that serve() runs.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>
#include <variant>
#include <vector>

#include "daemon/command_line.hpp"
#include "daemon/daemon.hpp"
#include "daemon/quick_mode.hpp"
#include "daemon/signal_loop.hpp"
#include "stickyd/config.hpp"
#include "stickyd/config_warnings.hpp"
#include "stickyd/log.hpp"
#include "stickyd/words.hpp"
#include "stickyd_version.h"

namespace stickyd {
namespace {

constexpr int kExitOk = 0;

constexpr const char* kDescription =
    "stickyd: a source-IP sticky TCP load balancer (AWS NLB stickiness, off AWS)\n\n"
    "  stickyd --config FILE          run with a configuration file\n"
    "  stickyd --check-config FILE    validate one, then exit\n"
    "  stickyd --listen IP:PORT --target IP:PORT|HOST:PORT...\n"
    "                                 quick mode: no file, flags only\n\n"
    "Exit status: 0 done; 1 the configuration or the environment is wrong (a bad file,\n"
    "a port in use, no io_uring); 2 the command line is wrong.";

constexpr const char* kDaemon = "Daemon";

struct Flags {
    std::string config_path;
    std::string check_path;
    unsigned threads = 0;
    std::string log_level;
    std::optional<std::string> admin_socket;
    std::string admin_address;
    std::string metrics_address;
    QuickFlags quick;
};

struct Parsed {
    CLI::Option* config = nullptr;
    CLI::Option* check = nullptr;
    std::vector<CLI::Option*> quick;
};

int usage_error(std::string_view message) {
    fmt::print(stderr, "stickyd: {}\n", message);
    return kExitUsageError;
}

Parsed add_flags(CLI::App& app, Flags& f) {
    app.set_version_flag("--version,-V", std::string("stickyd ") + STICKYD_VERSION);
    Parsed parsed;
    parsed.config =
        app.add_option("--config,-c", f.config_path, "Run with this TOML configuration file")
            ->group(kDaemon);
    parsed.check = app.add_option("--check-config", f.check_path,
                                  "Validate a configuration file, then exit 0 (valid) or 1")
                       ->group(kDaemon);
    app.add_option("--threads", f.threads, "Worker threads (default: one per CPU)")
        ->check(number_in(1, 256))
        ->group(kDaemon);
    app.add_option("--log-level", f.log_level, "trace, debug, info, warn or error")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}))
        ->group(kDaemon);
    app.add_option("--admin-socket", f.admin_socket,
                   "Admin endpoint unix socket (default /run/stickyd/admin.sock; \"\" = none)")
        ->group(kDaemon);
    app.add_option("--admin-address", f.admin_address,
                   "Also serve the admin endpoint on this ip:port (e.g. 127.0.0.1:9090)")
        ->group(kDaemon);
    app.add_option("--metrics-address", f.metrics_address,
                   "Serve only GET /metrics, /status and /ready on this ip:port (read-only)")
        ->group(kDaemon);
    parsed.quick = add_quick_mode_flags(app, f.quick);
    return parsed;
}

// Quick mode's flags build their own configuration, so they make no sense beside a
// file; said once here rather than as an exclusion on every flag.
std::optional<std::string> mixed_modes(const Parsed& parsed) {
    for (CLI::Option* file : {parsed.config, parsed.check}) {
        if (file->count() == 0) continue;
        if (file == parsed.config && parsed.check->count() != 0) {
            return "--check-config cannot be used with --config";
        }
        for (CLI::Option* quick : parsed.quick) {
            if (quick->count() == 0) continue;
            return fmt::format(
                "{} cannot be used with {} (quick mode flags build their own configuration)",
                quick->get_name(), file->get_name());
        }
    }
    return std::nullopt;
}

int check_config(const std::string& path) {
    auto result = load_config_file(path);
    if (auto* error = std::get_if<ConfigError>(&result)) {
        fmt::print(stderr, "{}\n", error->to_string());
        return kExitConfigError;
    }
    const auto& config = std::get<Config>(result);
    for (const std::string& warning : config_warnings(config)) {
        fmt::print(stderr, "{}: warning: {}\n", path, warning);
    }
    if (auto warning = admin_address_warning(config.global)) {
        fmt::print(stderr, "{}: warning: {}\n", path, *warning);
    }
    size_t targets = 0;
    size_t names = 0;
    for (const auto& group : config.target_groups) {
        targets += group.targets.size();
        names += group.dns.size();
    }
    fmt::print("{}: configuration OK ({}, {}, {}{})\n", path,
               count_of(config.listeners.size(), "listener"),
               count_of(config.target_groups.size(), "target group"), count_of(targets, "target"),
               names == 0 ? "" : ", " + count_of(names, "DNS name"));
    return kExitOk;
}

// The daemon-wide flags, which win over the file on start and on every reload.
std::variant<DaemonOptions, std::string> daemon_options(const Flags& f) {
    DaemonOptions options;
    options.config_path = f.config_path;
    options.admin_optional = f.config_path.empty();
    if (f.threads != 0) options.threads = f.threads;
    if (!f.log_level.empty()) options.log_level = *parse_log_level(f.log_level);
    options.admin_socket = f.admin_socket;
    if (!f.admin_address.empty()) {
        auto address = SocketAddress::parse(f.admin_address);
        if (!address) {
            return fmt::format(
                "--admin-address: '{}' is not an address; expected ip:port such as 127.0.0.1:9090",
                f.admin_address);
        }
        options.admin_address = *address;
    }
    if (!f.metrics_address.empty()) {
        auto address = SocketAddress::parse(f.metrics_address);
        if (!address) {
            return fmt::format(
                "--metrics-address: '{}' is not an address; expected ip:port such as "
                "127.0.0.1:9100",
                f.metrics_address);
        }
        options.metrics_address = *address;
    }
    return options;
}

int run_with_file(const Flags& f, DaemonOptions options) {
    auto loaded = load_config_file(f.config_path);
    if (auto* error = std::get_if<ConfigError>(&loaded)) {
        fmt::print(stderr, "{}\n", error->to_string());
        return kExitConfigError;
    }
    Config config = std::move(std::get<Config>(loaded));
    apply_overrides(config, options);
    if (auto error = validate(config, "<command line>")) {
        return usage_error(as_flag_error(*error, f.quick));
    }
    return serve(std::move(config), std::move(options));
}

int run_quick_mode(const Flags& f, DaemonOptions options) {
    if (f.quick.listen.empty()) {
        return usage_error(
            "quick mode needs --listen IP:PORT as well as --target IP:PORT or HOST:PORT");
    }
    if (f.quick.targets.empty()) {
        return usage_error("quick mode needs at least one --target IP:PORT or HOST:PORT");
    }
    auto built = config_from_flags(f.quick);
    if (auto* error = std::get_if<std::string>(&built)) return usage_error(*error);
    Config config = std::move(std::get<Config>(built));
    apply_overrides(config, options);
    if (auto error = validate(config, "<command line>")) {
        return usage_error(as_flag_error(*error, f.quick));
    }
    return serve(std::move(config), std::move(options));
}

int main_impl(int argc, char** argv) {
    Flags f;
    CLI::App app{kDescription, "stickyd"};
    app.allow_extras();
    const Parsed parsed = add_flags(app, f);
    if (auto status = parse_command_line(app, argc, argv, "stickyd")) return *status;
    if (auto problem = mixed_modes(parsed)) return usage_error(*problem);
    if (!f.check_path.empty()) return check_config(f.check_path);

    auto options = daemon_options(f);
    if (auto* error = std::get_if<std::string>(&options)) return usage_error(*error);
    if (!f.config_path.empty()) return run_with_file(f, std::get<DaemonOptions>(options));
    if (!f.quick.listen.empty() || !f.quick.targets.empty()) {
        return run_quick_mode(f, std::get<DaemonOptions>(options));
    }
    return usage_error(
        "nothing to do: give --config FILE, --check-config FILE, or --listen ADDR --target "
        "ADDR... (see stickyd --help)");
}

}  // namespace
}  // namespace stickyd

int main(int argc, char** argv) {
    return stickyd::main_impl(argc, argv);
}
