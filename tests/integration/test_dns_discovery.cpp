// DNS discovery: answer normalisation, the report policy, and the thread driven by a
// scripted resolver (no DNS traffic; resolve_dns itself only looks up names that
// /etc/hosts or the address parser answer).
#include "control/dns_discovery.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

using namespace stickyd;
using Report = DiscoveryTracker::Report;
using namespace std::chrono_literals;

namespace {

SocketAddress addr(const char* text) {
    auto a = SocketAddress::parse(text);
    REQUIRE(a.has_value());
    return *a;
}

std::vector<SocketAddress> addrs(std::initializer_list<const char*> texts) {
    std::vector<SocketAddress> out;
    for (const char* t : texts) out.push_back(addr(t));
    return out;
}

DnsAnswer good(std::initializer_list<const char*> texts) {
    return make_answer(addrs(texts), "x");
}
DnsAnswer bad(const char* why = "cannot resolve x: Name or service not known") {
    return {{}, why};
}

std::vector<std::string> strings(const std::vector<SocketAddress>& list) {
    std::vector<std::string> out;
    for (const auto& a : list) out.push_back(a.to_string());
    return out;
}

Config config_with(std::vector<std::pair<std::string, std::vector<DnsDiscoveryConfig>>> groups) {
    Config config;
    for (auto& [name, dns] : groups) {
        TargetGroupConfig g;
        g.name = name;
        g.dns = dns;
        config.target_groups.push_back(std::move(g));
    }
    return config;
}

DnsDiscoveryConfig dns(std::string name, uint16_t port, Duration refresh = Duration{5}) {
    return DnsDiscoveryConfig{std::move(name), port, refresh};
}

// A resolver whose answers the test sets, and a record of what discovery reported.
// Every wait has a generous deadline and fails the test rather than hanging.
class Script {
  public:
    void answer(const std::string& name, DnsAnswer a) {
        std::lock_guard lock(mutex_);
        answers_[name] = std::move(a);
    }

    Resolver resolver() {
        return [this](const std::string& name, uint16_t port) {
            std::lock_guard lock(mutex_);
            ++lookups_[name];
            last_port_[name] = port;
            changed_.notify_all();
            auto it = answers_.find(name);
            return it == answers_.end() ? bad("not scripted") : it->second;
        };
    }

    // "GROUP result A,B" or "GROUP error WHY"; with `names`, "GROUP NAME:PORT ...".
    DnsDiscovery::Callbacks callbacks(bool names = false) {
        auto who = [names](const std::string& group, const std::string& name) {
            return names ? group + " " + name : group;
        };
        return {[this, who](const std::string& group, const std::string& name,
                            std::vector<SocketAddress> list) {
                    std::lock_guard lock(mutex_);
                    events_.push_back(who(group, name) + " result " + join(strings(list)));
                    changed_.notify_all();
                },
                [this, who](const std::string& group, const std::string& name, std::string error) {
                    std::lock_guard lock(mutex_);
                    events_.push_back(who(group, name) + " error " + error);
                    changed_.notify_all();
                }};
    }

    // Waits until `name` was looked up `more` more times than when called: enough
    // refreshes to have reported anything they were going to report.
    void wait_lookups(const std::string& name, int more) {
        std::unique_lock lock(mutex_);
        const int target = lookups_[name] + more;
        REQUIRE(changed_.wait_for(lock, 30s, [&] { return lookups_[name] >= target; }));
    }

    void wait_events(size_t count) {
        std::unique_lock lock(mutex_);
        REQUIRE(changed_.wait_for(lock, 30s, [&] { return events_.size() >= count; }));
    }

    std::vector<std::string> events() {
        std::lock_guard lock(mutex_);
        return events_;
    }
    int lookups(const std::string& name) {
        std::lock_guard lock(mutex_);
        return lookups_[name];
    }
    uint16_t last_port(const std::string& name) {
        std::lock_guard lock(mutex_);
        return last_port_[name];
    }

  private:
    static std::string join(const std::vector<std::string>& parts) {
        std::string out;
        for (const auto& p : parts) out += (out.empty() ? "" : ",") + p;
        return out;
    }

