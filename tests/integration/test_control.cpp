// The control thread's commands. Most cases run before start(), when commands
// execute inline on the caller (the same code the thread runs); the timer and
// health-check cases start the thread and use real loopback sockets.
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "admin/api.hpp"
#include "admin/daemon_source.hpp"
#include "control/control.hpp"
#include "stickyd/proxy_protocol.hpp"

using namespace stickyd;
using namespace std::chrono_literals;

namespace {

// The connection a health check makes to `listener`, once it comes.
int accept_check(int listener) {
    pollfd pfd{listener, POLLIN, 0};
    REQUIRE(::poll(&pfd, 1, 20000) == 1);
    const int conn = ::accept(listener, nullptr, nullptr);
    REQUIRE(conn >= 0);
    return conn;
}

SocketAddress addr(const std::string& text) {
    auto parsed = SocketAddress::parse(text);
    REQUIRE(parsed.has_value());
    return *parsed;
}

TargetGroupConfig group(const std::string& name,
                        std::vector<std::pair<std::string, std::string>> targets) {
    TargetGroupConfig g;
    g.name = name;
    for (auto& [id, address] : targets) g.targets.push_back({id, addr(address), 1});
    g.health_check.interval = Duration{3600000};  // no check runs during a test
    g.deregistration_delay.timeout = Duration{300000};
    return g;
}

Config two_groups() {
    Config c;
    c.target_groups = {group("web", {{"web-1", "127.0.0.1:9001"},
                                     {"web-2", "127.0.0.1:9002"},
                                     {"shared", "127.0.0.1:9003"}}),
                       group("api", {{"api-1", "127.0.0.1:9101"}, {"shared", "127.0.0.1:9103"}})};
    return c;
}

const TargetView* target_in(const ControlView& view, std::string_view g, std::string_view id) {
    const GroupView* gv = view.find(g);
    REQUIRE(gv != nullptr);
    for (const TargetView& t : gv->targets)
        if (t.id == id) return &t;
    return nullptr;
}

bool usable_in_table(const RoutingTable& table, std::string_view id) {
    for (size_t i = 0; i < table.targets.size(); ++i)
        if (table.targets[i].id == id) return table.usable[i] != 0;
    return false;
}

bool in_table(const RoutingTable& table, std::string_view id) {
    for (const auto& t : table.targets)
        if (t.id == id) return true;
    return false;
}

// Records every terminate call.
struct Terminations {
    std::mutex mutex;
    std::vector<std::shared_ptr<TargetStats>> seen;
    Control::Terminate callback() {
        return [this](std::vector<std::shared_ptr<TargetStats>> stats) {
            std::lock_guard lock(mutex);
            seen.insert(seen.end(), stats.begin(), stats.end());
        };
    }
    bool contains(const std::shared_ptr<TargetStats>& stats) {
        std::lock_guard lock(mutex);
        return std::find(seen.begin(), seen.end(), stats) != seen.end();
    }
    size_t size() {
        std::lock_guard lock(mutex);
        return seen.size();
    }
};

template <typename F>
bool eventually(F condition) {
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (std::chrono::steady_clock::now() < deadline) {
        if (condition()) return true;
        std::this_thread::sleep_for(10ms);
    }
    return condition();
}

// How a call ended: the ControlFailed message, or what else happened.
template <typename F>
std::string outcome(F f) {
    try {
        f();
        return "returned";
    } catch (const ControlFailed& e) {
        return e.what();
    } catch (const std::exception& e) {
        return std::string("threw another exception: ") + e.what();
    }
}

template <typename F>
std::future<std::string> call_async(F f) {
    return std::async(std::launch::async, [f] { return outcome(f); });
}

// A call left waiting on a dead control thread fails the test instead of hanging it.
std::string finished(Control& control, std::future<std::string>& call) {
    if (call.wait_for(20s) != std::future_status::ready) {
        // stop() runs what is still queued inline, so the waiting call returns and
        // the future can be destroyed.
        control.stop();
        FAIL("a call to the failed control thread never returned");
    }
    return call.get();
}

template <typename F>
std::string finished(Control& control, F f) {
    auto call = call_async(f);
    return finished(control, call);
}

constexpr std::string_view kFailed =
    "control thread failed: test: cannot reach the workers; target health and membership are "
    "frozen; restart stickyd";

}  // namespace

TEST_CASE("control: check-duration histogram buckets") {
    CheckDurationHistogram h;
    h.observe(0.0001);  // first bucket
    h.observe(0.0005);  // on a bound: that bucket
    h.observe(0.003);   // (0.0025, 0.005]
    h.observe(10);      // last finite bound
    h.observe(11);      // +Inf
    CHECK(h.counts[0] == 2);
    CHECK(h.counts[3] == 1);
    CHECK(h.counts[std::size(CheckDurationHistogram::kBounds) - 1] == 1);
    CHECK(h.counts[CheckDurationHistogram::kBuckets - 1] == 1);
    CHECK(h.total == 5);
    CHECK(h.sum_seconds == doctest::Approx(21.0036));
}

TEST_CASE("control: start publishes every group with all targets routable") {
    Control control(two_groups(), nullptr);
    CHECK(control.slot("nope") == nullptr);
    auto web = control.slot("web")->load();
    REQUIRE(web != nullptr);
    CHECK(web->targets.size() == 3);
    CHECK(web->usable == std::vector<uint8_t>{1, 1, 1});
    CHECK(web->passive != nullptr);
    auto view = control.view();
    REQUIRE(view->groups.size() == 2);
    CHECK(view->groups[0].name == "web");
    CHECK(view->groups[1].name == "api");
    CHECK(view->groups[0].table == web);
    const TargetView* t = target_in(*view, "web", "web-2");
    REQUIRE(t != nullptr);
    CHECK(t->state == HealthState::initial);
    CHECK(t->usable);
    CHECK(t->deregistration == Deregistration::none);
    CHECK(!t->deregistration_deadline);
    CHECK(t->stats == web->targets[2].stats);
}

TEST_CASE("control: drain and enable") {
    Control control(two_groups(), nullptr);
    auto before = control.slot("web")->load();

    auto drained = control.drain("web", "web-2");
    CHECK(drained.result == AdminChange::Result::ok);
    CHECK(drained.message ==
          "target group 'web': target web-2 (127.0.0.1:9002) is draining: deregistered via admin "
          "API; its 0 connections get 300 s");
    auto table = control.slot("web")->load();
    CHECK(table != before);
    CHECK(table->balancer == before->balancer);  // still a member: its keys come back
    CHECK_FALSE(usable_in_table(*table, "web-2"));
    CHECK(usable_in_table(*table, "web-1"));
    auto view = control.view();
    const TargetView* t = target_in(*view, "web", "web-2");
    CHECK(t->deregistration == Deregistration::drained);
    CHECK_FALSE(t->usable);
    REQUIRE(t->deregistration_deadline);
    CHECK(*t->deregistration_deadline > std::chrono::system_clock::now() + 200s);

    auto again = control.drain("web", "web-2");
    CHECK(again.result == AdminChange::Result::ok);
    CHECK(again.message == "target group 'web': target web-2 (127.0.0.1:9002) is already draining");
    CHECK(control.slot("web")->load() == table);  // nothing changed: nothing published

    auto enabled = control.enable("", "web-2");  // unique across groups
    CHECK(enabled.result == AdminChange::Result::ok);
    CHECK(enabled.message ==
          "target group 'web': target web-2 (127.0.0.1:9002) is enabled via admin API: takes new "
          "connections");
    auto after = control.slot("web")->load();
    CHECK(after->usable == before->usable);
    CHECK(after->balancer == before->balancer);
    CHECK(!target_in(*control.view(), "web", "web-2")->deregistration_deadline);

    auto twice = control.enable("web", "web-2");
    CHECK(twice.result == AdminChange::Result::ok);
    CHECK(twice.message == "target group 'web': target web-2 (127.0.0.1:9002) is already enabled");
}

