#include "admin/api.hpp"

#include <dirent.h>
#include <fmt/core.h>
#include <sys/resource.h>

#include <optional>
#include <variant>

#include "stickyd/words.hpp"

namespace stickyd {
namespace {

constexpr std::string_view kEndpoints =
    "GET /status, GET /ring, GET /lookup, GET /metrics, GET /ready, POST /targets, "
    "DELETE /targets/ID, POST /targets/ID/drain, POST /targets/ID/enable";

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

// Everything but the control thread's view, which stays empty.
AdminState gather_without_control(AdminSource& source) {
    AdminState state;
    state.control = std::make_shared<const ControlView>();
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

AdminState gather(AdminSource& source) {
    // The view first: a failed control thread throws before anything is counted.
    std::shared_ptr<const ControlView> control = source.view();
    AdminState state = gather_without_control(source);
    state.control = std::move(control);
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

AdminReply change_reply(const AdminChange& result) {
    switch (result.result) {
        case AdminChange::Result::ok:
            return json_reply(Json{{"result", "ok"}, {"message", result.message}});
        case AdminChange::Result::unknown_group:
        case AdminChange::Result::unknown_target:
            return error_reply(404, result.message);
        case AdminChange::Result::ambiguous:
        case AdminChange::Result::conflict:
            return error_reply(409, result.message);
        case AdminChange::Result::invalid:
            return error_reply(400, result.message);
        case AdminChange::Result::over_capacity:
            return error_reply(422, result.message);
    }
    return error_reply(503, result.message);  // not reached: every result is handled above
}

AdminReply change(const AdminRequest& request, AdminSource& source, const std::string& id,
                  bool drain) {
    const std::string group = query_value(request, "group").value_or("");
    return change_reply(drain ? source.drain(group, id) : source.enable(group, id));
}

// ---------------------------------------------------------------------------
// POST /targets: the body, read with the configuration's own rules and words.

constexpr std::string_view kRegistrationKeys[] = {"id", "address", "weight", "group"};
constexpr std::string_view kRegistrationExample =
    R"({"id": "web-4", "address": "10.0.0.14:8080", "weight": 1, "group": "web"})";

// A JSON value as a message shows it: short, and always one line.
std::string shown(const Json& value) {
    std::string text = dump(value, -1);
    constexpr size_t kMax = 64;
    if (text.size() > kMax) text = text.substr(0, kMax) + "...";
    return text;
}

struct RegistrationRequest {
    std::string group;
    Registration target;
};

std::optional<std::string> string_field(const Json& body, std::string_view key, std::string& out) {
    auto it = body.find(key);
    if (it == body.end()) return std::nullopt;
    if (!it->is_string()) return fmt::format("{}: expected a string, got {}", key, shown(*it));
    out = it->get<std::string>();
    return std::nullopt;
}

std::variant<RegistrationRequest, AdminReply> read_registration(std::string_view text) {
    auto bad = [](std::string message) { return error_reply(400, message); };
    if (text.find_first_not_of(" \t\r\n") == std::string_view::npos) {
        return bad(fmt::format("POST /targets needs a JSON body such as {}", kRegistrationExample));
    }
    Json body;
    try {
        body = Json::parse(text);
    } catch (const Json::exception& e) {
        // "[json.exception.parse_error.101] parse error at line 1, ...": the tag says
        // nothing to a user.
        std::string what = e.what();
        if (const size_t tag = what.find("] "); what.starts_with("[json.") && tag != what.npos) {
            what.erase(0, tag + 2);
        }
        return bad("invalid JSON body: " + what);
    }
    if (!body.is_object()) {
        return bad(fmt::format("the body must be a JSON object such as {}, got {}",
                               kRegistrationExample, shown(body)));
    }
    for (const auto& [key, value] : body.items()) {
        if (std::find(std::begin(kRegistrationKeys), std::end(kRegistrationKeys), key) !=
            std::end(kRegistrationKeys)) {
            continue;
        }
        const auto match = closest_match(key, kRegistrationKeys);
        return bad(fmt::format("unknown key {:?}{}; a target has id, address, weight and group",
                               key, match ? fmt::format(" (did you mean {:?}?)", *match) : ""));
    }
    RegistrationRequest out;
    std::string address;
    for (auto [key, field] : {std::pair<std::string_view, std::string*>{"address", &address},
                              {"id", &out.target.id},
                              {"group", &out.group}}) {
        if (auto problem = string_field(body, key, *field)) return bad(*problem);
    }
    if (!body.contains("address")) {
        return bad(
            fmt::format("address: missing; a target needs one, as in {}", kRegistrationExample));
    }
    if (auto problem = target_address_error(address)) return bad("address: " + *problem);
    out.target.address = *SocketAddress::parse(address);
    // As in the file, the id defaults to the address.
    if (!body.contains("id")) out.target.id = out.target.address.to_string();
    if (auto problem = target_id_error(out.target.id)) return bad("id: " + *problem);
    if (body.contains("group") && out.group.empty()) {
        return bad("group: must name a target group, got \"\"");
    }
    if (auto it = body.find("weight"); it != body.end()) {
        const bool integer =
            it->is_number_integer() &&
            (!it->is_number_unsigned() || it->get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX));
        if (!integer) return bad("weight: " + weight_range_message(shown(*it)));
        const int64_t weight = it->get<int64_t>();
        if (auto problem = target_weight_error(weight)) return bad("weight: " + *problem);
        out.target.weight = static_cast<uint32_t>(weight);
    }
    return out;
}

AdminReply register_target(const AdminRequest& request, AdminSource& source) {
    auto read = read_registration(request.body);
    if (auto* error = std::get_if<AdminReply>(&read)) return *error;
    auto& registration = std::get<RegistrationRequest>(read);
    // The group may be named in the query too, as for every other endpoint.
    if (auto group = query_value(request, "group")) {
        if (!registration.group.empty() && registration.group != *group) {
            return error_reply(400, fmt::format("group: the body names \"{}\", the query \"{}\"",
                                                registration.group, *group));
        }
        registration.group = *group;
    }
    return change_reply(source.register_target(registration.group, registration.target));
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

namespace {

constexpr std::string_view kReadOnlyEndpoints = "GET /metrics, GET /status, GET /ready";

// /ring and /lookup are read-only too, but they are for operators and cost a walk
// over the whole balancer; a scrape or a probe needs neither.
bool served_read_only(std::string_view path) {
    return path == "/metrics" || path == "/status" || path == "/ready";
}

bool admin_only(std::string_view path) {
    return path == "/ring" || path == "/lookup" || path == "/targets" ||
           path.starts_with("/targets/");
}

}  // namespace

namespace {

// The workers' and listeners' series still count while the control thread is gone;
// a scrape that stopped answering would hide them too. Its groups' series are left
// out: /ready, /status and the log say why.
AdminState gather_for_metrics(AdminSource& source) {
    try {
        return gather(source);
    } catch (const ControlFailed&) {
        AdminState state = gather_without_control(source);
        state.control_up = false;
        return state;
    }
}

AdminReply route(const AdminRequest& request, AdminSource& source, AdminAccess access) {
    if (std::optional<AdminReply> bad = invalid_utf8(request)) return *bad;
    const std::string& path = request.path;
    if (access == AdminAccess::read_only && !served_read_only(path)) {
        if (admin_only(path)) {
            return error_reply(403, fmt::format("{} {} is not served on the metrics address, "
                                                "which is read-only ({}); use the admin socket",
                                                request.method, path, kReadOnlyEndpoints));
        }
        return error_reply(404, fmt::format("no such endpoint: {} {} (the metrics address serves "
                                            "{})",
                                            request.method, path, kReadOnlyEndpoints));
    }
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
        reply.body = metrics_text(gather_for_metrics(source));
        return reply;
    }
    if (path == "/targets") {
        if (request.method != "POST") return wrong_method("POST", request);
        return register_target(request, source);
    }
    // /targets/ID, /targets/ID/drain and /targets/ID/enable; ID is one
    // percent-encoded segment.
    constexpr std::string_view kTargets = "/targets/";
    if (path.starts_with(kTargets)) {
        const std::string_view rest = std::string_view(path).substr(kTargets.size());
        const size_t slash = rest.find('/');
        if (slash == std::string_view::npos && !rest.empty()) {
            if (request.method != "DELETE") return wrong_method("DELETE", request);
            const std::optional<std::string> id = percent_decode(rest);
            if (!id) return error_reply(400, fmt::format("bad percent-encoding in {}", path));
            if (!valid_utf8(*id)) {
                return error_reply(400, fmt::format("target id in {} is not valid UTF-8", path));
            }
            const std::string group = query_value(request, "group").value_or("");
            return change_reply(source.deregister_target(group, *id));
        }
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

}  // namespace

AdminReply handle_admin_request(const AdminRequest& request, AdminSource& source,
                                AdminAccess access) {
    try {
        return route(request, source, access);
    } catch (const ControlFailed& e) {
        // Nothing a client can fix, and not a fault of the endpoint: this instance
        // is out of service for changes until it is restarted.
        return error_reply(503, e.what());
    }
}

}  // namespace stickyd
