// stickyctl against a live admin endpoint served from a fake source: the remote
// commands print what the endpoint says, agree with the offline ones for the same
// targets, change the source on drain/enable, and fail with one clear line.
#include <doctest/doctest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "admin/server.hpp"
#include "tests/support/admin_fixtures.hpp"

using namespace stickyd;
using namespace stickyd::testing;

namespace {

struct Run {
    int status = -1;
    std::string out;  // stdout and stderr
};

std::string quote(const std::string& arg) {
    std::string out = "'";
    for (char c : arg) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out + "'";
}

Run stickyctl(const std::vector<std::string>& args) {
    std::string command = quote(STICKYCTL_BIN);
    for (const std::string& a : args) command += " " + quote(a);
    command += " 2>&1";
    FILE* pipe = ::popen(command.c_str(), "r");
    REQUIRE(pipe != nullptr);
    Run run;
    char buffer[4096];
    size_t n;
    while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) run.out.append(buffer, n);
    const int status = ::pclose(pipe);
    run.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return run;
}

struct Fixture {
    std::string dir;
    std::string socket;
    std::string config;
    FakeSource source{
        {group("web", {target("t1", "127.0.0.1:9001"), target("t2", "127.0.0.1:9002", 2),
                       target("t3", "127.0.0.1:9003")})}};
    std::unique_ptr<AdminServer> server;

    Fixture() {
        char name[] = "/tmp/stickyctl-remote-XXXXXX";
        REQUIRE(::mkdtemp(name) != nullptr);
        dir = name;
        socket = dir + "/admin.sock";
        config = dir + "/stickyd.toml";
        std::ofstream(config) << "[[listener]]\nbind = \"127.0.0.1:18000\"\ntarget_group = "
                                 "\"web\"\n\n[[target_group]]\nname = \"web\"\n\n"
                                 "[[target_group.target]]\nid = \"t1\"\naddress = "
                                 "\"127.0.0.1:9001\"\n\n[[target_group.target]]\nid = \"t2\"\n"
                                 "address = \"127.0.0.1:9002\"\nweight = 2\n\n"
                                 "[[target_group.target]]\nid = \"t3\"\naddress = "
                                 "\"127.0.0.1:9003\"\n";
        source.listeners_ = {{"127.0.0.1:18000", "127.0.0.1:18000", "web", nullptr}};
        AdminOptions options;
        options.unix_path = socket;
        server = std::make_unique<AdminServer>(source, options);
        server->start();
    }
    ~Fixture() {
        server->stop();
        std::filesystem::remove_all(dir);
    }
};

}  // namespace

TEST_CASE("remote ring prints exactly what offline ring prints for the same targets") {
    Fixture f;
    const Run remote = stickyctl({"ring", "--admin", f.socket});
    const Run offline = stickyctl({"ring", "--config", f.config});
    CHECK(remote.status == 0);
    CHECK(offline.status == 0);
    CHECK(remote.out == offline.out);
    CHECK(remote.out.find("group web (ring, 4096 points per unit of weight), 3 targets") == 0);
    CHECK(remote.out.find("█") != std::string::npos);
    CHECK(remote.out.find("max/mean") != std::string::npos);

    const Json remote_json = Json::parse(stickyctl({"ring", "--admin", f.socket, "--json"}).out);
    const Json offline_json = Json::parse(stickyctl({"ring", "--config", f.config, "--json"}).out);
    CHECK(remote_json == offline_json);
}

TEST_CASE("remote lookup names owner, chosen and why; agrees with offline when all healthy") {
    Fixture f;
    const std::vector<std::string> ips = {"192.0.2.1", "198.51.100.7", "2001:db8::42"};
    std::vector<std::string> args = {"lookup", "--json", "--admin", f.socket};
    args.insert(args.end(), ips.begin(), ips.end());
    const Json remote = Json::parse(stickyctl(args).out);
    args[2] = "--config";
    args[3] = f.config;
    const Json offline = Json::parse(stickyctl(args).out);
    CHECK(remote == offline);
    REQUIRE(remote["lookups"].size() == 3);
    CHECK(remote["lookups"][2]["key"] == "2001:db8::42/128");

    // The owner of the first IP goes down: the table says where its clients go now.
    const std::string owner = remote["lookups"][0]["owner"];
    f.source.set("web", owner, HealthState::unhealthy);
    const Run text = stickyctl({"lookup", "--admin", f.socket, "192.0.2.1"});
    INFO(text.out);
    CHECK(text.status == 0);
    CHECK(text.out.find("IP         KEY           OWNER   CHOSEN  ADDRESS         REASON\n") == 0);
    CHECK(text.out.find("owner unhealthy -> next usable clockwise") != std::string::npos);
    const Json after =
        Json::parse(stickyctl({"lookup", "--json", "--admin", f.socket, "192.0.2.1"}).out);
    CHECK(after["lookups"][0]["owner"] == owner);
    CHECK(after["lookups"][0]["chosen"] != owner);
}

