#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "stickyd/target_set.hpp"
#include "tests/support/balancer_fixtures.hpp"

using namespace stickyd;
using namespace std::chrono_literals;

namespace {

SocketAddress addr(const char* text) {
    auto parsed = SocketAddress::parse(text);
    REQUIRE(parsed.has_value());
    return *parsed;
}

TargetConfig target(const char* address, const char* id = "", uint32_t weight = 1) {
    return {id, addr(address), weight};
}

TargetGroupConfig web(std::vector<TargetConfig> targets, Algorithm algorithm = Algorithm::ring) {
    TargetGroupConfig g;
    g.name = "web";
    g.algorithm = algorithm;
    g.maglev_table_size = 1021;
    g.targets = std::move(targets);
    return g;
}

const SteadyTime t0 = SteadyTime{} + 1000s;

DeregistrationConfig delay(Duration timeout, bool terminate_at_once = false) {
    DeregistrationConfig d;
    d.timeout = timeout;
    d.connection_termination = terminate_at_once;
    return d;
}

std::vector<std::string> ids_of(const Reconciliation& r, const std::vector<size_t>& which) {
    std::vector<std::string> out;
    for (size_t i : which) out.push_back(r.targets[i].id);
    return out;
}

const GroupTarget& find(const std::vector<GroupTarget>& targets, const std::string& id) {
    for (const auto& t : targets)
        if (t.id == id) return t;
    FAIL("no target " << id);
    return targets.front();
}

GroupTarget& find(std::vector<GroupTarget>& targets, const std::string& id) {
    return const_cast<GroupTarget&>(find(std::as_const(targets), id));
}

// The group as the control thread holds it after start.
std::vector<GroupTarget> started(const TargetGroupConfig& g,
                                 std::span<const SocketAddress> discovered = {}) {
    return reconcile({}, desired_targets(g, discovered), g.deregistration_delay, t0, true).targets;
}

HealthRecord healthy() {
    HealthRecord r;
    r.state = HealthState::healthy;
    return r;
}

// Which target id each client hash goes to under this snapshot.
std::vector<std::string> mapping(const GroupRouting& routing, const std::vector<uint64_t>& keys) {
    std::vector<std::string> out;
    for (uint64_t k : keys) {
        const uint32_t m = routing.table->pick(k, 0);
        out.push_back(m == kNoMember ? std::string("<none>") : routing.table->targets[m].id);
    }
    return out;
}

}  // namespace

TEST_CASE("target_set: deregistration names") {
    CHECK(to_string(Deregistration::none) == "none");
    CHECK(to_string(Deregistration::drained) == "drained");
    CHECK(to_string(Deregistration::removed) == "removed");
}

TEST_CASE("target_set: desired = config ∪ DNS, sorted by id, configured id wins") {
    auto g = web({target("127.0.0.1:9002", "web-2", 3), target("127.0.0.1:9001"),
                  target("127.0.0.9:9009", "127.0.0.5:80", 7)});
    const std::vector<SocketAddress> dns = {addr("127.0.0.5:80"), addr("127.0.0.4:80"),
                                            addr("127.0.0.4:80"), addr("[::1]:80")};
    auto desired = desired_targets(g, dns);
    REQUIRE(desired.size() == 5);
    CHECK(desired[0] ==
          DesiredTarget{"127.0.0.1:9001", addr("127.0.0.1:9001"), 1, TargetOrigin::config});
    CHECK(desired[1] == DesiredTarget{"127.0.0.4:80", addr("127.0.0.4:80"), 1, TargetOrigin::dns});
    // The configured target whose id collides with a DNS address keeps its own
    // address and weight.
    CHECK(desired[2] ==
          DesiredTarget{"127.0.0.5:80", addr("127.0.0.9:9009"), 7, TargetOrigin::config});
    CHECK(desired[3] == DesiredTarget{"[::1]:80", addr("[::1]:80"), 1, TargetOrigin::dns});
    CHECK(desired[4] == DesiredTarget{"web-2", addr("127.0.0.1:9002"), 3, TargetOrigin::config});
    CHECK(desired_targets(web({}), {}).empty());
}

TEST_CASE("target_set: a discovered address a static target has is that target, whatever its id") {
    // Quick mode's --target 127.0.0.1:9001 --target localhost:9001, or a file's
    // target with an id of its own beside a dns name that resolves to it.
    auto g = web({target("127.0.0.1:9001", "web-1", 2), target("127.0.0.1:9002")});
    const std::vector<SocketAddress> dns = {addr("127.0.0.1:9001"), addr("127.0.0.1:9002"),
                                            addr("[::1]:9001")};
    auto desired = desired_targets(g, dns);
    REQUIRE(desired.size() == 3);
    CHECK(desired[0] ==
          DesiredTarget{"127.0.0.1:9002", addr("127.0.0.1:9002"), 1, TargetOrigin::config});
    CHECK(desired[1] == DesiredTarget{"[::1]:9001", addr("[::1]:9001"), 1, TargetOrigin::dns});
    CHECK(desired[2] == DesiredTarget{"web-1", addr("127.0.0.1:9001"), 2, TargetOrigin::config});
}

TEST_CASE("target_set: deregistration deadline") {
    CHECK(deregistration_deadline(delay(300s), t0) == t0 + 300s);
    CHECK(deregistration_deadline(delay(300s, true), t0) == t0);
    CHECK(deregistration_deadline(delay(0s), t0) == t0);
}

TEST_CASE("target_set: start adds every target, routable while initial") {
    auto g = web({target("127.0.0.1:9002", "b"), target("127.0.0.1:9001", "a")});
    auto r = reconcile({}, desired_targets(g, {}), g.deregistration_delay, t0, true);
    CHECK(ids_of(r, r.added) == std::vector<std::string>{"a", "b"});
    CHECK(r.removed.empty());
    CHECK(r.restored.empty());
    for (const auto& t : r.targets) {
        CHECK(t.record.state == HealthState::initial);
        CHECK(t.record.routable_while_initial);
        CHECK(routable(t.record));
        CHECK(t.deregistration == Deregistration::none);
        CHECK(t.stats != nullptr);
        CHECK(!t.deadline);
        CHECK(!t.last_check);
    }
    CHECK(r.targets[0].stats != r.targets[1].stats);
}

