// The routing snapshot: what a worker needs to choose a target for one client.
// Immutable once published; the control side builds a new one on every change
// (health, drain, reload) and swaps it in atomically.
#pragma once

#include <atomic>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "stickyd/address.hpp"
#include "stickyd/balancer.hpp"
#include "stickyd/config.hpp"

namespace stickyd {

// Live counters of one target, shared by every snapshot that lists it and by every
// connection to it, so a target keeps its numbers across health changes and reloads
// (it is "the same target" when group, id and address match). Written by workers
// with relaxed atomics, read by the admin endpoint.
struct TargetStats {
    std::atomic<uint64_t> active{0};            // connections open now (connecting or relaying)
    std::atomic<uint64_t> connections{0};       // connects attempted, total
    std::atomic<uint64_t> connect_failures{0};  // of those, failed (refused, timed out, ...)
    // Named as their metrics are (stickyd_target_bytes_sent_total, ..._received_total);
    // /status calls them bytes_in and bytes_out, as it does the daemon's totals.
    std::atomic<uint64_t> bytes_sent{0};      // to the target (from its clients)
    std::atomic<uint64_t> bytes_received{0};  // from the target (to its clients)
};

struct RouteTarget {
    std::string id;
    SocketAddress address;
    std::shared_ptr<TargetStats> stats;  // never null in a published table
};

// Passive health: workers report the outcome of every connect to a target here, and
// the control thread reads it. Per target one relaxed atomic counter of consecutive
// failures; a success only writes when the counter is non-zero, so healthy traffic
// touches no shared cache line for writing. The control thread is woken (one
// eventfd write) only when a counter reaches the threshold.
class PassiveHealth {
  public:
    // notify_fd: an eventfd the control thread reads (not owned); -1 = never wake.
    PassiveHealth(size_t targets, unsigned threshold, int notify_fd);

    // Worker side (any thread). err: the positive errno of the failed connect.
    void connect_failed(uint32_t target, int err);
    void connect_succeeded(uint32_t target);

    // Control side: whether the target reached the threshold, with the last error;
    // resets its counter when it did.
    std::optional<int> take_tripped(uint32_t target);
    size_t size() const { return failures_.size(); }
    unsigned threshold() const { return threshold_; }

  private:
    std::vector<std::atomic<uint32_t>> failures_;
    std::vector<std::atomic<int>> last_error_;
    unsigned threshold_;
    int notify_fd_;
};

struct RoutingTable {
    std::string group;
    std::shared_ptr<const Balancer> balancer;
    std::vector<RouteTarget> targets;  // same order as balancer->members()
    std::vector<uint8_t> usable;       // same order; non-zero = may take new connections
    unsigned prefix_v4 = 32;
    unsigned prefix_v6 = 128;
    Duration connect_timeout{2000};
    unsigned connect_retries = 2;
    bool proxy_protocol_v2 = false;   // send a PROXY v2 header first on every connection
    bool preserve_client_ip = false;  // connect to targets from the client's own IP
    // Every member is drained: there is nothing to fail open to, so pick() returns
    // kNoMember instead of the usual walk over all members.
    bool no_target = false;
    // Shared by every snapshot of the group; nullptr when passive checking is off.
    std::shared_ptr<PassiveHealth> passive;

    uint64_t key_hash(const sockaddr* client) const;
    // The same for a bare IP (stickyctl lookup): applies this group's prefixes.
    uint64_t key_hash(const IpKey& client) const;
    // Index into targets for this client's attempt-th try (see Balancer::pick).
    uint32_t pick(uint64_t key_hash, unsigned attempt) const;
};

// Builds the all-usable snapshot of a configured group.
std::shared_ptr<const RoutingTable> build_routing_table(const TargetGroupConfig& group);

// One per target group; workers read, the control thread writes.
class RouteSlot {
  public:
    explicit RouteSlot(std::shared_ptr<const RoutingTable> t) : table_(std::move(t)) {}
    std::shared_ptr<const RoutingTable> load() const {
        return table_.load(std::memory_order_acquire);
    }
    void store(std::shared_ptr<const RoutingTable> t) {
        table_.store(std::move(t), std::memory_order_release);
    }

  private:
    std::atomic<std::shared_ptr<const RoutingTable>> table_;
};

}  // namespace stickyd
