// The admin endpoint: HTTP/1.1 on a unix socket (and optionally TCP, and a read-only
// metrics address), served off the data path, built so that slow or hostile clients
// cannot lock the operator out:
//
// - One I/O thread polls every connection (non-blocking): it reads request heads,
//   writes answers and drains what clients still send. A connection that trickles
//   its head costs an fd and a buffer, never a thread.
// - Complete heads go to a small pool that only computes answers (from snapshots
//   and atomic counters; drain and enable wait for the control thread), taking the
//   unix socket's, the TCP address's and the metrics address's requests in turn.
// - The unix socket, the TCP address and the metrics address each have their own
//   connection budget, and each TCP one a budget per client IP. A connection beyond
//   a budget makes room by closing the one that has waited longest for its head,
//   with a 503; only when none is waiting for its head is the newcomer answered 503
//   itself.
// - Every answer, 503 and 408 included, is written in full, the write side shut and
//   what the client still sends drained before the close, so a client reads the
//   answer rather than a reset.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "admin/api.hpp"
#include "stickyd/address.hpp"

namespace stickyd {

struct AdminOptions {
    std::string unix_path;             // empty = no unix socket
    unsigned unix_mode = 0660;         // of the socket file
    std::optional<gid_t> unix_group;   // nullopt = the daemon's own
    std::optional<SocketAddress> tcp;  // nullopt = no TCP listener
    // Read-only (AdminAccess::read_only): /metrics, /status, /ready. nullopt = none.
    std::optional<SocketAddress> metrics;
    unsigned threads = 2;         // compute answers; never wait on a client
    size_t max_connections = 64;  // per listener, until answered; beyond: 503 (see above)
    size_t max_per_source = 8;    // per client IP on each TCP listener, until answered
    size_t max_closing = 256;     // answered, draining before the close; beyond: closed
    // The whole request head must arrive within this; each write must progress within it.
    std::chrono::milliseconds io_timeout{5000};
    // After the answer: how long what the client still sends is read and dropped.
    std::chrono::milliseconds linger{1000};
    size_t max_head = 16 * 1024;  // request line + headers; beyond: 431
    size_t max_body = 4 * 1024;   // POST /targets' JSON; beyond: 413
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
    std::optional<SocketAddress> metrics_address() const;

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace stickyd