TEST_CASE("target_set: reload keeps, adds and removes") {
    auto before = web({target("127.0.0.1:9001", "a"), target("127.0.0.1:9002", "b"),
                       target("127.0.0.1:9003", "c")});
    before.deregistration_delay = delay(300s);
    auto current = started(before);
    find(current, "a").record = healthy();
    find(current, "a").handle = 7;
    find(current, "a").last_check = LastCheck{true, "connected", {}, 120us};
    find(current, "b").record.state = HealthState::unhealthy;
    auto a_stats = find(current, "a").stats;
    auto b_stats = find(current, "b").stats;
    auto c_stats = find(current, "c").stats;

    auto after = web({target("127.0.0.1:9001", "a", 5), target("127.0.0.1:9002", "b"),
                      target("127.0.0.1:9004", "d")});
    after.deregistration_delay = delay(300s);
    auto r =
        reconcile(current, desired_targets(after, {}), after.deregistration_delay, t0 + 10s, false);
    REQUIRE(r.targets.size() == 4);
    CHECK(ids_of(r, r.added) == std::vector<std::string>{"d"});
    CHECK(ids_of(r, r.removed) == std::vector<std::string>{"c"});
    CHECK(r.restored.empty());

    const auto& a = find(r.targets, "a");
    CHECK(a.record == healthy());
    CHECK(a.stats == a_stats);
    CHECK(a.handle == 7);
    CHECK(a.weight == 5);  // weight follows the config
    REQUIRE(a.last_check);
    CHECK(a.last_check->duration == 120us);
    CHECK(find(r.targets, "b").record.state == HealthState::unhealthy);
    CHECK(find(r.targets, "b").stats == b_stats);

    const auto& c = find(r.targets, "c");
    CHECK(c.deregistration == Deregistration::removed);
    CHECK(c.deadline == t0 + 310s);
    CHECK(c.stats == c_stats);

    const auto& d = find(r.targets, "d");
    CHECK(d.record.state == HealthState::initial);
    CHECK_FALSE(d.record.routable_while_initial);  // waits for its first pass
    CHECK_FALSE(routable(d.record));
    CHECK(d.stats != nullptr);
    CHECK(d.handle == 0);
}

TEST_CASE("target_set: a changed address is a different target") {
    auto g = web({target("127.0.0.1:9001", "a")});
    auto current = started(g);
    find(current, "a").record = healthy();
    auto old_stats = current[0].stats;
    auto moved = web({target("127.0.0.1:9101", "a")});
    auto r = reconcile(current, desired_targets(moved, {}), delay(60s), t0, false);
    REQUIRE(r.targets.size() == 2);
    CHECK(r.added.size() == 1);
    CHECK(r.removed.size() == 1);
    const auto& gone = r.targets[r.removed[0]];
    const auto& fresh = r.targets[r.added[0]];
    CHECK(gone.address == addr("127.0.0.1:9001"));
    CHECK(gone.deregistration == Deregistration::removed);
    CHECK(gone.stats == old_stats);
    CHECK(fresh.address == addr("127.0.0.1:9101"));
    CHECK(fresh.record.state == HealthState::initial);
    CHECK(fresh.stats != old_stats);
    // Only the new one is a member.
    auto routing = build_group_routing(moved, r.targets, nullptr);
    REQUIRE(routing.table->targets.size() == 1);
    CHECK(routing.table->targets[0].address == addr("127.0.0.1:9101"));
}

TEST_CASE("target_set: drain survives a reload; removal of a drained target keeps its deadline") {
    auto g = web({target("127.0.0.1:9001", "a"), target("127.0.0.1:9002", "b")});
    auto current = started(g);
    find(current, "a").deregistration = Deregistration::drained;
    find(current, "a").deadline = t0 + 5s;

    auto r = reconcile(current, desired_targets(g, {}), delay(300s), t0 + 1s, false);
    CHECK(r.added.empty());
    CHECK(r.removed.empty());
    CHECK(find(r.targets, "a").deregistration == Deregistration::drained);
    CHECK(find(r.targets, "a").deadline == t0 + 5s);

    auto only_b = web({target("127.0.0.1:9002", "b")});
    auto r2 = reconcile(r.targets, desired_targets(only_b, {}), delay(300s), t0 + 2s, false);
    CHECK(ids_of(r2, r2.removed) == std::vector<std::string>{"a"});
    CHECK(find(r2.targets, "a").deregistration == Deregistration::removed);
    CHECK(find(r2.targets, "a").deadline == t0 + 5s);
}

TEST_CASE("target_set: re-adding a target during its deregistration just keeps it") {
    auto g = web({target("127.0.0.1:9001", "a"), target("127.0.0.1:9002", "b")});
    g.deregistration_delay = delay(300s);
    auto current = started(g);
    find(current, "b").record = healthy();
    auto b_stats = find(current, "b").stats;

    auto without_b = web({target("127.0.0.1:9001", "a")});
    auto removed = reconcile(current, desired_targets(without_b, {}), delay(300s), t0, false);
    CHECK(find(removed.targets, "b").deregistration == Deregistration::removed);

    // A second reload without it changes nothing: the delay keeps running.
    auto again =
        reconcile(removed.targets, desired_targets(without_b, {}), delay(300s), t0 + 50s, false);
    CHECK(again.removed.empty());
    CHECK(find(again.targets, "b").deadline == t0 + 300s);

    auto back = reconcile(again.targets, desired_targets(g, {}), delay(300s), t0 + 60s, false);
    CHECK(back.added.empty());
    CHECK(back.removed.empty());
    CHECK(ids_of(back, back.restored) == std::vector<std::string>{"b"});
    const auto& b = find(back.targets, "b");
    CHECK(b.deregistration == Deregistration::none);
    CHECK(!b.deadline);
    CHECK(b.record == healthy());
    CHECK(b.stats == b_stats);
}

TEST_CASE("target_set: connection termination makes the deadline now") {
    auto g = web({target("127.0.0.1:9001", "a"), target("127.0.0.1:9002", "b")});
    auto current = started(g);
    auto r = reconcile(current, desired_targets(web({target("127.0.0.1:9001", "a")}), {}),
                       delay(300s, true), t0 + 3s, false);
    CHECK(find(r.targets, "b").deadline == t0 + 3s);
}