TEST_CASE("control: admin errors name the problem") {
    Control control(two_groups(), nullptr);
    auto unknown_group = control.drain("db", "web-1");
    CHECK(unknown_group.result == AdminChange::Result::unknown_group);
    CHECK(unknown_group.message == "no target group 'db'");
    auto unknown_target = control.enable("web", "api-1");
    CHECK(unknown_target.result == AdminChange::Result::unknown_target);
    CHECK(unknown_target.message == "target group 'web' has no target 'api-1'");
    auto nowhere = control.drain("", "ghost");
    CHECK(nowhere.result == AdminChange::Result::unknown_target);
    CHECK(nowhere.message == "no target 'ghost' in any target group");
    auto ambiguous = control.drain("", "shared");
    CHECK(ambiguous.result == AdminChange::Result::ambiguous);
    CHECK(ambiguous.message ==
          "target 'shared' is in several target groups ('web', 'api'); name the target group");
    CHECK(control.drain("api", "shared").result == AdminChange::Result::ok);
    CHECK(target_in(*control.view(), "web", "shared")->deregistration == Deregistration::none);
}

TEST_CASE("control: draining every target leaves nothing to fail open to") {
    Config c;
    c.target_groups = {group("web", {{"a", "127.0.0.1:9001"}, {"b", "127.0.0.1:9002"}})};
    Control control(c, nullptr);
    control.drain("web", "a");
    CHECK_FALSE(control.slot("web")->load()->no_target);
    control.drain("web", "b");
    auto table = control.slot("web")->load();
    CHECK(table->no_target);
    CHECK(table->pick(42, 0) == kNoMember);
    CHECK_FALSE(control.view()->groups[0].failing_open);
    control.enable("web", "a");
    table = control.slot("web")->load();
    CHECK_FALSE(table->no_target);
    CHECK(table->targets[table->pick(42, 0)].id == "a");
}

TEST_CASE("control: reload keeps, adds and removes targets and groups") {
    Config c = two_groups();
    Control control(c, nullptr);
    auto web1_stats = target_in(*control.view(), "web", "web-1")->stats;
    control.drain("web", "web-2");
    RouteSlot* api_slot = control.slot("api");

    Config next = c;
    next.target_groups[0].targets = {{"web-1", addr("127.0.0.1:9001"), 1},
                                     {"web-2", addr("127.0.0.1:9002"), 1},
                                     {"web-4", addr("127.0.0.1:9004"), 1}};
    next.target_groups[0].proxy_protocol_v2 = true;
    next.target_groups[0].stickiness.prefix_v4 = 24;
    next.target_groups.pop_back();  // api goes
    next.target_groups.push_back(group("db", {{"db-1", "127.0.0.1:9201"}}));
    control.apply(next);

    auto web = control.slot("web")->load();
    CHECK(web->proxy_protocol_v2);
    CHECK(web->prefix_v4 == 24);
    CHECK(in_table(*web, "web-1"));
    CHECK_FALSE(in_table(*web, "shared"));  // removed: out of the balancer at once
    CHECK(in_table(*web, "web-4"));
    CHECK_FALSE(usable_in_table(*web, "web-4"));  // waits for its first passed check
    CHECK(usable_in_table(*web, "web-1"));
    CHECK(target_in(*control.view(), "web", "web-1")->stats == web1_stats);
    CHECK(web->targets[0].id == "web-1");
    CHECK(web->targets[0].stats == web1_stats);

    auto view = control.view();
    REQUIRE(view->groups.size() == 3);
    CHECK(view->groups[0].name == "web");
    CHECK(view->groups[1].name == "db");
    CHECK(view->groups[2].name == "api");  // still deregistering its targets
    CHECK(target_in(*view, "web", "web-2")->deregistration == Deregistration::drained);
    CHECK(target_in(*view, "web", "shared")->deregistration == Deregistration::removed);
    CHECK(target_in(*view, "web", "shared")->deregistration_deadline);
    CHECK(target_in(*view, "web", "web-4")->state == HealthState::initial);
    CHECK(target_in(*view, "api", "api-1")->deregistration == Deregistration::removed);
    CHECK(control.slot("api") == api_slot);  // stable
    CHECK(control.slot("api")->load()->targets.empty());
    REQUIRE(control.slot("db") != nullptr);
    CHECK(control.slot("db")->load()->targets.size() == 1);

    // Enabling a removed target is refused; draining it again says what it is.
    auto enable_removed = control.enable("web", "shared");
    CHECK(enable_removed.result == AdminChange::Result::unknown_target);
    CHECK(enable_removed.message ==
          "target group 'web': target shared (127.0.0.1:9003) is deregistering (removed from "
          "the configuration); only a registered target can be enabled");
    CHECK(control.drain("web", "shared").message ==
          "target group 'web': target shared (127.0.0.1:9003) is already deregistering (removed)");

    // Back within the delay: kept, with its stats.
    auto shared_stats = target_in(*control.view(), "web", "shared")->stats;
    control.apply(c);
    view = control.view();
    CHECK(view->groups.size() == 3);  // db is deregistering now
    CHECK(view->groups[1].name == "api");
    CHECK(target_in(*view, "web", "shared")->deregistration == Deregistration::none);
    CHECK(target_in(*view, "web", "shared")->stats == shared_stats);
    CHECK(target_in(*view, "api", "api-1")->deregistration == Deregistration::none);
    CHECK(target_in(*view, "web", "web-2")->deregistration == Deregistration::drained);
    CHECK(control.slot("api") == api_slot);
    CHECK(control.slot("api")->load()->targets.size() == 2);
    CHECK_FALSE(control.slot("web")->load()->proxy_protocol_v2);
}

TEST_CASE("control: an unchanged reload publishes nothing") {
    Config c = two_groups();
    Control control(c, nullptr);
    auto web = control.slot("web")->load();
    control.apply(c);
    CHECK(control.slot("web")->load() == web);
    c.target_groups[0].algorithm = Algorithm::maglev;
    control.apply(c);
    auto maglev = control.slot("web")->load();
    CHECK(maglev != web);
    CHECK(maglev->balancer->algorithm() == "maglev");
}

Registration registration(const std::string& id, const std::string& address,
                          std::optional<uint32_t> weight = {}) {
    return {id, addr(address), weight};
}

