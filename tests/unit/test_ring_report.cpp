#include "stickyd/ring_report.hpp"

#include <arpa/inet.h>
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

#include "tests/support/balancer_fixtures.hpp"

using namespace stickyd;

namespace {

TargetConfig target(const char* id, const char* address, uint32_t weight = 1) {
    auto parsed = SocketAddress::parse(address);
    REQUIRE(parsed.has_value());
    return {id, *parsed, weight};
}

TargetGroupConfig group_of(Algorithm algorithm) {
    TargetGroupConfig g;
    g.name = "web";
    g.algorithm = algorithm;
    g.targets = {target("a", "10.0.0.1:80"), target("b", "10.0.0.2:80", 2),
                 target("c", "10.0.0.3:80"), target("d", "10.0.0.4:80")};
    return g;
}

double sum(const std::vector<double>& v) {
    return std::accumulate(v.begin(), v.end(), 0.0);
}

size_t index_of(const Movement& m, const std::string& id) {
    const auto it = std::find(m.ids.begin(), m.ids.end(), id);
    REQUIRE(it != m.ids.end());
    return static_cast<size_t>(it - m.ids.begin());
}

// For sampled hashes, the simulated tables must agree with a direct comparison:
// every sampled key that changes target does so along an edge the report lists.
void check_against_samples(const TargetGroupConfig& before_group,
                           const TargetGroupConfig& after_group, const Movement& m,
                           const std::vector<std::string>& down = {}) {
    const auto before = build_routing_table(before_group);
    auto after = std::make_shared<RoutingTable>(*build_routing_table(after_group));
    for (size_t i = 0; i < after->targets.size(); ++i) {
        if (std::find(down.begin(), down.end(), after->targets[i].id) != down.end()) {
            after->usable[i] = 0;
        }
    }
    size_t moved = 0;
    const auto hashes = test::client_hashes(20000);
    for (uint64_t h : hashes) {
        const std::string& from = before->targets[before->balancer->owner(h)].id;
        const std::string& to = after->targets[after->pick(h, 0)].id;
        if (from == to) continue;
        ++moved;
        CHECK(m.moves.count({static_cast<uint32_t>(index_of(m, from)),
                             static_cast<uint32_t>(index_of(m, to))}) == 1);
    }
    // 20000 samples: the sampled fraction is within 2% (absolute) of the exact one.
    CHECK(std::abs(static_cast<double>(moved) / hashes.size() - m.moved) < 0.02);
}

}  // namespace

TEST_CASE("summarize_shares reports min, max, mean and max/mean") {
    const ShareSummary s = summarize_shares({0.2, 0.3, 0.5});
    CHECK(s.min == doctest::Approx(0.2));
    CHECK(s.max == doctest::Approx(0.5));
    CHECK(s.mean == doctest::Approx(1.0 / 3));
    CHECK(s.max_over_mean == doctest::Approx(1.5));
    CHECK(summarize_shares({}).max == 0);
}

TEST_CASE("summarize_shares measures max/mean against weight-proportional shares") {
    // Weights 1 and 3 ask for 25% and 75%: 30% and 70% put the first target 1.2x
    // above its share, although the plain max/mean (0.7 / 0.5) would say 1.4.
    const ShareSummary s = summarize_shares({0.3, 0.7}, {1, 3});
    CHECK(s.max == doctest::Approx(0.7));
    CHECK(s.mean == doctest::Approx(0.5));
    CHECK(s.max_over_mean == doctest::Approx(1.2));
    // Equal weights: the same as max / mean.
    CHECK(summarize_shares({0.2, 0.3, 0.5}, {2, 2, 2}).max_over_mean == doctest::Approx(1.5));
}

TEST_CASE("choose_group defaults to the only group and names the choices otherwise") {
    Config config;
    config.target_groups.push_back(group_of(Algorithm::ring));
    CHECK(choose_group(config, "").group == &config.target_groups[0]);
    CHECK(choose_group(config, "web").group == &config.target_groups[0]);

    const GroupChoice unknown = choose_group(config, "api");
    CHECK(unknown.group == nullptr);
    CHECK(unknown.error == "unknown target group \"api\" (groups: web)");

    config.target_groups.push_back(group_of(Algorithm::maglev));
    config.target_groups[1].name = "api";
    const GroupChoice ambiguous = choose_group(config, "");
    CHECK(ambiguous.group == nullptr);
    CHECK(ambiguous.error.find("several target groups (web, api)") != std::string::npos);
    CHECK(choose_group(config, "api").group == &config.target_groups[1]);
}