TEST_CASE("target_set: DNS targets come and go; a configured id shadows a discovered one") {
    auto g = web({target("127.0.0.1:9001", "127.0.0.3:80", 4)});
    std::vector<SocketAddress> dns = {addr("127.0.0.2:80"), addr("127.0.0.3:80")};
    auto current = started(g, dns);
    REQUIRE(current.size() == 2);
    CHECK(find(current, "127.0.0.2:80").origin == TargetOrigin::dns);
    CHECK(find(current, "127.0.0.3:80").origin == TargetOrigin::config);
    CHECK(find(current, "127.0.0.3:80").address == addr("127.0.0.1:9001"));
    CHECK(find(current, "127.0.0.3:80").weight == 4);

    std::vector<SocketAddress> next_dns = {addr("127.0.0.3:80"), addr("127.0.0.4:80")};
    auto r = reconcile(current, desired_targets(g, next_dns), delay(30s), t0, false);
    CHECK(ids_of(r, r.added) == std::vector<std::string>{"127.0.0.4:80"});
    CHECK(ids_of(r, r.removed) == std::vector<std::string>{"127.0.0.2:80"});
    CHECK(find(r.targets, "127.0.0.4:80").origin == TargetOrigin::dns);
    CHECK(find(r.targets, "127.0.0.4:80").weight == 1);

    // The configured target goes from the config: DNS still has that address, so
    // the discovered one replaces it as a new target (another address).
    auto r2 = reconcile(r.targets, desired_targets(web({}), next_dns), delay(30s), t0, false);
    CHECK(r2.added.size() == 1);
    CHECK(r2.targets[r2.added[0]].id == "127.0.0.3:80");
    CHECK(r2.targets[r2.added[0]].address == addr("127.0.0.3:80"));
    CHECK(r2.targets[r2.added[0]].origin == TargetOrigin::dns);
    CHECK(r2.removed.size() == 1);
    CHECK(r2.targets[r2.removed[0]].address == addr("127.0.0.1:9001"));
}

TEST_CASE("target_set: the same target from config and DNS at the same address is kept") {
    auto g = web({target("127.0.0.2:80")});
    auto current = started(g);
    find(current, "127.0.0.2:80").record = healthy();
    // The config drops it while DNS now reports it: same id and address, so it stays.
    std::vector<SocketAddress> dns = {addr("127.0.0.2:80")};
    auto r = reconcile(current, desired_targets(web({}), dns), delay(30s), t0, false);
    CHECK(r.added.empty());
    CHECK(r.removed.empty());
    CHECK(find(r.targets, "127.0.0.2:80").origin == TargetOrigin::dns);
    CHECK(find(r.targets, "127.0.0.2:80").record == healthy());
}

TEST_CASE("target_set: routing members, usability and fail-open") {
    auto g = web({target("127.0.0.1:9001", "a"), target("127.0.0.1:9002", "b"),
                  target("127.0.0.1:9003", "c"), target("127.0.0.1:9004", "d")});
    auto targets = started(g);
    for (auto& t : targets) t.record = healthy();
    find(targets, "b").record.state = HealthState::unhealthy;
    find(targets, "c").deregistration = Deregistration::drained;
    find(targets, "d").deregistration = Deregistration::removed;

    auto routing = build_group_routing(g, targets, nullptr);
    const RoutingTable& table = *routing.table;
    REQUIRE(table.targets.size() == 3);  // d left the balancer
    CHECK(table.targets[0].id == "a");
    CHECK(table.targets[2].id == "c");
    CHECK(table.balancer->members().size() == 3);
    CHECK(table.usable == std::vector<uint8_t>{1, 0, 0});
    CHECK(routing.members == std::vector<size_t>{0, 1, 2});
    CHECK(routing.usable == 1);
    CHECK_FALSE(routing.failing_open);
    CHECK_FALSE(table.no_target);
    CHECK(table.targets[0].stats == targets[0].stats);

    SUBCASE("fail-open covers only targets in service") {
        find(targets, "a").record.state = HealthState::unhealthy;
        auto open = build_group_routing(g, targets, nullptr);
        CHECK(open.failing_open);
        CHECK(open.usable == 0);
        CHECK(open.table->usable == std::vector<uint8_t>{1, 1, 0});
        CHECK_FALSE(open.table->no_target);
        for (uint64_t k : test::client_hashes(500)) {
            CHECK(open.table->targets[open.table->pick(k, 0)].id != "c");
        }
    }
    SUBCASE("only drained members: nothing to fail open to") {
        find(targets, "a").deregistration = Deregistration::drained;
        find(targets, "b").deregistration = Deregistration::drained;
        auto none = build_group_routing(g, targets, nullptr);
        CHECK_FALSE(none.failing_open);
        CHECK(none.table->no_target);
        CHECK(none.table->pick(12345, 0) == kNoMember);
        CHECK(none.table->pick(12345, 2) == kNoMember);
    }
    SUBCASE("no members at all") {
        for (auto& t : targets) t.deregistration = Deregistration::removed;
        auto empty = build_group_routing(g, targets, nullptr);
        CHECK(empty.table->targets.empty());
        CHECK(empty.table->balancer == nullptr);
        CHECK(empty.table->pick(1, 0) == kNoMember);
        CHECK_FALSE(empty.failing_open);
    }
    SUBCASE("health checks off: health is ignored, drains are not") {
        g.health_check.enabled = false;
        for (auto& t : targets) t.record.state = HealthState::unhealthy;
        auto off = build_group_routing(g, targets, nullptr);
        CHECK(off.table->usable == std::vector<uint8_t>{1, 1, 0});
        CHECK_FALSE(off.failing_open);
    }
}

