// The admin router against a fake source, and the server over real sockets (a unix
// socket in a temp dir, TCP on loopback).
#include "admin/server.hpp"

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <thread>

#include "tests/support/admin_fixtures.hpp"

using namespace stickyd;
using namespace stickyd::testing;

namespace {

FakeSource two_groups() {
    return FakeSource(
        {group("web", {target("a", "127.0.0.1:9001"), target("shared", "127.0.0.1:9002")}),
         group("api", {target("b", "127.0.0.1:9101"), target("shared", "127.0.0.1:9102")})});
}

FakeSource one_group() {
    return FakeSource({group("web", {target("a", "127.0.0.1:9001"), target("b", "127.0.0.1:9002"),
                                     target("[::1]:9003", "[::1]:9003")})});
}

AdminReply call(AdminSource& source, std::string method, std::string path,
                std::multimap<std::string, std::string> query = {}, std::string body = {},
                AdminAccess access = AdminAccess::full) {
    return handle_admin_request(
        {std::move(method), std::move(path), std::move(query), std::move(body)}, source, access);
}

AdminReply call_read_only(AdminSource& source, std::string method, std::string path,
                          std::multimap<std::string, std::string> query = {}) {
    return call(source, std::move(method), std::move(path), std::move(query), {},
                AdminAccess::read_only);
}

std::string error_of(const AdminReply& reply) {
    return Json::parse(reply.body)["error"].get<std::string>();
}

struct TempDir {
    std::string path;
    TempDir() {
        char name[] = "/tmp/stickyd-admin-test-XXXXXX";
        REQUIRE(mkdtemp(name) != nullptr);
        path = name;
    }
    ~TempDir() { std::filesystem::remove_all(path); }
};

int connect_unix(const std::string& path) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.data(), path.size());
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        ::close(fd);
        return -1;
    }
    timeval tv{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

// Sends `request` (then half-closes if asked), reads the whole answer.
std::string send_and_read(int fd, const std::string& request, bool half_close = false) {
    size_t sent = 0;
    while (sent < request.size()) {
        const ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
        if (n <= 0) break;  // the server may answer and stop reading early (431)
        sent += static_cast<size_t>(n);
    }
    if (half_close) ::shutdown(fd, SHUT_WR);
    std::string reply;
    char buffer[4096];
    for (;;) {
        const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
        if (n <= 0) break;
        reply.append(buffer, static_cast<size_t>(n));
    }
    ::close(fd);
    return reply;
}

int status_of(const std::string& reply) {
    REQUIRE(reply.starts_with("HTTP/1.1 "));
    return std::atoi(reply.c_str() + 9);
}

std::string body_of(const std::string& reply) {
    const size_t end = reply.find("\r\n\r\n");
    REQUIRE(end != std::string::npos);
    return reply.substr(end + 4);
}

std::string get(const std::string& socket_path, const std::string& target) {
    const int fd = connect_unix(socket_path);
    REQUIRE(fd >= 0);
    return send_and_read(
        fd, "GET " + target + " HTTP/1.1\r\nHost: stickyd\r\nConnection: close\r\n\r\n");
}

AdminOptions unix_options(const std::string& path) {
    AdminOptions o;
    o.unix_path = path;
    return o;
}

}  // namespace

TEST_CASE("router: GET endpoints answer with JSON, /metrics with the exposition format") {
    FakeSource source = one_group();
    AdminReply status = call(source, "GET", "/status");
    CHECK(status.status == 200);
    CHECK(status.content_type == "application/json");
    CHECK(Json::parse(status.body)["groups"][0]["name"] == "web");
    AdminReply ring = call(source, "GET", "/ring");
    CHECK(ring.status == 200);
    CHECK(Json::parse(ring.body)["targets"].size() == 3);
    AdminReply metrics = call(source, "GET", "/metrics");
    CHECK(metrics.status == 200);
    CHECK(metrics.content_type == "text/plain; version=0.0.4; charset=utf-8");
    CHECK(exposition_problems(metrics.body).empty());
    CHECK(metrics.body.find("stickyd_process_max_fds ") != std::string::npos);
}

TEST_CASE("router: /lookup answers several IPs from one snapshot, and rejects bad ones") {
    FakeSource source = one_group();
    AdminReply ok = call(source, "GET", "/lookup", {{"ip", "10.1.1.1"}, {"ip", "2001:db8::7"}});
    REQUIRE(ok.status == 200);
    const Json doc = Json::parse(ok.body);
    REQUIRE(doc["lookups"].size() == 2);
    CHECK(doc["lookups"][1]["ip"] == "2001:db8::7");
    CHECK(doc["lookups"][1]["key"] == "2001:db8::7/128");

    AdminReply bad = call(source, "GET", "/lookup", {{"ip", "10.1.1.1"}, {"ip", "10.1.1.300"}});
    CHECK(bad.status == 400);
    CHECK(error_of(bad).find("\"10.1.1.300\" is not an IP address") != std::string::npos);
    AdminReply none = call(source, "GET", "/lookup");
    CHECK(none.status == 400);
    CHECK(error_of(none) == "lookup needs ?ip=ADDR (repeatable)");
}