TEST_CASE("lookup_ip hashes exactly what the data path hashes") {
    for (Algorithm algorithm : {Algorithm::ring, Algorithm::maglev}) {
        TargetGroupConfig g = group_of(algorithm);
        g.stickiness.prefix_v4 = 24;
        const auto table = build_routing_table(g);

        sockaddr_in sa{};
        sa.sin_family = AF_INET;
        inet_pton(AF_INET, "192.0.2.77", &sa.sin_addr);
        const auto found = lookup_ip(*table, "192.0.2.77");
        REQUIRE(found.has_value());
        CHECK(found->hash == table->key_hash(reinterpret_cast<const sockaddr*>(&sa)));
        CHECK(found->key == "192.0.2.0/24");
        CHECK(found->owner == table->balancer->owner(found->hash));
        CHECK(found->chosen == found->owner);  // offline, everything is usable
        // The prefix makes the whole /24 one client.
        CHECK(lookup_ip(*table, "192.0.2.1")->hash == found->hash);
        // IPv4-mapped IPv6 is the IPv4 client.
        CHECK(lookup_ip(*table, "::ffff:192.0.2.77")->hash == found->hash);
        CHECK(lookup_ip(*table, "2001:db8::1")->key == "2001:db8::1/128");
    }
    const auto table = build_routing_table(group_of(Algorithm::ring));
    CHECK_FALSE(lookup_ip(*table, "192.0.2").has_value());
    CHECK_FALSE(lookup_ip(*table, "192.0.2.1:80").has_value());
    CHECK_FALSE(lookup_ip(*table, "").has_value());
}

TEST_CASE("ring: removing a target moves exactly its share, only to the others") {
    const TargetGroupConfig g = group_of(Algorithm::ring);
    const Movement m = simulate_change(g, {{"c"}, {}, {}});
    const auto table = build_routing_table(g);
    const std::vector<double> shares = table->balancer->shares();

    const size_t c = index_of(m, "c");
    CHECK(m.moved == doctest::Approx(shares[c]).epsilon(1e-12));
    for (size_t i = 0; i < shares.size(); ++i) {
        CHECK(m.before[index_of(m, table->targets[i].id)] ==
              doctest::Approx(shares[i]).epsilon(1e-12));
    }
    for (const auto& [edge, share] : m.moves) CHECK(edge.first == c);
    CHECK_FALSE(m.violated);
    CHECK(m.after[c] == 0);
    CHECK(sum(m.after) == doctest::Approx(1.0).epsilon(1e-12));
    CHECK(m.ideal == doctest::Approx(1.0 / 5));  // c's weight over the total, 1 of 5

    TargetGroupConfig after = g;
    after.targets.erase(after.targets.begin() + 2);
    check_against_samples(g, after, m);
}

TEST_CASE("ring: adding a target moves keys only to it") {
    const TargetGroupConfig g = group_of(Algorithm::ring);
    const TargetConfig e = target("e", "10.0.0.5:80", 3);
    const Movement m = simulate_change(g, {{}, {e}, {}});
    const size_t ei = index_of(m, "e");
    for (const auto& [edge, share] : m.moves) CHECK(edge.second == ei);
    CHECK(m.moved == doctest::Approx(m.after[ei]).epsilon(1e-12));
    CHECK(m.before[ei] == 0);
    CHECK(m.ideal == doctest::Approx(3.0 / 8));
    CHECK_FALSE(m.violated);

    TargetGroupConfig after = g;
    after.targets.push_back(e);
    check_against_samples(g, after, m);
}

TEST_CASE("down targets' keys go where pick() sends them") {
    for (Algorithm algorithm : {Algorithm::ring, Algorithm::maglev}) {
        const TargetGroupConfig g = group_of(algorithm);
        const Movement m = simulate_change(g, {{}, {}, {"b"}});
        const size_t b = index_of(m, "b");
        CHECK(m.moved == doctest::Approx(m.before[b]).epsilon(1e-12));
        for (const auto& [edge, share] : m.moves) CHECK(edge.first == b);
        CHECK(m.after[b] == 0);
        CHECK_FALSE(m.violated);
        check_against_samples(g, g, m, {"b"});
    }
}

TEST_CASE("maglev: movement is counted over the table's entries") {
    const TargetGroupConfig g = group_of(Algorithm::maglev);
    const Movement m = simulate_change(g, {{"d"}, {}, {}});
    const auto shares = build_routing_table(g)->balancer->shares();
    // Entries weigh floor or ceil of 2^64 / M hashes; shares() counts 1/M each.
    for (size_t i = 0; i < shares.size(); ++i) {
        CHECK(std::abs(m.before[i] - shares[i]) < 1e-12);
    }
    CHECK(m.moved >= m.before[index_of(m, "d")] - 1e-12);
    CHECK(sum(m.after) == doctest::Approx(1.0).epsilon(1e-12));
    TargetGroupConfig after = g;
    after.targets.pop_back();
    check_against_samples(g, after, m);
}