    std::mutex mutex_;
    std::condition_variable changed_;
    std::map<std::string, DnsAnswer> answers_;
    std::map<std::string, int> lookups_;
    std::map<std::string, uint16_t> last_port_;
    std::vector<std::string> events_;
};

}  // namespace

TEST_CASE("answers are sorted IPv4 first, by address then port, without duplicates") {
    DnsAnswer a = make_answer(addrs({"[::1]:80", "10.0.0.2:80", "10.0.0.10:80", "10.0.0.2:80",
                                     "[2001:db8::1]:80", "[::1]:80", "10.0.0.2:79"}),
                              "svc");
    REQUIRE(a.ok());
    CHECK(strings(a.addresses) == std::vector<std::string>{"10.0.0.2:79", "10.0.0.2:80",
                                                           "10.0.0.10:80", "[::1]:80",
                                                           "[2001:db8::1]:80"});
}

TEST_CASE("answer order does not depend on the order the resolver returned") {
    CHECK(good({"10.0.0.3:80", "10.0.0.1:80", "[::2]:80"}).addresses ==
          good({"[::2]:80", "10.0.0.1:80", "10.0.0.3:80"}).addresses);
}

TEST_CASE("an empty answer is an error naming the name, not an empty set") {
    DnsAnswer a = make_answer({}, "app.default.svc.cluster.local");
    CHECK_FALSE(a.ok());
    CHECK(a.addresses.empty());
    CHECK(a.error == "app.default.svc.cluster.local has no A or AAAA records");
}

TEST_CASE("tracker: the first good answer is reported, an identical one is not") {
    DiscoveryTracker t;
    CHECK_FALSE(t.last_good().has_value());
    CHECK(t.update(good({"10.0.0.1:80"})) == Report::result);
    CHECK(t.update(good({"10.0.0.1:80"})) == Report::nothing);
    REQUIRE(t.last_good().has_value());
    CHECK(strings(*t.last_good()) == std::vector<std::string>{"10.0.0.1:80"});
}

TEST_CASE("tracker: an added, a removed and a replaced address each report the new set") {
    DiscoveryTracker t;
    CHECK(t.update(good({"10.0.0.1:80"})) == Report::result);
    CHECK(t.update(good({"10.0.0.1:80", "10.0.0.2:80"})) == Report::result);
    CHECK(t.update(good({"10.0.0.2:80"})) == Report::result);
    CHECK(t.update(good({"10.0.0.3:80"})) == Report::result);
    CHECK(strings(*t.last_good()) == std::vector<std::string>{"10.0.0.3:80"});
}

TEST_CASE("tracker: a failure run reports once and keeps the last good set") {
    DiscoveryTracker t;
    CHECK(t.update(good({"10.0.0.1:80", "10.0.0.2:80"})) == Report::result);
    CHECK(t.update(bad()) == Report::error);
    CHECK(t.failing());
    CHECK(t.update(bad()) == Report::nothing);
    CHECK(t.update(bad("another reason")) == Report::nothing);
    CHECK(strings(*t.last_good()) == std::vector<std::string>{"10.0.0.1:80", "10.0.0.2:80"});
}

TEST_CASE("tracker: recovery with the same set is reported, so the error can be cleared") {
    DiscoveryTracker t;
    CHECK(t.update(good({"10.0.0.1:80"})) == Report::result);
    CHECK(t.update(bad()) == Report::error);
    CHECK(t.update(good({"10.0.0.1:80"})) == Report::result);
    CHECK_FALSE(t.failing());
    CHECK(t.update(good({"10.0.0.1:80"})) == Report::nothing);
}

TEST_CASE("tracker: recovery with a different set reports it; a later failure reports again") {
    DiscoveryTracker t;
    CHECK(t.update(good({"10.0.0.1:80"})) == Report::result);
    CHECK(t.update(bad()) == Report::error);
    CHECK(t.update(good({"10.0.0.9:80"})) == Report::result);
    CHECK(t.update(bad()) == Report::error);
    CHECK(strings(*t.last_good()) == std::vector<std::string>{"10.0.0.9:80"});
}

