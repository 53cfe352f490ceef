// What a stop signal does, as a pure state machine the signal loop drives. With a
// shutdown_delay the daemon first withdraws: /ready turns 503 so routers and load
// balancers stop sending new clients, while the listeners keep accepting the ones
// still in flight to it. When the delay is up it drains (stops accepting; open
// connections get shutdown_grace). A signal during either phase stops at once.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "stickyd/config.hpp"

namespace stickyd {

class StopSequence {
  public:
    using Clock = std::chrono::steady_clock;
    enum class Phase { serving, withdrawing, draining };
    enum class Action {
        none,
        withdraw,  // turn not-ready, keep accepting
        drain,     // turn not-ready (if not yet), stop accepting, wait up to the grace
        stop_now,  // close every connection now
    };

    // SIGTERM or SIGINT at `now`; `delay` is the configured shutdown_delay.
    Action on_signal(Duration delay, Clock::time_point now);
    // The signal loop's wake-up: drains once the withdraw window is over.
    Action on_tick(Clock::time_point now);

    Phase phase() const { return phase_; }
    // When on_tick must run next at the latest (the end of the withdraw window).
    std::optional<Clock::time_point> deadline() const;
    // STATUS= for systemd: the phase, then the daemon's own line.
    std::string status(std::string_view daemon_line) const;

  private:
    Phase phase_ = Phase::serving;
    Duration delay_{0};
    Clock::time_point drain_at_{};
};

}  // namespace stickyd
