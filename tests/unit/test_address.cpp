#include <arpa/inet.h>
#include <doctest/doctest.h>

#include <cstring>
#include <string>

#include "stickyd/address.hpp"

using namespace stickyd;

namespace {

sockaddr_in v4_sockaddr(const char* ip, uint16_t port) {
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    REQUIRE(inet_pton(AF_INET, ip, &sin.sin_addr) == 1);
    return sin;
}

sockaddr_in6 v6_sockaddr(const char* ip, uint16_t port) {
    sockaddr_in6 sin6{};
    sin6.sin6_family = AF_INET6;
    sin6.sin6_port = htons(port);
    REQUIRE(inet_pton(AF_INET6, ip, &sin6.sin6_addr) == 1);
    return sin6;
}

IpKey key(const char* ip) {
    auto k = parse_ip(ip);
    REQUIRE(k.has_value());
    return *k;
}

}  // namespace

TEST_CASE("SocketAddress::parse accepts IPv4 and bracketed IPv6 with a port") {
    struct Good {
        const char* text;
        int family;
        uint16_t port;
        const char* canonical;
    };
    const Good cases[] = {
        {"1.2.3.4:80", AF_INET, 80, "1.2.3.4:80"},
        {"0.0.0.0:1", AF_INET, 1, "0.0.0.0:1"},
        {"255.255.255.255:65535", AF_INET, 65535, "255.255.255.255:65535"},
        {"127.0.0.1:8080", AF_INET, 8080, "127.0.0.1:8080"},
        {"[::1]:80", AF_INET6, 80, "[::1]:80"},
        {"[::]:443", AF_INET6, 443, "[::]:443"},
        {"[2001:DB8:0:0::1]:9000", AF_INET6, 9000, "[2001:db8::1]:9000"},
        {"[::ffff:1.2.3.4]:80", AF_INET6, 80, "[::ffff:1.2.3.4]:80"},
    };
    for (const Good& c : cases) {
        CAPTURE(c.text);
        auto a = SocketAddress::parse(c.text);
        REQUIRE(a.has_value());
        CHECK(a->family() == c.family);
        CHECK(a->port() == c.port);
        CHECK(a->len() == (c.family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6)));
        CHECK(a->to_string() == c.canonical);
        auto again = SocketAddress::parse(a->to_string());
        REQUIRE(again.has_value());
        CHECK(*again == *a);
    }
}

TEST_CASE("SocketAddress::parse rejects everything else") {
    const char* bad[] = {
        "",
        "junk",
        "1.2.3.4",           // no port
        "1.2.3.4:",          // empty port
        "1.2.3.4:0",         // port 0
        "1.2.3.4:65536",     // port too large
        "1.2.3.4:99999999",  // port far too large
        "1.2.3.4:080",       // leading zero
        "1.2.3.4:+80",       // sign
        "1.2.3.4:-1",
        "1.2.3.4:80x",  // trailing garbage
        "1.2.3.4:80 ",
        " 1.2.3.4:80",
        "1.2.3.4 :80",
        "1.2.3:80",  // short IPv4
        "1.2.3.4.5:80",
        "256.1.1.1:80",
        "01.2.3.4:80",   // octal-looking octet
        "localhost:80",  // no DNS names
        "example.com:443",
        "::1:80",  // IPv6 must be bracketed
        "::1",
        "[::1]",  // no port
        "[::1]:",
        "[::1]80",
        "[::1]:0",
        "[::1]:65536",
        "[::1]:80]",
        "[::1:80",
        "[1.2.3.4]:80",  // brackets are for IPv6
        "[]:80",
        "[fe80::1%eth0]:80",  // zone ids are not supported
        "[::g]:80",
        ":80",
        "1.2.3.4:80:80",
    };
    for (const char* text : bad) {
        CAPTURE(text);
        CHECK_FALSE(SocketAddress::parse(text).has_value());
    }
}

TEST_CASE("an address with a NUL in it is rejected, not cut short at the NUL") {
    // Regression: the text went to inet_pton as a C string, so "1.2.3.4\0junk" was
    // read as 1.2.3.4 (a PROXY v1 header, a config string with "\u0000", a /lookup
    // query with %00 all carry NULs).
    using namespace std::string_view_literals;
    for (auto text : {"1.2.3.4\0:80"sv, "1.2.3.4\0junk:80"sv, "[::1\0]:80"sv,
                      "[2001:db8::1\0%eth0]:80"sv, "1.2.3.4:80\0"sv}) {
        CAPTURE(text);
        CHECK_FALSE(SocketAddress::parse(text).has_value());
    }
    for (auto text : {"1.2.3.4\0"sv, "1.2.3.4\0junk"sv, "::1\0"sv, "\0"sv, "::ffff:1.2.3.4\0"sv}) {
        CAPTURE(text);
        CHECK_FALSE(parse_ip(text).has_value());
        in6_addr out{};
        CHECK_FALSE(parse_ip_bytes(AF_INET, text, &out));
        CHECK_FALSE(parse_ip_bytes(AF_INET6, text, &out));
    }
}

