#include "stickyd/stop_sequence.hpp"

#include <doctest/doctest.h>

using namespace stickyd;
using namespace std::chrono_literals;
using Phase = StopSequence::Phase;
using Action = StopSequence::Action;

namespace {
const StopSequence::Clock::time_point t0{std::chrono::seconds{1000}};
}

TEST_CASE("without a delay a stop signal drains at once") {
    StopSequence s;
    CHECK(s.on_signal(Duration{0}, t0) == Action::drain);
    CHECK(s.phase() == Phase::draining);
    CHECK_FALSE(s.deadline().has_value());
    CHECK(s.status("1 listeners") == "draining: not accepting; 1 listeners");
}

TEST_CASE("with a delay it withdraws, then drains when the delay is up") {
    StopSequence s;
    CHECK(s.status("x") == "x");
    CHECK(s.on_signal(Duration{5000}, t0) == Action::withdraw);
    CHECK(s.phase() == Phase::withdrawing);
    REQUIRE(s.deadline().has_value());
    CHECK(*s.deadline() == t0 + 5s);
    CHECK(s.status("x") == "withdrawing (shutdown delay 5s): not ready, still accepting; x");
    CHECK(s.on_tick(t0 + 4999ms) == Action::none);
    CHECK(s.phase() == Phase::withdrawing);
    CHECK(s.on_tick(t0 + 5s) == Action::drain);
    CHECK(s.phase() == Phase::draining);
    CHECK(s.on_tick(t0 + 10s) == Action::none);
}

TEST_CASE("a second signal stops at once, while withdrawing or draining") {
    StopSequence withdrawing;
    withdrawing.on_signal(Duration{1500}, t0);
    CHECK(withdrawing.status("x").starts_with("withdrawing (shutdown delay 1500ms)"));
    CHECK(withdrawing.on_signal(Duration{1500}, t0 + 1s) == Action::stop_now);
    CHECK(withdrawing.phase() == Phase::draining);
    CHECK(withdrawing.on_tick(t0 + 2s) == Action::none);

    StopSequence draining;
    draining.on_signal(Duration{0}, t0);
    CHECK(draining.on_signal(Duration{0}, t0) == Action::stop_now);
}

TEST_CASE("ticks before any signal do nothing") {
    StopSequence s;
    CHECK(s.on_tick(t0) == Action::none);
    CHECK(s.phase() == Phase::serving);
}
