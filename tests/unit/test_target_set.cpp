#include <doctest/doctest.h>

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
    CHECK(desired[0] == DesiredTarget{"127.0.0.1:9001", addr("127.0.0.1:9001"), 1, false});
    CHECK(desired[1] == DesiredTarget{"127.0.0.4:80", addr("127.0.0.4:80"), 1, true});
    // The configured target whose id collides with a DNS address keeps its own
    // address and weight.
    CHECK(desired[2] == DesiredTarget{"127.0.0.5:80", addr("127.0.0.9:9009"), 7, false});
    CHECK(desired[3] == DesiredTarget{"[::1]:80", addr("[::1]:80"), 1, true});
    CHECK(desired[4] == DesiredTarget{"web-2", addr("127.0.0.1:9002"), 3, false});
    CHECK(desired_targets(web({}), {}).empty());
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
    CHECK(find(current, "127.0.0.2:80").discovered);
    CHECK_FALSE(find(current, "127.0.0.3:80").discovered);
    CHECK(find(current, "127.0.0.3:80").address == addr("127.0.0.1:9001"));
    CHECK(find(current, "127.0.0.3:80").weight == 4);

    std::vector<SocketAddress> next_dns = {addr("127.0.0.3:80"), addr("127.0.0.4:80")};
    auto r = reconcile(current, desired_targets(g, next_dns), delay(30s), t0, false);
    CHECK(ids_of(r, r.added) == std::vector<std::string>{"127.0.0.4:80"});
    CHECK(ids_of(r, r.removed) == std::vector<std::string>{"127.0.0.2:80"});
    CHECK(find(r.targets, "127.0.0.4:80").discovered);
    CHECK(find(r.targets, "127.0.0.4:80").weight == 1);

    // The configured target goes from the config: DNS still has that address, so
    // the discovered one replaces it as a new target (another address).
    auto r2 = reconcile(r.targets, desired_targets(web({}), next_dns), delay(30s), t0, false);
    CHECK(r2.added.size() == 1);
    CHECK(r2.targets[r2.added[0]].id == "127.0.0.3:80");
    CHECK(r2.targets[r2.added[0]].address == addr("127.0.0.3:80"));
    CHECK(r2.targets[r2.added[0]].discovered);
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
    CHECK(find(r.targets, "127.0.0.2:80").discovered);
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
