// A target group's membership over time, as pure logic: which targets exist
// (config ∪ DNS), what a reload or a DNS change does to them, and the routing
// snapshot they make. The control thread (src/control.cpp) owns the state and the
// clock; everything here is a function of its arguments, so every reconciliation
// rule is unit-tested without sockets or threads.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "stickyd/address.hpp"
#include "stickyd/config.hpp"
#include "stickyd/health.hpp"
#include "stickyd/routing.hpp"

namespace stickyd {

using SteadyTime = std::chrono::steady_clock::time_point;

// Why a target is out of rotation, beyond its health.
enum class Deregistration : uint8_t {
    none,
    drained,  // admin drain (can be undone with enable)
    removed,  // gone from the config or from DNS: forgotten once its delay ends
};

std::string_view to_string(Deregistration d);

// Where a target comes from: the configuration file, DNS discovery, or the admin
// API at run time (the NLB's RegisterTargets).
enum class TargetOrigin : uint8_t { config, dns, runtime };

std::string_view to_string(TargetOrigin origin);

// One target the group should have now.
struct DesiredTarget {
    std::string id;
    SocketAddress address;
    uint32_t weight = 1;
    TargetOrigin origin = TargetOrigin::config;

    friend bool operator==(const DesiredTarget&, const DesiredTarget&) = default;
};

// What the admin API changed in a group at run time, laid over its configuration
// file. The file stays the base and the overlay is kept across reloads:
//  - `registered` targets (origin runtime) stay until deregistered;
//  - a file target in `deregistered` (matched by id and address) stays out of the
//    group for as long as the file lists it, or until it is registered again.
// The admin edits below keep it consistent with the file; rebase_overlay keeps it
// so across a reload. Groups with `dns` have none (their membership is DNS's).
struct RuntimeOverlay {
    std::vector<DesiredTarget> registered;    // sorted by id
    std::vector<DesiredTarget> deregistered;  // file targets, sorted by id

    bool empty() const { return registered.empty() && deregistered.empty(); }
    friend bool operator==(const RuntimeOverlay&, const RuntimeOverlay&) = default;
};

// The group's configured targets (less those the overlay deregistered) ∪ the
// overlay's registered ones ∪ the DNS-discovered addresses (id "ip:port", weight
// 1; the union of every name's), sorted by id. A configured target whose id or
// address equals a discovered one wins: the config says more (weight, a deliberate
// id) than a DNS record, and one backend is one target. Discovered duplicates
// collapse to one.
std::vector<DesiredTarget> desired_targets(const TargetGroupConfig& group,
                                           std::span<const SocketAddress> discovered,
                                           const RuntimeOverlay& overlay = {});

// A target to register at run time; no weight means 1, or the file's weight when it
// names a file target the overlay deregistered.
struct Registration {
    std::string id;
    SocketAddress address;
    std::optional<uint32_t> weight;
};

// The outcome of an admin edit of the overlay. Messages are one line naming the
// group and the target.
struct OverlayEdit {
    enum class Outcome : uint8_t {
        changed,        // `overlay` is the group's new overlay
        conflict,       // the group has a target with this id or address, or uses DNS
        over_capacity,  // the group's balancer cannot hold one more
        unknown_target,
    } outcome = Outcome::changed;
    RuntimeOverlay overlay;
    std::string message;
};

// RegisterTargets: `target`'s id and address must be free among the group's
// desired targets, and the result must fit the balancer (capacity_error). A file
// target the overlay deregistered is registered again by its own id and address
// (with its file weight), which lifts the deregistration.
OverlayEdit register_target(const TargetGroupConfig& group,
                            std::span<const SocketAddress> discovered,
                            const RuntimeOverlay& overlay, const Registration& target);

// DeregisterTargets of the desired target `id`: a runtime one leaves the overlay, a
// file one is added to `deregistered`.
OverlayEdit deregister_target(const TargetGroupConfig& group,
                              std::span<const SocketAddress> discovered,
                              const RuntimeOverlay& overlay, const std::string& id);

// The overlay under a reloaded file `next` (the file wins):
//  - a deregistration lapses once the file no longer lists that id at that address;
//  - a registered target is dropped when a file target (one not deregistered) takes
//    its id or its address; with both the same, it simply becomes the file's;
//  - a group that uses DNS, or is gone, keeps no overlay.
// `notes` gets one line per change, for the log.
RuntimeOverlay rebase_overlay(const RuntimeOverlay& overlay, const TargetGroupConfig* next,
                              std::vector<std::string>& notes);

// Why the group's balancer cannot hold these targets (see capacity_error in
// config.hpp), or nullopt if it can.
std::optional<std::string> capacity_error(const TargetGroupConfig& group,
                                          std::span<const DesiredTarget> desired);

// The result of the last active check, kept for the admin view.
struct LastCheck {
    bool passed = false;
    std::string reason;
    std::chrono::system_clock::time_point at{};
    std::chrono::microseconds duration{0};
};

// One target as the control thread keeps it. Identity is (id, address): the same
// id at another address is another backend, so a group may briefly hold both, the
// old one `removed` while the new one starts `initial`.
struct GroupTarget {
    std::string id;
    SocketAddress address;
    uint32_t weight = 1;
    TargetOrigin origin = TargetOrigin::config;
    HealthRecord record;
    Deregistration deregistration = Deregistration::none;
    // While drained or removed: when its remaining connections are reset.
    std::optional<SteadyTime> deadline;
    std::shared_ptr<TargetStats> stats;  // never null
    std::optional<LastCheck> last_check;
    // An opaque number the caller keeps with the target (the control thread's check
    // slot); carried unchanged by reconcile.
    uint32_t handle = 0;

