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

// Every string was checked on the way in; replacing is the backstop for one that
// was not (a name from a config or DNS), so rendering never throws.
std::string dump(const Json& document, int indent) {
    return document.dump(indent, ' ', false, Json::error_handler_t::replace);
}

AdminReply json_reply(const Json& document) {
    AdminReply reply;
    reply.body = dump(document, 2) + "\n";
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

// A ring or a lookup needs a table with members: a static group listing none, or a
// DNS name that resolves to nothing, has neither to show.
ChosenGroup usable_group(const GroupView& g) {
    // An empty group's table has no balancer (the control thread's) or an empty one
    // (build_routing_table's): either way, nothing to show.
    const bool empty = g.table ? g.table->targets.empty() : g.targets.empty();
    if (empty || (g.table && g.table->balancer && g.table->balancer->members().empty())) {
        return {nullptr, error_reply(503, fmt::format("group {} has no targets", g.name))};
    }
    if (!g.table || !g.table->balancer) {
        return {nullptr, error_reply(503, fmt::format("target group \"{}\" has no routing table "
                                                      "yet",
                                                      g.name))};
    }
    return {&g, {}};
}

ChosenGroup choose(const AdminRequest& request, const ControlView& view) {
    const std::optional<std::string> name = query_value(request, "group");
    if (!name) {
        if (view.groups.size() == 1) return usable_group(view.groups.front());
        return {nullptr, error_reply(400, fmt::format("several target groups ({}): add ?group=NAME",
                                                      group_names(view)))};
    }
    for (const GroupView& g : view.groups) {
        if (g.name == *name) return usable_group(g);
    }
    return {nullptr, error_reply(404, fmt::format("unknown target group \"{}\" (groups: {})", *name,
                                                  group_names(view)))};
}

AdminState gather(AdminSource& source) {
    AdminState state;
    state.control = source.view();
    for (const ListenerInfo& l : source.listeners()) {
        ListenerCounters c{l.name, l.bind, l.target_group, 0, 0, 0, 0, 0};
        if (l.stats) {
            c.accepted = l.stats->accepted.load(std::memory_order_relaxed);
            c.proxy_header_errors = l.stats->proxy_header_errors.load(std::memory_order_relaxed);
            c.no_target = l.stats->no_target.load(std::memory_order_relaxed);
            c.refused_denied = l.stats->refused_denied.load(std::memory_order_relaxed);
            c.refused_not_allowed = l.stats->refused_not_allowed.load(std::memory_order_relaxed);
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
    return error_reply(503, result.message);  // not reached: every result is handled above
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
    reply.body = dump(Json{{"error", message}}, -1) + "\n";
    return reply;
}

bool valid_utf8(std::string_view s) {
    size_t i = 0;
    while (i < s.size()) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x80) {
            ++i;
            continue;
        }
        // Length and the range of the second byte, which excludes overlongs,
        // surrogates and code points above U+10FFFF (RFC 3629, section 4).
        size_t len = 0;
        unsigned char lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) {
            len = 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            if (c == 0xe0) lo = 0xa0;
            if (c == 0xed) hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            if (c == 0xf0) lo = 0x90;
            if (c == 0xf4) hi = 0x8f;
        } else {
            return false;
        }
        if (s.size() - i < len) return false;
        for (size_t k = 1; k < len; ++k) {
            const auto b = static_cast<unsigned char>(s[i + k]);
            if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xbf)) return false;
        }
        i += len;
    }
    return true;
}

namespace {

std::optional<AdminReply> invalid_utf8(const AdminRequest& request) {
    auto bad = [](std::string_view what) {
        return error_reply(400, fmt::format("{} is not valid UTF-8", what));
    };
    if (!valid_utf8(request.method)) return bad("request method");
    if (!valid_utf8(request.path)) return bad("request path");
    for (const auto& [key, value] : request.query) {
        if (!valid_utf8(key)) return bad("a query parameter name");
        if (!valid_utf8(value)) return bad(fmt::format("query parameter {}", key));
    }
    return std::nullopt;
}

}  // namespace

AdminReply handle_admin_request(const AdminRequest& request, AdminSource& source) {
    if (std::optional<AdminReply> bad = invalid_utf8(request)) return *bad;
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
                if (!valid_utf8(*id)) {
                    return error_reply(400,
                                       fmt::format("target id in {} is not valid UTF-8", path));
                }
                return change(request, source, *id, action == "drain");
            }
        }
    }
    return error_reply(404, fmt::format("no such endpoint: {} {} (endpoints: {})", request.method,
                                        path, kEndpoints));
}

}  // namespace stickyd