TEST_CASE("router: the group is named when there are several, and must exist") {
    FakeSource source = two_groups();
    AdminReply ambiguous = call(source, "GET", "/ring");
    CHECK(ambiguous.status == 400);
    CHECK(error_of(ambiguous) == "several target groups (web, api): add ?group=NAME");
    CHECK(call(source, "GET", "/ring", {{"group", "api"}}).status == 200);
    CHECK(Json::parse(call(source, "GET", "/ring", {{"group", "api"}}).body)["group"] == "api");
    AdminReply unknown = call(source, "GET", "/lookup", {{"group", "nope"}, {"ip", "10.0.0.1"}});
    CHECK(unknown.status == 404);
    CHECK(error_of(unknown) == "unknown target group \"nope\" (groups: web, api)");
}

TEST_CASE("router: drain and enable change the target, with 404 and 409 for mistakes") {
    FakeSource source = two_groups();
    AdminReply drained = call(source, "POST", "/targets/a/drain");
    CHECK(drained.status == 200);
    CHECK(Json::parse(drained.body)["message"] == "drained a");
    CHECK(source.view()->groups[0].targets[0].deregistration == Deregistration::drained);
    CHECK(source.view()->groups[0].table->usable[0] == 0);
    CHECK(call(source, "POST", "/targets/a/enable").status == 200);
    CHECK(source.view()->groups[0].targets[0].deregistration == Deregistration::none);

    CHECK(call(source, "POST", "/targets/nope/drain").status == 404);
    CHECK(call(source, "POST", "/targets/a/drain", {{"group", "nope"}}).status == 404);
    AdminReply ambiguous = call(source, "POST", "/targets/shared/drain");
    CHECK(ambiguous.status == 409);
    CHECK(call(source, "POST", "/targets/shared/drain", {{"group", "api"}}).status == 200);
    CHECK(source.view()->groups[1].targets[1].deregistration == Deregistration::drained);
    CHECK(source.view()->groups[0].targets[1].deregistration == Deregistration::none);
}

TEST_CASE("router: a target id is one percent-encoded path segment") {
    FakeSource source = one_group();
    CHECK(call(source, "POST", "/targets/%5B%3A%3A1%5D%3A9003/drain").status == 200);
    CHECK(source.view()->groups[0].targets[0].id == "[::1]:9003");
    CHECK(source.view()->groups[0].targets[0].deregistration == Deregistration::drained);
    AdminReply bad = call(source, "POST", "/targets/a%zz/drain");
    CHECK(bad.status == 400);
    CHECK(call(source, "POST", "/targets/a%2/drain").status == 400);
    CHECK(call(source, "POST", "/targets//drain").status == 404);
}

