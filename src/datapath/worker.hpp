// One worker thread = one io_uring: accept, connect, relay, teardown.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "stickyd/config.hpp"
#include "stickyd/routing.hpp"
#include "stickyd/source_filter.hpp"
#include "stickyd/stats.hpp"

namespace stickyd {

// How a worker handles the clients of one listener: the listener as configured
// (its name, idle timeout, PROXY header and access log settings; bind and
// target_group are the daemon's business), plus what only exists at run time.
// Everything but the fd can change on a reload (update_listener).
struct ListenerSettings {
    ListenerConfig config;
    RouteSlot* route = nullptr;  // the slot of config.target_group
    std::shared_ptr<ListenerStats> stats;
    // config.allow and config.deny compiled; nullptr when both are empty, so a
    // listener without lists pays one pointer test per client.
    std::shared_ptr<const SourceFilter> sources;
};

struct WorkerListener {
    int fd;  // owned by the worker from construction (or add_listener) on
    ListenerSettings settings;
    // systemd's socket, duplicated for every worker: a worker that fails must not
    // shut it down (see Worker::run), or the other workers would stop accepting too.
    bool shared;
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
    // Pipes for flows moved to splice (connection.hpp), per worker; 0 turns splicing
    // off. Each costs two fds and is charged pipe_size against the user's pipe quota
    // (/proc/sys/fs/pipe-user-pages-soft, 64 MiB by default) while it exists.
    uint32_t max_pipes = 16;
    // Measured (docs/benchmarks.md, "Splice against recv/send"): through 1 MiB pipes
    // splice costs 20-26% less CPU per GiB than recv/send, through 64 KiB ones ~40% more.
    uint32_t pipe_size = 1 << 20;
    // When nonzero, the loop wakes at least this often even when idle, so that
    // WorkerStats::heartbeat proves to the systemd watchdog that it still turns.
    std::chrono::milliseconds heartbeat{0};
};

class Worker {
  public:
    // Sets up the ring; throws std::runtime_error with a clear one-line message on failure.
    Worker(unsigned index, std::vector<WorkerListener> listeners, WorkerOptions options);
    ~Worker();
    Worker(const Worker&) = delete;
    Worker& operator=(const Worker&) = delete;

    // The event loop; returns once stopped and all connections are gone. When the
    // loop fails (its io_uring refused to run, memory ran out), it throws after
    // resetting its connections and taking its own listeners out of their
    // SO_REUSEPORT groups, so that nothing waits on a loop that will not turn again.
    void run();
    // Thread-safe: stop accepting now, let open connections finish, RST whatever
    // remains after `grace`, then run() returns. A later call with a shorter
    // grace brings the deadline forward.
    void stop(std::chrono::milliseconds grace);
    // Thread-safe: connection termination for an unhealthy target, or the end of a
    // deregistration delay. Relaying connections to one of these targets are reset;
    // connections still connecting to one move on to their next target.
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
