// What the control thread shows of its state: a consistent copy of every group's
// targets, health and counters, taken on the control thread and read by the admin
// endpoint, its renderers and stickyctl. Plain values, no I/O: the pure layers that
// render them need not link the control thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <iterator>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "stickyd/config.hpp"
#include "stickyd/health.hpp"
#include "stickyd/routing.hpp"
#include "stickyd/target_set.hpp"

namespace stickyd {

// One target as the admin endpoint shows it (copied out of the control thread).
struct TargetView {
    std::string id;
    SocketAddress address;
    uint32_t weight = 1;
    TargetOrigin origin = TargetOrigin::config;
    HealthState state = HealthState::initial;
    Deregistration deregistration = Deregistration::none;
    bool usable = false;  // may take new connections now (fail-open aside)
    // The last active check: its verdict, why, when it ended and how long it took.
    std::optional<bool> last_check_passed;
    std::string last_check_reason;
    std::chrono::system_clock::time_point last_check_at{};
    std::chrono::microseconds last_check_duration{0};
    // When a drained or removed target's remaining connections will be reset.
    std::optional<std::chrono::system_clock::time_point> deregistration_deadline;
    std::shared_ptr<TargetStats> stats;  // live counters
};

// Health-check durations of one group, as a Prometheus histogram.
struct CheckDurationHistogram {
    // Upper bounds in seconds; the last bucket (+Inf) is implicit.
    static constexpr double kBounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                         0.1,    0.25,  0.5,    1,     2.5,  5,     10};
    static constexpr size_t kBuckets = std::size(kBounds) + 1;
    uint64_t counts[kBuckets] = {};  // not cumulative: counts[i] = in (bound[i-1], bound[i]]
    uint64_t total = 0;
    double sum_seconds = 0;

    void observe(double seconds);
};

struct GroupView {
    std::string name;
    Algorithm algorithm = Algorithm::ring;
    bool health_checks = true;
    bool failing_open = false;
    MinimumHealthyTargets minimum_healthy_targets;
    size_t healthy_targets = 0;                 // in service and usable by their own right
    size_t targets_in_service = 0;              // not drained or removed
    size_t required_healthy = 0;                // what minimum_healthy_targets asks of them now
    std::shared_ptr<const RoutingTable> table;  // the snapshot workers use now
    std::vector<TargetView> targets;            // sorted by id; includes removed ones
    CheckDurationHistogram check_durations;
    std::vector<std::string> dns_names;  // the group's dns names ("NAME:PORT"), file order
    // Why DNS discovery is not all it should be, while that lasts: each failing name's
    // last lookup failure ("; " between them), and an answer the balancer cannot hold.
    std::optional<std::string> dns_error;
};

struct ControlView {
    std::vector<GroupView> groups;  // in config order
    const GroupView* find(std::string_view group) const;
};

// Thrown by every command to a control thread that failed: nothing runs its commands
// any more, so callers get this at once instead of waiting forever. Declared here,
// not with Control, so the admin API can answer it without linking the control
// thread. The message is one line, for logs and replies as it is.
class ControlFailed : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

// The outcome of drain/enable/register/deregister.
struct AdminChange {
    enum class Result : uint8_t {
        ok,
        unknown_group,
        unknown_target,
        ambiguous,      // the id is in several groups
        invalid,        // the request cannot be carried out as it stands (no group named)
        conflict,       // the group already has that id or address, or takes DNS targets
        over_capacity,  // the group's balancer cannot hold the result
    } result;
    std::string message;  // one line: what changed, or what was wrong
};

}  // namespace stickyd