TEST_CASE("router: POST /targets reads its JSON body with the configuration's rules") {
    FakeSource source = one_group();
    auto post = [&](std::string body, std::multimap<std::string, std::string> query = {}) {
        return call(source, "POST", "/targets", std::move(query), std::move(body));
    };
    AdminReply ok = post(R"({"id": "web-4", "address": "127.0.0.1:9004", "weight": 2})");
    CHECK(ok.status == 200);
    CHECK(Json::parse(ok.body) == Json{{"result", "ok"}, {"message", "done"}});
    REQUIRE(source.registrations.size() == 1);
    CHECK(source.registrations[0].first.empty());
    CHECK(source.registrations[0].second.id == "web-4");
    CHECK(source.registrations[0].second.address.to_string() == "127.0.0.1:9004");
    CHECK(source.registrations[0].second.weight == 2u);

    // The id defaults to the address and the weight is left to the group; the group
    // comes from the body or the query.
    CHECK(post(R"({"address": "[::1]:9005", "group": "web"})").status == 200);
    CHECK(source.registrations[1].first == "web");
    CHECK(source.registrations[1].second.id == "[::1]:9005");
    CHECK_FALSE(source.registrations[1].second.weight.has_value());
    CHECK(post(R"({"address": "127.0.0.1:9006"})", {{"group", "web"}}).status == 200);
    CHECK(source.registrations[2].first == "web");

    const std::vector<std::pair<std::string, std::string>> bad = {
        {"",
         "POST /targets needs a JSON body such as {\"id\": \"web-4\", \"address\": "
         "\"10.0.0.14:8080\", \"weight\": 1, \"group\": \"web\"}"},
        {"{\"id\": \"x\",",
         "invalid JSON body: parse error at line 1, column 12: syntax error "
         "while parsing object key - unexpected end of input; expected string "
         "literal"},
        {"[1]",
         "the body must be a JSON object such as {\"id\": \"web-4\", \"address\": "
         "\"10.0.0.14:8080\", \"weight\": 1, \"group\": \"web\"}, got [1]"},
        {R"({"address": "127.0.0.1:9004", "wieght": 2})",
         "unknown key \"wieght\" (did you mean \"weight\"?); a target has id, address, weight and "
         "group"},
        {R"({"id": "web-4"})",
         "address: missing; a target needs one, as in {\"id\": \"web-4\", "
         "\"address\": \"10.0.0.14:8080\", \"weight\": 1, \"group\": "
         "\"web\"}"},
        {R"({"address": 9004})", "address: expected a string, got 9004"},
        {R"({"address": "127.0.0.1"})",
         "address: \"127.0.0.1\": missing :port; expected ip:port such as 127.0.0.1:9001 or "
         "[::1]:9001"},
        {R"({"address": "web.local:80"})",
         "address: \"web.local:80\": \"web.local\" is a host name; an IP address is required "
         "(names are not resolved); expected ip:port such as 127.0.0.1:9001 or [::1]:9001"},
        {R"({"id": "web 4", "address": "127.0.0.1:9004"})",
         "id: must be printable ASCII without spaces, quotes or backslashes, got \"web 4\""},
        {R"({"id": "", "address": "127.0.0.1:9004"})", "id: must not be empty"},
        {R"({"id": 4, "address": "127.0.0.1:9004"})", "id: expected a string, got 4"},
        {R"({"address": "127.0.0.1:9004", "weight": 0})",
         "weight: must be an integer from 1 to 100, got 0"},
        {R"({"address": "127.0.0.1:9004", "weight": 101})",
         "weight: must be an integer from 1 to 100, got 101"},
        {R"({"address": "127.0.0.1:9004", "weight": "2"})",
         "weight: must be an integer from 1 to 100, got \"2\""},
        {R"({"address": "127.0.0.1:9004", "weight": 1.5})",
         "weight: must be an integer from 1 to 100, got 1.5"},
        {R"({"address": "127.0.0.1:9004", "weight": 18446744073709551615})",
         "weight: must be an integer from 1 to 100, got 18446744073709551615"},
        {R"({"address": "127.0.0.1:9004", "group": ""})",
         "group: must name a target group, got \"\""},
        {R"({"address": "127.0.0.1:9004", "group": ["web"]})",
         "group: expected a string, got [\"web\"]"},
    };
    for (const auto& entry : bad) {
        // Not a structured binding: clang before 16 cannot capture one (CAPTURE).
        const std::string body = entry.first;
        const std::string error = entry.second;
        CAPTURE(body);
        const AdminReply reply = post(body);
        CHECK(reply.status == 400);
        CHECK(error_of(reply) == error);
    }
    AdminReply both = post(R"({"address": "127.0.0.1:9004", "group": "web"})", {{"group", "api"}});
    CHECK(both.status == 400);
    CHECK(error_of(both) == "group: the body names \"web\", the query \"api\"");
    CHECK(source.registrations.size() == 3);  // none of those reached the source

    // What the source says decides the status.
    for (auto [result, status] : {std::pair{AdminChange::Result::unknown_group, 404},
                                  {AdminChange::Result::conflict, 409},
                                  {AdminChange::Result::invalid, 400},
                                  {AdminChange::Result::over_capacity, 422}}) {
        source.next_change = {result, "why"};
        const AdminReply reply = post(R"({"address": "127.0.0.1:9007"})");
        CHECK(reply.status == status);
        CHECK(error_of(reply) == "why");
    }
}

TEST_CASE("router: DELETE /targets/ID deregisters; the id is one percent-encoded segment") {
    FakeSource source = one_group();
    CHECK(call(source, "DELETE", "/targets/%5B%3A%3A1%5D%3A9003").status == 200);
    CHECK(call(source, "DELETE", "/targets/a", {{"group", "web"}}).status == 200);
    REQUIRE(source.deregistrations.size() == 2);
    CHECK(source.deregistrations[0] == std::pair<std::string, std::string>{"", "[::1]:9003"});
    CHECK(source.deregistrations[1] == std::pair<std::string, std::string>{"web", "a"});
    CHECK(call(source, "DELETE", "/targets/a%zz").status == 400);
    CHECK(call(source, "DELETE", "/targets/%ff").status == 400);
    source.next_change = {AdminChange::Result::ambiguous, "which"};
    CHECK(call(source, "DELETE", "/targets/a").status == 409);
    AdminReply get = call(source, "GET", "/targets/a");
    CHECK(get.status == 405);
    CHECK(get.allow == "DELETE");
    AdminReply list = call(source, "GET", "/targets");
    CHECK(list.status == 405);
    CHECK(list.allow == "POST");
}