TEST_CASE("control: deregistering a drained target keeps the delay its drain began") {
    Control control(two_groups(), nullptr);
    auto drained = control.drain("web", "web-2");
    REQUIRE(drained.result == AdminChange::Result::ok);
    auto view = control.view();
    const auto deadline = *target_in(*view, "web", "web-2")->deregistration_deadline;

    auto gone = control.deregister_target("web", "web-2");
    CHECK(gone.result == AdminChange::Result::ok);
    // Not a fresh "get 300 s": the delay has been running since the drain.
    CHECK(gone.message.starts_with(
        "target group 'web': target web-2 (127.0.0.1:9002) is deregistering: deregistered via "
        "admin API; its 0 connections keep the "));
    CHECK(gone.message.ends_with(" s left of the delay that began with its drain"));
    view = control.view();
    const TargetView* t = target_in(*view, "web", "web-2");
    REQUIRE(t != nullptr);
    CHECK(t->deregistration == Deregistration::removed);
    // The view turns the steady deadline into wall time at each call: equal within a
    // rounding, where a restarted delay would be ahead by the time this test took.
    const auto drift = *t->deregistration_deadline - deadline;
    CHECK(drift < 50ms);
    CHECK(drift > -50ms);
}

TEST_CASE("control: register starts a runtime target initial; deregister drains it") {
    Config c = two_groups();
    Control control(c, nullptr);
    auto before = control.slot("web")->load();

    auto added = control.register_target("web", registration("web-4", "127.0.0.1:9004", 2));
    CHECK(added.result == AdminChange::Result::ok);
    CHECK(added.message ==
          "target group 'web': target web-4 (127.0.0.1:9004) registered via admin API: takes "
          "connections after its first passed health check");
    auto table = control.slot("web")->load();
    CHECK(in_table(*table, "web-4"));
    CHECK_FALSE(usable_in_table(*table, "web-4"));  // until its first passed check
    CHECK(usable_in_table(*table, "web-1"));
    // Held in a local: target_in points into the view, which must outlive `t`.
    auto view = control.view();
    const TargetView* t = target_in(*view, "web", "web-4");
    REQUIRE(t != nullptr);
    CHECK(t->origin == TargetOrigin::runtime);
    CHECK(t->weight == 2);
    CHECK(t->state == HealthState::initial);
    CHECK(target_in(*control.view(), "web", "web-1")->origin == TargetOrigin::config);

    auto gone = control.deregister_target("", "web-4");  // unique across groups
    CHECK(gone.result == AdminChange::Result::ok);
    CHECK(gone.message ==
          "target group 'web': target web-4 (127.0.0.1:9004) is deregistering: deregistered via "
          "admin API; its 0 connections get 300 s");
    view = control.view();
    t = target_in(*view, "web", "web-4");
    REQUIRE(t != nullptr);
    CHECK(t->deregistration == Deregistration::removed);
    CHECK(t->deregistration_deadline);
    CHECK_FALSE(in_table(*control.slot("web")->load(), "web-4"));
    // The old members again: every client back where it was.
    auto after = control.slot("web")->load();
    for (uint64_t hash = 1; hash < 1'000'000'000'000; hash *= 7) {
        CHECK(after->targets[after->pick(hash, 0)].id == before->targets[before->pick(hash, 0)].id);
    }
    CHECK(control.deregister_target("web", "web-4").message ==
          "target group 'web': target web-4 (127.0.0.1:9004) is already deregistering "
          "(no longer registered)");
    // Enable cannot bring it back; registering it again can, within the delay.
    CHECK(control.enable("web", "web-4").message ==
          "target group 'web': target web-4 (127.0.0.1:9004) is deregistering (no longer "
          "registered); only a registered target can be enabled");
    auto again = control.register_target("web", registration("web-4", "127.0.0.1:9004", 2));
    CHECK(again.message ==
          "target group 'web': target web-4 (127.0.0.1:9004) registered again via admin API "
          "before its deregistration ended: it keeps its health and connections");
}

TEST_CASE("control: registration errors name the problem") {
    Config c = two_groups();
    c.target_groups.push_back(group("dns", {}));
    c.target_groups.back().dns = {DnsDiscoveryConfig{"app.local", 80, Duration{5000}}};
    Control control(c, nullptr);
    auto several = control.register_target("", registration("x", "127.0.0.1:9999"));
    CHECK(several.result == AdminChange::Result::invalid);
    CHECK(several.message == "several target groups ('web', 'api', 'dns'); name the target group");
    auto unknown = control.register_target("db", registration("x", "127.0.0.1:9999"));
    CHECK(unknown.result == AdminChange::Result::unknown_group);
    CHECK(unknown.message == "no target group 'db'");
    auto duplicate = control.register_target("web", registration("web-1", "127.0.0.1:9999"));
    CHECK(duplicate.result == AdminChange::Result::conflict);
    CHECK(duplicate.message ==
          "target group 'web' already has a target with id 'web-1' (127.0.0.1:9001)");
    auto dns = control.register_target("dns", registration("x", "127.0.0.1:9999"));
    CHECK(dns.result == AdminChange::Result::conflict);
    CHECK(dns.message ==
          "target group 'dns' takes its targets from DNS (dns = \"app.local:80\"), not from "
          "the admin API");
    auto ambiguous = control.deregister_target("", "shared");
    CHECK(ambiguous.result == AdminChange::Result::ambiguous);
    auto nowhere = control.deregister_target("web", "ghost");
    CHECK(nowhere.result == AdminChange::Result::unknown_target);
    CHECK(nowhere.message == "target group 'web' has no target 'ghost'");

    // One group: its name may be left out.
    Config one;
    one.target_groups = {group("web", {{"a", "127.0.0.1:9001"}})};
    Control single(one, nullptr);
    CHECK(single.register_target("", registration("b", "127.0.0.1:9002")).result ==
          AdminChange::Result::ok);
}

TEST_CASE("control: a reload keeps runtime targets and deregistrations of file targets") {
    Config c = two_groups();
    Control control(c, nullptr);
    control.register_target("web", registration("web-4", "127.0.0.1:9004"));
    auto web4_stats = target_in(*control.view(), "web", "web-4")->stats;
    control.deregister_target("web", "web-2");

    control.apply(c);  // SIGHUP with the same file
    auto view = control.view();
    CHECK(target_in(*view, "web", "web-4")->deregistration == Deregistration::none);
    CHECK(target_in(*view, "web", "web-4")->stats == web4_stats);
    CHECK(target_in(*view, "web", "web-2")->deregistration == Deregistration::removed);
    CHECK_FALSE(in_table(*control.slot("web")->load(), "web-2"));

    // The file stops listing web-2: the deregistration lapses, and listing it again
    // brings it back (within its delay: as it was).
    Config without = c;
    std::erase_if(without.target_groups[0].targets, [](const auto& t) { return t.id == "web-2"; });
    control.apply(without);
    control.apply(c);
    view = control.view();
    CHECK(target_in(*view, "web", "web-2")->deregistration == Deregistration::none);
    CHECK(target_in(*view, "web", "web-4")->origin == TargetOrigin::runtime);

    // The file takes the runtime target over (same id and address): it stays, now the
    // file's; removing it from the file then deregisters it.
    Config adopted = c;
    adopted.target_groups[0].targets.push_back({"web-4", addr("127.0.0.1:9004"), 1});
    control.apply(adopted);
    view = control.view();  // outlives `t`, which points into it
    const TargetView* t = target_in(*view, "web", "web-4");
    CHECK(t->origin == TargetOrigin::config);
    CHECK(t->stats == web4_stats);
    CHECK(t->deregistration == Deregistration::none);
    control.apply(c);
    CHECK(target_in(*control.view(), "web", "web-4")->deregistration == Deregistration::removed);
}

