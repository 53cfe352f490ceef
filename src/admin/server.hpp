// The admin endpoint: HTTP/1.1 on a unix socket (and optionally TCP), served off
// the data path. One acceptor thread hands connections to a small fixed pool; every
// read and write has a deadline and every request a size cap, so a slow or hostile
// client holds at most one pool thread for a few seconds and never touches a
// worker. Requests are answered by handle_admin_request (src/admin_api.hpp) from
// snapshots and atomic counters only.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "admin/api.hpp"
#include "stickyd/address.hpp"

namespace stickyd {

struct AdminOptions {
    std::string unix_path;             // empty = no unix socket
    std::optional<SocketAddress> tcp;  // nullopt = no TCP listener
    unsigned threads = 4;
    size_t max_queued = 64;  // accepted connections waiting for a thread; beyond: 503
    // The whole request head must arrive within this; each write must progress within it.
    std::chrono::milliseconds io_timeout{5000};
    size_t max_head = 16 * 1024;  // request line + headers; beyond: 431
    size_t max_body = 4 * 1024;   // no endpoint takes a body; beyond: 413
};

class AdminServer {
  public:
    AdminServer(AdminSource& source, AdminOptions options);
    ~AdminServer();
    AdminServer(const AdminServer&) = delete;
    AdminServer& operator=(const AdminServer&) = delete;

    // Binds everything, then starts the threads. Throws std::runtime_error with one
    // line naming the socket and the problem (nothing is left bound then).
    void start();
    // Idempotent: stops accepting, finishes or drops what is queued, joins, and
    // removes the unix socket file (if it is still ours).
    void stop();

    // The TCP address actually bound (port 0 in the options picks one).
    std::optional<SocketAddress> tcp_address() const;

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace stickyd
