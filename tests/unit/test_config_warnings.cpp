// Warnings about valid configurations that are probably mistakes.
#include "stickyd/config_warnings.hpp"

#include <doctest/doctest.h>

using namespace stickyd;

namespace {

Config parsed(std::string_view text) {
    auto result = parse_config(text, "t.toml");
    if (auto* error = std::get_if<ConfigError>(&result)) FAIL(error->to_string());
    return std::get<Config>(result);
}

}  // namespace

TEST_CASE("a static group without targets and a group no listener uses are warned about") {
    const Config config = parsed(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "empty"

[[listener]]
bind = "127.0.0.1:8001"
target_group = "web"

[[target_group]]
name = "empty"

[[target_group]]
name = "web"
[[target_group.target]]
address = "127.0.0.1:9001"

[[target_group]]
name = "spare"
[[target_group.target]]
address = "127.0.0.1:9002"

[[target_group]]
name = "nothing"

[[target_group]]
name = "dns"
dns = "backend.example:80"
)");
    const std::vector<std::string> warnings = config_warnings(config);
    const std::vector<std::string> expected = {
        "target group 'empty' has no targets (none listed and no dns): its listeners will close "
        "every client",
        "target group 'spare' is not used by any listener",
        "target group 'nothing' has no targets (none listed and no dns): it routes nothing",
        "target group 'nothing' is not used by any listener",
        "target group 'dns' is not used by any listener",
    };
    CHECK(warnings == expected);
}

TEST_CASE("a config where every group has targets and a listener says nothing") {
    const Config config = parsed(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"
dns = "backend.example:80"
)");
    CHECK(config_warnings(config).empty());
}

TEST_CASE("a minimum_healthy_targets.count above a static group's size is warned about") {
    const Config config = parsed(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[listener]]
bind = "127.0.0.1:8001"
target_group = "fits"

[[listener]]
bind = "127.0.0.1:8002"
target_group = "dns"

[[target_group]]
name = "web"
minimum_healthy_targets = { count = 3 }
[[target_group.target]]
address = "127.0.0.1:9001"
[[target_group.target]]
address = "127.0.0.1:9002"

[[target_group]]
name = "fits"
minimum_healthy_targets = { count = 2 }
[[target_group.target]]
address = "127.0.0.1:9001"
[[target_group.target]]
address = "127.0.0.1:9002"

[[target_group]]
name = "dns"
dns = "backend.example:80"
minimum_healthy_targets = { count = 3 }
)");
    const std::vector<std::string> expected = {
        "target group 'web': minimum_healthy_targets.count 3 is more than its 2 targets: one "
        "unhealthy target makes it fail open (route to all of them)",
    };
    CHECK(config_warnings(config) == expected);
}

TEST_CASE("admin_address off loopback is warned about, naming metrics_address") {
    GlobalConfig global;
    CHECK_FALSE(admin_address_warning(global).has_value());
    for (const char* loopback :
         {"127.0.0.1:9090", "127.1.2.3:9090", "[::1]:9090", "[::ffff:127.0.0.1]:9090"}) {
        CAPTURE(loopback);
        global.admin_address = SocketAddress::parse(loopback);
        CHECK_FALSE(admin_address_warning(global).has_value());
    }
    for (const char* exposed : {"0.0.0.0:9090", "[::]:9090", "10.0.0.5:9090", "[fd00::1]:9090",
                                "[::2]:9090", "128.0.0.1:9090"}) {
        CAPTURE(exposed);
        global.admin_address = SocketAddress::parse(exposed);
        CHECK(admin_address_warning(global).has_value());
    }
    global.admin_address = SocketAddress::parse("0.0.0.0:9090");
    CHECK(*admin_address_warning(global) ==
          "admin_address 0.0.0.0:9090 is not on loopback: whoever reaches it can drain targets "
          "(the admin endpoint has no authentication); keep it on 127.0.0.1 or [::1] and let "
          "Prometheus scrape metrics_address, which serves only /metrics, /status and /ready");
}
