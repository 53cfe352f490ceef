#include "stickyd/routing.hpp"

#include <sys/eventfd.h>

#include <algorithm>

#include "stickyd/hash.hpp"

namespace stickyd {

PassiveHealth::PassiveHealth(size_t targets, unsigned threshold, int notify_fd)
    : failures_(targets), last_error_(targets), threshold_(threshold), notify_fd_(notify_fd) {}

void PassiveHealth::connect_failed(uint32_t target, int err) {
    if (target >= failures_.size()) return;
    last_error_[target].store(err, std::memory_order_relaxed);
    const uint32_t before = failures_[target].fetch_add(1, std::memory_order_relaxed);
    // Wake the control thread once per crossing, not once per failure.
    if (before + 1 == threshold_ && notify_fd_ >= 0) eventfd_write(notify_fd_, 1);
}

void PassiveHealth::connect_succeeded(uint32_t target) {
    if (target >= failures_.size()) return;
    if (failures_[target].load(std::memory_order_relaxed) != 0) {
        failures_[target].store(0, std::memory_order_relaxed);
    }
}

std::optional<int> PassiveHealth::take_tripped(uint32_t target) {
    if (target >= failures_.size()) return std::nullopt;
    if (failures_[target].load(std::memory_order_relaxed) < threshold_) return std::nullopt;
    failures_[target].store(0, std::memory_order_relaxed);
    return last_error_[target].load(std::memory_order_relaxed);
}

uint64_t RoutingTable::key_hash(const sockaddr* client) const {
    return key_hash(ip_key_of(client));
}

uint64_t RoutingTable::key_hash(const IpKey& client) const {
    return hash_ip(apply_prefix(client, prefix_v4, prefix_v6));
}

uint32_t RoutingTable::pick(uint64_t hash, unsigned attempt) const {
    if (!balancer || no_target) return kNoMember;
    return balancer->pick(hash, usable, attempt);
}

std::shared_ptr<const RoutingTable> build_routing_table(const TargetGroupConfig& group) {
    // The identity rule lives here and in the config loader's default: an
    // unnamed target is known by its address, so reordering never remaps it.
    auto id_of = [](const TargetConfig& t) { return t.id.empty() ? t.address.to_string() : t.id; };

    std::vector<Member> members;
    members.reserve(group.targets.size());
    for (const TargetConfig& t : group.targets) members.push_back({id_of(t), t.weight});

    auto table = std::make_shared<RoutingTable>();
    table->group = group.name;
    table->balancer = group.algorithm == Algorithm::maglev
                          ? build_maglev(std::move(members), group.maglev_table_size)
                          : build_ring(std::move(members));

    // The balancer sorted its members by id and rejected duplicates, so sorting
    // the targets the same way lines them up index for index.
    std::vector<const TargetConfig*> sorted;
    sorted.reserve(group.targets.size());
    for (const TargetConfig& t : group.targets) sorted.push_back(&t);
    std::sort(sorted.begin(), sorted.end(),
              [&](const TargetConfig* a, const TargetConfig* b) { return id_of(*a) < id_of(*b); });
    for (const TargetConfig* t : sorted) {
        table->targets.push_back({id_of(*t), t->address, std::make_shared<TargetStats>()});
    }

    table->usable.assign(table->targets.size(), 1);
    table->prefix_v4 = group.stickiness.prefix_v4;
    table->prefix_v6 = group.stickiness.prefix_v6;
    table->connect_timeout = group.connect_timeout;
    table->connect_retries = group.connect_retries;
    table->proxy_protocol_v2 = group.proxy_protocol_v2;
    table->preserve_client_ip = group.preserve_client_ip;
    return table;
}

}  // namespace stickyd
