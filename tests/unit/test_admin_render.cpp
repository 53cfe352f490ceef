#include "admin/render.hpp"

#include <doctest/doctest.h>

#include <numeric>

#include "stickyd/fingerprint.hpp"
#include "tests/support/admin_fixtures.hpp"

using namespace stickyd;
using namespace stickyd::testing;

namespace {

FakeSource three_targets(Algorithm algorithm = Algorithm::ring) {
    return FakeSource({group("web",
                             {target("t1", "127.0.0.1:9001"), target("t2", "127.0.0.1:9002", 2),
                              target("t3", "127.0.0.1:9003")},
                             algorithm)});
}

AdminState state_of(FakeSource& source) {
    AdminState state;
    state.control = source.view();
    state.listeners = {{"front", "127.0.0.1:8000", "web", 12, 1}};
    state.totals = {12, 3, 2, 1, 1000, 2000, 4, 5};
    state.fds = {17, 1024};
    return state;
}

const RoutingTable& table_of(FakeSource& source) {
    return *source.view()->groups.front().table;
}

// An IP whose owner is `id` in this table (scans 10.0.x.y).
std::string ip_owned_by(const RoutingTable& table, const std::string& id) {
    for (int i = 0; i < 65536; ++i) {
        const std::string ip = "10.0." + std::to_string(i / 256) + "." + std::to_string(i % 256);
        auto answer = explain_lookup(table, {}, ip);
        REQUIRE(answer);
        if (table.targets[answer->owner].id == id) return ip;
    }
    FAIL("no IP owned by " << id);
    return {};
}

}  // namespace

TEST_CASE("label values and HELP text are escaped as the exposition format says") {
    CHECK(escape_label_value("plain") == "plain");
    CHECK(escape_label_value("a\\b\"c\nd") == "a\\\\b\\\"c\\nd");
    CHECK(escape_label_value("") == "");
    CHECK(escape_help("x \\ y\nz \"q\"") == "x \\\\ y\\nz \"q\"");
}

TEST_CASE("sample values: integers plain, others round-trip, special values spelled out") {
    CHECK(format_value(0) == "0");
    CHECK(format_value(5) == "5");
    CHECK(format_value(0.0005) == "0.0005");
    CHECK(format_value(2.5) == "2.5");
    CHECK(format_value(1.0 / 3) == "0.3333333333333333");
    CHECK(format_value(INFINITY) == "+Inf");
    CHECK(format_value(-INFINITY) == "-Inf");
    CHECK(format_value(NAN) == "NaN");
}

TEST_CASE("PrometheusText writes families, labelled samples and cumulative histograms") {
    PrometheusText p;
    p.family("x_total", "counter", "Things.\nMore");
    p.sample("x_total", {}, uint64_t{3});
    p.sample("x_total", {{"a", "1"}, {"b", "q\""}}, uint64_t{4});
    p.family("h_seconds", "histogram", "Durations.");
    const double bounds[] = {0.1, 1};
    const uint64_t counts[] = {2, 0, 1};
    p.histogram("h_seconds", {{"g", "web"}}, bounds, counts, 3.25);
    CHECK(p.text() ==
          "# HELP x_total Things.\\nMore\n"
          "# TYPE x_total counter\n"
          "x_total 3\n"
          "x_total{a=\"1\",b=\"q\\\"\"} 4\n"
          "# HELP h_seconds Durations.\n"
          "# TYPE h_seconds histogram\n"
          "h_seconds_bucket{g=\"web\",le=\"0.1\"} 2\n"
          "h_seconds_bucket{g=\"web\",le=\"1\"} 2\n"
          "h_seconds_bucket{g=\"web\",le=\"+Inf\"} 3\n"
          "h_seconds_sum{g=\"web\"} 3.25\n"
          "h_seconds_count{g=\"web\"} 3\n");
    CHECK(exposition_problems(p.text()).empty());
}

