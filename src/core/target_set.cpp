#include "stickyd/target_set.hpp"

#include <fmt/format.h>

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

std::string_view to_string(TargetOrigin origin) {
    switch (origin) {
        case TargetOrigin::config:
            return "config";
        case TargetOrigin::dns:
            return "dns";
        case TargetOrigin::runtime:
            return "runtime";
    }
    return "unknown";
}

namespace {

std::string id_of(const TargetConfig& t) {
    return t.id.empty() ? t.address.to_string() : t.id;
}

// "web-2 (127.0.0.1:9002)", or just the address when that is the id.
std::string name_of(std::string_view id, const SocketAddress& address) {
    const std::string text = address.to_string();
    return id == text ? text : fmt::format("{} ({})", id, text);
}

bool deregistered(const RuntimeOverlay& overlay, std::string_view id,
                  const SocketAddress& address) {
    return std::any_of(overlay.deregistered.begin(), overlay.deregistered.end(),
                       [&](const DesiredTarget& d) { return d.id == id && d.address == address; });
}

void insert_sorted(std::vector<DesiredTarget>& targets, DesiredTarget target) {
    auto at = std::lower_bound(
        targets.begin(), targets.end(), target,
        [](const DesiredTarget& a, const DesiredTarget& b) { return a.id < b.id; });
    targets.insert(at, std::move(target));
}

// dns = "a:80", or dns = ["a:80", "b:8080"], as the file would say it.
std::string dns_setting(const TargetGroupConfig& group) {
    if (group.dns.size() == 1) return fmt::format("\"{}\"", group.dns[0].text());
    std::string names;
    for (const DnsDiscoveryConfig& dns : group.dns) {
        names += fmt::format("{}\"{}\"", names.empty() ? "" : ", ", dns.text());
    }
    return "[" + names + "]";
}

std::string dns_refusal(const TargetGroupConfig& group) {
    return fmt::format(
        "target group '{}' takes its targets from DNS (dns = {}), not from the admin API",
        group.name, dns_setting(group));
}

OverlayEdit refused(OverlayEdit::Outcome outcome, std::string message) {
    OverlayEdit edit;
    edit.outcome = outcome;
    edit.message = std::move(message);
    return edit;
}

// The edit, or over_capacity when the group's balancer cannot hold the result.
OverlayEdit fitting(const TargetGroupConfig& group, std::span<const SocketAddress> discovered,
                    RuntimeOverlay overlay, std::string_view name) {
    if (auto error = capacity_error(group, desired_targets(group, discovered, overlay))) {
        return refused(
            OverlayEdit::Outcome::over_capacity,
            fmt::format("target group '{}' cannot take target {}: {}", group.name, name, *error));
    }
    OverlayEdit edit;
    edit.overlay = std::move(overlay);
    return edit;
}

}  // namespace

std::vector<DesiredTarget> desired_targets(const TargetGroupConfig& group,
                                           std::span<const SocketAddress> discovered,
                                           const RuntimeOverlay& overlay) {
    std::map<std::string, DesiredTarget> by_id;
    for (const TargetConfig& t : group.targets) {
        std::string id = id_of(t);
        if (deregistered(overlay, id, t.address)) continue;
        by_id.insert_or_assign(id, DesiredTarget{id, t.address, t.weight, TargetOrigin::config});
    }
    // The admin edits and rebase_overlay keep these apart from the file's; should
    // one collide anyway, the file wins, as it does on a reload.
    for (const DesiredTarget& t : overlay.registered) {
        by_id.try_emplace(t.id, DesiredTarget{t.id, t.address, t.weight, TargetOrigin::runtime});
    }
    for (const SocketAddress& address : discovered) {
        // An address the group has already (a static target with an id of its own)
        // is that target: one backend, one target.
        const bool known = std::any_of(by_id.begin(), by_id.end(),
                                       [&](const auto& t) { return t.second.address == address; });
        if (known) continue;
        std::string id = address.to_string();
        by_id.try_emplace(id, DesiredTarget{id, address, 1, TargetOrigin::dns});
    }
    std::vector<DesiredTarget> out;
    out.reserve(by_id.size());
    for (auto& [id, target] : by_id) out.push_back(std::move(target));
    return out;
}

