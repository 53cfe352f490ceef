// Service-life keys: the admin endpoint and metrics_address, idle timeout, PROXY
// protocol, deregistration, DNS, minimum_healthy_targets and shutdown_delay.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <string>

#include "stickyd/config.hpp"
#include "tests/support/config_fixtures.hpp"

using namespace stickyd;
using namespace stickyd::test;
using namespace std::chrono_literals;

// ---------------------------------------------------------------------------------
// Service-life keys: admin endpoint, idle timeout, PROXY protocol, deregistration, DNS.

TEST_CASE("service-life keys have NLB defaults") {
    const Config config = loaded(kMinimal);
    CHECK(config.global.admin_socket == "/run/stickyd/admin.sock");
    CHECK_FALSE(config.global.admin_address.has_value());
    const ListenerConfig& listener = config.listeners.at(0);
    CHECK(listener.idle_timeout == 350s);
    CHECK_FALSE(listener.accept_proxy_protocol);
    CHECK(listener.proxy_protocol_timeout == 3s);
    const TargetGroupConfig& group = config.target_groups.at(0);
    CHECK(group.deregistration_delay.timeout == 300s);
    CHECK_FALSE(group.deregistration_delay.connection_termination);
    CHECK_FALSE(group.proxy_protocol_v2);
    CHECK(group.dns.empty());
}

TEST_CASE("service-life keys parse") {
    const Config config = loaded(R"(
[global]
admin_socket = "/tmp/stickyd-admin.sock"
admin_address = "127.0.0.1:9090"

[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"
idle_timeout = "2s"
accept_proxy_protocol = true
proxy_protocol_timeout = "500ms"

[[target_group]]
name = "web"
proxy_protocol_v2 = true
dns = "app-headless.default.svc.cluster.local:8080"
dns_refresh = "10s"

[target_group.deregistration_delay]
timeout = 0
connection_termination = true
)");
    CHECK(config.global.admin_socket == "/tmp/stickyd-admin.sock");
    REQUIRE(config.global.admin_address.has_value());
    CHECK(config.global.admin_address->to_string() == "127.0.0.1:9090");
    const ListenerConfig& listener = config.listeners.at(0);
    CHECK(listener.idle_timeout == 2s);
    CHECK(listener.accept_proxy_protocol);
    CHECK(listener.proxy_protocol_timeout == 500ms);
    const TargetGroupConfig& group = config.target_groups.at(0);
    CHECK(group.proxy_protocol_v2);
    CHECK(group.targets.empty());
    REQUIRE(group.dns.size() == 1);
    CHECK(group.dns[0].name == "app-headless.default.svc.cluster.local");
    CHECK(group.dns[0].port == 8080);
    CHECK(group.dns[0].refresh == 10s);
    CHECK(group.deregistration_delay.timeout == 0s);
    CHECK(group.deregistration_delay.connection_termination);
}

// ---------------------------------------------------------------------------------
// minimum_healthy_targets and metrics_address.

TEST_CASE("minimum_healthy_targets: NLB defaults, both spellings, off") {
    CHECK(loaded(kMinimal).target_groups[0].minimum_healthy_targets ==
          MinimumHealthyTargets{1, {}});
    const Config table = loaded(std::string(kMinimal) + R"(
[target_group.minimum_healthy_targets]
count = 3
percentage = 50
)");
    CHECK(table.target_groups[0].minimum_healthy_targets == MinimumHealthyTargets{3, 50});
    const Config inline_table = loaded(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"
minimum_healthy_targets = { count = 2, percentage = "off" }
)");
    CHECK(inline_table.target_groups[0].minimum_healthy_targets == MinimumHealthyTargets{2, {}});
    const Config bounds = loaded(std::string(kMinimal) + R"(
[target_group.minimum_healthy_targets]
count = 50000
percentage = 100
)");
    CHECK(bounds.target_groups[0].minimum_healthy_targets == MinimumHealthyTargets{50000, 100});
}

TEST_CASE("minimum_healthy_targets: errors") {
    const std::string base = std::string(kMinimal) + "\n[target_group.minimum_healthy_targets]\n";
    expect_errors({
        {base + "count = 0\n",
         "t.toml:12:9: target_group[0].minimum_healthy_targets.count: must be an integer from 1 "
         "to 50000, got 0"},
        {base + "count = 50001\n",
         "t.toml:12:9: target_group[0].minimum_healthy_targets.count: must be an integer from 1 "
         "to 50000, got 50001"},
        {base + "count = \"off\"\n",
         "t.toml:12:9: target_group[0].minimum_healthy_targets.count: must be an integer from 1 "
         "to 50000, got string \"off\""},
        {base + "percentage = 0\n",
         "t.toml:12:14: target_group[0].minimum_healthy_targets.percentage: must be an integer "
         "from 1 to 100 or \"off\", got 0"},
        {base + "percentage = 101\n",
         "t.toml:12:14: target_group[0].minimum_healthy_targets.percentage: must be an integer "
         "from 1 to 100 or \"off\", got 101"},
        {base + "percentage = \"50%\"\n",
         "t.toml:12:14: target_group[0].minimum_healthy_targets.percentage: must be an integer "
         "from 1 to 100 or \"off\", got string \"50%\""},
        {base + "percentage = 50.5\n",
         "t.toml:12:14: target_group[0].minimum_healthy_targets.percentage: must be an integer "
         "from 1 to 100 or \"off\", got floating-point 50.5"},
        {base + "cuont = 2\n",
         "t.toml:12:1: target_group[0].minimum_healthy_targets.cuont: unknown key (did you mean "
         "\"count\"?)"},
        {R"(
[[target_group]]
name = "web"
minimum_healthy_targets = 3
)",
         "t.toml:3:27: target_group[0].minimum_healthy_targets: expected a table "
         "([target_group.minimum_healthy_targets]), got integer 3"},
    });
}

