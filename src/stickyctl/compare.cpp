#include "stickyctl/compare.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <map>
#include <optional>
#include <stdexcept>

#include "stickyd/fingerprint.hpp"
#include "stickyd/ring_report.hpp"

namespace stickyd {
namespace {

const Json* find_group(const Json& status, const std::string& name) {
    if (!status.contains("groups")) return nullptr;
    for (const Json& g : status["groups"]) {
        if (g["name"] == name) return &g;
    }
    return nullptr;
}

// The routing object of `name` on one instance, or nullptr (no such group, or no
// table yet).
const Json* routing_of(const Json& status, const std::string& name) {
    const Json* g = find_group(status, name);
    if (!g || !g->contains("routing") || (*g)["routing"].is_null()) return nullptr;
    return &(*g)["routing"];
}

// The group an instance routes by, rebuilt from its routing object.
TargetGroupConfig group_from(const std::string& name, const Json& routing) {
    TargetGroupConfig g;
    g.name = name;
    g.algorithm = routing["algorithm"] == "maglev" ? Algorithm::maglev : Algorithm::ring;
    if (routing["table_size"].is_number()) {
        g.maglev_table_size = routing["table_size"].get<uint32_t>();
    }
    g.stickiness.prefix_v4 = routing["prefix_v4"].get<unsigned>();
    g.stickiness.prefix_v6 = routing["prefix_v6"].get<unsigned>();
    for (const Json& t : routing["targets"]) {
        const auto address = SocketAddress::parse(t["address"].get<std::string>());
        if (!address) {
            throw std::invalid_argument("target " + t["id"].get<std::string>() +
                                        " has an address stickyctl cannot read");
        }
        g.targets.push_back({t["id"].get<std::string>(), *address, t["weight"].get<uint32_t>()});
    }
    return g;
}

std::map<std::string, const Json*> by_id(const Json& routing) {
    std::map<std::string, const Json*> out;
    for (const Json& t : routing["targets"]) out[t["id"].get<std::string>()] = &t;
    return out;
}

// Why the share of `here` against `reference` cannot be computed, if it cannot.
std::optional<std::string> incomparable(const Json& reference, const Json& here,
                                        const TargetGroupConfig& a, const TargetGroupConfig& b) {
    if (reference["mapping_version"] != here["mapping_version"]) {
        return fmt::format("mapping version {} against {}: every client may move",
                           reference["mapping_version"].dump(), here["mapping_version"].dump());
    }
    if (here["mapping_version"] != kMappingVersion) {
        return fmt::format("mapping version {}: this stickyctl knows version {} only",
                           here["mapping_version"].dump(), kMappingVersion);
    }
    for (const auto& [routing, group] : {std::pair{&reference, &a}, std::pair{&here, &b}}) {
        if (routing_fingerprint(routing_inputs(*group)) != (*routing)["fingerprint"]) {
            return "a fingerprint does not match its own targets: another stickyd version?";
        }
    }
    return std::nullopt;
}

Json difference(const std::string& name, const std::string& admin, const Json* reference,
                const Json* here) {
    Json out{{"admin", admin},
             {"problem", nullptr},
             {"only_here", Json::array()},
             {"only_in_reference", Json::array()},
             {"weight", Json::array()},
             {"address", Json::array()},
             {"differs", nullptr},
             {"moves", Json::array()}};
    if (!reference || !here) {
        out["problem"] = !here ? "the group is missing or has no routing table here"
                               : "the group is missing or has no routing table on the reference";
        return out;
    }
    const auto ref_targets = by_id(*reference), here_targets = by_id(*here);
    for (const auto& [id, t] : ref_targets) {
        auto it = here_targets.find(id);
        if (it == here_targets.end()) {
            out["only_in_reference"].push_back(id);
            continue;
        }
        for (const char* field : {"weight", "address"}) {
            if ((*t)[field] != (*it->second)[field]) {
                out[field].push_back(
                    {{"id", id}, {"reference", (*t)[field]}, {"here", (*it->second)[field]}});
            }
        }
    }
    for (const auto& [id, t] : here_targets) {
        if (!ref_targets.count(id)) out["only_here"].push_back(id);
    }

    const TargetGroupConfig a = group_from(name, *reference), b = group_from(name, *here);
    if (auto problem = incomparable(*reference, *here, a, b)) {
        out["problem"] = *problem;
        return out;
    }
    const Disagreement d = compare_groups(a, b);
    if (!d.comparable) {
        out["problem"] = d.not_comparable + ": every client may move";
        return out;
    }
    for (const auto& [edge, share] : d.moves) {
        out["moves"].push_back(
            {{"from", d.ids[edge.first]}, {"to", d.ids[edge.second]}, {"share", share}});
    }
    out["differs"] = d.differs;
    return out;
}

std::vector<std::string> group_names(const std::vector<std::pair<std::string, Json>>& statuses) {
    std::vector<std::string> names;
    for (const auto& [admin, status] : statuses) {
        if (!status.contains("groups")) continue;
        for (const Json& g : status["groups"]) {
            const std::string name = g["name"].get<std::string>();
            if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
        }
    }
    return names;
}

std::string percent(double share) {
    return fmt::format("{:.4f}%", share * 100);
}

std::string joined(const Json& list) {
    std::string out;
    for (const Json& s : list) out += (out.empty() ? "" : ", ") + s.get<std::string>();
    return out;
}

}  // namespace

Json compare_document(const std::vector<std::pair<std::string, Json>>& statuses,
                      const std::string& group) {
    std::vector<std::string> names = group_names(statuses);
    if (!group.empty()) names = {group};
    Json out{{"agree", true}, {"instances", Json::array()}, {"groups", Json::array()}};
    for (const auto& [admin, status] : statuses) out["instances"].push_back(admin);
    for (const std::string& name : names) {
        Json g{{"name", name},
               {"agree", true},
               {"instances", Json::array()},
               {"differences", Json::array()}};
        const Json* reference = routing_of(statuses.front().second, name);
        for (const auto& [admin, status] : statuses) {
            const Json* routing = routing_of(status, name);
            g["instances"].push_back(
                {{"admin", admin},
                 {"fingerprint", routing ? (*routing)["fingerprint"] : Json(nullptr)},
                 {"targets", routing ? (*routing)["targets"].size() : 0}});
        }
        for (size_t i = 1; i < statuses.size(); ++i) {
            const Json* here = routing_of(statuses[i].second, name);
            if (reference && here && (*reference)["fingerprint"] == (*here)["fingerprint"]) {
                continue;
            }
            g["agree"] = false;
            g["differences"].push_back(difference(name, statuses[i].first, reference, here));
        }
        if (!reference && statuses.size() == 1) g["agree"] = false;
        if (!g["agree"].get<bool>()) out["agree"] = false;
        out["groups"].push_back(std::move(g));
    }
    return out;
}

void print_compare(const Json& doc) {
    const std::string reference = doc["instances"].front().get<std::string>();
    for (const Json& g : doc["groups"]) {
        if (g["agree"].get<bool>()) {
            fmt::print("group {}: {} instances agree (fingerprint {})\n",
                       g["name"].get<std::string>(), g["instances"].size(),
                       g["instances"].front()["fingerprint"].get<std::string>());
            continue;
        }
        fmt::print("group {}: instances DIFFER\n", g["name"].get<std::string>());
        for (const Json& i : g["instances"]) {
            fmt::print("  {}  fingerprint {}  {} targets\n", i["admin"].get<std::string>(),
                       i["fingerprint"].is_string() ? i["fingerprint"].get<std::string>() : "-",
                       i["targets"].get<size_t>());
        }
        for (const Json& d : g["differences"]) {
            const std::string here = d["admin"].get<std::string>();
            fmt::print("  {} against {}:\n", here, reference);
            if (!d["only_in_reference"].empty()) {
                fmt::print("    only on {}: {}\n", reference, joined(d["only_in_reference"]));
            }
            if (!d["only_here"].empty()) {
                fmt::print("    only on {}: {}\n", here, joined(d["only_here"]));
            }
            for (const char* field : {"weight", "address"}) {
                for (const Json& c : d[field]) {
                    fmt::print("    {} of {}: {} against {}\n", field, c["id"].get<std::string>(),
                               c["reference"].dump(), c["here"].dump());
                }
            }
            if (d["problem"].is_string()) {
                fmt::print("    {}\n", d["problem"].get<std::string>());
                continue;
            }
            fmt::print("    {} of the keyspace routes to another backend\n",
                       percent(d["differs"].get<double>()));
            for (const Json& m : d["moves"]) {
                fmt::print("      {} -> {}  {}\n", m["from"].get<std::string>(),
                           m["to"].get<std::string>(), percent(m["share"].get<double>()));
            }
        }
    }
    const bool agree = doc["agree"].get<bool>();
    fmt::print("{}\n", agree ? "all instances agree"
                             : "instances differ: clients may reach another backend depending on "
                               "the instance");
}

}  // namespace stickyd