TEST_CASE("SocketAddress equality compares family, address and port") {
    auto a = *SocketAddress::parse("10.0.0.1:80");
    CHECK(a == *SocketAddress::parse("10.0.0.1:80"));
    CHECK_FALSE(a == *SocketAddress::parse("10.0.0.1:81"));
    CHECK_FALSE(a == *SocketAddress::parse("10.0.0.2:80"));
    // Same IPv4 address, different family: not the same socket address.
    CHECK_FALSE(a == *SocketAddress::parse("[::ffff:10.0.0.1]:80"));
    CHECK(*SocketAddress::parse("[::1]:80") == *SocketAddress::parse("[0:0::1]:80"));
    CHECK(SocketAddress{} == SocketAddress{});
    CHECK_FALSE(SocketAddress{} == a);
}

TEST_CASE("SocketAddress::from_sockaddr copies the address") {
    auto sin = v4_sockaddr("192.0.2.7", 4242);
    auto a = SocketAddress::from_sockaddr(reinterpret_cast<sockaddr*>(&sin), sizeof sin);
    CHECK(a.to_string() == "192.0.2.7:4242");
    CHECK(a == *SocketAddress::parse("192.0.2.7:4242"));

    auto sin6 = v6_sockaddr("2001:db8::5", 53);
    auto b = SocketAddress::from_sockaddr(reinterpret_cast<sockaddr*>(&sin6), sizeof sin6);
    CHECK(b.to_string() == "[2001:db8::5]:53");
    CHECK(b.len() == sizeof sin6);
    CHECK(std::memcmp(b.sa(), &sin6, sizeof sin6) == 0);
}

TEST_CASE("ip_key_of normalises IPv4, IPv6 and IPv4-mapped IPv6") {
    auto sin = v4_sockaddr("10.1.2.3", 1000);
    IpKey v4 = ip_key_of(reinterpret_cast<sockaddr*>(&sin));
    CHECK(v4.size == 4);
    CHECK(to_string(v4) == "10.1.2.3");
    CHECK(v4.bytes[0] == 10);
    CHECK(v4.bytes[3] == 3);

    auto mapped_sa = v6_sockaddr("::ffff:10.1.2.3", 2000);
    IpKey mapped = ip_key_of(reinterpret_cast<sockaddr*>(&mapped_sa));
    CHECK(mapped == v4);  // the port never matters

    auto sin6 = v6_sockaddr("2001:db8::1", 1000);
    IpKey v6 = ip_key_of(reinterpret_cast<sockaddr*>(&sin6));
    CHECK(v6.size == 16);
    CHECK(to_string(v6) == "2001:db8::1");

    // IPv4-compatible (deprecated ::a.b.c.d) and NAT64 addresses stay IPv6.
    CHECK(key("::10.1.2.3").size == 16);
    CHECK(key("64:ff9b::10.1.2.3").size == 16);

    sockaddr unknown{};
    unknown.sa_family = AF_UNIX;
    CHECK(ip_key_of(&unknown).size == 0);
    CHECK(ip_key_of(nullptr).size == 0);
}

TEST_CASE("parse_ip takes bare addresses only") {
    CHECK(key("1.2.3.4") == key("::ffff:1.2.3.4"));
    CHECK(key("::1").size == 16);
    CHECK(to_string(key("::FFFF:1.2.3.4")) == "1.2.3.4");
    for (const char* bad : {"", "1.2.3.4:80", "[::1]", "1.2.3", "host", "::1 ", "1.2.3.4/24",
                            "fe80::1%eth0", "fe80::1%1", "1.2.3.4%00"}) {
        CAPTURE(bad);
        CHECK_FALSE(parse_ip(bad).has_value());
    }
}