TEST_CASE("minimum_healthy_targets: validate() checks a config built in memory") {
    Config config = cli_config();
    config.target_groups[0].minimum_healthy_targets.count = 0;
    CHECK(validate_error(config) ==
          "<command line>: target_group[0].minimum_healthy_targets.count: must be an integer "
          "from 1 to 50000, got 0");
    config.target_groups[0].minimum_healthy_targets = {1, 101};
    CHECK(validate_error(config) ==
          "<command line>: target_group[0].minimum_healthy_targets.percentage: must be an "
          "integer from 1 to 100 or \"off\", got 101");
    config.target_groups[0].minimum_healthy_targets = {2, 100};
    CHECK(validate_error(config) == "<valid>");
}

TEST_CASE("metrics_address: parsed, and kept off the other sockets") {
    const std::string listeners = R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[listener]]
bind = "[::]:8001"
target_group = "web"

[[target_group]]
name = "web"
)";
    auto with_global = [&](std::string_view global) {
        return "\n[global]\n" + std::string(global) + listeners;
    };
    const Config ok = loaded(with_global("metrics_address = \"127.0.0.1:9100\"\n"));
    REQUIRE(ok.global.metrics_address.has_value());
    CHECK(ok.global.metrics_address->to_string() == "127.0.0.1:9100");
    CHECK_FALSE(loaded(kMinimal).global.metrics_address.has_value());

    CHECK(error_of(with_global("metrics_address = \"localhost:9100\"\n"))
              .starts_with("t.toml:2:19: global.metrics_address: "));
    expect_errors({
        {with_global("metrics_address = 9100\n"),
         "t.toml:2:19: global.metrics_address: expected a string \"ip:port\" such as "
         "\"127.0.0.1:9100\", got integer 9100"},
        {with_global("admin_address = \"127.0.0.1:9090\"\n"
                     "metrics_address = \"127.0.0.1:9090\"\n"),
         "t.toml:3:19: global.metrics_address: 127.0.0.1:9090 clashes with admin_address "
         "127.0.0.1:9090; give it a port of its own"},
        // A wildcard covers every address of its family ([::] of both: dual-stack).
        {with_global("admin_address = \"0.0.0.0:9090\"\n"
                     "metrics_address = \"127.0.0.1:9090\"\n"),
         "t.toml:3:19: global.metrics_address: 127.0.0.1:9090 clashes with admin_address "
         "0.0.0.0:9090; give it a port of its own"},
        {with_global("admin_address = \"127.0.0.1:9090\"\n"
                     "metrics_address = \"[::]:9090\"\n"),
         "t.toml:3:19: global.metrics_address: [::]:9090 clashes with admin_address "
         "127.0.0.1:9090; give it a port of its own"},
        {with_global("metrics_address = \"127.0.0.1:8000\"\n"),
         "t.toml:2:19: global.metrics_address: 127.0.0.1:8000 clashes with listener[0].bind "
         "127.0.0.1:8000 at line 5; give it a port of its own"},
        {with_global("metrics_address = \"127.0.0.2:8001\"\n"),
         "t.toml:2:19: global.metrics_address: 127.0.0.2:8001 clashes with listener[1].bind "
         "[::]:8001 at line 9; give it a port of its own"},
        // Other ports, or one IP of each family, do not clash.
        {with_global("admin_address = \"127.0.0.1:9090\"\n"
                     "metrics_address = \"127.0.0.1:9091\"\n"),
         "<loaded>"},
        {with_global("admin_address = \"0.0.0.0:9090\"\n"
                     "metrics_address = \"[::1]:9090\"\n"),
         "<loaded>"},
        {with_global("admin_address = \"127.0.0.1:9090\"\n"
                     "metrics_address = \"127.0.0.2:9090\"\n"),
         "<loaded>"},
    });
}