TEST_CASE("tracker: failing from the start reports the error, then the first good set") {
    DiscoveryTracker t;
    CHECK(t.update(bad()) == Report::error);
    CHECK_FALSE(t.last_good().has_value());
    CHECK(t.update(bad()) == Report::nothing);
    CHECK(t.update(good({"10.0.0.1:80"})) == Report::result);
}

TEST_CASE("resolve_dns: numeric addresses come back with the port set") {
    DnsAnswer v4 = resolve_dns("127.0.0.1", 8080);
    REQUIRE(v4.ok());
    CHECK(strings(v4.addresses) == std::vector<std::string>{"127.0.0.1:8080"});
    DnsAnswer v6 = resolve_dns("::1", 443);
    REQUIRE(v6.ok());
    CHECK(strings(v6.addresses) == std::vector<std::string>{"[::1]:443"});
}

TEST_CASE("resolve_dns: localhost from /etc/hosts, one entry per address") {
    DnsAnswer a = resolve_dns("localhost", 9000);
    REQUIRE(a.ok());
    const auto list = strings(a.addresses);
    CHECK(std::find(list.begin(), list.end(), "127.0.0.1:9000") != list.end());
    // SOCK_STREAM hints: no DGRAM/RAW duplicates of the same address.
    CHECK(std::set<std::string>(list.begin(), list.end()).size() == list.size());
}

TEST_CASE("resolve_dns: a name that cannot be looked up is an error naming it") {
    // Empty: glibc refuses it without asking any server.
    DnsAnswer a = resolve_dns("", 80);
    CHECK_FALSE(a.ok());
    CHECK(a.addresses.empty());
    CHECK(a.error.rfind("cannot resolve : ", 0) == 0);
}

TEST_CASE("resolve_once looks up every group with dns, with its port, and only those") {
    Script script;
    script.answer("a.svc", good({"10.0.0.1:1"}));
    script.answer("b.svc", bad("cannot resolve b.svc: Name or service not known"));
    const Config config =
        config_with({{"static", {}}, {"a", {dns("a.svc", 8080)}}, {"b", {dns("b.svc", 9090)}}});
    auto answers = resolve_once(config, script.resolver());
    CHECK(answers.size() == 2);
    REQUIRE(answers.count("a") == 1);
    CHECK(answers["a"]["a.svc:8080"].ok());
    REQUIRE(answers.count("b") == 1);
    CHECK(answers["b"]["b.svc:9090"].error == "cannot resolve b.svc: Name or service not known");
    CHECK(script.lookups("a.svc") == 1);
    CHECK(script.lookups("b.svc") == 1);
    CHECK(script.last_port("a.svc") == 8080);
    CHECK(script.last_port("b.svc") == 9090);
}

TEST_CASE("discovery reports the first set, then only changes, one error per failure run") {
    Script script;
    script.answer("app", good({"10.0.0.1:80"}));
    DnsDiscovery discovery(config_with({{"web", {dns("app", 80)}}}), script.callbacks(), {},
                           script.resolver());
    discovery.start();
    script.wait_events(1);
    script.wait_lookups("app", 3);
    CHECK(script.events() == std::vector<std::string>{"web result 10.0.0.1:80"});

    script.answer("app", good({"10.0.0.2:80", "10.0.0.1:80"}));
    script.wait_events(2);
    script.answer("app", bad("cannot resolve app: Name or service not known"));
    script.wait_events(3);
    script.wait_lookups("app", 3);
    script.answer("app", good({"10.0.0.2:80", "10.0.0.1:80"}));
    script.wait_events(4);
    script.wait_lookups("app", 3);
    discovery.stop();
    CHECK(script.events() == std::vector<std::string>{
                                 "web result 10.0.0.1:80",
                                 "web result 10.0.0.1:80,10.0.0.2:80",
                                 "web error cannot resolve app: Name or service not known",
                                 "web result 10.0.0.1:80,10.0.0.2:80",
                             });
}