TEST_CASE("router: wrong methods get 405 with Allow, unknown paths 404") {
    FakeSource source = one_group();
    for (const char* path : {"/status", "/ring", "/lookup", "/metrics"}) {
        AdminReply reply = call(source, "POST", path);
        CHECK(reply.status == 405);
        CHECK(reply.allow == "GET");
        CHECK(error_of(reply) == std::string(path) + " takes GET only, not POST");
    }
    AdminReply get_drain = call(source, "GET", "/targets/a/drain");
    CHECK(get_drain.status == 405);
    CHECK(get_drain.allow == "POST");
    CHECK(call(source, "DELETE", "/targets/a/enable").status == 405);
    AdminReply unknown = call(source, "GET", "/nope");
    CHECK(unknown.status == 404);
    CHECK(error_of(unknown).starts_with("no such endpoint: GET /nope (endpoints: GET /status"));
    CHECK(call(source, "GET", "/targets/a/reboot").status == 404);
}

TEST_CASE("router, read-only: /metrics, /status and /ready answer as on the admin socket") {
    FakeSource source = one_group();
    for (const char* path : {"/metrics", "/status", "/ready"}) {
        CAPTURE(path);
        const AdminReply full = call(source, "GET", path);
        const AdminReply read_only = call_read_only(source, "GET", path);
        CHECK(read_only.status == 200);
        CHECK(read_only.content_type == full.content_type);
        CHECK(call_read_only(source, "HEAD", path).status == 200);
        const AdminReply post = call_read_only(source, "POST", path);
        CHECK(post.status == 405);
        CHECK(post.allow == "GET");
    }
    source.ready_ = false;
    CHECK(call_read_only(source, "GET", "/ready").status == 503);
}

TEST_CASE("router, read-only: drain, enable, /ring and /lookup are 403 and change nothing") {
    FakeSource source = one_group();
    for (const char* method : {"POST", "GET", "PUT", "DELETE"}) {
        for (const char* path : {"/targets/a/drain", "/targets/a/enable", "/targets/nope/drain",
                                 "/targets/a/reboot", "/ring", "/lookup"}) {
            CAPTURE(method);
            CAPTURE(path);
            const AdminReply reply = call_read_only(source, method, path, {{"ip", "127.0.0.2"}});
            CHECK(reply.status == 403);
            CHECK(reply.allow.empty());
            CHECK(error_of(reply) ==
                  fmt::format("{} {} is not served on the metrics address, which is read-only "
                              "(GET /metrics, GET /status, GET /ready); use the admin socket",
                              method, path));
        }
    }
    for (const TargetView& t : source.view()->groups[0].targets) {
        CHECK(t.deregistration == Deregistration::none);
    }
    CHECK(source.changes.load() == 0);
    const AdminReply unknown = call_read_only(source, "GET", "/nope");
    CHECK(unknown.status == 404);
    CHECK(error_of(unknown) ==
          "no such endpoint: GET /nope (the metrics address serves GET "
          "/metrics, GET /status, GET /ready)");
    CHECK(call_read_only(source, "POST", "/status/../targets/a/drain").status == 404);
    CHECK(call_read_only(source, "GET", "/targets/a%ff/drain").status == 403);
    CHECK(call_read_only(source, "GET", std::string("/\xff")).status == 400);
}

TEST_CASE("router: invalid UTF-8 anywhere in a request is a 400 naming it, never a 500") {
    FakeSource source = two_groups();
    struct Case {
        std::string method, path;
        std::multimap<std::string, std::string> query;
        std::string_view names;  // what the error must name
    };
    const std::vector<Case> cases = {
        {"GET", "/ring", {{"group", "\xff"}}, "query parameter group"},
        {"GET", "/\xff", {}, "path"},
        {"GET", "/lookup", {{"group", "web"}, {"ip", "\xff"}}, "query parameter ip"},
        {"POST", "/targets/%ff/drain", {}, "target id"},
        {"POST", "/targets/%c3%28/enable", {}, "target id"},       // truncated sequence
        {"POST", "/targets/%c0%af/drain", {}, "target id"},        // overlong '/'
        {"POST", "/targets/%ed%a0%80/drain", {}, "target id"},     // a UTF-16 surrogate
        {"POST", "/targets/%f4%90%80%80/drain", {}, "target id"},  // above U+10FFFF
        {"POST", "/targets/a/drain", {{"group", "\xfe"}}, "query parameter group"},
        {"GET", "/status", {{"\xff", "1"}}, "query parameter name"},
        {"GET", "/metrics", {{"x", "a\x80"}}, "query parameter x"},
        {"G\xc3", "/status", {}, "method"},
        {"GET", "/targets/\xff/drain", {}, "path"},
    };
    for (const Case& c : cases) {
        CAPTURE(c.path);
        AdminReply reply;
        REQUIRE_NOTHROW(reply = call(source, c.method, c.path, c.query));
        CHECK(reply.status == 400);
        const std::string error = error_of(reply);
        CHECK(error.find("not valid UTF-8") != std::string::npos);
        CHECK(error.find(c.names) != std::string::npos);
    }
    // Valid multi-byte UTF-8 is just an unknown name.
    AdminReply fine = call(source, "POST", "/targets/%c3%a9t%c3%a9/drain");
    CHECK(fine.status == 404);
    CHECK(error_of(fine) == "unknown target \"\xc3\xa9t\xc3\xa9\"");
}

