// Quick mode: a local NLB emulator from flags alone, no configuration file. One
// target group "default" of the --target addresses behind every --listen address,
// with checks fast enough for local use. A --target HOST:PORT is a name the group
// resolves as a file's dns = "HOST:PORT" (localhost:9001, web:8080 in a compose
// network), beside the literal addresses.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <variant>
#include <vector>

#include "stickyd/config.hpp"

namespace stickyd {

struct QuickFlags {
    std::vector<std::string> listen;
    std::vector<std::string> targets;  // ip:port or HOST:PORT
    std::string dns_refresh;           // empty = dns_refresh's default
    std::string algorithm = "ring";
    unsigned prefix_v4 = 32;
    unsigned prefix_v6 = 128;
    std::string connect_timeout = "2s";
    unsigned connect_retries = 2;
    std::string shutdown_grace = "30s";
    std::string shutdown_delay = "0s";
    std::string idle_timeout = "350s";
    bool proxy_protocol_v2 = false;
    bool preserve_client_ip = false;
    bool accept_proxy_protocol = false;
    std::string proxy_protocol_timeout = "3s";
    bool access_log = false;
    std::vector<std::string> allow;  // CIDR prefixes; empty = every client not denied
    std::vector<std::string> deny;
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
    unsigned min_healthy_count = 1;
    std::string min_healthy_percent = "off";
};

// Adds the flags to `app` under the help headings "Quick mode" and "Health checks
// (quick mode)", and returns them: the caller refuses them beside a config file.
std::vector<CLI::Option*> add_quick_mode_flags(CLI::App& app, QuickFlags& flags);

// The configuration the flags describe, or one line naming the flag at fault (and
// which --target or --listen, counting from 1), e.g.
// "--target #2 127.0.0.1:9001: duplicate address". A --target that is an address
// is a static target with that id; any other HOST:PORT is one of the group's dns
// names (duplicates are refused alike: an address once, a name once whatever its
// case).
std::variant<Config, std::string> config_from_flags(const QuickFlags& flags);

// A validation error of a config built from the command line, told in flags
// rather than config keys where a flag sets that key.
std::string as_flag_error(const ConfigError& error, const QuickFlags& flags);

}  // namespace stickyd
