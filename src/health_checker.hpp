// The control side of target health: one thread with its own io_uring runs every
// active check of every target group, applies the pure policy (stickyd/health.hpp)
// to their results and to the workers' passive reports, and publishes a new
// routing snapshot into the group's RouteSlot whenever routing must change.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "stickyd/config.hpp"
#include "stickyd/health.hpp"
#include "stickyd/routing.hpp"

namespace stickyd {

class HealthChecker {
  public:
    // slots: every group's RouteSlot, holding its all-usable snapshot. The
    // constructor publishes each group's first health-aware snapshot (passive
    // reporting attached, `store`'s verdicts applied), so workers started after it
    // never see the bare one. on_terminate runs on the checker thread after a
    // snapshot that asks workers to reset connections was published.
    // Throws std::runtime_error with a one-line message if its ring cannot be set up.
    HealthChecker(const Config& config, const std::map<std::string, RouteSlot*>& slots,
                  HealthStore store, std::function<void()> on_terminate);
    ~HealthChecker();
    HealthChecker(const HealthChecker&) = delete;
    HealthChecker& operator=(const HealthChecker&) = delete;

    // Starts the thread; stop() ends it (idempotent) after cancelling every check.
    void start();
    void stop();

    // The state to hand to build_health_store on a reload. Only valid once stopped.
    const HealthStore& store() const;

  private:
    struct Loop;
    std::unique_ptr<Loop> loop_;
    std::thread thread_;
};

}  // namespace stickyd