TEST_CASE("render: an error message with invalid UTF-8 is rendered with U+FFFD, not thrown") {
    AdminReply reply;
    REQUIRE_NOTHROW(reply = error_reply(404, "unknown target \"\xff\""));
    CHECK(error_of(reply) == "unknown target \"\xef\xbf\xbd\"");
}

TEST_CASE("router: a group without targets answers 503 on /ring and /lookup, others work") {
    FakeSource source({group("web", {target("a", "127.0.0.1:9001")}), group("empty", {}),
                       group("empty-maglev", {}, Algorithm::maglev)});
    for (const char* name : {"empty", "empty-maglev"}) {
        CAPTURE(name);
        AdminReply ring = call(source, "GET", "/ring", {{"group", name}});
        CHECK(ring.status == 503);
        CHECK(error_of(ring) == fmt::format("group {} has no targets", name));
        AdminReply lookup = call(source, "GET", "/lookup", {{"group", name}, {"ip", "10.0.0.1"}});
        CHECK(lookup.status == 503);
        CHECK(error_of(lookup) == fmt::format("group {} has no targets", name));
        CHECK(call(source, "POST", "/targets/a/drain", {{"group", name}}).status == 404);
    }
    CHECK(call(source, "GET", "/ring", {{"group", "web"}}).status == 200);
    AdminReply status = call(source, "GET", "/status");
    REQUIRE(status.status == 200);
    CHECK(Json::parse(status.body)["groups"][1]["targets"].empty());
    AdminReply metrics = call(source, "GET", "/metrics");
    CHECK(metrics.status == 200);
    CHECK(exposition_problems(metrics.body).empty());
}

TEST_CASE("process fd usage counts this process's open fds") {
    FakeSource source = one_group();
    const ProcessFds before = source.process_fds();
    const int fd = ::dup(0);
    const ProcessFds after = source.process_fds();
    ::close(fd);
    CHECK(after.open == before.open + 1);
    CHECK(after.max > 0);
    CHECK(after.max >= after.open);
}