TEST_CASE("control: a reload that cannot hold the runtime targets is refused") {
    Config c;
    c.target_groups = {group("web", {{"a", "127.0.0.1:9001"}})};
    c.target_groups[0].targets[0].weight = 100;
    Control control(c, nullptr);
    for (int i = 0; i < 9; ++i) {
        REQUIRE(
            control
                .register_target("web", registration(fmt::format("r{}", i),
                                                     fmt::format("127.0.0.2:{}", 9000 + i), 100))
                .result == AdminChange::Result::ok);
    }
    auto full = control.register_target("web", registration("r9", "127.0.0.2:9999", 25));
    CHECK(full.result == AdminChange::Result::over_capacity);
    CHECK(full.message.starts_with(
        "target group 'web' cannot take target r9 (127.0.0.2:9999): the targets' weights add "
        "up to 1025"));
    Config heavier = c;
    heavier.target_groups[0].targets.push_back({"b", addr("127.0.0.1:9002"), 100});
    CHECK(control.reload_refusal(heavier) ==
          "target group 'web' with the 9 targets registered at run time: the targets' weights "
          "add up to 1100, more than one ring holds (1024); use smaller weights (only their "
          "ratios matter) or algorithm = \"maglev\"; deregister some first");
    CHECK(control.reload_refusal(c) == std::nullopt);
}

namespace {

// One static target, in a Maglev table with room for 3 targets.
Config roomy_maglev() {
    Config c;
    c.target_groups = {group("web", {{"a", "127.0.0.1:9001"}})};
    c.target_groups[0].algorithm = Algorithm::maglev;
    c.target_groups[0].maglev_table_size = 307;
    return c;
}

// The same table, with room for only 2.
Config tight_maglev() {
    Config c = roomy_maglev();
    c.target_groups[0].maglev_table_size = 211;
    return c;
}

std::vector<std::string> in_service(const ControlView& view, std::string_view g) {
    std::vector<std::string> out;
    for (const TargetView& t : view.find(g)->targets) {
        if (t.deregistration == Deregistration::none) out.push_back(t.id);
    }
    return out;
}

}  // namespace

// A reload asks whether its config holds the registered targets (reload_refusal),
// then applies it: a registration that came in between fitted the running config,
// and apply() then deregistered every target registered at run time in that group.
TEST_CASE("control: a registration the pending reload could not hold is refused; none is lost") {
    Control control(roomy_maglev(), nullptr);
    REQUIRE(control.register_target("web", registration("r1", "127.0.0.2:9001")).result ==
            AdminChange::Result::ok);
    const Config tight = tight_maglev();
    REQUIRE(control.reload_refusal(tight) == std::nullopt);

    auto late = control.register_target("web", registration("r2", "127.0.0.2:9002"));
    CHECK(late.result == AdminChange::Result::conflict);
    CHECK(late.message ==
          "target group 'web' cannot take target r2 (127.0.0.2:9002): the reload in progress "
          "would not hold it: maglev_table_size 211 is too small for 3 targets: it needs at "
          "least 100 entries per target (a prime >= 300); try again once it is done");
    control.apply(tight);
    auto view = control.view();
    CHECK(in_service(*view, "web") == std::vector<std::string>{"a", "r1"});
    CHECK(target_in(*view, "web", "r1")->origin == TargetOrigin::runtime);
    CHECK(target_in(*view, "web", "r2") == nullptr);
}

TEST_CASE(
    "control: registrations must fit a pending reload only until it is abandoned or applied") {
    Control control(roomy_maglev(), nullptr);
    REQUIRE(control.register_target("web", registration("r1", "127.0.0.2:9001")).result ==
            AdminChange::Result::ok);
    const Config tight = tight_maglev();
    const Registration r2 = registration("r2", "127.0.0.2:9002");

    // A reload that failed after the control thread accepted it (at opening a new
    // listener) is abandoned: what the running config holds goes through again.
    REQUIRE(control.reload_refusal(tight) == std::nullopt);
    REQUIRE(control.register_target("web", r2).result == AdminChange::Result::conflict);
    control.abandon_reload();
    CHECK(control.register_target("web", r2).result == AdminChange::Result::ok);
    CHECK(in_service(*control.view(), "web") == std::vector<std::string>{"a", "r1", "r2"});
    REQUIRE(control.deregister_target("web", "r2").result == AdminChange::Result::ok);

    // A refused reload is not pending either.
    REQUIRE(control.reload_refusal(tight) == std::nullopt);
    Config tiny = roomy_maglev();
    tiny.target_groups[0].maglev_table_size = 101;  // room for 1
    REQUIRE(control.reload_refusal(tiny).has_value());
    CHECK(control.register_target("web", registration("r3", "127.0.0.2:9003")).result ==
          AdminChange::Result::ok);
    REQUIRE(control.deregister_target("web", "r3").result == AdminChange::Result::ok);

    // apply() ends the pending reload, whichever config it applies.
    REQUIRE(control.reload_refusal(tight) == std::nullopt);
    control.apply(roomy_maglev());
    CHECK(control.register_target("web", registration("r4", "127.0.0.2:9004")).result ==
          AdminChange::Result::ok);
    CHECK(in_service(*control.view(), "web") == std::vector<std::string>{"a", "r1", "r4"});

    // Registrations that fit both configs go through while one is pending.
    REQUIRE(control.deregister_target("web", "r4").result == AdminChange::Result::ok);
    REQUIRE(control.reload_refusal(roomy_maglev()) == std::nullopt);
    CHECK(control.register_target("web", registration("r5", "127.0.0.2:9005")).result ==
          AdminChange::Result::ok);
}

TEST_CASE("control: DNS discovery adds and removes targets; errors are kept for the view") {
    Config c;
    c.target_groups = {group("web", {{"static", "127.0.0.1:9001"}})};
    c.target_groups[0].dns = {DnsDiscoveryConfig{"web.local", 80, Duration{5000}}};
    Control control(c, nullptr);
    control.set_discovered("web", "web.local:80",
                           {addr("127.0.0.2:80"), addr("127.0.0.3:80"), addr("127.0.0.2:80")});
    auto view = control.view();
    REQUIRE(view->groups[0].targets.size() == 3);
    const TargetView* found = target_in(*view, "web", "127.0.0.2:80");
    REQUIRE(found != nullptr);
    CHECK(found->origin == TargetOrigin::dns);
    CHECK_FALSE(found->usable);  // added at runtime: initial until its first pass
    CHECK(view->groups[0].dns_error == std::nullopt);

    control.set_discovery_error("web", "web.local:80", "web.local: NXDOMAIN");
    view = control.view();
    CHECK(view->groups[0].dns_error == "web.local: NXDOMAIN");
    CHECK(view->groups[0].targets.size() == 3);

    control.set_discovered("web", "web.local:80", {addr("127.0.0.3:80")});
    view = control.view();
    CHECK(view->groups[0].dns_error == std::nullopt);
    CHECK(target_in(*view, "web", "127.0.0.2:80")->deregistration == Deregistration::removed);
    CHECK(target_in(*view, "web", "127.0.0.3:80")->deregistration == Deregistration::none);
    CHECK_FALSE(in_table(*control.slot("web")->load(), "127.0.0.2:80"));

    control.set_discovered("nope", "web.local:80",
                           {addr("127.0.0.9:80")});  // unknown group: ignored
    CHECK(control.view()->groups.size() == 1);
}

