#include "stickyd/target_set.hpp"

#include <algorithm>
#include <map>
#include <tuple>

namespace stickyd {

std::string_view to_string(Deregistration d) {
    switch (d) {
        case Deregistration::none:
            return "none";
        case Deregistration::drained:
            return "drained";
        case Deregistration::removed:
            return "removed";
    }
    return "unknown";
}

std::vector<DesiredTarget> desired_targets(const TargetGroupConfig& group,
                                           std::span<const SocketAddress> discovered) {
    std::map<std::string, DesiredTarget> by_id;
    for (const TargetConfig& t : group.targets) {
        std::string id = t.id.empty() ? t.address.to_string() : t.id;
        by_id.insert_or_assign(id, DesiredTarget{id, t.address, t.weight, false});
    }
    for (const SocketAddress& address : discovered) {
        std::string id = address.to_string();
        by_id.try_emplace(id, DesiredTarget{id, address, 1, true});
    }
    std::vector<DesiredTarget> out;
    out.reserve(by_id.size());
    for (auto& [id, target] : by_id) out.push_back(std::move(target));
    return out;
}

std::optional<std::string> capacity_error(const TargetGroupConfig& group,
                                          std::span<const DesiredTarget> desired) {
    uint64_t weight = 0;
    for (const DesiredTarget& t : desired) weight += t.weight;
    return capacity_error(group, desired.size(), weight);
}

SteadyTime deregistration_deadline(const DeregistrationConfig& delay, SteadyTime now) {
    return delay.connection_termination ? now : now + delay.timeout;
}

namespace {

auto order_key(const GroupTarget& t) {
    return std::make_tuple(std::string_view(t.id), t.address.to_string());
}

}  // namespace

Reconciliation reconcile(std::vector<GroupTarget> current, std::span<const DesiredTarget> desired,
                         const DeregistrationConfig& delay, SteadyTime now, bool starting) {
    enum class Change : uint8_t { kept, added, removed, restored };
    std::vector<std::pair<GroupTarget, Change>> next;
    next.reserve(current.size() + desired.size());
    std::vector<uint8_t> matched(desired.size(), 0);
    for (GroupTarget& t : current) {
        auto it = std::find_if(desired.begin(), desired.end(),
                               [&](const DesiredTarget& d) { return t.same_backend(d); });
        if (it == desired.end()) {
            Change change = Change::kept;
            if (t.deregistration != Deregistration::removed) {
                if (!t.deadline) t.deadline = deregistration_deadline(delay, now);
                t.deregistration = Deregistration::removed;
                change = Change::removed;
            }
            next.emplace_back(std::move(t), change);
            continue;
        }
        matched[static_cast<size_t>(it - desired.begin())] = 1;
        t.weight = it->weight;
        t.discovered = it->discovered;
        Change change = Change::kept;
        if (t.deregistration == Deregistration::removed) {
            t.deregistration = Deregistration::none;
            t.deadline.reset();
            change = Change::restored;
        }
        next.emplace_back(std::move(t), change);
    }
    for (size_t i = 0; i < desired.size(); ++i) {
        if (matched[i]) continue;
        GroupTarget t;
        t.id = desired[i].id;
        t.address = desired[i].address;
        t.weight = desired[i].weight;
        t.discovered = desired[i].discovered;
        t.record.routable_while_initial = starting;
        t.stats = std::make_shared<TargetStats>();
        next.emplace_back(std::move(t), Change::added);
    }
    std::sort(next.begin(), next.end(),
              [](const auto& a, const auto& b) { return order_key(a.first) < order_key(b.first); });

    Reconciliation out;
    out.targets.reserve(next.size());
    for (auto& [target, change] : next) {
        const size_t index = out.targets.size();
        if (change == Change::added) out.added.push_back(index);
        if (change == Change::removed) out.removed.push_back(index);
        if (change == Change::restored) out.restored.push_back(index);
        out.targets.push_back(std::move(target));
    }
    return out;
}

GroupRouting build_group_routing(const TargetGroupConfig& group,
                                 std::span<const GroupTarget> targets,
                                 const RoutingTable* previous) {
    GroupRouting out;
    auto table = std::make_shared<RoutingTable>();
    table->group = group.name;
    table->prefix_v4 = group.stickiness.prefix_v4;
    table->prefix_v6 = group.stickiness.prefix_v6;
    table->connect_timeout = group.connect_timeout;
    table->connect_retries = group.connect_retries;
    table->proxy_protocol_v2 = group.proxy_protocol_v2;
    table->preserve_client_ip = group.preserve_client_ip;

    std::vector<Member> members;
    size_t drained = 0;
    for (size_t i = 0; i < targets.size(); ++i) {
        const GroupTarget& t = targets[i];
        if (t.deregistration == Deregistration::removed) continue;
        out.members.push_back(i);
        members.push_back({t.id, t.weight});
        table->targets.push_back({t.id, t.address, t.stats});
        const bool healthy = !group.health_check.enabled || routable(t.record);
        const bool usable = healthy && t.deregistration == Deregistration::none;
        table->usable.push_back(usable ? 1 : 0);
        out.usable += usable ? 1 : 0;
        drained += t.deregistration == Deregistration::drained ? 1 : 0;
    }
    out.in_service = table->targets.size() - drained;
    out.required = required_healthy(group.minimum_healthy_targets, out.in_service);
    // The workers' reset-on-snapshot counters are being replaced by
    // Worker::terminate; the field must still line up with the targets.

    if (!table->targets.empty() && drained == table->targets.size()) {
        table->no_target = true;
    } else if (fails_open(group.minimum_healthy_targets, out.usable, out.in_service)) {
        out.failing_open = true;
        for (size_t m = 0; m < out.members.size(); ++m) {
            const bool in_service = targets[out.members[m]].deregistration == Deregistration::none;
            table->usable[m] = in_service ? 1 : 0;
        }
    }

    const bool same_members =
        previous != nullptr && previous->balancer != nullptr &&
        previous->balancer->members().size() == members.size() &&
        std::equal(
            members.begin(), members.end(), previous->balancer->members().begin(),
            [](const Member& a, const Member& b) { return a.id == b.id && a.weight == b.weight; });
    if (same_members) {
        table->balancer = previous->balancer;
        const bool same_addresses =
            previous->targets.size() == table->targets.size() &&
            std::equal(table->targets.begin(), table->targets.end(), previous->targets.begin(),
                       [](const RouteTarget& a, const RouteTarget& b) {
                           return a.id == b.id && a.address == b.address;
                       });
        if (same_addresses) table->passive = previous->passive;
    } else if (!members.empty()) {
        table->balancer = group.algorithm == Algorithm::maglev
                              ? build_maglev(std::move(members), group.maglev_table_size)
                              : build_ring(std::move(members));
    }
    out.table = std::move(table);
    return out;
}

bool same_routing(const RoutingTable& a, const RoutingTable& b) {
    auto same_target = [](const RouteTarget& x, const RouteTarget& y) {
        return x.id == y.id && x.address == y.address && x.stats == y.stats;
    };
    return a.group == b.group && a.balancer == b.balancer && a.usable == b.usable &&
           a.targets.size() == b.targets.size() &&
           std::equal(a.targets.begin(), a.targets.end(), b.targets.begin(), same_target) &&
           a.prefix_v4 == b.prefix_v4 && a.prefix_v6 == b.prefix_v6 &&
           a.connect_timeout == b.connect_timeout && a.connect_retries == b.connect_retries &&
           a.proxy_protocol_v2 == b.proxy_protocol_v2 &&
           a.preserve_client_ip == b.preserve_client_ip && a.no_target == b.no_target &&
           a.passive == b.passive;
}

}  // namespace stickyd