TEST_CASE("target_set: minimum_healthy_targets fails open above none healthy") {
    auto g = web({target("127.0.0.1:9001", "a"), target("127.0.0.1:9002", "b"),
                  target("127.0.0.1:9003", "c"), target("127.0.0.1:9004", "d")});
    g.minimum_healthy_targets.count = 3;
    auto targets = started(g);
    for (auto& t : targets) t.record = healthy();
    const std::vector<uint64_t> keys = test::client_hashes(2000);
    const auto all_up = build_group_routing(g, targets, nullptr);
    CHECK_FALSE(all_up.failing_open);
    CHECK(all_up.usable == 4);
    CHECK(all_up.in_service == 4);
    CHECK(all_up.required == 3);
    const auto owners = mapping(all_up, keys);

    SUBCASE("one down of four: still routed around, only its clients move") {
        find(targets, "b").record.state = HealthState::unhealthy;
        const auto one_down = build_group_routing(g, targets, nullptr);
        CHECK_FALSE(one_down.failing_open);
        CHECK(one_down.usable == 3);
        CHECK(one_down.table->usable == std::vector<uint8_t>{1, 0, 1, 1});
        const auto now = mapping(one_down, keys);
        for (size_t i = 0; i < keys.size(); ++i) {
            if (owners[i] == "b") {
                CHECK(now[i] != "b");
            } else {
                CHECK(now[i] == owners[i]);
            }
        }
    }
    SUBCASE("two down of four: every client goes to its owner, the dead ones' too") {
        find(targets, "b").record.state = HealthState::unhealthy;
        find(targets, "c").record.state = HealthState::unhealthy;
        const auto two_down = build_group_routing(g, targets, nullptr);
        CHECK(two_down.failing_open);
        CHECK(two_down.usable == 2);
        CHECK(two_down.in_service == 4);
        CHECK(two_down.required == 3);
        CHECK(two_down.table->usable == std::vector<uint8_t>{1, 1, 1, 1});
        CHECK(mapping(two_down, keys) == owners);
    }
    SUBCASE("drained targets are not in service: neither counted nor opened to") {
        find(targets, "a").deregistration = Deregistration::drained;
        find(targets, "b").record.state = HealthState::unhealthy;
        const auto drained = build_group_routing(g, targets, nullptr);
        CHECK(drained.in_service == 3);
        CHECK(drained.usable == 2);
        CHECK(drained.failing_open);
        CHECK(drained.table->usable == std::vector<uint8_t>{0, 1, 1, 1});
        for (uint64_t k : keys) CHECK(drained.table->targets[drained.table->pick(k, 0)].id != "a");
    }
    SUBCASE("a percentage of those in service, rounded up") {
        g.minimum_healthy_targets = {1, 60};  // 60% of 4 = 2.4: 3 healthy needed
        find(targets, "b").record.state = HealthState::unhealthy;
        CHECK_FALSE(build_group_routing(g, targets, nullptr).failing_open);
        find(targets, "c").record.state = HealthState::unhealthy;
        const auto open = build_group_routing(g, targets, nullptr);
        CHECK(open.required == 3);
        CHECK(open.failing_open);
        // Removing an unhealthy target shrinks the base: 2 of 3 is 67%, enough.
        find(targets, "c").deregistration = Deregistration::removed;
        const auto smaller = build_group_routing(g, targets, nullptr);
        CHECK(smaller.in_service == 3);
        CHECK(smaller.required == 2);
        CHECK_FALSE(smaller.failing_open);
    }
    SUBCASE("a count larger than the group: all healthy is not failing open") {
        g.minimum_healthy_targets.count = 10;
        const auto up = build_group_routing(g, targets, nullptr);
        CHECK_FALSE(up.failing_open);
        CHECK(up.required == 10);
        find(targets, "d").record.state = HealthState::unhealthy;
        const auto down = build_group_routing(g, targets, nullptr);
        CHECK(down.failing_open);
        CHECK(mapping(down, keys) == owners);
    }
    SUBCASE("every target drained: nothing to open to, whatever the minimum") {
        for (auto& t : targets) t.deregistration = Deregistration::drained;
        const auto none = build_group_routing(g, targets, nullptr);
        CHECK_FALSE(none.failing_open);
        CHECK(none.table->no_target);
        CHECK(none.in_service == 0);
    }
    SUBCASE("health checks off: everything in service is healthy") {
        g.health_check.enabled = false;
        for (auto& t : targets) t.record.state = HealthState::unhealthy;
        const auto off = build_group_routing(g, targets, nullptr);
        CHECK_FALSE(off.failing_open);
        CHECK(off.usable == 4);
    }
}

TEST_CASE("target_set: settings go into the snapshot") {
    auto g = web({target("127.0.0.1:9001", "a")}, Algorithm::maglev);
    g.stickiness.prefix_v4 = 24;
    g.stickiness.prefix_v6 = 64;
    g.connect_timeout = Duration{750};
    g.connect_retries = 5;
    g.proxy_protocol_v2 = true;
    g.preserve_client_ip = true;
    auto routing = build_group_routing(g, started(g), nullptr);
    const RoutingTable& t = *routing.table;
    CHECK(t.group == "web");
    CHECK(t.balancer->algorithm() == "maglev");
    CHECK(t.prefix_v4 == 24);
    CHECK(t.prefix_v6 == 64);
    CHECK(t.connect_timeout == Duration{750});
    CHECK(t.connect_retries == 5);
    CHECK(t.proxy_protocol_v2);
    CHECK(t.preserve_client_ip);
    CHECK(t.passive == nullptr);
}

TEST_CASE("target_set: an unchanged group reuses the balancer and passive health") {
    auto g = web({target("127.0.0.1:9001", "a"), target("127.0.0.1:9002", "b", 2)});
    auto targets = started(g);
    auto first = build_group_routing(g, targets, nullptr);
    first.table->passive = std::make_shared<PassiveHealth>(2, 2, -1);

    find(targets, "a").record.state = HealthState::unhealthy;
    find(targets, "a").record.routable_while_initial = false;
    auto second = build_group_routing(g, targets, first.table.get());
    CHECK(second.table->balancer == first.table->balancer);
    CHECK(second.table->passive == first.table->passive);
    CHECK_FALSE(same_routing(*first.table, *second.table));  // usable changed

    SUBCASE("same ids, new address: balancer kept, passive not (its indexes mean other sockets)") {
        auto moved = targets;
        find(moved, "a").address = addr("127.0.0.1:9101");
        auto third = build_group_routing(g, moved, first.table.get());
        CHECK(third.table->balancer == first.table->balancer);
        CHECK(third.table->passive == nullptr);
    }
    SUBCASE("a weight change rebuilds") {
        find(targets, "b").weight = 3;
        auto third = build_group_routing(g, targets, first.table.get());
        CHECK(third.table->balancer != first.table->balancer);
        CHECK(third.table->passive == nullptr);
    }
    SUBCASE("a drain keeps the members") {
        find(targets, "b").deregistration = Deregistration::drained;
        auto third = build_group_routing(g, targets, first.table.get());
        CHECK(third.table->balancer == first.table->balancer);
    }
    SUBCASE("a removal drops a member") {
        find(targets, "b").deregistration = Deregistration::removed;
        auto third = build_group_routing(g, targets, first.table.get());
        CHECK(third.table->balancer != first.table->balancer);
        CHECK(third.table->balancer->members().size() == 1);
    }
}

