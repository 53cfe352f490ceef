// CIDR prefixes as allow and deny lists are written. Every rejection is checked as
// the exact phrase a user sees after the flag or the quoted value.
#include <doctest/doctest.h>

#include <random>
#include <string>

#include "stickyd/ip_prefix.hpp"

using namespace stickyd;

namespace {

IpPrefix prefix(std::string_view text) {
    auto parsed = parse_prefix(text);
    if (auto* problem = std::get_if<std::string>(&parsed)) {
        const std::string message = std::string(text) + ": " + *problem;
        FAIL(message);
    }
    return std::get<IpPrefix>(parsed);
}

std::string problem(std::string_view text) {
    auto parsed = parse_prefix(text);
    if (auto* p = std::get_if<std::string>(&parsed)) return *p;
    return "<parsed as " + to_string(std::get<IpPrefix>(parsed)) + ">";
}

IpKey ip(std::string_view text) {
    auto key = parse_ip(text);
    REQUIRE(key.has_value());
    return *key;
}

}  // namespace

TEST_CASE("prefixes parse to their canonical form") {
    struct Case {
        const char* text;
        const char* canonical;
    };
    const Case cases[] = {
        {"10.0.0.0/8", "10.0.0.0/8"},
        {"0.0.0.0/0", "0.0.0.0/0"},
        {"192.0.2.7", "192.0.2.7/32"},  // bare: the host
        {"192.0.2.7/32", "192.0.2.7/32"},
        {"255.255.255.255/32", "255.255.255.255/32"},
        {"172.16.0.0/12", "172.16.0.0/12"},
        {"2001:db8::/32", "2001:db8::/32"},
        {"2001:DB8::/32", "2001:db8::/32"},
        {"::/0", "::/0"},
        {"::1", "::1/128"},
        {"::1/128", "::1/128"},
        {"fe80::/10", "fe80::/10"},
        {"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
         "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"},
        // v4-mapped prefixes of /96 and longer are IPv4 prefixes, as clients are.
        {"::ffff:10.0.0.0/104", "10.0.0.0/8"},
        {"::ffff:0:0/96", "0.0.0.0/0"},
        {"::ffff:192.0.2.7", "192.0.2.7/32"},
        // Shorter ones reach beyond the mapped range and stay IPv6.
        {"::fffe:0:0/95", "::fffe:0:0/95"},
    };
    for (const Case& c : cases) {
        CAPTURE(c.text);
        const IpPrefix p = prefix(c.text);
        CHECK(to_string(p) == c.canonical);
        CHECK(prefix(to_string(p)) == p);  // round trip
    }
}

