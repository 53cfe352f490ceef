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

struct WorkerListener {
    int fd;  // owned by the worker from construction on
    std::string name;
    RouteSlot* route;
};

struct WorkerOptions {
    uint32_t buffer_size = 16 * 1024;  // provided-buffer size
    uint32_t buffer_count = 4096;      // per worker, power of 2
    uint32_t max_connections = 65536;  // per worker
    // When nonzero, the loop wakes at least this often even when idle, so that
    // WorkerStats::heartbeat proves to the systemd watchdog that it still turns.
    std::chrono::milliseconds heartbeat{0};
};

struct WorkerStats {
    std::atomic<uint64_t> accepted{0}, active{0}, connect_failures{0}, retries{0}, bytes_in{0},
        bytes_out{0};
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
    // Thread-safe: a routing snapshot that asks for connection resets was
    // published; the worker compares each listener's snapshot with the last one
    // it saw and resets its connections to targets that turned unhealthy.
    void routes_changed();
    const WorkerStats& stats() const { return stats_; }

  private:
    struct Loop;
    WorkerStats stats_;
    std::unique_ptr<Loop> loop_;
};

}  // namespace stickyd
