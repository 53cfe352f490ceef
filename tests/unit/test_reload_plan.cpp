#include "stickyd/reload_plan.hpp"

#include <doctest/doctest.h>

#include <algorithm>

using namespace stickyd;

namespace {

ListenerConfig listener(std::string name, std::string_view bind, std::string group = "web") {
    ListenerConfig l;
    l.name = std::move(name);
    l.bind = *SocketAddress::parse(bind);
    l.target_group = std::move(group);
    return l;
}

std::vector<std::string> names(const std::vector<const ListenerConfig*>& list) {
    std::vector<std::string> out;
    for (const ListenerConfig* l : list) out.push_back(l->name);
    std::sort(out.begin(), out.end());
    return out;
}

std::vector<std::string> sorted(std::vector<std::string> v) {
    std::sort(v.begin(), v.end());
    return v;
}

using Names = std::vector<std::string>;

}  // namespace

TEST_CASE("an unchanged config plans only updates") {
    Config c;
    c.listeners = {listener("a", "127.0.0.1:8000"), listener("b", "[::1]:8001")};
    const ReloadPlan plan = plan_reload(c, c);
    CHECK(names(plan.update) == Names{"a", "b"});
    CHECK(plan.add.empty());
    CHECK(plan.remove.empty());
    CHECK(plan.restart_only.empty());
}

TEST_CASE("listeners are added, removed, retuned and moved by name") {
    Config before;
    before.listeners = {listener("keep", "127.0.0.1:8000"), listener("gone", "127.0.0.1:8001"),
                        listener("moves", "127.0.0.1:8002")};
    Config after;
    ListenerConfig retuned = listener("keep", "127.0.0.1:8000", "other");
    retuned.idle_timeout = std::chrono::seconds(5);
    after.listeners = {retuned, listener("moves", "127.0.0.1:8003"),
                       listener("new", "127.0.0.1:8001")};
    const ReloadPlan plan = plan_reload(before, after);
    CHECK(names(plan.update) == Names{"keep"});
    CHECK(plan.update.at(0)->target_group == "other");
    CHECK(plan.update.at(0)->idle_timeout == std::chrono::seconds(5));
    // "new" takes over the port "gone" had: both are listed, and the daemon opens
    // before it closes.
    CHECK(names(plan.add) == Names{"moves", "new"});
    CHECK(sorted(plan.remove) == Names{"gone", "moves"});
}

TEST_CASE("the same bind spelled differently is the same listener") {
    Config before;
    before.listeners = {listener("v6", "[::1]:8000")};
    Config after;
    after.listeners = {listener("v6", "[0:0:0:0:0:0:0:1]:8000")};
    const ReloadPlan plan = plan_reload(before, after);
    CHECK(names(plan.update) == Names{"v6"});
    CHECK(plan.remove.empty());
}

TEST_CASE("settings that need a restart are named") {
    Config before;
    Config after;
    after.global.threads = 4;
    after.global.splice_pipes = 0;
    after.global.admin_socket = "/tmp/a.sock";
    after.global.admin_socket_group = "stickyd";
    after.global.admin_socket_mode = 0640;
    after.global.admin_address = *SocketAddress::parse("127.0.0.1:9090");
    after.global.metrics_address = *SocketAddress::parse("127.0.0.1:9100");
    after.global.log_level = LogLevel::debug;               // applied live
    after.global.shutdown_grace = std::chrono::seconds(5);  // applied live
    const ReloadPlan plan = plan_reload(before, after);
    CHECK(plan.restart_only ==
          Names{"global.threads changed from 0 to 4", "global.splice_pipes changed from 16 to 0",
                "global.admin_socket changed from \"/run/stickyd/admin.sock\" to \"/tmp/a.sock\"",
                "global.admin_socket_group changed from \"\" to \"stickyd\"",
                "global.admin_socket_mode changed from 0660 to 0640",
                "global.admin_address changed from (none) to 127.0.0.1:9090",
                "global.metrics_address changed from (none) to 127.0.0.1:9100"});
}
