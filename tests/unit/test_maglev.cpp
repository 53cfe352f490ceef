#include <doctest/doctest.h>
#include <xxhash.h>

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

// The paper's Figure 2 population for equal weights, written out plainly with
// the documented seeds: offset seed 0x9E3779B97F4A7C15, skip seed 0xC2B2AE3D27D4EB4F.
std::vector<uint32_t> textbook_table(const std::vector<Member>& sorted, uint32_t m) {
    std::vector<uint64_t> offset, skip, next(sorted.size(), 0);
    for (const Member& member : sorted) {
        offset.push_back(
            XXH3_64bits_withSeed(member.id.data(), member.id.size(), 0x9E3779B97F4A7C15ull) % m);
        skip.push_back(
            XXH3_64bits_withSeed(member.id.data(), member.id.size(), 0xC2B2AE3D27D4EB4Full) %
                (m - 1) +
            1);
    }
    std::vector<uint32_t> table(m, kNoMember);
    uint32_t filled = 0;
    while (true) {
        for (uint32_t i = 0; i < sorted.size(); ++i) {
            uint64_t c = (offset[i] + next[i] * skip[i]) % m;
            while (table[c] != kNoMember) {
                ++next[i];
                c = (offset[i] + next[i] * skip[i]) % m;
            }
            table[c] = i;
            ++next[i];
            if (++filled == m) return table;
        }
    }
}

}  // namespace

TEST_CASE("maglev: members are sorted by id and the algorithm is named") {
    auto maglev = build_maglev(mixed_members());
    CHECK(maglev->algorithm() == "maglev");
    const auto& members = maglev->members();
    CHECK(std::is_sorted(members.begin(), members.end(),
                         [](const Member& a, const Member& b) { return a.id < b.id; }));
}

TEST_CASE("maglev: equal weights give exactly the paper's table") {
    for (size_t n : {1, 3, 10, 100}) {
        CAPTURE(n);
        auto maglev = build_maglev(equal_members(n));
        const auto table = textbook_table(maglev->members(), kDefaultMaglevTableSize);
        size_t mismatches = 0;
        for (uint64_t slot = 0; slot < kDefaultMaglevTableSize; ++slot) {
            mismatches += maglev->owner(slot) != table[slot];
            // owner() is table[hash % M].
            mismatches +=
                maglev->owner(slot + 7 * uint64_t{kDefaultMaglevTableSize}) != table[slot];
        }
        CHECK(mismatches == 0);
    }
}