TEST_CASE("bad prefixes are refused with the reason and, for host bits, the fix") {
    struct Case {
        const char* text;
        const char* problem;
    };
    const Case cases[] = {
        {"10.0.0.1/8", "host bits are set; did you mean 10.0.0.0/8?"},
        {"192.168.1.1/24", "host bits are set; did you mean 192.168.1.0/24?"},
        {"1.2.3.4/0", "host bits are set; did you mean 0.0.0.0/0?"},
        {"2001:db8::1/32", "host bits are set; did you mean 2001:db8::/32?"},
        {"::ffff:10.0.0.1/104", "host bits are set; did you mean 10.0.0.0/8?"},
        {"::ffff:0:0/95", "host bits are set; did you mean ::fffe:0:0/95?"},
        {"10.0.0.0/33", "prefix length 33 is out of range 0-32 for an IPv4 address"},
        {"10.0.0.1/33", "prefix length 33 is out of range 0-32 for an IPv4 address"},
        {"2001:db8::/129", "prefix length 129 is out of range 0-128 for an IPv6 address"},
        {"10.0.0.0/", "missing prefix length after '/'"},
        {"10.0.0.0/08", "prefix length \"08\" is not a number from 0 to 32"},
        {"10.0.0.0/+8", "prefix length \"+8\" is not a number from 0 to 32"},
        {"10.0.0.0/8/9", "prefix length \"8/9\" is not a number from 0 to 32"},
        {"10.0.0.0/ 8", "prefix length \" 8\" is not a number from 0 to 32"},
        {"10.0.0.0/1000", "prefix length \"1000\" is not a number from 0 to 32"},
        {"::/x", "prefix length \"x\" is not a number from 0 to 128"},
        {"",
         "empty; expected a CIDR prefix such as 10.0.0.0/8 or 2001:db8::/32, or a bare "
         "address"},
        {"10.0.0",
         "not an IPv4 or IPv6 address; expected a CIDR prefix such as 10.0.0.0/8 "
         "or 2001:db8::/32, or a bare address"},
        {"example.com",
         "not an IPv4 or IPv6 address; expected a CIDR prefix such as "
         "10.0.0.0/8 or 2001:db8::/32, or a bare address"},
        {"10.0.0.256/32",
         "\"10.0.0.256\" is not an IPv4 or IPv6 address; expected a CIDR "
         "prefix such as 10.0.0.0/8 or 2001:db8::/32, or a bare address"},
        {"/8",
         "\"\" is not an IPv4 or IPv6 address; expected a CIDR prefix such as "
         "10.0.0.0/8 or 2001:db8::/32, or a bare address"},
        {"fe80::1%eth0/64",
         "\"fe80::1%eth0\" is not an IPv4 or IPv6 address; expected a "
         "CIDR prefix such as 10.0.0.0/8 or 2001:db8::/32, or a bare "
         "address"},
        {" 10.0.0.0/8",
         "\" 10.0.0.0\" is not an IPv4 or IPv6 address; expected a CIDR "
         "prefix such as 10.0.0.0/8 or 2001:db8::/32, or a bare address"},
    };
    for (const Case& c : cases) {
        CAPTURE(c.text);
        CHECK(problem(c.text) == c.problem);
    }
}

TEST_CASE("contains: inside, at both edges, and just outside") {
    const IpPrefix p = prefix("10.1.0.0/16");
    CHECK(p.contains(ip("10.1.0.0")));
    CHECK(p.contains(ip("10.1.255.255")));
    CHECK(p.contains(ip("10.1.77.3")));
    CHECK_FALSE(p.contains(ip("10.0.255.255")));
    CHECK_FALSE(p.contains(ip("10.2.0.0")));
    // A v4-mapped client is an IPv4 client (parse_ip normalises it, as ip_key_of does).
    CHECK(p.contains(ip("::ffff:10.1.2.3")));

    CHECK(prefix("0.0.0.0/0").contains(ip("255.255.255.255")));
    CHECK_FALSE(prefix("0.0.0.0/0").contains(ip("::1")));
    CHECK(prefix("::/0").contains(ip("::1")));
    CHECK_FALSE(prefix("::/0").contains(ip("10.0.0.1")));
    CHECK(prefix("::1").contains(ip("::1")));
    CHECK_FALSE(prefix("::1").contains(ip("::2")));
    CHECK(prefix("2001:db8::/32").contains(ip("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")));
    CHECK_FALSE(prefix("2001:db8::/32").contains(ip("2001:db9::")));
}

TEST_CASE("every length of a random address parses back to itself once masked") {
    std::mt19937_64 rng(7);
    for (int round = 0; round < 200; ++round) {
        for (const uint8_t size : {uint8_t{4}, uint8_t{16}}) {
            IpKey address;
            address.size = size;
            for (uint8_t i = 0; i < size; ++i) address.bytes[i] = static_cast<uint8_t>(rng());
            if (size == 16 && address.bytes[0] == 0) address.bytes[0] = 1;  // not v4-mapped
            for (unsigned length = 0; length <= size * 8u; ++length) {
                const IpKey network = apply_prefix(address, length, length);
                const std::string text = to_string(network) + "/" + std::to_string(length);
                CAPTURE(text);
                const IpPrefix p = prefix(text);
                CHECK(unsigned{p.length} == length);
                CHECK(p.address == network);
                CHECK(p.contains(address));
                if (network != address) {
                    CHECK(problem(to_string(address) + "/" + std::to_string(length)) ==
                          "host bits are set; did you mean " + text + "?");
                }
            }
        }
    }
}
