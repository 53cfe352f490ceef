// The idle-timeout wheel's bookkeeping, driven tick by tick.
#include "datapath/idle_wheel.hpp"

#include <doctest/doctest.h>

#include <map>
#include <stdexcept>
#include <vector>

using namespace stickyd;

namespace {

std::vector<WheelEntry> expire_at(IdleWheel& wheel, uint64_t now) {
    std::vector<WheelEntry> seen;
    wheel.expire(now, [&](const WheelEntry& e) { seen.push_back(e); });
    return seen;
}

}  // namespace

TEST_CASE("an entry comes out at its due tick, not before, and only once") {
    IdleWheel wheel(16);
    CHECK(wheel.next_due() == IdleWheel::kNever);
    wheel.schedule({3, 7}, 5);
    CHECK(wheel.size() == 1);
    CHECK(wheel.next_due() == 5);
    for (uint64_t t = 1; t < 5; ++t) CHECK(expire_at(wheel, t).empty());
    CHECK(expire_at(wheel, 5) == std::vector<WheelEntry>{{3, 7}});
    CHECK(wheel.size() == 0);
    CHECK(wheel.next_due() == IdleWheel::kNever);
    CHECK(expire_at(wheel, 100).empty());
}

TEST_CASE("a late expire hands out every skipped bucket, each entry once") {
    IdleWheel wheel(8);
    wheel.schedule({1, 0}, 2);
    wheel.schedule({2, 0}, 4);
    wheel.schedule({3, 0}, 8);
    const auto seen = expire_at(wheel, 6);
    CHECK(seen == std::vector<WheelEntry>{{1, 0}, {2, 0}});
    CHECK(wheel.next_due() == 8);
    // Far past a whole turn: the rest comes out once, not once per turn.
    CHECK(expire_at(wheel, 1000) == std::vector<WheelEntry>{{3, 0}});
    CHECK(wheel.size() == 0);
}

TEST_CASE("a deadline beyond one turn is visited early and can be put back") {
    IdleWheel wheel(8);
    wheel.schedule({9, 1}, 20);  // bucket 4: comes round at tick 4 and 12 first
    CHECK(wheel.next_due() == 4);
    std::map<uint64_t, int> visits;
    for (uint64_t t = 1; t <= 20; ++t) {
        wheel.expire(t, [&](const WheelEntry& e) {
            ++visits[t];
            // The caller's check: not due yet -> back in for its real deadline.
            if (t < 20) wheel.schedule(e, 20);
        });
    }
    CHECK(visits == std::map<uint64_t, int>{{4, 1}, {12, 1}, {20, 1}});
    CHECK(wheel.size() == 0);
}

TEST_CASE("scheduling in the past or present lands on the next tick") {
    IdleWheel wheel(8);
    expire_at(wheel, 10);
    CHECK(wheel.expired() == 10);
    wheel.schedule({1, 1}, 3);
    wheel.schedule({2, 2}, 10);
    CHECK(wheel.next_due() == 11);
    CHECK(expire_at(wheel, 11) == std::vector<WheelEntry>{{1, 1}, {2, 2}});
}

TEST_CASE("what a visit schedules for the current tick waits for the next expire") {
    IdleWheel wheel(8);
    wheel.schedule({1, 0}, 3);
    int visits = 0;
    wheel.expire(3, [&](const WheelEntry& e) {
        ++visits;
        wheel.schedule(e, 3);  // "now" again: must not loop
    });
    CHECK(visits == 1);
    CHECK(wheel.size() == 1);
    CHECK(wheel.next_due() == 4);
    CHECK(expire_at(wheel, 4) == std::vector<WheelEntry>{{1, 0}});
}

TEST_CASE("next_due tracks the earliest non-empty bucket after every change") {
    IdleWheel wheel(16);
    wheel.schedule({1, 0}, 9);
    wheel.schedule({2, 0}, 6);
    CHECK(wheel.next_due() == 6);
    wheel.schedule({3, 0}, 12);
    CHECK(wheel.next_due() == 6);
    expire_at(wheel, 7);
    CHECK(wheel.next_due() == 9);
    expire_at(wheel, 9);
    CHECK(wheel.next_due() == 12);
    // A far deadline: the bucket it shares comes round within one turn.
    wheel.schedule({4, 0}, 9 + 16 * 3 + 2);
    CHECK(wheel.next_due() == 11);
}