TEST_CASE("apply_prefix keeps the leading bits and zeroes the rest") {
    struct Case {
        const char* ip;
        unsigned v4;
        unsigned v6;
        const char* expected;
    };
    const Case cases[] = {
        {"10.1.2.3", 24, 128, "10.1.2.0"},
        {"10.1.2.3", 32, 0, "10.1.2.3"},
        {"10.1.2.3", 0, 128, "0.0.0.0"},
        {"10.1.255.255", 23, 128, "10.1.254.0"},
        {"10.1.2.3", 9, 128, "10.0.0.0"},
        {"203.0.113.77", 31, 128, "203.0.113.76"},
        {"10.1.2.3", 99, 128, "10.1.2.3"},  // over-long prefixes mean "all"
        {"2001:db8:1:2:3:4:5:6", 0, 64, "2001:db8:1:2::"},
        {"2001:db8:1:2:3:4:5:6", 0, 128, "2001:db8:1:2:3:4:5:6"},
        {"2001:db8:1:2:3:4:5:6", 32, 0, "::"},
        {"2001:db8:1:2:ffff:4:5:6", 0, 65, "2001:db8:1:2:8000::"},
        {"2001:dbff:1:2:3:4:5:6", 0, 23, "2001:da00::"},
        {"2001:db8:1:2:3:4:5:6", 0, 200, "2001:db8:1:2:3:4:5:6"},
        {"::ffff:10.1.2.3", 24, 128, "10.1.2.0"},  // normalised first: the v4 prefix applies
    };
    for (const Case& c : cases) {
        CAPTURE(c.ip);
        CAPTURE(c.v4);
        CAPTURE(c.v6);
        IpKey masked = apply_prefix(key(c.ip), c.v4, c.v6);
        CHECK(to_string(masked) == c.expected);
        CHECK(masked == key(c.expected));  // unused bytes stay zero, so == works
    }
}

TEST_CASE("to_string of an empty key is empty") {
    CHECK(to_string(IpKey{}).empty());
}

TEST_CASE("ip_version: what an address speaks on the wire") {
    CHECK(ip_version(*SocketAddress::parse("10.0.0.1:80")) == 4);
    CHECK(ip_version(*SocketAddress::parse("[::ffff:10.0.0.1]:80")) == 4);
    CHECK(ip_version(*SocketAddress::parse("[2001:db8::1]:80")) == 6);
    CHECK(ip_version(SocketAddress{}) == 0);
}

TEST_CASE("transparent_source: the client's IP in the target socket's family, port 0") {
    auto source = [](const char* client, const char* target) -> std::string {
        auto s = transparent_source(*SocketAddress::parse(client), *SocketAddress::parse(target));
        return s ? s->to_string() : "none";
    };
    CHECK(source("127.0.0.7:40000", "127.0.0.1:9001") == "127.0.0.7:0");
    CHECK(source("[2001:db8::7]:40000", "[2001:db8::1]:9001") == "[2001:db8::7]:0");
    // A dual-stack listener's IPv4 client, toward an IPv4 target: unmapped.
    CHECK(source("[::ffff:192.0.2.7]:40000", "10.0.0.1:9001") == "192.0.2.7:0");
    // An IPv4-mapped target is IPv4 on the wire; its socket is IPv6.
    CHECK(source("192.0.2.7:40000", "[::ffff:10.0.0.1]:9001") == "[::ffff:192.0.2.7]:0");
    CHECK(source("[::ffff:192.0.2.7]:1", "[::ffff:10.0.0.1]:9001") == "[::ffff:192.0.2.7]:0");
    // One connection cannot carry both families.
    CHECK(source("192.0.2.7:40000", "[2001:db8::1]:9001") == "none");
    CHECK(source("[::ffff:192.0.2.7]:40000", "[2001:db8::1]:9001") == "none");
    CHECK(source("[2001:db8::7]:40000", "10.0.0.1:9001") == "none");
    CHECK(source("[2001:db8::7]:40000", "[::ffff:10.0.0.1]:9001") == "none");
    CHECK_FALSE(transparent_source(SocketAddress{}, *SocketAddress::parse("10.0.0.1:1")));
    CHECK_FALSE(transparent_source(*SocketAddress::parse("10.0.0.1:1"), SocketAddress{}));

    SUBCASE("a link-local client keeps its interface") {
        auto sin6 = v6_sockaddr("fe80::7", 40000);
        sin6.sin6_scope_id = 3;
        auto client = SocketAddress::from_sockaddr(reinterpret_cast<sockaddr*>(&sin6), sizeof sin6);
        auto s = transparent_source(client, *SocketAddress::parse("[fe80::1]:9001"));
        REQUIRE(s);
        CHECK(reinterpret_cast<const sockaddr_in6*>(s->sa())->sin6_scope_id == 3);
        CHECK(s->port() == 0);
    }
}