// Regression: a DNS answer with more addresses than a maglev table holds threw
// out of the balancer build and ended the control thread.
TEST_CASE("control: a DNS answer the balancer cannot hold is not used; the last good set stays") {
    Config c;
    c.target_groups = {group("web", {{"static", "127.0.0.1:9001"}})};
    c.target_groups[0].algorithm = Algorithm::maglev;
    c.target_groups[0].maglev_table_size = 307;  // room for 3 targets, 100 entries each
    c.target_groups[0].dns = {DnsDiscoveryConfig{"web.local", 80, Duration{5000}}};
    Control control(c, nullptr);
    control.set_discovered("web", "web.local:80", {addr("127.0.0.2:80"), addr("127.0.0.3:80")});
    auto table = control.slot("web")->load();
    REQUIRE(table->targets.size() == 3);

    control.set_discovered("web", "web.local:80",
                           {addr("127.0.0.2:80"), addr("127.0.0.3:80"), addr("127.0.0.4:80")});
    auto view = control.view();
    REQUIRE(view->groups[0].dns_error.has_value());
    CHECK(view->groups[0].dns_error->find("too small for 4 targets") != std::string::npos);
    CHECK(view->groups[0].targets.size() == 3);
    CHECK(target_in(*view, "web", "127.0.0.4:80") == nullptr);
    CHECK(control.slot("web")->load() == table);

    // The same reload with a larger table fits; a smaller one is refused up front.
    Config smaller = c;
    smaller.target_groups[0].maglev_table_size = 211;
    auto misfit = control.reload_refusal(smaller);
    REQUIRE(misfit.has_value());
    CHECK(misfit->find("target group 'web' with the 2 addresses DNS gives now") == 0);
    CHECK(misfit->find("too small for 3 targets") != std::string::npos);
    CHECK(control.reload_refusal(c) == std::nullopt);

    control.set_discovered("web", "web.local:80", {addr("127.0.0.4:80")});  // fits again
    view = control.view();
    CHECK(view->groups[0].dns_error == std::nullopt);
    CHECK(target_in(*view, "web", "127.0.0.4:80")->deregistration == Deregistration::none);
    CHECK(target_in(*view, "web", "127.0.0.2:80")->deregistration == Deregistration::removed);
}

// Regression: a DNS answer between a reload's prepare and its commit that the running
// balancer held but the reloaded one could not made apply() deregister every address
// DNS had given the group, though reload_refusal() had found the ones in use to fit.
TEST_CASE("control: a DNS answer the pending reload could not hold waits for it") {
    Config c;
    c.target_groups = {group("web", {{"static", "127.0.0.1:9001"}})};
    c.target_groups[0].algorithm = Algorithm::maglev;
    c.target_groups[0].maglev_table_size = 307;  // room for 3 targets
    c.target_groups[0].dns = {DnsDiscoveryConfig{"web.local", 80, Duration{5000}}};
    Control control(c, nullptr);
    control.set_discovered("web", "web.local:80", {addr("127.0.0.2:80")});
    Config smaller = c;
    smaller.target_groups[0].maglev_table_size = 211;  // room for 2 targets
    REQUIRE(control.reload_refusal(smaller) == std::nullopt);

    // The running table holds three; the pending one would not.
    control.set_discovered("web", "web.local:80", {addr("127.0.0.2:80"), addr("127.0.0.3:80")});
    auto view = control.view();
    CHECK(target_in(*view, "web", "127.0.0.3:80") == nullptr);
    REQUIRE(target_in(*view, "web", "127.0.0.2:80") != nullptr);

    control.apply(smaller);
    view = control.view();
    REQUIRE(target_in(*view, "web", "127.0.0.2:80") != nullptr);
    CHECK(target_in(*view, "web", "127.0.0.2:80")->deregistration == Deregistration::none);
    CHECK(target_in(*view, "web", "127.0.0.3:80") == nullptr);
    REQUIRE(view->groups[0].dns_error.has_value());
    CHECK(view->groups[0].dns_error->find("too small for 3 targets") != std::string::npos);

    // Abandoned instead, the running balancer takes up the answer it held back, though
    // the name does not answer again.
    Control again(c, nullptr);
    again.set_discovered("web", "web.local:80", {addr("127.0.0.2:80")});
    REQUIRE(again.reload_refusal(smaller) == std::nullopt);
    again.set_discovered("web", "web.local:80", {addr("127.0.0.2:80"), addr("127.0.0.3:80")});
    CHECK(target_in(*again.view(), "web", "127.0.0.3:80") == nullptr);
    again.abandon_reload();
    view = again.view();
    REQUIRE(target_in(*view, "web", "127.0.0.3:80") != nullptr);
    CHECK(target_in(*view, "web", "127.0.0.3:80")->deregistration == Deregistration::none);
}

TEST_CASE("control: DNS addresses a reload's balancer cannot hold deregister instead of failing") {
    Config c;
    c.target_groups = {group("web", {})};
    c.target_groups[0].dns = {DnsDiscoveryConfig{"web.local", 80, Duration{5000}}};
    Control control(c, nullptr,
                    {{"web", {{"web.local:80", {addr("127.0.0.2:80"), addr("127.0.0.3:80")}}}}});
    REQUIRE(control.slot("web")->load()->targets.size() == 2);

    c.target_groups[0].algorithm = Algorithm::maglev;
    c.target_groups[0].maglev_table_size = 101;  // one target
    control.apply(c);
    auto view = control.view();
    REQUIRE(view->groups[0].dns_error.has_value());
    CHECK(view->groups[0].dns_error->find("too small for 2 targets") != std::string::npos);
    CHECK(target_in(*view, "web", "127.0.0.2:80")->deregistration == Deregistration::removed);
    CHECK(control.slot("web")->load()->targets.empty());
}

TEST_CASE("control: DNS addresses at start-up that do not fit are not used") {
    Config c;
    c.target_groups = {group("web", {{"static", "127.0.0.1:9001"}})};
    c.target_groups[0].algorithm = Algorithm::maglev;
    c.target_groups[0].maglev_table_size = 211;
    c.target_groups[0].dns = {DnsDiscoveryConfig{"web.local", 80, Duration{5000}}};
    Control control(c, nullptr,
                    {{"web", {{"web.local:80", {addr("127.0.0.2:80"), addr("127.0.0.3:80")}}}}});
    auto view = control.view();
    CHECK(view->groups[0].targets.size() == 1);
    REQUIRE(view->groups[0].dns_error.has_value());
    CHECK(view->groups[0].dns_error->find("too small for 3 targets") != std::string::npos);
}

// ---------------------------------------------------------------------------
// Several DNS names in one group, beside static targets (quick mode's --target
// mix, or dns = ["a:80", "b:8080"]).

std::vector<std::string> ids_of(const GroupView& g) {
    std::vector<std::string> out;
    for (const TargetView& t : g.targets) {
        if (t.deregistration != Deregistration::removed) out.push_back(t.id);
    }
    return out;
}