TEST_CASE("the strict format checker rejects what Prometheus would") {
    CHECK(exposition_problems("# TYPE a gauge\na 1\n").empty());
    CHECK_FALSE(exposition_problems("# TYPE a gauge\na 1").empty());              // no newline
    CHECK_FALSE(exposition_problems("a 1\n").empty());                            // no TYPE
    CHECK_FALSE(exposition_problems("# TYPE a gauge\nb 1\n").empty());            // other family
    CHECK_FALSE(exposition_problems("# TYPE a gauge\na{x=\"1} 1\n").empty());     // open quote
    CHECK_FALSE(exposition_problems("# TYPE a gauge\na{x=\"\n\"} 1\n").empty());  // raw newline
    CHECK_FALSE(exposition_problems("# TYPE a gauge\na one\n").empty());          // value
    CHECK_FALSE(exposition_problems("# TYPE a gauge\na 1\na 2\n").empty());       // repeated
    CHECK_FALSE(exposition_problems("# TYPE a counter\na 1\n").empty());          // no _total
    CHECK_FALSE(exposition_problems("# TYPE a gauge\n# TYPE a gauge\n").empty());
    CHECK_FALSE(exposition_problems("# TYPE h histogram\nh_bucket{le=\"1\"} 2\n"
                                    "h_bucket{le=\"+Inf\"} 1\nh_count 1\n")
                    .empty());  // not cumulative
    CHECK_FALSE(exposition_problems("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 1\n")
                    .empty());  // count differs
    CHECK_FALSE(exposition_problems("# comment\n").empty());
}

TEST_CASE("/metrics holds every family with the right values and passes the strict check") {
    FakeSource source = three_targets();
    const RoutingTable& table = table_of(source);
    table.targets[0].stats->connections = 7;
    table.targets[0].stats->connect_failures = 2;
    table.targets[0].stats->active = 1;
    table.targets[0].stats->bytes_sent = 100;
    table.targets[0].stats->bytes_received = 250;
    source.set("web", "t3", HealthState::unhealthy);
    AdminState state = state_of(source);
    auto control = std::make_shared<ControlView>(*state.control);
    CheckDurationHistogram& h = control->groups[0].check_durations;
    h.counts[0] = 3;   // <= 0.5 ms
    h.counts[5] = 1;   // (10 ms, 25 ms]
    h.counts[14] = 1;  // +Inf
    h.total = 5;
    h.sum_seconds = 12.5;
    state.control = control;

    const std::string text = metrics_text(state);
    const auto problems = exposition_problems(text);
    for (const auto& p : problems) INFO(p);
    CHECK(problems.empty());

    const std::string t1 = "{group=\"web\",target=\"t1\",address=\"127.0.0.1:9001\"}";
    const std::string t3 = "{group=\"web\",target=\"t3\",address=\"127.0.0.1:9003\"}";
    for (const std::string& line :
         {"stickyd_target_connections_total" + t1 + " 7",
          "stickyd_target_connect_failures_total" + t1 + " 2",
          "stickyd_target_active_connections" + t1 + " 1",
          "stickyd_target_bytes_sent_total" + t1 + " 100",
          "stickyd_target_bytes_received_total" + t1 + " 250",
          "stickyd_target_healthy" + t1 + " 1",
          "stickyd_target_healthy" + t3 + " 0",
          "stickyd_target_usable" + t3 + " 0",
          std::string("stickyd_target_state{group=\"web\",target=\"t3\",address=\"127.0.0.1:9003\","
                      "state=\"unhealthy\"} 1"),
          std::string("stickyd_target_state{group=\"web\",target=\"t3\",address=\"127.0.0.1:9003\","
                      "state=\"healthy\"} 0"),
          std::string(
              "stickyd_health_check_duration_seconds_bucket{group=\"web\",le=\"0.0005\"} 3"),
          std::string("stickyd_health_check_duration_seconds_bucket{group=\"web\",le=\"0.025\"} 4"),
          std::string("stickyd_health_check_duration_seconds_bucket{group=\"web\",le=\"10\"} 4"),
          std::string("stickyd_health_check_duration_seconds_bucket{group=\"web\",le=\"+Inf\"} 5"),
          std::string("stickyd_health_check_duration_seconds_sum{group=\"web\"} 12.5"),
          std::string("stickyd_health_check_duration_seconds_count{group=\"web\"} 5"),
          std::string("stickyd_listener_accepted_connections_total{listener=\"front\","
                      "target_group=\"web\"} 12"),
          std::string("stickyd_connect_retries_total 1"),
          std::string("stickyd_preserve_client_ip_fallbacks_total 4"),
          std::string("stickyd_spliced_flows_total 5"),
          std::string("stickyd_active_connections 3"),
          std::string("stickyd_process_open_fds 17"),
          std::string("stickyd_process_max_fds 1024"),
          std::string("stickyd_group_failing_open{group=\"web\"} 0"),
          std::string("stickyd_group_healthy_targets{group=\"web\"} 2"),
          std::string("stickyd_group_minimum_healthy_targets{group=\"web\"} 1")}) {
        INFO(line);
        CHECK(text.find("\n" + line + "\n") != std::string::npos);
    }
}

