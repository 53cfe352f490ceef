// The admin endpoint's documents, as pure functions of plain data: the JSON of
// /status, /ring and /lookup, and the Prometheus text of /metrics. No sockets, no
// threads, no clocks: the server (src/admin.cpp) gathers the inputs, stickyctl
// renders the same /ring and /lookup documents offline from a config file, so what
// an operator sees offline and from a live daemon is computed by the same code.
//
// The JSON shapes are a stable interface (stickyctl and scripts read them). Fields
// are only ever added, never renamed or removed.
//
// GET /status
//   {"version": "0.1.0",
//    "totals": {"accepted", "active", "connect_failures", "retries",
//               "bytes_in" (client -> target), "bytes_out" (target -> client)},
//    "listeners": [{"name", "bind", "target_group", "accepted", "proxy_header_errors",
//                   "no_target" (clients closed: the group had no target to route to),
//                   "refused": {"denied", "not_allowed"} (clients reset by the allow
//                              and deny lists; also counted in accepted)}],
//    "groups": [{"name", "algorithm", "health_checks", "failing_open",
//                "healthy_targets", "targets_in_service" (not drained or removed),
//                "minimum_healthy_targets": {"count", "percentage" (null = off),
//                                            "required" (healthy targets asked now)},
//                "dns_names" (the group's dns "NAME:PORT"s, in the file's order; [] for
//                             static targets only),
//                "dns_error" (string or null: each failing name's reason, "; " between),
//                "routing": null (no table yet) | {"fingerprint", "usable_fingerprint",
//                           "mapping_version", "algorithm", "table_size" (maglev; else null),
//                           "prefix_v4", "prefix_v6",
//                           "targets": [{"id", "address", "weight"}] (the members, by id)},
//                "targets": [{"id", "address", "weight",
//                             "discovered"     (origin is "dns"),
//                             "origin"         ("config"|"dns"|"runtime": the file, DNS
//                                               discovery, or POST /targets),
//                             "state"          ("initial"|"healthy"|"unhealthy"|"draining"),
//                             "deregistration" ("none"|"drained"|"removed"),
//                             "usable"         (may take new connections now),
//                             "share"          (of the keyspace; 0 when not in the ring),
//                             "last_check": null | {"passed", "reason",
//                                                   "at" (RFC 3339 UTC), "duration_seconds"},
//                             "deregistration_deadline": null | RFC 3339 UTC,
//                             "active_connections", "connections", "connect_failures",
//                             "bytes_in", "bytes_out"}]}]}
//
// GET /ring?group=NAME
//   {"group", "algorithm" ("ring"|"maglev"),
//    "points_per_weight" (ring) | "table_size" (maglev, when known),
//    "targets": [{"id", "address", "weight", "points" (ring points, or maglev table
//                 entries when the table size is known), "share", "usable"}],
//    "min", "max", "mean", "max_over_mean"}
//   Shares are exact (Balancer::shares()) and sum to 1. max_over_mean is the largest
//   ratio of a share to its weight-proportional share (max / mean for equal weights).
//
// GET /lookup?group=NAME&ip=ADDR[&ip=ADDR...]
//   {"group", "failing_open",
//    "lookups": [{"ip", "key" (what is hashed, after the prefix mask), "owner",
//                 "owner_address", "chosen", "address" (the chosen target's; both
//                 null when every target is drained), "reason"}]}
//   reason: "owner healthy", "owner usable (initial, not checked yet)",
//           "owner unhealthy -> next usable clockwise", "owner draining -> next usable
//           clockwise", "owner not checked yet -> next usable clockwise", "fail-open: no
//           usable target, routing as if all were healthy", "fail-open: fewer healthy
//           targets than minimum_healthy_targets, routing as if all were healthy", "no
//           target: every target is drained, new connections are refused" ("in table
//           order" for maglev).
//
// GET /ring and GET /lookup of a group without targets (none listed, or a DNS name
// that resolves to nothing): 503 {"error": "group NAME has no targets"}.
//
// Errors (any endpoint): {"error": "one line"} with a 4xx or 5xx status.
#pragma once

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "stickyd/control_view.hpp"
#include "stickyd/routing.hpp"