Config mixed_group() {
    Config c;
    c.target_groups = {group("web", {{"static", "127.0.0.1:9001"}})};
    c.target_groups[0].dns = {DnsDiscoveryConfig{"a.local", 80, Duration{5000}},
                              DnsDiscoveryConfig{"b.local", 8080, Duration{5000}}};
    return c;
}

TEST_CASE("control: a group's targets are its static ones and the union of its names' sets") {
    Control control(
        mixed_group(), nullptr,
        {{"web",
          {{"a.local:80", {addr("127.0.0.2:80")}}, {"b.local:8080", {addr("127.0.0.3:8080")}}}}});
    auto view = control.view();
    CHECK(ids_of(view->groups[0]) ==
          std::vector<std::string>{"127.0.0.2:80", "127.0.0.3:8080", "static"});
    CHECK(view->groups[0].dns_names == std::vector<std::string>{"a.local:80", "b.local:8080"});
    CHECK(target_in(*view, "web", "static")->origin == TargetOrigin::config);
    CHECK(target_in(*view, "web", "127.0.0.3:8080")->origin == TargetOrigin::dns);

    // b changes; a's set stays as it was.
    control.set_discovered("web", "b.local:8080", {addr("127.0.0.4:8080")});
    view = control.view();
    CHECK(ids_of(view->groups[0]) ==
          std::vector<std::string>{"127.0.0.2:80", "127.0.0.4:8080", "static"});
    CHECK(target_in(*view, "web", "127.0.0.3:8080")->deregistration == Deregistration::removed);

    // Two names naming the same address make one target, which stays while either
    // still names it.
    control.set_discovered("web", "b.local:8080", {addr("127.0.0.2:80"), addr("127.0.0.4:8080")});
    control.set_discovered("web", "a.local:80", {addr("127.0.0.5:80")});
    view = control.view();
    CHECK(ids_of(view->groups[0]) ==
          std::vector<std::string>{"127.0.0.2:80", "127.0.0.4:8080", "127.0.0.5:80", "static"});
    CHECK(target_in(*view, "web", "127.0.0.2:80")->deregistration == Deregistration::none);
}

TEST_CASE("control: a discovered address a static target has is that static target") {
    Control control(mixed_group(), nullptr);
    control.set_discovered("web", "a.local:80", {addr("127.0.0.1:9001"), addr("127.0.0.2:80")});
    auto view = control.view();
    // Not a second target "127.0.0.1:9001" beside "static": one backend, one target.
    CHECK(ids_of(view->groups[0]) == std::vector<std::string>{"127.0.0.2:80", "static"});
    CHECK(target_in(*view, "web", "static")->origin == TargetOrigin::config);
    CHECK(target_in(*view, "web", "127.0.0.1:9001") == nullptr);
}

TEST_CASE("control: one failing name keeps its set and its error; the others go on") {
    Control control(
        mixed_group(), nullptr,
        {{"web",
          {{"a.local:80", {addr("127.0.0.2:80")}}, {"b.local:8080", {addr("127.0.0.3:8080")}}}}});
    control.set_discovery_error("web", "a.local:80", "cannot resolve a.local: NXDOMAIN");
    control.set_discovered("web", "b.local:8080", {addr("127.0.0.4:8080")});
    auto view = control.view();
    CHECK(view->groups[0].dns_error == "cannot resolve a.local: NXDOMAIN");  // not cleared by b
    CHECK(ids_of(view->groups[0]) ==
          std::vector<std::string>{"127.0.0.2:80", "127.0.0.4:8080", "static"});

    control.set_discovery_error("web", "b.local:8080", "cannot resolve b.local: NXDOMAIN");
    CHECK(control.view()->groups[0].dns_error ==
          "cannot resolve a.local: NXDOMAIN; cannot resolve b.local: NXDOMAIN");
    control.set_discovered("web", "a.local:80", {addr("127.0.0.2:80")});
    CHECK(control.view()->groups[0].dns_error == "cannot resolve b.local: NXDOMAIN");
    control.set_discovered("web", "b.local:8080", {addr("127.0.0.4:8080")});
    CHECK(control.view()->groups[0].dns_error == std::nullopt);
}

TEST_CASE("control: a reload that drops a name drops its addresses; late answers are ignored") {
    Config c = mixed_group();
    Control control(
        c, nullptr,
        {{"web",
          {{"a.local:80", {addr("127.0.0.2:80")}}, {"b.local:8080", {addr("127.0.0.3:8080")}}}}});
    control.set_discovery_error("web", "b.local:8080", "cannot resolve b.local: NXDOMAIN");
    c.target_groups[0].dns.pop_back();
    control.apply(c);
    auto view = control.view();
    CHECK(ids_of(view->groups[0]) == std::vector<std::string>{"127.0.0.2:80", "static"});
    CHECK(target_in(*view, "web", "127.0.0.3:8080")->deregistration == Deregistration::removed);
    CHECK(view->groups[0].dns_names == std::vector<std::string>{"a.local:80"});
    CHECK(view->groups[0].dns_error == std::nullopt);  // b's failure went with b

    // An answer for b already on its way when the reload came.
    control.set_discovered("web", "b.local:8080", {addr("127.0.0.9:8080")});
    CHECK(target_in(*control.view(), "web", "127.0.0.9:8080") == nullptr);

    // The last name gone: only the static target stays.
    c.target_groups[0].dns.clear();
    control.apply(c);
    view = control.view();
    CHECK(ids_of(view->groups[0]) == std::vector<std::string>{"static"});
    CHECK(view->groups[0].dns_names.empty());
}

TEST_CASE("control: names' answers that do not fit together are held until they do") {
    Config c = mixed_group();
    c.target_groups[0].algorithm = Algorithm::maglev;
    c.target_groups[0].maglev_table_size = 307;  // room for 3 targets
    Control control(c, nullptr, {{"web", {{"a.local:80", {addr("127.0.0.2:80")}}}}});
    control.set_discovered("web", "b.local:8080", {addr("127.0.0.3:8080"), addr("127.0.0.4:8080")});
    auto view = control.view();
    REQUIRE(view->groups[0].dns_error.has_value());
    CHECK(view->groups[0].dns_error->find("too small for 4 targets") != std::string::npos);
    CHECK(ids_of(view->groups[0]) == std::vector<std::string>{"127.0.0.2:80", "static"});

    // Without a, b's held answer fits: it is used at once, not at b's next change.
    c.target_groups[0].dns.erase(c.target_groups[0].dns.begin());
    REQUIRE(control.reload_refusal(c) == std::nullopt);
    control.apply(c);
    view = control.view();
    CHECK(view->groups[0].dns_error == std::nullopt);
    CHECK(ids_of(view->groups[0]) ==
          std::vector<std::string>{"127.0.0.3:8080", "127.0.0.4:8080", "static"});
}

