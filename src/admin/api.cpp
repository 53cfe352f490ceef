#include "admin/api.hpp"

#include <dirent.h>
#include <fmt/core.h>
#include <sys/resource.h>

#include <optional>

namespace stickyd {
namespace {

constexpr std::string_view kEndpoints =
    "GET /status, GET /ring, GET /lookup, GET /metrics, GET /ready, POST /targets/ID/drain, "
    "POST /targets/ID/enable";

AdminReply json_reply(const Json& document) {
    AdminReply reply;
    reply.body = document.dump(2) + "\n";
    return reply;
}

std::optional<std::string> query_value(const AdminRequest& request, const std::string& key) {
    auto it = request.query.find(key);
    if (it == request.query.end()) return std::nullopt;
    return it->second;
}

std::string group_names(const ControlView& view) {
    std::string out;
    for (const GroupView& g : view.groups) out += (out.empty() ? "" : ", ") + g.name;
    return out;
}

// The group named by ?group=, or the only one; otherwise the error reply.
struct ChosenGroup {
    const GroupView* group = nullptr;
    AdminReply error;
};

ChosenGroup choose(const AdminRequest& request, const ControlView& view) {
    const std::optional<std::string> name = query_value(request, "group");
    if (!name) {
        if (view.groups.size() == 1) return {&view.groups.front(), {}};
        return {nullptr, error_reply(400, fmt::format("several target groups ({}): add ?group=NAME",
                                                      group_names(view)))};
    }
    for (const GroupView& g : view.groups) {
        if (g.name == *name) {
            if (!g.table || !g.table->balancer) {
                return {nullptr,
                        error_reply(503, fmt::format("target group \"{}\" has no routing table "
                                                     "yet",
                                                     *name))};
            }
            return {&g, {}};
        }
    }
    return {nullptr, error_reply(404, fmt::format("unknown target group \"{}\" (groups: {})", *name,
                                                  group_names(view)))};
}

AdminState gather(AdminSource& source) {
    AdminState state;
    state.control = source.view();
    for (const ListenerInfo& l : source.listeners()) {
        ListenerCounters c{l.name, l.bind, l.target_group, 0, 0};
        if (l.stats) {
            c.accepted = l.stats->accepted.load(std::memory_order_relaxed);
            c.proxy_header_errors = l.stats->proxy_header_errors.load(std::memory_order_relaxed);
        }
        state.listeners.push_back(std::move(c));
    }
    state.totals = source.totals();
    state.fds = source.process_fds();
    return state;
}

AdminReply ring(const AdminRequest& request, AdminSource& source) {
    const auto view = source.view();
    ChosenGroup chosen = choose(request, *view);
    if (!chosen.group) return chosen.error;
    return json_reply(
        ring_document(*chosen.group->table, source.maglev_table_size(chosen.group->name)));
}

AdminReply lookup(const AdminRequest& request, AdminSource& source) {
    auto [first, last] = request.query.equal_range("ip");
    if (first == last) return error_reply(400, "lookup needs ?ip=ADDR (repeatable)");
    const auto view = source.view();
    ChosenGroup chosen = choose(request, *view);
    if (!chosen.group) return chosen.error;
    // One snapshot answers every IP, so a multi-IP answer is consistent.
    const RoutingTable& table = *chosen.group->table;
    std::vector<LookupAnswer> answers;
    for (auto it = first; it != last; ++it) {
        std::optional<LookupAnswer> answer =
            explain_lookup(table, chosen.group->targets, it->second, chosen.group->failing_open);
        if (!answer) {
            return error_reply(400, fmt::format("\"{}\" is not an IP address (expected e.g. "
                                                "192.0.2.1 or 2001:db8::1)",
                                                it->second));
        }
        answers.push_back(std::move(*answer));
    }
    return json_reply(lookup_document(table, answers, chosen.group->failing_open));
}

AdminReply change(const AdminRequest& request, AdminSource& source, const std::string& id,
                  bool drain) {
    const std::string group = query_value(request, "group").value_or("");
    const AdminChange result = drain ? source.drain(group, id) : source.enable(group, id);
    switch (result.result) {
        case AdminChange::Result::ok:
            return json_reply(Json{{"result", "ok"}, {"message", result.message}});
        case AdminChange::Result::unknown_group:
        case AdminChange::Result::unknown_target:
            return error_reply(404, result.message);
        case AdminChange::Result::ambiguous:
            return error_reply(409, result.message);
    }
    return error_reply(500, result.message);
}

int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

std::optional<std::string> percent_decode(std::string_view s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] != '%') {
            out += s[i];
            continue;
        }
        if (i + 2 >= s.size()) return std::nullopt;
        const int hi = hex_digit(s[i + 1]), lo = hex_digit(s[i + 2]);
        if (hi < 0 || lo < 0) return std::nullopt;
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
    }
    return out;
}

AdminReply wrong_method(std::string_view allow, const AdminRequest& request) {
    AdminReply reply = error_reply(
        405, fmt::format("{} takes {} only, not {}", request.path, allow, request.method));
    reply.allow = std::string(allow);
    return reply;
}

// A readiness probe reads the status code; the body is for people and scripts.
AdminReply ready_reply(bool ready) {
    AdminReply reply = json_reply(Json{{"ready", ready}});
    if (!ready) reply.status = 503;
    return reply;
}

}  // namespace

ProcessFds AdminSource::process_fds() {
    ProcessFds fds;
    if (DIR* dir = opendir("/proc/self/fd")) {
        while (dirent* entry = readdir(dir)) {
            if (entry->d_name[0] != '.') ++fds.open;
        }
        closedir(dir);
        if (fds.open > 0) --fds.open;  // the directory stream's own fd
    }
    rlimit limit{};
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0) fds.max = limit.rlim_cur;
    return fds;
}

AdminReply error_reply(int status, std::string_view message) {
    AdminReply reply;
    reply.status = status;
    reply.body = Json{{"error", message}}.dump() + "\n";
    return reply;
}

AdminReply handle_admin_request(const AdminRequest& request, AdminSource& source) {
    const std::string& path = request.path;
    const bool get = request.method == "GET" || request.method == "HEAD";
    for (std::string_view endpoint : {"/status", "/ring", "/lookup", "/metrics", "/ready"}) {
        if (path == endpoint && !get) return wrong_method("GET", request);
    }
    if (path == "/status") return json_reply(status_document(gather(source)));
    if (path == "/ready") return ready_reply(source.ready());
    if (path == "/ring") return ring(request, source);
    if (path == "/lookup") return lookup(request, source);
    if (path == "/metrics") {
        AdminReply reply;
        reply.content_type = std::string(kMetricsContentType);
        reply.body = metrics_text(gather(source));
        return reply;
    }
    // /targets/ID/drain and /targets/ID/enable; ID is one percent-encoded segment.
    constexpr std::string_view kTargets = "/targets/";
    if (path.starts_with(kTargets)) {
        const std::string_view rest = std::string_view(path).substr(kTargets.size());
        const size_t slash = rest.find('/');
        if (slash != std::string_view::npos && slash > 0) {
            const std::string_view action = rest.substr(slash + 1);
            if (action == "drain" || action == "enable") {
                if (request.method != "POST") return wrong_method("POST", request);
                const std::optional<std::string> id = percent_decode(rest.substr(0, slash));
                if (!id) return error_reply(400, fmt::format("bad percent-encoding in {}", path));
                return change(request, source, *id, action == "drain");
            }
        }
    }
    return error_reply(404, fmt::format("no such endpoint: {} {} (endpoints: {})", request.method,
                                        path, kEndpoints));
}

}  // namespace stickyd
