// Who may connect and whose address targets see: preserve_client_ip and a listener's
// allow and deny lists.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <string>
#include <vector>

#include "stickyd/config.hpp"
#include "tests/support/config_fixtures.hpp"

using namespace stickyd;
using namespace stickyd::test;
using namespace std::chrono_literals;

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
    expect_errors({
        {listener_with("allow = [\"10.0.0.0/8\", \"10.0.0.1/8\"]\n"),
         "t.toml:4:24: listener[0].allow[1]: \"10.0.0.1/8\": host bits are set; did you mean "
         "10.0.0.0/8?"},
        {listener_with("deny = [\"10.0.0.1/33\"]\n"),
         "t.toml:4:9: listener[0].deny[0]: \"10.0.0.1/33\": prefix length 33 is out of range "
         "0-32 for an IPv4 address"},
        {listener_with("allow = [\"2001:db8::/129\"]\n"),
         "t.toml:4:10: listener[0].allow[0]: \"2001:db8::/129\": prefix length 129 is out of "
         "range 0-128 for an IPv6 address"},
        {listener_with("allow = [\"office.example.com\"]\n"),
         "t.toml:4:10: listener[0].allow[0]: \"office.example.com\": not an IPv4 or IPv6 "
         "address; expected a CIDR prefix such as 10.0.0.0/8 or 2001:db8::/32, or a bare "
         "address"},
        {listener_with("allow = [\"10.0.0.0/8\",\n  \"10.0.0.0/\"]\n"),
         "t.toml:5:3: listener[0].allow[1]: \"10.0.0.0/\": missing prefix length after '/'"},
        {listener_with("allow = [10]\n"),
         "t.toml:4:10: listener[0].allow[0]: expected a string such as \"10.0.0.0/8\", got "
         "integer 10"},
        {listener_with("allow = \"10.0.0.0/8\"\n"),
         "t.toml:4:9: listener[0].allow: expected an array of CIDR prefixes such as "
         "[\"10.0.0.0/8\", \"2001:db8::/32\"], got string \"10.0.0.0/8\""},
        {listener_with("allow = []\n"),
         "t.toml:4:9: listener[0].allow: an empty list would refuse every client; remove the "
         "key to allow every client, or list prefixes such as \"10.0.0.0/8\""},
        {listener_with("alow = [\"10.0.0.0/8\"]\n"),
         "t.toml:4:1: listener[0].alow: unknown key (did you mean \"allow\"?)"},
    });
}