TEST_CASE("/metrics escapes awkward label values and stays valid") {
    FakeSource source({group("we\"b\\x", {target("id\nwith newline", "127.0.0.1:9001")})});
    AdminState state = state_of(source);
    const std::string text = metrics_text(state);
    CHECK(exposition_problems(text).empty());
    CHECK(text.find("target=\"id\\nwith newline\"") != std::string::npos);
    CHECK(text.find("group=\"we\\\"b\\\\x\"") != std::string::npos);
}

TEST_CASE("/ring: exact shares that sum to 1, points per weight, min, max and max/mean") {
    FakeSource source = three_targets();
    const Json ring = ring_document(table_of(source), 0);
    CHECK(ring["group"] == "web");
    CHECK(ring["algorithm"] == "ring");
    CHECK(ring["points_per_weight"] == kRingPointsPerWeight);
    REQUIRE(ring["targets"].size() == 3);
    double sum = 0, lo = 1, hi = 0, above_weight = 0;
    const std::vector<double> shares = table_of(source).balancer->shares();
    for (size_t i = 0; i < 3; ++i) {
        const Json& t = ring["targets"][i];
        CHECK(t["share"].get<double>() == shares[i]);
        CHECK(t["points"] == t["weight"].get<uint64_t>() * kRingPointsPerWeight);
        CHECK(t["usable"] == true);
        sum += shares[i];
        lo = std::min(lo, shares[i]);
        hi = std::max(hi, shares[i]);
        // Weights 1, 2, 1: a target's fair share is its weight over 4.
        above_weight = std::max(above_weight, shares[i] / (t["weight"].get<double>() / 4));
    }
    CHECK(ring["targets"][1]["id"] == "t2");
    CHECK(ring["targets"][1]["address"] == "127.0.0.1:9002");
    CHECK(sum == doctest::Approx(1.0).epsilon(1e-12));
    CHECK(ring["min"].get<double>() == lo);
    CHECK(ring["max"].get<double>() == hi);
    CHECK(ring["max_over_mean"].get<double>() == doctest::Approx(above_weight));
    CHECK(ring["max_over_mean"].get<double>() < 1.1);  // hi / mean would be about 1.5
}

TEST_CASE("/ring for maglev: table entries per target add up to the table size") {
    FakeSource source = three_targets(Algorithm::maglev);
    const Json ring = ring_document(table_of(source), kDefaultMaglevTableSize);
    CHECK(ring["algorithm"] == "maglev");
    CHECK(ring["table_size"] == kDefaultMaglevTableSize);
    int64_t entries = 0;
    for (const Json& t : ring["targets"]) entries += t["points"].get<int64_t>();
    CHECK(entries == kDefaultMaglevTableSize);
    const Json unknown = ring_document(table_of(source), 0);
    CHECK_FALSE(unknown.contains("table_size"));
    CHECK_FALSE(unknown["targets"][0].contains("points"));
}

TEST_CASE("/lookup explains the choice: healthy, unhealthy, draining, initial, fail-open") {
    FakeSource source = three_targets();
    const std::string ip = ip_owned_by(table_of(source), "t2");
    auto answer_now = [&] {
        const GroupView& g = source.view()->groups.front();
        auto answer = explain_lookup(*g.table, g.targets, ip);
        REQUIRE(answer);
        CHECK(answer->chosen == g.table->pick(g.table->key_hash(*parse_ip(ip)), 0));
        return std::make_pair(*answer, g.table);
    };
    {
        auto [a, table] = answer_now();
        CHECK(table->targets[a.owner].id == "t2");
        CHECK(a.chosen == a.owner);
        CHECK(a.reason == "owner healthy");
        CHECK(a.key == ip + "/32");
    }
    source.set("web", "t2", HealthState::unhealthy);
    {
        auto [a, table] = answer_now();
        CHECK(table->targets[a.owner].id == "t2");
        CHECK(table->targets[a.chosen].id != "t2");
        CHECK(a.reason == "owner unhealthy -> next usable clockwise");
    }
    source.set("web", "t2", HealthState::healthy, Deregistration::drained);
    CHECK(answer_now().first.reason == "owner draining -> next usable clockwise");
    source.set("web", "t2", HealthState::initial);
    CHECK(answer_now().first.reason == "owner usable (initial, not checked yet)");
    source.set("web", "t1", HealthState::unhealthy);
    source.set("web", "t2", HealthState::unhealthy);
    source.set("web", "t3", HealthState::unhealthy);
    {
        auto [a, table] = answer_now();
        CHECK(a.reason == "fail-open: no usable target, routing as if all were healthy");
        CHECK(a.chosen == a.owner);
        CHECK(lookup_document(*table, {a})["failing_open"] == true);
    }
}

