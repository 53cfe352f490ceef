// The routing snapshot: what a worker needs to choose a target for one client.
// Immutable once published; the control side builds a new one on every change
// (health, drain, reload) and swaps it in atomically.
#pragma once

#include <atomic>
#include <memory>
#include <span>
#include <vector>

#include "stickyd/address.hpp"
#include "stickyd/balancer.hpp"
#include "stickyd/config.hpp"

namespace stickyd {

struct RouteTarget {
    std::string id;
    SocketAddress address;
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

    uint64_t key_hash(const sockaddr* client) const;
    // Index into targets for this client's attempt-th try (see Balancer::pick).
    uint32_t pick(uint64_t key_hash, unsigned attempt) const;
};

// Builds the all-usable snapshot of a configured group.
std::shared_ptr<const RoutingTable> build_routing_table(const TargetGroupConfig& group);

// One per target group; workers read, the control thread writes.
class RouteSlot {
public:
    explicit RouteSlot(std::shared_ptr<const RoutingTable> t) : table_(std::move(t)) {}
    std::shared_ptr<const RoutingTable> load() const { return table_.load(std::memory_order_acquire); }
    void store(std::shared_ptr<const RoutingTable> t) {
        table_.store(std::move(t), std::memory_order_release);
    }

private:
    std::atomic<std::shared_ptr<const RoutingTable>> table_;
};

}  // namespace stickyd