namespace stickyd {

using Json = nlohmann::ordered_json;

// Daemon-wide counters: every worker's WorkerStats summed.
struct DaemonTotals {
    uint64_t accepted = 0;
    uint64_t active = 0;
    uint64_t connect_failures = 0;
    uint64_t retries = 0;
    uint64_t bytes_in = 0;             // client -> target
    uint64_t bytes_out = 0;            // target -> client
    uint64_t client_ip_fallbacks = 0;  // preserve_client_ip connects from our own address
    uint64_t spliced_flows = 0;        // flows moved to splice (bulk transfers)
};

// One configured listener and its counters, copied out for one document.
struct ListenerCounters {
    std::string name;
    std::string bind;
    std::string target_group;
    uint64_t accepted = 0;
    uint64_t proxy_header_errors = 0;
    uint64_t no_target = 0;
    uint64_t refused_denied = 0;
    uint64_t refused_not_allowed = 0;
};

struct ProcessFds {
    uint64_t open = 0;
    uint64_t max = 0;  // RLIMIT_NOFILE soft limit
};

// Everything /status and /metrics show, gathered at one moment.
struct AdminState {
    std::shared_ptr<const ControlView> control;  // never null
    // False once the control thread failed: `control` is then empty, and /metrics
    // says so in stickyd_control_up rather than by series gone missing.
    bool control_up = true;
    std::vector<ListenerCounters> listeners;
    DaemonTotals totals;
    ProcessFds fds;
};

// "2026-11-23T09:01:02.345Z"
std::string rfc3339_utc(std::chrono::system_clock::time_point t);

Json status_document(const AdminState& state);

// The ring of one routing table. maglev_table_size: 0 when unknown (a live maglev
// group then reports no entry counts).
Json ring_document(const RoutingTable& table, uint32_t maglev_table_size);

// Why a lookup chose what it chose, for a target that is in the table. `targets`
// is the group's live view (empty offline: every target counts as healthy).
struct LookupAnswer {
    std::string ip;
    std::string key;
    uint32_t owner = kNoMember;
    uint32_t chosen = kNoMember;
    std::string reason;
};

// nullopt when `ip` is not an IPv4 or IPv6 address. `failing_open` is the group's
// flag (GroupView): while failing open the daemon's table marks every target in
// service usable, so the table alone does not show it. chosen is kNoMember when
// every target is drained (table.no_target).
std::optional<LookupAnswer> explain_lookup(const RoutingTable& table,
                                           const std::vector<TargetView>& targets,
                                           std::string_view ip, bool failing_open = false);

Json lookup_document(const RoutingTable& table, const std::vector<LookupAnswer>& answers,
                     bool failing_open = false);

// ---------------------------------------------------------------------------------
// Prometheus text exposition format 0.0.4.

inline constexpr std::string_view kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";

using Labels = std::initializer_list<std::pair<std::string_view, std::string_view>>;

class PrometheusText {
  public:
    // Starts a metric family: its HELP and TYPE lines. type: counter, gauge, histogram.
    void family(std::string_view name, std::string_view type, std::string_view help);
    void sample(std::string_view name, Labels labels, uint64_t value);
    void sample(std::string_view name, Labels labels, double value);
    // One histogram series from non-cumulative bucket counts (the last is +Inf).
    void histogram(std::string_view name, Labels labels, std::span<const double> bounds,
                   std::span<const uint64_t> counts, double sum);
    const std::string& text() const { return out_; }

  private:
    void series(std::string_view name, Labels labels, std::string_view extra_name = {},
                std::string_view extra_value = {});
    std::string out_;
};

// A label value as the exposition format wants it: \ " and newline escaped.
std::string escape_label_value(std::string_view value);
// HELP text: \ and newline escaped.
std::string escape_help(std::string_view text);
// Sample values: integers as such, otherwise shortest round-trip, +Inf, -Inf, NaN.
std::string format_value(double value);

std::string metrics_text(const AdminState& state);

}  // namespace stickyd