TEST_CASE("discovery seeded with the start-up answers reports nothing until they change") {
    Script script;
    script.answer("app", good({"10.0.0.1:80"}));
    script.answer("gone", bad("cannot resolve gone: Name or service not known"));
    const Config config = config_with({{"web", {dns("app", 80)}}, {"old", {dns("gone", 80)}}});
    auto initial = resolve_once(config, script.resolver());
    DnsDiscovery discovery(config, script.callbacks(), initial, script.resolver());
    discovery.start();
    script.wait_lookups("app", 3);
    script.wait_lookups("gone", 3);
    CHECK(script.events().empty());
    script.answer("gone", good({"10.0.0.5:80"}));
    script.wait_events(1);
    discovery.stop();
    CHECK(script.events() == std::vector<std::string>{"old result 10.0.0.5:80"});
}

TEST_CASE("stop() ends a long wait at once instead of sleeping out the refresh") {
    Script script;
    script.answer("app", good({"10.0.0.1:80"}));
    DnsDiscovery discovery(config_with({{"web", {dns("app", 80, Duration{3600 * 1000})}}}),
                           script.callbacks(), {}, script.resolver());
    discovery.start();
    script.wait_events(1);
    // With an hour to the next lookup, only a wake-up can make this return in time
    // for the test's deadline.
    discovery.stop();
    discovery.stop();  // idempotent
    CHECK(script.lookups("app") == 1);
}

TEST_CASE("a discovery with no dns groups idles and stops") {
    Script script;
    DnsDiscovery discovery(config_with({{"static", {}}}), script.callbacks(), {},
                           script.resolver());
    discovery.start();
    discovery.stop();
    CHECK(script.events().empty());
}

TEST_CASE("apply: kept groups keep their state, new ones resolve at once, removed ones stop") {
    Script script;
    script.answer("app", good({"10.0.0.1:80"}));
    script.answer("other", good({"10.0.0.7:81"}));
    script.answer("app2", good({"10.0.0.9:80"}));
    const Duration hour{3600 * 1000};
    DnsDiscovery discovery(config_with({{"web", {dns("app", 80, Duration{5})}}}),
                           script.callbacks(), {}, script.resolver());
    discovery.start();
    script.wait_events(1);

    // "web" unchanged (same answer: no callback), "api" added, then "web" renamed.
    discovery.apply(
        config_with({{"web", {dns("app", 80, Duration{5})}}, {"api", {dns("other", 81, hour)}}}));
    script.wait_events(2);
    script.wait_lookups("app", 3);
    CHECK(script.events() ==
          std::vector<std::string>{"web result 10.0.0.1:80", "api result 10.0.0.7:81"});
    CHECK(script.last_port("other") == 81);

    discovery.apply(config_with({{"web", {dns("app2", 80, Duration{5})}}}));
    script.wait_events(3);
    script.wait_lookups("app2", 3);
    const int app_lookups = script.lookups("app");
    script.wait_lookups("app2", 3);
    discovery.stop();
    CHECK(script.lookups("app") == app_lookups);  // the old name is no longer asked
    CHECK(script.events() == std::vector<std::string>{"web result 10.0.0.1:80",
                                                      "api result 10.0.0.7:81",
                                                      "web result 10.0.0.9:80"});
}

TEST_CASE("apply: a changed port is a new discovery that reports its first set") {
    Script script;
    script.answer("app", good({"10.0.0.1:80"}));
    DnsDiscovery discovery(config_with({{"web", {dns("app", 80)}}}), script.callbacks(), {},
                           script.resolver());
    discovery.start();
    script.wait_events(1);
    script.answer("app", good({"10.0.0.1:8080"}));
    discovery.apply(config_with({{"web", {dns("app", 8080)}}}));
    script.wait_events(2);
    discovery.stop();
    CHECK(script.last_port("app") == 8080);
    CHECK(script.events().back() == "web result 10.0.0.1:8080");
}