TEST_CASE("/lookup for maglev says table order; without a view the owner counts as healthy") {
    FakeSource source = three_targets(Algorithm::maglev);
    const std::string ip = ip_owned_by(table_of(source), "t1");
    source.set("web", "t1", HealthState::unhealthy);
    const GroupView& g = source.view()->groups.front();
    CHECK(explain_lookup(*g.table, g.targets, ip)->reason ==
          "owner unhealthy -> next usable in table order");
    CHECK(explain_lookup(*g.table, {}, ip)->reason ==
          "owner not usable -> next usable in table "
          "order");
    FakeSource healthy = three_targets();
    CHECK(explain_lookup(table_of(healthy), {}, "2001:db8::1")->reason == "owner healthy");
}

TEST_CASE("/lookup rejects what is not an IP and documents owner and chosen") {
    FakeSource source = three_targets();
    const RoutingTable& table = table_of(source);
    for (const char* bad : {"", "10.0.0", "10.0.0.1:80", "example.com", "::g", "10.0.0.1/24"}) {
        CHECK_FALSE(explain_lookup(table, {}, bad));
    }
    auto a = explain_lookup(table, {}, "192.0.2.1");
    REQUIRE(a);
    const Json doc = lookup_document(table, {*a});
    CHECK(doc["group"] == "web");
    CHECK(doc["failing_open"] == false);
    const Json& l = doc["lookups"][0];
    CHECK(l["ip"] == "192.0.2.1");
    CHECK(l["key"] == "192.0.2.1/32");
    CHECK(l["owner"] == table.targets[a->owner].id);
    CHECK(l["chosen"] == table.targets[a->chosen].id);
    CHECK(l["address"] == table.targets[a->chosen].address.to_string());
    CHECK(l["reason"] == "owner healthy");
}

TEST_CASE("/status lists a group's dns names and the failing ones' reasons") {
    FakeSource source = three_targets();
    AdminState state = state_of(source);
    auto control = std::make_shared<ControlView>(*state.control);
    control->groups[0].dns_names = {"web:8080", "localhost:9001"};
    control->groups[0].dns_error = "cannot resolve web: Name or service not known";
    state.control = control;
    const Json g = status_document(state)["groups"][0];
    CHECK(g["dns_names"] == Json::array({"web:8080", "localhost:9001"}));
    CHECK(g["dns_error"] == "cannot resolve web: Name or service not known");
}

TEST_CASE("/status shows listeners, totals and every target with its counters and share") {
    FakeSource source = three_targets();
    table_of(source).targets[1].stats->connections = 9;
    source.set("web", "t1", HealthState::healthy, Deregistration::drained);
    AdminState state = state_of(source);
    auto control = std::make_shared<ControlView>(*state.control);
    TargetView& t3 = control->groups[0].targets[2];
    t3.last_check_passed = false;
    t3.last_check_reason = "connection refused";
    t3.last_check_at = std::chrono::system_clock::time_point(std::chrono::milliseconds(1500));
    t3.last_check_duration = std::chrono::microseconds(2500);
    state.control = control;

    const Json doc = status_document(state);
    CHECK(doc["totals"]["accepted"] == 12);
    CHECK(doc["totals"]["bytes_out"] == 2000);
    CHECK(doc["listeners"][0]["name"] == "front");
    CHECK(doc["listeners"][0]["accepted"] == 12);
    const Json& g = doc["groups"][0];
    CHECK(g["name"] == "web");
    CHECK(g["algorithm"] == "ring");
    CHECK(g["dns_error"].is_null());
    CHECK(g["dns_names"] == Json::array());
    REQUIRE(g["targets"].size() == 3);
    CHECK(g["targets"][0]["state"] == "draining");
    CHECK(g["targets"][0]["deregistration"] == "drained");
    CHECK(g["targets"][0]["usable"] == false);
    CHECK(g["targets"][0]["last_check"].is_null());
    CHECK(g["targets"][1]["connections"] == 9);
    CHECK(g["targets"][2]["last_check"]["passed"] == false);
    CHECK(g["targets"][2]["last_check"]["reason"] == "connection refused");
    CHECK(g["targets"][2]["last_check"]["at"] == "1970-01-01T00:00:01.500Z");
    CHECK(g["targets"][2]["last_check"]["duration_seconds"].get<double>() == 0.0025);
    double sum = 0;
    for (const Json& t : g["targets"]) sum += t["share"].get<double>();
    CHECK(sum == doctest::Approx(1.0));
    CHECK(g["failing_open"] == false);
    CHECK(g["healthy_targets"] == 2);
    CHECK(g["targets_in_service"] == 2);
    CHECK(g["minimum_healthy_targets"] ==
          Json{{"count", 1}, {"percentage", nullptr}, {"required", 1}});
}

