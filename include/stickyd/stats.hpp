// The data path's counters, written by the workers with relaxed atomics and read by
// the admin endpoint. Plain data in the core, so the renderers and the router need
// not include the workers.
#pragma once

#include <atomic>
#include <cstdint>

namespace stickyd {

// Counters of one configured listener, shared by its sockets in every worker.
struct ListenerStats {
    std::atomic<uint64_t> accepted{0};
    std::atomic<uint64_t> proxy_header_errors{0};  // accept_proxy_protocol: bad or missing
    std::atomic<uint64_t> no_target{0};            // closed: the group had no target to route to
    // Reset by the listener's allow and deny lists (SourceVerdict), before routing.
    std::atomic<uint64_t> refused_denied{0};
    std::atomic<uint64_t> refused_not_allowed{0};
};

// One worker's counters.
struct WorkerStats {
    std::atomic<uint64_t> accepted{0}, active{0}, connect_failures{0}, retries{0}, bytes_in{0},
        bytes_out{0};
    std::atomic<uint64_t> idle_timeouts{0};  // connections reset for the listener's idle_timeout
    // preserve_client_ip connects that went out from stickyd's own address instead
    // (the client's and the target's IP versions differ, or the bind was refused).
    std::atomic<uint64_t> client_ip_fallbacks{0};
    // Receives that found every buffer taken and wait (parked) for one to come back.
    std::atomic<uint64_t> buffer_waits{0};
    // Flows moved to splice because they kept their buffers full (bulk transfers).
    std::atomic<uint64_t> spliced_flows{0};
    // Receives parked on -ENOBUFS whose connection was closed (its slot possibly
    // reused) before a buffer came back: dropped by their generation, never re-armed.
    std::atomic<uint64_t> stale_waiters{0};
    // Completions for a slot that was freed or reused. Zero unless inflight
    // accounting is broken: a slot is only freed once nothing is in flight on it.
    std::atomic<uint64_t> stale_completions{0};
    // Bumped once per loop iteration: a counter that stops moving means a wedged loop.
    std::atomic<uint64_t> heartbeat{0};
};

}  // namespace stickyd
