// libFuzzer target for the admin endpoint's request handling: raw bytes as a client
// sends them (request line, headers, body) go through the server's own framing,
// parsing, routing and rendering (respond(), src/admin_http.hpp) against a fixed
// fake daemon, whose groups include one without targets. Memory safety is checked
// by the sanitizers; here, that every answer is one well-formed HTTP/1.1 response,
// never a 500, with a body that is the JSON (or Prometheus text) it says it is, and
// that nothing read-only access (the metrics address) lets through drains or enables.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "admin/http.hpp"
#include "stickyd/routing.hpp"

using namespace stickyd;

namespace {

void require(bool condition, const char* what, std::string_view response = {}) {
    if (condition) return;
    std::fprintf(stderr, "property violated: %s\n%.*s\n", what, static_cast<int>(response.size()),
                 response.data());
    std::abort();
}

TargetConfig target(const char* id, const char* address, uint32_t weight = 1) {
    return {id, *SocketAddress::parse(address), weight};
}

TargetGroupConfig group(const char* name, std::vector<TargetConfig> targets,
                        Algorithm algorithm = Algorithm::ring) {
    TargetGroupConfig g;
    g.name = name;
    g.algorithm = algorithm;
    g.maglev_table_size = 1031;  // small: a maglev answer stays cheap per input
    g.targets = std::move(targets);
    return g;
}

GroupView view_of(const TargetGroupConfig& config) {
    GroupView g;
    g.name = config.name;
    g.algorithm = config.algorithm;
    g.table = build_routing_table(config);
    for (size_t i = 0; i < g.table->targets.size(); ++i) {
        TargetView t;
        t.id = g.table->targets[i].id;
        t.address = g.table->targets[i].address;
        t.weight = g.table->balancer->members()[i].weight;
        t.state = i == 0 ? HealthState::unhealthy : HealthState::healthy;
        t.usable = i != 0;
        t.stats = g.table->targets[i].stats;
        g.targets.push_back(std::move(t));
    }
    return g;
}

// A daemon that never changes: drain and enable answer as the control thread would
// (echoing the id back, as its messages do) without changing anything.
class FixedSource final : public AdminSource {
  public:
    FixedSource() {
        auto view = std::make_shared<ControlView>();
        for (const TargetGroupConfig& config :
             {group("web", {target("a", "127.0.0.1:9001"), target("b", "127.0.0.1:9002", 2),
                            target("[::1]:9003", "[::1]:9003")}),
              group("mg", {target("m1", "127.0.0.1:9101"), target("m2", "127.0.0.1:9102")},
                    Algorithm::maglev),
              group("empty", {})}) {
            view->groups.push_back(view_of(config));
        }
        view_ = std::move(view);
        stats_ = std::make_shared<ListenerStats>();
    }

    std::shared_ptr<const ControlView> view() override { return view_; }
    AdminChange drain(const std::string& group, const std::string& id) override {
        ++changes;
        return change(group, id, "drained");
    }
    AdminChange enable(const std::string& group, const std::string& id) override {
        ++changes;
        return change(group, id, "enabled");
    }
    AdminChange register_target(const std::string& group, const Registration& target) override {
        ++changes;
        return {AdminChange::Result::ok, "registered " + target.id + " in '" + group + "'"};
    }
    AdminChange deregister_target(const std::string& group, const std::string& id) override {
        ++changes;
        return change(group, id, "deregistered");
    }
    // drain, enable, register and deregister calls: the metrics address makes none
    uint64_t changes = 0;
    std::vector<ListenerInfo> listeners() override {
        return {{"front", "127.0.0.1:8000", "web", stats_},
                {"none", "127.0.0.1:8001", "empty", {}}};
    }
    DaemonTotals totals() override { return {1, 2, 3, 4, 5, 6}; }
    uint32_t maglev_table_size(const std::string& group) override {
        return group == "mg" ? 1031 : 0;
    }
    ProcessFds process_fds() override { return {10, 1024}; }

  private:
    AdminChange change(const std::string& group, const std::string& id, const char* what) {
        for (const GroupView& g : view_->groups) {
            if (!group.empty() && g.name != group) continue;
            for (const TargetView& t : g.targets) {
                if (t.id == id) return {AdminChange::Result::ok, std::string(what) + " " + id};
            }
        }
        if (!group.empty() && group != "web" && group != "mg" && group != "empty") {
            return {AdminChange::Result::unknown_group, "no target group '" + group + "'"};
        }
        return {AdminChange::Result::unknown_target, "no target '" + id + "' in any target group"};
    }

    std::shared_ptr<const ControlView> view_;
    std::shared_ptr<ListenerStats> stats_;
};

std::string_view header_value(std::string_view head, std::string_view name) {
    const size_t at = head.find(std::string("\r\n") + std::string(name) + ": ");
    if (at == std::string_view::npos) return {};
    const size_t start = at + 2 + name.size() + 2;
    return head.substr(start, head.find("\r\n", start) - start);
}

// HEAD answers a routed request without its body; `may_omit` when the request was one.
void check_response(std::string_view response, bool may_omit) {
    require(response.starts_with("HTTP/1.1 "), "status line", response);
    const int status = std::atoi(std::string(response.substr(9, 3)).c_str());
    require(status >= 200 && status < 600, "status code", response);
    require(status != 500, "a 500", response);
    const size_t end = response.find("\r\n\r\n");
    require(end != std::string_view::npos, "end of the head", response);
    const std::string_view head = response.substr(0, end + 2);
    const std::string_view body = response.substr(end + 4);
    const std::string_view length = header_value(head, "Content-Length");
    require(!length.empty(), "Content-Length", response);
    const size_t declared = std::strtoull(std::string(length).c_str(), nullptr, 10);
    require(body.size() == declared || (may_omit && body.empty()), "body length", response);
    require(header_value(head, "Connection") == "close", "Connection: close", response);
    const std::string_view type = header_value(head, "Content-Type");
    if (body.empty() && may_omit) return;
    require(valid_utf8(body), "body is UTF-8", response);
    if (type == "application/json") {
        const Json parsed = Json::parse(body, nullptr, false);
        require(!parsed.is_discarded(), "JSON body", response);
        if (status >= 400) require(parsed["error"].is_string(), "error message", response);
    } else {
        require(type == kMetricsContentType && status == 200, "content type", response);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static FixedSource source;
    const HttpLimits limits;
    // An exact-size heap copy, so ASan sees any read past the end.
    const std::string input(reinterpret_cast<const char*>(data), size);
    for (AdminAccess access : {AdminAccess::full, AdminAccess::read_only}) {
        for (bool eof : {false, true}) {
            const uint64_t changes = source.changes;
            const std::optional<std::string> response = respond(input, eof, source, limits, access);
            if (access == AdminAccess::read_only) {
                require(source.changes == changes, "a change through the metrics address");
            }
            if (!response) {
                require(!eof || input.empty(), "no answer at EOF");
                continue;
            }
            check_response(*response, input.starts_with("HEAD "));
        }
    }
    return 0;
}
