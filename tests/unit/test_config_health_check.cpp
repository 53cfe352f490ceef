// [target_group.health_check] and connection_termination_on_unhealthy: NLB defaults,
// every key, and each rejection as its exact line.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <string>
#include <utility>
#include <vector>

#include "stickyd/config.hpp"
#include "tests/support/config_fixtures.hpp"

using namespace stickyd;
using namespace stickyd::test;
using namespace std::chrono_literals;

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
    // Each body of [target_group.health_check] and the exact error line it gives.
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"protocol = \"HTTPS\"",
         at + "12: target_group[0].health_check.protocol: must be one of \"tcp\", \"http\", "
              "\"https\", got \"HTTPS\" (did you mean \"https\"?)"},
        {"protocol = \"udp\"",
         at + "12: target_group[0].health_check.protocol: must be one of \"tcp\", \"http\", "
              "\"https\", got \"udp\""},
        {"protocol = \"TCP\"",
         at + "12: target_group[0].health_check.protocol: must be one of \"tcp\", \"http\", "
              "\"https\", got \"TCP\" (did you mean \"tcp\"?)"},
        {"port = 0", at + "8: target_group[0].health_check.port: must be an integer from "
                          "1 to 65535 or \"traffic-port\", got 0"},
        {"port = 70000", at + "8: target_group[0].health_check.port: must be an integer "
                              "from 1 to 65535 or \"traffic-port\", got 70000"},
        {"port = \"traffic\"",
         at + "8: target_group[0].health_check.port: must be an integer from 1 to 65535 or "
              "\"traffic-port\", got string \"traffic\""},
        {"port = \"99999\"", at + "8: target_group[0].health_check.port: must be an "
                                  "integer from 1 to 65535 or \"traffic-port\", got 99999"},
        {"path = \"/x\"", at + "8: target_group[0].health_check.path: only applies with "
                               "protocol = \"http\" or \"https\"; set one or remove the "
                               "key"},
        {"matcher = \"200\"", at + "11: target_group[0].health_check.matcher: only "
                                   "applies with protocol = \"http\" or \"https\"; set "
                                   "one or remove the key"},
        {"protocol = \"https\"\npath = \"health\"",
         "t.toml:9:8: target_group[0].health_check.path: must start with \"/\", got \"health\""},
        {"protocol = \"http\"\npath = \"health\"",
         "t.toml:9:8: target_group[0].health_check.path: must start with \"/\", got \"health\""},
        {"protocol = \"http\"\npath = \"/a b\"",
         "t.toml:9:8: target_group[0].health_check.path: must not contain spaces or control "
         "characters, got \"/a b\""},
        {"protocol = \"http\"\npath = \"/" + std::string(1024, 'a') + "\"",
         "t.toml:9:8: target_group[0].health_check.path: must be at most 1024 characters, got "
         "1025"},
        {"protocol = \"http\"\nmatcher = \"100-200\"",
         "t.toml:9:11: target_group[0].health_check.matcher: code 100 is outside 200-599; "
         "expected codes and ranges such as \"200\", \"200-399\" or \"200,202,300-399\""},
        {"protocol = \"http\"\nmatcher = \"399-200\"",
         "t.toml:9:11: target_group[0].health_check.matcher: range \"399-200\" is backwards; "
         "write the lower code first"},
        {"protocol = \"http\"\nmatcher = 200",
         "t.toml:9:11: target_group[0].health_check.matcher: expected a string, got integer "
         "200"},
        {"interval = \"50ms\"", at + "12: target_group[0].health_check.interval: must be "
                                     "a duration from 100ms to 5m, got 50ms"},
        {"interval = 301", at + "12: target_group[0].health_check.interval: must be a "
                                "duration from 100ms to 5m, got 301s"},
        {"timeout = \"121s\"", at + "11: target_group[0].health_check.timeout: must be "
                                    "a duration from 100ms to 2m, got 121s"},
        {"interval = \"5s\"\ntimeout = \"5s\"",
         "t.toml:9:11: target_group[0].health_check.timeout: must be shorter than the interval "
         "(5s), got 5s"},
        {"timeout = \"40s\"", at + "11: target_group[0].health_check.timeout: must be "
                                   "shorter than the interval (30s), got 40s"},
        {"timeout = \"soon\"",
         at + "11: target_group[0].health_check.timeout: expected a duration such as \"2s\" or "
              "\"500ms\" (units ms, s, m, h; a bare integer means seconds), got string \"soon\""},
        {"healthy_threshold = 1", at + "21: target_group[0].health_check.healthy_threshold: "
                                       "must be an integer from 2 to 10, got 1"},
        {"healthy_threshold = 11",
         at + "21: target_group[0].health_check.healthy_threshold: must be an integer from 2 "
              "to 10, got 11"},
        {"unhealthy_threshold = 1",
         at + "23: target_group[0].health_check.unhealthy_threshold: must be an integer from 2 "
              "to 10, got 1"},
        {"unhealthy_threshold = \"2\"",
         at + "23: target_group[0].health_check.unhealthy_threshold: must be an integer from 2 "
              "to 10, got string \"2\""},
        {"passive_failures = 0", at + "20: target_group[0].health_check.passive_failures: "
                                      "must be an integer from 1 to 100, got 0"},
        {"passive = \"yes\"", at + "11: target_group[0].health_check.passive: expected "
                                   "true or false, got string \"yes\""},
        {"enabled = 1", at + "11: target_group[0].health_check.enabled: expected true or "
                             "false, got integer 1"},
    };
    for (const auto& entry : cases) {
        // Not a structured binding: clang before 16 cannot capture one (CAPTURE).
        const auto& body = entry.first;
        CAPTURE(body);
        CHECK(hc(body) == entry.second);
    }
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
