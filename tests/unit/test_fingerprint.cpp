#include "stickyd/fingerprint.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <set>

using namespace stickyd;

namespace {

TargetConfig target(const char* id, const char* address, uint32_t weight = 1) {
    auto parsed = SocketAddress::parse(address);
    REQUIRE(parsed.has_value());
    return {id, *parsed, weight};
}

TargetGroupConfig group_of(Algorithm algorithm = Algorithm::ring) {
    TargetGroupConfig g;
    g.name = "web";
    g.algorithm = algorithm;
    g.targets = {target("a", "10.0.0.1:80"), target("b", "10.0.0.2:80", 2),
                 target("c", "10.0.0.3:80")};
    return g;
}

std::string fingerprint_of(const TargetGroupConfig& g) {
    return routing_fingerprint(routing_inputs(g));
}

}  // namespace

TEST_CASE("a fingerprint is 16 hex digits and the same for the same group") {
    const std::string f = fingerprint_of(group_of());
    CHECK(f.size() == 16);
    CHECK(f.find_first_not_of("0123456789abcdef") == std::string::npos);
    CHECK(fingerprint_of(group_of()) == f);
}

TEST_CASE("listing order does not change the fingerprint") {
    TargetGroupConfig g = group_of();
    const std::string f = fingerprint_of(g);
    std::reverse(g.targets.begin(), g.targets.end());
    CHECK(fingerprint_of(g) == f);
    std::rotate(g.targets.begin(), g.targets.begin() + 1, g.targets.end());
    CHECK(fingerprint_of(g) == f);
}

TEST_CASE("every input that decides the mapping changes the fingerprint") {
    const TargetGroupConfig base = group_of();
    std::set<std::string> seen{fingerprint_of(base)};
    auto changed = [&](auto edit) {
        TargetGroupConfig g = base;
        edit(g);
        return seen.insert(fingerprint_of(g)).second;
    };
    CHECK(changed([](TargetGroupConfig& g) { g.algorithm = Algorithm::maglev; }));
    CHECK(changed([](TargetGroupConfig& g) {
        g.algorithm = Algorithm::maglev;
        g.maglev_table_size = 65521;
    }));
    CHECK(changed([](TargetGroupConfig& g) { g.stickiness.prefix_v4 = 24; }));
    CHECK(changed([](TargetGroupConfig& g) { g.stickiness.prefix_v6 = 64; }));
    CHECK(changed([](TargetGroupConfig& g) { g.targets[0].id = "a2"; }));
    CHECK(changed(
        [](TargetGroupConfig& g) { g.targets[0].address = *SocketAddress::parse("10.0.0.1:81"); }));
    CHECK(changed([](TargetGroupConfig& g) { g.targets[1].weight = 1; }));
    CHECK(changed([](TargetGroupConfig& g) { g.targets.pop_back(); }));
    CHECK(changed([](TargetGroupConfig& g) { g.targets.push_back(target("d", "10.0.0.4:80")); }));
}

TEST_CASE("the ring's table size is 0 and plays no part") {
    TargetGroupConfig g = group_of();
    const std::string f = fingerprint_of(g);
    g.maglev_table_size = 65521;
    CHECK(fingerprint_of(g) == f);
}

TEST_CASE("fields cannot run into each other") {
    TargetGroupConfig one = group_of(), two = group_of();
    one.targets = {target("ab", "10.0.0.1:80")};
    two.targets = {target("a", "10.0.0.1:80")};
    CHECK(fingerprint_of(one) != fingerprint_of(two));
}

TEST_CASE("a live table and its configuration have the same fingerprint") {
    for (Algorithm algorithm : {Algorithm::ring, Algorithm::maglev}) {
        const TargetGroupConfig g = group_of(algorithm);
        const auto table = build_routing_table(g);
        CHECK(routing_fingerprint(*table) == fingerprint_of(g));
        const RoutingInputs inputs = routing_inputs(*table);
        CHECK(inputs.table_size == (algorithm == Algorithm::maglev ? g.maglev_table_size : 0));
    }
}

TEST_CASE("health stays out of the routing fingerprint and in the usable one") {
    const auto table = build_routing_table(group_of());
    RoutingTable down = *table;
    down.usable[1] = 0;
    CHECK(routing_fingerprint(down) == routing_fingerprint(*table));
    CHECK(usable_fingerprint(down) != usable_fingerprint(*table));
    CHECK(usable_fingerprint(*table) == usable_fingerprint(RoutingTable(*table)));
}