TEST_CASE("target_set: same_routing sees every routing difference") {
    auto g = web({target("127.0.0.1:9001", "a"), target("127.0.0.1:9002", "b")});
    auto targets = started(g);
    auto base = build_group_routing(g, targets, nullptr);
    auto again = build_group_routing(g, targets, base.table.get());
    CHECK(same_routing(*base.table, *again.table));

    auto changed = [&](auto mutate) {
        RoutingTable copy = *base.table;
        mutate(copy);
        return !same_routing(*base.table, copy);
    };
    CHECK(changed([](RoutingTable& t) { t.usable[0] = 0; }));
    CHECK(changed([](RoutingTable& t) { t.prefix_v4 = 24; }));
    CHECK(changed([](RoutingTable& t) { t.prefix_v6 = 64; }));
    CHECK(changed([](RoutingTable& t) { t.connect_timeout = Duration{1}; }));
    CHECK(changed([](RoutingTable& t) { t.connect_retries = 0; }));
    CHECK(changed([](RoutingTable& t) { t.proxy_protocol_v2 = true; }));
    CHECK(changed([](RoutingTable& t) { t.preserve_client_ip = true; }));
    CHECK(changed([](RoutingTable& t) { t.no_target = true; }));
    CHECK(changed([](RoutingTable& t) { t.passive = std::make_shared<PassiveHealth>(2, 2, -1); }));
    CHECK(changed([](RoutingTable& t) { t.targets[1].address = addr("127.0.0.1:1"); }));
    CHECK(changed([](RoutingTable& t) { t.targets[1].stats = std::make_shared<TargetStats>(); }));
    CHECK(changed([](RoutingTable& t) { t.targets.pop_back(); }));
    CHECK(changed([&](RoutingTable& t) {
        t.balancer = build_ring({{"a", 1}, {"b", 1}});  // equal, but another object
    }));
}

