// One worker thread = one io_uring: accept, connect, relay, teardown.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "stickyd/routing.hpp"

namespace stickyd {

// Counters of one configured listener, shared by its sockets in every worker.
struct ListenerStats {
    std::atomic<uint64_t> accepted{0};
    std::atomic<uint64_t> proxy_header_errors{0};  // accept_proxy_protocol: bad or missing
    std::atomic<uint64_t> no_target{0};            // closed: the group had no target to route to
};

// How a worker handles the clients of one listener. Everything but the fd can
// change on a reload (update_listener).
struct ListenerSettings {
    std::string name;
    RouteSlot* route = nullptr;
    std::chrono::milliseconds idle_timeout{350000};
    bool accept_proxy_protocol = false;
    std::chrono::milliseconds proxy_protocol_timeout{3000};
    bool access_log = false;  // one info line per finished connection
    std::shared_ptr<ListenerStats> stats;
};

struct WorkerListener {
    int fd;  // owned by the worker from construction (or add_listener) on
    ListenerSettings settings;
};

struct WorkerOptions {
    // Provided-buffer size. Measured on loopback (6.18, scripts/bench bulk): 32 KiB
    // costs ~10% less CPU per GiB than 16 KiB; 8 KiB ~30% more, 64 KiB about twice
    // as much. Idle connections hold none, so this only scales blocked flows.
    uint32_t buffer_size = 32 * 1024;
    uint32_t buffer_count = 4096;      // per worker, power of 2
    uint32_t max_connections = 65536;  // per worker
    // How far the pool may grow when every buffer is held by a blocked send; 0: one
    // buffer per direction per connection (within the 16-bit buffer ids). Tests set
    // it low to keep receives parked on -ENOBUFS.
    uint32_t max_buffers = 0;
    // When nonzero, the loop wakes at least this often even when idle, so that
    // WorkerStats::heartbeat proves to the systemd watchdog that it still turns.
    std::chrono::milliseconds heartbeat{0};
};

struct WorkerStats {
    std::atomic<uint64_t> accepted{0}, active{0}, connect_failures{0}, retries{0}, bytes_in{0},
        bytes_out{0};
    std::atomic<uint64_t> idle_timeouts{0};  // connections reset for the listener's idle_timeout
    // Receives that found every buffer taken and wait (parked) for one to come back.
    std::atomic<uint64_t> buffer_waits{0};
    // Receives parked on -ENOBUFS whose connection was closed (its slot possibly
    // reused) before a buffer came back: dropped by their generation, never re-armed.
    std::atomic<uint64_t> stale_waiters{0};
    // Completions for a slot that was freed or reused. Zero unless inflight
    // accounting is broken: a slot is only freed once nothing is in flight on it.
    std::atomic<uint64_t> stale_completions{0};
    // Bumped once per loop iteration: a counter that stops moving means a wedged loop.
    std::atomic<uint64_t> heartbeat{0};
};

class Worker {
  public:
    // Sets up the ring; throws std::runtime_error with a clear one-line message on failure.
    Worker(unsigned index, std::vector<WorkerListener> listeners, WorkerOptions options);
    ~Worker();
    Worker(const Worker&) = delete;
    Worker& operator=(const Worker&) = delete;

    // The event loop; returns once stopped and all connections are gone.
    void run();
    // Thread-safe: stop accepting now, let open connections finish, RST whatever
    // remains after `grace`, then run() returns. A later call with a shorter
    // grace brings the deadline forward.
    void stop(std::chrono::milliseconds grace);
    // Thread-safe: reset every open connection (connecting or relaying) to one of
    // these targets: connection termination for an unhealthy target, or the end of a
    // deregistration delay.
    void terminate(std::vector<std::shared_ptr<TargetStats>> targets);
    // Thread-safe reload of listeners. add: start accepting on a new socket.
    // update: new settings for the listener of that name (its socket stays open, so
    // no queued client is lost); connections already open keep the idle timeout they
    // started with. remove: stop accepting and close the socket; connections that
    // came through it continue.
    void add_listener(WorkerListener listener);
    void update_listener(ListenerSettings settings);
    void remove_listener(const std::string& name);
    const WorkerStats& stats() const { return stats_; }

  private:
    struct Loop;
    WorkerStats stats_;
    std::unique_ptr<Loop> loop_;
};

}  // namespace stickyd