TEST_CASE("maglev: golden 3-member and 5-member groups") {
    // Members "10.0.0.N:80", weight 1, table size 65537. Frozen from the first
    // implementation.
    //
    // client IP                      3 members      5 members
    // 10.1.2.3                       10.0.0.3:80    10.0.0.4:80
    // 10.1.2.4                       10.0.0.1:80    10.0.0.4:80
    // 192.0.2.1                      10.0.0.3:80    10.0.0.5:80
    // 198.51.100.23                  10.0.0.1:80    10.0.0.1:80
    // 203.0.113.77                   10.0.0.3:80    10.0.0.3:80
    // 172.16.0.1                     10.0.0.3:80    10.0.0.3:80
    // 8.8.8.8                        10.0.0.3:80    10.0.0.3:80
    // 1.1.1.1                        10.0.0.2:80    10.0.0.5:80
    // 2001:db8::1                    10.0.0.1:80    10.0.0.1:80
    // 2001:db8::2                    10.0.0.1:80    10.0.0.1:80
    // 2001:db8:85a3::8a2e:370:7334   10.0.0.3:80    10.0.0.3:80
    // fe80::1                        10.0.0.1:80    10.0.0.4:80
    // ::ffff:10.1.2.3                10.0.0.3:80    10.0.0.4:80   (= 10.1.2.3)
    // ::ffff:192.0.2.1               10.0.0.3:80    10.0.0.5:80   (= 192.0.2.1)
    //
    // slots, 3 members: 21846 21846 21845
    // slots, 5 members: 13108 13108 13107 13107 13107
    struct Row {
        const char* ip;
        const char* three;
        const char* five;
    };
    const Row golden[] = {
        {"10.1.2.3", "10.0.0.3:80", "10.0.0.4:80"},
        {"10.1.2.4", "10.0.0.1:80", "10.0.0.4:80"},
        {"192.0.2.1", "10.0.0.3:80", "10.0.0.5:80"},
        {"198.51.100.23", "10.0.0.1:80", "10.0.0.1:80"},
        {"203.0.113.77", "10.0.0.3:80", "10.0.0.3:80"},
        {"172.16.0.1", "10.0.0.3:80", "10.0.0.3:80"},
        {"8.8.8.8", "10.0.0.3:80", "10.0.0.3:80"},
        {"1.1.1.1", "10.0.0.2:80", "10.0.0.5:80"},
        {"2001:db8::1", "10.0.0.1:80", "10.0.0.1:80"},
        {"2001:db8::2", "10.0.0.1:80", "10.0.0.1:80"},
        {"2001:db8:85a3::8a2e:370:7334", "10.0.0.3:80", "10.0.0.3:80"},
        {"fe80::1", "10.0.0.1:80", "10.0.0.4:80"},
        {"::ffff:10.1.2.3", "10.0.0.3:80", "10.0.0.4:80"},
        {"::ffff:192.0.2.1", "10.0.0.3:80", "10.0.0.5:80"},
    };
    std::vector<Member> three, five;
    for (int i = 1; i <= 5; ++i) {
        Member m{"10.0.0." + std::to_string(i) + ":80", 1};
        if (i <= 3) three.push_back(m);
        five.push_back(m);
    }
    auto maglev3 = build_maglev(three);
    auto maglev5 = build_maglev(five);
    for (const Row& row : golden) {
        CAPTURE(row.ip);
        const uint64_t h = hash_ip(*parse_ip(row.ip));
        CHECK(owner_id(*maglev3, h) == row.three);
        CHECK(owner_id(*maglev5, h) == row.five);
    }
    const double m = kDefaultMaglevTableSize;
    CHECK(maglev3->shares() == std::vector<double>{21846 / m, 21846 / m, 21845 / m});
    CHECK(maglev5->shares() ==
          std::vector<double>{13108 / m, 13108 / m, 13107 / m, 13107 / m, 13107 / m});
}