TEST_CASE("status shows a table of targets with state, connections and share") {
    Fixture f;
    f.source.view()->groups[0].table->targets[0].stats->connections = 42;
    f.source.set("web", "t3", HealthState::unhealthy);
    const Run run = stickyctl({"status", "--admin", f.socket});
    CHECK(run.status == 0);
    INFO(run.out);
    CHECK(run.out.find("LISTENER         BIND") != std::string::npos);
    CHECK(run.out.find("group web (ring), 3 targets\n") != std::string::npos);
    CHECK(run.out.find("TARGET  ADDRESS         ORIGIN   STATE      ACTIVE  CONNECTIONS") !=
          std::string::npos);
    CHECK(run.out.find("t1      127.0.0.1:9001  config   healthy         0           42") !=
          std::string::npos);
    CHECK(run.out.find("t3      127.0.0.1:9003  config   unhealthy") != std::string::npos);
    const Json json = Json::parse(stickyctl({"status", "--json", "--admin", f.socket}).out);
    CHECK(json["groups"][0]["targets"][0]["connections"] == 42);
}

TEST_CASE("drain and enable change the target; mistakes are one line, exit 1 or 2") {
    Fixture f;
    Run drained = stickyctl({"drain", "t2", "--admin", f.socket});
    CHECK(drained.status == 0);
    CHECK(drained.out == "drained t2\n");
    CHECK(f.source.view()->groups[0].targets[1].deregistration == Deregistration::drained);
    Run enabled = stickyctl({"enable", "t2", "--admin", f.socket, "--json"});
    CHECK(enabled.status == 0);
    CHECK(Json::parse(enabled.out)["result"] == "ok");
    CHECK(f.source.view()->groups[0].targets[1].deregistration == Deregistration::none);

    Run unknown = stickyctl({"drain", "nope", "--admin", f.socket});
    CHECK(unknown.status == 1);
    CHECK(unknown.out == "stickyctl: unknown target \"nope\"\n");
    // A malformed IP is the command line's mistake: refused before asking, exit 2,
    // in the same words as offline.
    Run bad_ip = stickyctl({"lookup", "--admin", f.socket, "10.0.0.300"});
    CHECK(bad_ip.status == 2);
    CHECK(bad_ip.out ==
          "stickyctl: lookup: \"10.0.0.300\" is not an IP address (expected e.g. 192.0.2.1 or "
          "2001:db8::1)\n");
    Run bad_group = stickyctl({"ring", "--admin", f.socket, "--group", "api"});
    CHECK(bad_group.status == 1);
    CHECK(bad_group.out == "stickyctl: unknown target group \"api\" (groups: web)\n");
}

TEST_CASE("with several groups, the error names the --group flag, not the HTTP query") {
    Fixture f;
    FakeSource two{{group("web", {target("t1", "127.0.0.1:9001")}),
                    group("api", {target("a1", "127.0.0.1:9101")})}};
    AdminOptions options;
    options.unix_path = f.dir + "/two.sock";
    AdminServer server(two, options);
    server.start();
    Run ambiguous = stickyctl({"ring", "--admin", options.unix_path});
    CHECK(ambiguous.status == 1);
    CHECK(ambiguous.out ==
          "stickyctl: several target groups (web, api): choose one with --group NAME\n");
    Run chosen = stickyctl({"ring", "--admin", options.unix_path, "--group", "api"});
    CHECK(chosen.status == 0);
    CHECK(chosen.out.find("a1") != std::string::npos);
    server.stop();
}

TEST_CASE("an unreachable daemon is one line naming the socket and suggesting --admin") {
    const Run run = stickyctl({"status", "--admin", "/nonexistent/stickyd/admin.sock"});
    CHECK(run.status == 1);
    CHECK(run.out ==
          "stickyctl: cannot reach stickyd's admin endpoint at unix socket "
          "/nonexistent/stickyd/admin.sock: No such file or directory (is stickyd running? "
          "choose the endpoint with --admin PATH|HOST:PORT)\n");
    const Run tcp = stickyctl({"ring", "--admin", "127.0.0.1:1"});
    CHECK(tcp.status == 1);
    CHECK(tcp.out.find("at http://127.0.0.1:1: ") != std::string::npos);
    CHECK(tcp.out.find("--admin PATH|HOST:PORT") != std::string::npos);
}
