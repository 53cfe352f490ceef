// A fake AdminSource over real routing tables, and a strict checker of the
// Prometheus text exposition format, shared by the admin unit tests.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <map>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "admin/api.hpp"
#include "stickyd/routing.hpp"

namespace stickyd::testing {

inline TargetConfig target(const char* id, const char* address, uint32_t weight = 1) {
    auto parsed = SocketAddress::parse(address);
    REQUIRE(parsed.has_value());
    return {id, *parsed, weight};
}

inline TargetGroupConfig group(const char* name, std::vector<TargetConfig> targets,
                               Algorithm algorithm = Algorithm::ring) {
    TargetGroupConfig g;
    g.name = name;
    g.algorithm = algorithm;
    g.targets = std::move(targets);
    return g;
}

// A ControlView with every target healthy, built the way the control thread does
// (the routing table, its stats shared with the views).
class FakeSource : public AdminSource {
  public:
    explicit FakeSource(std::vector<TargetGroupConfig> groups) : configs_(std::move(groups)) {
        auto view = std::make_shared<ControlView>();
        for (const TargetGroupConfig& config : configs_) {
            GroupView g;
            g.name = config.name;
            g.algorithm = config.algorithm;
            g.table = build_routing_table(config);
            for (size_t i = 0; i < g.table->targets.size(); ++i) {
                const RouteTarget& rt = g.table->targets[i];
                TargetView t;
                t.id = rt.id;
                t.address = rt.address;
                t.weight = g.table->balancer->members()[i].weight;
                t.state = HealthState::healthy;
                t.usable = true;
                t.stats = rt.stats;
                g.targets.push_back(std::move(t));
            }
            g.minimum_healthy_targets = config.minimum_healthy_targets;
            g.healthy_targets = g.targets_in_service = g.targets.size();
            g.required_healthy = required_healthy(config.minimum_healthy_targets, g.targets.size());
            view->groups.push_back(std::move(g));
        }
        view_ = std::move(view);
    }

    std::shared_ptr<const ControlView> view() override {
        std::lock_guard lock(mutex_);
        return view_;
    }

    // Sets a target's state and deregistration, and republishes the table's usable
    // flags the way the control thread would.
    void set(const std::string& group, const std::string& id, HealthState state,
             Deregistration dereg = Deregistration::none) {
        std::lock_guard lock(mutex_);
        auto view = std::make_shared<ControlView>(*view_);
        for (GroupView& g : view->groups) {
            if (g.name != group) continue;
            auto table = std::make_shared<RoutingTable>(*g.table);
            bool any = false;
            g.healthy_targets = g.targets_in_service = 0;
            for (size_t i = 0; i < g.targets.size(); ++i) {
                TargetView& t = g.targets[i];
                if (t.id == id) {
                    t.state = state;
                    t.deregistration = dereg;
                }
                t.usable = t.deregistration == Deregistration::none &&
                           (t.state == HealthState::healthy || t.state == HealthState::initial);
                table->usable[i] = t.usable;
                any = any || t.usable;
                g.healthy_targets += t.usable ? 1 : 0;
                g.targets_in_service += t.deregistration == Deregistration::none ? 1 : 0;
            }
            g.required_healthy = required_healthy(g.minimum_healthy_targets, g.targets_in_service);
            g.failing_open = !any;
            g.table = std::move(table);
        }
        view_ = std::move(view);
    }

    AdminChange drain(const std::string& group, const std::string& id) override {
        ++changes;
        return change(group, id, true);
    }
    AdminChange enable(const std::string& group, const std::string& id) override {
        ++changes;
        return change(group, id, false);
    }
    bool ready() override { return ready_; }
    // Records what it was asked and answers `next_change` (the control thread's
    // rules are tested on their own; here only the HTTP side is).
    AdminChange register_target(const std::string& group, const Registration& target) override {
        ++changes;
        std::lock_guard lock(mutex_);
        registrations.push_back({group, target});
        return next_change;
    }
    AdminChange deregister_target(const std::string& group, const std::string& id) override {
        ++changes;
        std::lock_guard lock(mutex_);
        deregistrations.push_back({group, id});
        return next_change;
    }
    std::vector<ListenerInfo> listeners() override { return listeners_; }
    DaemonTotals totals() override { return totals_; }
    uint32_t maglev_table_size(const std::string& group) override {
        for (const auto& g : configs_) {
            if (g.name == group && g.algorithm == Algorithm::maglev) return g.maglev_table_size;
        }
        return 0;
    }

    std::vector<ListenerInfo> listeners_;
    DaemonTotals totals_;
    std::atomic<bool> ready_{true};
    std::atomic<size_t> changes{0};  // drain, enable, register, deregister calls
    std::vector<std::pair<std::string, Registration>> registrations;
    std::vector<std::pair<std::string, std::string>> deregistrations;
    AdminChange next_change{AdminChange::Result::ok, "done"};

