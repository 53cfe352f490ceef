#include "admin/render.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <map>

#include "stickyd/address.hpp"
#include "stickyd/fingerprint.hpp"
#include "stickyd/ring_report.hpp"
#include "stickyd/source_filter.hpp"
#include "stickyd_version.h"

namespace stickyd {
namespace {

// A drained or removed target is "draining" whatever its last check said: that is
// the NLB's state for a deregistering target, and it decides routing.
std::string_view effective_state(const TargetView& t) {
    if (t.deregistration != Deregistration::none) return to_string(HealthState::draining);
    return to_string(t.state);
}

double seconds(std::chrono::microseconds d) {
    return static_cast<double>(d.count()) / 1e6;
}

std::map<std::string_view, double> shares_by_id(const RoutingTable* table) {
    std::map<std::string_view, double> out;
    if (table == nullptr || !table->balancer) return out;
    const std::vector<double> shares = table->balancer->shares();
    for (size_t i = 0; i < table->targets.size() && i < shares.size(); ++i) {
        out[table->targets[i].id] = shares[i];
    }
    return out;
}

uint64_t load(const std::shared_ptr<TargetStats>& stats,
              std::atomic<uint64_t> TargetStats::*field) {
    return stats ? ((*stats).*field).load(std::memory_order_relaxed) : 0;
}

Json target_json(const TargetView& t, double share) {
    Json last = nullptr;
    if (t.last_check_passed) {
        last = Json{{"passed", *t.last_check_passed},
                    {"reason", t.last_check_reason},
                    {"at", rfc3339_utc(t.last_check_at)},
                    {"duration_seconds", seconds(t.last_check_duration)}};
    }
    Json deadline = nullptr;
    if (t.deregistration_deadline) deadline = rfc3339_utc(*t.deregistration_deadline);
    return Json{{"id", t.id},
                {"address", t.address.to_string()},
                {"weight", t.weight},
                {"discovered", t.origin == TargetOrigin::dns},
                {"origin", to_string(t.origin)},
                {"state", effective_state(t)},
                {"deregistration", to_string(t.deregistration)},
                {"usable", t.usable},
                {"share", share},
                {"last_check", std::move(last)},
                {"deregistration_deadline", std::move(deadline)},
                {"active_connections", load(t.stats, &TargetStats::active)},
                {"connections", load(t.stats, &TargetStats::connections)},
                {"connect_failures", load(t.stats, &TargetStats::connect_failures)},
                {"bytes_in", load(t.stats, &TargetStats::bytes_sent)},
                {"bytes_out", load(t.stats, &TargetStats::bytes_received)}};
}

bool any_usable(const RoutingTable& table) {
    return std::any_of(table.usable.begin(), table.usable.end(), [](uint8_t u) { return u != 0; });
}

}  // namespace

std::string rfc3339_utc(std::chrono::system_clock::time_point t) {
    using namespace std::chrono;
    const auto ms = duration_cast<milliseconds>(t.time_since_epoch()).count();
    const time_t secs = static_cast<time_t>(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", tm.tm_year + 1900,
                       tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                       ((ms % 1000) + 1000) % 1000);
}

namespace {

// Everything the group's mapping depends on, so that stickyctl compare can rebuild
// another instance's selector and measure where two instances disagree.
Json routing_json(const RoutingTable* table) {
    if (!table || !table->balancer) return nullptr;
    const RoutingInputs inputs = routing_inputs(*table);
    Json targets = Json::array();
    for (const RoutingInputs::Target& t : inputs.targets) {
        targets.push_back({{"id", t.id}, {"address", t.address}, {"weight", t.weight}});
    }
    Json table_size = nullptr;
    if (inputs.table_size != 0) table_size = inputs.table_size;
    return Json{{"fingerprint", routing_fingerprint(inputs)},
                {"usable_fingerprint", usable_fingerprint(*table)},
                {"mapping_version", kMappingVersion},
                {"algorithm", inputs.algorithm},
                {"table_size", std::move(table_size)},
                {"prefix_v4", inputs.prefix_v4},
                {"prefix_v6", inputs.prefix_v6},
                {"targets", std::move(targets)}};
}

Json minimum_healthy_json(const GroupView& g) {
    const MinimumHealthyTargets& m = g.minimum_healthy_targets;
    return Json{{"count", m.count},
                {"percentage", m.percentage ? Json(*m.percentage) : Json(nullptr)},
                {"required", g.required_healthy}};
}

}  // namespace

Json status_document(const AdminState& state) {
    const DaemonTotals& t = state.totals;
    Json listeners = Json::array();
    for (const ListenerCounters& l : state.listeners) {
        listeners.push_back(
            {{"name", l.name},
             {"bind", l.bind},
             {"target_group", l.target_group},
             {"accepted", l.accepted},
             {"proxy_header_errors", l.proxy_header_errors},
             {"no_target", l.no_target},
             {"refused", {{"denied", l.refused_denied}, {"not_allowed", l.refused_not_allowed}}}});
    }
    Json groups = Json::array();
    for (const GroupView& g : state.control->groups) {
        const auto shares = shares_by_id(g.table.get());
        Json targets = Json::array();
        for (const TargetView& target : g.targets) {
            auto it = shares.find(target.id);
            targets.push_back(target_json(target, it == shares.end() ? 0.0 : it->second));
        }
        Json dns_error = nullptr;
        if (g.dns_error) dns_error = *g.dns_error;
        groups.push_back({{"name", g.name},
                          {"algorithm", g.algorithm == Algorithm::maglev ? "maglev" : "ring"},
                          {"health_checks", g.health_checks},
                          {"failing_open", g.failing_open},
                          {"healthy_targets", g.healthy_targets},
                          {"targets_in_service", g.targets_in_service},
                          {"minimum_healthy_targets", minimum_healthy_json(g)},
                          {"dns_names", g.dns_names},
                          {"dns_error", std::move(dns_error)},
                          {"routing", routing_json(g.table.get())},
                          {"targets", std::move(targets)}});
    }
    return Json{{"version", STICKYD_VERSION},
                {"totals",
                 {{"accepted", t.accepted},
                  {"active", t.active},
                  {"connect_failures", t.connect_failures},
                  {"retries", t.retries},
                  {"bytes_in", t.bytes_in},
                  {"bytes_out", t.bytes_out}}},
                {"listeners", std::move(listeners)},
                {"groups", std::move(groups)}};
}

Json ring_document(const RoutingTable& table, uint32_t maglev_table_size) {
    const Balancer& balancer = *table.balancer;
    const bool maglev = balancer.algorithm() == "maglev";
    const std::vector<double> shares = balancer.shares();
    const std::vector<Member>& members = balancer.members();
    std::vector<uint32_t> weights;
    for (const Member& m : members) weights.push_back(m.weight);
    const ShareSummary summary = summarize_shares(shares, weights);

    Json out{{"group", table.group}, {"algorithm", balancer.algorithm()}};
    if (!maglev) {
        out["points_per_weight"] = kRingPointsPerWeight;
    } else if (maglev_table_size != 0) {
        out["table_size"] = maglev_table_size;
    }
    Json targets = Json::array();
    for (size_t i = 0; i < members.size(); ++i) {
        Json t{{"id", members[i].id},
               {"address", table.targets[i].address.to_string()},
               {"weight", members[i].weight}};
        if (!maglev) {
            t["points"] = uint64_t{members[i].weight} * kRingPointsPerWeight;
        } else if (maglev_table_size != 0) {
            // Maglev shares are entries / table size, so this is exact.
            t["points"] = std::llround(shares[i] * maglev_table_size);
        }
        t["share"] = shares[i];
        t["usable"] = i < table.usable.size() && table.usable[i] != 0;
        targets.push_back(std::move(t));
    }
    out["targets"] = std::move(targets);
    out["min"] = summary.min;
    out["max"] = summary.max;
    out["mean"] = summary.mean;
    out["max_over_mean"] = summary.max_over_mean;
    return out;
}

std::optional<LookupAnswer> explain_lookup(const RoutingTable& table,
                                           const std::vector<TargetView>& targets,
                                           std::string_view ip, bool failing_open) {
    std::optional<Lookup> found = lookup_ip(table, ip);
    if (!found) return std::nullopt;
    if (found->owner >= table.targets.size()) {  // no members: nobody owns anything
        return LookupAnswer{found->ip, found->key, kNoMember, kNoMember,
                            "no target: the group has no targets"};
    }
    LookupAnswer out{found->ip, found->key, found->owner, found->chosen, {}};
    const std::string_view next = table.balancer->algorithm() == "maglev"
                                      ? "next usable in table order"
                                      : "next usable clockwise";
    const std::string& owner_id = table.targets[found->owner].id;
    const TargetView* owner = nullptr;
    for (const TargetView& t : targets) {
        if (t.id == owner_id) owner = &t;
    }
    if (table.no_target || found->chosen == kNoMember) {
        out.chosen = kNoMember;
        out.reason = "no target: every target is drained, new connections are refused";
    } else if (failing_open || !any_usable(table)) {
        // The table marks every target in service usable then; the view still says
        // which are fit on their own.
        const bool some_healthy = std::any_of(targets.begin(), targets.end(),
                                              [](const TargetView& t) { return t.usable; });
        out.reason = some_healthy ? "fail-open: fewer healthy targets than "
                                    "minimum_healthy_targets, routing as if all were healthy"
                                  : "fail-open: no usable target, routing as if all were healthy";
    } else if (table.usable[found->owner] != 0) {
        out.reason = owner != nullptr && owner->state == HealthState::initial
                         ? "owner usable (initial, not checked yet)"
                         : "owner healthy";
    } else if (owner == nullptr) {
        out.reason = fmt::format("owner not usable -> {}", next);
    } else if (owner->deregistration != Deregistration::none ||
               owner->state == HealthState::draining) {
        out.reason = fmt::format("owner draining -> {}", next);
    } else if (owner->state == HealthState::unhealthy) {
        out.reason = fmt::format("owner unhealthy -> {}", next);
    } else {
        out.reason = fmt::format("owner not checked yet -> {}", next);
    }
    return out;
}

Json lookup_document(const RoutingTable& table, const std::vector<LookupAnswer>& answers,
                     bool failing_open) {
    Json list = Json::array();
    for (const LookupAnswer& a : answers) {
        const bool chosen = a.chosen < table.targets.size();
        const bool owned = a.owner < table.targets.size();
        list.push_back({{"ip", a.ip},
                        {"key", a.key},
                        {"owner", owned ? Json(table.targets[a.owner].id) : Json(nullptr)},
                        {"owner_address",
                         owned ? Json(table.targets[a.owner].address.to_string()) : Json(nullptr)},
                        {"chosen", chosen ? Json(table.targets[a.chosen].id) : Json(nullptr)},
                        {"address", chosen ? Json(table.targets[a.chosen].address.to_string())
                                           : Json(nullptr)},
                        {"reason", a.reason}});
    }
    const bool open = failing_open || (!table.no_target && !any_usable(table));
    return Json{{"group", table.group}, {"failing_open", open}, {"lookups", std::move(list)}};
}

// ---------------------------------------------------------------------------------

std::string escape_label_value(std::string_view value) {
    std::string out;
    out.reserve(value.size());
    for (char c : value) {
        if (c == '\\') {
            out += "\\\\";
        } else if (c == '"') {
            out += "\\\"";
        } else if (c == '\n') {
            out += "\\n";
        } else {
            out += c;
        }
    }
    return out;
}

std::string escape_help(std::string_view text) {
    std::string out;
    for (char c : text) {
        if (c == '\\') {
            out += "\\\\";
        } else if (c == '\n') {
            out += "\\n";
        } else {
            out += c;
        }
    }
    return out;
}

std::string format_value(double value) {
    if (std::isnan(value)) return "NaN";
    if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
    return fmt::format("{}", value);
}

void PrometheusText::family(std::string_view name, std::string_view type, std::string_view help) {
    out_ += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, escape_help(help), name, type);
}