TEST_CASE("control: deregistration deadlines reset connections, then removed targets go") {
    Terminations terminations;
    Config c;
    c.target_groups = {
        group("web", {{"a", "127.0.0.1:9001"}, {"b", "127.0.0.1:9002"}, {"c", "127.0.0.1:9003"}})};
    c.target_groups[0].health_check.enabled = false;
    c.target_groups[0].deregistration_delay.timeout = Duration{200};
    Control control(c, terminations.callback());
    control.start();
    auto view = control.view();
    auto a_stats = target_in(*view, "web", "a")->stats;
    auto b_stats = target_in(*view, "web", "b")->stats;
    auto c_stats = target_in(*view, "web", "c")->stats;

    control.drain("web", "a");
    REQUIRE(eventually([&] { return terminations.contains(a_stats); }));
    view = control.view();
    CHECK(target_in(*view, "web", "a")->deregistration == Deregistration::drained);
    CHECK(!target_in(*view, "web", "a")->deregistration_deadline);

    // Drained then enabled before the delay ends: no reset.
    Config slow = c;
    slow.target_groups[0].deregistration_delay.timeout = Duration{3600000};
    control.apply(slow);
    control.drain("web", "b");
    control.enable("web", "b");

    Config without_c = c;
    without_c.target_groups[0].targets.pop_back();
    without_c.target_groups[0].deregistration_delay.connection_termination = true;
    control.apply(without_c);
    REQUIRE(eventually([&] { return terminations.contains(c_stats); }));
    REQUIRE(eventually([&] { return target_in(*control.view(), "web", "c") == nullptr; }));
    CHECK_FALSE(terminations.contains(b_stats));
    CHECK(terminations.size() == 2);
    control.stop();
    // Commands still work once stopped.
    CHECK(control.enable("web", "a").result == AdminChange::Result::ok);
}

TEST_CASE("control: health checks of a proxy_protocol_v2 group start with a LOCAL header") {
    const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(listener >= 0);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&sin), sizeof sin) == 0);
    REQUIRE(::listen(listener, 16) == 0);
    socklen_t len = sizeof sin;
    REQUIRE(::getsockname(listener, reinterpret_cast<sockaddr*>(&sin), &len) == 0);
    const std::string address = "127.0.0.1:" + std::to_string(ntohs(sin.sin_port));

    Config c;
    c.target_groups = {group("web", {{"a", address}})};
    c.target_groups[0].proxy_protocol_v2 = true;
    c.target_groups[0].health_check.interval = Duration{200};
    c.target_groups[0].health_check.timeout = Duration{100};
    Control control(c, nullptr);
    control.start();

    const int conn = accept_check(listener);
    std::string received;
    char buffer[64];
    for (;;) {
        pollfd cp{conn, POLLIN, 0};
        REQUIRE(::poll(&cp, 1, 20000) == 1);
        const ssize_t n = ::read(conn, buffer, sizeof buffer);
        if (n <= 0) break;  // the checker's FIN after the header
        received.append(buffer, static_cast<size_t>(n));
    }
    ::close(conn);
    const auto local = proxy::encode_v2_local();
    CHECK(received ==
          std::string(reinterpret_cast<const char*>(local.view().data()), local.view().size()));

    REQUIRE(eventually([&] {
        auto view = control.view();
        const TargetView* t = target_in(*view, "web", "a");
        return t->last_check_passed == true && view->groups[0].check_durations.total > 0;
    }));
    auto view = control.view();
    const TargetView* t = target_in(*view, "web", "a");
    CHECK(t->state == HealthState::healthy);
    CHECK(t->last_check_reason == "connected");
    CHECK(t->last_check_at.time_since_epoch().count() > 0);
    control.stop();
    ::close(listener);
}

namespace {

// A loopback TCP socket bound to a port of its own; listening or not. One that only
// binds keeps its port from anyone else while refusing every connection to it.
int bound_socket(bool listening, std::string& address) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof sin) == 0);
    if (listening) REQUIRE(::listen(fd, 64) == 0);
    socklen_t len = sizeof sin;
    REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len) == 0);
    address = "127.0.0.1:" + std::to_string(ntohs(sin.sin_port));
    return fd;
}

}  // namespace

// Finding 2 of issue #10: the connect SQE pointed at a stack copy of the address
// that was gone by submit time, so checks started in one loop turn all connected
// to whatever that slot held last: another target, or garbage.
TEST_CASE("control: checks started in one loop turn each connect to their own target") {
    constexpr size_t kPairs = 8;
    constexpr size_t kRounds = 5;
    std::vector<int> live;
    std::vector<int> dead;
    Config c;
    std::vector<std::pair<std::string, std::string>> targets;
    for (size_t i = 0; i < kPairs; ++i) {
        std::string address;
        live.push_back(bound_socket(true, address));
        targets.emplace_back(fmt::format("t{:02}-live", 2 * i), address);
        dead.push_back(bound_socket(false, address));
        targets.emplace_back(fmt::format("t{:02}-dead", 2 * i + 1), address);
    }
    c.target_groups = {group("web", targets)};
    HealthCheckConfig& hc = c.target_groups[0].health_check;
    // All first checks fall due within 1 ms of each other, so each tick starts
    // most of them together; later rounds keep that phase.
    hc.interval = Duration{1};
    hc.timeout = Duration{2000};
    // One pass makes an initial target healthy and nothing makes it leave: a dead
    // target still `initial` at the end never passed a check; one that is healthy
    // passed at least once.
    hc.healthy_threshold = 1;
    hc.unhealthy_threshold = 1000000;
    hc.passive = false;
    Control control(c, nullptr);

    // The live targets accept and close at once, so each check ends at its FIN.
    std::vector<std::atomic<size_t>> accepted(kPairs);
    std::atomic<bool> done{false};
    std::thread acceptor([&] {
        std::vector<pollfd> fds;
        for (int fd : live) fds.push_back({fd, POLLIN, 0});
        while (!done) {
            if (::poll(fds.data(), fds.size(), 10) <= 0) continue;
            for (size_t i = 0; i < fds.size(); ++i) {
                if ((fds[i].revents & POLLIN) == 0) continue;
                const int conn = ::accept(fds[i].fd, nullptr, nullptr);
                if (conn >= 0) {
                    ::close(conn);
                    ++accepted[i];
                }
            }
        }
    });
    control.start();
    const bool rounds = eventually([&] {
        return std::all_of(accepted.begin(), accepted.end(),
                           [&](const auto& n) { return n.load() >= kRounds; });
    });
    auto view = control.view();
    control.stop();
    done = true;
    acceptor.join();
    for (int fd : live) ::close(fd);
    for (int fd : dead) ::close(fd);

    for (size_t i = 0; i < kPairs; ++i) CHECK_MESSAGE(accepted[i].load() >= kRounds, "live " << i);
    CHECK(rounds);
    for (const auto& target : targets) {
        // Not a structured binding: clang before 16 cannot capture one (CAPTURE).
        const auto& id = target.first;
        CAPTURE(id);
        const TargetView* t = target_in(*view, "web", id);
        REQUIRE(t != nullptr);
        REQUIRE(t->last_check_passed.has_value());
        if (id.ends_with("-live")) {
            CHECK(t->state == HealthState::healthy);
        } else {
            CHECK(t->state == HealthState::initial);
            CHECK_FALSE(*t->last_check_passed);
            CHECK(t->last_check_reason == "connection refused");
        }
    }
}

