#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "stickyd/balancer.hpp"
#include "stickyd/hash.hpp"
#include "tests/support/balancer_fixtures.hpp"

using namespace stickyd;
using namespace stickyd::test;

namespace {

// The definition, written the slow and obvious way.
struct ReferenceRing {
    std::vector<std::pair<uint64_t, uint32_t>> points;  // (position, member index), sorted

    explicit ReferenceRing(const Balancer& ring) {
        const auto& members = ring.members();
        for (uint32_t m = 0; m < members.size(); ++m) {
            for (uint32_t r = 0; r < members[m].weight * kRingPointsPerWeight; ++r) {
                points.emplace_back(hash_point(members[m].id, r), m);
            }
        }
        std::sort(points.begin(), points.end());
    }

    uint32_t owner(uint64_t h) const {
        auto it = std::lower_bound(points.begin(), points.end(), std::make_pair(h, 0u));
        return it == points.end() ? points.front().second : it->second;
    }
};

double max_over_mean(const Balancer& b, const std::vector<uint64_t>& keys) {
    std::vector<size_t> counts(b.members().size());
    for (uint64_t h : keys) ++counts[b.owner(h)];
    const double mean = static_cast<double>(keys.size()) / static_cast<double>(counts.size());
    return static_cast<double>(*std::max_element(counts.begin(), counts.end())) / mean;
}

}  // namespace

TEST_CASE("ring: members are sorted by id and the algorithm is named") {
    auto ring = build_ring(mixed_members());
    CHECK(ring->algorithm() == "ring");
    const auto& members = ring->members();
    REQUIRE(members.size() == 10);
    CHECK(std::is_sorted(members.begin(), members.end(),
                         [](const Member& a, const Member& b) { return a.id < b.id; }));
    CHECK(members[7].id == "web-h");
    CHECK(members[7].weight == 5);
}

