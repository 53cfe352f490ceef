// The configuration loader: valid files to the expected Config, defaults, the example
// configurations, parse_duration, and reading files.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "stickyd/config.hpp"
#include "tests/support/config_fixtures.hpp"

using namespace stickyd;
using namespace stickyd::test;
using namespace std::chrono_literals;

namespace {

std::string source_root() {
    if (const char* env = std::getenv("STICKYD_SOURCE_ROOT")) return env;
#ifdef STICKYD_SOURCE_ROOT
    return STICKYD_SOURCE_ROOT;
#else
    return "..";
#endif
}

}  // namespace

// ---------------------------------------------------------------------------------
// Loading valid files.

TEST_CASE("a full config parses to the expected struct") {
    Config c = loaded(R"(
[global]
threads = 4
log_level = "debug"
shutdown_grace = "90s"

[[listener]]
name = "front"
bind = "127.0.0.1:8000"
target_group = "web"

[[listener]]
bind = "[::1]:8001"
target_group = "api"

[[target_group]]
name = "web"
algorithm = "maglev"
maglev_table_size = 251
connect_timeout = "750ms"
connect_retries = 5

[target_group.stickiness]
type = "source_ip"
enabled = true
prefix_v4 = 24
prefix_v6 = 64

[[target_group.target]]
id = "a"
address = "10.0.0.1:80"
weight = 3

[[target_group.target]]
address = "[fd00::2]:8080"

[[target_group]]
name = "api"
)");
    CHECK(c.global.threads == 4);
    CHECK(c.global.log_level == LogLevel::debug);
    CHECK(c.global.shutdown_grace == 90s);

    REQUIRE(c.listeners.size() == 2);
    CHECK(c.listeners[0].name == "front");
    CHECK(c.listeners[0].bind == addr("127.0.0.1:8000"));
    CHECK(c.listeners[0].target_group == "web");
    CHECK(c.listeners[1].name == "[::1]:8001");
    CHECK(c.listeners[1].bind == addr("[::1]:8001"));
    CHECK(c.listeners[1].target_group == "api");

    REQUIRE(c.target_groups.size() == 2);
    const auto& web = c.target_groups[0];
    CHECK(web.name == "web");
    CHECK(web.algorithm == Algorithm::maglev);
    CHECK(web.maglev_table_size == 251);
    CHECK(web.connect_timeout == 750ms);
    CHECK(web.connect_retries == 5);
    CHECK(web.stickiness.prefix_v4 == 24);
    CHECK(web.stickiness.prefix_v6 == 64);
    REQUIRE(web.targets.size() == 2);
    CHECK(web.targets[0].id == "a");
    CHECK(web.targets[0].address == addr("10.0.0.1:80"));
    CHECK(web.targets[0].weight == 3);
    CHECK(web.targets[1].id == "[fd00::2]:8080");
    CHECK(web.targets[1].address == addr("[fd00::2]:8080"));
    CHECK(web.targets[1].weight == 1);

    const auto& api = c.target_groups[1];
    CHECK(api.name == "api");
    CHECK(api.targets.empty());
}

TEST_CASE("defaults fill in") {
    Config c = loaded(kMinimal);
    CHECK(c.global.threads == 0);
    CHECK(c.global.splice_pipes == 16);
    CHECK(c.global.log_level == LogLevel::info);
    CHECK(c.global.shutdown_grace == 30s);
    REQUIRE(c.listeners.size() == 1);
    CHECK(c.listeners[0].name == "127.0.0.1:8000");
    REQUIRE(c.target_groups.size() == 1);
    const auto& g = c.target_groups[0];
    CHECK(g.algorithm == Algorithm::ring);
    CHECK(g.maglev_table_size == 65537);
    CHECK(g.connect_timeout == 2s);
    CHECK(g.connect_retries == 2);
    CHECK(g.stickiness.prefix_v4 == 32);
    CHECK(g.stickiness.prefix_v6 == 128);
    REQUIRE(g.targets.size() == 1);
    CHECK(g.targets[0].id == "127.0.0.1:9001");
    CHECK(g.targets[0].weight == 1);
}

TEST_CASE("default names and ids are the normalised address") {
    Config c = loaded(R"(
[[listener]]
bind = "[0:0::1]:8000"
target_group = "web"

[[target_group]]
name = "web"

[[target_group.target]]
address = "[0::1]:9001"
)");
    CHECK(c.listeners[0].name == "[::1]:8000");
    CHECK(c.target_groups[0].targets[0].id == "[::1]:9001");
}