TEST_CASE("maglev: input order does not matter") {
    const auto keys = client_hashes(200'000);
    auto members = mixed_members();
    auto reference = build_maglev(members);
    std::mt19937 shuffler(11);
    for (int round = 0; round < 5; ++round) {
        std::shuffle(members.begin(), members.end(), shuffler);
        auto maglev = build_maglev(members);
        CHECK(maglev->shares() == reference->shares());
        size_t differ = 0;
        for (uint64_t slot = 0; slot < kDefaultMaglevTableSize; ++slot) {
            differ += maglev->owner(slot) != reference->owner(slot);
        }
        for (uint64_t h : keys) differ += maglev->owner(h) != reference->owner(h);
        CHECK(differ == 0);
    }
}

TEST_CASE("maglev: removing or adding a target disrupts little beyond its own share") {
    const auto keys = client_hashes(500'000);
    auto members = equal_members(10);
    auto before = build_maglev(members);

    SUBCASE("remove") {
        auto rest = members;
        const std::string removed = rest[4].id;
        rest.erase(rest.begin() + 4);
        auto after = build_maglev(rest);
        size_t owned = 0, moved = 0;
        for (uint64_t h : keys) {
            owned += owner_id(*before, h) == removed;
            moved += owner_id(*before, h) != owner_id(*after, h);
        }
        CHECK(owned > 0);
        CHECK(moved >= owned);  // its own keys must all move
        CHECK(moved < 2 * owned);
    }
    SUBCASE("add") {
        auto more = members;
        more.push_back({"10.0.9.9:80", 1});
        auto after = build_maglev(more);
        size_t gained = 0, moved = 0;
        for (uint64_t h : keys) {
            gained += owner_id(*after, h) == "10.0.9.9:80";
            moved += owner_id(*before, h) != owner_id(*after, h);
        }
        CHECK(gained > 0);
        CHECK(moved < 2 * gained);
    }
}

TEST_CASE("maglev: an unusable target's keys move, consistently, and come back") {
    const auto keys = client_hashes(500'000);
    auto maglev = build_maglev(mixed_members());
    auto usable = all_usable(*maglev);
    const uint32_t down = 7;  // web-h, the heaviest

    usable[down] = 0;
    size_t owned = 0, moved = 0, wrong = 0;
    std::vector<size_t> took(maglev->members().size());
    for (uint64_t h : keys) {
        const uint32_t owner = maglev->owner(h);
        const uint32_t picked = maglev->pick(h, usable, 0);
        owned += owner == down;
        moved += picked != owner;
        wrong += picked == down;
        wrong += picked != maglev->pick(h, usable, 0);  // same answer every time
        if (owner == down) ++took[picked];
    }
    CHECK(owned > 0);
    CHECK(moved == owned);
    CHECK(wrong == 0);
    // The walk spreads them over the others rather than dumping them on one.
    CHECK(std::count_if(took.begin(), took.end(), [](size_t n) { return n > 0; }) == 9);

    usable[down] = 1;
    size_t not_back = 0;
    for (uint64_t h : keys) not_back += maglev->pick(h, usable, 0) != maglev->owner(h);
    CHECK(not_back == 0);
}

TEST_CASE("maglev: attempts walk distinct usable targets and wrap; fails open") {
    auto maglev = build_maglev(equal_members(5));
    const size_t n = 5;
    auto usable = all_usable(*maglev);
    const std::vector<uint8_t> none(n, 0);
    for (uint64_t h : client_hashes(2'000)) {
        std::vector<uint32_t> order;
        for (unsigned a = 0; a < n; ++a) order.push_back(maglev->pick(h, usable, a));
        CHECK(order[0] == maglev->owner(h));
        auto sorted = order;
        std::sort(sorted.begin(), sorted.end());
        CHECK(std::unique(sorted.begin(), sorted.end()) == sorted.end());
        CHECK(maglev->pick(h, usable, static_cast<unsigned>(n + 3)) == order[3]);

        auto some = usable;
        some[order[1]] = 0;
        CHECK(maglev->pick(h, some, 0) == order[0]);
        CHECK(maglev->pick(h, some, 1) == order[2]);
        CHECK(maglev->pick(h, some, 3) == order[4]);
        CHECK(maglev->pick(h, some, 4) == order[0]);

        for (unsigned a = 0; a < 7; ++a)
            CHECK(maglev->pick(h, none, a) == maglev->pick(h, usable, a));
    }
}

TEST_CASE("maglev: one member, and no members") {
    auto one = build_maglev({{"only", 1}});
    const std::vector<uint8_t> down{0};
    for (uint64_t h : client_hashes(1'000)) {
        CHECK(one->owner(h) == 0);
        CHECK(one->pick(h, down, 2) == 0);
    }
    CHECK(one->shares() == std::vector<double>{1.0});

    auto empty = build_maglev({});
    CHECK(empty->owner(42) == kNoMember);
    CHECK(empty->pick(42, {}, 1) == kNoMember);
    CHECK(empty->shares().empty());
}

TEST_CASE("maglev: shares are exact slot counts, sum to 1 and agree with sampling") {
    const auto keys = client_hashes(1'000'000);
    for (auto members : {equal_members(3), mixed_members(), equal_members(100)}) {
        auto maglev = build_maglev(members);
        const auto shares = maglev->shares();
        double sum = 0;
        for (double s : shares) sum += s;
        CHECK(sum == doctest::Approx(1.0).epsilon(1e-9));
        std::vector<size_t> counts(shares.size());
        for (uint64_t h : keys) ++counts[maglev->owner(h)];
        for (size_t m = 0; m < shares.size(); ++m) {
            const double sampled =
                static_cast<double>(counts[m]) / static_cast<double>(keys.size());
            CHECK(std::abs(sampled - shares[m]) < 0.002);
        }
    }
}

TEST_CASE("maglev: weights") {
    auto maglev = build_maglev({{"a", 1}, {"b", 2}, {"c", 1}, {"d", 4}});
    const auto s = maglev->shares();
    CHECK(s[1] / s[0] == doctest::Approx(2.0).epsilon(0.01));
    CHECK(s[3] / s[2] == doctest::Approx(4.0).epsilon(0.01));

    // The lightest member still gets slots next to the heaviest possible ones.
    std::vector<Member> members = equal_members(100);
    for (auto& m : members) m.weight = kMaxWeight;
    members.push_back({"light", 1});
    auto skewed = build_maglev(members);
    const auto& sorted = skewed->members();
    const size_t light = std::find_if(sorted.begin(), sorted.end(),
                                      [](const Member& m) { return m.id == "light"; }) -
                         sorted.begin();
    CHECK(skewed->shares()[light] > 0);
}

TEST_CASE("maglev: balance over 1M client IPv4 addresses") {
    const auto keys = client_hashes(1'000'000);
    for (size_t n : {3, 5, 10, 100}) {
        CAPTURE(n);
        auto maglev = build_maglev(equal_members(n));
        std::vector<size_t> counts(n);
        for (uint64_t h : keys) ++counts[maglev->owner(h)];
        const double mean = static_cast<double>(keys.size()) / static_cast<double>(n);
        CHECK(static_cast<double>(*std::max_element(counts.begin(), counts.end())) / mean <= 1.05);
    }
}

TEST_CASE("maglev: table size must be prime and large enough") {
    CHECK_FALSE(maglev_table_size_error(65537, 100).has_value());
    CHECK_FALSE(maglev_table_size_error(kMaxMaglevTableSize, 5).has_value());
    CHECK_FALSE(maglev_table_size_error(101, 1).has_value());
    CHECK_FALSE(maglev_table_size_error(65537, 0).has_value());

    for (uint32_t bad : {0u, 1u, 4u, 65536u, 65535u, 100000u}) {
        CAPTURE(bad);
        auto error = maglev_table_size_error(bad, 3);
        REQUIRE(error.has_value());
        CHECK(error->find("not prime") != std::string::npos);
        CHECK_THROWS_AS(build_maglev(equal_members(3), bad), std::invalid_argument);
    }
    auto small = maglev_table_size_error(65537, 700);
    REQUIRE(small.has_value());
    CHECK(*small ==
          "maglev_table_size 65537 is too small for 700 targets: it needs at least 100 entries "
          "per target (a prime >= 70000)");
    CHECK_THROWS_WITH_AS(build_maglev(equal_members(3), 293),
                         "maglev_table_size 293 is too small for 3 targets: it needs at least 100 "
                         "entries per target (a prime >= 300)",
                         std::invalid_argument);

    auto large = maglev_table_size_error(kMaxMaglevTableSize + 2, 3);
    REQUIRE(large.has_value());
    CHECK(large->find("larger than the maximum") != std::string::npos);

    // The smallest prime above 3 * 100 is enough.
    CHECK_NOTHROW(build_maglev(equal_members(3), 307));
}

TEST_CASE("maglev: rejects bad members") {
    CHECK_THROWS_AS(build_maglev({{"a", 1}, {"a", 1}}), std::invalid_argument);
    CHECK_THROWS_AS(build_maglev({{"a", 0}}), std::invalid_argument);
    CHECK_THROWS_AS(build_maglev({{"a", kMaxWeight + 1}}), std::invalid_argument);
}
