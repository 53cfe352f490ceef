// Offline questions about a group's selector, answered exactly from the tables
// (never by sampling): how the keyspace is shared, who gets a client IP, and what
// a change of targets would move. Pure: stickyctl and the tests use it, the
// daemon does not.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "stickyd/config.hpp"
#include "stickyd/routing.hpp"

namespace stickyd {

struct ShareSummary {
    double min = 0;
    double max = 0;
    double mean = 0;
    // The largest ratio of a target's share to the share its weight asks for
    // (weight / total weight): how far the busiest target is above its fair share.
    // With equal weights that is max / mean; with unequal ones max / mean would
    // mostly measure the weights.
    double max_over_mean = 0;
};
// `weights` parallel to `shares`; empty means all equal.
ShareSummary summarize_shares(const std::vector<double>& shares,
                              const std::vector<uint32_t>& weights = {});

// The group called `name`, or the only one when `name` is empty; the error says
// which names exist.
struct GroupChoice {
    const TargetGroupConfig* group = nullptr;
    std::string error;
};
GroupChoice choose_group(const Config& config, std::string_view name);

struct Lookup {
    std::string ip;   // as given
    std::string key;  // the masked key that is hashed, e.g. "10.1.2.0/24"
    uint64_t hash = 0;
    uint32_t owner = kNoMember;   // index into the table's targets
    uint32_t chosen = kNoMember;  // what a new connection gets with table.usable now
};
// nullopt if `ip` is not a bare IPv4 or IPv6 address.
std::optional<Lookup> lookup_ip(const RoutingTable& table, std::string_view ip);

// A change to a group, as stickyctl simulate takes it.
struct TargetChange {
    std::vector<std::string> remove;  // target ids
    std::vector<TargetConfig> add;    // id set; address and weight as configured
    std::vector<std::string> down;    // target ids still present, made unusable
};

struct Movement {
    std::vector<std::string> ids;  // every id before or after the change, sorted
    std::vector<double> before;    // share owned before, per id (0 if absent)
    std::vector<double> after;     // share that new connections reach after, per id
    // (from, to) -> share of the keyspace whose target changes from `from` to `to`.
    std::map<std::pair<uint32_t, uint32_t>, double> moves;
    double moved = 0;  // sum of moves
    // The least any selector must move to keep shares proportional to weight: the
    // distance between the weight-proportional distributions before and after.
    double ideal = 0;
    std::vector<bool> affected;  // per id: removed, added or down
    // A move between two unaffected targets (consistent hashing promises none).
    bool violated = false;
};

// Applies `change` to `group` and compares the two selectors over the whole
// keyspace. Throws std::invalid_argument naming an unknown, duplicate or
// conflicting id, or a group left without targets.
Movement simulate_change(const TargetGroupConfig& group, const TargetChange& change);

// Two instances' versions of one group (stickyctl compare), over the whole keyspace
// with every target usable: which keys the two send to different backends.
struct Disagreement {
    // Same algorithm, maglev table size and prefixes: otherwise clients are keyed
    // or laid out differently and (almost) every one of them may differ.
    bool comparable = true;
    std::string not_comparable;    // why not, one line
    std::vector<std::string> ids;  // every id in either group, sorted
    // (owner in a, owner in b) -> share of the keyspace they disagree on. A pair
    // (i, i) is one id with a different address in each: same id, other backend.
    std::map<std::pair<uint32_t, uint32_t>, double> moves;
    double differs = 0;  // sum of moves
};
// Throws std::invalid_argument if either group cannot be built (no targets).
Disagreement compare_groups(const TargetGroupConfig& a, const TargetGroupConfig& b);

// "ID=ADDR[,weight=W]" as --add (and stickyctl register) take it; the error starts
// with `what` and names what is wrong.
struct ParsedTarget {
    std::optional<TargetConfig> target;
    std::string error;
    bool weight_given = false;
};
ParsedTarget parse_target_spec(std::string_view spec, std::string_view what = "--add");

}  // namespace stickyd