TEST_CASE("other TOML spellings of the same structure are accepted") {
    SUBCASE("inline tables and dotted keys") {
        Config c = loaded(R"(
global = { threads = 2, shutdown_grace = 5 }
listener = [{ bind = "127.0.0.1:8000", target_group = "web" }]

[[target_group]]
name = "web"
stickiness.prefix_v4 = 16
target = [{ address = "127.0.0.1:9001", weight = 7 }, { address = "127.0.0.1:9002" }]
)");
        CHECK(c.global.threads == 2);
        CHECK(c.global.shutdown_grace == 5s);
        CHECK(c.target_groups[0].stickiness.prefix_v4 == 16);
        REQUIRE(c.target_groups[0].targets.size() == 2);
        CHECK(c.target_groups[0].targets[0].weight == 7);
    }
    SUBCASE("an integer duration means seconds") {
        Config c = loaded(R"(
[global]
shutdown_grace = 0

[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"
connect_timeout = 3
)");
        CHECK(c.global.shutdown_grace == 0s);
        CHECK(c.target_groups[0].connect_timeout == 3s);
    }
    SUBCASE("log level alias") {
        Config c = loaded(R"(
global.log_level = "warning"
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"
[[target_group]]
name = "web"
)");
        CHECK(c.global.log_level == LogLevel::warn);
    }
}

TEST_CASE("boundary values are accepted") {
    Config c = loaded(R"(
[global]
threads = 256
splice_pipes = 4096
shutdown_grace = "1h"

[[listener]]
bind = "127.0.0.1:8000"
target_group = "a.b-c_D9"

[[target_group]]
name = "a.b-c_D9"
algorithm = "maglev"
maglev_table_size = 211
connect_timeout = "10ms"
connect_retries = 16
stickiness = { prefix_v4 = 0, prefix_v6 = 0 }

[[target_group.target]]
address = "127.0.0.1:1"
weight = 100

[[target_group.target]]
address = "127.0.0.1:65535"
weight = 1

[[target_group]]
name = "other"
connect_timeout = "60s"
connect_retries = 0
stickiness = { prefix_v4 = 32, prefix_v6 = 128 }
)");
    CHECK(c.global.threads == 256);
    CHECK(c.global.splice_pipes == 4096);
    CHECK(c.global.shutdown_grace == 1h);
    CHECK(c.target_groups[0].maglev_table_size == 211);
    CHECK(c.target_groups[0].connect_timeout == 10ms);
    CHECK(c.target_groups[0].connect_retries == 16);
    CHECK(c.target_groups[0].targets[0].weight == 100);
    CHECK(c.target_groups[1].connect_timeout == 60s);
}

TEST_CASE("the same address may appear in two groups") {
    CHECK(error_of(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "a"

[[target_group]]
name = "a"
[[target_group.target]]
address = "127.0.0.1:9001"

[[target_group]]
name = "b"
[[target_group.target]]
address = "127.0.0.1:9001"
)") == "<loaded>");
}

TEST_CASE("the example configurations in conf/ load cleanly") {
    SUBCASE("conf/stickyd.toml") {
        auto result = load_config_file(source_root() + "/conf/stickyd.toml");
        auto* error = std::get_if<ConfigError>(&result);
        REQUIRE_MESSAGE(error == nullptr, error->to_string());
        const Config& c = std::get<Config>(result);
        CHECK(c.listeners.size() == 3);
        CHECK(c.target_groups.size() == 2);
        // The reference documents defaults by stating them: they must be the defaults.
        CHECK(c.global.threads == GlobalConfig{}.threads);
        CHECK(c.global.log_level == GlobalConfig{}.log_level);
        CHECK(c.global.shutdown_grace == GlobalConfig{}.shutdown_grace);
        const auto& web = c.target_groups[0];
        TargetGroupConfig defaults;
        CHECK(web.algorithm == defaults.algorithm);
        CHECK(web.connect_timeout == defaults.connect_timeout);
        CHECK(web.connect_retries == defaults.connect_retries);
        CHECK(web.stickiness.prefix_v4 == defaults.stickiness.prefix_v4);
        CHECK(web.stickiness.prefix_v6 == defaults.stickiness.prefix_v6);
        CHECK(web.targets[0].weight == TargetConfig{}.weight);
        CHECK(c.target_groups[1].maglev_table_size == defaults.maglev_table_size);
        CHECK(web.minimum_healthy_targets == defaults.minimum_healthy_targets);
        CHECK(c.global.metrics_address == GlobalConfig{}.metrics_address);
    }
    SUBCASE("conf/demo.toml") {
        auto result = load_config_file(source_root() + "/conf/demo.toml");
        auto* error = std::get_if<ConfigError>(&result);
        REQUIRE_MESSAGE(error == nullptr, error->to_string());
        const Config& c = std::get<Config>(result);
        CHECK(c.global.threads == 0);
        REQUIRE(c.listeners.size() == 1);
        CHECK(c.listeners[0].bind == addr("127.0.0.1:8000"));
        CHECK(c.listeners[0].target_group == "demo");
        REQUIRE(c.target_groups.size() == 1);
        const auto& g = c.target_groups[0];
        CHECK(g.name == "demo");
        CHECK(g.connect_timeout < 1s);
        REQUIRE(g.targets.size() == 3);
        for (int i = 0; i < 3; ++i) {
            CAPTURE(i);
            CHECK(g.targets[i].id == "backend-" + std::to_string(i + 1));
            CHECK(g.targets[i].address == addr("127.0.0.1:900" + std::to_string(i + 1)));
        }
    }
}

// ---------------------------------------------------------------------------------
// Small pieces of the interface.

TEST_CASE("Config::find_group") {
    Config c = cli_config();
    TargetGroupConfig other;
    other.name = "other";
    c.target_groups.push_back(other);
    REQUIRE(c.find_group("other") != nullptr);
    CHECK(c.find_group("other") == &c.target_groups[1]);
    CHECK(c.find_group("default") == &c.target_groups[0]);
    CHECK(c.find_group("Other") == nullptr);
    CHECK(c.find_group("") == nullptr);
}

TEST_CASE("ConfigError::to_string omits what is unknown") {
    CHECK(ConfigError{"f.toml", 3, 7, "a.b", "bad"}.to_string() == "f.toml:3:7: a.b: bad");
    CHECK(ConfigError{"f.toml", 3, 0, "a.b", "bad"}.to_string() == "f.toml:3: a.b: bad");
    CHECK(ConfigError{"<command line>", 0, 0, "target[1]", "bad"}.to_string() ==
          "<command line>: target[1]: bad");
    CHECK(ConfigError{"f.toml", 0, 0, "", "cannot read: x"}.to_string() ==
          "f.toml: cannot read: x");
    CHECK(ConfigError{"f.toml", 2, 5, "", "invalid"}.to_string() == "f.toml:2:5: invalid");
}

TEST_CASE("parse_duration") {
    struct Case {
        std::string_view text;
        std::optional<Duration> expected;
    };
    const Case cases[] = {
        {"0", 0ms},
        {"30", 30s},
        {"0s", 0ms},
        {"500ms", 500ms},
        {"2s", 2s},
        {"5m", 5min},
        {"1h", 1h},
        {"1.5s", 1500ms},
        {"0.25s", 250ms},
        {"1.5", 1500ms},
        {"2.000s", 2s},
        {"1.5m", 90s},
        {"0.001s", 1ms},
        {"0.0000001h", std::nullopt},  // 0.36ms: not a whole millisecond
        {"1.5ms", std::nullopt},
        {"0.0001s", std::nullopt},
        {"007s", 7s},
        {"2562047788015h", 2562047788015h},
        {"9223372036854775807ms", Duration(INT64_MAX)},
        {"9223372036854775808ms", std::nullopt},  // overflows int64
        {"9223372036854775807s", std::nullopt},   // overflows when scaled
        {"2562047788016h", std::nullopt},
        {"", std::nullopt},
        {"s", std::nullopt},
        {"ms", std::nullopt},
        {"-1s", std::nullopt},
        {"+1s", std::nullopt},
        {"1 s", std::nullopt},
        {" 1s", std::nullopt},
        {"1s ", std::nullopt},
        {"1S", std::nullopt},
        {"1sec", std::nullopt},
        {"1d", std::nullopt},
        {"1us", std::nullopt},
        {"1.s", std::nullopt},
        {".5s", std::nullopt},
        {"1.2.3s", std::nullopt},
        {"1e3ms", std::nullopt},
        {"1m30s", std::nullopt},
        {"0x10s", std::nullopt},
    };
    for (const auto& c : cases) {
        CAPTURE(c.text);
        CHECK(parse_duration(c.text) == c.expected);
    }
}

// ---------------------------------------------------------------------------------
// Files.

TEST_CASE("load_config_file") {
    SUBCASE("a missing file") {
        auto result = load_config_file("/nonexistent/stickyd.toml");
        auto* error = std::get_if<ConfigError>(&result);
        REQUIRE(error != nullptr);
        CHECK(error->to_string() ==
              "/nonexistent/stickyd.toml: cannot read: No such file or directory");
    }
    SUBCASE("a directory") {
        auto result = load_config_file("/tmp");
        auto* error = std::get_if<ConfigError>(&result);
        REQUIRE(error != nullptr);
        CHECK(error->to_string() == "/tmp: cannot read: Is a directory");
    }
    SUBCASE("errors name the file") {
        std::string path = write_temp("[global]\nthreads = \"two\"\n");
        auto result = load_config_file(path);
        std::remove(path.c_str());
        auto* error = std::get_if<ConfigError>(&result);
        REQUIRE(error != nullptr);
        CHECK(error->to_string() == path +
                                        ":2:11: global.threads: must be an integer from 0 to 256 "
                                        "(0 = one per online CPU), got string \"two\"");
        CHECK(error->source == path);
        CHECK(error->line == 2);
        CHECK(error->column == 11);
        CHECK(error->key_path == "global.threads");
    }
    SUBCASE("syntax errors name the file") {
        std::string path = write_temp("[global\n");
        auto result = load_config_file(path);
        std::remove(path.c_str());
        auto* error = std::get_if<ConfigError>(&result);
        REQUIRE(error != nullptr);
        CHECK(error->to_string().starts_with(path + ":1:"));
    }
    SUBCASE("a valid file") {
        std::string path = write_temp(doc(kMinimal));
        auto result = load_config_file(path);
        std::remove(path.c_str());
        REQUIRE(std::holds_alternative<Config>(result));
        CHECK(std::get<Config>(result).target_groups[0].targets[0].id == "127.0.0.1:9001");
    }
}
