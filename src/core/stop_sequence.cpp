#include "stickyd/stop_sequence.hpp"

#include <fmt/core.h>

namespace stickyd {
namespace {

// "5s" or "1500ms": how the config spells it.
std::string spelled(Duration d) {
    return d.count() % 1000 == 0 ? fmt::format("{}s", d.count() / 1000)
                                 : fmt::format("{}ms", d.count());
}

}  // namespace

StopSequence::Action StopSequence::on_signal(Duration delay, Clock::time_point now) {
    if (phase_ != Phase::serving) {
        phase_ = Phase::draining;
        return Action::stop_now;
    }
    if (delay > Duration{0}) {
        phase_ = Phase::withdrawing;
        delay_ = delay;
        drain_at_ = now + delay;
        return Action::withdraw;
    }
    phase_ = Phase::draining;
    return Action::drain;
}

StopSequence::Action StopSequence::on_tick(Clock::time_point now) {
    if (phase_ != Phase::withdrawing || now < drain_at_) return Action::none;
    phase_ = Phase::draining;
    return Action::drain;
}

std::optional<StopSequence::Clock::time_point> StopSequence::deadline() const {
    if (phase_ != Phase::withdrawing) return std::nullopt;
    return drain_at_;
}

std::string StopSequence::status(std::string_view daemon_line) const {
    switch (phase_) {
        case Phase::serving:
            return std::string(daemon_line);
        case Phase::withdrawing:
            return fmt::format("withdrawing (shutdown delay {}): not ready, still accepting; {}",
                               spelled(delay_), daemon_line);
        case Phase::draining:
            return fmt::format("draining: not accepting; {}", daemon_line);
    }
    return std::string(daemon_line);
}

}  // namespace stickyd
