// The configuration loader and validator. Every rejection is checked as the exact
// line a user sees, so a wording or position change is a deliberate test change.
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "stickyd/config.hpp"

using namespace stickyd;
using namespace std::chrono_literals;

namespace {

// Raw-string documents start with a newline so that their first line is line 1.
std::string_view doc(std::string_view text) {
    if (!text.empty() && text.front() == '\n') text.remove_prefix(1);
    return text;
}

// The error line parse_config reports, or "<loaded>".
std::string error_of(std::string_view text) {
    auto result = parse_config(doc(text), "t.toml");
    if (auto* error = std::get_if<ConfigError>(&result)) return error->to_string();
    return "<loaded>";
}

Config loaded(std::string_view text) {
    auto result = parse_config(doc(text), "t.toml");
    if (auto* error = std::get_if<ConfigError>(&result)) FAIL(error->to_string());
    return std::get<Config>(result);
}

SocketAddress addr(std::string_view text) {
    auto parsed = SocketAddress::parse(text);
    REQUIRE(parsed.has_value());
    return *parsed;
}

// A listener and group "web" (`group_keys` added to its table) with `count`
// targets of `weight` at 10.0.x.y:80; the first target's table is on line 7, or
// later by the lines of group_keys.
std::string many_targets(const std::string& group_keys, int count, int weight) {
    std::string text =
        "[[listener]]\nbind = \"127.0.0.1:8000\"\ntarget_group = \"web\"\n\n[[target_group]]\n"
        "name = \"web\"\n" +
        group_keys;
    for (int i = 0; i < count; ++i) {
        text += fmt::format("[[target_group.target]]\naddress = \"10.0.{}.{}:80\"\nweight = {}\n",
                            i / 256, i % 256, weight);
    }
    return text;
}

// A small valid in-memory config, as the command-line quick mode builds one.
Config cli_config() {
    Config config;
    TargetGroupConfig group;
    group.name = "default";
    group.targets.push_back({"127.0.0.1:9001", addr("127.0.0.1:9001"), 1});
    group.targets.push_back({"127.0.0.1:9002", addr("127.0.0.1:9002"), 1});
    config.target_groups.push_back(group);
    config.listeners.push_back({"127.0.0.1:8000", addr("127.0.0.1:8000"), "default"});
    return config;
}

std::string validate_error(const Config& config) {
    auto error = validate(config, "<command line>");
    return error ? error->to_string() : "<valid>";
}

std::string source_root() {
    if (const char* env = std::getenv("STICKYD_SOURCE_ROOT")) return env;
#ifdef STICKYD_SOURCE_ROOT
    return STICKYD_SOURCE_ROOT;
#else
    return "..";
#endif
}

std::string write_temp(std::string_view text) {
    char path[] = "/tmp/stickyd-test-config-XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    REQUIRE(::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
    ::close(fd);
    return path;
}

constexpr std::string_view kMinimal = R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"

[[target_group.target]]
address = "127.0.0.1:9001"
)";

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
// Rejections while reading the file: syntax, unknown keys, types, values.