// Found by the sanitized e2e run: the thread slept in wait_until() on a reference to
// its group's `due`, and a reload that replaced the group freed it under the sleeper,
// which read it again on waking (a heap use-after-free that ASan reports).
TEST_CASE("apply: replacing a group while the thread waits for its refresh") {
    Script script;
    script.answer("app", good({"10.0.0.1:80"}));
    script.answer("other", good({"10.0.0.7:81"}));
    DnsDiscovery discovery(config_with({{"web", {dns("app", 80, Duration{3600 * 1000})}}}),
                           script.callbacks(), {}, script.resolver());
    discovery.start();
    script.wait_events(1);  // now asleep until app's refresh, an hour away
    discovery.apply(config_with({{"web", {dns("other", 81, Duration{3600 * 1000})}}}));
    script.wait_events(2);
    discovery.stop();
    CHECK(script.events() ==
          std::vector<std::string>{"web result 10.0.0.1:80", "web result 10.0.0.7:81"});
}

// ---------------------------------------------------------------------------------
// Several names in one group (dns = ["a:80", "b:8080"], quick mode's --target HOST:PORT).

TEST_CASE("resolve_once looks up every name of a group, each with its own port") {
    Script script;
    script.answer("a.svc", good({"10.0.0.1:80"}));
    script.answer("b.svc", bad("cannot resolve b.svc: Name or service not known"));
    const Config config = config_with({{"web", {dns("a.svc", 80), dns("b.svc", 8080)}}});
    auto answers = resolve_once(config, script.resolver());
    REQUIRE(answers.size() == 1);
    REQUIRE(answers["web"].size() == 2);
    CHECK(answers["web"]["a.svc:80"].ok());
    CHECK_FALSE(answers["web"]["b.svc:8080"].ok());
    CHECK(script.last_port("a.svc") == 80);
    CHECK(script.last_port("b.svc") == 8080);
}

TEST_CASE("discovery reports each name of a group on its own") {
    Script script;
    script.answer("a", good({"10.0.0.1:80"}));
    script.answer("b", good({"10.0.0.2:8080"}));
    DnsDiscovery discovery(config_with({{"web", {dns("a", 80), dns("b", 8080)}}}),
                           script.callbacks(true), {}, script.resolver());
    discovery.start();
    script.wait_events(2);
    // A failing name reports its own error once; the other keeps reporting changes.
    script.answer("a", bad("cannot resolve a: Name or service not known"));
    script.wait_events(3);
    script.answer("b", good({"10.0.0.2:8080", "10.0.0.3:8080"}));
    script.wait_events(4);
    script.wait_lookups("a", 3);
    script.wait_lookups("b", 3);
    discovery.stop();
    auto events = script.events();
    // The first two may come in either order: both are due at once.
    std::sort(events.begin(), events.begin() + 2);
    CHECK(events == std::vector<std::string>{
                        "web a:80 result 10.0.0.1:80",
                        "web b:8080 result 10.0.0.2:8080",
                        "web a:80 error cannot resolve a: Name or service not known",
                        "web b:8080 result 10.0.0.2:8080,10.0.0.3:8080",
                    });
}

TEST_CASE("apply: a group's kept names keep their state, added ones resolve, dropped ones stop") {
    Script script;
    script.answer("a", good({"10.0.0.1:80"}));
    script.answer("b", good({"10.0.0.2:80"}));
    script.answer("c", good({"10.0.0.3:80"}));
    DnsDiscovery discovery(config_with({{"web", {dns("a", 80), dns("b", 80)}}}),
                           script.callbacks(true), {}, script.resolver());
    discovery.start();
    script.wait_events(2);
    discovery.apply(config_with({{"web", {dns("a", 80), dns("c", 80)}}}));
    script.wait_events(3);
    script.wait_lookups("a", 3);
    const int b_lookups = script.lookups("b");
    script.wait_lookups("a", 3);
    discovery.stop();
    CHECK(script.lookups("b") == b_lookups);  // dropped: no longer asked
    CHECK(script.events().size() == 3);       // a unchanged: no second report
    CHECK(script.events().back() == "web c:80 result 10.0.0.3:80");
}
