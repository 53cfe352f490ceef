#include <arpa/inet.h>
#include <doctest/doctest.h>

#include <stdexcept>
#include <string>

#include "stickyd/hash.hpp"
#include "stickyd/routing.hpp"

using namespace stickyd;

namespace {

TargetConfig target(const char* address, const char* id = "", uint32_t weight = 1) {
    auto parsed = SocketAddress::parse(address);
    REQUIRE(parsed.has_value());
    return {id, *parsed, weight};
}

TargetGroupConfig group_of(Algorithm algorithm) {
    TargetGroupConfig g;
    g.name = "web";
    g.algorithm = algorithm;
    g.connect_timeout = Duration{750};
    g.connect_retries = 3;
    g.targets = {target("10.0.0.3:80"), target("10.0.0.1:80", "zeta"), target("10.0.0.2:80"),
                 target("[2001:db8::9]:8080", "alpha", 2)};
    return g;
}

sockaddr_in client_v4(const char* ip, uint16_t port = 40000) {
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    REQUIRE(inet_pton(AF_INET, ip, &sin.sin_addr) == 1);
    return sin;
}

sockaddr_in6 client_v6(const char* ip, uint16_t port = 40000) {
    sockaddr_in6 sin6{};
    sin6.sin6_family = AF_INET6;
    sin6.sin6_port = htons(port);
    REQUIRE(inet_pton(AF_INET6, ip, &sin6.sin6_addr) == 1);
    return sin6;
}

template <typename T>
const sockaddr* sa(const T& s) {
    return reinterpret_cast<const sockaddr*>(&s);
}

}  // namespace

TEST_CASE("routing: targets line up with the balancer's members") {
    for (Algorithm algorithm : {Algorithm::ring, Algorithm::maglev}) {
        auto table = build_routing_table(group_of(algorithm));
        CHECK(table->group == "web");
        CHECK(table->balancer->algorithm() == (algorithm == Algorithm::ring ? "ring" : "maglev"));
        const auto& members = table->balancer->members();
        REQUIRE(table->targets.size() == 4);
        REQUIRE(members.size() == 4);
        // Unnamed targets are known by their address; everything sorts by id.
        const char* ids[] = {"10.0.0.2:80", "10.0.0.3:80", "alpha", "zeta"};
        const char* addresses[] = {"10.0.0.2:80", "10.0.0.3:80", "[2001:db8::9]:8080",
                                   "10.0.0.1:80"};
        for (size_t i = 0; i < 4; ++i) {
            CHECK(members[i].id == ids[i]);
            CHECK(table->targets[i].id == ids[i]);
            CHECK(table->targets[i].address.to_string() == addresses[i]);
        }
        CHECK(members[2].weight == 2);
        CHECK(table->usable == std::vector<uint8_t>{1, 1, 1, 1});
        CHECK(table->connect_timeout == Duration{750});
        CHECK(table->connect_retries == 3);
        CHECK(table->prefix_v4 == 32);
        CHECK(table->prefix_v6 == 128);
    }
}

TEST_CASE("routing: target order in the config does not matter") {
    auto g = group_of(Algorithm::ring);
    auto a = build_routing_table(g);
    std::swap(g.targets[0], g.targets[3]);
    std::swap(g.targets[1], g.targets[2]);
    auto b = build_routing_table(g);
    for (uint32_t i = 0; i < 10'000; ++i) {
        const uint64_t h = i * 0x9E3779B97F4A7C15ull;
        CHECK(a->targets[a->pick(h, 0)].id == b->targets[b->pick(h, 0)].id);
    }
}

