// stickyctl: answers "who gets this client", "how is the keyspace shared" and
// "what would this change move" from a configuration file, computed exactly from
// the same tables the daemon builds (see src/ring_report.hpp).
#include <fmt/core.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "src/ring_report.hpp"
#include "stickyd/config.hpp"
#include "stickyd/routing.hpp"
#include "stickyd_version.h"

namespace stickyd {
namespace {

using Json = nlohmann::ordered_json;

constexpr int kExitOk = 0;
constexpr int kExitError = 1;
constexpr int kExitUsage = 2;
constexpr size_t kBarWidth = 40;

// Thrown for anything the user must fix; main prints it as one line.
struct UserError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Common {
    std::string config_path;
    std::string group;
    bool json = false;
};

void add_common(CLI::App* command, Common& common) {
    command->add_option("--config,-c", common.config_path, "stickyd configuration file")
        ->required();
    command->add_option("--group,-g", common.group,
                        "Target group (default: the only one in the configuration)");
    command->add_flag("--json", common.json, "Print JSON for scripts instead of tables");
}

const TargetGroupConfig& load_group(const Common& common, Config& storage) {
    ConfigResult loaded = load_config_file(common.config_path);
    if (auto* error = std::get_if<ConfigError>(&loaded)) throw UserError(error->to_string());
    storage = std::move(std::get<Config>(loaded));
    const GroupChoice choice = choose_group(storage, common.group);
    if (!choice.group) throw UserError(choice.error);
    return *choice.group;
}

std::string percent(double share) {
    return fmt::format("{:.3f}%", share * 100);
}

// A horizontal bar in eighths of a character, scaled so `full` fills kBarWidth.
std::string bar(double value, double full) {
    static constexpr const char* kEighths[] = {"", "▏", "▎", "▍", "▌", "▋", "▊", "▉"};
    const auto eighths =
        full > 0 ? static_cast<size_t>(std::lround(value / full * kBarWidth * 8)) : size_t{0};
    std::string out;
    for (size_t i = 0; i < eighths / 8; ++i) out += "█";
    return out + kEighths[eighths % 8];
}

size_t id_width(const std::vector<std::string>& ids, size_t heading) {
    size_t width = heading;
    for (const std::string& id : ids) width = std::max(width, id.size());
    return width;
}

std::string describe_algorithm(const TargetGroupConfig& group) {
    if (group.algorithm == Algorithm::maglev) {
        return fmt::format("maglev, table size {}", group.maglev_table_size);
    }
    return fmt::format("ring, {} points per unit of weight", kRingPointsPerWeight);
}

int run_ring(const Common& common) {
    Config config;
    const TargetGroupConfig& group = load_group(common, config);
    const auto table = build_routing_table(group);
    const std::vector<double> shares = table->balancer->shares();
    const std::vector<Member>& members = table->balancer->members();
    const ShareSummary summary = summarize_shares(shares);

    if (common.json) {
        Json out{{"group", group.name}, {"algorithm", table->balancer->algorithm()}};
        if (group.algorithm == Algorithm::maglev) {
            out["table_size"] = group.maglev_table_size;
        } else {
            out["points_per_weight"] = kRingPointsPerWeight;
        }
        Json targets = Json::array();
        for (size_t i = 0; i < members.size(); ++i) {
            targets.push_back({{"id", members[i].id},
                               {"address", table->targets[i].address.to_string()},
                               {"weight", members[i].weight},
                               {"share", shares[i]}});
        }
        out["targets"] = std::move(targets);
        out["min"] = summary.min;
        out["max"] = summary.max;
        out["mean"] = summary.mean;
        out["max_over_mean"] = summary.max_over_mean;
        fmt::print("{}\n", out.dump(2));
        return kExitOk;
    }

    std::vector<std::string> ids;
    for (const Member& m : members) ids.push_back(m.id);
    const size_t w = id_width(ids, 6);
    fmt::print("group {} ({}), {} targets\n\n", group.name, describe_algorithm(group),
               members.size());
    fmt::print("{:<{}}  {:>6}  {:>8}\n", "TARGET", w, "WEIGHT", "SHARE");
    for (size_t i = 0; i < members.size(); ++i) {
        fmt::print("{:<{}}  {:>6}  {:>8}  {}\n", members[i].id, w, members[i].weight,
                   percent(shares[i]), bar(shares[i], summary.max));
    }
    fmt::print("\nmin {}  max {}  max/mean {:.4f}\n", percent(summary.min), percent(summary.max),
               summary.max_over_mean);
    return kExitOk;
}

int run_lookup(const Common& common, const std::vector<std::string>& ips) {
    Config config;
    const TargetGroupConfig& group = load_group(common, config);
    const auto table = build_routing_table(group);

    // Every IP is checked before anything is printed: no half answers.
    std::vector<Lookup> lookups;
    for (const std::string& ip : ips) {
        std::optional<Lookup> found = lookup_ip(*table, ip);
        if (!found) {
            throw UserError(fmt::format(
                "lookup: \"{}\" is not an IP address (expected e.g. 192.0.2.1 or 2001:db8::1)",
                ip));
        }
        lookups.push_back(std::move(*found));
    }

    if (common.json) {
        Json list = Json::array();
        for (const Lookup& l : lookups) {
            list.push_back({{"ip", l.ip},
                            {"key", l.key},
                            {"owner", table->targets[l.owner].id},
                            {"chosen", table->targets[l.chosen].id},
                            {"address", table->targets[l.chosen].address.to_string()}});
        }
        fmt::print("{}\n", Json{{"group", group.name}, {"lookups", std::move(list)}}.dump(2));
        return kExitOk;
    }

    std::vector<std::string> ids, shown_ips, keys;
    for (const Lookup& l : lookups) {
        ids.push_back(table->targets[l.owner].id);
        shown_ips.push_back(l.ip);
        keys.push_back(l.key);
    }
    const size_t wi = id_width(shown_ips, 2), wk = id_width(keys, 3), wt = id_width(ids, 6);
    fmt::print("{:<{}}  {:<{}}  {:<{}}  {:<{}}  {}\n", "IP", wi, "KEY", wk, "OWNER", wt, "CHOSEN",
               wt, "ADDRESS");
    for (const Lookup& l : lookups) {
        const RouteTarget& chosen = table->targets[l.chosen];
        fmt::print("{:<{}}  {:<{}}  {:<{}}  {:<{}}  {}\n", l.ip, wi, l.key, wk,
                   table->targets[l.owner].id, wt, chosen.id, wt, chosen.address.to_string());
    }
    return kExitOk;
}

struct SimulateArgs {
    std::vector<std::string> remove;
    std::vector<std::string> add;
    std::vector<std::string> down;
};

int run_simulate(const Common& common, const SimulateArgs& args) {
    Config config;
    const TargetGroupConfig& group = load_group(common, config);

    TargetChange change;
    change.remove = args.remove;
    change.down = args.down;
    for (const std::string& spec : args.add) {
        ParsedTarget parsed = parse_target_spec(spec);
        if (!parsed.target) throw UserError(parsed.error);
        change.add.push_back(std::move(*parsed.target));
    }
    if (change.remove.empty() && change.add.empty() && change.down.empty()) {
        throw UserError("simulate: nothing to simulate; give --remove, --add or --down");
    }
    Movement m;
    try {
        m = simulate_change(group, change);
    } catch (const std::invalid_argument& e) {
        throw UserError(e.what());
    }

    auto role = [&](const std::string& id) -> std::string {
        auto has = [&](const std::vector<std::string>& list) {
            return std::find(list.begin(), list.end(), id) != list.end();
        };
        const bool added = std::any_of(change.add.begin(), change.add.end(),
                                       [&](const TargetConfig& t) { return t.id == id; });
        if (has(change.remove) && added) return "replaced";
        if (has(change.remove)) return "removed";
        if (added) return "added";
        if (has(change.down)) return "down";
        return "";
    };
    const char* check = m.violated ? "VIOLATED" : "OK";

    if (common.json) {
        Json moves = Json::array();
        for (const auto& [edge, share] : m.moves) {
            moves.push_back(
                {{"from", m.ids[edge.first]}, {"to", m.ids[edge.second]}, {"share", share}});
        }
        Json targets = Json::array();
        for (size_t i = 0; i < m.ids.size(); ++i) {
            targets.push_back({{"id", m.ids[i]},
                               {"change", role(m.ids[i])},
                               {"before", m.before[i]},
                               {"after", m.after[i]}});
        }
        Json out{{"group", group.name},
                 {"algorithm", group.algorithm == Algorithm::maglev ? "maglev" : "ring"},
                 {"moved", m.moved},
                 {"ideal", m.ideal},
                 {"moves", std::move(moves)},
                 {"targets", std::move(targets)},
                 {"unaffected_moves", check}};
        fmt::print("{}\n", out.dump(2));
        return kExitOk;
    }

    const size_t w = id_width(m.ids, 6);
    fmt::print("group {} ({})\n", group.name, describe_algorithm(group));
    fmt::print("moved: {} of the keyspace changes target (ideal {})\n\n", percent(m.moved),
               percent(m.ideal));
    fmt::print("{:<{}}  {:<{}}  {:>8}\n", "FROM", w, "TO", w, "SHARE");
    for (const auto& [edge, share] : m.moves) {
        fmt::print("{:<{}}  {:<{}}  {:>8}\n", m.ids[edge.first], w, m.ids[edge.second], w,
                   percent(share));
    }
    fmt::print("\n{:<{}}  {:>8}  {:>8}  {}\n", "TARGET", w, "BEFORE", "AFTER", "CHANGE");
    for (size_t i = 0; i < m.ids.size(); ++i) {
        const std::string change_of = role(m.ids[i]);
        fmt::print("{:<{}}  {:>8}  {:>8}{}{}\n", m.ids[i], w, percent(m.before[i]),
                   percent(m.after[i]), change_of.empty() ? "" : "  ", change_of);
    }
    fmt::print("\nno key moves between two unaffected targets: {}\n", check);
    return kExitOk;
}

int main_impl(int argc, char** argv) {
    CLI::App app{"stickyctl: inspect how stickyd shares the keyspace among targets", "stickyctl"};
    app.set_version_flag("--version,-V", std::string("stickyctl ") + STICKYD_VERSION);
    app.require_subcommand(1);

    Common ring_opts, lookup_opts, simulate_opts;
    auto* ring = app.add_subcommand("ring", "Each target's exact share of the keyspace");
    add_common(ring, ring_opts);

    std::vector<std::string> ips;
    auto* lookup = app.add_subcommand("lookup", "The target each client IP goes to");
    add_common(lookup, lookup_opts);
    lookup->add_option("ip", ips, "Client IPs (IPv4 or IPv6)")->required();

    SimulateArgs sim;
    auto* simulate = app.add_subcommand(
        "simulate", "What share of the keyspace a change of targets moves, and where");
    add_common(simulate, simulate_opts);
    simulate->add_option("--remove", sim.remove, "Remove this target id (repeatable)");
    simulate->add_option("--add", sim.add, "Add a target: ID=ADDR[,weight=W] (repeatable)");
    simulate->add_option("--down", sim.down, "Make this target unhealthy (repeatable)");

    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::Success& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        fmt::print(stderr, "stickyctl: {} (see stickyctl --help)\n", e.what());
        return kExitUsage;
    }

    try {
        if (ring->parsed()) return run_ring(ring_opts);
        if (lookup->parsed()) return run_lookup(lookup_opts, ips);
        return run_simulate(simulate_opts, sim);
    } catch (const UserError& e) {
        fmt::print(stderr, "stickyctl: {}\n", e.what());
        return kExitError;
    }
}

}  // namespace
}  // namespace stickyd

int main(int argc, char** argv) {
    return stickyd::main_impl(argc, argv);
}