void PrometheusText::series(std::string_view name, Labels labels, std::string_view extra_name,
                            std::string_view extra_value) {
    out_ += name;
    if (labels.size() == 0 && extra_name.empty()) return;
    out_ += '{';
    bool first = true;
    auto add = [&](std::string_view k, std::string_view v) {
        if (!first) out_ += ',';
        first = false;
        out_ += k;
        out_ += "=\"";
        out_ += escape_label_value(v);
        out_ += '"';
    };
    for (const auto& [k, v] : labels) add(k, v);
    if (!extra_name.empty()) add(extra_name, extra_value);
    out_ += '}';
}

void PrometheusText::sample(std::string_view name, Labels labels, uint64_t value) {
    series(name, labels);
    out_ += fmt::format(" {}\n", value);
}

void PrometheusText::sample(std::string_view name, Labels labels, double value) {
    series(name, labels);
    out_ += ' ';
    out_ += format_value(value);
    out_ += '\n';
}

void PrometheusText::histogram(std::string_view name, Labels labels, std::span<const double> bounds,
                               std::span<const uint64_t> counts, double sum) {
    const std::string bucket = std::string(name) + "_bucket";
    uint64_t cumulative = 0;
    for (size_t i = 0; i < counts.size(); ++i) {
        cumulative += counts[i];
        const std::string le = i < bounds.size() ? format_value(bounds[i]) : "+Inf";
        series(bucket, labels, "le", le);
        out_ += fmt::format(" {}\n", cumulative);
    }
    series(std::string(name) + "_sum", labels);
    out_ += ' ' + format_value(sum) + '\n';
    series(std::string(name) + "_count", labels);
    out_ += fmt::format(" {}\n", cumulative);
}