TEST_CASE("TOML syntax errors carry the parser's position") {
    // The description is toml++'s own wording; only position and prefix are ours.
    CHECK(error_of(R"(
[global]
threads = = 2
)")
              .starts_with("t.toml:2:11: invalid TOML: error while parsing value: "));
    CHECK(error_of(R"(
[[listener]]
bind = "127.0.0.1:8000"
bind = "127.0.0.1:8001"
)")
              .starts_with("t.toml:3:8: invalid TOML: error while parsing key-value pair: "));
    CHECK(error_of(R"(
[[listener]
)")
              .starts_with("t.toml:1:12: invalid TOML: "));
    CHECK(error_of("name = \"unterminated\n").starts_with("t.toml:1:"));
}

TEST_CASE("unknown keys are rejected with a did-you-mean") {
    SUBCASE("top level") {
        CHECK(error_of(R"(
[[listeners]]
bind = "127.0.0.1:8000"
)") == "t.toml:1:3: listeners: unknown key (did you mean \"listener\"?)");
    }
    SUBCASE("global") {
        CHECK(error_of(R"(
[global]
thread = 2
)") == "t.toml:2:1: global.thread: unknown key (did you mean \"threads\"?)");
    }
    SUBCASE("listener") {
        CHECK(error_of(R"(
[[listener]]
bnd = "127.0.0.1:8000"
target_group = "web"
)") == "t.toml:2:1: listener[0].bnd: unknown key (did you mean \"bind\"?)");
    }
    SUBCASE("target group: transposition and a fragment of a longer key") {
        CHECK(error_of(R"(
[[target_group]]
name = "web"
algoritm = "ring"
)") == "t.toml:3:1: target_group[0].algoritm: unknown key (did you mean \"algorithm\"?)");
        CHECK(error_of(R"(
[[target_group]]
name = "web"
timeout = "1s"
)") == "t.toml:3:1: target_group[0].timeout: unknown key (did you mean \"connect_timeout\"?)");
    }
    SUBCASE("stickiness") {
        CHECK(error_of(R"(
[[target_group]]
name = "web"
[target_group.stickiness]
prefix_4 = 24
)") == "t.toml:4:1: target_group[0].stickiness.prefix_4: unknown key "
       "(did you mean \"prefix_v4\"?)");
    }
    SUBCASE("target, with a different case") {
        CHECK(error_of(R"(
[[target_group]]
name = "web"
[[target_group.target]]
address = "127.0.0.1:9001"
Weight = 2
)") == "t.toml:5:1: target_group[0].target[0].Weight: unknown key (did you mean \"weight\"?)");
        CHECK(error_of(R"(
[[target_group]]
name = "web"
[[target_group.target]]
address = "127.0.0.1:9001"
wieght = 2
)") == "t.toml:5:1: target_group[0].target[0].wieght: unknown key (did you mean \"weight\"?)");
    }
    SUBCASE("nothing close: list what is allowed") {
        CHECK(error_of(R"(
[[listener]]
bind = "127.0.0.1:8000"
mode = "tcp"
)") == "t.toml:3:1: listener[0].mode: unknown key; expected one of \"name\", \"bind\", "
       "\"target_group\", \"idle_timeout\", \"accept_proxy_protocol\", "
       "\"proxy_protocol_timeout\", \"access_log\", \"allow\", \"deny\"");
    }
    SUBCASE("health check") {
        CHECK(error_of(R"(
[[target_group]]
name = "web"
[target_group.health_check]
intervall = "5s"
)") == "t.toml:4:1: target_group[0].health_check.intervall: unknown key "
       "(did you mean \"interval\"?)");
        CHECK(error_of(R"(
[[target_group]]
name = "web"
[target_group.health_check]
HealthyThresholdCount = 3
)") == "t.toml:4:1: target_group[0].health_check.HealthyThresholdCount: unknown key; "
       "expected one of \"enabled\", \"protocol\", \"port\", \"path\", \"interval\", "
       "\"timeout\", \"healthy_threshold\", \"unhealthy_threshold\", \"matcher\", "
       "\"passive\", \"passive_failures\"");
    }
    SUBCASE("the first unknown key in file order is reported") {
        CHECK(error_of(R"(
[global]
zzz = 1
aaa = 2
)") == "t.toml:2:1: global.zzz: unknown key; expected one of \"threads\", \"log_level\", "
       "\"shutdown_grace\", \"shutdown_delay\", \"admin_socket\", \"admin_socket_group\", "
       "\"admin_socket_mode\", \"admin_address\", \"metrics_address\"");
    }
    SUBCASE("unusual key names are quoted in the path") {
        CHECK(error_of(R"(
[global]
"log level" = "info"
)") == "t.toml:2:1: global.\"log level\": unknown key (did you mean \"log_level\"?)");
    }
    SUBCASE("unknown keys win over missing ones, so a typo is named as a typo") {
        CHECK(error_of(R"(
[[listener]]
bind = "127.0.0.1:8000"
targetgroup = "web"
)") == "t.toml:3:1: listener[0].targetgroup: unknown key (did you mean \"target_group\"?)");
    }
}

TEST_CASE("wrong value types") {
    CHECK(error_of(R"(
[[target_group]]
name = "web"
[[target_group.target]]
address = "127.0.0.1:9001"
weight = "1"
)") == "t.toml:5:10: target_group[0].target[0].weight: must be an integer from 1 to 100, "
       "got string \"1\"");
    CHECK(error_of(R"(
[global]
threads = 1.5
)") == "t.toml:2:11: global.threads: must be an integer from 0 to 256 (0 = one per online "
       "CPU), got floating-point 1.5");
    CHECK(error_of(R"(
[global]
threads = true
)") == "t.toml:2:11: global.threads: must be an integer from 0 to 256 (0 = one per online "
       "CPU), got boolean true");
    CHECK(error_of(R"(
[global]
log_level = 3
)") == "t.toml:2:13: global.log_level: expected a string, got integer 3");
    CHECK(error_of(R"(
[[listener]]
bind = 8000
)") == "t.toml:2:8: listener[0].bind: expected a string \"ip:port\" such as 127.0.0.1:8000 "
       "or [::]:8000, got integer 8000");
    CHECK(error_of(R"(
[[target_group]]
name = ["web"]
)") == "t.toml:2:8: target_group[0].name: expected a string, got array");
    CHECK(error_of(R"(
[[target_group]]
name = "web"
stickiness.enabled = "yes"
)") == "t.toml:3:22: target_group[0].stickiness.enabled: expected true or false, "
       "got string \"yes\"");
    CHECK(error_of(R"(
[global]
shutdown_grace = 1979-05-27
)") == "t.toml:2:18: global.shutdown_grace: expected a duration such as \"2s\" or \"500ms\" "
       "(units ms, s, m, h; a bare integer means seconds), got date");
    CHECK(error_of(R"(
[global]
shutdown_grace = 1.5
)") == "t.toml:2:18: global.shutdown_grace: expected a duration such as \"2s\" or \"500ms\" "
       "(units ms, s, m, h; a bare integer means seconds), got floating-point 1.5");
}

TEST_CASE("a table where a value is expected, and the reverse") {
    CHECK(error_of(R"(
global = 5
)") == "t.toml:1:10: global: expected a table ([global]), got integer 5");
    CHECK(error_of(R"(
[[global]]
threads = 1
)") == "t.toml:1:1: global: expected a table ([global]), got array");
    CHECK(error_of(R"(
[listener]
bind = "127.0.0.1:8000"
)") == "t.toml:1:1: listener: expected an array of tables ([[listener]]), got table");
    CHECK(error_of(R"(
listener = ["127.0.0.1:8000"]
)") == "t.toml:1:13: listener[0]: expected a table ([[listener]]), got string "
       "\"127.0.0.1:8000\"");
    CHECK(error_of(R"(
[[target_group]]
name = "web"
stickiness = "source_ip"
)") == "t.toml:3:14: target_group[0].stickiness: expected a table "
       "([target_group.stickiness]), got string \"source_ip\"");
    CHECK(error_of(R"(
[[target_group]]
name = "web"
[target_group.target]
address = "127.0.0.1:9001"
)") == "t.toml:3:1: target_group[0].target: expected an array of tables "
       "([[target_group.target]]), got table");
    CHECK(error_of(R"(
[[listener]]
bind = { ip = "127.0.0.1", port = 8000 }
)") == "t.toml:2:8: listener[0].bind: expected a string \"ip:port\" such as 127.0.0.1:8000 "
       "or [::]:8000, got table");
    CHECK(error_of(R"(
[[target_group]]
name = "web"
[target_group.connect_timeout]
seconds = 2
)") == "t.toml:3:1: target_group[0].connect_timeout: expected a duration such as \"2s\" or "
       "\"500ms\" (units ms, s, m, h; a bare integer means seconds), got table");
}

TEST_CASE("bad addresses say what is wrong") {
    struct Case {
        std::string_view address;
        std::string_view problem;
    };
    const Case cases[] = {
        {"", "empty"},
        {"127.0.0.1", "missing :port"},
        {"127.0.0.1:", "missing port after ':'"},
        {":9001", "missing IP address before ':'"},
        {"127.0.0.1:http", "port \"http\" is not a number"},
        {"127.0.0.1:0", "port 0 is out of range 1-65535"},
        {"127.0.0.1:65536", "port 65536 is out of range 1-65535"},
        {"127.0.0.1:99999999999999999999", "port 99999999999999999999 is out of range 1-65535"},
        {"127.0.0.1:-1", "port \"-1\" is not a number"},
        {"127.0.0.1:09001", "port \"09001\" has a leading zero"},
        {"localhost:9001",
         "\"localhost\" is a host name; an IP address is required (names are not resolved)"},
        {"300.1.1.1:9001", "\"300.1.1.1\" is not an IPv4 address"},
        {"1.2.3:9001", "\"1.2.3\" is not an IPv4 address"},
        {"::1:9001", "an IPv6 address needs brackets, as in [::1]:9001"},
        {"[::1]", "missing :port after ']'"},
        {"[::1:9001", "missing ']' after the IPv6 address"},
        {"[::1]9001", "expected ':' and a port after ']'"},
        {"[::g]:9001", "\"::g\" is not an IPv6 address"},
        {"[127.0.0.1]:9001", "\"127.0.0.1\" is not an IPv6 address"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.address);
        std::string text = fmt::format(R"(
[[target_group]]
name = "web"
[[target_group.target]]
address = {:?}
)",
                                       c.address);
        CHECK(error_of(text) ==
              fmt::format("t.toml:4:11: target_group[0].target[0].address: {:?}: {}; expected "
                          "ip:port such as 127.0.0.1:9001 or [::1]:9001",
                          c.address, c.problem));
    }
    CHECK(error_of(R"(
[[listener]]
bind = "0.0.0.0"
)") == "t.toml:2:8: listener[0].bind: \"0.0.0.0\": missing :port; expected ip:port such as "
       "127.0.0.1:8000 or [::]:8000");
}

TEST_CASE("an address with an escaped NUL is refused, not cut short at the NUL") {
    // Regression: "127.0.0.1\u0000:9001" loaded as 127.0.0.1:9001.
    CHECK(error_of(R"(
[[target_group]]
name = "web"
[[target_group.target]]
address = "127.0.0.1\u0000:9001"
)") == "t.toml:4:11: target_group[0].target[0].address: \"127.0.0.1\\x00:9001\": "
       "\"127.0.0.1\\x00\" is not an IPv4 address; expected ip:port such as 127.0.0.1:9001 or "
       "[::1]:9001");
    CHECK(error_of(R"(
[[target_group]]
name = "web"
[[target_group.target]]
address = "[::1\u0000junk]:9001"
)") == "t.toml:4:11: target_group[0].target[0].address: \"[::1\\x00junk]:9001\": "
       "\"::1\\x00junk\" is not an IPv6 address; expected ip:port such as 127.0.0.1:9001 or "
       "[::1]:9001");
    CHECK(error_of(R"(
[global]
admin_address = "127.0.0.1\u0000:9090"
)") == "t.toml:2:17: global.admin_address: \"127.0.0.1\\x00:9090\": \"127.0.0.1\\x00\" is "
       "not an IPv4 address; expected ip:port such as \"127.0.0.1:9090\"");
}

TEST_CASE("out-of-range numbers") {
    CHECK(error_of(R"(
[global]
threads = -1
)") == "t.toml:2:11: global.threads: must be an integer from 0 to 256 (0 = one per online "
       "CPU), got -1");
    CHECK(error_of(R"(
[global]
threads = 257
)") == "t.toml:2:11: global.threads: must be an integer from 0 to 256 (0 = one per online "
       "CPU), got 257");
    for (std::string_view weight : {"0", "-3", "101", "9223372036854775807"}) {
        CAPTURE(weight);
        std::string text = fmt::format(R"(
[[target_group]]
name = "web"

[[target_group.target]]
address = "127.0.0.1:9001"

[[target_group.target]]
address = "127.0.0.1:9002"

[[target_group.target]]
address = "127.0.0.1:9003"
weight = {}
)",
                                       weight);
        CHECK(error_of(text) == fmt::format("t.toml:12:10: target_group[0].target[2].weight: "
                                            "must be an integer from 1 to 100, got {}",
                                            weight));
    }
    CHECK(error_of(R"(
[[target_group]]
name = "web"
connect_retries = 17
)") == "t.toml:3:19: target_group[0].connect_retries: must be an integer from 0 to 16, got 17");
    CHECK(error_of(R"(
[[target_group]]
name = "web"
[target_group.stickiness]
prefix_v4 = 33
)") == "t.toml:4:13: target_group[0].stickiness.prefix_v4: must be an integer from 0 to 32, "
       "got 33");
    CHECK(error_of(R"(
[[target_group]]
name = "web"
[target_group.stickiness]
prefix_v6 = 129
)") == "t.toml:4:13: target_group[0].stickiness.prefix_v6: must be an integer from 0 to 128, "
       "got 129");
    CHECK(error_of(R"(
[[target_group]]
name = "web"
stickiness = { prefix_v4 = -1 }
)") == "t.toml:3:28: target_group[0].stickiness.prefix_v4: must be an integer from 0 to 32, "
       "got -1");
}

TEST_CASE("bad durations") {
    CHECK(error_of(R"(
[[target_group]]
name = "web"
connect_timeout = "2 seconds"
)") == "t.toml:3:19: target_group[0].connect_timeout: expected a duration such as \"2s\" or "
       "\"500ms\" (units ms, s, m, h; a bare integer means seconds), got string \"2 seconds\"");
    CHECK(error_of(R"(
[[target_group]]
name = "web"
connect_timeout = "-1s"
)") == "t.toml:3:19: target_group[0].connect_timeout: expected a duration such as \"2s\" or "
       "\"500ms\" (units ms, s, m, h; a bare integer means seconds), got string \"-1s\"");
    CHECK(error_of(R"(
[[target_group]]
name = "web"
connect_timeout = -1
)") == "t.toml:3:19: target_group[0].connect_timeout: expected a duration such as \"2s\" or "
       "\"500ms\" (units ms, s, m, h; a bare integer means seconds), got integer -1");
    CHECK(error_of(R"(
[[target_group]]
name = "web"
connect_timeout = 9223372036854775807
)") == "t.toml:3:19: target_group[0].connect_timeout: expected a duration such as \"2s\" or "
       "\"500ms\" (units ms, s, m, h; a bare integer means seconds), got integer "
       "9223372036854775807");
    CHECK(error_of(R"(
[[target_group]]
name = "web"
connect_timeout = "5ms"
)") == "t.toml:3:19: target_group[0].connect_timeout: must be a duration from 10ms to 1m, "
       "got 5ms");
    CHECK(error_of(R"(
[[target_group]]
name = "web"
connect_timeout = "61s"
)") == "t.toml:3:19: target_group[0].connect_timeout: must be a duration from 10ms to 1m, "
       "got 61s");
    CHECK(error_of(R"(
[global]
shutdown_grace = "2h"
)") == "t.toml:2:18: global.shutdown_grace: must be a duration from 0s to 1h, got 2h");
    CHECK(error_of(R"(
[global]
shutdown_grace = "1d"
)") == "t.toml:2:18: global.shutdown_grace: expected a duration such as \"2s\" or \"500ms\" "
       "(units ms, s, m, h; a bare integer means seconds), got string \"1d\"");
}

TEST_CASE("keywords") {
    CHECK(error_of(R"(
[global]
log_level = "inf"
)") == "t.toml:2:13: global.log_level: must be one of \"trace\", \"debug\", \"info\", "
       "\"warn\", \"error\", got \"inf\" (did you mean \"info\"?)");
    CHECK(error_of(R"(
[global]
log_level = "verbose"
)") == "t.toml:2:13: global.log_level: must be one of \"trace\", \"debug\", \"info\", "
       "\"warn\", \"error\", got \"verbose\"");
    CHECK(error_of(R"(
[[target_group]]
name = "web"
algorithm = "maglve"
)") == "t.toml:3:13: target_group[0].algorithm: must be one of \"ring\", \"maglev\", "
       "got \"maglve\" (did you mean \"maglev\"?)");
    CHECK(error_of(R"(
[[target_group]]
name = "web"
algorithm = "round_robin"
)") == "t.toml:3:13: target_group[0].algorithm: must be one of \"ring\", \"maglev\", "
       "got \"round_robin\"");
    CHECK(error_of(R"(
[[target_group]]
name = "web"
[target_group.stickiness]
type = "lb_cookie"
)") == "t.toml:4:8: target_group[0].stickiness.type: only \"source_ip\" is supported (as on "
       "an NLB), got \"lb_cookie\"");
    CHECK(error_of(R"(
[[target_group]]
name = "web"
[target_group.stickiness]
enabled = false
)") == "t.toml:4:11: target_group[0].stickiness.enabled: stickyd is always sticky by source "
       "IP; set it to true or remove the key");
}

TEST_CASE("maglev table size") {
    CHECK(error_of(R"(
[[target_group]]
name = "web"
maglev_table_size = 65537
)") == "t.toml:3:21: target_group[0].maglev_table_size: only applies with algorithm = "
       "\"maglev\"; set that or remove the key");
    CHECK(error_of(R"(
[[target_group]]
name = "web"
algorithm = "maglev"
maglev_table_size = 1
)") == "t.toml:4:21: target_group[0].maglev_table_size: must be an integer from 2 to 5000011, "
       "got 1");
    CHECK(error_of(R"(
[[target_group]]
name = "web"
algorithm = "maglev"
maglev_table_size = 5000012
)") == "t.toml:4:21: target_group[0].maglev_table_size: must be an integer from 2 to 5000011, "
       "got 5000012");
    // From here on the rule is the balancer's (maglev_table_size_error); these pin that
    // it is applied at load time and reported at the key.
    CHECK(error_of(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"
algorithm = "maglev"
maglev_table_size = 65536
)")
              .starts_with("t.toml:8:21: target_group[0].maglev_table_size: 65536 is not prime"));
    std::string too_small = error_of(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"
algorithm = "maglev"
maglev_table_size = 211

[[target_group.target]]
address = "127.0.0.1:9001"
[[target_group.target]]
address = "127.0.0.1:9002"
[[target_group.target]]
address = "127.0.0.1:9003"
)");
    CHECK(
        too_small.starts_with("t.toml:8:21: target_group[0].maglev_table_size: 211 is too "
                              "small for 3 targets"));
    SUBCASE("the default size is checked against the target count too, at the group") {
        const std::string text = many_targets("algorithm = \"maglev\"\n", 656, 1);
        CHECK(error_of(text).starts_with(
            "t.toml:5:1: target_group[0].maglev_table_size: 65537 is too small for 656 targets"));
    }
    SUBCASE("validate applies the same rule") {
        Config c = cli_config();
        c.target_groups[0].algorithm = Algorithm::maglev;
        CHECK(validate_error(c) == "<valid>");
        c.target_groups[0].maglev_table_size = 199;
        CHECK(validate_error(c).starts_with(
            "<command line>: target_group[0].maglev_table_size: 199 is too small for 2 targets"));
        c.target_groups[0].maglev_table_size = 211;
        CHECK(validate_error(c) == "<valid>");
        c.target_groups[0].maglev_table_size = 1;
        CHECK(validate_error(c) ==
              "<command line>: target_group[0].maglev_table_size: must be "
              "an integer from 2 to 5000011, got 1");
        c.target_groups[0].algorithm = Algorithm::ring;
        CHECK(validate_error(c) == "<valid>");  // ignored by the ring
    }
}

TEST_CASE("a ring's total weight is capped; the error points at the first target") {
    const std::string text = many_targets("", 10, 100);
    CHECK(error_of(text) == "<loaded>");  // 1000
    const std::string heavier =
        text + "[[target_group.target]]\naddress = \"127.0.0.1:9999\"\nweight = 25\n";
    CHECK(error_of(heavier) ==
          "t.toml:7:1: target_group[0].target: the targets' weights add up to 1025, more than "
          "one ring holds (1024); use smaller weights (only their ratios matter) or algorithm = "
          "\"maglev\"");
    SUBCASE("maglev has no weight cap") {
        std::string maglev = heavier;
        const std::string name = "name = \"web\"\n";
        maglev.insert(maglev.find(name) + name.size(), "algorithm = \"maglev\"\n");
        CHECK(error_of(maglev) == "<loaded>");
    }
    SUBCASE("validate applies the same rule") {
        Config c = cli_config();
        c.target_groups[0].targets[0].weight = 100;
        for (int i = 0; i < 10; ++i)
            c.target_groups[0].targets.push_back(c.target_groups[0].targets[0]);
        for (size_t i = 0; i < c.target_groups[0].targets.size(); ++i) {
            c.target_groups[0].targets[i].id = fmt::format("t{}", i);
        }
        CHECK(validate_error(c).starts_with(
            "<command line>: target_group[0].target: the targets' weights add up to 1101,"));
    }
}

TEST_CASE("access_log is a per-listener boolean, off by default") {
    const std::string base = R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"
ACCESS
[[target_group]]
name = "web"
)";
    auto with = [&](const std::string& line) {
        std::string text = base;
        text.replace(text.find("ACCESS"), 6, line);
        return text;
    };
    CHECK_FALSE(loaded(with("")).listeners[0].access_log);
    CHECK(loaded(with("access_log = true")).listeners[0].access_log);
    CHECK(error_of(with("access_log = \"yes\""))
              .starts_with("t.toml:4:14: listener[0].access_log: "));
}

TEST_CASE("missing required keys point at the table") {
    CHECK(error_of(R"(
[[listener]]
target_group = "web"
)") == "t.toml:1:1: listener[0].bind: missing required key (e.g. bind = \"127.0.0.1:8000\")");
    CHECK(error_of(R"(
[[listener]]
bind = "127.0.0.1:8000"
)") == "t.toml:1:1: listener[0].target_group: missing required key (e.g. target_group = "
       "\"web\")");
    CHECK(error_of(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
algorithm = "ring"
)") == "t.toml:5:1: target_group[0].name: missing required key (e.g. name = \"web\")");
    CHECK(error_of(R"(
[[target_group]]
name = "web"

[[target_group.target]]
id = "a"

[[target_group.target]]
id = "b"
weight = 2
)") == "t.toml:4:1: target_group[0].target[0].address: missing required key (e.g. address = "
       "\"127.0.0.1:9001\")");
}

// ---------------------------------------------------------------------------------
// Rejections of the whole (validate), as reached from a file.

TEST_CASE("no listeners") {
    CHECK(error_of("") ==
          "t.toml: listener: no listeners; add a [[listener]] with bind and "
          "target_group");
    CHECK(error_of(R"(
listener = []
[[target_group]]
name = "web"
)") == "t.toml:1:12: listener: no listeners; add a [[listener]] with bind and target_group");
}

TEST_CASE("a listener must name an existing group") {
    CHECK(error_of(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "wbe"

[[target_group]]
name = "web"

[[target_group]]
name = "api"
)") == "t.toml:3:16: listener[0].target_group: unknown target group \"wbe\" (did you mean "
       "\"web\"?); known groups: \"web\", \"api\"");
    CHECK(error_of(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "zzz"

[[target_group]]
name = "web"
)") == "t.toml:3:16: listener[0].target_group: unknown target group \"zzz\"; known groups: "
       "\"web\"");
    CHECK(error_of(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"
)") == "t.toml:3:16: listener[0].target_group: unknown target group \"web\"; no "
       "[[target_group]] is defined");
}

TEST_CASE("duplicate listeners") {
    CHECK(error_of(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"
)") == "t.toml:6:8: listener[1].bind: duplicate bind address 127.0.0.1:8000 (also "
       "listener[0] at line 1)");
    CHECK(error_of(R"(
[[listener]]
bind = "[::1]:8000"
target_group = "web"

[[listener]]
bind = "[0:0:0::1]:8000"
target_group = "web"

[[target_group]]
name = "web"
)") == "t.toml:6:8: listener[1].bind: duplicate bind address [::1]:8000 (also listener[0] "
       "at line 1)");
    CHECK(error_of(R"(
[[listener]]
name = "front"
bind = "127.0.0.1:8000"
target_group = "web"

[[listener]]
name = "front"
bind = "127.0.0.1:8001"
target_group = "web"

[[target_group]]
name = "web"
)") == "t.toml:7:8: listener[1].name: duplicate listener name \"front\" (also listener[0] at "
       "line 1)");
    SUBCASE("a default name can clash with an explicit one") {
        CHECK(error_of(R"(
[[listener]]
name = "127.0.0.1:8001"
bind = "127.0.0.1:8000"
target_group = "web"

[[listener]]
bind = "127.0.0.1:8001"
target_group = "web"

[[target_group]]
name = "web"
)") == "t.toml:6:1: listener[1].name: duplicate listener name \"127.0.0.1:8001\" (also "
       "listener[0] at line 1)");
    }
    CHECK(error_of(R"(
[[listener]]
name = ""
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"
)") == "t.toml:2:8: listener[0].name: must not be empty");
}

TEST_CASE("target group names") {
    CHECK(error_of(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"

[[target_group]]
name = "web"
)") == "t.toml:9:8: target_group[1].name: duplicate target group name \"web\" (also "
       "target_group[0] at line 6)");
    for (std::string_view name : {"", "web app", "web/1", "wéb"}) {
        CAPTURE(name);
        std::string text = fmt::format(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = {0:?}

[[target_group]]
name = {0:?}
)",
                                       name);
        CHECK(error_of(text) ==
              fmt::format("t.toml:6:8: target_group[0].name: must be one or more of A-Z a-z 0-9 "
                          "_ . -, got {:?}",
                          name));
    }
}

// Ids and names are printed in log lines, metrics labels, JSON and stickyctl tables,
// and typed as stickyctl arguments.
constexpr std::string_view kNameRule =
    "must be printable ASCII without spaces, quotes or backslashes";

TEST_CASE("target ids and listener names are printable ASCII without spaces") {
    // Regression: "\u0000", "\n" and other control characters were accepted, and an id
    // with a newline forged a second line in every log message that named it.
    struct Bad {
        std::string_view toml;   // as written in the file
        std::string_view shown;  // as the error shows it
    };
    const Bad bad[] = {
        {R"("\u0000")", R"("\x00")"},
        {R"("web\u0000-1")", R"("web\x00-1")"},
        {R"("web\n1")", R"("web\n1")"},
        {R"("web\r")", R"("web\r")"},
        {R"("\t")", R"("\t")"},
        {R"("\u001b[31mred")", R"("\x1b[31mred")"},
        {R"("del\u007f")", R"("del\x7f")"},
        {R"("web 1")", R"("web 1")"},
        {R"("a\"b")", R"("a\"b")"},
        {R"("a\\b")", R"("a\\b")"},
        {R"("wéb")", R"("wéb")"},
        {R"("\u00a0")", R"("\xa0")"},
    };
    for (const Bad& c : bad) {
        CAPTURE(c.toml);
        CHECK(error_of(fmt::format(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"

[[target_group.target]]
id = {}
address = "127.0.0.1:9001"
)",
                                   c.toml)) ==
              fmt::format("t.toml:9:6: target_group[0].target[0].id: {}, got {}", kNameRule,
                          c.shown));
        CHECK(error_of(fmt::format(R"(
[[listener]]
name = {}
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"
)",
                                   c.toml)) ==
              fmt::format("t.toml:2:8: listener[0].name: {}, got {}", kNameRule, c.shown));
    }
    // What the examples and the defaults use stays valid, and so does the rest of
    // printable ASCII.
    for (std::string_view id : {"web-1", "backend_2", "node.a", "127.0.0.1:9001", "[::1]:9001",
                                "zone/a@host+1~x", "a!#$%&'()*,;<=>?^`{|}"}) {
        CAPTURE(id);
        Config c = loaded(fmt::format(R"(
[[listener]]
name = {0:?}
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"

[[target_group.target]]
id = {0:?}
address = "127.0.0.1:9001"
)",
                                      id));
        CHECK(c.listeners[0].name == id);
        CHECK(c.target_groups[0].targets[0].id == id);
    }
}

TEST_CASE("validate: ids and listener names built in memory follow the same rule") {
    Config c = cli_config();
    c.target_groups[0].targets[1].id = "b\n2";
    CHECK(
        validate_error(c) ==
        fmt::format("<command line>: target_group[0].target[1].id: {}, got \"b\\n2\"", kNameRule));
    c = cli_config();
    c.listeners[0].name = std::string("l\0", 2);
    CHECK(validate_error(c) ==
          fmt::format("<command line>: listener[0].name: {}, got \"l\\x00\"", kNameRule));
}

TEST_CASE("admin_socket has no control characters") {
    // It is printed in the log when the endpoint starts.
    CHECK(error_of(R"(
[global]
admin_socket = "/tmp/admin\n.sock"
)") == "t.toml:2:16: global.admin_socket: must not contain control characters, got "
       "\"/tmp/admin\\n.sock\"");
    CHECK(error_of(R"(
[global]
admin_socket = "/tmp/a\u0000"
)") == "t.toml:2:16: global.admin_socket: must not contain control characters, got "
       "\"/tmp/a\\x00\"");
}

TEST_CASE("duplicate targets") {
    CHECK(error_of(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"

[[target_group.target]]
id = "a"
address = "127.0.0.1:9001"

[[target_group.target]]
id = "a"
address = "127.0.0.1:9002"
)") == "t.toml:13:6: target_group[0].target[1].id: duplicate target id \"a\" (first used by "
       "target[0] at line 9)");
    CHECK(error_of(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"

[[target_group.target]]
id = "a"
address = "127.0.0.1:9001"

[[target_group.target]]
id = "b"
address = "127.0.0.1:9001"
)") == "t.toml:14:11: target_group[0].target[1].address: duplicate address 127.0.0.1:9001 in "
       "this group (also target[0] at line 10)");
    SUBCASE("addresses are compared normalised") {
        CHECK(error_of(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"
target = [{ address = "[::1]:9001" }, { address = "[0::1]:9001" }]
)") == "t.toml:7:51: target_group[0].target[1].address: duplicate address [::1]:9001 in this "
       "group (also target[0] at line 7)");
    }
    SUBCASE("a default id clashes with an explicit one") {
        CHECK(error_of(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"

[[target_group.target]]
id = "127.0.0.1:9002"
address = "127.0.0.1:9001"

[[target_group.target]]
address = "127.0.0.1:9002"
)") == "t.toml:12:1: target_group[0].target[1].id: duplicate target id \"127.0.0.1:9002\" "
       "(first used by target[0] at line 9)");
    }
    SUBCASE("an empty id") {
        CHECK(error_of(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"

[[target_group.target]]
id = ""
address = "127.0.0.1:9001"
)") == "t.toml:9:6: target_group[0].target[0].id: must not be empty");
    }
    SUBCASE("ids and addresses are per group") {
        CHECK(error_of(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "a"

[[target_group]]
name = "a"
target = [{ id = "x", address = "127.0.0.1:9001" }]

[[target_group]]
name = "b"
target = [{ id = "x", address = "127.0.0.1:9001" }]
)") == "<loaded>");
    }
}

TEST_CASE("the first problem in the file is the one reported") {
    // Reading stops being reported at the first error; later ones do not override it.
    CHECK(error_of(R"(
[global]
threads = 999
log_level = "loud"
)") == "t.toml:2:11: global.threads: must be an integer from 0 to 256 (0 = one per online "
       "CPU), got 999");
}

// ---------------------------------------------------------------------------------
// Bounds checked before the TOML parser sees the text: toml++ recurses once per
// nesting level (and again when the tree is destroyed), so 50,000 levels used to
// overflow the stack and kill the daemon.

namespace {

std::string repeat(std::string_view piece, size_t times) {
    std::string out;
    out.reserve(piece.size() * times);
    for (size_t i = 0; i < times; ++i) out += piece;
    return out;
}

constexpr std::string_view kUnknownTopLevel =
    "unknown key; expected one of \"global\", \"listener\", \"target_group\"";

// toml++ places a header's key after its bracket.
std::string unknown_top_level(unsigned line, std::string_view key, unsigned column = 1) {
    return fmt::format("t.toml:{}:{}: {}: {}", line, column, key, kUnknownTopLevel);
}

}  // namespace

TEST_CASE("nesting deeper than 32 levels is one error line, not a crash") {
    // Each key segment, header segment, array and inline table is one level. The
    // position is where the 33rd level starts.
    SUBCASE("a dotted key") {
        CHECK(error_of(repeat("a.", 50'000) + "a = 1\n") == "t.toml:1:65: nesting deeper than 32");
    }
    SUBCASE("a table header") {
        CHECK(error_of("[" + repeat("a.", 50'000) + "a]\n") ==
              "t.toml:1:66: nesting deeper than 32");
    }
    SUBCASE("an array-of-tables header") {
        CHECK(error_of("[[" + repeat("a.", 50'000) + "a]]\n") ==
              "t.toml:1:67: nesting deeper than 32");
    }
    SUBCASE("inline tables") {
        // "a = {" is five columns and two levels: the 17th key is level 33.
        CHECK(error_of(repeat("a = {", 50'000) + repeat("}", 50'000) + "\n") ==
              "t.toml:1:81: nesting deeper than 32");
    }
    SUBCASE("arrays") {
        CHECK(error_of("a = " + repeat("[", 50'000) + repeat("]", 50'000) + "\n") ==
              "t.toml:1:36: nesting deeper than 32");
    }
    SUBCASE("arrays of inline tables") {
        // "[{b = " is six columns and three levels: the 11th "{" is level 33.
        CHECK(error_of("a = " + repeat("[{b = ", 50'000) + "\n") ==
              "t.toml:1:66: nesting deeper than 32");
    }
    SUBCASE("a dotted key inside inline tables") {
        // "{b.c = " is seven columns and three levels: the 11th "b" is level 33.
        CHECK(error_of("a = " + repeat("{b.c = ", 50'000) + "\n") ==
              "t.toml:1:76: nesting deeper than 32");
    }
    SUBCASE("a header's levels count for the keys below it") {
        CHECK(error_of("[" + repeat("a.", 15) + "a]\n\nb = 1\n" + repeat("c.", 16) + "c = 1\n") ==
              "t.toml:4:33: nesting deeper than 32");
    }
    SUBCASE("a multi-line array keeps its depth across lines") {
        CHECK(error_of("a = [\n" + repeat("[\n", 40)) == "t.toml:32:1: nesting deeper than 32");
    }
    SUBCASE("columns count characters, as the TOML parser's do") {
        CHECK(error_of("\"é\"." + repeat("a.", 40) + "a = 1\n") ==
              "t.toml:1:67: nesting deeper than 32");
    }
}

TEST_CASE("32 levels are still read by the TOML parser") {
    CHECK(error_of(repeat("a.", 31) + "a = 1\n") == unknown_top_level(1, "a"));
    CHECK(error_of("[" + repeat("a.", 31) + "a]\n") == unknown_top_level(1, "a", 2));
    CHECK(error_of("a = " + repeat("[", 31) + repeat("]", 31) + "\n") == unknown_top_level(1, "a"));
    // Each comma of an inline table starts the next key at the table's own level.
    CHECK(error_of("a = " + repeat("{b = 1, c = ", 15) + "{}" + repeat("}", 15) + "\n") ==
          unknown_top_level(1, "a"));
    // Each header starts again from the top.
    CHECK(error_of("[" + repeat("a.", 31) + "a]\n[" + repeat("b.", 31) + "b]\n") ==
          unknown_top_level(1, "a", 2));
    // A closed array gives its levels back to the next element.
    CHECK(error_of("a = [" + repeat("[[[[[[[[[[]]]]]]]]]], ", 100) + "]\n") ==
          unknown_top_level(1, "a"));
}

TEST_CASE("brackets and dots in strings and comments are not nesting") {
    const std::string deep = repeat("[{.", 100);
    SUBCASE("comments") {
        CHECK(error_of("# " + deep + "\nx = 1 # " + deep + "\n") == unknown_top_level(2, "x"));
    }
    SUBCASE("basic strings, with escaped quotes") {
        CHECK(error_of("x = \"\\\"" + deep + "\\\\\"\n") == unknown_top_level(1, "x"));
    }
    SUBCASE("literal strings, where a backslash escapes nothing") {
        CHECK(error_of("x = ['\\', '" + deep + "']\n") == unknown_top_level(1, "x"));
    }
    SUBCASE("multi-line basic strings, ending in quotes") {
        CHECK(error_of("x = \"\"\"\n" + deep + "\n\\\"\"\"" + deep + "\n\"\"\"\"\"\n") ==
              unknown_top_level(1, "x"));
    }
    SUBCASE("multi-line literal strings, ending in quotes") {
        CHECK(error_of("x = '''\n" + deep + "\n'' " + deep + "'''''\n") ==
              unknown_top_level(1, "x"));
    }
    SUBCASE("quoted keys") {
        CHECK(error_of("\"" + repeat("a.", 100) + "\".'" + repeat("b.", 100) + "' = 1\n") ==
              fmt::format("t.toml:1:1: {:?}: {}", repeat("a.", 100), kUnknownTopLevel));
    }
    SUBCASE("floats and times") {
        CHECK(error_of("x = [" + repeat("1.5, 07:32:00.25, ", 100) + "]\n") ==
              unknown_top_level(1, "x"));
    }
}

TEST_CASE("a table header that does not start with a key is refused before toml++ sees it") {
    // Found by fuzz_config: toml++ 3.3 calls parse_key() on whatever follows "[" or
    // "[[", asserting (and, built with NDEBUG by clang, assuming) that it starts a
    // key; "[[[a]]]" or "[&" aborted, or was undefined behaviour (toml++ #294, #301).
    const std::string_view kNoKey = "invalid TOML: expected a key after '[' in a table header";
    struct Case {
        std::string_view text;
        std::string_view position;
    };
    const Case cases[] = {
        {"[[[a]]]\n", "1:3"},
        {"[&\n", "1:2"},
        {"[[ [a]]\n", "1:4"},
        {"[#x]\n", "1:2"},
        {"[\n", "1:2"},
        {"[ =a]\n", "1:3"},
        {"[.a]\n", "1:2"},
        {"[[\u00e9]]\n", "1:3"},
        {"[global]\nthreads = 1\n\n  [[[listener]]]\n", "4:5"},
    };
    for (const Case& c : cases) {
        CAPTURE(c.text);
        CHECK(error_of(c.text) == fmt::format("t.toml:{}: {}", c.position, kNoKey));
    }
    // Keys after spaces, quoted keys and the blank header toml++ reports itself.
    CHECK(error_of("[ \"a\" ]\n") == unknown_top_level(1, "a", 3));
    CHECK(error_of("[[ 'a' ]]\n") == unknown_top_level(1, "a", 4));
    CHECK(error_of("[ ]\n").starts_with("t.toml:1:3: invalid TOML: "));
    CHECK(error_of("[[]]\n").starts_with("t.toml:1:3: invalid TOML: "));
}

TEST_CASE("non-ASCII characters where toml++ would ask if they are whitespace") {
    // Found by fuzz_config: toml++ 3.3's is_non_ascii_horizontal_whitespace() reaches
    // TOML_UNREACHABLE for most non-ASCII characters, e.g. U+00E9 (toml++ #295, fixed
    // upstream by #305). It is asked after a bare value, around keys, and in
    // multi-line basic strings after a backslash.
    const std::string_view kOutside =
        "invalid TOML: a non-ASCII character outside a string or comment";
    const std::string_view kEscape =
        "not supported: a non-ASCII character right after a backslash or a line-ending "
        "backslash in a multi-line string; write it as a \\u escape";
    struct Case {
        std::string_view text;
        std::string_view position;
        std::string_view message;
    };
    const Case cases[] = {
        {"x = 1\u00e9\n", "1:6", kOutside},
        {"x = [1\u045e]\n", "1:7", kOutside},
        {"x = true \u00e9\n", "1:10", kOutside},
        {"\u00e9 = 1\n", "1:1", kOutside},
        {"[\"a\"\u00e9]\n", "1:5", kOutside},
        {"[a] \u00e9\n", "1:5", kOutside},
        {R"(x = """\é""")"
         "\n",
         "1:9", kEscape},
        {"x = \"\"\"a \\\n\n   \u00e9\"\"\"\n", "3:4", kEscape},
    };
    for (const Case& c : cases) {
        CAPTURE(c.text);
        CHECK(error_of(c.text) == fmt::format("t.toml:{}: {}", c.position, c.message));
    }
    // In strings and comments they are fine, and so is a byte order mark.
    CHECK(error_of("x = \"\u00e9\" # \u00fc\n") == unknown_top_level(1, "x"));
    CHECK(error_of(R"(x = 'é\é')"
                   "\n") == unknown_top_level(1, "x"));
    CHECK(error_of("x = \"\"\"a \\\n   \\u00e9 \u00e9\"\"\"\n") == unknown_top_level(1, "x"));
    CHECK(error_of(R"(x = '''\é''')"
                   "\n") == unknown_top_level(1, "x"));
    CHECK(error_of("\xef\xbb\xbf# \u00e9\nx = = 1\n").starts_with("t.toml:2:5: invalid TOML: "));
    CHECK(error_of("\xef\xbb\xbf" + repeat("a.", 40) + "a = 1\n") ==
          "t.toml:1:65: nesting deeper than 32");
}

TEST_CASE("raw control characters and quotes inside bare text are refused before toml++") {
    // Found by fuzz_config: "x =---de'" then NULs and a non-ASCII character sent toml++
    // 3.3 past its broken value into its non-ASCII whitespace check (#305).
    CHECK(error_of(std::string("x =---de'\0\0\0\xef\xbb\xbf-------", 22)) ==
          "t.toml:1:9: invalid TOML: a quote inside a bare key or value");
    CHECK(error_of("x = 1'\n") == "t.toml:1:6: invalid TOML: a quote inside a bare key or value");
    CHECK(error_of("a\"b\" = 1\n") ==
          "t.toml:1:2: invalid TOML: a quote inside a bare key or value");
    CHECK(error_of(std::string("x = 'a\0b'\n", 10)) ==
          "t.toml:1:7: invalid TOML: a control character (U+0000); in a string, write it as "
          "an escape");
    CHECK(error_of("# bell \a\nx = 1\n") ==
          "t.toml:1:8: invalid TOML: a control character (U+0007); in a string, write it as "
          "an escape");
    CHECK(error_of("x = \"\x7f\"\n") ==
          "t.toml:1:6: invalid TOML: a control character (U+007F); in a string, write it as "
          "an escape");
    // Tabs, CRLF line ends, escapes and quotes where TOML has them stay fine.
    CHECK(error_of("x\t=\t'a\tb'\r\n") == unknown_top_level(1, "x"));
    CHECK(error_of("x = \"a\\u0000\"\n") == unknown_top_level(1, "x"));
    CHECK(error_of("a.'b'.\"c\" = ''\n") == unknown_top_level(1, "a"));
    CHECK(error_of("x = ['a',\"b\",'''c''']\n") == unknown_top_level(1, "x"));
}

TEST_CASE("a '}' inside an array is refused before toml++ sees it") {
    // Found by fuzz_config: toml++ 3.3 parses it as an array element, asserting (and,
    // built with NDEBUG by clang, assuming) that no value starts with it.
    for (std::string_view text :
         {"a = [}]\n", "a = [[[}}]]]\n", "a = [1,}]\n", "a = [{b = [}]}]\n"}) {
        CAPTURE(text);
        CHECK(error_of(text).ends_with(": invalid TOML: '}' inside an array"));
    }
    CHECK(error_of("a = [}]\n") == "t.toml:1:6: invalid TOML: '}' inside an array");
    CHECK(error_of("a = [{}, {b = {}}]\n") == unknown_top_level(1, "a"));
    CHECK(error_of("a = [\"}\", '}'] # }\n") == unknown_top_level(1, "a"));
}

TEST_CASE("a date followed by 'T' or a space but no time is refused before toml++ sees it") {
    // Found by fuzz_config: toml++ 3.3 parses "1979-05-27Tx:" as a date-time and
    // asserts (or, built with NDEBUG by clang, assumes) that the time has a digit.
    const std::string_view kNoTime =
        "invalid TOML: a date followed by 'T' or a space needs a time (HH:MM) next";
    for (std::string_view text : {"x = 1979-05-27Ta:\n", "x = [1, 1979-05-27tb:c]\n",
                                  "x = 1979-05-27 a:b\n", "x = 1979-05-27T\n"}) {
        CAPTURE(text);
        CHECK(error_of(text).ends_with(kNoTime));
    }
    CHECK(error_of("x = [1979-05-27Taccept_proxy:1]\n") == fmt::format("t.toml:1:6: {}", kNoTime));
    for (std::string_view text :
         {"x = 1979-05-27T07:32:00Z\n", "x = 1979-05-27 07:32:00\n",
          "x = [1979-05-27 , 1979-05-27]\n", "x = 1979-05-27 # c\n", "x = '1979-05-27Tab'\n"}) {
        CAPTURE(text);
        CHECK(error_of(text) == unknown_top_level(1, "x"));
    }
}

TEST_CASE("toml++'s error text is one line without control characters") {
    // Found by fuzz_config: toml++ echoes what it saw verbatim, so "x = tru" and a
    // line break made the error two lines (and a log line with a forged second one).
    CHECK(error_of("x = tru\n\n") ==
          "t.toml:1:8: invalid TOML: error while parsing boolean: expected 'true', saw 'tru\\x0a'");
    // Raw control characters never reach toml++ now (the scan before it refuses
    // them), which keeps its echo of them a second line of defence.
    CHECK(error_of("x = fal\x02\n") ==
          "t.toml:1:8: invalid TOML: a control character (U+0002); in a string, write it as "
          "an escape");
}

TEST_CASE("a TOML error before the first level too deep is the one reported") {
    const std::string deep = repeat("[", 40) + "\n";
    CHECK(error_of("x = = 1\n" + deep).starts_with("t.toml:1:5: invalid TOML: "));
    CHECK(error_of("x = [1,\n2,,]\n" + deep).starts_with("t.toml:2:3: invalid TOML: "));
    CHECK(error_of("x = \"unterminated\n[[[a]]]\n").starts_with("t.toml:1:"));
    // A construct still open at the cut is not an error of its own.
    CHECK(error_of("x = [1,\n2,\n" + deep) == "t.toml:3:31: nesting deeper than 32");
    CHECK(error_of("x = \"\"\"\n" + deep + "\"\"\"\n[[[a]]]\n") ==
          "t.toml:4:3: invalid TOML: expected a key after '[' in a table header");
}

TEST_CASE("a config larger than 1 MiB is refused before it is parsed") {
    // kMinimal, padded with a comment to exactly 1 MiB, loads.
    std::string text(doc(kMinimal));
    text += "#" + std::string(1024 * 1024 - text.size() - 2, 'x') + "\n";
    REQUIRE(text.size() == 1024 * 1024);
    CHECK(error_of(text) == "<loaded>");
    text += "\n";
    CHECK(error_of(text) == "t.toml: larger than 1 MiB, the limit for a config file");
    SUBCASE("a file is not read past the limit") {
        std::string path = write_temp(text);
        auto result = load_config_file(path);
        std::remove(path.c_str());
        auto* error = std::get_if<ConfigError>(&result);
        REQUIRE(error != nullptr);
        CHECK(error->to_string() == path + ": larger than 1 MiB, the limit for a config file");
    }
    SUBCASE("an endless file") {
        auto result = load_config_file("/dev/zero");
        auto* error = std::get_if<ConfigError>(&result);
        REQUIRE(error != nullptr);
        CHECK(error->to_string() == "/dev/zero: larger than 1 MiB, the limit for a config file");
    }
}

// ---------------------------------------------------------------------------------
// validate() on a Config built in memory (the command-line quick mode).

TEST_CASE("validate: a valid quick-mode config") {
    CHECK(validate_error(cli_config()) == "<valid>");
    Config c = cli_config();
    c.target_groups[0].targets.clear();
    CHECK(validate_error(c) == "<valid>");  // an empty group is allowed
}

TEST_CASE("validate: errors have no position") {
    SUBCASE("duplicate address") {
        Config c = cli_config();
        c.target_groups[0].targets[1] = {"other", addr("127.0.0.1:9001"), 1};
        CHECK(validate_error(c) ==
              "<command line>: target_group[0].target[1].address: duplicate "
              "address 127.0.0.1:9001 in this group (also target[0])");
    }
    SUBCASE("duplicate id") {
        Config c = cli_config();
        c.target_groups[0].targets[1].id = "127.0.0.1:9001";
        CHECK(validate_error(c) ==
              "<command line>: target_group[0].target[1].id: duplicate "
              "target id \"127.0.0.1:9001\" (first used by target[0])");
    }
    SUBCASE("duplicate listen address") {
        Config c = cli_config();
        c.listeners.push_back({"x", addr("127.0.0.1:8000"), "default"});
        CHECK(validate_error(c) ==
              "<command line>: listener[1].bind: duplicate bind address "
              "127.0.0.1:8000 (also listener[0])");
    }
    SUBCASE("no listeners") {
        Config c = cli_config();
        c.listeners.clear();
        CHECK(validate_error(c) ==
              "<command line>: listener: no listeners; add a [[listener]] "
              "with bind and target_group");
    }
    SUBCASE("unset addresses") {
        Config c = cli_config();
        c.listeners[0].bind = SocketAddress{};
        CHECK(validate_error(c) ==
              "<command line>: listener[0].bind: not set; expected ip:port "
              "such as 127.0.0.1:8000 or [::]:8000");
        c = cli_config();
        c.target_groups[0].targets[0].address = SocketAddress{};
        CHECK(validate_error(c) ==
              "<command line>: target_group[0].target[0].address: not set; "
              "expected ip:port such as 127.0.0.1:9001 or [::1]:9001");
    }
    SUBCASE("ranges") {
        Config c = cli_config();
        c.global.threads = 1000;
        CHECK(validate_error(c) ==
              "<command line>: global.threads: must be an integer from 0 to "
              "256 (0 = one per online CPU), got 1000");
        c = cli_config();
        c.global.shutdown_grace = 2h;
        CHECK(validate_error(c) ==
              "<command line>: global.shutdown_grace: must be a duration "
              "from 0s to 1h, got 2h");
        c = cli_config();
        c.target_groups[0].connect_timeout = 1ms;
        CHECK(validate_error(c) ==
              "<command line>: target_group[0].connect_timeout: must be a "
              "duration from 10ms to 1m, got 1ms");
        c = cli_config();
        c.target_groups[0].connect_retries = 17;
        CHECK(validate_error(c) ==
              "<command line>: target_group[0].connect_retries: must be an "
              "integer from 0 to 16, got 17");
        c = cli_config();
        c.target_groups[0].stickiness.prefix_v4 = 33;
        CHECK(validate_error(c) ==
              "<command line>: target_group[0].stickiness.prefix_v4: must be "
              "an integer from 0 to 32, got 33");
        c = cli_config();
        c.target_groups[0].stickiness.prefix_v6 = 200;
        CHECK(validate_error(c) ==
              "<command line>: target_group[0].stickiness.prefix_v6: must be "
              "an integer from 0 to 128, got 200");
        c = cli_config();
        c.target_groups[0].targets[1].weight = 0;
        CHECK(validate_error(c) ==
              "<command line>: target_group[0].target[1].weight: must be an "
              "integer from 1 to 100, got 0");
    }
    SUBCASE("references and names") {
        Config c = cli_config();
        c.listeners[0].target_group = "Default";
        CHECK(validate_error(c) ==
              "<command line>: listener[0].target_group: unknown target "
              "group \"Default\" (did you mean \"default\"?); known groups: "
              "\"default\"");
        c = cli_config();
        c.listeners[0].name.clear();
        CHECK(validate_error(c) == "<command line>: listener[0].name: must not be empty");
        c = cli_config();
        c.target_groups[0].targets[0].id.clear();
        CHECK(validate_error(c) ==
              "<command line>: target_group[0].target[0].id: must not be "
              "empty");
        c = cli_config();
        c.target_groups.push_back(c.target_groups[0]);
        CHECK(validate_error(c) ==
              "<command line>: target_group[1].name: duplicate target group "
              "name \"default\" (also target_group[0])");
    }
    SUBCASE("the source name is the caller's") {
        Config c = cli_config();
        c.listeners.clear();
        auto error = validate(c, "flags");
        REQUIRE(error.has_value());
        CHECK(error->source == "flags");
        CHECK(error->line == 0);
        CHECK(error->column == 0);
        CHECK(error->key_path == "listener");
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

// ---------------------------------------------------------------------------------
// [target_group.health_check] and connection_termination_on_unhealthy

namespace {

// A valid config whose group "web" ends with `extra` (keys or a health_check table).
std::string hc_doc(std::string_view extra) {
    return fmt::format(R"([[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"
{}
[[target_group.target]]
address = "127.0.0.1:9001"
)",
                       extra);
}

std::string hc_error(std::string_view extra) {
    auto result = parse_config(hc_doc(extra), "t.toml");
    if (auto* error = std::get_if<ConfigError>(&result)) return error->to_string();
    return "<loaded>";
}

TargetGroupConfig hc_group(std::string_view extra) {
    auto result = parse_config(hc_doc(extra), "t.toml");
    if (auto* error = std::get_if<ConfigError>(&result)) FAIL(error->to_string());
    return std::get<Config>(result).target_groups.at(0);
}

}  // namespace

TEST_CASE("health check: NLB defaults without the table") {
    TargetGroupConfig g = hc_group("");
    const HealthCheckConfig& hc = g.health_check;
    CHECK(hc.enabled);
    CHECK(hc.protocol == HealthProtocol::tcp);
    CHECK_FALSE(hc.port);
    CHECK(hc.path == "/");
    CHECK(hc.interval == 30s);
    CHECK_FALSE(hc.timeout);
    CHECK(hc.effective_timeout() == 10s);
    CHECK(hc.healthy_threshold == 5);
    CHECK(hc.unhealthy_threshold == 2);
    CHECK(hc.matcher.text() == "200-399");
    CHECK(hc.passive);
    CHECK(hc.passive_failures == 2);
    CHECK(g.connection_termination_on_unhealthy);
}

TEST_CASE("health check: every key read") {
    TargetGroupConfig g = hc_group(R"(connection_termination_on_unhealthy = false
[target_group.health_check]
enabled = true
protocol = "http"
port = 8081
path = "/healthz?full=1"
interval = "10s"
timeout = 4
healthy_threshold = 3
unhealthy_threshold = 4
matcher = "200,202,300-399"
passive = false
passive_failures = 5
)");
    const HealthCheckConfig& hc = g.health_check;
    CHECK_FALSE(g.connection_termination_on_unhealthy);
    CHECK(hc.protocol == HealthProtocol::http);
    CHECK(hc.port == uint16_t{8081});
    CHECK(hc.path == "/healthz?full=1");
    CHECK(hc.interval == 10s);
    CHECK(hc.timeout == Duration{4000});
    CHECK(hc.healthy_threshold == 3);
    CHECK(hc.unhealthy_threshold == 4);
    CHECK(hc.matcher.matches(202));
    CHECK_FALSE(hc.matcher.matches(201));
    CHECK_FALSE(hc.passive);
    CHECK(hc.passive_failures == 5);
}

TEST_CASE("health check: https takes the http keys") {
    TargetGroupConfig g = hc_group(R"([target_group.health_check]
protocol = "https"
path = "/healthz"
matcher = "200,204"
)");
    const HealthCheckConfig& hc = g.health_check;
    CHECK(hc.protocol == HealthProtocol::https);
    CHECK(hc.path == "/healthz");
    CHECK(hc.matcher.matches(204));
    CHECK_FALSE(hc.matcher.matches(201));
    CHECK(hc.effective_timeout() == 10s);
}

TEST_CASE("health check: other accepted spellings and bounds") {
    CHECK(hc_group("[target_group.health_check]\nport = \"traffic-port\"\n").health_check.port ==
          std::nullopt);
    CHECK(hc_group("[target_group.health_check]\nport = \"8080\"\n").health_check.port ==
          uint16_t{8080});
    CHECK(hc_group("[target_group.health_check]\nport = 65535\n").health_check.port ==
          uint16_t{65535});
    CHECK(hc_group("[target_group.health_check]\nenabled = false\n").health_check.enabled == false);
    // Bare integers are seconds, as NLB attributes are written.
    CHECK(hc_group("[target_group.health_check]\ninterval = 300\ntimeout = 120\n")
              .health_check.interval == 300s);
    // The stickyd extension: sub-5 s intervals for local testing.
    auto fast = hc_group("[target_group.health_check]\ninterval = \"100ms\"\n").health_check;
    CHECK(fast.interval == 100ms);
    CHECK(fast.effective_timeout() == 50ms);
    CHECK(hc_group("[target_group.health_check]\nhealthy_threshold = 10\nunhealthy_threshold = 2\n")
              .health_check.healthy_threshold == 10);
    // The http default timeout is 6 s.
    CHECK(hc_group("[target_group.health_check]\nprotocol = \"http\"\n")
              .health_check.effective_timeout() == 6s);
    // Half the interval only when the interval is not longer than the protocol's
    // default (what --help and the README state): not whenever half is shorter.
    auto timeout_at = [&](std::string_view protocol, std::string_view interval) {
        return hc_group(fmt::format("[target_group.health_check]\nprotocol = \"{}\"\n"
                                    "interval = \"{}\"\n",
                                    protocol, interval))
            .health_check.effective_timeout();
    };
    CHECK(timeout_at("tcp", "15s") == 10s);
    CHECK(timeout_at("tcp", "10s") == 5s);
    CHECK(timeout_at("http", "8s") == 6s);
    CHECK(timeout_at("http", "6s") == 3s);
    // The NLB's HTTPS default is TCP's, not HTTP's.
    CHECK(timeout_at("https", "15s") == 10s);
    CHECK(timeout_at("https", "10s") == 5s);
    CHECK(hc_group("[target_group.health_check]\nprotocol = \"http\"\nmatcher = \"200-599\"\n")
              .health_check.matcher.matches(599));
}

TEST_CASE("health check: rejections") {
    const std::string at = "t.toml:8:";
    auto hc = [](std::string_view body) {
        return hc_error(fmt::format("[target_group.health_check]\n{}\n", body));
    };
    CHECK(hc("protocol = \"HTTPS\"") ==
          at + "12: target_group[0].health_check.protocol: must be one of \"tcp\", \"http\", "
               "\"https\", got \"HTTPS\" (did you mean \"https\"?)");
    CHECK(hc("protocol = \"udp\"") ==
          at + "12: target_group[0].health_check.protocol: must be one of \"tcp\", \"http\", "
               "\"https\", got \"udp\"");
    CHECK(hc("protocol = \"TCP\"") ==
          at + "12: target_group[0].health_check.protocol: must be one of \"tcp\", \"http\", "
               "\"https\", got \"TCP\" (did you mean \"tcp\"?)");
    CHECK(hc("port = 0") == at + "8: target_group[0].health_check.port: must be an integer from "
                                 "1 to 65535 or \"traffic-port\", got 0");
    CHECK(hc("port = 70000") == at + "8: target_group[0].health_check.port: must be an integer "
                                     "from 1 to 65535 or \"traffic-port\", got 70000");
    CHECK(hc("port = \"traffic\"") ==
          at + "8: target_group[0].health_check.port: must be an integer from 1 to 65535 or "
               "\"traffic-port\", got string \"traffic\"");
    CHECK(hc("port = \"99999\"") == at + "8: target_group[0].health_check.port: must be an "
                                         "integer from 1 to 65535 or \"traffic-port\", got 99999");
    CHECK(hc("path = \"/x\"") == at + "8: target_group[0].health_check.path: only applies with "
                                      "protocol = \"http\" or \"https\"; set one or remove the "
                                      "key");
    CHECK(hc("matcher = \"200\"") == at + "11: target_group[0].health_check.matcher: only "
                                          "applies with protocol = \"http\" or \"https\"; set "
                                          "one or remove the key");
    CHECK(hc("protocol = \"https\"\npath = \"health\"") ==
          "t.toml:9:8: target_group[0].health_check.path: must start with \"/\", got \"health\"");
    CHECK(hc("protocol = \"http\"\npath = \"health\"") ==
          "t.toml:9:8: target_group[0].health_check.path: must start with \"/\", got \"health\"");
    CHECK(hc("protocol = \"http\"\npath = \"/a b\"") ==
          "t.toml:9:8: target_group[0].health_check.path: must not contain spaces or control "
          "characters, got \"/a b\"");
    CHECK(hc("protocol = \"http\"\npath = \"/" + std::string(1024, 'a') + "\"") ==
          "t.toml:9:8: target_group[0].health_check.path: must be at most 1024 characters, got "
          "1025");
    CHECK(hc("protocol = \"http\"\nmatcher = \"100-200\"") ==
          "t.toml:9:11: target_group[0].health_check.matcher: code 100 is outside 200-599; "
          "expected codes and ranges such as \"200\", \"200-399\" or \"200,202,300-399\"");
    CHECK(hc("protocol = \"http\"\nmatcher = \"399-200\"") ==
          "t.toml:9:11: target_group[0].health_check.matcher: range \"399-200\" is backwards; "
          "write the lower code first");
    CHECK(hc("protocol = \"http\"\nmatcher = 200") ==
          "t.toml:9:11: target_group[0].health_check.matcher: expected a string, got integer "
          "200");
    CHECK(hc("interval = \"50ms\"") == at + "12: target_group[0].health_check.interval: must be "
                                            "a duration from 100ms to 5m, got 50ms");
    CHECK(hc("interval = 301") == at + "12: target_group[0].health_check.interval: must be a "
                                       "duration from 100ms to 5m, got 301s");
    CHECK(hc("timeout = \"121s\"") == at + "11: target_group[0].health_check.timeout: must be "
                                           "a duration from 100ms to 2m, got 121s");
    CHECK(hc("interval = \"5s\"\ntimeout = \"5s\"") ==
          "t.toml:9:11: target_group[0].health_check.timeout: must be shorter than the interval "
          "(5s), got 5s");
    CHECK(hc("timeout = \"40s\"") == at + "11: target_group[0].health_check.timeout: must be "
                                          "shorter than the interval (30s), got 40s");
    CHECK(hc("timeout = \"soon\"") ==
          at + "11: target_group[0].health_check.timeout: expected a duration such as \"2s\" or "
               "\"500ms\" (units ms, s, m, h; a bare integer means seconds), got string \"soon\"");
    CHECK(hc("healthy_threshold = 1") == at + "21: target_group[0].health_check.healthy_threshold: "
                                              "must be an integer from 2 to 10, got 1");
    CHECK(hc("healthy_threshold = 11") ==
          at + "21: target_group[0].health_check.healthy_threshold: must be an integer from 2 "
               "to 10, got 11");
    CHECK(hc("unhealthy_threshold = 1") ==
          at + "23: target_group[0].health_check.unhealthy_threshold: must be an integer from 2 "
               "to 10, got 1");
    CHECK(hc("unhealthy_threshold = \"2\"") ==
          at + "23: target_group[0].health_check.unhealthy_threshold: must be an integer from 2 "
               "to 10, got string \"2\"");
    CHECK(hc("passive_failures = 0") == at + "20: target_group[0].health_check.passive_failures: "
                                             "must be an integer from 1 to 100, got 0");
    CHECK(hc("passive = \"yes\"") == at + "11: target_group[0].health_check.passive: expected "
                                          "true or false, got string \"yes\"");
    CHECK(hc("enabled = 1") == at + "11: target_group[0].health_check.enabled: expected true or "
                                    "false, got integer 1");
    CHECK(hc_error("connection_termination_on_unhealthy = \"yes\"") ==
          "t.toml:7:39: target_group[0].connection_termination_on_unhealthy: expected true or "
          "false, got string \"yes\"");
    CHECK(hc_error("health_check = 1") ==
          "t.toml:7:16: target_group[0].health_check: expected "
          "a table ([target_group.health_check]), got integer 1");
}

TEST_CASE("health check: validate covers configs built in memory") {
    Config config = cli_config();
    HealthCheckConfig& hc = config.target_groups[0].health_check;
    hc.interval = 1s;
    hc.timeout = 1s;
    CHECK(validate_error(config) ==
          "<command line>: target_group[0].health_check.timeout: must "
          "be shorter than the interval (1s), got 1s");
    hc.timeout.reset();
    hc.healthy_threshold = 1;
    CHECK(validate_error(config) ==
          "<command line>: target_group[0].health_check."
          "healthy_threshold: must be an integer from 2 to 10, got 1");
    hc.healthy_threshold = 2;
    hc.protocol = HealthProtocol::http;
    hc.path = "x";
    CHECK(validate_error(config) ==
          "<command line>: target_group[0].health_check.path: must "
          "start with \"/\", got \"x\"");
    hc.path = "/";
    hc.matcher = Matcher();
    CHECK(validate_error(config) ==
          "<command line>: target_group[0].health_check.matcher: must "
          "name at least one status code, e.g. \"200-399\"");
    hc.matcher = std::get<Matcher>(parse_matcher("200"));
    hc.interval = 50ms;
    CHECK(validate_error(config) ==
          "<command line>: target_group[0].health_check.interval: must "
          "be a duration from 100ms to 5m, got 50ms");
    hc.interval = 1s;
    hc.passive_failures = 0;
    CHECK(validate_error(config) ==
          "<command line>: target_group[0].health_check."
          "passive_failures: must be an integer from 1 to 100, got 0");
    hc.passive_failures = 1;
    CHECK(validate_error(config) == "<valid>");
}

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
    CHECK(error_of(base + "count = 0\n") ==
          "t.toml:12:9: target_group[0].minimum_healthy_targets.count: must be an integer from 1 "
          "to 50000, got 0");
    CHECK(error_of(base + "count = 50001\n") ==
          "t.toml:12:9: target_group[0].minimum_healthy_targets.count: must be an integer from 1 "
          "to 50000, got 50001");
    CHECK(error_of(base + "count = \"off\"\n") ==
          "t.toml:12:9: target_group[0].minimum_healthy_targets.count: must be an integer from 1 "
          "to 50000, got string \"off\"");
    CHECK(error_of(base + "percentage = 0\n") ==
          "t.toml:12:14: target_group[0].minimum_healthy_targets.percentage: must be an integer "
          "from 1 to 100 or \"off\", got 0");
    CHECK(error_of(base + "percentage = 101\n") ==
          "t.toml:12:14: target_group[0].minimum_healthy_targets.percentage: must be an integer "
          "from 1 to 100 or \"off\", got 101");
    CHECK(error_of(base + "percentage = \"50%\"\n") ==
          "t.toml:12:14: target_group[0].minimum_healthy_targets.percentage: must be an integer "
          "from 1 to 100 or \"off\", got string \"50%\"");
    CHECK(error_of(base + "percentage = 50.5\n") ==
          "t.toml:12:14: target_group[0].minimum_healthy_targets.percentage: must be an integer "
          "from 1 to 100 or \"off\", got floating-point 50.5");
    CHECK(error_of(base + "cuont = 2\n") ==
          "t.toml:12:1: target_group[0].minimum_healthy_targets.cuont: unknown key (did you mean "
          "\"count\"?)");
    CHECK(error_of(R"(
[[target_group]]
name = "web"
minimum_healthy_targets = 3
)") == "t.toml:3:27: target_group[0].minimum_healthy_targets: expected a table "
       "([target_group.minimum_healthy_targets]), got integer 3");
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
    CHECK(error_of(with_global("metrics_address = 9100\n")) ==
          "t.toml:2:19: global.metrics_address: expected a string \"ip:port\" such as "
          "\"127.0.0.1:9100\", got integer 9100");
    CHECK(error_of(with_global("admin_address = \"127.0.0.1:9090\"\n"
                               "metrics_address = \"127.0.0.1:9090\"\n")) ==
          "t.toml:3:19: global.metrics_address: 127.0.0.1:9090 clashes with admin_address "
          "127.0.0.1:9090; give it a port of its own");
    // A wildcard covers every address of its family ([::] of both: dual-stack).
    CHECK(error_of(with_global("admin_address = \"0.0.0.0:9090\"\n"
                               "metrics_address = \"127.0.0.1:9090\"\n")) ==
          "t.toml:3:19: global.metrics_address: 127.0.0.1:9090 clashes with admin_address "
          "0.0.0.0:9090; give it a port of its own");
    CHECK(error_of(with_global("admin_address = \"127.0.0.1:9090\"\n"
                               "metrics_address = \"[::]:9090\"\n")) ==
          "t.toml:3:19: global.metrics_address: [::]:9090 clashes with admin_address "
          "127.0.0.1:9090; give it a port of its own");
    CHECK(error_of(with_global("metrics_address = \"127.0.0.1:8000\"\n")) ==
          "t.toml:2:19: global.metrics_address: 127.0.0.1:8000 clashes with listener[0].bind "
          "127.0.0.1:8000 at line 5; give it a port of its own");
    CHECK(error_of(with_global("metrics_address = \"127.0.0.2:8001\"\n")) ==
          "t.toml:2:19: global.metrics_address: 127.0.0.2:8001 clashes with listener[1].bind "
          "[::]:8001 at line 9; give it a port of its own");
    // Other ports, or one IP of each family, do not clash.
    CHECK(error_of(with_global("admin_address = \"127.0.0.1:9090\"\n"
                               "metrics_address = \"127.0.0.1:9091\"\n")) == "<loaded>");
    CHECK(error_of(with_global("admin_address = \"0.0.0.0:9090\"\n"
                               "metrics_address = \"[::1]:9090\"\n")) == "<loaded>");
    CHECK(error_of(with_global("admin_address = \"127.0.0.1:9090\"\n"
                               "metrics_address = \"127.0.0.2:9090\"\n")) == "<loaded>");
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
    CHECK(error_of(with("idle_timeout = \"0s\"\n")) ==
          "t.toml:7:16: listener[0].idle_timeout: must be a duration from 1s to 100m, got 0s");
    CHECK(error_of(with("idle_timeout = \"2h\"\n")) ==
          "t.toml:7:16: listener[0].idle_timeout: must be a duration from 1s to 100m, got 2h");
    CHECK(error_of(with("accept_proxy_protocol = \"yes\"\n")) ==
          "t.toml:7:25: listener[0].accept_proxy_protocol: expected true or false, got string "
          "\"yes\"");
    CHECK(error_of(with("proxy_protocol_timeout = \"1s\"\n")) ==
          "t.toml:7:26: listener[0].proxy_protocol_timeout: only applies with "
          "accept_proxy_protocol = true; set that or remove the key");
    CHECK(error_of(R"(
[global]
admin_socket = "run/admin.sock"
)") == "t.toml:2:16: global.admin_socket: must be an absolute path, got \"run/admin.sock\"");
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

// ---------------------------------------------------------------------------------
// preserve_client_ip

namespace {

// A group "web" with preserve_client_ip behind one listener; the key is on line 6.
std::string client_ip_config(std::string_view bind, std::string_view target,
                             std::string_view listener_keys = "") {
    return fmt::format(R"([[listener]]
bind = "{}"
target_group = "web"
{}[[target_group]]
name = "web"
preserve_client_ip = true
[[target_group.target]]
address = "{}"
)",
                       bind, listener_keys, target);
}

}  // namespace

TEST_CASE("preserve_client_ip: off by default, a boolean") {
    CHECK_FALSE(loaded(kMinimal).target_groups.at(0).preserve_client_ip);
    CHECK(loaded(client_ip_config("127.0.0.1:8000", "127.0.0.1:9001"))
              .target_groups.at(0)
              .preserve_client_ip);
    CHECK(error_of(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"
[[target_group]]
name = "web"
preserve_client_ip = "yes"
)") == "t.toml:6:22: target_group[0].preserve_client_ip: expected true or false, got "
       "string \"yes\"");
}

TEST_CASE("preserve_client_ip: refused where no client can keep its address") {
    CHECK(error_of(client_ip_config("127.0.0.1:8000", "[::1]:9001")) ==
          "t.toml:6:22: target_group[0].preserve_client_ip: every target is IPv6 but the group's "
          "listeners only take IPv4 clients (listener \"127.0.0.1:8000\" on 127.0.0.1:8000), and "
          "one connection cannot carry both: no client would keep its address; give the group "
          "IPv4 targets or remove the key");
    CHECK(error_of(client_ip_config("[::1]:8000", "127.0.0.1:9001")) ==
          "t.toml:6:22: target_group[0].preserve_client_ip: every target is IPv4 but the group's "
          "listeners only take IPv6 clients (listener \"[::1]:8000\" on [::1]:8000), and one "
          "connection cannot carry both: no client would keep its address; give the group IPv6 "
          "targets or remove the key");
    // An IPv4-mapped listener takes IPv4 clients only.
    CHECK(error_of(client_ip_config("[::ffff:127.0.0.1]:8000", "[::1]:9001"))
              .starts_with("t.toml:6:22: target_group[0].preserve_client_ip: every target is "
                           "IPv6 but the group's listeners only take IPv4 clients"));
}

TEST_CASE("preserve_client_ip: accepted wherever some client can keep its address") {
    // Same version; an IPv4-mapped target is IPv4 on the wire.
    loaded(client_ip_config("127.0.0.1:8000", "127.0.0.1:9001"));
    loaded(client_ip_config("[::1]:8000", "[::1]:9001"));
    loaded(client_ip_config("127.0.0.1:8000", "[::ffff:127.0.0.1]:9001"));
    // A dual-stack listener, or a PROXY header, can bring either version.
    loaded(client_ip_config("[::]:8000", "127.0.0.1:9001"));
    loaded(client_ip_config("[::]:8000", "[::1]:9001"));
    loaded(client_ip_config("127.0.0.1:8000", "[::1]:9001", "accept_proxy_protocol = true\n"));
    // Mixed targets: the mismatched clients are counted at run time.
    loaded(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"
[[target_group]]
name = "web"
preserve_client_ip = true
[[target_group.target]]
address = "127.0.0.1:9001"
[[target_group.target]]
address = "[::1]:9001"
)");
    // DNS targets are not known yet.
    loaded(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"
[[target_group]]
name = "web"
preserve_client_ip = true
dns = "app.example:80"
[[target_group.target]]
address = "[::1]:9001"
)");
    // A second listener of the other version makes the group reachable.
    loaded(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"
[[listener]]
bind = "[::1]:8000"
target_group = "web"
[[target_group]]
name = "web"
preserve_client_ip = true
[[target_group.target]]
address = "[::1]:9001"
)");
}

TEST_CASE("preserve_client_ip: validate() says the same about a config built in memory") {
    Config config = cli_config();
    config.target_groups[0].preserve_client_ip = true;
    CHECK(validate_error(config) == "<valid>");
    for (auto& t : config.target_groups[0].targets) t.address = addr("[::1]:9001");
    config.target_groups[0].targets[1].address = addr("[::1]:9002");
    CHECK(validate_error(config).starts_with(
        "<command line>: target_group[0].preserve_client_ip: every target is IPv6"));
}

// Source allow and deny lists (the NLB's security groups).

namespace {

// A listener with `keys` (from line 4 on) in front of a one-target group.
std::string listener_with(std::string_view keys) {
    return fmt::format(R"(
[[listener]]
bind = "[::]:8000"
target_group = "web"
{}
[[target_group]]
name = "web"
[[target_group.target]]
address = "10.0.0.1:80"
)",
                       keys);
}

std::vector<std::string> texts(const std::vector<IpPrefix>& list) {
    std::vector<std::string> out;
    for (const IpPrefix& p : list) out.push_back(to_string(p));
    return out;
}

}  // namespace

TEST_CASE("allow and deny: absent by default, parsed to canonical prefixes") {
    const Config none = loaded(kMinimal);
    CHECK(none.listeners.at(0).allow.empty());
    CHECK(none.listeners.at(0).deny.empty());

    const Config config = loaded(listener_with(
        R"(allow = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7", "::ffff:198.51.100.0/120"]
deny = ["10.1.0.0/16"]
)"));
    const ListenerConfig& listener = config.listeners.at(0);
    CHECK(texts(listener.allow) == std::vector<std::string>{"10.0.0.0/8", "2001:db8::/32",
                                                            "192.0.2.7/32", "198.51.100.0/24"});
    CHECK(texts(listener.deny) == std::vector<std::string>{"10.1.0.0/16"});
    // An empty deny list denies nothing; a deny list alone is fine.
    CHECK(loaded(listener_with("deny = []\n")).listeners.at(0).deny.empty());
    CHECK(texts(loaded(listener_with("deny = [\"0.0.0.0/0\"]\n")).listeners.at(0).deny) ==
          std::vector<std::string>{"0.0.0.0/0"});
}

TEST_CASE("allow and deny: one error line with the element's position, key and fix") {
    CHECK(error_of(listener_with("allow = [\"10.0.0.0/8\", \"10.0.0.1/8\"]\n")) ==
          "t.toml:4:24: listener[0].allow[1]: \"10.0.0.1/8\": host bits are set; did you mean "
          "10.0.0.0/8?");
    CHECK(error_of(listener_with("deny = [\"10.0.0.1/33\"]\n")) ==
          "t.toml:4:9: listener[0].deny[0]: \"10.0.0.1/33\": prefix length 33 is out of range "
          "0-32 for an IPv4 address");
    CHECK(error_of(listener_with("allow = [\"2001:db8::/129\"]\n")) ==
          "t.toml:4:10: listener[0].allow[0]: \"2001:db8::/129\": prefix length 129 is out of "
          "range 0-128 for an IPv6 address");
    CHECK(error_of(listener_with("allow = [\"office.example.com\"]\n")) ==
          "t.toml:4:10: listener[0].allow[0]: \"office.example.com\": not an IPv4 or IPv6 "
          "address; expected a CIDR prefix such as 10.0.0.0/8 or 2001:db8::/32, or a bare "
          "address");
    CHECK(error_of(listener_with("allow = [\"10.0.0.0/8\",\n  \"10.0.0.0/\"]\n")) ==
          "t.toml:5:3: listener[0].allow[1]: \"10.0.0.0/\": missing prefix length after '/'");
    CHECK(error_of(listener_with("allow = [10]\n")) ==
          "t.toml:4:10: listener[0].allow[0]: expected a string such as \"10.0.0.0/8\", got "
          "integer 10");
    CHECK(error_of(listener_with("allow = \"10.0.0.0/8\"\n")) ==
          "t.toml:4:9: listener[0].allow: expected an array of CIDR prefixes such as "
          "[\"10.0.0.0/8\", \"2001:db8::/32\"], got string \"10.0.0.0/8\"");
    CHECK(error_of(listener_with("allow = []\n")) ==
          "t.toml:4:9: listener[0].allow: an empty list would refuse every client; remove the "
          "key to allow every client, or list prefixes such as \"10.0.0.0/8\"");
    CHECK(error_of(listener_with("alow = [\"10.0.0.0/8\"]\n")) ==
          "t.toml:4:1: listener[0].alow: unknown key (did you mean \"allow\"?)");
}