TEST_CASE("entries of one tick come out in the order they went in") {
    IdleWheel wheel(4);
    for (uint32_t i = 0; i < 100; ++i) wheel.schedule({i, i}, 2);
    CHECK(wheel.size() == 100);
    const auto seen = expire_at(wheel, 2);
    REQUIRE(seen.size() == 100);
    for (uint32_t i = 0; i < 100; ++i) CHECK(seen[i] == WheelEntry{i, i});
}

TEST_CASE("many connections with mixed timeouts: each is closed exactly at its deadline") {
    // Simulates the worker: connections with last-active stamps and timeouts; some
    // keep transferring until a stop tick. Each must come out exactly once at
    // last_active + timeout, never earlier, with re-bucketing in between.
    IdleWheel wheel(32);
    struct Conn {
        uint64_t last_active;
        uint64_t timeout;
        uint64_t busy_until;  // transfers a byte on every tick before this
        uint64_t closed_at = 0;
    };
    std::vector<Conn> conns;
    for (uint32_t i = 0; i < 200; ++i) {
        conns.push_back({0, 1 + (i * 7) % 90, (i % 3 == 0) ? 10 + (i * 13) % 120 : 0});
        wheel.schedule({i, 0}, conns[i].timeout);
    }
    for (uint64_t now = 1; now <= 400; ++now) {
        for (Conn& c : conns)
            if (c.closed_at == 0 && now < c.busy_until) c.last_active = now;
        wheel.expire(now, [&](const WheelEntry& e) {
            Conn& c = conns[e.slot];
            REQUIRE(c.closed_at == 0);
            const uint64_t due = c.last_active + c.timeout;
            if (due <= now) {
                c.closed_at = now;
            } else {
                wheel.schedule(e, due);
            }
        });
    }
    for (const Conn& c : conns) {
        const uint64_t idle_from = c.busy_until > 0 ? c.busy_until - 1 : 0;
        CHECK(c.closed_at == idle_from + c.timeout);
    }
    CHECK(wheel.size() == 0);
}

TEST_CASE("a slot is in the wheel once: a new connection in a reused slot moves it") {
    // Finding 10: entries of closed connections stayed until their bucket came
    // due (350 s by default), and every bucket kept the capacity of its fullest
    // turn, so the worker's heap grew with every connection served.
    IdleWheel wheel(4096);
    constexpr uint32_t kSlots = 64;
    for (uint32_t n = 0; n < 100000; ++n) {
        // Short connections: each slot reused with a new generation, due 350 s on.
        wheel.schedule({n % kSlots, n / kSlots}, 3500 + n / 1000);
        if (n % 100 == 0) expire_at(wheel, n / 1000);
    }
    CHECK(wheel.size() == kSlots);
    // What comes out is each slot's latest connection, once.
    const auto seen = expire_at(wheel, 100000);
    REQUIRE(seen.size() == kSlots);
    for (const WheelEntry& e : seen) CHECK(e.generation == (100000 - 1 - e.slot) / kSlots);
    CHECK(wheel.size() == 0);
}

TEST_CASE("moving a slot leaves the other entries of its bucket in order") {
    IdleWheel wheel(8);
    for (uint32_t i = 0; i < 5; ++i) wheel.schedule({i, 0}, 3);
    wheel.schedule({2, 1}, 5);  // the middle one
    wheel.schedule({0, 1}, 5);  // the first one
    wheel.schedule({4, 1}, 5);  // the last one
    CHECK(wheel.size() == 5);
    CHECK(expire_at(wheel, 3) == std::vector<WheelEntry>{{1, 0}, {3, 0}});
    CHECK(expire_at(wheel, 5) == std::vector<WheelEntry>{{2, 1}, {0, 1}, {4, 1}});
    CHECK(wheel.size() == 0);
}

TEST_CASE("the bucket count must be a power of two") {
    CHECK_THROWS_AS(IdleWheel(0), std::invalid_argument);
    CHECK_THROWS_AS(IdleWheel(12), std::invalid_argument);
    CHECK_NOTHROW(IdleWheel(1));
}