TEST_CASE("simulate_change rejects unknown, duplicate and emptying changes") {
    const TargetGroupConfig g = group_of(Algorithm::ring);
    CHECK_THROWS_WITH_AS(simulate_change(g, {{"x"}, {}, {}}),
                         "--remove: unknown target id \"x\" in group \"web\" (targets: a, b, c, d)",
                         std::invalid_argument);
    CHECK_THROWS_AS(simulate_change(g, {{}, {target("a", "10.0.0.9:80")}, {}}),
                    std::invalid_argument);
    CHECK_THROWS_AS(simulate_change(g, {{"a"}, {}, {"a"}}), std::invalid_argument);
    CHECK_THROWS_AS(simulate_change(g, {{"a", "b", "c", "d"}, {}, {}}), std::invalid_argument);
    // Remove and add under the same id is a change of address or weight.
    const Movement reweighted = simulate_change(g, {{"a"}, {target("a", "10.0.0.1:80", 2)}, {}});
    CHECK_FALSE(reweighted.violated);
}

TEST_CASE("parse_target_spec reads ID=ADDR[,weight=W]") {
    const ParsedTarget plain = parse_target_spec("e=10.0.0.5:80");
    REQUIRE(plain.target.has_value());
    CHECK(plain.target->id == "e");
    CHECK(plain.target->address.to_string() == "10.0.0.5:80");
    CHECK(plain.target->weight == 1);

    const ParsedTarget weighted = parse_target_spec("v6=[2001:db8::1]:443,weight=7");
    REQUIRE(weighted.target.has_value());
    CHECK(weighted.target->weight == 7);

    for (const char* bad :
         {"e", "=10.0.0.5:80", "e=10.0.0.5", "e=10.0.0.5:80,weight=0", "e=10.0.0.5:80,weight=101",
          "e=10.0.0.5:80,w=2", "e=10.0.0.5:80,weight=2x"}) {
        const ParsedTarget parsed = parse_target_spec(bad);
        CHECK_FALSE(parsed.target.has_value());
        CHECK(parsed.error.find(bad) != std::string::npos);
    }
}

TEST_CASE("simulate_change refuses a group without targets, even for --add") {
    TargetGroupConfig empty = group_of(Algorithm::ring);
    empty.targets.clear();
    TargetChange add;
    add.add.push_back(target("new", "127.0.0.1:9009"));
    CHECK_THROWS_WITH_AS(simulate_change(empty, add), "group \"web\" has no targets to change",
                         std::invalid_argument);
}

TEST_CASE("compare_groups: listing order makes no difference") {
    for (Algorithm algorithm : {Algorithm::ring, Algorithm::maglev}) {
        TargetGroupConfig a = group_of(algorithm), b = group_of(algorithm);
        std::reverse(b.targets.begin(), b.targets.end());
        const Disagreement d = compare_groups(a, b);
        CHECK(d.comparable);
        CHECK(d.moves.empty());
        CHECK(d.differs == 0.0);
    }
}

TEST_CASE("compare_groups: one extra target differs by exactly what adding it moves") {
    for (Algorithm algorithm : {Algorithm::ring, Algorithm::maglev}) {
        const TargetGroupConfig a = group_of(algorithm);
        TargetGroupConfig b = a;
        b.targets.push_back(target("e", "10.0.0.5:80"));
        TargetChange add;
        add.add = {target("e", "10.0.0.5:80")};
        const Movement m = simulate_change(a, add);
        const Disagreement d = compare_groups(a, b);
        CHECK(d.comparable);
        CHECK(d.differs > 0);
        CHECK(d.differs == m.moved);
        CHECK(d.moves == m.moves);
    }
}

TEST_CASE("compare_groups: one id at two addresses differs by that target's share") {
    const TargetGroupConfig a = group_of(Algorithm::ring);
    TargetGroupConfig b = a;
    b.targets[2].address = *SocketAddress::parse("10.0.0.33:80");
    const Disagreement d = compare_groups(a, b);
    const auto shares = build_routing_table(a)->balancer->shares();
    REQUIRE(d.moves.size() == 1);
    CHECK(d.moves.begin()->first == std::pair<uint32_t, uint32_t>{2, 2});
    CHECK(d.differs == doctest::Approx(shares[2]).epsilon(1e-12));
}

TEST_CASE("compare_groups: another algorithm or prefix is not comparable, and says why") {
    const TargetGroupConfig a = group_of(Algorithm::ring);
    TargetGroupConfig b = group_of(Algorithm::maglev);
    Disagreement d = compare_groups(a, b);
    CHECK_FALSE(d.comparable);
    CHECK(d.not_comparable == "algorithm ring against maglev (table size 65537)");
    b = a;
    b.stickiness.prefix_v4 = 24;
    d = compare_groups(a, b);
    CHECK_FALSE(d.comparable);
    CHECK(d.not_comparable == "prefixes /32 /128 against /24 /128");
}