    bool same_backend(const DesiredTarget& d) const { return id == d.id && address == d.address; }
};

// When a deregistration that starts at `now` resets what is left.
SteadyTime deregistration_deadline(const DeregistrationConfig& delay, SteadyTime now);

struct Reconciliation {
    std::vector<GroupTarget> targets;  // sorted by (id, address); removed ones included
    // Indexes into `targets`.
    std::vector<size_t> added;     // new: start initial with fresh stats
    std::vector<size_t> removed;   // newly removed: deregistration started at `now`
    std::vector<size_t> restored;  // were removed, desired again: deregistration cancelled
};

// Moves `current` to `desired`:
//  - a desired target matching a current one (same id and address) keeps its
//    record, stats, last check and handle; weight and origin follow `desired`.
//    A drained one stays drained (with its deadline); a removed one is restored
//    (Deregistration::none, no deadline): re-adding within the delay is a no-op.
//  - a desired target with no match is added: initial, fresh stats, handle 0,
//    routable while initial only when `starting` (see HealthRecord).
//  - a current target that is not desired becomes removed with a deadline from
//    `delay` and `now`; one already removed keeps its deadline, a drained one keeps
//    its earlier deadline (its delay has been running since the drain).
Reconciliation reconcile(std::vector<GroupTarget> current, std::span<const DesiredTarget> desired,
                         const DeregistrationConfig& delay, SteadyTime now, bool starting);

// A group's routing snapshot, and what it means.
struct GroupRouting {
    std::shared_ptr<RoutingTable> table;
    std::vector<size_t> members;  // table index -> index into the group's targets
    size_t usable = 0;            // targets that may take new connections by their own right
    size_t in_service = 0;        // members not drained: what fail-open opens to
    size_t required = 0;          // usable targets the group's minimum asks of in_service
    // Fewer targets usable than the group's minimum_healthy_targets (fails_open in
    // health.hpp): every target in service takes traffic.
    bool failing_open = false;
};

// The snapshot for `targets` with `group`'s settings:
//  - members: every target not removed (drained ones stay members, so their keys
//    come back exactly when they are enabled); a removed target leaves at once and
//    its keys move on as from an unusable target.
//  - usable: healthy enough (routable, or always when health checks are off) and
//    not deregistered.
//  - fail-open: when fewer are usable than group.minimum_healthy_targets asks (by
//    default: none), the members that are not drained all become usable (the whole
//    healthy-or-not group, as on the NLB). When every member is
//    drained there is nothing to fail open to: RoutingTable::no_target is set and
//    pick() returns kNoMember, so new clients are closed rather than sent to a
//    target an operator took out of service.
// `previous` (the group's last snapshot, built with the same algorithm and maglev
// table size, or null) lends its balancer when the members' ids and weights are
// unchanged, and its passive health when their ids and addresses are too, so an
// unchanged group keeps the same objects. `passive` is otherwise left null for the
// caller to create (it needs the control thread's eventfd).
GroupRouting build_group_routing(const TargetGroupConfig& group,
                                 std::span<const GroupTarget> targets,
                                 const RoutingTable* previous);

// Whether a worker would route any client differently (or with other settings)
// under `b` than under `a`: only then is a new snapshot worth publishing.
bool same_routing(const RoutingTable& a, const RoutingTable& b);

}  // namespace stickyd