// A Terminate that throws (the daemon's asks every worker, which can run out of
// memory) ends run() with a check's I/O in flight. The kernel may write into what
// that I/O points at until it completes, and all of it is freed with the Control:
// the control thread waits for it before it goes, so the check's socket is closed
// then, not only when the Control is destroyed.
TEST_CASE("control: a control thread that fails ends its checks' I/O before it goes") {
    std::string address;
    const int listener = bound_socket(true, address);
    Config c;
    c.target_groups = {group("web", {{"a", address}})};
    HealthCheckConfig& hc = c.target_groups[0].health_check;
    hc.protocol = HealthProtocol::http;
    hc.interval = Duration{100};   // the first check starts at once
    hc.timeout = Duration{60000};  // and waits for a status line for the rest of the test
    c.target_groups[0].deregistration_delay.timeout = Duration{0};
    std::atomic<bool> terminated{false};
    Control control(c, [&](const std::vector<std::shared_ptr<TargetStats>>&) {
        terminated = true;
        throw std::runtime_error("test: cannot reach the workers");
    });
    control.start();

    const int conn = accept_check(listener);
    std::string request;
    char buffer[512];
    while (request.find("\r\n\r\n") == std::string::npos) {
        pollfd cp{conn, POLLIN, 0};
        REQUIRE(::poll(&cp, 1, 20000) == 1);
        const ssize_t n = ::read(conn, buffer, sizeof buffer);
        REQUIRE(n > 0);
        request.append(buffer, static_cast<size_t>(n));
    }
    // The check now waits for an answer that never comes. A drain with no delay ends
    // at once, on the control thread's next tick: its Terminate throws there.
    REQUIRE(control.drain("web", "a").result == AdminChange::Result::ok);
    pollfd cp{conn, POLLIN, 0};
    const int ready = ::poll(&cp, 1, 10000);
    CHECK(terminated);
    CHECK(ready == 1);
    if (ready == 1) CHECK(::read(conn, buffer, sizeof buffer) <= 0);  // FIN or RST
    // And all of its I/O ended (the wake-up read's too), so the Control can be freed:
    // had the thread lost count of it, it would have given up waiting.
    control.stop();
    CHECK(control.settled());
    ::close(conn);
    ::close(listener);
}

// A drain with no delay ends on the control thread's next tick, where a throwing
// Terminate makes run() fail: the seam every failed-thread case uses.
Config failing_on_drain() {
    Config c;
    c.target_groups = {group("web", {{"a", "127.0.0.1:9001"}})};
    c.target_groups[0].deregistration_delay.timeout = Duration{0};
    return c;
}

TEST_CASE("control: a command queued as the control thread fails is failed, not left waiting") {
    std::atomic<bool> terminating{false};
    std::atomic<bool> release{false};
    Control control(failing_on_drain(), [&](const std::vector<std::shared_ptr<TargetStats>>&) {
        terminating = true;
        // Holds the thread, so that the command below waits in its queue.
        eventually([&] { return release.load(); });
        throw std::runtime_error("test: cannot reach the workers");
    });
    control.start();
    REQUIRE(control.drain("web", "a").result == AdminChange::Result::ok);
    REQUIRE(eventually([&] { return terminating.load(); }));
    auto queued = call_async([&] { control.view(); });
    // Nothing shows that the command reached the queue, so it gets ample time to;
    // one that came later would meet the recorded failure, which must end it too.
    std::this_thread::sleep_for(200ms);
    release = true;
    CHECK(finished(control, queued) == kFailed);
    CHECK(control.failure() == std::string(kFailed));
}

TEST_CASE("control: every call to a failed control thread throws ControlFailed, after stop() too") {
    std::atomic<bool> terminated{false};
    const Config c = failing_on_drain();
    Control control(c, [&](const std::vector<std::shared_ptr<TargetStats>>&) {
        terminated = true;
        throw std::runtime_error("test: cannot reach the workers");
    });
    control.start();
    CHECK_FALSE(control.failure());
    REQUIRE(control.drain("web", "a").result == AdminChange::Result::ok);
    // The first calls may race the thread's failure: queued or not, they end.
    REQUIRE(eventually([&] { return terminated.load(); }));
    CHECK(finished(control, [&] { control.view(); }) == kFailed);
    CHECK(finished(control, [&] { control.drain("web", "a"); }) == kFailed);
    CHECK(finished(control, [&] { control.enable("web", "a"); }) == kFailed);
    CHECK(finished(control, [&] {
              control.register_target("web", registration("r", "127.0.0.1:9002"));
          }) == kFailed);
    CHECK(finished(control, [&] { control.deregister_target("web", "a"); }) == kFailed);
    CHECK(finished(control, [&] { control.reload_refusal(c); }) == kFailed);
    CHECK(finished(control, [&] { control.abandon_reload(); }) == kFailed);
    CHECK(finished(control, [&] { control.apply(c); }) == kFailed);
    CHECK(finished(control, [&] {
              control.set_discovered("web", "db.example:5432", {addr("127.0.0.1:9003")});
          }) == kFailed);
    CHECK(finished(control, [&] {
              control.set_discovery_error("web", "db.example:5432", "test");
          }) == kFailed);
    CHECK(control.failure() == std::string(kFailed));
    // The thread's state may be half changed: a stopped Control does not run
    // commands inline on it either.
    control.stop();
    CHECK(finished(control, [&] { control.view(); }) == kFailed);
}

// The daemon's admin source over a failed control thread: what needs the thread is
// a 503 carrying why, /ready takes the instance out of rotation, and a scrape still
// gets the workers' and listeners' series.
TEST_CASE("control: once the control thread failed, the admin API answers 503, /metrics serves") {
    Control control(failing_on_drain(), [](const std::vector<std::shared_ptr<TargetStats>>&) {
        throw std::runtime_error("test: cannot reach the workers");
    });
    control.start();
    const std::vector<std::unique_ptr<Worker>> workers;
    DaemonAdminSource source(control, workers);
    auto request = [&](std::string method, std::string path,
                       std::multimap<std::string, std::string> query = {}, std::string body = {}) {
        return handle_admin_request(
            {std::move(method), std::move(path), std::move(query), std::move(body)}, source,
            AdminAccess::full);
    };
    CHECK(request("GET", "/ready").status == 200);
    CHECK(request("GET", "/metrics").body.find("\nstickyd_control_up 1\n") != std::string::npos);
    REQUIRE(control.drain("web", "a").result == AdminChange::Result::ok);
    REQUIRE(eventually([&] { return control.failure().has_value(); }));

    const std::vector<AdminRequest> needing_control = {
        {"GET", "/status", {}, {}},
        {"GET", "/ring", {}, {}},
        {"GET", "/lookup", {{"ip", "192.0.2.1"}}, {}},
        {"POST", "/targets/a/drain", {}, {}},
        {"POST", "/targets/a/enable", {}, {}},
        {"DELETE", "/targets/a", {}, {}},
        {"POST", "/targets", {}, R"({"id": "r", "address": "127.0.0.1:9002"})"},
    };
    for (const AdminRequest& r : needing_control) {
        CAPTURE(r.path);
        const AdminReply reply = request(r.method, r.path, r.query, r.body);
        CHECK(reply.status == 503);
        CHECK(Json::parse(reply.body)["error"] == kFailed);
    }
    const AdminReply ready = request("GET", "/ready");
    CHECK(ready.status == 503);
    CHECK(Json::parse(ready.body)["ready"] == false);
    const AdminReply metrics = request("GET", "/metrics");
    CHECK(metrics.status == 200);
    CHECK(metrics.body.find("stickyd_active_connections ") != std::string::npos);
    CHECK(metrics.body.find("stickyd_target_healthy{") == std::string::npos);
    CHECK(metrics.body.find("\nstickyd_control_up 0\n") != std::string::npos);
}
