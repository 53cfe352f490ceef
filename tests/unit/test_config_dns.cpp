// A target group's dns names: one string or a list, beside static targets or
// instead of them, checked as the exact line a user sees (test_config_service.cpp
// has the single name's original cases).
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <string>

#include "stickyd/config.hpp"
#include "tests/support/config_fixtures.hpp"

using namespace stickyd;
using namespace stickyd::test;
using namespace std::chrono_literals;

namespace {

// The example every dns error gives.
constexpr std::string_view kExample = "app-headless.default.svc.cluster.local:8080";

// A group "web" with `keys` (line 3 onwards), then its listener.
std::string group_with(std::string_view keys) {
    return fmt::format(
        "[[target_group]]\nname = \"web\"\n{}\n[[listener]]\nbind = \"127.0.0.1:8000\"\n"
        "target_group = \"web\"\n",
        keys);
}

std::vector<std::string> texts(const TargetGroupConfig& group) {
    std::vector<std::string> out;
    for (const DnsDiscoveryConfig& dns : group.dns) out.push_back(dns.text());
    return out;
}

// Quick mode's shape: one group "default", built in memory.
Config in_memory(std::vector<DnsDiscoveryConfig> names) {
    Config config;
    TargetGroupConfig group;
    group.name = "default";
    group.dns = std::move(names);
    config.target_groups.push_back(group);
    ListenerConfig listener;
    listener.name = "127.0.0.1:8000";
    listener.bind = *SocketAddress::parse("127.0.0.1:8000");
    listener.target_group = "default";
    config.listeners.push_back(listener);
    return config;
}

}  // namespace

TEST_CASE("dns: one string is one name, a list is several in order, each with dns_refresh") {
    Config one = loaded(group_with("dns = \"app:8080\"\n"));
    CHECK(texts(one.target_groups[0]) == std::vector<std::string>{"app:8080"});
    CHECK(one.target_groups[0].dns[0].refresh == 5s);

    Config several = loaded(group_with(R"(dns = ["web:8080", "api.internal:80", "web:8081"]
dns_refresh = "1s"
)"));
    const TargetGroupConfig& group = several.target_groups[0];
    CHECK(texts(group) == std::vector<std::string>{"web:8080", "api.internal:80", "web:8081"});
    CHECK(group.dns[1].name == "api.internal");
    CHECK(group.dns[1].port == 80);
    for (const DnsDiscoveryConfig& dns : group.dns) CHECK(dns.refresh == 1s);
}

TEST_CASE("dns: names and static targets mix in one group") {
    Config config = loaded(R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"
dns = ["localhost:9002", "web:8080"]

[[target_group.target]]
address = "127.0.0.1:9001"

[[target_group.target]]
id = "pinned"
address = "127.0.0.1:9002"
)");
    const TargetGroupConfig& group = config.target_groups[0];
    CHECK(group.targets.size() == 2);
    CHECK(texts(group) == std::vector<std::string>{"localhost:9002", "web:8080"});
}

TEST_CASE("dns: a name twice is an error at the second, whatever its case") {
    CHECK(error_of(group_with("dns = [\"web:8080\", \"Web:8080\"]\n")) ==
          "t.toml:3:20: target_group[0].dns[1]: duplicate name \"Web:8080\" in this group (also "
          "dns[0] at line 3)");
    CHECK(error_of(group_with("dns = [\n  \"a:80\",\n  \"b:80\",\n  \"a:80\",\n]\n")) ==
          "t.toml:6:3: target_group[0].dns[2]: duplicate name \"a:80\" in this group (also "
          "dns[0] at line 4)");
    // Another port is another set of targets.
    CHECK(error_of(group_with("dns = [\"web:8080\", \"web:8081\"]\n")) == "<loaded>");
}

TEST_CASE("dns: each wrong element is reported at its own position") {
    const std::string expected = fmt::format("expected \"NAME:PORT\" such as \"{}\"", kExample);
    expect_errors({
        {group_with("dns = [\"a:80\", \"app\"]\n"),
         fmt::format("t.toml:3:16: target_group[0].dns[1]: {}, got \"app\"", expected)},
        {group_with("dns = [\"a:80\", 80]\n"),
         fmt::format("t.toml:3:16: target_group[0].dns[1]: {}, got integer 80", expected)},
        {group_with("dns = [\":80\"]\n"),
         fmt::format("t.toml:3:8: target_group[0].dns[0]: {}, got \":80\"", expected)},
    });
}

TEST_CASE("dns: neither a string nor a list of them, or an empty list") {
    const std::string empty =
        "t.toml:3:7: target_group[0].dns: an empty list names nothing to resolve; name one or "
        "remove the key";
    expect_errors({
        {group_with("dns = 80\n"),
         fmt::format("t.toml:3:7: target_group[0].dns: expected \"NAME:PORT\" such as \"{}\" or "
                     "an array of them, got integer 80",
                     kExample)},
        {group_with("dns = []\n"), empty},
        {group_with("dns = []\ndns_refresh = \"1s\"\n"), empty},
    });
}

TEST_CASE("dns: validate() checks names built in memory as the loader does") {
    CHECK(validate_error(in_memory({{"web", 8080}, {"localhost", 9001}})) == "<valid>");
    CHECK(validate_error(in_memory({{"web", 8080}, {"WEB", 8080}})) ==
          "<command line>: target_group[0].dns[1]: duplicate name \"WEB:8080\" in this group "
          "(also dns[0])");
    for (const DnsDiscoveryConfig& bad :
         {DnsDiscoveryConfig{"a b", 80}, DnsDiscoveryConfig{"web", 0}}) {
        const std::string text = bad.text();
        CAPTURE(text);
        CHECK(validate_error(in_memory({bad})) ==
              fmt::format("<command line>: target_group[0].dns: expected \"NAME:PORT\" such as "
                          "\"{}\", got \"{}\"",
                          kExample, text));
    }
    CHECK(validate_error(in_memory({{"web", 80, 10ms}})) ==
          "<command line>: target_group[0].dns_refresh: must be a duration from 100ms to 1h, got "
          "10ms");
}

TEST_CASE("parse_dns_name: what quick mode's --target HOST:PORT and the file both take") {
    auto web = parse_dns_name("web:8080");
    REQUIRE(web.has_value());
    CHECK(web->name == "web");
    CHECK(web->port == 8080);
    CHECK(web->text() == "web:8080");
    CHECK(web->refresh == 5s);
    CHECK(parse_dns_name("localhost:9001").has_value());
    CHECK(parse_dns_name("app-headless.default.svc.cluster.local:8080").has_value());
    for (std::string_view bad : {"web", "web:", ":80", "web:0", "web:65536", "a..b:80", "a b:80",
                                 "[::1]:80", "web:8080x"}) {
        CAPTURE(bad);
        CHECK_FALSE(parse_dns_name(bad).has_value());
    }
}