std::string metrics_text(const AdminState& state) {
    PrometheusText p;
    const auto& groups = state.control->groups;

    p.family("stickyd_build_info", "gauge", "Always 1; the version label says which stickyd runs.");
    p.sample("stickyd_build_info", {{"version", STICKYD_VERSION}}, uint64_t{1});
    p.family("stickyd_control_up", "gauge",
             "1 while the control thread (health checks, membership, reloads) runs; 0 once "
             "it failed, when the group and target series are left out.");
    p.sample("stickyd_control_up", {}, uint64_t{state.control_up});

    // Per target, one family at a time (the format wants each family contiguous).
    struct TargetFamily {
        std::string_view name, type, help;
        uint64_t (*value)(const TargetView&);
    };
    static constexpr TargetFamily kTargetFamilies[] = {
        {"stickyd_target_healthy", "gauge", "1 if the target's health state is healthy, else 0.",
         [](const TargetView& t) -> uint64_t { return effective_state(t) == "healthy"; }},
        {"stickyd_target_usable", "gauge",
         "1 if the target may take new connections now (healthy or still initial, not "
         "draining), else 0.",
         [](const TargetView& t) -> uint64_t { return t.usable; }},
        {"stickyd_target_active_connections", "gauge",
         "Connections to the target open now (connecting or relaying).",
         [](const TargetView& t) { return load(t.stats, &TargetStats::active); }},
        {"stickyd_target_connections_total", "counter", "Connects to the target attempted.",
         [](const TargetView& t) { return load(t.stats, &TargetStats::connections); }},
        {"stickyd_target_connect_failures_total", "counter",
         "Connects to the target that failed (refused, timed out, ...).",
         [](const TargetView& t) { return load(t.stats, &TargetStats::connect_failures); }},
        {"stickyd_target_bytes_sent_total", "counter",
         "Bytes stickyd sent to the target (from its clients).",
         [](const TargetView& t) { return load(t.stats, &TargetStats::bytes_sent); }},
        {"stickyd_target_bytes_received_total", "counter",
         "Bytes stickyd received from the target (sent on to its clients).",
         [](const TargetView& t) { return load(t.stats, &TargetStats::bytes_received); }},
    };
    for (const TargetFamily& f : kTargetFamilies) {
        p.family(f.name, f.type, f.help);
        for (const GroupView& g : groups) {
            for (const TargetView& t : g.targets) {
                const std::string address = t.address.to_string();
                p.sample(f.name, {{"group", g.name}, {"target", t.id}, {"address", address}},
                         f.value(t));
            }
        }
    }
    p.family("stickyd_target_state", "gauge",
             "1 for the target's current health state (the NLB's states), 0 for the others.");
    for (const GroupView& g : groups) {
        for (const TargetView& t : g.targets) {
            const std::string address = t.address.to_string();
            for (HealthState s : {HealthState::initial, HealthState::healthy,
                                  HealthState::unhealthy, HealthState::draining}) {
                p.sample("stickyd_target_state",
                         {{"group", g.name},
                          {"target", t.id},
                          {"address", address},
                          {"state", to_string(s)}},
                         uint64_t{effective_state(t) == to_string(s)});
            }
        }
    }
    p.family("stickyd_group_failing_open", "gauge",
             "1 while fewer targets of the group are healthy than minimum_healthy_targets asks "
             "(by default: none) and it routes to all in service as if they were healthy.");
    for (const GroupView& g : groups) {
        p.sample("stickyd_group_failing_open", {{"group", g.name}}, uint64_t{g.failing_open});
    }
    p.family("stickyd_group_healthy_targets", "gauge",
             "Targets of the group in service (not drained) and healthy.");
    for (const GroupView& g : groups) {
        p.sample("stickyd_group_healthy_targets", {{"group", g.name}}, uint64_t{g.healthy_targets});
    }
    p.family("stickyd_group_minimum_healthy_targets", "gauge",
             "Healthy targets minimum_healthy_targets asks of the group's targets in service "
             "now; below it (and not all healthy) the group fails open.");
    for (const GroupView& g : groups) {
        p.sample("stickyd_group_minimum_healthy_targets", {{"group", g.name}},
                 uint64_t{g.required_healthy});
    }
    p.family("stickyd_target_group_routing_info", "gauge",
             "Always 1; fingerprint digests what decides the group's mapping (equal on "
             "instances that route every client alike).");
    for (const GroupView& g : groups) {
        if (!g.table || !g.table->balancer) continue;
        p.sample("stickyd_target_group_routing_info",
                 {{"group", g.name}, {"fingerprint", routing_fingerprint(*g.table)}}, uint64_t{1});
    }
    p.family("stickyd_health_check_duration_seconds", "histogram",
             "How long active health checks took, per target group.");
    for (const GroupView& g : groups) {
        const CheckDurationHistogram& h = g.check_durations;
        p.histogram("stickyd_health_check_duration_seconds", {{"group", g.name}},
                    CheckDurationHistogram::kBounds, h.counts, h.sum_seconds);
    }

    p.family("stickyd_listener_accepted_connections_total", "counter",
             "Client connections accepted, per configured listener.");
    for (const ListenerCounters& l : state.listeners) {
        p.sample("stickyd_listener_accepted_connections_total",
                 {{"listener", l.name}, {"target_group", l.target_group}}, l.accepted);
    }
    p.family("stickyd_listener_proxy_header_errors_total", "counter",
             "Clients closed for a bad or missing PROXY protocol header, per listener.");
    for (const ListenerCounters& l : state.listeners) {
        p.sample("stickyd_listener_proxy_header_errors_total",
                 {{"listener", l.name}, {"target_group", l.target_group}}, l.proxy_header_errors);
    }
    p.family("stickyd_listener_no_target_closes_total", "counter",
             "Clients closed because the listener's target group had no target to route to "
             "(none configured or discovered, or every one drained).");
    for (const ListenerCounters& l : state.listeners) {
        p.sample("stickyd_listener_no_target_closes_total",
                 {{"listener", l.name}, {"target_group", l.target_group}}, l.no_target);
    }
    p.family("stickyd_listener_refused_connections_total", "counter",
             "Clients reset by the listener's allow and deny lists before routing; reason "
             "\"denied\" (in deny) or \"not_allowed\" (outside a non-empty allow).");
    for (const ListenerCounters& l : state.listeners) {
        for (const auto& [reason, value] :
             {std::pair{SourceVerdict::denied, l.refused_denied},
              std::pair{SourceVerdict::not_allowed, l.refused_not_allowed}}) {
            p.sample("stickyd_listener_refused_connections_total",
                     {{"listener", l.name},
                      {"target_group", l.target_group},
                      {"reason", to_string(reason)}},
                     value);
        }
    }

    const DaemonTotals& t = state.totals;
    p.family("stickyd_active_connections", "gauge", "Client connections open now, all listeners.");
    p.sample("stickyd_active_connections", {}, t.active);
    p.family("stickyd_connect_retries_total", "counter",
             "Target connects retried on the next target after a refusal or timeout.");
    p.sample("stickyd_connect_retries_total", {}, t.retries);
    p.family("stickyd_connect_failures_total", "counter",
             "Target connects that failed, all targets.");
    p.sample("stickyd_connect_failures_total", {}, t.connect_failures);
    p.family("stickyd_preserve_client_ip_fallbacks_total", "counter",
             "preserve_client_ip connects made from stickyd's own address instead of the "
             "client's (IPv4 client and IPv6 target or the other way round, or a refused bind).");
    p.sample("stickyd_preserve_client_ip_fallbacks_total", {}, t.client_ip_fallbacks);
    p.family("stickyd_spliced_flows_total", "counter",
             "Flows (one direction of a connection) moved to splice because they kept "
             "whole receive buffers full; counted each time one moves.");
    p.sample("stickyd_spliced_flows_total", {}, t.spliced_flows);

    p.family("stickyd_process_open_fds", "gauge", "Number of open file descriptors.");
    p.sample("stickyd_process_open_fds", {}, state.fds.open);
    p.family("stickyd_process_max_fds", "gauge", "Maximum number of open file descriptors.");
    p.sample("stickyd_process_max_fds", {}, state.fds.max);
    return p.text();
}

}  // namespace stickyd