TEST_CASE("ring: owner() matches the reference definition exactly") {
    for (auto members : {equal_members(1), equal_members(3), mixed_members(), equal_members(100)}) {
        auto ring = build_ring(members);
        const ReferenceRing ref(*ring);
        CAPTURE(members.size());

        size_t mismatches = 0;
        for (uint64_t h : client_hashes(300'000, members.size())) {
            mismatches += ring->owner(h) != ref.owner(h);
        }
        // The edges: at, just before and just after points; both ends of the space.
        for (size_t i = 0; i < ref.points.size(); i += 7) {
            const uint64_t p = ref.points[i].first;
            for (uint64_t h : {p - 1, p, p + 1}) mismatches += ring->owner(h) != ref.owner(h);
        }
        for (uint64_t h : {uint64_t{0}, uint64_t{1}, UINT64_MAX - 1, UINT64_MAX}) {
            mismatches += ring->owner(h) != ref.owner(h);
        }
        CHECK(mismatches == 0);
    }
}

TEST_CASE("ring: golden 3-member and 5-member groups") {
    // Members "10.0.0.N:80", weight 1. Frozen from the first implementation.
    //
    // client IP                      3 members      5 members
    // 10.1.2.3                       10.0.0.3:80    10.0.0.3:80
    // 10.1.2.4                       10.0.0.3:80    10.0.0.3:80
    // 192.0.2.1                      10.0.0.2:80    10.0.0.5:80
    // 198.51.100.23                  10.0.0.1:80    10.0.0.1:80
    // 203.0.113.77                   10.0.0.3:80    10.0.0.5:80
    // 172.16.0.1                     10.0.0.3:80    10.0.0.3:80
    // 8.8.8.8                        10.0.0.3:80    10.0.0.5:80
    // 1.1.1.1                        10.0.0.1:80    10.0.0.1:80
    // 2001:db8::1                    10.0.0.3:80    10.0.0.3:80
    // 2001:db8::2                    10.0.0.2:80    10.0.0.2:80
    // 2001:db8:85a3::8a2e:370:7334   10.0.0.1:80    10.0.0.1:80
    // fe80::1                        10.0.0.1:80    10.0.0.1:80
    // ::ffff:10.1.2.3                10.0.0.3:80    10.0.0.3:80   (= 10.1.2.3)
    // ::ffff:192.0.2.1               10.0.0.2:80    10.0.0.5:80   (= 192.0.2.1)
    //
    // shares, 3 members: .331918 .333260 .334822
    // shares, 5 members: .197990 .196799 .199517 .201389 .204305
    struct Row {
        const char* ip;
        const char* three;
        const char* five;
    };
    const Row golden[] = {
        {"10.1.2.3", "10.0.0.3:80", "10.0.0.3:80"},
        {"10.1.2.4", "10.0.0.3:80", "10.0.0.3:80"},
        {"192.0.2.1", "10.0.0.2:80", "10.0.0.5:80"},
        {"198.51.100.23", "10.0.0.1:80", "10.0.0.1:80"},
        {"203.0.113.77", "10.0.0.3:80", "10.0.0.5:80"},
        {"172.16.0.1", "10.0.0.3:80", "10.0.0.3:80"},
        {"8.8.8.8", "10.0.0.3:80", "10.0.0.5:80"},
        {"1.1.1.1", "10.0.0.1:80", "10.0.0.1:80"},
        {"2001:db8::1", "10.0.0.3:80", "10.0.0.3:80"},
        {"2001:db8::2", "10.0.0.2:80", "10.0.0.2:80"},
        {"2001:db8:85a3::8a2e:370:7334", "10.0.0.1:80", "10.0.0.1:80"},
        {"fe80::1", "10.0.0.1:80", "10.0.0.1:80"},
        {"::ffff:10.1.2.3", "10.0.0.3:80", "10.0.0.3:80"},
        {"::ffff:192.0.2.1", "10.0.0.2:80", "10.0.0.5:80"},
    };
    std::vector<Member> three, five;
    for (int i = 1; i <= 5; ++i) {
        Member m{"10.0.0." + std::to_string(i) + ":80", 1};
        if (i <= 3) three.push_back(m);
        five.push_back(m);
    }
    auto ring3 = build_ring(three);
    auto ring5 = build_ring(five);
    for (const Row& row : golden) {
        CAPTURE(row.ip);
        const uint64_t h = hash_ip(*parse_ip(row.ip));
        CHECK(owner_id(*ring3, h) == row.three);
        CHECK(owner_id(*ring5, h) == row.five);
    }
    const double shares3[] = {.331918, .333260, .334822};
    const double shares5[] = {.197990, .196799, .199517, .201389, .204305};
    for (size_t i = 0; i < 3; ++i)
        CHECK(ring3->shares()[i] == doctest::Approx(shares3[i]).epsilon(1e-5));
    for (size_t i = 0; i < 5; ++i)
        CHECK(ring5->shares()[i] == doctest::Approx(shares5[i]).epsilon(1e-5));
}

TEST_CASE("ring: input order does not matter") {
    const auto keys = client_hashes(200'000);
    auto members = mixed_members();
    auto reference = build_ring(members);
    std::mt19937 shuffler(7);
    for (int round = 0; round < 5; ++round) {
        std::shuffle(members.begin(), members.end(), shuffler);
        auto ring = build_ring(members);
        CHECK(ring->shares() == reference->shares());
        size_t differ = 0;
        for (uint64_t h : keys) differ += ring->owner(h) != reference->owner(h);
        CHECK(differ == 0);
    }
}

TEST_CASE("ring: removing a target moves exactly its own keys") {
    const auto keys = client_hashes(500'000);
    auto members = mixed_members();
    auto before = build_ring(members);
    for (const char* removed : {"web-a", "web-h", "web-j"}) {
        CAPTURE(removed);
        auto rest = members;
        std::erase_if(rest, [&](const Member& m) { return m.id == removed; });
        auto after = build_ring(rest);

        size_t owned_by_removed = 0, moved = 0, moved_wrongly = 0;
        for (uint64_t h : keys) {
            const std::string& was = owner_id(*before, h);
            const std::string& now = owner_id(*after, h);
            owned_by_removed += was == removed;
            moved += was != now;
            moved_wrongly += was != removed && was != now;
        }
        CHECK(owned_by_removed > 0);
        CHECK(moved_wrongly == 0);
        CHECK(moved == owned_by_removed);
    }
}

TEST_CASE("ring: adding a target moves keys only onto it") {
    const auto keys = client_hashes(500'000);
    auto members = equal_members(10);
    auto before = build_ring(members);
    members.push_back({"10.0.9.9:80", 1});
    auto after = build_ring(members);

    size_t moved = 0, moved_elsewhere = 0;
    for (uint64_t h : keys) {
        const std::string& was = owner_id(*before, h);
        const std::string& now = owner_id(*after, h);
        moved += was != now;
        moved_elsewhere += was != now && now != "10.0.9.9:80";
    }
    CHECK(moved_elsewhere == 0);
    // About 1/11 of the keys, as the newcomer's share says.
    const size_t newcomer = std::find_if(after->members().begin(), after->members().end(),
                                         [](const Member& m) { return m.id == "10.0.9.9:80"; }) -
                            after->members().begin();
    const double expected = after->shares()[newcomer] * static_cast<double>(keys.size());
    CHECK(static_cast<double>(moved) == doctest::Approx(expected).epsilon(0.03));
}

TEST_CASE("ring: an unusable target's keys move to the next target clockwise, and come back") {
    const auto keys = client_hashes(500'000);
    auto members = mixed_members();
    auto ring = build_ring(members);
    auto usable = all_usable(*ring);
    const uint32_t down = 3;  // web-d
    const std::string down_id = ring->members()[down].id;

    // With a target unusable, its keys go where they would go if it were removed.
    auto rest = members;
    std::erase_if(rest, [&](const Member& m) { return m.id == down_id; });
    auto without = build_ring(rest);

    usable[down] = 0;
    size_t owned = 0, moved = 0, unexpected = 0;
    for (uint64_t h : keys) {
        const uint32_t owner = ring->owner(h);
        const uint32_t picked = ring->pick(h, usable, 0);
        owned += owner == down;
        moved += picked != owner;
        if (owner == down) {
            unexpected += ring->members()[picked].id != owner_id(*without, h);
        } else {
            unexpected += picked != owner;
        }
    }
    CHECK(owned > 0);
    CHECK(moved == owned);
    CHECK(unexpected == 0);

    usable[down] = 1;
    size_t not_back = 0;
    for (uint64_t h : keys) not_back += ring->pick(h, usable, 0) != ring->owner(h);
    CHECK(not_back == 0);
}

TEST_CASE("ring: attempts walk distinct usable targets and wrap") {
    auto ring = build_ring(equal_members(5));
    const size_t n = ring->members().size();
    auto usable = all_usable(*ring);
    for (uint64_t h : client_hashes(2'000)) {
        std::vector<uint32_t> order;
        for (unsigned a = 0; a < n; ++a) order.push_back(ring->pick(h, usable, a));
        CHECK(order[0] == ring->owner(h));
        auto sorted = order;
        std::sort(sorted.begin(), sorted.end());
        CHECK(std::unique(sorted.begin(), sorted.end()) == sorted.end());  // all distinct
        CHECK(ring->pick(h, usable, static_cast<unsigned>(n)) == order[0]);
        CHECK(ring->pick(h, usable, static_cast<unsigned>(n + 2)) == order[2]);
        CHECK(ring->pick(h, usable, 1'000'000) == order[1'000'000 % n]);

        // Unusable targets drop out of the same order; the walk wraps over the rest.
        auto some = usable;
        some[order[0]] = 0;
        some[order[2]] = 0;
        CHECK(ring->pick(h, some, 0) == order[1]);
        CHECK(ring->pick(h, some, 1) == order[3]);
        CHECK(ring->pick(h, some, 2) == order[4]);
        CHECK(ring->pick(h, some, 3) == order[1]);
    }
}

TEST_CASE("ring: the walk skips long runs of one unusable heavy target") {
    auto ring = build_ring({{"big", kMaxWeight}, {"small", 1}});
    const std::vector<uint8_t> big_down{0, 1};
    for (uint64_t h : client_hashes(20'000)) {
        CHECK(ring->pick(h, big_down, 0) == 1);
        CHECK(ring->pick(h, big_down, 5) == 1);
    }
}

TEST_CASE("ring: fails open when nothing is usable") {
    auto ring = build_ring(mixed_members());
    const std::vector<uint8_t> none(ring->members().size(), 0);
    const auto all = all_usable(*ring);
    for (uint64_t h : client_hashes(2'000)) {
        for (unsigned a = 0; a < 12; ++a) CHECK(ring->pick(h, none, a) == ring->pick(h, all, a));
    }
    // A usable vector of the wrong size is treated as all usable, not read out of bounds.
    for (uint64_t h : client_hashes(100)) CHECK(ring->pick(h, {}, 0) == ring->owner(h));
}

TEST_CASE("ring: one member, and no members") {
    auto one = build_ring({{"only", 1}});
    const std::vector<uint8_t> up{1}, down{0};
    for (uint64_t h : client_hashes(1'000)) {
        CHECK(one->owner(h) == 0);
        CHECK(one->pick(h, up, 0) == 0);
        CHECK(one->pick(h, up, 3) == 0);
        CHECK(one->pick(h, down, 1) == 0);
    }
    CHECK(one->shares() == std::vector<double>{1.0});

    auto empty = build_ring({});
    CHECK(empty->owner(42) == kNoMember);
    CHECK(empty->pick(42, {}, 0) == kNoMember);
    CHECK(empty->shares().empty());
}

TEST_CASE("ring: shares are exact, sum to 1 and agree with sampling") {
    const auto keys = client_hashes(1'000'000);
    for (auto members : {equal_members(3), mixed_members(), equal_members(100)}) {
        auto ring = build_ring(members);
        const auto shares = ring->shares();
        double sum = 0;
        for (double s : shares) sum += s;
        CHECK(sum == doctest::Approx(1.0).epsilon(1e-9));

        std::vector<size_t> counts(shares.size());
        for (uint64_t h : keys) ++counts[ring->owner(h)];
        for (size_t m = 0; m < shares.size(); ++m) {
            const double sampled =
                static_cast<double>(counts[m]) / static_cast<double>(keys.size());
            // Binomial noise at 1M keys is below 0.0005 for any share; 0.002 is slack.
            CHECK(std::abs(sampled - shares[m]) < 0.002);
        }
    }
}

TEST_CASE("ring: weight scales a target's share") {
    auto ring = build_ring({{"a", 1}, {"b", 2}, {"c", 1}, {"d", 4}});
    const auto s = ring->shares();
    CHECK(s[1] / s[0] == doctest::Approx(2.0).epsilon(0.1));
    CHECK(s[1] / s[2] == doctest::Approx(2.0).epsilon(0.1));
    CHECK(s[3] / (s[0] + s[2]) == doctest::Approx(2.0).epsilon(0.1));

    // Raising one weight only moves keys onto that target: its extra points are
    // new replicas, the old ones stay where they were.
    auto heavier = build_ring({{"a", 1}, {"b", 3}, {"c", 1}, {"d", 4}});
    size_t moved_elsewhere = 0;
    for (uint64_t h : client_hashes(200'000)) {
        moved_elsewhere += ring->owner(h) != heavier->owner(h) && heavier->owner(h) != 1;
    }
    CHECK(moved_elsewhere == 0);
}

TEST_CASE("ring: balance over 1M client IPv4 addresses") {
    const auto keys = client_hashes(1'000'000);
    for (size_t n : {3, 5, 7, 10}) {
        CAPTURE(n);
        CHECK(max_over_mean(*build_ring(equal_members(n)), keys) <= 1.05);
    }
    CHECK(max_over_mean(*build_ring(equal_members(100)), keys) <= 1.10);
}

TEST_CASE("ring: rejects bad members") {
    CHECK_THROWS_AS(build_ring({{"a", 1}, {"b", 1}, {"a", 2}}), std::invalid_argument);
    CHECK_THROWS_AS(build_ring({{"a", 0}}), std::invalid_argument);
    CHECK_THROWS_AS(build_ring({{"a", kMaxWeight + 1}}), std::invalid_argument);
    CHECK_THROWS_AS(build_ring({{"", 1}}), std::invalid_argument);
    CHECK_NOTHROW(build_ring({{"a", kMaxWeight}}));
}

TEST_CASE("ring: total weight is capped at kMaxRingWeight") {
    CHECK(ring_weight_error(kMaxRingWeight) == std::nullopt);
    auto error = ring_weight_error(kMaxRingWeight + 1);
    REQUIRE(error.has_value());
    CHECK(*error ==
          "the targets' weights add up to 1025, more than one ring holds (1024); use smaller "
          "weights (only their ratios matter) or algorithm = \"maglev\"");

    std::vector<Member> members;
    for (int i = 0; i < 11; ++i) members.push_back({"t" + std::to_string(i), kMaxWeight});
    CHECK_THROWS_WITH_AS(build_ring(members),
                         "the targets' weights add up to 1100, more than one ring holds (1024); "
                         "use smaller weights (only their ratios matter) or algorithm = \"maglev\"",
                         std::invalid_argument);
}

// Regression: hash_point once used the replica as XXH3's seed, which inputs of
// 1-8 bytes mix in so weakly that short ids ("t0".."t49") put many points on the
// same positions and some targets owned nothing.
TEST_CASE("short ids spread their points as well as long ones") {
    for (const char* prefix : {"", "t", "web-"}) {
        std::vector<Member> members;
        for (int i = 0; i < 50; ++i) members.push_back({prefix + std::to_string(i), 1});
        auto ring = build_ring(members);
        std::vector<uint64_t> points;
        for (const auto& m : ring->members())
            for (uint32_t r = 0; r < kRingPointsPerWeight; ++r)
                points.push_back(hash_point(m.id, r));
        std::sort(points.begin(), points.end());
        CHECK_MESSAGE(std::adjacent_find(points.begin(), points.end()) == points.end(),
                      "ids prefixed '" << prefix << "' share point positions");
        auto shares = ring->shares();
        double max_share = *std::max_element(shares.begin(), shares.end());
        double min_share = *std::min_element(shares.begin(), shares.end());
        CHECK_MESSAGE(max_share * 50 <= 1.10,
                      "prefix '" << prefix << "' max/mean " << max_share * 50);
        CHECK_MESSAGE(min_share * 50 >= 0.90,
                      "prefix '" << prefix << "' min/mean " << min_share * 50);
    }
}
