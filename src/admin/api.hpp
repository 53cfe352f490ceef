// What the admin endpoint answers, independent of how requests arrive: the
// AdminSource interface the daemon implements (snapshots and counters only, never a
// lock a worker takes), and the request router that turns one parsed request into
// one reply. src/admin.cpp carries requests to it over HTTP; the tests call it
// directly and through a real socket.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "admin/render.hpp"
#include "stickyd/control_view.hpp"
#include "stickyd/stats.hpp"

namespace stickyd {

struct ListenerInfo {
    std::string name;
    std::string bind;
    std::string target_group;
    std::shared_ptr<const ListenerStats> stats;
};

// Called from admin threads, concurrently: every method must be thread-safe.
class AdminSource {
  public:
    virtual ~AdminSource() = default;
    virtual std::shared_ptr<const ControlView> view() = 0;
    // group may be empty when the id is unique across groups.
    virtual AdminChange drain(const std::string& group, const std::string& id) = 0;
    virtual AdminChange enable(const std::string& group, const std::string& id) = 0;
    // Runtime registration (POST /targets, DELETE /targets/ID): group may be empty
    // when there is one group (register) or the id is unique (deregister).
    virtual AdminChange register_target(const std::string& group, const Registration& target) = 0;
    virtual AdminChange deregister_target(const std::string& group, const std::string& id) = 0;
    virtual std::vector<ListenerInfo> listeners() = 0;
    virtual DaemonTotals totals() = 0;
    // A maglev group's table size, for its entry counts in /ring; 0 = unknown.
    virtual uint32_t maglev_table_size(const std::string& /*group*/) { return 0; }
    // GET /ready: false from the moment a stop begins (shutdown_delay, then drain).
    virtual bool ready() { return true; }
    // This process's fd usage (/proc/self/fd and RLIMIT_NOFILE).
    virtual ProcessFds process_fds();
};

struct AdminRequest {
    std::string method;                             // "GET", "POST", ...
    std::string path;                               // percent-decoded, without the query
    std::multimap<std::string, std::string> query;  // decoded
    std::string body;                               // as received (Content-Length bytes)
};

struct AdminReply {
    int status = 200;
    std::string content_type = "application/json";
    std::string body;
    std::string allow;  // for 405: the methods the path takes
};

// Never throws: bytes that are not UTF-8 become U+FFFD in the JSON.
AdminReply error_reply(int status, std::string_view message);

// Whether `s` is well-formed UTF-8 (no overlongs, surrogates or code points above
// U+10FFFF), the only strings JSON may carry.
bool valid_utf8(std::string_view s);

// What a listener may ask. The metrics address is read-only: it has no
// authentication and may face a network, so nothing asked there reaches a mutation.
enum class AdminAccess : uint8_t {
    full,       // the unix socket and admin_address: every endpoint
    read_only,  // metrics_address: GET /metrics, /status and /ready only
};

// Rejects (400) a method, path or query that is not UTF-8, so that no request
// string reaches a JSON document. With read_only access, the other admin
// endpoints (drain, enable, /ring, /lookup) answer 403 and unknown paths 404,
// whatever the method.
AdminReply handle_admin_request(const AdminRequest& request, AdminSource& source,
                                AdminAccess access = AdminAccess::full);

}  // namespace stickyd