OverlayEdit register_target(const TargetGroupConfig& group,
                            std::span<const SocketAddress> discovered,
                            const RuntimeOverlay& overlay, const Registration& target) {
    const std::string name = name_of(target.id, target.address);
    if (!group.dns.empty()) return refused(OverlayEdit::Outcome::conflict, dns_refusal(group));
    for (const DesiredTarget& t : desired_targets(group, discovered, overlay)) {
        if (t.id == target.id) {
            return refused(OverlayEdit::Outcome::conflict,
                           fmt::format("target group '{}' already has a target with id '{}' ({})",
                                       group.name, t.id, t.address.to_string()));
        }
        if (t.address == target.address) {
            return refused(OverlayEdit::Outcome::conflict,
                           fmt::format("target group '{}' already has a target at {} (id '{}')",
                                       group.name, t.address.to_string(), t.id));
        }
    }
    RuntimeOverlay next = overlay;
    // The file's own target, deregistered at run time, comes back as the file has it.
    auto file = std::find_if(group.targets.begin(), group.targets.end(), [&](const auto& t) {
        return id_of(t) == target.id && t.address == target.address;
    });
    if (file != group.targets.end()) {
        if (target.weight && *target.weight != file->weight) {
            return refused(OverlayEdit::Outcome::conflict,
                           fmt::format("target group '{}': target {} is the configuration file's, "
                                       "with weight {}; register it again without a weight or "
                                       "with weight {}, or change the file",
                                       group.name, name, file->weight, file->weight));
        }
        std::erase_if(next.deregistered, [&](const DesiredTarget& d) {
            return d.id == target.id && d.address == target.address;
        });
    } else {
        insert_sorted(next.registered,
                      DesiredTarget{target.id, target.address, target.weight.value_or(1),
                                    TargetOrigin::runtime});
    }
    return fitting(group, discovered, std::move(next), name);
}

OverlayEdit deregister_target(const TargetGroupConfig& group,
                              std::span<const SocketAddress> discovered,
                              const RuntimeOverlay& overlay, const std::string& id) {
    if (!group.dns.empty()) {
        return refused(OverlayEdit::Outcome::conflict,
                       dns_refusal(group) + "; drain a target to take it out of service");
    }
    for (const DesiredTarget& t : desired_targets(group, discovered, overlay)) {
        if (t.id != id) continue;
        OverlayEdit edit;
        edit.overlay = overlay;
        if (t.origin == TargetOrigin::runtime) {
            std::erase_if(edit.overlay.registered,
                          [&](const DesiredTarget& r) { return r.id == id; });
        } else {
            insert_sorted(edit.overlay.deregistered, t);
        }
        return edit;
    }
    return refused(OverlayEdit::Outcome::unknown_target,
                   fmt::format("target group '{}' has no target '{}'", group.name, id));
}

RuntimeOverlay rebase_overlay(const RuntimeOverlay& overlay, const TargetGroupConfig* next,
                              std::vector<std::string>& notes) {
    if (next == nullptr || overlay.empty()) return {};
    if (!next->dns.empty()) {
        notes.push_back(fmt::format(
            "target group '{}' now takes its targets from DNS: {} registered and {} deregistered "
            "at run time go back to what DNS and the file say",
            next->name, overlay.registered.size(), overlay.deregistered.size()));
        return {};
    }
    RuntimeOverlay out;
    for (const DesiredTarget& d : overlay.deregistered) {
        auto listed = std::find_if(next->targets.begin(), next->targets.end(), [&](const auto& t) {
            return id_of(t) == d.id && t.address == d.address;
        });
        if (listed == next->targets.end()) {
            notes.push_back(fmt::format(
                "target group '{}': target {}, deregistered at run time, is no longer in the "
                "configuration file; listing it again registers it",
                next->name, name_of(d.id, d.address)));
            continue;
        }
        out.deregistered.push_back({d.id, d.address, listed->weight, TargetOrigin::config});
    }
    for (const DesiredTarget& r : overlay.registered) {
        auto taken = std::find_if(next->targets.begin(), next->targets.end(), [&](const auto& t) {
            return (id_of(t) == r.id || t.address == r.address) &&
                   !deregistered(out, id_of(t), t.address);
        });
        if (taken == next->targets.end()) {
            out.registered.push_back(r);
        } else if (id_of(*taken) == r.id && taken->address == r.address) {
            notes.push_back(
                fmt::format("target group '{}': target {}, registered at run time, is now in the "
                            "configuration file, which keeps it",
                            next->name, name_of(r.id, r.address)));
        } else {
            notes.push_back(fmt::format(
                "target group '{}': target {}, registered at run time, deregisters: the "
                "configuration file's target {} takes its {}",
                next->name, name_of(r.id, r.address), name_of(id_of(*taken), taken->address),
                id_of(*taken) == r.id ? "id" : "address"));
        }
    }
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
        t.origin = it->origin;
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
        t.origin = desired[i].origin;
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
