// stickyctl: answers "who gets this client", "how is the keyspace shared" and
// "what would this change move" from a configuration file, computed exactly from
// the same tables the daemon builds (see src/ring_report.hpp); and asks a running
// daemon the same through its admin endpoint (src/admin_render.hpp documents the
// JSON), plus its status, drain/enable and register/deregister. Offline and remote answers are the
// same documents, printed by the same code.
#include <fmt/core.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "admin/render.hpp"
#include "daemon/command_line.hpp"
#include "stickyctl/admin_client.hpp"
#include "stickyctl/compare.hpp"
#include "stickyd/admin_socket_places.hpp"
#include "stickyd/config.hpp"
#include "stickyd/ring_report.hpp"
#include "stickyd/routing.hpp"
#include "stickyd/words.hpp"
#include "stickyd_version.h"

namespace stickyd {
namespace {

constexpr int kExitOk = 0;
constexpr size_t kBarWidth = 40;

// Thrown for anything the user must fix; main prints it as one line. A UserError
// depends on the configuration or the daemon (an unknown target, no daemon at the
// socket): exit 1. A UsageError is wrong whatever they say (a malformed IP): exit 2.
struct UserError : std::runtime_error {
    using std::runtime_error::runtime_error;
};
struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Common {
    std::string config_path;
    std::string admin;     // empty: --instance, else the first admin socket place in use
    std::string instance;  // stickyd@NAME.service
    std::string group;
    bool json = false;
};

void add_group_and_json(CLI::App* command, Common& common, const char* group_help) {
    command->add_option("--group,-g", common.group, group_help);
    command->add_flag("--json", common.json, "Print JSON for scripts instead of tables");
}

CLI::Option* add_instance(CLI::App* command, Common& common) {
    return command->add_option(
        "--instance,-i", common.instance,
        "Ask stickyd@NAME.service (/run/stickyd/NAME/admin.sock). Without --instance or "
        "--admin: the first of /run/stickyd/admin.sock, $XDG_RUNTIME_DIR/stickyd/admin.sock "
        "and /tmp/stickyd-UID/admin.sock that exists, as stickyd chooses them");
}

// Where to ask: --admin, --instance, or the place a stickyd of this user would have
// chosen (the first that holds a socket).
std::string admin_endpoint(const Common& common) {
    if (!common.admin.empty()) return common.admin;
    if (!common.instance.empty()) {
        auto path = instance_admin_socket(common.instance);
        if (!path) {
            throw UsageError(fmt::format(
                "--instance {:?}: not an instance name (letters, digits, '.', '_', '-')",
                common.instance));
        }
        return *path;
    }
    const std::vector<std::string> places =
        admin_socket_places(::geteuid(), std::getenv("XDG_RUNTIME_DIR"));
    for (const std::string& place : places) {
        struct stat st {};
        if (::stat(place.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) return place;
    }
    throw UserError(
        fmt::format("no stickyd admin socket at {} (is stickyd running? choose it with --admin "
                    "PATH|HOST:PORT or --instance NAME)",
                    fmt::join(places, ", ")));
}

// ring and lookup: from a config file (offline) or from a running daemon.
void add_config_or_admin(CLI::App* command, Common& common) {
    auto* config = command->add_option("--config,-c", common.config_path,
                                       "Answer offline from this stickyd configuration file");
    auto* admin = command->add_option("--admin", common.admin,
                                      "Ask the daemon at this unix socket PATH or HOST:PORT "
                                      "(default: see --instance)");
    auto* instance = add_instance(command, common);
    config->excludes(admin);
    config->excludes(instance);
    admin->excludes(instance);
    add_group_and_json(command, common, "Target group (default: the only one)");
}

void add_admin(CLI::App* command, Common& common, const char* group_help) {
    auto* admin = command->add_option("--admin", common.admin,
                                      "The daemon's admin unix socket PATH or HOST:PORT "
                                      "(default: see --instance)");
    admin->excludes(add_instance(command, common));
    add_group_and_json(command, common, group_help);
}

const TargetGroupConfig& load_group(const Common& common, Config& storage) {
    ConfigResult loaded = load_config_file(common.config_path);
    if (auto* error = std::get_if<ConfigError>(&loaded)) throw UserError(error->to_string());
    storage = std::move(std::get<Config>(loaded));
    const GroupChoice choice = choose_group(storage, common.group);
    if (!choice.group) throw UserError(choice.error);
    // Nothing to show or move; a DNS group's targets exist only in a running daemon.
    const TargetGroupConfig& group = *choice.group;
    std::string names;
    for (const DnsDiscoveryConfig& dns : group.dns)
        names += (names.empty() ? "" : ", ") + dns.text();
    if (group.targets.empty()) {
        throw UserError(fmt::format(
            "group {} has no targets in {}{}", group.name, common.config_path,
            names.empty()
                ? ""
                : fmt::format(" (they come from DNS {}; ask the daemon with --admin)", names)));
    }
    if (!names.empty()) {
        // The answer is right for the static targets alone; say so, off stdout.
        fmt::print(stderr,
                   "stickyctl: note: group {} also takes targets from DNS {}; this answer counts "
                   "only its {} (ask the daemon with --admin for all)\n",
                   group.name, names, count_of(group.targets.size(), "static target"));
    }
    return group;
}

// One request to the daemon; a non-2xx answer becomes the daemon's own one-line error.
Json ask(const Common& common, const std::string& method, const std::string& target,
         const std::string& json_body = {}) {
    const std::string admin = admin_endpoint(common);
    AdminResponse response;
    try {
        response = admin_request(admin, method, target, json_body);
    } catch (const AdminUnreachable& e) {
        throw UserError(e.what());
    }
    Json body;
    try {
        body = Json::parse(response.body);
    } catch (const Json::parse_error&) {
        throw UserError(fmt::format("the admin endpoint at {} answered HTTP {} without JSON", admin,
                                    response.status));
    }
    if (response.status < 200 || response.status > 299) {
        std::string error = body.contains("error") && body["error"].is_string()
                                ? body["error"].get<std::string>()
                                : body.dump();
        // The endpoint speaks HTTP; here the way to name a group is the flag.
        constexpr std::string_view kQueryHint = "add ?group=NAME";
        if (error.ends_with(kQueryHint)) {
            error.replace(error.size() - kQueryHint.size(), kQueryHint.size(),
                          "choose one with --group NAME");
        }
        throw UserError(error);
    }
    return body;
}

std::string group_query(const Common& common, char first) {
    return common.group.empty() ? "" : fmt::format("{}group={}", first, url_encode(common.group));
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

std::string describe_algorithm(const Json& ring) {
    if (ring["algorithm"] == "maglev") {
        return ring.contains("table_size")
                   ? fmt::format("maglev, table size {}", ring["table_size"].get<uint64_t>())
                   : std::string("maglev");
    }
    return fmt::format("ring, {} points per unit of weight",
                       ring["points_per_weight"].get<uint64_t>());
}

std::string describe_algorithm(const TargetGroupConfig& group) {
    if (group.algorithm == Algorithm::maglev) {
        return fmt::format("maglev, table size {}", group.maglev_table_size);
    }
    return fmt::format("ring, {} points per unit of weight", kRingPointsPerWeight);
}

bool equal_weights(const Json& targets) {
    return std::all_of(targets.begin(), targets.end(),
                       [&](const Json& t) { return t["weight"] == targets.front()["weight"]; });
}

// The /ring document as a table with bars; the same for a config and a daemon.
void print_ring(const Json& ring) {
    const Json& targets = ring["targets"];
    std::vector<std::string> ids;
    for (const Json& t : targets) ids.push_back(t["id"].get<std::string>());
    const size_t w = id_width(ids, 6);
    const double max = ring["max"].get<double>();
    fmt::print("group {} ({}), {}\n\n", ring["group"].get<std::string>(), describe_algorithm(ring),
               count_of(targets.size(), "target"));
    fmt::print("{:<{}}  {:>6}  {:>8}\n", "TARGET", w, "WEIGHT", "SHARE");
    for (const Json& t : targets) {
        const double share = t["share"].get<double>();
        fmt::print("{:<{}}  {:>6}  {:>8}  {}\n", t["id"].get<std::string>(), w,
                   t["weight"].get<uint64_t>(), percent(share), bar(share, max));
    }
    fmt::print("\nmin {}  max {}  max/mean {:.4f}{}\n", percent(ring["min"].get<double>()),
               percent(max), ring["max_over_mean"].get<double>(),
               equal_weights(targets) ? "" : " (each share against its weight-proportional one)");
}

void print_json(const Json& doc) {
    fmt::print("{}\n", doc.dump(2));
}

int run_ring(const Common& common) {
    Json ring;
    if (!common.config_path.empty()) {
        Config config;
        const TargetGroupConfig& group = load_group(common, config);
        ring = ring_document(*build_routing_table(group), group.maglev_table_size);
    } else {
        ring = ask(common, "GET", "/ring" + group_query(common, '?'));
    }
    if (common.json) {
        print_json(ring);
    } else {
        print_ring(ring);
    }
    return kExitOk;
}

// A string field, or "-" where the document has null (no chosen target).
std::string text_or_dash(const Json& value) {
    return value.is_string() ? value.get<std::string>() : "-";
}

// The /lookup document as a table; a daemon's answer also says why.
void print_lookups(const Json& doc, bool with_reason) {
    std::vector<std::string> ids, ips, keys;
    for (const Json& l : doc["lookups"]) {
        ids.push_back(l["owner"].get<std::string>());
        ids.push_back(text_or_dash(l["chosen"]));
        ips.push_back(l["ip"].get<std::string>());
        keys.push_back(l["key"].get<std::string>());
    }
    std::vector<std::string> addresses;
    for (const Json& l : doc["lookups"]) addresses.push_back(text_or_dash(l["address"]));
    const size_t wi = id_width(ips, 2), wk = id_width(keys, 3), wt = id_width(ids, 6),
                 wa = id_width(addresses, 7);
    if (with_reason) {
        fmt::print("{:<{}}  {:<{}}  {:<{}}  {:<{}}  {:<{}}  {}\n", "IP", wi, "KEY", wk, "OWNER", wt,
                   "CHOSEN", wt, "ADDRESS", wa, "REASON");
    } else {
        fmt::print("{:<{}}  {:<{}}  {:<{}}  {:<{}}  {}\n", "IP", wi, "KEY", wk, "OWNER", wt,
                   "CHOSEN", wt, "ADDRESS");
    }
    for (const Json& l : doc["lookups"]) {
        const std::string line =
            fmt::format("{:<{}}  {:<{}}  {:<{}}  {:<{}}  ", l["ip"].get<std::string>(), wi,
                        l["key"].get<std::string>(), wk, l["owner"].get<std::string>(), wt,
                        text_or_dash(l["chosen"]), wt);
        if (with_reason) {
            fmt::print("{}{:<{}}  {}\n", line, text_or_dash(l["address"]), wa,
                       l["reason"].get<std::string>());
        } else {
            fmt::print("{}{}\n", line, text_or_dash(l["address"]));
        }
    }
}

// Every IP is parsed before anything is asked or printed: no half answers.
void refuse_bad_ips(const std::vector<std::string>& ips) {
    for (const std::string& ip : ips) {
        if (!parse_ip(ip)) {
            throw UsageError(fmt::format(
                "lookup: \"{}\" is not an IP address (expected e.g. 192.0.2.1 or 2001:db8::1)",
                ip));
        }
    }
}

int run_lookup(const Common& common, const std::vector<std::string>& ips) {
    refuse_bad_ips(ips);
    Json doc;
    const bool offline = !common.config_path.empty();
    if (offline) {
        Config config;
        const TargetGroupConfig& group = load_group(common, config);
        const auto table = build_routing_table(group);
        std::vector<LookupAnswer> answers;
        for (const std::string& ip : ips) answers.push_back(*explain_lookup(*table, {}, ip));
        doc = lookup_document(*table, answers);
    } else {
        std::string target = "/lookup?";
        for (const std::string& ip : ips) target += "ip=" + url_encode(ip) + "&";
        target.pop_back();
        doc = ask(common, "GET", target + group_query(common, '&'));
    }
    if (common.json) {
        print_json(doc);
    } else {
        print_lookups(doc, !offline);
    }
    return kExitOk;
}

std::string human_bytes(uint64_t n) {
    static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = static_cast<double>(n);
    size_t unit = 0;
    while (v >= 1024 && unit + 1 < std::size(kUnits)) {
        v /= 1024;
        ++unit;
    }
    return unit == 0 ? fmt::format("{} B", n) : fmt::format("{:.1f} {}", v, kUnits[unit]);
}

std::string last_check(const Json& t) {
    const Json& check = t["last_check"];
    if (check.is_null()) return "-";
    return fmt::format("{} in {:.1f} ms: {}", check["passed"].get<bool>() ? "passed" : "failed",
                       check["duration_seconds"].get<double>() * 1000,
                       check["reason"].get<std::string>());
}

// Shown while the group fails open, or when its thresholds are not the default ones
// (count 1, percentage off), so the operator sees how close it is.
void print_minimum_healthy(const Json& g) {
    if (!g.contains("minimum_healthy_targets")) return;  // a daemon older than the field
    const Json& m = g["minimum_healthy_targets"];
    const bool non_default = m["count"].get<unsigned>() != 1 || !m["percentage"].is_null();
    if (!g["failing_open"].get<bool>() && !non_default) return;
    std::string thresholds = fmt::format("count {}", m["count"].get<unsigned>());
    if (!m["percentage"].is_null()) {
        thresholds += fmt::format(", percentage {}%", m["percentage"].get<unsigned>());
    }
    fmt::print("healthy {} of {} in service, minimum {} ({}){}\n",
               g["healthy_targets"].get<uint64_t>(), g["targets_in_service"].get<uint64_t>(),
               m["required"].get<uint64_t>(), thresholds,
               g["failing_open"].get<bool>() ? ": routing to all in service as if healthy" : "");
}

int run_status(const Common& common) {
    const Json status = ask(common, "GET", "/status");
    if (common.json) {
        print_json(status);
        return kExitOk;
    }
    const Json& totals = status["totals"];
    fmt::print("stickyd {}: {}, {} accepted, {}, {}, {} in, {} out\n",
               status["version"].get<std::string>(),
               count_of(totals["active"].get<uint64_t>(), "active connection"),
               totals["accepted"].get<uint64_t>(),
               count_of(totals["connect_failures"].get<uint64_t>(), "connect failure"),
               count_of(totals["retries"].get<uint64_t>(), "retry", "retries"),
               human_bytes(totals["bytes_in"].get<uint64_t>()),
               human_bytes(totals["bytes_out"].get<uint64_t>()));
    std::vector<std::string> names, binds;
    for (const Json& l : status["listeners"]) {
        names.push_back(l["name"].get<std::string>());
        binds.push_back(l["bind"].get<std::string>());
    }
    const size_t wn = id_width(names, 8), wb = id_width(binds, 4);
    fmt::print("\n{:<{}}  {:<{}}  {:<12}  {:>8}\n", "LISTENER", wn, "BIND", wb, "TARGET GROUP",
               "ACCEPTED");
    for (const Json& l : status["listeners"]) {
        fmt::print("{:<{}}  {:<{}}  {:<12}  {:>8}\n", l["name"].get<std::string>(), wn,
                   l["bind"].get<std::string>(), wb, l["target_group"].get<std::string>(),
                   l["accepted"].get<uint64_t>());
    }
    for (const Json& g : status["groups"]) {
        if (!common.group.empty() && g["name"] != common.group) continue;
        fmt::print("\ngroup {} ({}), {}{}\n", g["name"].get<std::string>(),
                   g["algorithm"].get<std::string>(), count_of(g["targets"].size(), "target"),
                   g["failing_open"].get<bool>() ? ": FAILING OPEN" : "");
        print_minimum_healthy(g);
        if (g.contains("routing") && g["routing"].is_object()) {
            fmt::print("routing fingerprint {} (mapping version {}), usable {}\n",
                       g["routing"]["fingerprint"].get<std::string>(),
                       g["routing"]["mapping_version"].get<unsigned>(),
                       g["routing"]["usable_fingerprint"].get<std::string>());
        }
        // An older daemon's /status has no dns_names.
        if (g.contains("dns_names") && g["dns_names"].is_array() && !g["dns_names"].empty()) {
            std::string names;
            for (const Json& n : g["dns_names"]) {
                names += (names.empty() ? "" : ", ") + n.get<std::string>();
            }
            fmt::print("DNS names: {}\n", names);
        }
        if (g["dns_error"].is_string()) {
            fmt::print("DNS: {}\n", g["dns_error"].get<std::string>());
        }
        std::vector<std::string> ids, addresses;
        for (const Json& t : g["targets"]) {
            ids.push_back(t["id"].get<std::string>());
            addresses.push_back(t["address"].get<std::string>());
        }
        const size_t wi = id_width(ids, 6), wa = id_width(addresses, 7);
        fmt::print(
            "{:<{}}  {:<{}}  {:<7}  {:<9}  {:>6}  {:>11}  {:>8}  {:>10}  {:>10}  {:>8}  {}\n",
            "TARGET", wi, "ADDRESS", wa, "ORIGIN", "STATE", "ACTIVE", "CONNECTIONS", "FAILURES",
            "IN", "OUT", "SHARE", "LAST CHECK");
        for (const Json& t : g["targets"]) {
            // An older daemon's /status has no origin.
            const std::string origin = t.contains("origin") ? text_or_dash(t["origin"]) : "-";
            fmt::print(
                "{:<{}}  {:<{}}  {:<7}  {:<9}  {:>6}  {:>11}  {:>8}  {:>10}  {:>10}  {:>8}  {}\n",
                t["id"].get<std::string>(), wi, t["address"].get<std::string>(), wa, origin,
                t["state"].get<std::string>(), t["active_connections"].get<uint64_t>(),
                t["connections"].get<uint64_t>(), t["connect_failures"].get<uint64_t>(),
                human_bytes(t["bytes_in"].get<uint64_t>()),
                human_bytes(t["bytes_out"].get<uint64_t>()), percent(t["share"].get<double>()),
                last_check(t));
        }
    }
    return kExitOk;
}

int run_change(const Common& common, const std::string& id, bool drain) {
    const Json answer = ask(common, "POST",
                            fmt::format("/targets/{}/{}{}", url_encode(id),
                                        drain ? "drain" : "enable", group_query(common, '?')));
    if (common.json) {
        print_json(answer);
    } else {
        fmt::print("{}\n", answer["message"].get<std::string>());
    }
    return kExitOk;
}

// The NLB's RegisterTargets: the spec is checked here as the daemon would check it,
// so a typo is a command-line error (exit 2) rather than a refusal (exit 1).
int run_register(const Common& common, const std::string& spec) {
    const ParsedTarget parsed = parse_target_spec(spec, "register");
    if (!parsed.target) throw UsageError(parsed.error);
    if (auto problem = target_id_error(parsed.target->id)) {
        throw UsageError(fmt::format("register \"{}\": id: {}", spec, *problem));
    }
    Json body{{"id", parsed.target->id}, {"address", parsed.target->address.to_string()}};
    if (parsed.weight_given) body["weight"] = parsed.target->weight;
    if (!common.group.empty()) body["group"] = common.group;
    const Json answer = ask(common, "POST", "/targets", body.dump());
    if (common.json) {
        print_json(answer);
    } else {
        fmt::print("{}\n", answer["message"].get<std::string>());
    }
    return kExitOk;
}

int run_deregister(const Common& common, const std::string& id) {
    const Json answer = ask(common, "DELETE",
                            fmt::format("/targets/{}{}", url_encode(id), group_query(common, '?')));
    if (common.json) {
        print_json(answer);
    } else {
        fmt::print("{}\n", answer["message"].get<std::string>());
    }
    return kExitOk;
}

// For readiness probes and route watchers: exit 0 only while the daemon serves.
int run_ready(const Common& common) {
    const std::string admin = admin_endpoint(common);
    AdminResponse response;
    try {
        response = admin_request(admin, "GET", "/ready");
    } catch (const AdminUnreachable& e) {
        throw UserError(e.what());
    }
    if (response.status != 200 && response.status != 503) {
        throw UserError(fmt::format("the admin endpoint at {} answered GET /ready with HTTP {}",
                                    admin, response.status));
    }
    const bool ready = response.status == 200;
    if (common.json) {
        print_json(Json{{"ready", ready}});
    } else {
        fmt::print("{}\n", ready ? "ready" : "not ready: stopping (withdrawing or draining)");
    }
    return ready ? kExitOk : kExitConfigError;
}

int run_compare(const Common& common, const std::vector<std::string>& admins) {
    if (admins.size() < 2) {
        throw UserError("compare: give at least two instances, e.g. --admin A --admin B");
    }
    std::vector<std::pair<std::string, Json>> statuses;
    for (const std::string& admin : admins) {
        Common one = common;
        one.admin = admin;
        statuses.emplace_back(admin, ask(one, "GET", "/status"));
    }
    Json doc;
    try {
        doc = compare_document(statuses, common.group);
    } catch (const std::exception& e) {
        throw UserError(
            fmt::format("compare: an instance's /status is not what this stickyctl "
                        "reads ({})",
                        e.what()));
    }
    if (common.json) {
        print_json(doc);
    } else {
        print_compare(doc);
    }
    return doc["agree"].get<bool>() ? kExitOk : kExitConfigError;
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
        if (!parsed.target) throw UsageError(parsed.error);
        change.add.push_back(std::move(*parsed.target));
    }
    if (change.remove.empty() && change.add.empty() && change.down.empty()) {
        throw UsageError("simulate: nothing to simulate; give --remove, --add or --down");
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

constexpr const char* kDescription =
    "stickyctl: inspect how stickyd shares the keyspace among targets\n\n"
    "Exit status: 0 done; 1 the configuration or the daemon says no (an unknown group or\n"
    "target, a bad file, no daemon at the socket); 2 the command line is wrong.";

int main_impl(int argc, char** argv) {
    CLI::App app{kDescription, "stickyctl"};
    app.set_version_flag("--version,-V", std::string("stickyctl ") + STICKYD_VERSION);
    // At most one command; none, or an unknown one, is reported after parsing with
    // a did-you-mean rather than as CLI11's "A subcommand is required".
    app.require_subcommand(0, 1);
    app.allow_extras();

    Common ring_opts, lookup_opts, simulate_opts, status_opts, drain_opts, enable_opts;
    auto* ring = app.add_subcommand(
        "ring", "Each target's exact share of the keyspace (from the daemon, or --config)");
    add_config_or_admin(ring, ring_opts);

    std::vector<std::string> ips;
    auto* lookup = app.add_subcommand(
        "lookup", "The target each client IP goes to, and why (from the daemon, or --config)");
    add_config_or_admin(lookup, lookup_opts);
    lookup->add_option("ip", ips, "Client IPs (IPv4 or IPv6)")->required();

    SimulateArgs sim;
    auto* simulate = app.add_subcommand(
        "simulate", "What share of the keyspace a change of targets moves, and where");
    simulate->add_option("--config,-c", simulate_opts.config_path, "stickyd configuration file")
        ->required();
    add_group_and_json(simulate, simulate_opts,
                       "Target group (default: the only one in the configuration)");
    simulate->add_option("--remove", sim.remove, "Remove this target id (repeatable)");
    simulate->add_option("--add", sim.add, "Add a target: ID=ADDR[,weight=W] (repeatable)");
    simulate->add_option("--down", sim.down, "Make this target unhealthy (repeatable)");

    auto* status = app.add_subcommand(
        "status", "Listeners, and every target's state, connections, traffic and share");
    add_admin(status, status_opts, "Show only this target group");

    std::string drain_id, enable_id;
    auto* drain = app.add_subcommand(
        "drain", "Take a target out: no new connections, open ones continue (deregister)");
    add_admin(drain, drain_opts, "The target's group (needed when the id is in several)");
    drain->add_option("id", drain_id, "Target id")->required();
    auto* enable = app.add_subcommand("enable", "Put a drained target back into rotation");
    add_admin(enable, enable_opts, "The target's group (needed when the id is in several)");
    enable->add_option("id", enable_id, "Target id")->required();

    Common register_opts, deregister_opts;
    std::string register_spec, deregister_id;
    auto* register_command = app.add_subcommand(
        "register",
        "Add a target at run time (RegisterTargets): it takes clients after its first passed "
        "health check, and stays across reloads until deregistered");
    add_admin(register_command, register_opts,
              "The target's group (needed when there are several)");
    register_command->add_option("target", register_spec, "The target: ID=ADDR[,weight=W]")
        ->required();
    auto* deregister_command = app.add_subcommand(
        "deregister",
        "Remove a target at run time (DeregisterTargets): no new connections, open ones get "
        "the group's deregistration delay; a file target stays out across reloads");
    add_admin(deregister_command, deregister_opts,
              "The target's group (needed when the id is in several)");
    deregister_command->add_option("id", deregister_id, "Target id")->required();

    Common ready_opts;
    auto* ready = app.add_subcommand(
        "ready", "Exit 0 while the daemon serves, 1 once a stop began (a readiness probe)");
    ready
        ->add_option("--admin", ready_opts.admin,
                     "The daemon's admin unix socket PATH or HOST:PORT "
                     "(default: see --instance)")
        ->excludes(add_instance(ready, ready_opts));
    ready->add_flag("--json", ready_opts.json, "Print JSON for scripts");

    Common compare_opts;
    std::vector<std::string> compare_admins;
    auto* compare = app.add_subcommand(
        "compare",
        "Whether several instances route every client alike; where not, which targets differ "
        "and what share of the keyspace goes elsewhere (exit 1)");
    compare
        ->add_option("--admin", compare_admins,
                     "An instance's admin unix socket PATH or HOST:PORT (two or more; the "
                     "first is the reference)")
        ->required();
    add_group_and_json(compare, compare_opts, "Compare only this target group");

    if (auto status = parse_command_line(app, argc, argv, "stickyctl")) return *status;
    if (app.get_subcommands().empty()) {
        fmt::print(stderr,
                   "stickyctl: a command is required: ring, lookup, simulate, status, drain or "
                   "enable (see stickyctl --help)\n");
        return kExitUsageError;
    }

    try {
        if (ring->parsed()) return run_ring(ring_opts);
        if (lookup->parsed()) return run_lookup(lookup_opts, ips);
        if (status->parsed()) return run_status(status_opts);
        if (drain->parsed()) return run_change(drain_opts, drain_id, true);
        if (enable->parsed()) return run_change(enable_opts, enable_id, false);
        if (register_command->parsed()) return run_register(register_opts, register_spec);
        if (deregister_command->parsed()) return run_deregister(deregister_opts, deregister_id);
        if (ready->parsed()) return run_ready(ready_opts);
        if (compare->parsed()) return run_compare(compare_opts, compare_admins);
        return run_simulate(simulate_opts, sim);
    } catch (const UserError& e) {
        fmt::print(stderr, "stickyctl: {}\n", e.what());
        return kExitConfigError;
    } catch (const UsageError& e) {
        fmt::print(stderr, "stickyctl: {}\n", e.what());
        return kExitUsageError;
    }
}

}  // namespace
}  // namespace stickyd

int main(int argc, char** argv) {
    return stickyd::main_impl(argc, argv);
}