TEST_CASE("target_set: minimal disruption across reloads and drains") {
    for (Algorithm algorithm : {Algorithm::ring, Algorithm::maglev}) {
        const std::string name = algorithm == Algorithm::ring ? "ring" : "maglev";
        CAPTURE(name);
        auto g = web({target("127.0.0.1:9001", "a"), target("127.0.0.1:9002", "b"),
                      target("127.0.0.1:9003", "c"), target("127.0.0.1:9004", "d"),
                      target("127.0.0.1:9005", "e")},
                     algorithm);
        auto targets = started(g);
        const auto keys = test::client_hashes(5000);
        const auto before = mapping(build_group_routing(g, targets, nullptr), keys);
        CHECK(std::set<std::string>(before.begin(), before.end()).size() == 5);

        SUBCASE("a reload that removes one target moves only its keys") {
            auto without_c = g;
            without_c.targets.erase(without_c.targets.begin() + 2);
            auto r = reconcile(targets, desired_targets(without_c, {}), delay(300s), t0, false);
            const auto after = mapping(build_group_routing(without_c, r.targets, nullptr), keys);
            size_t moved = 0;
            size_t others_moved = 0;
            for (size_t i = 0; i < keys.size(); ++i) {
                if (before[i] == "c") {
                    CHECK(after[i] != "c");
                    ++moved;
                } else {
                    others_moved += after[i] != before[i];
                }
            }
            CHECK(moved > 0);
            // The ring moves exactly the removed target's keys; a rebuilt Maglev
            // table (a member fewer) moves a few more, as the paper says.
            if (algorithm == Algorithm::ring) {
                CHECK(others_moved == 0);
            } else {
                CHECK(others_moved < keys.size() / 20);
            }
            // Re-added within the delay: every key is back where it was.
            auto back = reconcile(r.targets, desired_targets(g, {}), delay(300s), t0, false);
            CHECK(mapping(build_group_routing(g, back.targets, nullptr), keys) == before);
        }
        SUBCASE("a drain moves only its keys, and enable brings exactly them back") {
            auto drained = targets;
            find(drained, "b").deregistration = Deregistration::drained;
            auto first = build_group_routing(g, targets, nullptr);
            auto during = mapping(build_group_routing(g, drained, first.table.get()), keys);
            for (size_t i = 0; i < keys.size(); ++i) {
                if (before[i] == "b") {
                    CHECK(during[i] != "b");
                } else {
                    CHECK(during[i] == before[i]);
                }
            }
            find(drained, "b").deregistration = Deregistration::none;
            CHECK(mapping(build_group_routing(g, drained, first.table.get()), keys) == before);
        }
        SUBCASE("a reload that adds one target moves keys only onto it") {
            auto with_f = g;
            with_f.targets.push_back(target("127.0.0.1:9006", "f"));
            auto r = reconcile(targets, desired_targets(with_f, {}), delay(300s), t0, false);
            // The new target is initial and not yet routable: nothing moves onto it.
            // On the ring nothing moves at all; a Maglev table rebuilt with one more
            // member sends that member's slots on to the next usable entry, which
            // is not always the previous owner (about its share moves).
            const auto waiting = mapping(build_group_routing(with_f, r.targets, nullptr), keys);
            size_t changed = 0;
            for (size_t i = 0; i < keys.size(); ++i) {
                CHECK(waiting[i] != "f");
                changed += waiting[i] != before[i];
            }
            CHECK(changed <= (algorithm == Algorithm::ring ? 0 : keys.size() / 4));
            find(r.targets, "f").record = healthy();
            const auto after = mapping(build_group_routing(with_f, r.targets, nullptr), keys);
            size_t moved = 0;
            size_t elsewhere = 0;
            for (size_t i = 0; i < keys.size(); ++i) {
                if (after[i] != before[i]) {
                    ++moved;
                    elsewhere += after[i] != "f";
                }
            }
            CHECK(moved > 0);
            if (algorithm == Algorithm::ring) {
                CHECK(elsewhere == 0);
            } else {
                CHECK(elsewhere < keys.size() / 20);
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// The runtime overlay: RegisterTargets / DeregisterTargets over the file.

namespace {

Registration reg(const char* id, const char* address, std::optional<uint32_t> weight = {}) {
    return {id, addr(address), weight};
}

std::vector<std::string> desired_ids(const TargetGroupConfig& g, const RuntimeOverlay& o) {
    std::vector<std::string> out;
    for (const DesiredTarget& t : desired_targets(g, {}, o)) out.push_back(t.id);
    return out;
}

const DesiredTarget& desired(const std::vector<DesiredTarget>& all, const std::string& id) {
    for (const auto& t : all)
        if (t.id == id) return t;
    FAIL("no desired target " << id);
    return all.front();
}

RuntimeOverlay changed(const OverlayEdit& edit) {
    REQUIRE_MESSAGE(edit.outcome == OverlayEdit::Outcome::changed, edit.message);
    return edit.overlay;
}

}  // namespace

TEST_CASE("overlay: origin names") {
    CHECK(to_string(TargetOrigin::config) == "config");
    CHECK(to_string(TargetOrigin::dns) == "dns");
    CHECK(to_string(TargetOrigin::runtime) == "runtime");
}

TEST_CASE("overlay: register adds a runtime target; the file's stay as they are") {
    auto g = web({target("127.0.0.1:9001", "a", 2), target("127.0.0.1:9002", "b")});
    const RuntimeOverlay none;
    CHECK(desired_targets(g, {}, none) == desired_targets(g, {}));

    auto o = changed(register_target(g, {}, none, reg("c", "127.0.0.1:9003")));
    REQUIRE(o.registered.size() == 1);
    CHECK(o.registered[0] == DesiredTarget{"c", addr("127.0.0.1:9003"), 1, TargetOrigin::runtime});
    CHECK(o.deregistered.empty());
    // Sorted by id, whatever order they came in.
    o = changed(register_target(g, {}, o, reg("[::1]:9000", "[::1]:9000", 7)));
    CHECK(o.registered[0].id == "[::1]:9000");
    CHECK(o.registered[0].weight == 7);
    const auto all = desired_targets(g, {}, o);
    CHECK(desired_ids(g, o) == std::vector<std::string>{"[::1]:9000", "a", "b", "c"});
    CHECK(desired(all, "a") == DesiredTarget{"a", addr("127.0.0.1:9001"), 2, TargetOrigin::config});
    CHECK(desired(all, "c").origin == TargetOrigin::runtime);
}

TEST_CASE("overlay: register refuses a taken id or address, a DNS group, and what does not fit") {
    auto g = web({target("127.0.0.1:9001", "a"), target("127.0.0.1:9002", "b")});
    const RuntimeOverlay o = changed(register_target(g, {}, {}, reg("c", "127.0.0.1:9003")));

    auto id_taken = register_target(g, {}, o, reg("a", "127.0.0.1:9009"));
    CHECK(id_taken.outcome == OverlayEdit::Outcome::conflict);
    CHECK(id_taken.message ==
          "target group 'web' already has a target with id 'a' (127.0.0.1:9001)");
    auto runtime_id = register_target(g, {}, o, reg("c", "127.0.0.1:9009"));
    CHECK(runtime_id.outcome == OverlayEdit::Outcome::conflict);
    CHECK(runtime_id.message ==
          "target group 'web' already has a target with id 'c' (127.0.0.1:9003)");
    auto address_taken = register_target(g, {}, o, reg("z", "127.0.0.1:9002"));
    CHECK(address_taken.outcome == OverlayEdit::Outcome::conflict);
    CHECK(address_taken.message ==
          "target group 'web' already has a target at 127.0.0.1:9002 (id 'b')");
    // The very same target again is a duplicate too.
    CHECK(register_target(g, {}, o, reg("c", "127.0.0.1:9003")).outcome ==
          OverlayEdit::Outcome::conflict);

    auto dns = g;
    dns.dns = {DnsDiscoveryConfig{"app.local", 80, Duration{5000}}};
    auto refused = register_target(dns, {}, {}, reg("c", "127.0.0.1:9003"));
    CHECK(refused.outcome == OverlayEdit::Outcome::conflict);
    CHECK(refused.message ==
          "target group 'web' takes its targets from DNS (dns = \"app.local:80\"), not from the "
          "admin API");
    dns.dns.push_back(DnsDiscoveryConfig{"api.local", 8080, Duration{5000}});
    CHECK(register_target(dns, {}, {}, reg("c", "127.0.0.1:9003")).message ==
          "target group 'web' takes its targets from DNS (dns = [\"app.local:80\", "
          "\"api.local:8080\"]), not from the admin API");

    // A ring holds weights up to 1024 in all.
    auto heavy = web({});
    for (int i = 0; i < 10; ++i) {
        heavy.targets.push_back(
            {fmt::format("t{}", i), addr(fmt::format("127.0.1.{}:80", i + 1).c_str()), 100});
    }
    auto fits = changed(register_target(heavy, {}, {}, reg("x", "127.0.0.2:80", 24)));
    auto full = register_target(heavy, {}, fits, reg("y", "127.0.0.3:80"));
    CHECK(full.outcome == OverlayEdit::Outcome::over_capacity);
    CHECK(full.message ==
          "target group 'web' cannot take target y (127.0.0.3:80): the targets' weights add up "
          "to 1025, more than one ring holds (1024); use smaller weights (only their ratios "
          "matter) or algorithm = \"maglev\"");
    // A maglev table of 1021 entries holds 10 targets (100 entries each).
    auto maglev = web({}, Algorithm::maglev);
    RuntimeOverlay m;
    for (int i = 0; i < 10; ++i) {
        m = changed(
            register_target(maglev, {}, m,
                            {fmt::format("m{}", i),
                             addr(fmt::format("127.0.2.{}:80", i + 1).c_str()), std::nullopt}));
    }
    auto eleventh = register_target(maglev, {}, m, reg("m10", "127.0.2.11:80"));
    CHECK(eleventh.outcome == OverlayEdit::Outcome::over_capacity);
    CHECK(eleventh.message.starts_with(
        "target group 'web' cannot take target m10 (127.0.2.11:80): maglev_table_size 1021"));
}

TEST_CASE("overlay: deregister takes a runtime target out of the overlay, a file one into it") {
    auto g = web({target("127.0.0.1:9001", "a", 3), target("127.0.0.1:9002", "b")});
    auto o = changed(register_target(g, {}, {}, reg("c", "127.0.0.1:9003")));

    auto without_c = changed(deregister_target(g, {}, o, "c"));
    CHECK(without_c.empty());
    auto without_a = changed(deregister_target(g, {}, o, "a"));
    REQUIRE(without_a.deregistered.size() == 1);
    CHECK(without_a.deregistered[0] ==
          DesiredTarget{"a", addr("127.0.0.1:9001"), 3, TargetOrigin::config});
    CHECK(desired_ids(g, without_a) == std::vector<std::string>{"b", "c"});

    auto unknown = deregister_target(g, {}, without_a, "a");  // already out
    CHECK(unknown.outcome == OverlayEdit::Outcome::unknown_target);
    CHECK(unknown.message == "target group 'web' has no target 'a'");

    auto dns = g;
    dns.dns = {DnsDiscoveryConfig{"app.local", 80, Duration{5000}}};
    auto refused = deregister_target(dns, {}, {}, "a");
    CHECK(refused.outcome == OverlayEdit::Outcome::conflict);
    CHECK(refused.message ==
          "target group 'web' takes its targets from DNS (dns = \"app.local:80\"), not from the "
          "admin API; drain a target to take it out of service");
}

TEST_CASE("overlay: registering a deregistered file target again lifts the deregistration") {
    auto g = web({target("127.0.0.1:9001", "a", 3), target("127.0.0.1:9002", "b")});
    const auto out = changed(deregister_target(g, {}, {}, "a"));

    // By its own id and address, with no weight or the file's: the file's target again.
    CHECK(changed(register_target(g, {}, out, reg("a", "127.0.0.1:9001"))).empty());
    CHECK(changed(register_target(g, {}, out, reg("a", "127.0.0.1:9001", 3))).empty());
    auto other_weight = register_target(g, {}, out, reg("a", "127.0.0.1:9001", 5));
    CHECK(other_weight.outcome == OverlayEdit::Outcome::conflict);
    CHECK(other_weight.message ==
          "target group 'web': target a (127.0.0.1:9001) is the configuration file's, with "
          "weight 3; register it again without a weight or with weight 3, or change the file");

    // Its id at another address, or its address under another id, is a runtime
    // target of its own: the file's stays deregistered.
    auto elsewhere = changed(register_target(g, {}, out, reg("a", "127.0.0.1:9011")));
    CHECK(elsewhere.deregistered == out.deregistered);
    CHECK(desired(desired_targets(g, {}, elsewhere), "a").origin == TargetOrigin::runtime);
    auto renamed = changed(register_target(g, {}, out, reg("a2", "127.0.0.1:9001")));
    CHECK(desired_ids(g, renamed) == std::vector<std::string>{"a2", "b"});
}

TEST_CASE("overlay: a reload keeps the overlay; the file wins where they meet") {
    auto g = web({target("127.0.0.1:9001", "a", 3), target("127.0.0.1:9002", "b")});
    RuntimeOverlay o = changed(register_target(g, {}, {}, reg("c", "127.0.0.1:9003")));
    o = changed(register_target(g, {}, o, reg("d", "127.0.0.1:9004")));
    o = changed(deregister_target(g, {}, o, "a"));
    std::vector<std::string> notes;

    SUBCASE("the same file: nothing changes") {
        CHECK(rebase_overlay(o, &g, notes) == o);
        CHECK(notes.empty());
    }
    SUBCASE("a deregistration lasts while the file lists the target, whatever its weight") {
        auto heavier = web({target("127.0.0.1:9001", "a", 9), target("127.0.0.1:9002", "b")});
        auto next = rebase_overlay(o, &heavier, notes);
        CHECK(notes.empty());
        REQUIRE(next.deregistered.size() == 1);
        CHECK(next.deregistered[0].weight == 9);
        CHECK(desired_ids(heavier, next) == std::vector<std::string>{"b", "c", "d"});
    }
    SUBCASE("it lapses once the file stops listing it; listing it again brings it back") {
        auto without_a = web({target("127.0.0.1:9002", "b")});
        auto next = rebase_overlay(o, &without_a, notes);
        CHECK(next.deregistered.empty());
        CHECK(next.registered == o.registered);
        CHECK(notes == std::vector<std::string>{
                           "target group 'web': target a (127.0.0.1:9001), deregistered at run "
                           "time, is no longer in the configuration file; listing it again "
                           "registers it"});
        notes.clear();
        CHECK(rebase_overlay(next, &g, notes) == next);
        CHECK(desired_ids(g, next) == std::vector<std::string>{"a", "b", "c", "d"});
    }
    SUBCASE("a file that moves the target elsewhere ends its deregistration") {
        auto moved = web({target("127.0.0.1:9101", "a", 3), target("127.0.0.1:9002", "b")});
        auto next = rebase_overlay(o, &moved, notes);
        CHECK(next.deregistered.empty());
        CHECK(desired(desired_targets(moved, {}, next), "a").address == addr("127.0.0.1:9101"));
    }
    SUBCASE("a runtime target the file now lists as it is becomes the file's") {
        auto adopted = g;
        adopted.targets.push_back(target("127.0.0.1:9003", "c", 4));
        auto next = rebase_overlay(o, &adopted, notes);
        REQUIRE(next.registered.size() == 1);
        CHECK(next.registered[0].id == "d");
        CHECK(notes == std::vector<std::string>{
                           "target group 'web': target c (127.0.0.1:9003), registered at run "
                           "time, is now in the configuration file, which keeps it"});
        const auto all = desired_targets(adopted, {}, next);
        CHECK(desired(all, "c") ==
              DesiredTarget{"c", addr("127.0.0.1:9003"), 4, TargetOrigin::config});
    }
    SUBCASE("a file target that takes a runtime target's id or address replaces it") {
        auto taken = g;
        taken.targets.push_back(target("127.0.0.1:9013", "c"));  // c's id
        taken.targets.push_back(target("127.0.0.1:9004", "e"));  // d's address
        auto next = rebase_overlay(o, &taken, notes);
        CHECK(next.registered.empty());
        CHECK(notes == std::vector<std::string>{
                           "target group 'web': target c (127.0.0.1:9003), registered at run "
                           "time, deregisters: the configuration file's target c "
                           "(127.0.0.1:9013) takes its id",
                           "target group 'web': target d (127.0.0.1:9004), registered at run "
                           "time, deregisters: the configuration file's target e "
                           "(127.0.0.1:9004) takes its address"});
    }
    SUBCASE("a deregistered file target does not take anything from a runtime one") {
        // "a" is out; a runtime target under its id elsewhere stays across reloads.
        auto a_elsewhere = changed(register_target(g, {}, o, reg("a", "127.0.0.1:9011")));
        CHECK(rebase_overlay(a_elsewhere, &g, notes) == a_elsewhere);
        CHECK(notes.empty());
    }
    SUBCASE("a group that turns to DNS, or is gone, keeps no overlay") {
        auto dns = g;
        dns.dns = {DnsDiscoveryConfig{"app.local", 80, Duration{5000}}};
        CHECK(rebase_overlay(o, &dns, notes).empty());
        CHECK(notes == std::vector<std::string>{
                           "target group 'web' now takes its targets from DNS: 2 registered and 1 "
                           "deregistered at run time go back to what DNS and the file say"});
        CHECK(rebase_overlay(o, nullptr, notes).empty());
    }
}

TEST_CASE("overlay: registration and deregistration go through reconcile like a reload") {
    auto g = web({target("127.0.0.1:9001", "a"), target("127.0.0.1:9002", "b")});
    g.deregistration_delay = delay(300s);
    auto current = started(g);
    for (auto& t : current) t.record = healthy();

    auto o = changed(register_target(g, {}, {}, reg("c", "127.0.0.1:9003")));
    auto added = reconcile(current, desired_targets(g, {}, o), delay(300s), t0, false);
    CHECK(ids_of(added, added.added) == std::vector<std::string>{"c"});
    const auto& c = find(added.targets, "c");
    CHECK(c.origin == TargetOrigin::runtime);
    CHECK_FALSE(routable(c.record));  // takes clients after its first passed check

    auto out = changed(deregister_target(g, {}, o, "b"));
    auto removed =
        reconcile(added.targets, desired_targets(g, {}, out), delay(300s), t0 + 5s, false);
    CHECK(ids_of(removed, removed.removed) == std::vector<std::string>{"b"});
    CHECK(find(removed.targets, "b").deadline == t0 + 305s);

    // Registered again within its delay: kept, health and all.
    auto back = changed(register_target(g, {}, out, reg("b", "127.0.0.1:9002")));
    auto restored =
        reconcile(removed.targets, desired_targets(g, {}, back), delay(300s), t0 + 6s, false);
    CHECK(ids_of(restored, restored.restored) == std::vector<std::string>{"b"});
    CHECK(find(restored.targets, "b").record == healthy());
}

TEST_CASE("overlay: a registered target takes keys only onto itself, and gives back exactly them") {
    auto g = web({target("127.0.0.1:9001", "a"), target("127.0.0.1:9002", "b"),
                  target("127.0.0.1:9003", "c")});
    auto targets = started(g);
    const auto keys = test::client_hashes(5000);
    const auto before = mapping(build_group_routing(g, targets, nullptr), keys);

    auto o = changed(register_target(g, {}, {}, reg("d", "127.0.0.1:9004")));
    auto r = reconcile(targets, desired_targets(g, {}, o), delay(300s), t0, false);
    find(r.targets, "d").record = healthy();
    const auto after = mapping(build_group_routing(g, r.targets, nullptr), keys);
    size_t moved = 0;
    for (size_t i = 0; i < keys.size(); ++i) {
        if (after[i] == before[i]) continue;
        CHECK(after[i] == "d");
        ++moved;
    }
    CHECK(moved > keys.size() / 8);

    auto gone = changed(deregister_target(g, {}, o, "d"));
    auto r2 = reconcile(r.targets, desired_targets(g, {}, gone), delay(300s), t0, false);
    CHECK(mapping(build_group_routing(g, r2.targets, nullptr), keys) == before);
}

// Random sequences of registrations, deregistrations and reloads over a small pool
// of ids and addresses (so that they collide often): after every step the merged
// group is one the config validator would accept (unique ids and addresses), the
// overlay only deregisters what the file lists, and a rebase onto the same file
// changes nothing.
TEST_CASE("overlay: invariants over random edits and reloads") {
    const std::vector<std::string> ids = {"a", "b", "c", "d", "e"};
    const std::vector<std::string> addresses = {"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3",
                                                "127.0.0.1:4", "127.0.0.1:5", "127.0.0.1:6"};
    uint64_t seed = 42;
    auto pick = [&](size_t n) { return static_cast<size_t>(test::splitmix64(seed) % n); };
    auto random_file = [&] {
        TargetGroupConfig f = web({});
        std::set<std::string> used_ids, used_addresses;
        const size_t n = pick(4);
        for (size_t i = 0; i < n; ++i) {
            const std::string& id = ids[pick(ids.size())];
            const std::string& address = addresses[pick(addresses.size())];
            if (!used_ids.insert(id).second || !used_addresses.insert(address).second) continue;
            f.targets.push_back({id, addr(address.c_str()), static_cast<uint32_t>(1 + pick(3))});
        }
        return f;
    };
    TargetGroupConfig file = random_file();
    RuntimeOverlay overlay;
    size_t changes = 0;
    for (int step = 0; step < 5000; ++step) {
        CAPTURE(step);
        const size_t what = pick(10);
        if (what < 5) {
            const std::string& id = ids[pick(ids.size())];
            Registration r{id, addr(addresses[pick(addresses.size())].c_str()), std::nullopt};
            if (pick(2)) r.weight = static_cast<uint32_t>(1 + pick(3));
            auto edit = register_target(file, {}, overlay, r);
            if (edit.outcome == OverlayEdit::Outcome::changed) {
                ++changes;
                overlay = edit.overlay;
                const auto all = desired_targets(file, {}, overlay);
                CHECK(std::any_of(all.begin(), all.end(), [&](const DesiredTarget& t) {
                    return t.id == r.id && t.address == r.address;
                }));
            } else {
                CHECK(edit.outcome == OverlayEdit::Outcome::conflict);
            }
        } else if (what < 8) {
            const std::string& id = ids[pick(ids.size())];
            auto edit = deregister_target(file, {}, overlay, id);
            if (edit.outcome == OverlayEdit::Outcome::changed) {
                ++changes;
                overlay = edit.overlay;
                const auto all = desired_targets(file, {}, overlay);
                CHECK(std::none_of(all.begin(), all.end(),
                                   [&](const DesiredTarget& t) { return t.id == id; }));
            } else {
                CHECK(edit.outcome == OverlayEdit::Outcome::unknown_target);
            }
        } else {
            std::vector<std::string> notes;
            file = what == 8 ? random_file() : file;
            overlay = rebase_overlay(overlay, &file, notes);
        }
        const auto all = desired_targets(file, {}, overlay);
        std::set<std::string> seen_ids, seen_addresses;
        for (const DesiredTarget& t : all) {
            CHECK(seen_ids.insert(t.id).second);
            CHECK(seen_addresses.insert(t.address.to_string()).second);
        }
        for (const DesiredTarget& d : overlay.deregistered) {
            CHECK(std::any_of(file.targets.begin(), file.targets.end(), [&](const TargetConfig& t) {
                return t.id == d.id && t.address == d.address;
            }));
        }
        // Every registered target is in the group as registered.
        for (const DesiredTarget& r : overlay.registered) {
            CHECK(std::find(all.begin(), all.end(), r) != all.end());
        }
        std::vector<std::string> notes;
        CHECK(rebase_overlay(overlay, &file, notes) == overlay);
        CHECK(notes.empty());
    }
    CHECK(changes > 500);
}