TEST_CASE("metrics_address: validate() checks a config built in memory") {
    Config config = cli_config();
    config.global.metrics_address = addr("127.0.0.1:8000");
    CHECK(validate_error(config) ==
          "<command line>: global.metrics_address: 127.0.0.1:8000 clashes with listener[0].bind "
          "127.0.0.1:8000; give it a port of its own");
    config.global.metrics_address = addr("127.0.0.1:9100");
    CHECK(validate_error(config) == "<valid>");
}

TEST_CASE("an empty admin_socket turns the unix socket off") {
    const Config config = loaded(R"(
[global]
admin_socket = ""

[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"
)");
    CHECK(config.global.admin_socket.empty());
}

TEST_CASE("service-life keys are checked") {
    constexpr std::string_view kListener = R"(
[[target_group]]
name = "web"

[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"
)";
    auto with = [&](std::string_view extra) { return std::string(kListener) + std::string(extra); };
    expect_errors({
        {with("idle_timeout = \"0s\"\n"),
         "t.toml:7:16: listener[0].idle_timeout: must be a duration from 1s to 100m, got 0s"},
        {with("idle_timeout = \"2h\"\n"),
         "t.toml:7:16: listener[0].idle_timeout: must be a duration from 1s to 100m, got 2h"},
        {with("accept_proxy_protocol = \"yes\"\n"),
         "t.toml:7:25: listener[0].accept_proxy_protocol: expected true or false, got string "
         "\"yes\""},
        {with("proxy_protocol_timeout = \"1s\"\n"),
         "t.toml:7:26: listener[0].proxy_protocol_timeout: only applies with "
         "accept_proxy_protocol = true; set that or remove the key"},
        {R"(
[global]
admin_socket = "run/admin.sock"
)",
         "t.toml:2:16: global.admin_socket: must be an absolute path, got \"run/admin.sock\""},
    });
    CHECK(error_of(R"(
[global]
admin_address = "localhost:9090"
)")
              .starts_with("t.toml:2:17: global.admin_address: "));
    CHECK(error_of(R"(
[[target_group]]
name = "web"
[target_group.deregistration_delay]
timeout = "2h"
)") == "t.toml:4:11: target_group[0].deregistration_delay.timeout: must be a duration from 0s to "
       "1h, got 2h");
    CHECK(error_of(R"(
[[target_group]]
name = "web"
[target_group.deregistration_delay]
timout = "2s"
)")
              .starts_with("t.toml:4:1: target_group[0].deregistration_delay.timout: unknown key"));
    CHECK(error_of(R"(
[[target_group]]
name = "web"
deregistration_delay = 30
)")
              .starts_with("t.toml:3:24: target_group[0].deregistration_delay: expected a table"));
    CHECK(error_of(R"(
[[target_group]]
name = "web"
dns_refresh = "5s"
)") == "t.toml:3:15: target_group[0].dns_refresh: only applies with dns set; set it or remove "
       "the key");
    for (std::string_view bad :
         {"app", "app:0", "app:65536", ":80", "a..b:80", "a b:80", "app:x"}) {
        CAPTURE(bad);
        CHECK(error_of(fmt::format("[[target_group]]\nname = \"web\"\ndns = \"{}\"\n", bad)) ==
              fmt::format("t.toml:3:7: target_group[0].dns: expected \"NAME:PORT\" such as "
                          "\"app-headless.default.svc.cluster.local:8080\", got \"{}\"",
                          bad));
    }
    CHECK(error_of(R"(
[[target_group]]
name = "web"
dns = "app:80"
dns_refresh = "10ms"
)") == "t.toml:4:15: target_group[0].dns_refresh: must be a duration from 100ms to 1h, got 10ms");
}

TEST_CASE("validate: service-life ranges for configs built in memory") {
    Config config = cli_config();
    config.listeners[0].idle_timeout = 0s;
    CHECK(validate_error(config) ==
          "<command line>: listener[0].idle_timeout: must be a duration from 1s to 100m, got 0s");
    config = cli_config();
    config.target_groups[0].deregistration_delay.timeout = 3601s;
    CHECK(validate_error(config) ==
          "<command line>: target_group[0].deregistration_delay.timeout: "
          "must be a duration from 0s to 1h, got 3601s");
    config = cli_config();
    config.global.admin_socket = "/" + std::string(200, 'a');
    CHECK(validate_error(config) ==
          "<command line>: global.admin_socket: must be shorter than 108 bytes (a unix socket "
          "path), got 201");
}

TEST_CASE("shutdown_delay: default 0, a duration up to 10m, and one line when wrong") {
    CHECK(loaded(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"
[[target_group]]
name = "web"
[[target_group.target]]
address = "10.0.0.1:80"
)")
              .global.shutdown_delay == 0s);
    CHECK(loaded(R"(
[global]
shutdown_delay = "5s"
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"
[[target_group]]
name = "web"
[[target_group.target]]
address = "10.0.0.1:80"
)")
              .global.shutdown_delay == 5s);
    CHECK(error_of(R"(
[global]
shutdown_delay = "11m"
)") == "t.toml:2:18: global.shutdown_delay: must be a duration from 0s to 10m, got 11m");
}
