#include "stickyd/ring_report.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <numeric>
#include <set>
#include <stdexcept>

#include "stickyd/hash.hpp"

namespace stickyd {
namespace {

using u128 = unsigned __int128;
constexpr u128 kKeyspace = u128{1} << 64;

double fraction(u128 part) {
    return static_cast<double>(static_cast<long double>(part) / 0x1p64L);
}

std::string target_id(const TargetConfig& t) {
    // The identity rule of build_routing_table and the config loader.
    return t.id.empty() ? t.address.to_string() : t.id;
}

std::string id_list(const TargetGroupConfig& group) {
    std::vector<std::string> ids;
    for (const TargetConfig& t : group.targets) ids.push_back(target_id(t));
    std::sort(ids.begin(), ids.end());
    std::string out;
    for (const std::string& id : ids) out += (out.empty() ? "" : ", ") + id;
    return out;
}

// Calls visit(hash, length) for consecutive pieces of the keyspace that cover it
// exactly once, such that `before` and `after` each map all of a piece's hashes
// the way they map `hash` (for owner and for pick alike).
template <typename Visit>
void for_each_piece(const TargetGroupConfig& group, const Balancer& before, const Balancer& after,
                    Visit visit) {
    if (group.algorithm == Algorithm::maglev) {
        // Entry i holds the hashes congruent to i mod M: floor(2^64 / M) of them,
        // plus one for the first 2^64 mod M entries. (Balancer::shares() counts
        // each entry as 1/M; the two differ by less than M / 2^64.)
        const uint64_t size = group.maglev_table_size;
        const u128 base = kKeyspace / size;
        const u128 extra = kKeyspace % size;
        for (uint64_t i = 0; i < size; ++i) visit(i, base + (i < extra ? 1 : 0));
        return;
    }
    // A ring maps every hash in (p, q] like q, when no point of its own lies in
    // (p, q): the first point at or after each of them is the same. So the union
    // of both rings' points (the layout balancer.hpp documents) cuts the keyspace
    // into pieces that neither ring splits. The last piece wraps through 2^64.
    std::vector<uint64_t> cuts;
    for (const Balancer* b : {&before, &after}) {
        for (const Member& m : b->members()) {
            for (uint32_t r = 0; r < m.weight * kRingPointsPerWeight; ++r) {
                cuts.push_back(hash_point(m.id, r));
            }
        }
    }
    std::sort(cuts.begin(), cuts.end());
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
    for (size_t k = 0; k < cuts.size(); ++k) {
        const u128 length =
            k == 0 ? kKeyspace - cuts.back() + cuts.front() : u128{cuts[k]} - cuts[k - 1];
        visit(cuts[k], length);
    }
}

// Weight-proportional shares over the usable targets (all, when none is: fail-open).
std::vector<double> ideal_shares(const RoutingTable& table) {
    const auto& members = table.balancer->members();
    const bool any_usable =
        std::any_of(table.usable.begin(), table.usable.end(), [](uint8_t u) { return u != 0; });
    double total = 0;
    for (size_t i = 0; i < members.size(); ++i) {
        if (!any_usable || table.usable[i] != 0) total += members[i].weight;
    }
    std::vector<double> out(members.size());
    for (size_t i = 0; i < members.size(); ++i) {
        if (!any_usable || table.usable[i] != 0) out[i] = members[i].weight / total;
    }
    return out;
}

}  // namespace

ShareSummary summarize_shares(const std::vector<double>& shares,
                              const std::vector<uint32_t>& weights) {
    ShareSummary s;
    if (shares.empty()) return s;
    const auto [lo, hi] = std::minmax_element(shares.begin(), shares.end());
    s.min = *lo;
    s.max = *hi;
    s.mean = std::accumulate(shares.begin(), shares.end(), 0.0) / shares.size();
    if (weights.size() != shares.size()) {
        s.max_over_mean = s.mean > 0 ? s.max / s.mean : 0;
        return s;
    }
    const double total = std::accumulate(weights.begin(), weights.end(), 0.0);
    for (size_t i = 0; i < shares.size() && total > 0; ++i) {
        const double expected = weights[i] / total;
        if (expected > 0) s.max_over_mean = std::max(s.max_over_mean, shares[i] / expected);
    }
    return s;
}

GroupChoice choose_group(const Config& config, std::string_view name) {
    std::string names;
    for (const TargetGroupConfig& g : config.target_groups) {
        names += (names.empty() ? "" : ", ") + g.name;
    }
    if (name.empty()) {
        if (config.target_groups.size() == 1) return {&config.target_groups.front(), ""};
        return {nullptr, "the configuration has several target groups (" + names +
                             "); choose one with --group"};
    }
    if (const TargetGroupConfig* g = config.find_group(name)) return {g, ""};
    return {nullptr, "unknown target group \"" + std::string(name) + "\" (groups: " + names + ")"};
}

std::optional<Lookup> lookup_ip(const RoutingTable& table, std::string_view ip) {
    const std::optional<IpKey> key = parse_ip(ip);
    if (!key) return std::nullopt;
    Lookup out;
    out.ip = std::string(ip);
    const unsigned prefix = key->size == 4 ? table.prefix_v4 : table.prefix_v6;
    out.key = to_string(apply_prefix(*key, table.prefix_v4, table.prefix_v6)) + "/" +
              std::to_string(prefix);
    out.hash = table.key_hash(*key);
    out.owner = table.balancer->owner(out.hash);
    out.chosen = table.pick(out.hash, 0);
    return out;
}

Movement simulate_change(const TargetGroupConfig& group, const TargetChange& change) {
    const auto before = build_routing_table(group);

    TargetGroupConfig changed = group;
    std::set<std::string> affected;
    for (const std::string& id : change.remove) {
        auto it = std::find_if(changed.targets.begin(), changed.targets.end(),
                               [&](const TargetConfig& t) { return target_id(t) == id; });
        if (it == changed.targets.end()) {
            throw std::invalid_argument("--remove: unknown target id \"" + id + "\" in group \"" +
                                        group.name + "\" (targets: " + id_list(group) + ")");
        }
        changed.targets.erase(it);
        affected.insert(id);
    }
    for (const TargetConfig& t : change.add) {
        const std::string id = target_id(t);
        for (const TargetConfig& existing : changed.targets) {
            if (target_id(existing) == id) {
                throw std::invalid_argument("--add: target id \"" + id +
                                            "\" already exists in group \"" + group.name +
                                            "\" (remove it first to change it)");
            }
        }
        changed.targets.push_back(t);
        affected.insert(id);
    }
    if (group.targets.empty()) {
        throw std::invalid_argument("group \"" + group.name + "\" has no targets to change");
    }
    if (changed.targets.empty()) {
        throw std::invalid_argument("the change leaves group \"" + group.name +
                                    "\" without targets");
    }

    auto after_table = build_routing_table(changed);
    auto after = std::make_shared<RoutingTable>(*after_table);
    for (const std::string& id : change.down) {
        auto it = std::find_if(after->targets.begin(), after->targets.end(),
                               [&](const RouteTarget& t) { return t.id == id; });
        if (it == after->targets.end()) {
            throw std::invalid_argument("--down: unknown target id \"" + id + "\" in group \"" +
                                        group.name +
                                        "\" after the change (targets: " + id_list(changed) + ")");
        }
        after->usable[static_cast<size_t>(it - after->targets.begin())] = 0;
        affected.insert(id);
    }

    Movement out;
    for (const RouteTarget& t : before->targets) out.ids.push_back(t.id);
    for (const RouteTarget& t : after->targets) out.ids.push_back(t.id);
    std::sort(out.ids.begin(), out.ids.end());
    out.ids.erase(std::unique(out.ids.begin(), out.ids.end()), out.ids.end());
    auto index_of = [&](const std::string& id) {
        return static_cast<uint32_t>(std::lower_bound(out.ids.begin(), out.ids.end(), id) -
                                     out.ids.begin());
    };
    std::vector<uint32_t> from_index, to_index;
    for (const RouteTarget& t : before->targets) from_index.push_back(index_of(t.id));
    for (const RouteTarget& t : after->targets) to_index.push_back(index_of(t.id));

    std::vector<u128> owned_before(out.ids.size()), reached_after(out.ids.size());
    std::map<std::pair<uint32_t, uint32_t>, u128> moves;
    for_each_piece(group, *before->balancer, *after->balancer, [&](uint64_t hash, u128 length) {
        const uint32_t from = from_index[before->balancer->owner(hash)];
        const uint32_t to = to_index[after->pick(hash, 0)];
        owned_before[from] += length;
        reached_after[to] += length;
        if (from != to) moves[{from, to}] += length;
    });

    out.affected.resize(out.ids.size());
    for (size_t i = 0; i < out.ids.size(); ++i) {
        out.affected[i] = affected.count(out.ids[i]) != 0;
        out.before.push_back(fraction(owned_before[i]));
        out.after.push_back(fraction(reached_after[i]));
    }
    u128 moved = 0;
    for (const auto& [edge, length] : moves) {
        out.moves[edge] = fraction(length);
        moved += length;
        if (!out.affected[edge.first] && !out.affected[edge.second]) out.violated = true;
    }
    out.moved = fraction(moved);

    std::vector<double> ideal_before(out.ids.size()), ideal_after(out.ids.size());
    const std::vector<double> b = ideal_shares(*before), a = ideal_shares(*after);
    for (size_t i = 0; i < b.size(); ++i) ideal_before[from_index[i]] = b[i];
    for (size_t i = 0; i < a.size(); ++i) ideal_after[to_index[i]] = a[i];
    for (size_t i = 0; i < out.ids.size(); ++i) {
        out.ideal += std::abs(ideal_before[i] - ideal_after[i]) / 2;
    }
    return out;
}

Disagreement compare_groups(const TargetGroupConfig& a, const TargetGroupConfig& b) {
    Disagreement out;
    auto algorithm = [](const TargetGroupConfig& g) {
        return g.algorithm == Algorithm::maglev
                   ? "maglev (table size " + std::to_string(g.maglev_table_size) + ")"
                   : std::string("ring");
    };
    if (algorithm(a) != algorithm(b)) {
        out.comparable = false;
        out.not_comparable = "algorithm " + algorithm(a) + " against " + algorithm(b);
    } else if (a.stickiness.prefix_v4 != b.stickiness.prefix_v4 ||
               a.stickiness.prefix_v6 != b.stickiness.prefix_v6) {
        out.comparable = false;
        out.not_comparable =
            fmt::format("prefixes /{} /{} against /{} /{}", a.stickiness.prefix_v4,
                        a.stickiness.prefix_v6, b.stickiness.prefix_v4, b.stickiness.prefix_v6);
    }
    for (const TargetGroupConfig* g : {&a, &b}) {
        for (const TargetConfig& t : g->targets) out.ids.push_back(target_id(t));
    }
    std::sort(out.ids.begin(), out.ids.end());
    out.ids.erase(std::unique(out.ids.begin(), out.ids.end()), out.ids.end());
    if (!out.comparable) return out;

    const auto table_a = build_routing_table(a), table_b = build_routing_table(b);
    auto indexes = [&](const RoutingTable& table) {
        std::vector<uint32_t> index;
        for (const RouteTarget& t : table.targets) {
            index.push_back(static_cast<uint32_t>(
                std::lower_bound(out.ids.begin(), out.ids.end(), t.id) - out.ids.begin()));
        }
        return index;
    };
    const std::vector<uint32_t> index_a = indexes(*table_a), index_b = indexes(*table_b);
    std::map<std::pair<uint32_t, uint32_t>, u128> moves;
    for_each_piece(a, *table_a->balancer, *table_b->balancer, [&](uint64_t hash, u128 length) {
        const uint32_t owner_a = table_a->balancer->owner(hash);
        const uint32_t owner_b = table_b->balancer->owner(hash);
        const uint32_t from = index_a[owner_a], to = index_b[owner_b];
        if (from != to ||
            !(table_a->targets[owner_a].address == table_b->targets[owner_b].address)) {
            moves[{from, to}] += length;
        }
    });
    u128 differs = 0;
    for (const auto& [edge, length] : moves) {
        out.moves[edge] = fraction(length);
        differs += length;
    }
    out.differs = fraction(differs);
    return out;
}

ParsedTarget parse_target_spec(std::string_view spec, std::string_view what) {
    // Appended piecewise: g++ 12 at -O3 reports a false -Wrestrict on "\"" + std::string.
    std::string quoted;
    quoted.reserve(what.size() + spec.size() + 3);
    quoted.append(what).append(" \"").append(spec).append(1, '"');
    const size_t eq = spec.find('=');
    if (eq == std::string_view::npos || eq == 0) {
        return {std::nullopt, quoted + ": expected ID=ADDR[,weight=W]"};
    }
    TargetConfig t;
    t.id = std::string(spec.substr(0, eq));
    std::string_view rest = spec.substr(eq + 1);
    const size_t comma = rest.find(',');
    const std::string_view address = rest.substr(0, comma);
    const std::optional<SocketAddress> parsed = SocketAddress::parse(address);
    if (!parsed) {
        return {std::nullopt, quoted + ": \"" + std::string(address) +
                                  "\" is not an address (expected IP:PORT or [IPv6]:PORT)"};
    }
    t.address = *parsed;
    if (comma != std::string_view::npos) {
        const std::string_view option = rest.substr(comma + 1);
        constexpr std::string_view kWeight = "weight=";
        unsigned weight = 0;
        const char* end = option.data() + option.size();
        if (!option.starts_with(kWeight) ||
            std::from_chars(option.data() + kWeight.size(), end, weight).ptr != end || weight < 1 ||
            weight > kMaxWeight) {
            return {std::nullopt, quoted + ": expected weight=W with W in 1.." +
                                      std::to_string(kMaxWeight) + " after the address"};
        }
        t.weight = weight;
        return {t, "", true};
    }
    return {t, ""};
}

}  // namespace stickyd