  private:
    AdminChange change(const std::string& group, const std::string& id, bool drain) {
        std::vector<std::string> found;
        // Named: a range-for over view()->groups would free the view before the loop.
        const auto current = view();
        for (const GroupView& g : current->groups) {
            if (!group.empty() && g.name != group) continue;
            for (const TargetView& t : g.targets) {
                if (t.id == id) found.push_back(g.name);
            }
        }
        if (!group.empty() && std::none_of(configs_.begin(), configs_.end(),
                                           [&](const auto& g) { return g.name == group; })) {
            return {AdminChange::Result::unknown_group, "unknown target group \"" + group + "\""};
        }
        if (found.empty()) {
            return {AdminChange::Result::unknown_target, "unknown target \"" + id + "\""};
        }
        if (found.size() > 1) {
            return {AdminChange::Result::ambiguous, "target \"" + id + "\" is in several groups"};
        }
        set(found[0], id, HealthState::healthy,
            drain ? Deregistration::drained : Deregistration::none);
        return {AdminChange::Result::ok, (drain ? "drained " : "enabled ") + id};
    }

    std::vector<TargetGroupConfig> configs_;
    std::mutex mutex_;
    std::shared_ptr<const ControlView> view_;
};

// Checks text against the exposition format 0.0.4 line by line; returns the
// problems ("line N: ..."), empty when the text is valid. Beyond the grammar: every
// sample belongs to the family its TYPE line declared last, no family is declared
// twice, no series repeats, counters end in _total, histogram buckets are
// cumulative with a final +Inf bucket equal to _count.
inline std::vector<std::string> exposition_problems(const std::string& text) {
    static const std::regex kHelp(R"(# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*))");
    static const std::regex kType(
        R"(# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped))");
    static const std::regex kSample(
        R"(([a-zA-Z_:][a-zA-Z0-9_:]*)(\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*)?\})? (-?[0-9.eE+-]+|[+-]Inf|NaN))");
    static const std::regex kLabel(R"(([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)\")");
    std::vector<std::string> problems;
    std::set<std::string> declared, series;
    std::string family, type;
    std::string bucket_key;
    double last_bucket = -1;
    std::map<std::string, double> inf_bucket;  // series without le -> +Inf count
    std::istringstream in(text);
    std::string line;
    size_t n = 0;
    auto problem = [&](const std::string& what) {
        problems.push_back("line " + std::to_string(n) + ": " + what + ": " + line);
    };
    if (text.empty() || text.back() != '\n') problems.push_back("does not end with a newline");
    while (std::getline(in, line)) {
        ++n;
        std::smatch m;
        if (std::regex_match(line, m, kHelp)) {
            if (m[1] != family && declared.count(m[1])) problem("HELP for a finished family");
            continue;
        }
        if (std::regex_match(line, m, kType)) {
            if (!declared.insert(m[1]).second) problem("family declared twice");
            family = m[1];
            type = m[2];
            if (type == "counter" && !family.ends_with("_total")) problem("counter without _total");
            continue;
        }
        if (line.starts_with("#")) {
            problem("comment that is neither HELP nor TYPE");
            continue;
        }
        if (!std::regex_match(line, m, kSample)) {
            problem("not a valid sample line");
            continue;
        }
        const std::string name = m[1];
        std::string suffix = name.size() > family.size() && name.starts_with(family)
                                 ? name.substr(family.size())
                                 : (name == family ? "" : "?");
        const bool ok = type == "histogram"
                            ? (suffix == "_bucket" || suffix == "_sum" || suffix == "_count")
                            : suffix.empty();
        if (family.empty() || !ok) problem("sample outside its family (" + family + ")");
        char* end = nullptr;
        const std::string value_text = m[4];
        double value = value_text == "+Inf"   ? INFINITY
                       : value_text == "-Inf" ? -INFINITY
                       : value_text == "NaN"  ? NAN
                                              : std::strtod(value_text.c_str(), &end);
        if (end != nullptr && *end != '\0') problem("bad value");
        if ((type == "counter" || suffix == "_bucket" || suffix == "_count") && !(value >= 0)) {
            problem("negative or NaN count");
        }
        std::map<std::string, std::string> labels;
        const std::string label_text = m[3];
        for (auto it = std::sregex_iterator(label_text.begin(), label_text.end(), kLabel);
             it != std::sregex_iterator(); ++it) {
            if (!labels.emplace((*it)[1], (*it)[2]).second) problem("label repeated");
        }
        std::string key = name;
        for (const auto& [k, v] : labels) key += "|" + k + "=" + v;
        if (!series.insert(key).second) problem("series repeated");
        if (suffix == "_bucket") {
            auto le = labels.find("le");
            if (le == labels.end()) {
                problem("bucket without le");
                continue;
            }
            std::string rest = family;
            for (const auto& [k, v] : labels)
                if (k != "le") rest += "|" + k + "=" + v;
            if (rest != bucket_key) last_bucket = -1;
            bucket_key = rest;
            if (value < last_bucket) problem("bucket counts not cumulative");
            last_bucket = value;
            if (le->second == "+Inf") inf_bucket[rest] = value;
        }
        if (suffix == "_count") {
            std::string rest = family;
            for (const auto& [k, v] : labels) rest += "|" + k + "=" + v;
            auto inf = inf_bucket.find(rest);
            if (inf == inf_bucket.end()) {
                problem("histogram without a +Inf bucket");
            } else if (inf->second != value) {
                problem("_count differs from the +Inf bucket");
            }
        }
    }
    return problems;
}

}  // namespace stickyd::testing