TEST_CASE("routing: key_hash normalises, masks, then hashes the client IP") {
    auto g = group_of(Algorithm::ring);
    auto exact = build_routing_table(g);
    const auto v4 = client_v4("10.1.2.3");
    CHECK(exact->key_hash(sa(v4)) == hash_ip(*parse_ip("10.1.2.3")));
    CHECK(exact->key_hash(sa(client_v4("10.1.2.3", 1))) ==
          exact->key_hash(sa(v4)));  // port ignored
    CHECK(exact->key_hash(sa(client_v6("::ffff:10.1.2.3"))) == exact->key_hash(sa(v4)));
    CHECK(exact->key_hash(sa(client_v4("10.1.2.200"))) != exact->key_hash(sa(v4)));

    g.stickiness.prefix_v4 = 24;
    g.stickiness.prefix_v6 = 64;
    auto masked = build_routing_table(g);
    CHECK(masked->prefix_v4 == 24);
    CHECK(masked->prefix_v6 == 64);
    CHECK(masked->key_hash(sa(v4)) == hash_ip(*parse_ip("10.1.2.0")));
    CHECK(masked->key_hash(sa(client_v4("10.1.2.200"))) == masked->key_hash(sa(v4)));
    CHECK(masked->key_hash(sa(client_v6("::ffff:10.1.2.77"))) == masked->key_hash(sa(v4)));
    CHECK(masked->key_hash(sa(client_v4("10.1.3.3"))) != masked->key_hash(sa(v4)));
    CHECK(masked->key_hash(sa(client_v6("2001:db8:1:2::1"))) ==
          masked->key_hash(sa(client_v6("2001:db8:1:2:ffff::9"))));
    CHECK(masked->key_hash(sa(client_v6("2001:db8:1:2::1"))) ==
          hash_ip(*parse_ip("2001:db8:1:2::")));
}

TEST_CASE("routing: a /24 stickiness prefix sends a whole subnet to one target") {
    for (Algorithm algorithm : {Algorithm::ring, Algorithm::maglev}) {
        auto g = group_of(algorithm);
        g.stickiness.prefix_v4 = 24;
        auto table = build_routing_table(g);
        const uint32_t first = table->pick(table->key_hash(sa(client_v4("10.1.2.3"))), 0);
        for (int last = 0; last < 256; ++last) {
            const std::string ip = "10.1.2." + std::to_string(last);
            CHECK(table->pick(table->key_hash(sa(client_v4(ip.c_str()))), 0) == first);
            CHECK(table->pick(table->key_hash(sa(client_v6(("::ffff:" + ip).c_str()))), 0) ==
                  first);
        }
    }
}

TEST_CASE("routing: IPv4-mapped clients pick what IPv4 clients pick") {
    auto table = build_routing_table(group_of(Algorithm::ring));
    for (int i = 0; i < 1000; ++i) {
        const std::string ip = "192.0." + std::to_string(i / 256) + "." + std::to_string(i % 256);
        const uint64_t a = table->key_hash(sa(client_v4(ip.c_str())));
        const uint64_t b = table->key_hash(sa(client_v6(("::ffff:" + ip).c_str())));
        for (unsigned attempt = 0; attempt < 3; ++attempt)
            CHECK(table->pick(a, attempt) == table->pick(b, attempt));
    }
}

TEST_CASE("routing: pick honours the usable view") {
    auto built = build_routing_table(group_of(Algorithm::ring));
    RoutingTable table = *built;
    table.usable[1] = 0;
    for (uint32_t i = 0; i < 10'000; ++i) {
        const uint64_t h = i * 0xC2B2AE3D27D4EB4Full;
        const uint32_t picked = table.pick(h, 0);
        CHECK(picked != 1);
        if (built->pick(h, 0) != 1) CHECK(picked == built->pick(h, 0));
        CHECK(table.pick(h, 1) != picked);
    }
    table.usable.assign(4, 0);  // nothing usable: fail open to the owner
    for (uint32_t i = 0; i < 1000; ++i) CHECK(table.pick(i, 0) == built->pick(i, 0));
}

TEST_CASE("routing: empty groups and bad groups") {
    TargetGroupConfig empty;
    empty.name = "nothing";
    auto table = build_routing_table(empty);
    CHECK(table->targets.empty());
    CHECK(table->pick(12345, 0) == kNoMember);

    RoutingTable unset;
    CHECK(unset.pick(1, 0) == kNoMember);

    auto duplicate = group_of(Algorithm::ring);
    duplicate.targets.push_back(target("10.0.0.9:80", "zeta"));
    CHECK_THROWS_AS(build_routing_table(duplicate), std::invalid_argument);

    // An unnamed target and a named one with the same address string collide too.
    auto same = group_of(Algorithm::ring);
    same.targets.push_back(target("10.0.0.7:80", "10.0.0.2:80"));
    CHECK_THROWS_AS(build_routing_table(same), std::invalid_argument);

    auto bad_size = group_of(Algorithm::maglev);
    bad_size.maglev_table_size = 65536;
    CHECK_THROWS_AS(build_routing_table(bad_size), std::invalid_argument);
}