TEST_CASE("/status shows minimum_healthy_targets, what it asks now, and fail-open") {
    FakeSource source = three_targets();
    auto control = std::make_shared<ControlView>(*state_of(source).control);
    GroupView& g = control->groups[0];
    g.minimum_healthy_targets = {2, 60};
    g.healthy_targets = 1;
    g.targets_in_service = 3;
    g.required_healthy = 2;
    g.failing_open = true;
    AdminState state = state_of(source);
    state.control = control;
    const Json doc = status_document(state);
    const Json& group = doc["groups"][0];
    CHECK(group["failing_open"] == true);
    CHECK(group["healthy_targets"] == 1);
    CHECK(group["targets_in_service"] == 3);
    CHECK(group["minimum_healthy_targets"] ==
          Json{{"count", 2}, {"percentage", 60}, {"required", 2}});
    const std::string text = metrics_text(state);
    CHECK(exposition_problems(text).empty());
    CHECK(text.find("\nstickyd_group_failing_open{group=\"web\"} 1\n") != std::string::npos);
    CHECK(text.find("\nstickyd_group_healthy_targets{group=\"web\"} 1\n") != std::string::npos);
    CHECK(text.find("\nstickyd_group_minimum_healthy_targets{group=\"web\"} 2\n") !=
          std::string::npos);
}

TEST_CASE("RFC 3339 timestamps in UTC with milliseconds") {
    using namespace std::chrono;
    CHECK(rfc3339_utc(system_clock::time_point{}) == "1970-01-01T00:00:00.000Z");
    CHECK(rfc3339_utc(system_clock::time_point(seconds(1795424462) + milliseconds(7))) ==
          "2026-11-23T09:01:02.007Z");
}

TEST_CASE("/lookup with every target drained: no chosen target, and no crash") {
    // Regression: the chosen target was indexed with kNoMember (the daemon crashed).
    FakeSource source = three_targets();
    RoutingTable table = table_of(source);  // what build_group_routing makes then
    table.usable.assign(table.targets.size(), 0);
    table.no_target = true;
    auto a = explain_lookup(table, {}, "192.0.2.1");
    REQUIRE(a);
    CHECK(a->owner != kNoMember);
    CHECK(a->chosen == kNoMember);
    CHECK(a->reason == "no target: every target is drained, new connections are refused");
    const Json doc = lookup_document(table, {*a}, false);
    CHECK(doc["failing_open"] == false);
    const Json& l = doc["lookups"][0];
    CHECK(l["owner"] == table.targets[a->owner].id);
    CHECK(l["chosen"].is_null());
    CHECK(l["address"].is_null());
}

TEST_CASE("/lookup while the group fails open as the daemon's snapshot has it") {
    // build_group_routing marks the targets in service usable when none is healthy,
    // so the table alone does not tell: the group's failing_open flag does.
    FakeSource source = three_targets();
    const std::string ip = ip_owned_by(table_of(source), "t2");
    for (const char* id : {"t1", "t2", "t3"}) source.set("web", id, HealthState::unhealthy);
    const GroupView& g = source.view()->groups.front();
    RoutingTable table = *g.table;
    table.usable.assign(table.targets.size(), 1);
    auto a = explain_lookup(table, g.targets, ip, g.failing_open);
    REQUIRE(a);
    CHECK(a->reason == "fail-open: no usable target, routing as if all were healthy");
    CHECK(a->chosen == a->owner);
    CHECK(lookup_document(table, {*a}, g.failing_open)["failing_open"] == true);
}

