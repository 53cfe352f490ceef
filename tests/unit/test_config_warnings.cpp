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