TEST_CASE("server: serves HTTP on a unix socket it creates (directory too), mode 0660") {
    TempDir dir;
    const std::string path = dir.path + "/run/stickyd/admin.sock";
    FakeSource source = one_group();
    AdminServer server(source, unix_options(path));
    server.start();
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    CHECK((st.st_mode & 0777) == 0660);
    REQUIRE(::stat((dir.path + "/run/stickyd").c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0755);

    const std::string reply = get(path, "/lookup?ip=10.0.0.1&ip=10.0.0.2");
    CHECK(status_of(reply) == 200);
    CHECK(reply.find("Content-Type: application/json") != std::string::npos);
    CHECK(Json::parse(body_of(reply))["lookups"].size() == 2);
    const std::string metrics = get(path, "/metrics");
    CHECK(metrics.find("Content-Type: text/plain; version=0.0.4") != std::string::npos);
    CHECK(exposition_problems(body_of(metrics)).empty());

    server.stop();
    CHECK(::access(path.c_str(), F_OK) != 0);  // removed on stop
}

TEST_CASE("server: a stale socket file is replaced; a live one or a plain file refuses") {
    TempDir dir;
    const std::string path = dir.path + "/admin.sock";
    {
        // Bound, then closed without unlink: what a killed daemon leaves behind.
        const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::memcpy(addr.sun_path, path.data(), path.size());
        REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        ::close(fd);
    }
    FakeSource source = one_group();
    AdminServer first(source, unix_options(path));
    first.start();
    CHECK(status_of(get(path, "/status")) == 200);

    AdminServer second(source, unix_options(path));
    try {
        second.start();
        FAIL("a second server started on a live socket");
    } catch (const std::runtime_error& e) {
        CHECK(std::string(e.what()) ==
              "admin socket " + path +
                  ": another process answers on it (another stickyd?); stop it or choose "
                  "another path (admin_socket, --admin-socket)");
    }
    second.stop();
    CHECK(status_of(get(path, "/status")) == 200);  // the refused one removed nothing
    first.stop();

    const std::string file = dir.path + "/plain";
    FILE* f = std::fopen(file.c_str(), "w");
    std::fclose(f);
    AdminServer third(source, unix_options(file));
    CHECK_THROWS_WITH_AS(third.start(),
                         ("admin socket " + file + ": exists and is not a socket").c_str(),
                         std::runtime_error);
    CHECK(::access(file.c_str(), F_OK) == 0);
    AdminServer too_long(source, unix_options(dir.path + "/" + std::string(120, 'x')));
    CHECK_THROWS_AS(too_long.start(), std::runtime_error);
}

TEST_CASE("server: oversized, garbage, truncated and slow requests get JSON errors") {
    TempDir dir;
    const std::string path = dir.path + "/admin.sock";
    FakeSource source = one_group();
    AdminOptions options = unix_options(path);
    options.io_timeout = std::chrono::milliseconds(1000);
    AdminServer server(source, options);
    server.start();

    // A 1 MiB header.
    std::string huge = "GET /status HTTP/1.1\r\nX-Big: " + std::string(1 << 20, 'a') + "\r\n\r\n";
    std::string reply = send_and_read(connect_unix(path), huge);
    CHECK(status_of(reply) == 431);
    CHECK(Json::parse(body_of(reply))["error"] == "request head larger than 16384 bytes");

    // The cap is exact: a head of 16384 bytes is served, one byte more is refused.
    // Header lines are capped at 8192 bytes (the httplib build's limit): 431 too.
    auto head_of = [](size_t total, size_t line) {  // `line` counts its CRLF
        std::string head = "GET /status HTTP/1.1\r\n";
        size_t left = total - head.size() - 2;  // for header lines, before the last CRLF
        for (int i = 0; left > 0; ++i) {
            size_t n = std::min(line, left);
            if (left - n > 0 && left - n < 16) n = left - 16;  // room for one more line
            const std::string name = fmt::format("X-Pad-{}: ", i);
            head += name + std::string(n - name.size() - 2, 'p') + "\r\n";
            left -= n;
        }
        return head + "\r\n";
    };
    REQUIRE(head_of(16385, 4000).size() == 16385);
    CHECK(status_of(send_and_read(connect_unix(path), head_of(16384, 4000))) == 200);
    reply = send_and_read(connect_unix(path), head_of(16385, 4000));
    CHECK(status_of(reply) == 431);
    CHECK(Json::parse(body_of(reply))["error"] == "request head larger than 16384 bytes");
    CHECK(status_of(send_and_read(connect_unix(path), head_of(8192 + 100, 8192))) == 200);
    reply = send_and_read(connect_unix(path), head_of(8192 + 100, 8193));
    CHECK(status_of(reply) == 431);
    CHECK(Json::parse(body_of(reply))["error"] == "request header line longer than 8192 bytes");

    reply = send_and_read(connect_unix(path), "\x16\x03\x01garbage bytes\r\n\r\n");
    CHECK(status_of(reply) == 400);
    CHECK(Json::parse(body_of(reply))["error"].get<std::string>().starts_with(
        "malformed HTTP request"));

    reply = send_and_read(connect_unix(path), "GET /status HTTP/1.1\r\nHost:", /*half_close=*/true);
    CHECK(status_of(reply) == 400);
    CHECK(Json::parse(body_of(reply))["error"] == "incomplete HTTP request");

    // Never finishes its head: answered 408 once the deadline passes.
    reply = send_and_read(connect_unix(path), "GET /status HTTP/1.1\r\n");
    CHECK(status_of(reply) == 408);
    CHECK(Json::parse(body_of(reply))["error"].get<std::string>().starts_with(
        "request not complete"));

    reply = send_and_read(connect_unix(path),
                          "POST /targets/a/drain HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" +
                              std::string(100000, 'x'));
    CHECK(status_of(reply) == 413);
    CHECK(source.view()->groups[0].targets[0].deregistration == Deregistration::none);

    reply = send_and_read(connect_unix(path), "PUT /status HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    CHECK(status_of(reply) == 405);
    CHECK(reply.find("Allow: GET") != std::string::npos);

    CHECK(status_of(get(path, "/status")) == 200);  // and it still serves
}

TEST_CASE("server: requests that are not UTF-8 get a 400 with a JSON error, never a 500") {
    TempDir dir;
    const std::string path = dir.path + "/admin.sock";
    FakeSource source = one_group();
    AdminServer server(source, unix_options(path));
    server.start();
    for (const char* request :
         {"GET /ring?group=%ff HTTP/1.1\r\n\r\n", "GET /\xff HTTP/1.1\r\n\r\n",
          "GET /lookup?ip=%ff HTTP/1.1\r\n\r\n", "POST /targets/%ff/drain HTTP/1.1\r\n\r\n",
          "GET /status?%c3=1 HTTP/1.1\r\n\r\n"}) {
        CAPTURE(request);
        const std::string reply = send_and_read(connect_unix(path), request);
        CHECK(status_of(reply) == 400);
        CHECK(Json::parse(body_of(reply))["error"].get<std::string>().find("not valid UTF-8") !=
              std::string::npos);
    }
}

TEST_CASE("server: a client that sends nothing does not hold up the others") {
    TempDir dir;
    const std::string path = dir.path + "/admin.sock";
    FakeSource source = one_group();
    AdminOptions options = unix_options(path);
    options.threads = 2;
    AdminServer server(source, options);
    server.start();
    const int idle = connect_unix(path);
    REQUIRE(idle >= 0);
    for (int i = 0; i < 5; ++i) CHECK(status_of(get(path, "/status")) == 200);
    ::close(idle);
}

namespace {

int connect_tcp(const SocketAddress& address) {
    const int fd = ::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    REQUIRE(::connect(fd, address.sa(), address.len()) == 0);
    timeval tv{5, 0};  // a deadline on each answer: never a pass/fail timing
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

// A free loopback port, found the way the daemon's users would pick one: ask the kernel.
SocketAddress free_loopback_address() {
    const int probe = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in any{};
    any.sin_family = AF_INET;
    any.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(probe, reinterpret_cast<sockaddr*>(&any), sizeof any) == 0);
    socklen_t len = sizeof any;
    ::getsockname(probe, reinterpret_cast<sockaddr*>(&any), &len);
    ::close(probe);
    return SocketAddress::from_sockaddr(reinterpret_cast<sockaddr*>(&any), len);
}

AdminOptions both_options(const std::string& unix_path) {
    AdminOptions o = unix_options(unix_path);
    o.tcp = free_loopback_address();
    return o;
}

// The endpoint's default budgets: connections per listener, and per client IP on TCP.
constexpr size_t kPerListener = 64;
constexpr size_t kPerSource = 8;

// Opens `count` connections that each send the start of a head and then stall, the
// way a slowloris client holds a server.
std::vector<int> slow_clients(size_t count, const std::function<int()>& connect) {
    std::vector<int> fds;
    for (size_t i = 0; i < count; ++i) {
        const int fd = connect();
        REQUIRE(fd >= 0);
        REQUIRE(::send(fd, "GET /status HTTP/1.1\r\nX-Slow: ", 30, MSG_NOSIGNAL) == 30);
        fds.push_back(fd);
    }
    return fds;
}

// What stalled clients have been told so far, read without waiting: a complete
// 503 (or 408) with a JSON error, nothing yet, or something else (a reset, garbage).
struct SlowOutcome {
    size_t busy = 0, timed_out = 0, waiting = 0, other = 0;
};

class StalledClients {
  public:
    explicit StalledClients(std::vector<int> fds) : fds_(std::move(fds)), replies_(fds_.size()) {}
    ~StalledClients() {
        for (int fd : fds_) ::close(fd);
    }
    size_t size() const { return fds_.size(); }

    SlowOutcome outcome() {
        SlowOutcome out;
        for (size_t i = 0; i < fds_.size(); ++i) {
            Reply& r = replies_[i];
            if (!r.ended) read_more(fds_[i], r);
            if (!r.ended) {
                ++out.waiting;
            } else if (r.eof && r.text.starts_with("HTTP/1.1 503 ") && json_error(r.text)) {
                ++out.busy;
            } else if (r.eof && r.text.starts_with("HTTP/1.1 408 ") && json_error(r.text)) {
                ++out.timed_out;  // still in the budget when its head's deadline passed
            } else {
                ++out.other;
            }
        }
        return out;
    }

  private:
    struct Reply {
        std::string text;
        bool ended = false, eof = false;
    };

    static void read_more(int fd, Reply& r) {
        char buffer[4096];
        for (;;) {
            const ssize_t n = ::recv(fd, buffer, sizeof buffer, MSG_DONTWAIT);
            if (n > 0) {
                r.text.append(buffer, static_cast<size_t>(n));
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
            r.ended = true;
            r.eof = n == 0;
            return;
        }
    }

    static bool json_error(const std::string& reply) {
        const size_t end = reply.find("\r\n\r\n");
        if (end == std::string::npos) return false;
        const Json body = Json::parse(reply.substr(end + 4), nullptr, false);
        return body.is_object() && body["error"].is_string();
    }

    std::vector<int> fds_;
    std::vector<Reply> replies_;
};

// Polls `condition` until it holds or a generous deadline passes.
bool wait_until(const std::function<bool()>& condition) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!condition()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return true;
}

}  // namespace

TEST_CASE("server: 500 stalled TCP clients lock out neither the unix socket nor a prompt client") {
    TempDir dir;
    const std::string path = dir.path + "/admin.sock";
    FakeSource source = one_group();
    AdminServer server(source, both_options(path));
    server.start();
    const SocketAddress tcp = *server.tcp_address();
    StalledClients slow(slow_clients(500, [&] { return connect_tcp(tcp); }));

    CHECK(status_of(get(path, "/status")) == 200);
    // From the same address as the stalled ones: it takes the place of the oldest.
    const std::string reply = send_and_read(
        connect_tcp(tcp), "GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    CHECK(status_of(reply) == 200);

    // Those that lost their place were told so with a 503 and a JSON error, and
    // none was reset; the rest still wait.
    SlowOutcome seen;
    CHECK(wait_until([&]() -> bool {
        seen = slow.outcome();
        return seen.other > 0 || seen.waiting <= kPerSource;
    }));
    CHECK(seen.other == 0);
    CHECK(seen.busy > 0);
}

TEST_CASE("server: 500 stalled unix clients lock out neither TCP nor a prompt unix client") {
    TempDir dir;
    const std::string path = dir.path + "/admin.sock";
    FakeSource source = one_group();
    AdminServer server(source, both_options(path));
    server.start();
    const SocketAddress tcp = *server.tcp_address();
    StalledClients slow(slow_clients(500, [&] { return connect_unix(path); }));

    const std::string reply = send_and_read(
        connect_tcp(tcp), "GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    CHECK(status_of(reply) == 200);
    CHECK(status_of(get(path, "/status")) == 200);
    SlowOutcome seen;
    CHECK(wait_until([&]() -> bool {
        seen = slow.outcome();
        return seen.other > 0 || seen.waiting <= kPerListener;
    }));
    CHECK(seen.other == 0);
    CHECK(seen.busy > 0);
}

namespace {

// 127.0.0.1 port 0: the kernel picks a free port when the server binds.
SocketAddress loopback_any_port() {
    sockaddr_in any{};
    any.sin_family = AF_INET;
    any.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return SocketAddress::from_sockaddr(reinterpret_cast<sockaddr*>(&any), sizeof any);
}

std::string tcp_request(const SocketAddress& address, const std::string& method,
                        const std::string& target) {
    return send_and_read(connect_tcp(address), method + " " + target +
                                                   " HTTP/1.1\r\nHost: x\r\nConnection: "
                                                   "close\r\n\r\n");
}

}  // namespace

TEST_CASE("server: the metrics address serves read-only, the other doors stay full") {
    TempDir dir;
    const std::string path = dir.path + "/admin.sock";
    FakeSource source = one_group();
    AdminOptions options = unix_options(path);
    options.tcp = loopback_any_port();
    options.metrics = loopback_any_port();
    AdminServer server(source, options);
    server.start();
    REQUIRE(server.metrics_address());
    const SocketAddress metrics = *server.metrics_address();
    CHECK(metrics.port() != server.tcp_address()->port());

    const std::string scrape = tcp_request(metrics, "GET", "/metrics");
    CHECK(status_of(scrape) == 200);
    CHECK(scrape.find("Content-Type: text/plain; version=0.0.4") != std::string::npos);
    CHECK(body_of(scrape).find("stickyd_group_failing_open{group=\"web\"} 0") != std::string::npos);
    CHECK(status_of(tcp_request(metrics, "GET", "/status")) == 200);
    CHECK(status_of(tcp_request(metrics, "GET", "/ready")) == 200);
    const std::string drain = tcp_request(metrics, "POST", "/targets/a/drain");
    CHECK(status_of(drain) == 403);
    CHECK(Json::parse(body_of(drain))["error"].get<std::string>().starts_with(
        "POST /targets/a/drain is not served on the metrics address"));
    CHECK(status_of(tcp_request(metrics, "POST", "/metrics")) == 405);
    CHECK(source.changes.load() == 0);

    // The admin address and the unix socket still drain.
    CHECK(status_of(tcp_request(*server.tcp_address(), "POST", "/targets/a/drain")) == 200);
    CHECK(source.changes.load() == 1);
    CHECK(status_of(send_and_read(connect_unix(path),
                                  "POST /targets/a/enable HTTP/1.1\r\nHost: x\r\n\r\n")) == 200);
    CHECK(source.changes.load() == 2);
}

TEST_CASE("server: 500 stalled metrics clients lock out neither admin door, from the same IP") {
    TempDir dir;
    const std::string path = dir.path + "/admin.sock";
    FakeSource source = one_group();
    AdminOptions options = unix_options(path);
    options.tcp = loopback_any_port();
    options.metrics = loopback_any_port();
    AdminServer server(source, options);
    server.start();
    const SocketAddress metrics = *server.metrics_address();
    StalledClients slow(slow_clients(500, [&] { return connect_tcp(metrics); }));

    CHECK(status_of(get(path, "/status")) == 200);
    // 127.0.0.1 has used up its budget on the metrics address, not on the admin one.
    CHECK(status_of(tcp_request(*server.tcp_address(), "GET", "/status")) == 200);
    CHECK(status_of(tcp_request(metrics, "GET", "/metrics")) == 200);
    SlowOutcome seen;
    CHECK(wait_until([&]() -> bool {
        seen = slow.outcome();
        return seen.other > 0 || seen.waiting <= kPerSource;
    }));
    CHECK(seen.other == 0);
    CHECK(seen.busy > 0);
}

TEST_CASE("server: also on TCP loopback, and without a unix socket when the path is empty") {
    FakeSource source = one_group();
    AdminOptions options;
    options.tcp = free_loopback_address();
    AdminServer server(source, options);
    server.start();
    REQUIRE(server.tcp_address());
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(::connect(fd, server.tcp_address()->sa(), server.tcp_address()->len()) == 0);
    const std::string reply =
        send_and_read(fd, "GET /ring HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    CHECK(status_of(reply) == 200);
    CHECK(Json::parse(body_of(reply))["group"] == "web");

    AdminServer taken(source, options);
    CHECK_THROWS_AS(taken.start(), std::runtime_error);
}