TEST_CASE("/lookup while the group fails open below minimum_healthy_targets") {
    // Some targets are healthy: the reason names the threshold, not "no usable target".
    FakeSource source = three_targets();
    const std::string ip = ip_owned_by(table_of(source), "t2");
    source.set("web", "t2", HealthState::unhealthy);
    const GroupView& g = source.view()->groups.front();
    RoutingTable table = *g.table;
    table.usable.assign(table.targets.size(), 1);
    auto a = explain_lookup(table, g.targets, ip, true);
    REQUIRE(a);
    CHECK(a->reason ==
          "fail-open: fewer healthy targets than minimum_healthy_targets, routing as if all were "
          "healthy");
    CHECK(table.targets[a->chosen].id == "t2");
    CHECK(lookup_document(table, {*a}, true)["failing_open"] == true);
}

TEST_CASE("documents of a group without targets render without touching a target") {
    for (Algorithm algorithm : {Algorithm::ring, Algorithm::maglev}) {
        CAPTURE(static_cast<int>(algorithm));
        FakeSource source({group("empty", {}, algorithm)});
        const RoutingTable& table = *source.view()->groups[0].table;
        const Json ring = ring_document(table, 0);
        CHECK(ring["targets"].empty());
        const std::optional<LookupAnswer> answer = explain_lookup(table, {}, "10.0.0.1");
        REQUIRE(answer.has_value());
        CHECK(answer->owner == kNoMember);
        CHECK(answer->chosen == kNoMember);
        CHECK(answer->reason == "no target: the group has no targets");
        const Json lookup = lookup_document(table, {*answer});
        CHECK(lookup["lookups"][0]["owner"].is_null());
        CHECK(lookup["lookups"][0]["chosen"].is_null());
    }
}

TEST_CASE("/status and /metrics carry each group's routing fingerprint") {
    FakeSource source = three_targets(Algorithm::maglev);
    const RoutingTable& table = table_of(source);
    const std::string fingerprint = routing_fingerprint(table);
    const Json status = status_document(state_of(source));
    const Json& routing = status["groups"][0]["routing"];
    CHECK(routing["fingerprint"] == fingerprint);
    CHECK(routing["usable_fingerprint"] == usable_fingerprint(table));
    CHECK(routing["mapping_version"] == kMappingVersion);
    CHECK(routing["algorithm"] == "maglev");
    CHECK(routing["table_size"] == kDefaultMaglevTableSize);
    CHECK(routing["prefix_v4"] == 32);
    CHECK(routing["prefix_v6"] == 128);
    REQUIRE(routing["targets"].size() == 3);
    CHECK(routing["targets"][1] ==
          Json{{"id", "t2"}, {"address", "127.0.0.1:9002"}, {"weight", 2}});

    const std::string text = metrics_text(state_of(source));
    CHECK(exposition_problems(text).empty());
    CHECK(text.find("\nstickyd_target_group_routing_info{group=\"web\",fingerprint=\"" +
                    fingerprint + "\"} 1\n") != std::string::npos);
}

TEST_CASE("a group without a routing table has a null routing object and no info sample") {
    FakeSource source = three_targets();
    AdminState state = state_of(source);
    auto control = std::make_shared<ControlView>(*state.control);
    control->groups[0].table = nullptr;
    state.control = control;
    CHECK(status_document(state)["groups"][0]["routing"].is_null());
    CHECK(metrics_text(state).find("stickyd_target_group_routing_info{") == std::string::npos);
}

TEST_CASE("refusals by the allow and deny lists: per listener, by reason") {
    FakeSource source = three_targets();
    AdminState state = state_of(source);
    state.listeners[0].refused_denied = 4;
    state.listeners[0].refused_not_allowed = 7;
    const Json doc = status_document(state);
    CHECK(doc["listeners"][0]["refused"] == Json{{"denied", 4}, {"not_allowed", 7}});
    const std::string text = metrics_text(state);
    CHECK(exposition_problems(text).empty());
    for (const std::string line :
         {"# TYPE stickyd_listener_refused_connections_total counter",
          "stickyd_listener_refused_connections_total{listener=\"front\",target_group=\"web\","
          "reason=\"denied\"} 4",
          "stickyd_listener_refused_connections_total{listener=\"front\",target_group=\"web\","
          "reason=\"not_allowed\"} 7"}) {
        INFO(line);
        CHECK(text.find("\n" + line + "\n") != std::string::npos);
    }
}
