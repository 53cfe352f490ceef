// The worker: one thread, one io_uring, every connection it accepted.
//
// Reading order: the loop (run, reap, dispatch), then a connection's life from
// accept through the client's PROXY header (if the listener expects one), connect,
// our PROXY header (if the group sends one), relay and idle timeout to teardown;
// then commands from other threads (terminate, listener changes) and
// stop/shutdown.
//
// Lifetime rule: every connection op submitted bumps Connection::inflight and
// every completion for it drops it. A connection being torn down cancels what
// is in flight and its slot is freed (fds closed, buffers returned, generation
// bumped) only when inflight reaches zero, so a completion always finds the
// connection it was submitted for.
#include "datapath/worker.hpp"

#include <fcntl.h>
#include <linux/sockios.h>
#include <linux/time_types.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <unordered_map>
#include <utility>
#include <variant>

#include "datapath/access_log.hpp"
#include "datapath/connection.hpp"
#include "datapath/idle_wheel.hpp"
#include "datapath/pipe_pool.hpp"
#include "datapath/transparent.hpp"
#include "datapath/uring.hpp"
#include "datapath/user_data.hpp"
#include "stickyd/log.hpp"
#include "stickyd/proxy_protocol.hpp"
#include "stickyd/words.hpp"

namespace stickyd {

// Keeps one routing snapshot alive while connections that picked from it are
// still connecting: a retry must walk the same table, and the connect SQE points
// at its target address. Counted without atomics; only the worker touches it.
struct SnapshotPin {
    std::shared_ptr<const RoutingTable> table;
    __kernel_timespec connect_timeout{};
    uint32_t users = 0;
    bool current = true;  // still its listener's latest snapshot
};

// The handshake's state (see Phase in connection.hpp): what a connection needs only
// until it relays, when the PROXY protocol is on. Heap-allocated for those
// connections alone, so the others stay at one slot.
struct Handshake {
    // accept_proxy_protocol: the header bytes read so far, and until when.
    std::vector<uint8_t> inbound;
    __kernel_timespec deadline{};  // absolute CLOCK_MONOTONIC, for the linked timeout
    std::chrono::milliseconds timeout{0};
    std::shared_ptr<ListenerStats> listener_stats;
    std::string listener_name;
    // The allow and deny lists in force when the client was accepted: they judge
    // the header's address, even if a reload changes the listener meanwhile.
    std::shared_ptr<const SourceFilter> sources;
    // The client and the address it connected to, as its PROXY header said; unset
    // without a header, or for LOCAL/UNKNOWN (then the socket's own addresses count).
    std::optional<SocketAddress> client;
    std::optional<SocketAddress> local;
    // proxy_protocol_v2: the header for the target and how much of it went out.
    proxy::EncodedHeader outbound;
    uint8_t outbound_sent = 0;
};

namespace {

constexpr unsigned kSqEntries = 4096;
// The idle wheel's resolution: an idle connection is closed between its timeout
// and its timeout plus two ticks. 4096 buckets span 409.6 s, one turn for the
// default 350 s timeout.
constexpr std::chrono::milliseconds kIdleTick{100};
constexpr uint32_t kIdleBuckets = 4096;
constexpr unsigned kCqEntries = 4 * kSqEntries;
constexpr uint16_t kBufferGroup = 0;
// While fds are short, clients are taken from the backlog one at a time with a
// plain accept4(); this many per loop iteration, so that completions keep flowing.
constexpr unsigned kAcceptsPerBatch = 64;
// Pipe-fulls a spliced flow reads per turn before it polls its source again (ready
// at once), so that one bulk flow cannot hold the loop.
constexpr unsigned kSpliceInsPerTurn = 2;

using Clock = std::chrono::steady_clock;
constexpr int64_t kNoDeadline = INT64_MAX;

// Connection ops are the enum's values from recv_header on: one bit each in
// Connection::pending.
constexpr unsigned pending_bit(Op op) {
    return 1u << (static_cast<unsigned>(op) - static_cast<unsigned>(Op::recv_handshake));
}
static_assert(static_cast<unsigned>(Op::watch_target) - static_cast<unsigned>(Op::recv_handshake) <
                  8 * sizeof(Connection::pending),
              "Connection::pending has a bit for every connection op");

// Each counter has a single writer (this worker): a relaxed load+store keeps it
// readable from other threads without a locked read-modify-write per op.
void add(std::atomic<uint64_t>& counter, uint64_t n) {
    counter.store(counter.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

void subtract(std::atomic<uint64_t>& counter, uint64_t n) {
    counter.store(counter.load(std::memory_order_relaxed) - n, std::memory_order_relaxed);
}

// Target and listener counters are shared by every worker: a real atomic add.
void count(std::atomic<uint64_t>& counter, uint64_t n = 1) {
    counter.fetch_add(n, std::memory_order_relaxed);
}

void set_no_delay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// close() then sends an RST instead of a FIN: how an abort is forwarded.
void set_reset_on_close(int fd) {
    linger abort_on_close{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof abort_on_close);
}

// Whether a recv's EOF on fd hides a reset. The kernel reports a socket's error once,
// to whichever call meets it first, and a send with MSG_WAITALL that had sent part of
// its buffer when the peer reset takes the error yet completes with the part it sent;
// the recv then reads EOF. A FIN leaves a socket we still write to in CLOSE_WAIT; a
// reset leaves it CLOSED. (Once we have shut down our side, CLOSED is how a clean
// close ends too: ask only before.)
bool eof_hides_reset(int fd) {
    uint8_t state = 0;  // tcp_info's first field; the kernel copies no more than asked
    socklen_t len = sizeof state;
    return getsockopt(fd, IPPROTO_TCP, TCP_INFO, &state, &len) == 0 && len == sizeof state &&
           state == TCP_CLOSE;
}

// close() on a socket with unread data sends an RST (RFC 2525). A client we
// could not serve gets a clean FIN instead: drop what it sent without copying it
// (MSG_TRUNC on TCP discards). Bounded, so a fast sender cannot keep us here.
void discard_unread(int fd) {
    for (int i = 0; i < 16; ++i) {
        if (::recv(fd, nullptr, 1 << 20, MSG_DONTWAIT | MSG_TRUNC) <= 0) return;
    }
}

std::string_view error_text(int res) {
    return std::strerror(-res);
}

// For the accept4() taken while fds are short: it must say "backlog empty"
// rather than wait. io_uring's accept polls either way.
void set_nonblocking(int fd) {
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags >= 0 && (flags & O_NONBLOCK) == 0) ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

std::optional<SocketAddress> peer_of(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return std::nullopt;
    return SocketAddress::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len);
}

// The access log's end= for a client the allow and deny lists refused.
std::string_view refusal_end(SourceVerdict verdict) {
    return verdict == SourceVerdict::denied ? "denied" : "not allowed";
}

// Whether the lists refuse `client`; a refusal is counted per listener. It is
// logged only at debug level: clients outside the lists must not be able to fill
// the log (the access log, when the listener asks for one, records them).
std::optional<SourceVerdict> refusal(const SourceFilter& sources, ListenerStats* stats,
                                     std::string_view listener, const sockaddr* client) {
    const IpKey key = ip_key_of(client);
    const SourceVerdict verdict = sources.check(key);
    if (verdict == SourceVerdict::allowed) return std::nullopt;
    if (stats) {
        count(verdict == SourceVerdict::denied ? stats->refused_denied
                                               : stats->refused_not_allowed);
    }
    if (log::level() <= LogLevel::debug) {
        log::debug("listener {}: refused client {}: {}", listener, to_string(key),
                   verdict == SourceVerdict::denied ? "in the deny list" : "not in the allow list");
    }
    return verdict;
}

std::optional<SocketAddress> local_of(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return std::nullopt;
    return SocketAddress::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len);
}

constexpr Op recv_op(FlowDir dir) {
    return dir == FlowDir::upstream ? Op::recv_client : Op::recv_target;
}

constexpr Op send_op(FlowDir dir) {
    return dir == FlowDir::upstream ? Op::send_target : Op::send_client;
}

constexpr uint64_t splice_key(uint32_t slot, FlowDir dir) {
    return (static_cast<uint64_t>(slot) << 1) | static_cast<unsigned>(dir);
}

constexpr FlowDir flow_of(Op op) {
    return op == Op::recv_client || op == Op::send_target ? FlowDir::upstream : FlowDir::downstream;
}

enum class CloseMode { graceful, reset };

// A removed listener stays in the table as a tombstone (fd -1) until its accept
// and back-off timer have completed and its connections have ended, so that no late
// completion for its index, and no connection counting against its stats, can reach
// a listener added later in its place.
struct ListenerState {
    int fd = -1;
    ListenerSettings settings;
    bool shared = false;  // WorkerListener::shared
    bool removed = false;
    bool backoff_pending = false;     // the accept_backoff timer is in flight
    SnapshotPin* pin = nullptr;       // the latest snapshot this listener handed out
    uint64_t pin_batch = UINT64_MAX;  // loop iteration in which `pin` was last checked
    bool accepting = false;           // the multishot accept is in flight
    std::chrono::milliseconds backoff{0};
    __kernel_timespec backoff_ts{};  // read by the kernel at submit time
    bool pause_requested = false;    // the accept was cancelled because fds ran short
    uint32_t connections = 0;        // accepted here and not yet freed

    bool reusable() const { return removed && !accepting && !backoff_pending && connections == 0; }
};

// Owns the listening fds from the moment the worker is constructed.
struct Listeners {
    // A deque: adding a listener must not move the others, whose backoff_ts an
    // accept back-off timer SQE of the same batch may point at.
    std::deque<ListenerState> items;

    explicit Listeners(std::vector<WorkerListener> given) {
        for (auto& l : given) {
            ListenerState state;
            state.fd = l.fd;
            state.settings = std::move(l.settings);
            state.shared = l.shared;
            items.push_back(std::move(state));
        }
    }
    ~Listeners() {
        for (auto& l : items)
            if (l.fd >= 0) ::close(l.fd);
    }
    Listeners(const Listeners&) = delete;
    Listeners& operator=(const Listeners&) = delete;
};

// Requests from other threads, applied by the loop in order.
struct TerminateCommand {
    std::vector<std::shared_ptr<TargetStats>> targets;
};
struct AddListenerCommand {
    WorkerListener listener;
};
struct UpdateListenerCommand {
    ListenerSettings settings;
};
struct RemoveListenerCommand {
    std::string name;
};
using Command = std::variant<TerminateCommand, AddListenerCommand, UpdateListenerCommand,
                             RemoveListenerCommand>;

// Warnings a client can trigger (bad PROXY headers) are limited to one line per
// second per worker, and the next line says how many were left out.
class WarnLimit {
  public:
    // Whether to log now; `suppressed` is set to the lines dropped since the last one.
    bool allow(Clock::time_point now, uint64_t& suppressed) {
        if (now < next_) {
            ++dropped_;
            return false;
        }
        next_ = now + std::chrono::seconds(1);
        suppressed = std::exchange(dropped_, 0);
        return true;
    }

  private:
    Clock::time_point next_{};
    uint64_t dropped_ = 0;
};

}  // namespace

struct Worker::Loop {
    Loop(unsigned index, std::vector<WorkerListener> listeners, WorkerOptions options,
         WorkerStats& stats);
    ~Loop();

    void run();
    void abandon() noexcept;
    void request_stop(std::chrono::milliseconds grace);
    void post(Command command);

  private:
    // The loop.
    void reap_completions();
    void dispatch(const io_uring_cqe& cqe);
    void after_batch();

    // Accepting.
    void start_accepting(uint32_t index);
    void arm_accept(uint32_t index);
    void on_accept(uint32_t index, const io_uring_cqe& cqe);
    void on_accept_end(uint32_t index, int res);
    void arm_backoff(uint32_t index);
    void on_accept_backoff(uint32_t index);
    void accept_client(uint32_t index, int fd);
    bool slot_available() const;
    AccessRecord* access(uint32_t slot);
    void note_end(uint32_t slot, std::string_view why);
    void note_reset(uint32_t slot, bool client_side);

    // Short of fds: accepts pause, accepted clients wait for a target socket.
    void begin_shortage(std::string_view why);
    void pause_accepting();
    void wait_for_fd(uint32_t slot, int err);
    bool still_waiting(uint64_t encoded) const;
    void resume_accepting();
    void retry_fd_waiters();
    bool free_fd_for_oldest(std::vector<uint64_t>& waiting, size_t oldest);
    bool accept_backlog(uint32_t index);
    bool refill_reserve();
    void end_shortage();
    SnapshotPin* current_pin(ListenerState& listener);
    void unpin(Connection& c);

    // The handshake, first half: the client's PROXY header (accept_proxy_protocol).
    void submit_handshake_recv(uint32_t slot);
    void handle_handshake_recv(uint32_t slot, int res, uint16_t bid);
    void reject_handshake(uint32_t slot, std::string_view reason);
    bool refuse_source(uint32_t index, int fd, const sockaddr* peer, socklen_t peer_len);

    // Connecting, and the handshake's second half: our PROXY header to the target
    // (proxy_protocol_v2).
    void route_client(uint32_t slot, const sockaddr* client);
    void start_connect(uint32_t slot);
    void connect_from_client(const Connection& c, int fd, const SocketAddress& client,
                             const RouteTarget& target);
    void handle_connect(uint32_t slot, int res);
    void connect_next(uint32_t slot);
    void leave_target(uint32_t slot);
    void move_off_terminated_target(uint32_t slot);
    void log_connect_failure(const Connection& c, int res);
    void report_connect(const Connection& c, int res);
    void detach_target(Connection& c);
    void start_handshake_send(uint32_t slot);
    void submit_handshake_send(uint32_t slot);
    void handle_handshake_send(uint32_t slot, int res);

    // Relaying.
    void on_connection_event(UserData ud, const io_uring_cqe& cqe);
    void begin_relay(uint32_t slot);
    void submit_recv(uint32_t slot, FlowDir dir);
    void submit_send(uint32_t slot, FlowDir dir);
    void carry_out(uint32_t slot, FlowDir dir, Decision decision);
    void finish_flow(uint32_t slot, FlowDir dir);
    void note_bytes(uint32_t slot, FlowDir dir, uint64_t n);
    void park(uint64_t waiter);
    void rearm_waiters();

    // Splicing: a flow that keeps its buffers full (see connection.hpp).
    std::optional<Pipe> take_pipe();
    bool move_to_splice(uint32_t slot, FlowDir dir);
    void on_splice_ready(uint32_t slot, FlowDir dir, int res, bool source_side);
    void pump(uint32_t slot, FlowDir dir);
    void end_splice(uint32_t slot, FlowDir dir);

    // Idle timeout.
    void update_clock();
    void arm_idle_timer();
    void on_idle_timer();
    uint32_t last_progress_tick(const Connection& c) const;

    // Commands from other threads.
    void run_commands();
    void terminate_targets(const std::vector<std::shared_ptr<TargetStats>>& targets);
    void add_listener(WorkerListener listener);
    void update_listener(ListenerSettings settings);
    void remove_listener(const std::string& name);
    std::optional<uint32_t> find_listener(const std::string& name) const;
    void drop_pin(ListenerState& listener);

    // Teardown.
    std::optional<uint32_t> allocate_slot();
    void close_connection(uint32_t slot, CloseMode mode);
    void free_slot(uint32_t slot);
    void free_handshake(Connection& c);
    io_uring_sqe* connection_sqe(uint32_t slot, Op op);
    void cancel_pending(uint32_t slot, std::initializer_list<Op> ops);
    void cancel_client_side(uint32_t slot);
    void cancel_target_side(uint32_t slot);
    void close_fd(int fd);
    void release_buffer(uint16_t bid);

    // Stopping.
    void wake();
    void arm_wake();
    void on_wake(int res);
    void stop_accepting();
    void arm_stop_timer(Clock::time_point deadline);
    void on_stop_timer(int res);
    void force_close_all();
    void begin_drain();

    io_uring_sqe* sqe(uint64_t user_data) { return uring_.sqe(user_data); }

    const unsigned index_;
    const WorkerOptions options_;
    WorkerStats& stats_;
    Listeners listeners_;  // before uring_: closes the fds if io_uring setup throws
    Uring uring_;
    ProvidedBuffers buffers_;  // after uring_: unregisters from it
    Doorbell wake_{"worker"};

    std::vector<Connection> conns_;
    std::vector<uint32_t> free_slots_;
    uint32_t live_ = 0;             // slots not free
    std::deque<uint64_t> waiters_;  // recvs parked on -ENOBUFS, as encoded user_data
    // Clients accepted when no fd was left for their target socket, as encoded
    // user_data (slot + generation), oldest first: they wait, like the backlog, for fds.
    std::vector<uint64_t> fd_waiters_;
    // Held while fds are plentiful, given up when waiting clients hold all the
    // others: then no connection would ever end to free one for them.
    int reserve_fd_ = -1;
    // By slot, for connections of listeners with access_log = true (kept out of
    // Connection so that the slots of everyone else stay small).
    std::vector<std::unique_ptr<AccessRecord>> access_;
    std::vector<std::unique_ptr<SnapshotPin>> pins_;
    // The pipe of each spliced flow, by slot * 2 + direction (kept out of Connection:
    // only bulk flows have one, and only while they stay bulk).
    struct Spliced {
        Pipe pipe;
        uint32_t piped = 0;           // bytes in the pipe, not yet spliced to the sink
        bool waiting_source = false;  // dry after a bulk turn: its empty pipe may be taken
    };
    std::unordered_map<uint64_t, Spliced> spliced_;
    PipePool pipes_;
    bool pipe_warned_ = false;

    uint64_t batch_ = 0;
    uint32_t worker_ops_ = 0;  // wake read, accepts, timers in flight
    bool full_warned_ = false;
    bool socket_warned_ = false;
    bool short_of_fds_ = false;  // accepts are paused until the backlog is drained
    bool resume_due_ = false;    // fds were freed: retry waiters and the backlog after this batch
    unsigned shed_ = 0;          // waiting clients reset during this shortage
    bool overflow_warned_ = false;
    bool pool_grew_ = false;

    IdleWheel wheel_{kIdleBuckets};
    const Clock::time_point epoch_ = Clock::now();  // wheel tick 0
    uint64_t now_tick_ = 0;                         // read once per batch
    uint64_t idle_timer_tick_ = IdleWheel::kNever;  // when the armed idle timer fires
    __kernel_timespec idle_ts_{};
    WarnLimit handshake_warnings_;

    CommandQueue<Command> commands_;

    std::atomic<int64_t> stop_deadline_ns_{kNoDeadline};  // written by stop() on any thread
    bool stopping_ = false;
    bool draining_ = false;
    Clock::time_point armed_deadline_ = Clock::time_point::max();
    __kernel_timespec stop_ts_{};
};

// ---------------------------------------------------------------------------
// Construction and the loop

Worker::Loop::Loop(unsigned index, std::vector<WorkerListener> listeners, WorkerOptions options,
                   WorkerStats& stats)
    : index_(index),
      options_(options),
      stats_(stats),
      listeners_(std::move(listeners)),
      uring_(kSqEntries, kCqEntries),
      // A connection holds at most one buffer per direction.
      buffers_(uring_, kBufferGroup, options.buffer_count, options.buffer_size,
               options.max_buffers > 0 ? options.max_buffers
                                       : static_cast<uint32_t>(std::min<uint64_t>(
                                             2ULL * options.max_connections, UINT32_MAX))),
      pipes_(options.max_pipes, options.pipe_size) {
    if (options.max_connections == 0) throw std::runtime_error("max_connections must be > 0");
    if (listeners_.items.size() > UINT16_MAX) throw std::runtime_error("too many listeners");
    for (const ListenerState& l : listeners_.items) set_nonblocking(l.fd);
    refill_reserve();
    conns_.reserve(std::min<uint32_t>(options.max_connections, 1024));
}

Worker::Loop::~Loop() {
    // Normally empty by now; this covers a loop that never ran or threw.
    for (Connection& c : conns_) {
        if (c.phase == Phase::free) continue;
        if (c.client_fd >= 0) ::close(c.client_fd);
        if (c.target_fd >= 0) ::close(c.target_fd);
        free_handshake(c);
    }
    for (Command& command : commands_.take()) {
        if (auto* add = std::get_if<AddListenerCommand>(&command)) ::close(add->listener.fd);
    }
    if (reserve_fd_ >= 0) ::close(reserve_fd_);
}

void Worker::Loop::run() {
    // splice(2) has no MSG_NOSIGNAL: into a socket whose peer is gone it raises
    // SIGPIPE along with EPIPE, and the relay acts on the error. Blocked here, on this
    // thread, whatever the process does with the signal.
    sigset_t pipe_signal;
    sigemptyset(&pipe_signal);
    sigaddset(&pipe_signal, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_signal, nullptr);
    uring_.enable();
    log::debug("worker {}: io_uring ready ({}, {} x {} KiB receive buffers)", index_, uring_.mode(),
               options_.buffer_count, options_.buffer_size / 1024);
    arm_wake();
    for (uint32_t i = 0; i < listeners_.items.size(); ++i) arm_accept(i);
    const bool beat = options_.heartbeat.count() > 0;
    const __kernel_timespec beat_ts = to_timespec(options_.heartbeat);
    while (!(draining_ && worker_ops_ == 0)) {
        if (beat) {
            uring_.submit_and_wait(1, beat_ts);
        } else {
            uring_.submit_and_wait(1);
        }
        add(stats_.heartbeat, 1);
        ++batch_;
        update_clock();
        reap_completions();
        after_batch();
    }
    io_uring_submit(uring_.get());  // the last closes queued by the final batch
}

void Worker::Loop::reap_completions() {
    uring_.for_each_completion([this](const io_uring_cqe& cqe) { dispatch(cqe); });
}

void Worker::Loop::dispatch(const io_uring_cqe& cqe) {
    UserData ud = decode(cqe.user_data);
    switch (ud.op) {
        case Op::ignore:
            return;
        case Op::wake:
            return on_wake(cqe.res);
        case Op::stop_timer:
            return on_stop_timer(cqe.res);
        case Op::accept:
            return on_accept(ud.slot, cqe);
        case Op::accept_backoff:
            return on_accept_backoff(ud.slot);
        case Op::idle_timer:
            return on_idle_timer();
        case Op::connect:
        case Op::connect_timeout:
        case Op::recv_client:
        case Op::recv_target:
        case Op::send_target:
        case Op::send_client:
        case Op::recv_handshake:
        case Op::handshake_timeout:
        case Op::send_handshake:
        case Op::watch_client:
        case Op::watch_target:
            return on_connection_event(ud, cqe);
    }
}

void Worker::Loop::after_batch() {
    if (buffers_.replenish() > 0 && !pool_grew_) {
        pool_grew_ = true;
        log::info(
            "worker {}: every receive buffer is held by a send to a slow reader; growing "
            "the pool beyond {} buffers (now {})",
            index_, options_.buffer_count, buffers_.total());
    }
    rearm_waiters();
    if (std::exchange(resume_due_, false)) resume_accepting();
    arm_idle_timer();
    if (!overflow_warned_ && io_uring_cq_has_overflow(uring_.get())) {
        overflow_warned_ = true;
        log::warn("worker {}: completion queue overflowed; the kernel is buffering completions",
                  index_);
    }
    if (stopping_ && live_ == 0 && !draining_) begin_drain();
}

// ---------------------------------------------------------------------------
// Accepting: one multishot accept per listener, re-armed whenever it ends, as
// long as fds are plentiful.

void Worker::Loop::start_accepting(uint32_t index) {
    if (!short_of_fds_) return arm_accept(index);
    arm_backoff(index);
    resume_due_ = true;
}

void Worker::Loop::arm_accept(uint32_t index) {
    ListenerState& l = listeners_.items[index];
    io_uring_prep_multishot_accept(sqe(encode(Op::accept, index)), l.fd, nullptr, nullptr,
                                   SOCK_CLOEXEC);
    l.accepting = true;
    ++worker_ops_;
}

void Worker::Loop::on_accept(uint32_t index, const io_uring_cqe& cqe) {
    ListenerState& l = listeners_.items[index];
    const bool more = (cqe.flags & IORING_CQE_F_MORE) != 0;
    if (!more) {
        l.accepting = false;
        --worker_ops_;
    }
    if (l.removed || stopping_) {  // raced with remove_listener() or stop(): the socket is closed
        if (cqe.res >= 0) ::close(cqe.res);
        return;
    }
    if (cqe.res >= 0) accept_client(index, cqe.res);
    if (!more) on_accept_end(index, cqe.res);
}

// The multishot accept ended: cancelled by us because fds ran short, failed, or
// ended by the kernel (res >= 0 without IORING_CQE_F_MORE).
void Worker::Loop::on_accept_end(uint32_t index, int res) {
    const bool paused = std::exchange(listeners_.items[index].pause_requested, false);
    if (res < 0 && !paused && on_accept_error(-res) == AcceptStep::back_off) {
        begin_shortage(fmt::format("accept failed: {}", error_text(res)));
    }
    start_accepting(index);
}

// Accepting again at once would fail again at once (the sniproxy 100% CPU bug).
// Fds freed by this worker's own connections resume it at once (resume_due_);
// the timer, 100 ms doubling to 1 s, covers fds freed anywhere else in the
// process, which the worker does not see.
void Worker::Loop::arm_backoff(uint32_t index) {
    ListenerState& l = listeners_.items[index];
    if (l.backoff_pending) return;
    l.backoff = next_backoff(l.backoff);
    l.backoff_ts = to_timespec(l.backoff);
    io_uring_prep_timeout(sqe(encode(Op::accept_backoff, index)), &l.backoff_ts, 0, 0);
    l.backoff_pending = true;
    ++worker_ops_;
}

void Worker::Loop::on_accept_backoff(uint32_t index) {
    --worker_ops_;
    ListenerState& l = listeners_.items[index];
    l.backoff_pending = false;
    if (stopping_ || l.removed) return;
    resume_accepting();
    if (short_of_fds_ && !l.accepting) arm_backoff(index);
}

bool Worker::Loop::slot_available() const {
    return !free_slots_.empty() || conns_.size() < options_.max_connections;
}

void Worker::Loop::accept_client(uint32_t index, int fd) {
    ListenerState& listener = listeners_.items[index];
    if (listener.settings.stats) count(listener.settings.stats->accepted);
    // Multishot accept shares one address buffer between completions, so ask
    // the socket instead.
    sockaddr_storage peer{};
    socklen_t peer_len = sizeof peer;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) {
        ::close(fd);  // already gone
        return;
    }
    // With a PROXY header the lists judge the address it names, once it is read.
    if (listener.settings.sources && !listener.settings.config.accept_proxy_protocol &&
        refuse_source(index, fd, reinterpret_cast<const sockaddr*>(&peer), peer_len)) {
        return;
    }
    SnapshotPin* pin = current_pin(listener);
    if (pin == nullptr) {  // no routing table published: nowhere to send the client
        ::close(fd);
        return;
    }
    std::optional<uint32_t> slot = allocate_slot();
    if (!slot) {
        if (!full_warned_) {
            full_warned_ = true;
            log::warn(
                "worker {}: {} connections open, the per-worker maximum; resetting new "
                "clients until some close",
                index_, live_);
        }
        // Spares the backlog a stream of accept-and-reset.
        begin_shortage("cannot take more clients for now");
        set_reset_on_close(fd);
        ::close(fd);
        return;
    }
    full_warned_ = false;
    const ListenerSettings& settings = listener.settings;
    Connection& c = conns_[*slot];
    c.client_fd = fd;
    c.listener = static_cast<uint16_t>(index);
    ++listener.connections;
    c.idle_ticks = idle_timeout_ticks(settings.config.idle_timeout, kIdleTick);
    c.pin = pin;
    ++pin->users;
    ++live_;
    add(stats_.accepted, 1);
    add(stats_.active, 1);
    if (settings.config.access_log) {
        if (access_.size() <= *slot) access_.resize(*slot + 1);
        auto record = std::make_unique<AccessRecord>();
        record->listener = settings.config.name;
        record->client =
            SocketAddress::from_sockaddr(reinterpret_cast<const sockaddr*>(&peer), peer_len);
        record->started = Clock::now();
        access_[*slot] = std::move(record);
    }
    if (settings.config.accept_proxy_protocol) {
        // Routing waits for the header: it says who the client is.
        c.phase = Phase::handshake;
        c.handshake = new Handshake;
        c.handshake->timeout = settings.config.proxy_protocol_timeout;
        c.handshake->deadline =
            to_timespec((Clock::now() + settings.config.proxy_protocol_timeout).time_since_epoch());
        c.handshake->listener_stats = settings.stats;
        c.handshake->listener_name = settings.config.name;
        c.handshake->sources = settings.sources;
        submit_handshake_recv(*slot);
        return;
    }
    route_client(*slot, reinterpret_cast<const sockaddr*>(&peer));
}

// Refused before it costs a slot, a routing decision or a target socket: reset at
// once, so the client learns at the first byte that it is not welcome.
bool Worker::Loop::refuse_source(uint32_t index, int fd, const sockaddr* peer, socklen_t peer_len) {
    const ListenerSettings& settings = listeners_.items[index].settings;
    const std::optional<SourceVerdict> verdict =
        refusal(*settings.sources, settings.stats.get(), settings.config.name, peer);
    if (!verdict) return false;
    add(stats_.accepted, 1);
    if (settings.config.access_log) {
        AccessRecord record;
        record.listener = settings.config.name;
        record.client = SocketAddress::from_sockaddr(peer, peer_len);
        record.started = Clock::now();
        record.end = refusal_end(*verdict);
        log::info("{}", access_line(record, record.started));
    }
    set_reset_on_close(fd);
    close_fd(fd);
    return true;
}

// The routing snapshot is re-read at most once per loop iteration per listener:
// one atomic shared_ptr load per batch instead of per client.
SnapshotPin* Worker::Loop::current_pin(ListenerState& listener) {
    if (listener.pin != nullptr && listener.pin_batch == batch_) return listener.pin;
    listener.pin_batch = batch_;
    std::shared_ptr<const RoutingTable> table = listener.settings.route->load();
    if (listener.pin != nullptr && listener.pin->table == table) return listener.pin;
    drop_pin(listener);
    if (!table) return nullptr;
    auto pin = std::make_unique<SnapshotPin>();
    pin->connect_timeout = to_timespec(table->connect_timeout);
    pin->table = std::move(table);
    listener.pin = pin.get();
    pins_.push_back(std::move(pin));
    return listener.pin;
}

void Worker::Loop::unpin(Connection& c) {
    SnapshotPin* pin = c.pin;
    if (pin == nullptr) return;
    c.pin = nullptr;
    if (--pin->users == 0 && !pin->current) {
        std::erase_if(pins_, [pin](const auto& p) { return p.get() == pin; });
    }
}

// ---------------------------------------------------------------------------
// Short of fds. A client is only worth its fd with a target socket beside it,
// so while fds are short: the multishot accepts stop (the kernel's backlog keeps
// new clients); clients accepted without a target socket wait, oldest first;
// every fd freed is freed at once (close_fd) and goes first to those waiting,
// then to the backlog, taken one client at a time. The pause ends when the
// backlog is empty and no one waits: one line when it starts, one when it ends.

void Worker::Loop::begin_shortage(std::string_view why) {
    pause_accepting();
    pipes_.release_spares();
    if (std::exchange(short_of_fds_, true)) return;
    log::warn(
        "worker {}: {}; pausing accepts: new clients wait in the backlog until "
        "connections close",
        index_, why);
}

// By user_data; the accepts end with -ECANCELED (on_accept_end).
void Worker::Loop::pause_accepting() {
    for (uint32_t i = 0; i < listeners_.items.size(); ++i) {
        ListenerState& l = listeners_.items[i];
        if (!l.accepting || l.pause_requested || l.removed) continue;
        l.pause_requested = true;
        io_uring_prep_cancel64(sqe(encode(Op::ignore)), encode(Op::accept, i), 0);
    }
}

// socket() for the client's target failed for want of an fd: the client keeps
// its place, as it would in the backlog, and gets the next fd freed.
void Worker::Loop::wait_for_fd(uint32_t slot, int err) {
    fd_waiters_.push_back(encode(Op::ignore, slot, conns_[slot].generation));
    begin_shortage(fmt::format("cannot create a socket to reach a target: {}", std::strerror(err)));
}

// Not closed meanwhile (shutdown, reload, its slot perhaps reused) and still
// without a target socket.
bool Worker::Loop::still_waiting(uint64_t encoded) const {
    const UserData ud = decode(encoded);
    const Connection& c = conns_[ud.slot];
    return c.generation == ud.generation && c.phase == Phase::connecting && c.target_fd < 0;
}

// After fds were freed (resume_due_) or on the back-off timer.
void Worker::Loop::resume_accepting() {
    if (!short_of_fds_ || stopping_) return;
    retry_fd_waiters();
    if (!fd_waiters_.empty() || !refill_reserve()) return;
    bool drained = true;
    for (uint32_t i = 0; i < listeners_.items.size(); ++i) {
        const ListenerState& l = listeners_.items[i];
        if (l.removed) continue;
        // An accept still in flight is being cancelled: its end resumes us.
        if (l.accepting || !accept_backlog(i)) drained = false;
    }
    if (drained) end_shortage();
}

// Oldest first, and only as far as fds go: when the oldest finds none, the rest
// would not either.
void Worker::Loop::retry_fd_waiters() {
    std::vector<uint64_t> waiting;
    waiting.swap(fd_waiters_);
    std::erase_if(waiting, [this](uint64_t w) { return !still_waiting(w); });
    size_t next = 0;
    bool freed = false;
    while (next < waiting.size()) {
        start_connect(decode(waiting[next]).slot);
        if (fd_waiters_.empty()) {  // it has its socket (or found no target and closed)
            ++next;
            continue;
        }
        fd_waiters_.clear();  // itself, put back in its place below
        // One fd made free per round at most: should it go elsewhere (another
        // worker's accept), the next round must not reset another client for it.
        if (freed || !free_fd_for_oldest(waiting, next)) break;
        freed = true;
    }
    fd_waiters_.assign(waiting.begin() + static_cast<ptrdiff_t>(next), waiting.end());
}

// While any connection but the waiting ones is open, it frees fds when it ends:
// wait for that. Otherwise nothing ever would: the reserve fd goes to the
// oldest, or, already given up, the newest waiting client is reset for its fd.
bool Worker::Loop::free_fd_for_oldest(std::vector<uint64_t>& waiting, size_t oldest) {
    if (live_ > waiting.size() - oldest) return false;
    if (reserve_fd_ >= 0) {
        ::close(std::exchange(reserve_fd_, -1));
        return true;
    }
    if (waiting.size() - oldest < 2) return false;  // alone: the back-off timer retries
    const uint32_t newest = decode(waiting.back()).slot;
    waiting.pop_back();
    log::debug("worker {}: out of fds with only waiting clients open: resetting the newest",
               index_);
    note_end(newest, "out of fds");
    close_connection(newest, CloseMode::reset);  // closes at once while short (close_fd)
    ++shed_;
    return true;
}

// One client at a time: the next is accepted only once the last has its target
// socket. True once the backlog is empty.
bool Worker::Loop::accept_backlog(uint32_t index) {
    for (unsigned n = 0; n < kAcceptsPerBatch; ++n) {
        if (!slot_available()) return false;  // a closing connection resumes us
        const int fd = ::accept4(listeners_.items[index].fd, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0) {
            const int err = errno;
            if (err == EAGAIN || err == EWOULDBLOCK) return true;
            if (err == EINTR || on_accept_error(err) == AcceptStep::rearm) continue;
            return false;  // out of fds again: the next freed fd or the timer retries
        }
        accept_client(index, fd);
        if (!fd_waiters_.empty()) return false;
    }
    resume_due_ = true;  // more next time round
    return false;
}

bool Worker::Loop::refill_reserve() {
    if (reserve_fd_ < 0) reserve_fd_ = ::fcntl(wake_.fd(), F_DUPFD_CLOEXEC, 0);
    return reserve_fd_ >= 0;
}

void Worker::Loop::end_shortage() {
    short_of_fds_ = false;
    socket_warned_ = false;
    for (uint32_t i = 0; i < listeners_.items.size(); ++i) {
        ListenerState& l = listeners_.items[i];
        l.backoff = std::chrono::milliseconds{0};
        if (!l.removed && !l.accepting) arm_accept(i);
    }
    log::info("worker {}: accepting again{}", index_,
              shed_ > 0 ? fmt::format(" ({} waiting clients were reset for their fds)",
                                      std::exchange(shed_, 0))
                        : std::string());
}

// ---------------------------------------------------------------------------
// The client's PROXY header: read in as many recvs as it takes, all linked to one
// absolute deadline, before anything is routed. Whatever follows the header in
// the last recv is the client's first data and stays in that buffer, queued as
// the upstream flow's first send.

void Worker::Loop::submit_handshake_recv(uint32_t slot) {
    Connection& c = conns_[slot];
    uring_.reserve(2);  // the link must reach the kernel in one submission
    io_uring_sqe* recv = connection_sqe(slot, Op::recv_handshake);
    io_uring_prep_recv(recv, c.client_fd, nullptr, 0, 0);
    recv->flags |= IOSQE_BUFFER_SELECT | IOSQE_IO_LINK;
    recv->buf_group = buffers_.group();
    recv->ioprio |= IORING_RECVSEND_POLL_FIRST;
    io_uring_prep_link_timeout(connection_sqe(slot, Op::handshake_timeout), &c.handshake->deadline,
                               IORING_TIMEOUT_ABS);
    c.inflight += 2;
    ++c.timeouts;
}

void Worker::Loop::handle_handshake_recv(uint32_t slot, int res, uint16_t bid) {
    Connection& c = conns_[slot];
    Handshake& handshake = *c.handshake;
    if (res > 0 && bid != kNoBuffer) {
        const auto* data = reinterpret_cast<const uint8_t*>(buffers_.data(bid));
        HandshakeOutcome out =
            on_handshake_bytes(handshake.inbound, {data, static_cast<size_t>(res)});
        switch (out.step) {
            case HandshakeStep::more:
                release_buffer(bid);
                return submit_handshake_recv(slot);
            case HandshakeStep::invalid:
                release_buffer(bid);
                return reject_handshake(slot, fmt::format("invalid PROXY header: {}", out.reason));
            case HandshakeStep::done:
                break;
        }
        std::vector<uint8_t>().swap(handshake.inbound);
        handshake.client = std::move(out.header.source);
        handshake.local = std::move(out.header.destination);
        if (AccessRecord* a = access(slot)) a->source = handshake.client;
        // LOCAL or UNKNOWN: the connection's own peer is the client.
        std::optional<SocketAddress> client =
            handshake.client ? handshake.client : peer_of(c.client_fd);
        if (!client) {
            release_buffer(bid);
            note_reset(slot, true);  // getpeername fails once the client has reset
            return close_connection(slot, CloseMode::reset);
        }
        if (handshake.sources) {
            if (auto verdict = refusal(*handshake.sources, handshake.listener_stats.get(),
                                       handshake.listener_name, client->sa())) {
                release_buffer(bid);  // a refused client's bytes count nowhere
                note_end(slot, refusal_end(*verdict));
                return close_connection(slot, CloseMode::reset);
            }
        }
        if (out.payload_offset < static_cast<size_t>(res)) {
            Flow& up = c.flow(FlowDir::upstream);
            up.buf = bid;
            up.sent = static_cast<uint32_t>(out.payload_offset);
            up.len = static_cast<uint32_t>(res);
            add(stats_.bytes_in, up.len - up.sent);
            if (AccessRecord* a = access(slot)) a->bytes_up += up.len - up.sent;
        } else {
            release_buffer(bid);
        }
        return route_client(slot, client->sa());
    }
    release_buffer(bid);
    switch (res) {
        case -ENOBUFS:
            return park(encode(Op::recv_handshake, slot, c.generation));
        case 0:
            // Connect-and-close is a port probe or a TCP health check of the
            // balancer in front, not a broken header: no warning for those.
            if (handshake.inbound.empty()) return close_connection(slot, CloseMode::graceful);
            return reject_handshake(slot, "closed before sending a complete PROXY header");
        case -ECANCELED:  // the linked timeout fired
            return reject_handshake(slot, fmt::format("no complete PROXY header within {} ms",
                                                      handshake.timeout.count()));
        case -EAGAIN:
        case -EINTR:
            return submit_handshake_recv(slot);
        default:
            note_reset(slot, true);
            return close_connection(slot, CloseMode::reset);
    }
}

void Worker::Loop::reject_handshake(uint32_t slot, std::string_view reason) {
    Connection& c = conns_[slot];
    Handshake& handshake = *c.handshake;
    if (handshake.listener_stats) count(handshake.listener_stats->proxy_header_errors);
    note_end(slot, "bad PROXY header");
    uint64_t suppressed = 0;
    if (handshake_warnings_.allow(Clock::now(), suppressed)) {
        std::optional<SocketAddress> peer = peer_of(c.client_fd);
        log::warn("listener {}: closing client {}: {}{}", handshake.listener_name,
                  peer ? peer->to_string() : std::string("(gone)"), reason,
                  suppressed > 0 ? fmt::format(" ({} similar lines suppressed)", suppressed)
                                 : std::string());
    }
    discard_unread(c.client_fd);
    close_connection(slot, CloseMode::graceful);
}

// ---------------------------------------------------------------------------
// Connecting: socket() + connect linked to a timeout; on failure the balancer's
// next distinct target, up to connect_retries more times.

// The client is known (its socket's peer, or what its PROXY header said): hash it
// and connect to the target it sticks to.
void Worker::Loop::route_client(uint32_t slot, const sockaddr* client) {
    Connection& c = conns_[slot];
    c.key_hash = c.pin->table->key_hash(client);
    c.phase = Phase::connecting;
    // A client often sends first; its first recv need not wait for readiness.
    c.flow(FlowDir::upstream).source_ready = true;
    start_connect(slot);
}

void Worker::Loop::start_connect(uint32_t slot) {
    Connection& c = conns_[slot];
    const RoutingTable& table = *c.pin->table;
    const uint32_t target = table.pick(c.key_hash, c.attempt);
    if (target >= table.targets.size()) {  // an empty or all-drained group: nothing to connect to
        // Counted per listener; the control thread logs the group's state once.
        const auto& stats = listeners_.items[c.listener].settings.stats;
        if (stats) count(stats->no_target);
        note_end(slot, "no target");
        close_connection(slot, CloseMode::graceful);
        return;
    }
    c.target = target;
    const SocketAddress& address = table.targets[target].address;
    if (AccessRecord* a = access(slot)) ++a->attempts;
    // Asked again on every attempt rather than kept in the slot, which stays as small
    // for everyone else; only these groups pay the getpeername.
    std::optional<SocketAddress> client;
    if (table.preserve_client_ip) {
        client = c.handshake && c.handshake->client ? c.handshake->client : peer_of(c.client_fd);
        if (!client) {  // getpeername fails once the client has reset
            note_reset(slot, true);
            return close_connection(slot, CloseMode::reset);
        }
    }
    const int fd = ::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd < 0) {
        // Out of fds: another target would fail the same way.
        const int err = errno;
        if (err == EMFILE || err == ENFILE) return wait_for_fd(slot, err);
        if (!socket_warned_) {
            socket_warned_ = true;
            log::warn("worker {}: cannot create a socket to reach a target: {}", index_,
                      std::strerror(err));
        }
        add(stats_.connect_failures, 1);
        note_end(slot, "connect failed");
        close_connection(slot, CloseMode::graceful);
        return;
    }
    set_no_delay(fd);
    if (client) connect_from_client(c, fd, *client, table.targets[target]);
    c.target_fd = fd;
    c.stats = table.targets[target].stats;
    if (c.stats) {
        count(c.stats->connections);
        count(c.stats->active);
    }

    uring_.reserve(2);  // the link must reach the kernel in one submission
    io_uring_sqe* connect = connection_sqe(slot, Op::connect);
    io_uring_prep_connect(connect, fd, address.sa(), address.len());
    connect->flags |= IOSQE_IO_LINK;
    io_uring_prep_link_timeout(connection_sqe(slot, Op::connect_timeout), &c.pin->connect_timeout,
                               0);
    c.inflight += 2;
    ++c.timeouts;
}

// preserve_client_ip: the target socket takes the client's IP before it connects.
// A client the target cannot be reached from (one is IPv4, the other IPv6), or a
// bind the kernel refuses, connects from the host's own address instead rather than
// turning the client away: counted, and logged once per process.
void Worker::Loop::connect_from_client(const Connection& c, int fd, const SocketAddress& client,
                                       const RouteTarget& target) {
    const std::optional<SocketAddress> source = transparent_source(client, target.address);
    const int error = source ? bind_transparent(fd, *source) : 0;
    if (source && error == 0) return;
    add(stats_.client_ip_fallbacks, 1);
    static std::atomic<bool> mismatch_logged{false};
    static std::atomic<bool> refusal_logged{false};
    std::atomic<bool>& logged = source ? refusal_logged : mismatch_logged;
    if (logged.exchange(true, std::memory_order_relaxed)) return;
    std::string name = target.id;
    if (std::string address = target.address.to_string(); address != name) {
        name += fmt::format(" ({})", address);
    }
    const std::string why = source
                                ? fmt::format("binding {} for target {} was refused: {}",
                                              source->to_string(), name, std::strerror(error))
                                : fmt::format(
                                      "client {} cannot reach target {} from its own address: one "
                                      "connection cannot carry both IPv4 and IPv6",
                                      client.to_string(), name);
    log::warn(
        "target group '{}': preserve_client_ip: {}; connecting from stickyd's own address "
        "instead (logged once; stickyd_preserve_client_ip_fallbacks_total counts every one)",
        c.pin->table->group, why);
}

// The linked timeout's own completion (-ETIME or -ECANCELED) only counts down
// inflight; this one decides.
void Worker::Loop::handle_connect(uint32_t slot, int res) {
    Connection& c = conns_[slot];
    if (c.target_terminated) return move_off_terminated_target(slot);
    // Log a failure before reporting it: the report may wake the control thread,
    // whose "unhealthy" line must come after the failure that caused it.
    if (res != 0) log_connect_failure(c, res);
    report_connect(c, res);
    if (res == 0) {
        if (AccessRecord* a = access(slot)) {
            const RoutingTable& table = *c.pin->table;
            a->group = table.group;
            a->target = table.targets[c.target].id;
            a->target_address = table.targets[c.target].address;
        }
        if (c.pin->table->proxy_protocol_v2) return start_handshake_send(slot);
        return begin_relay(slot);
    }
    add(stats_.connect_failures, 1);
    if (c.stats) count(c.stats->connect_failures);
    detach_target(c);
    const unsigned retries = std::min(c.pin->table->connect_retries, 255U);
    switch (on_connect(res, c.attempt, retries)) {
        case ConnectStep::retry:
            return connect_next(slot);
        case ConnectStep::give_up:
            log::debug("worker {}: no target accepted the client after {} attempts; closing it",
                       index_, c.attempt + 1);
            discard_unread(c.client_fd);
            note_end(slot, "connect failed");
            close_connection(slot, CloseMode::graceful);
            return;
        case ConnectStep::relay:
            return;
    }
}

// The next distinct target of the same snapshot: walking one table, every attempt
// reaches a target not tried yet.
void Worker::Loop::connect_next(uint32_t slot) {
    Connection& c = conns_[slot];
    detach_target(c);
    close_fd(c.target_fd);
    c.target_fd = -1;
    c.target_terminated = false;
    ++c.attempt;
    add(stats_.retries, 1);
    start_connect(slot);
}

// Termination is for relaying connections. One still connecting (or sending our
// PROXY header) gives the target up: what is in flight on the target socket is
// cancelled, and its completion, whatever it reports, moves the client on.
void Worker::Loop::leave_target(uint32_t slot) {
    Connection& c = conns_[slot];
    if (c.target_terminated) return;
    c.target_terminated = true;
    cancel_target_side(slot);
}

// Not a failure of the target's (no passive report, no connect failure counted)
// nor of the client's: see on_target_terminated.
void Worker::Loop::move_off_terminated_target(uint32_t slot) {
    Connection& c = conns_[slot];
    log::debug("worker {}: left target {} while connecting (attempt {}): taken out of service",
               index_, c.pin->table->targets[c.target].id, c.attempt + 1);
    if (on_target_terminated(c.attempt) == ConnectStep::retry) return connect_next(slot);
    discard_unread(c.client_fd);
    note_end(slot, "connect failed");
    close_connection(slot, CloseMode::graceful);
}

void Worker::Loop::log_connect_failure(const Connection& c, int res) {
    if (log::level() > LogLevel::debug) return;
    const RoutingTable& table = *c.pin->table;
    const RouteTarget& target = table.targets[c.target];
    std::string name = target.id;
    if (std::string address = target.address.to_string(); address != name) {
        name += fmt::format(" ({})", address);
    }
    const std::string reason =
        res == -ECANCELED ? fmt::format("timed out after {} ms", table.connect_timeout.count())
                          : fmt::format("failed: {}", error_text(res));
    log::debug("worker {}: connect to target {} {} (attempt {})", index_, name, reason,
               c.attempt + 1);
}

// Passive health: refusals and timeouts count against the target; a success
// clears its count. Other errors (out of memory, a local failure) say nothing
// about the target.
void Worker::Loop::report_connect(const Connection& c, int res) {
    PassiveHealth* passive = c.pin->table->passive.get();
    if (passive == nullptr) return;
    switch (res) {
        case 0:
            return passive->connect_succeeded(c.target);
        case -ECONNREFUSED:
        case -ECANCELED:  // the linked timeout fired
        case -ETIMEDOUT:
        case -EHOSTUNREACH:
        case -ENETUNREACH:
        case -ECONNRESET:
            return passive->connect_failed(c.target, -res);
        default:
            return;
    }
}

void Worker::Loop::detach_target(Connection& c) {
    if (!c.stats) return;
    c.stats->active.fetch_sub(1, std::memory_order_relaxed);
    c.stats.reset();
}

// proxy_protocol_v2: the header goes out before any client byte, because the
// flows start only once it is fully sent. It names the client and the address it
// connected to; with accept_proxy_protocol, those its own header named.
void Worker::Loop::start_handshake_send(uint32_t slot) {
    Connection& c = conns_[slot];
    if (c.handshake == nullptr) c.handshake = new Handshake;
    Handshake& handshake = *c.handshake;
    std::optional<SocketAddress> client =
        handshake.client ? handshake.client : peer_of(c.client_fd);
    std::optional<SocketAddress> local = handshake.local ? handshake.local : local_of(c.client_fd);
    if (!client || !local) {  // the client has gone
        note_reset(slot, true);
        return close_connection(slot, CloseMode::reset);
    }
    handshake.outbound = proxy::encode_v2_proxy(*client, *local);
    handshake.outbound_sent = 0;
    submit_handshake_send(slot);
}

void Worker::Loop::submit_handshake_send(uint32_t slot) {
    Connection& c = conns_[slot];
    const Handshake& handshake = *c.handshake;
    io_uring_prep_send(connection_sqe(slot, Op::send_handshake), c.target_fd,
                       handshake.outbound.bytes.data() + handshake.outbound_sent,
                       handshake.outbound.size - handshake.outbound_sent,
                       MSG_NOSIGNAL | MSG_WAITALL);
    ++c.inflight;
}

void Worker::Loop::handle_handshake_send(uint32_t slot, int res) {
    Connection& c = conns_[slot];
    if (c.target_terminated) return move_off_terminated_target(slot);
    Handshake& handshake = *c.handshake;
    if (res == -EAGAIN || res == -EINTR) return submit_handshake_send(slot);
    if (res <= 0) {
        note_reset(slot, false);
        return close_connection(slot, CloseMode::reset);
    }
    handshake.outbound_sent = static_cast<uint8_t>(handshake.outbound_sent + res);
    if (handshake.outbound_sent < handshake.outbound.size) return submit_handshake_send(slot);
    begin_relay(slot);
}

// ---------------------------------------------------------------------------
// Relaying: each flow is recv -> send -> recv ...; see connection.hpp.

void Worker::Loop::on_connection_event(UserData ud, const io_uring_cqe& cqe) {
    uint16_t bid = kNoBuffer;
    if (cqe.flags & IORING_CQE_F_BUFFER) {
        bid = static_cast<uint16_t>(cqe.flags >> IORING_CQE_BUFFER_SHIFT);
        buffers_.consumed();
    }
    if (ud.slot >= conns_.size() || conns_[ud.slot].generation != ud.generation ||
        conns_[ud.slot].phase == Phase::free) {
        // Cannot happen while inflight is counted right; keep the buffers whole anyway.
        log::debug("worker {}: stale completion for slot {}", index_, ud.slot);
        add(stats_.stale_completions, 1);
        release_buffer(bid);
        return;
    }
    Connection& c = conns_[ud.slot];
    if ((cqe.flags & IORING_CQE_F_MORE) == 0) {  // a watch poll stays armed
        --c.inflight;
        c.pending = static_cast<uint16_t>(c.pending & ~pending_bit(ud.op));
    }
    if (ud.op == Op::connect_timeout || ud.op == Op::handshake_timeout) {
        --c.timeouts;
        if (c.phase == Phase::relaying && c.timeouts == 0) {  // deferred by begin_relay
            unpin(c);
            free_handshake(c);
        }
    }
    if (c.phase == Phase::closing) {
        release_buffer(bid);
        if (c.inflight == 0) free_slot(ud.slot);
        return;
    }
    const FlowDir dir = flow_of(ud.op);
    switch (ud.op) {
        case Op::recv_handshake:
            return handle_handshake_recv(ud.slot, cqe.res, bid);
        case Op::connect:
            return handle_connect(ud.slot, cqe.res);
        case Op::send_handshake:
            return handle_handshake_send(ud.slot, cqe.res);
        case Op::recv_client:
        case Op::recv_target: {
            if (c.flow(dir).state == FlowState::splicing) {  // a poll for the source's data
                return on_splice_ready(ud.slot, dir, cqe.res, true);
            }
            if (cqe.res > 0) note_bytes(ud.slot, dir, static_cast<uint64_t>(cqe.res));
            const bool nonempty = (cqe.flags & IORING_CQE_F_SOCK_NONEMPTY) != 0;
            int res = cqe.res;
            if (res == 0 && c.flow(other(dir)).state != FlowState::done &&
                eof_hides_reset(c.source_fd(dir))) {
                res = -ECONNRESET;
            }
            const Decision decision =
                on_recv(c.flow(dir), res, bid, nonempty, buffers_.buffer_size());
            if (decision.step == Step::reset) note_reset(ud.slot, ud.op == Op::recv_client);
            return carry_out(ud.slot, dir, decision);
        }
        case Op::send_target:
        case Op::send_client: {
            if (c.flow(dir).state == FlowState::splicing) {  // a poll for room in the sink
                return on_splice_ready(ud.slot, dir, cqe.res, false);
            }
            if (cqe.res > 0) c.last_active = static_cast<uint32_t>(now_tick_);
            const Decision decision = on_send(c.flow(dir), cqe.res);
            if (decision.step == Step::reset) note_reset(ud.slot, ud.op == Op::send_client);
            return carry_out(ud.slot, dir, decision);
        }
        case Op::watch_client:
        case Op::watch_target:
            // POLLERR: the peer reset the socket. A FIN alone (POLLRDHUP) is left to
            // the recv that reaches it, after the data before it.
            if (cqe.res > 0 && (cqe.res & POLLERR) != 0) {
                note_reset(ud.slot, ud.op == Op::watch_client);
                close_connection(ud.slot, CloseMode::reset);
            }
            return;
        default:
            return;  // connect_timeout, handshake_timeout: their op's completion decides
    }
}

// From here on the connection is in the idle wheel. The client data that came
// with its PROXY header, if any, is the upstream flow's first send.
void Worker::Loop::begin_relay(uint32_t slot) {
    Connection& c = conns_[slot];
    // A linked timeout still in flight points into the pin (connect) or the handshake
    // (PROXY header): they go when its completion arrives.
    if (c.timeouts == 0) {
        unpin(c);
        free_handshake(c);
    }
    c.phase = Phase::relaying;
    c.last_active = static_cast<uint32_t>(now_tick_);
    wheel_.schedule({slot, c.generation}, idle_due(c.last_active, c.idle_ticks));
    Flow& up = c.flow(FlowDir::upstream);
    if (up.buf != kNoBuffer) {
        count(c.stats->bytes_sent, up.len - up.sent);
        up.state = FlowState::sending;
        up.source_ready = false;  // unknown: no MSG_MORE on this send (see send_more)
        submit_send(slot, FlowDir::upstream);
    } else {
        submit_recv(slot, FlowDir::upstream);
    }
    submit_recv(slot, FlowDir::downstream);
    // A side is not read while its peer's send is pending, nor once its FIN was
    // read, so a reset of that side would wait for the send to drain (or the idle
    // timeout): watch both sockets for an error meanwhile. Multishot, because the
    // kernel always adds POLLRDHUP: a FIN completes it once and it stays armed for a
    // later reset. One poll per socket per connection, cancelled with the rest.
    io_uring_prep_poll_multishot(connection_sqe(slot, Op::watch_client), c.client_fd, POLLERR);
    io_uring_prep_poll_multishot(connection_sqe(slot, Op::watch_target), c.target_fd, POLLERR);
    c.inflight += 2;
}

// Single-shot recv into a buffer the kernel picks from the ring: an idle
// connection holds no buffer, and nothing is read until the previous chunk of
// this flow has been sent (multishot recv would read on regardless).
void Worker::Loop::submit_recv(uint32_t slot, FlowDir dir) {
    Connection& c = conns_[slot];
    Flow& flow = c.flow(dir);
    start_recv(flow);
    io_uring_sqe* s = connection_sqe(slot, recv_op(dir));
    io_uring_prep_recv(s, c.source_fd(dir), nullptr, 0, 0);
    s->flags |= IOSQE_BUFFER_SELECT;
    s->buf_group = buffers_.group();
    // Nothing queued last time: wait for readiness rather than try, fail and arm.
    if (!flow.source_ready) s->ioprio |= IORING_RECVSEND_POLL_FIRST;
    ++c.inflight;
}

void Worker::Loop::submit_send(uint32_t slot, FlowDir dir) {
    Connection& c = conns_[slot];
    const Flow& flow = c.flow(dir);
    // MSG_WAITALL makes the kernel finish short sends itself; a short completion
    // still gets the remainder resubmitted by on_send.
    io_uring_prep_send(
        connection_sqe(slot, send_op(dir)), c.sink_fd(dir), buffers_.data(flow.buf) + flow.sent,
        flow.len - flow.sent,
        MSG_NOSIGNAL | MSG_WAITALL | (send_more(flow, buffers_.buffer_size()) ? MSG_MORE : 0));
    ++c.inflight;
}

void Worker::Loop::carry_out(uint32_t slot, FlowDir dir, Decision decision) {
    release_buffer(decision.release);
    switch (decision.step) {
        case Step::recv:
            return submit_recv(slot, dir);
        case Step::send:
            return submit_send(slot, dir);
        case Step::wait_buffer:
            // The last send may have left a partial segment corked (send_more):
            // push it now rather than when a buffer comes back. Rare: starvation only.
            set_no_delay(conns_[slot].sink_fd(dir));
            return park(encode(recv_op(dir), slot, conns_[slot].generation));
        case Step::finish:
            return finish_flow(slot, dir);
        case Step::reset:
            return close_connection(slot, CloseMode::reset);
        case Step::splice:
            if (!move_to_splice(slot, dir)) submit_recv(slot, dir);
            return;
    }
}

void Worker::Loop::note_bytes(uint32_t slot, FlowDir dir, uint64_t n) {
    Connection& c = conns_[slot];
    const bool up = dir == FlowDir::upstream;
    add(up ? stats_.bytes_in : stats_.bytes_out, n);
    count(up ? c.stats->bytes_sent : c.stats->bytes_received, n);
    if (AccessRecord* a = access(slot)) (up ? a->bytes_up : a->bytes_down) += n;
    c.last_active = static_cast<uint32_t>(now_tick_);
}

// EOF on one side becomes EOF on the other; the opposite flow keeps going.
void Worker::Loop::finish_flow(uint32_t slot, FlowDir dir) {
    Connection& c = conns_[slot];
    if (c.both_flows_done()) {
        close_connection(slot, CloseMode::graceful);  // close() sends the last FIN
        return;
    }
    // A plain syscall: IORING_OP_SHUTDOWN would be punted to an io-wq thread.
    ::shutdown(c.sink_fd(dir), SHUT_WR);
}

// ---------------------------------------------------------------------------
// Splicing. Each call is a non-blocking splice(2) on the worker's own thread: the
// sockets are made non-blocking when a flow first moves, so a call never sleeps, and
// no io-wq thread is involved (IORING_OP_SPLICE always runs in one, and blocks it
// while the source is empty). Readiness comes from single-shot polls under the
// flow's own recv and send tags, so a teardown cancels them like any other op.

// A pipe for a flow, unless none may be had: the limit is reached, or fds are short
// (a pipe takes two that a waiting client needs more).
std::optional<Pipe> Worker::Loop::take_pipe() {
    if (short_of_fds_) return std::nullopt;
    int error = 0;
    std::optional<Pipe> pipe = pipes_.take(Clock::now(), error);
    if (pipe) return pipe;
    if (error != 0) {
        if (!std::exchange(pipe_warned_, true)) {
            log::info("worker {}: no pipe for a bulk flow ({}): such flows keep using recv/send",
                      index_, std::strerror(error));
        }
        return std::nullopt;
    }
    // All taken: one held by a flow waiting on a dry source serves better here. That
    // flow takes another when its data comes, or goes back to recv/send.
    for (auto it = spliced_.begin(); it != spliced_.end(); ++it) {
        if (!it->second.waiting_source || it->second.piped != 0) continue;
        pipe = std::move(it->second.pipe);
        spliced_.erase(it);
        return pipe;
    }
    return std::nullopt;
}

// Called where the flow would arm its next recv: its buffer is sent, so the pipe
// carries on exactly where recv/send left off.
bool Worker::Loop::move_to_splice(uint32_t slot, FlowDir dir) {
    std::optional<Pipe> pipe = take_pipe();
    if (!pipe) return false;
    Connection& c = conns_[slot];
    for (const int fd : {c.client_fd, c.target_fd}) ::fcntl(fd, F_SETFL, O_NONBLOCK);
    start_splice(c.flow(dir));
    spliced_.emplace(splice_key(slot, dir), Spliced{std::move(*pipe), 0});
    add(stats_.spliced_flows, 1);
    pump(slot, dir);
    return true;
}

// A poll completed: the source has data (or EOF, or an error), or the sink has room.
// The splice itself finds out which.
void Worker::Loop::on_splice_ready(uint32_t slot, FlowDir dir, int res, bool source_side) {
    if (res < 0) {
        note_reset(slot, (dir == FlowDir::upstream) == source_side);
        return close_connection(slot, CloseMode::reset);
    }
    pump(slot, dir);
}

// Moves the flow's bytes until the source is dry, the sink is full, the flow ends,
// or it has had its turn.
void Worker::Loop::pump(uint32_t slot, FlowDir dir) {
    Connection& c = conns_[slot];
    Flow& flow = c.flow(dir);
    auto it = spliced_.find(splice_key(slot, dir));
    if (it == spliced_.end()) {  // its pipe was taken while it waited (take_pipe)
        std::optional<Pipe> pipe = take_pipe();
        if (!pipe) {
            stop_splice(flow, true);
            return submit_recv(slot, dir);
        }
        it = spliced_.emplace(splice_key(slot, dir), Spliced{std::move(*pipe), 0}).first;
    }
    Spliced& s = it->second;
    s.waiting_source = false;
    SpliceStep step = s.piped > 0 ? SpliceStep::out : SpliceStep::in;
    bool source_side = false;  // whose socket the last splice failed on
    uint64_t turn = 0;         // bytes from the source since this call began
    for (unsigned ins = 0;;) {
        switch (step) {
            case SpliceStep::in: {
                if (ins++ == kSpliceInsPerTurn) {
                    // Its turn is over: wait for the source as a dry one does (ready at
                    // once if it is not), offering the empty pipe meanwhile.
                    step = SpliceStep::wait_source;
                    break;
                }
                const ssize_t n = ::splice(c.source_fd(dir), nullptr, s.pipe.write_end(), nullptr,
                                           pipes_.size(), SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
                long res = n >= 0 ? n : -errno;
                if (res > 0) {
                    note_bytes(slot, dir, static_cast<uint64_t>(res));
                    turn += static_cast<uint64_t>(res);
                }
                if (res == 0 && c.flow(other(dir)).state != FlowState::done &&
                    eof_hides_reset(c.source_fd(dir))) {
                    res = -ECONNRESET;
                }
                step = on_splice_in(flow, res, s.piped, turn >= buffers_.buffer_size());
                source_side = true;
                break;
            }
            case SpliceStep::out: {
                const ssize_t n = ::splice(s.pipe.read_end(), nullptr, c.sink_fd(dir), nullptr,
                                           s.piped, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
                if (n > 0) c.last_active = static_cast<uint32_t>(now_tick_);
                step = on_splice_out(n >= 0 ? n : -errno, s.piped);
                source_side = false;
                break;
            }
            case SpliceStep::wait_sink:
                io_uring_prep_poll_add(connection_sqe(slot, send_op(dir)), c.sink_fd(dir), POLLOUT);
                ++c.inflight;
                return;
            case SpliceStep::wait_source:
                s.waiting_source = true;
                io_uring_prep_poll_add(connection_sqe(slot, recv_op(dir)), c.source_fd(dir),
                                       POLLIN);
                ++c.inflight;
                return;
            case SpliceStep::leave:
                end_splice(slot, dir);
                return submit_recv(slot, dir);
            case SpliceStep::finish:
                end_splice(slot, dir);
                return finish_flow(slot, dir);
            case SpliceStep::reset:
                note_reset(slot, (dir == FlowDir::upstream) == source_side);
                return close_connection(slot, CloseMode::reset);
        }
    }
}

// The pipe goes back to the pool; one that still holds bytes (the connection is
// being torn down) is closed instead.
void Worker::Loop::end_splice(uint32_t slot, FlowDir dir) {
    const auto it = spliced_.find(splice_key(slot, dir));
    if (it == spliced_.end()) return;
    pipes_.give_back(std::move(it->second.pipe), it->second.piped == 0);
    spliced_.erase(it);
}

// A recv found no buffer: it waits, as `waiter` (its user_data), for one to come back.
void Worker::Loop::park(uint64_t waiter) {
    buffers_.starved();
    waiters_.push_back(waiter);
    add(stats_.buffer_waits, 1);
}

// Re-arms parked recvs, at most as many as there are buffers to receive into.
void Worker::Loop::rearm_waiters() {
    uint32_t budget = buffers_.posted();
    while (budget > 0 && !waiters_.empty()) {
        const UserData w = decode(waiters_.front());
        waiters_.pop_front();
        if (w.slot >= conns_.size()) continue;
        const Connection& c = conns_[w.slot];
        if (c.generation != w.generation) {  // closed since it parked; maybe reused
            add(stats_.stale_waiters, 1);
            continue;
        }
        if (w.op == Op::recv_handshake) {
            if (c.phase != Phase::handshake) continue;
            submit_handshake_recv(w.slot);
            --budget;
            continue;
        }
        const FlowDir dir = flow_of(w.op);
        if (c.phase != Phase::relaying || c.flow(dir).state != FlowState::waiting_buffer) continue;
        submit_recv(w.slot, dir);
        --budget;
    }
}

// ---------------------------------------------------------------------------
// Idle timeout (NLB tcp.idle_timeout): see idle_wheel.hpp. One io_uring timeout
// for the wheel's next due tick; nothing per byte but a store of the tick.

void Worker::Loop::update_clock() {
    now_tick_ = static_cast<uint64_t>((Clock::now() - epoch_) / kIdleTick);
}

// The timer only moves earlier here (a new connection with a shorter timeout); a
// fired timer re-arms for whatever is next.
void Worker::Loop::arm_idle_timer() {
    const uint64_t due = wheel_.next_due();
    if (draining_ || due == IdleWheel::kNever || due >= idle_timer_tick_) return;
    idle_ts_ = to_timespec((epoch_ + due * kIdleTick).time_since_epoch());
    if (idle_timer_tick_ == IdleWheel::kNever) {
        io_uring_prep_timeout(sqe(encode(Op::idle_timer)), &idle_ts_, 0, IORING_TIMEOUT_ABS);
        ++worker_ops_;
    } else {
        // If it fired meanwhile the update fails harmlessly: its completion re-arms.
        io_uring_prep_timeout_update(sqe(encode(Op::ignore)), &idle_ts_, encode(Op::idle_timer),
                                     IORING_TIMEOUT_ABS);
    }
    idle_timer_tick_ = due;
}

// NLB resets both sides of an idle connection; so does stickyd, so clients and
// targets see the same thing as behind the NLB (and no FIN handshake is left
// waiting on a peer that may be gone).
void Worker::Loop::on_idle_timer() {
    --worker_ops_;
    idle_timer_tick_ = IdleWheel::kNever;
    if (draining_) return;
    unsigned closed = 0;
    wheel_.expire(now_tick_, [&](const WheelEntry& e) {
        if (e.slot >= conns_.size()) return;
        Connection& c = conns_[e.slot];
        if (c.generation != e.generation || c.phase != Phase::relaying) return;  // closed since
        if (idle_due(c.last_active, c.idle_ticks) <= now_tick_) {
            c.last_active = std::max(c.last_active, last_progress_tick(c));
        }
        const uint64_t due = idle_due(c.last_active, c.idle_ticks);
        if (due > now_tick_) {
            wheel_.schedule(e, due);
            return;
        }
        note_end(e.slot, "idle timeout");
        close_connection(e.slot, CloseMode::reset);
        ++closed;
    });
    if (closed > 0) {
        add(stats_.idle_timeouts, closed);
        log::debug("worker {}: reset {} idle connections", index_, closed);
    }
}

// Activity is progress in either direction, and a slow reader draining a socket
// buffer completes none of our ops: a send blocked on a full buffer completes only
// once all of it is taken (MSG_WAITALL; without it the kernel would still wake the
// sender only once half its queue is free), and data already handed over just sits
// in the socket. The reader's progress may not even show on the wire: a client with
// a large receive buffer reads from it for minutes behind a closed window while we
// only send zero-window probes. So before calling a connection idle, ask the kernel:
// a socket holding data for a peer that still acknowledges it (no retransmissions
// pending; probes, like the keepalives that reset the NLB's idle timer, are answered)
// waits on its reader and is not idle; otherwise the last data it transmitted counts.
// Only at expiry, so busy connections never pay for it. A peer that vanished leaves
// retransmissions unanswered and its connection goes idle as usual.
uint32_t Worker::Loop::last_progress_tick(const Connection& c) const {
    uint64_t latest = 0;
    for (const int fd : {c.client_fd, c.target_fd}) {
        tcp_info info{};
        socklen_t len = sizeof info;
        if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) continue;
        if (info.tcpi_retransmits > 0) continue;
        int queued = 0;
        if (::ioctl(fd, SIOCOUTQ, &queued) == 0 && queued > 0)
            return static_cast<uint32_t>(now_tick_);
        const uint64_t ago = info.tcpi_last_data_sent / kIdleTick.count();
        latest = std::max(latest, now_tick_ - std::min(now_tick_, ago));
    }
    return static_cast<uint32_t>(latest);
}

// ---------------------------------------------------------------------------
// Teardown

std::optional<uint32_t> Worker::Loop::allocate_slot() {
    if (!free_slots_.empty()) {
        uint32_t slot = free_slots_.back();
        free_slots_.pop_back();
        return slot;
    }
    if (conns_.size() >= options_.max_connections) return std::nullopt;
    conns_.emplace_back();
    return static_cast<uint32_t>(conns_.size() - 1);
}

// Cancels whatever is in flight on both sockets; the slot is freed when the
// last completion arrives. A reset forwards an abort as an RST on both sides.
void Worker::Loop::close_connection(uint32_t slot, CloseMode mode) {
    Connection& c = conns_[slot];
    if (c.phase == Phase::closing || c.phase == Phase::free) return;
    // The pin stays until free_slot: a connect SQE queued in this batch reads the
    // target's address and its linked timeout from the pinned snapshot.
    c.phase = Phase::closing;
    if (mode == CloseMode::reset) {
        note_end(slot, "reset");
        set_reset_on_close(c.client_fd);
        if (c.target_fd >= 0) set_reset_on_close(c.target_fd);
    }
    if (c.inflight == 0) {
        free_slot(slot);
        return;
    }
    cancel_client_side(slot);
    if (c.target_fd >= 0) cancel_target_side(slot);
}

AccessRecord* Worker::Loop::access(uint32_t slot) {
    return slot < access_.size() ? access_[slot].get() : nullptr;
}

void Worker::Loop::note_end(uint32_t slot, std::string_view why) {
    if (AccessRecord* a = access(slot); a != nullptr && a->end.empty()) a->end = why;
}

// An error on one socket (in practice its peer's RST) resets both: the log says
// whose socket it was.
void Worker::Loop::note_reset(uint32_t slot, bool client_side) {
    note_end(slot, client_side ? "client reset" : "target reset");
}

void Worker::Loop::free_slot(uint32_t slot) {
    if (AccessRecord* a = access(slot)) {
        log::info("{}", access_line(*a, Clock::now()));
        access_[slot].reset();
    }
    Connection& c = conns_[slot];
    close_fd(c.client_fd);
    close_fd(c.target_fd);
    for (const Flow& flow : c.flows) release_buffer(flow.buf);
    for (const FlowDir dir : {FlowDir::upstream, FlowDir::downstream}) end_splice(slot, dir);
    detach_target(c);
    unpin(c);
    free_handshake(c);
    --listeners_.items[c.listener].connections;
    const uint32_t generation = next_generation(c.generation);
    c = Connection{};
    c.generation = generation;
    free_slots_.push_back(slot);
    --live_;
    subtract(stats_.active, 1);
}

void Worker::Loop::free_handshake(Connection& c) {
    delete c.handshake;
    c.handshake = nullptr;
}

// Every op of a connection goes through here, so `pending` knows what a teardown
// has to cancel.
io_uring_sqe* Worker::Loop::connection_sqe(uint32_t slot, Op op) {
    Connection& c = conns_[slot];
    c.pending = static_cast<uint16_t>(c.pending | pending_bit(op));
    return sqe(encode(op, slot, c.generation));
}

// By tag, never by fd: the kernel finds a tag in its hash of pending requests, while
// a cancel by fd walks every request of the io_uring, which made each teardown cost
// O(open connections) (3 ms each with 9,400 open). A linked timeout goes with its op.
void Worker::Loop::cancel_pending(uint32_t slot, std::initializer_list<Op> ops) {
    const Connection& c = conns_[slot];
    for (Op op : ops) {
        if ((c.pending & pending_bit(op)) == 0) continue;
        io_uring_prep_cancel64(sqe(encode(Op::ignore)), encode(op, slot, c.generation), 0);
    }
}

void Worker::Loop::cancel_client_side(uint32_t slot) {
    cancel_pending(slot, {Op::recv_handshake, Op::recv_client, Op::send_client, Op::watch_client});
}

void Worker::Loop::cancel_target_side(uint32_t slot) {
    cancel_pending(slot, {Op::connect, Op::send_handshake, Op::recv_target, Op::send_target,
                          Op::watch_target});
}

// Batched with everything else in the next submit instead of a syscall each;
// but while fds are short a queued close would hold the fd until that submit,
// and whoever is given it now would find none.
void Worker::Loop::close_fd(int fd) {
    if (fd < 0) return;
    if (short_of_fds_) {
        ::close(fd);
        resume_due_ = true;
        return;
    }
    io_uring_sqe* s = sqe(encode(Op::ignore));
    io_uring_prep_close(s, fd);
    if (uring_.can_skip_success()) s->flags |= IOSQE_CQE_SKIP_SUCCESS;
}

void Worker::Loop::release_buffer(uint16_t bid) {
    if (bid != kNoBuffer) buffers_.release(bid);
}

// ---------------------------------------------------------------------------
// Commands from other threads: queued under a mutex, then the eventfd wakes the
// loop, which applies them in order between completions.

void Worker::Loop::post(Command command) {
    commands_.push(std::move(command));
    wake();
}

void Worker::Loop::run_commands() {
    for (Command& command : commands_.take()) {
        std::visit(
            [this](auto& cmd) {
                using T = std::decay_t<decltype(cmd)>;
                if constexpr (std::is_same_v<T, TerminateCommand>) {
                    terminate_targets(cmd.targets);
                } else if constexpr (std::is_same_v<T, AddListenerCommand>) {
                    add_listener(std::move(cmd.listener));
                } else if constexpr (std::is_same_v<T, UpdateListenerCommand>) {
                    update_listener(std::move(cmd.settings));
                } else {
                    remove_listener(cmd.name);
                }
            },
            command);
    }
}

// Connection termination (unhealthy target, end of a deregistration delay): a
// walk over the connections, but only when asked, never per batch. Relaying
// connections are reset; connecting ones move on to their next target (the client
// sees nothing). Connections still reading a PROXY header, or waiting for an fd,
// have no target yet.
void Worker::Loop::terminate_targets(const std::vector<std::shared_ptr<TargetStats>>& targets) {
    if (targets.empty()) return;
    std::vector<const TargetStats*> doomed;
    for (const auto& t : targets) doomed.push_back(t.get());
    std::sort(doomed.begin(), doomed.end());
    unsigned closed = 0;
    unsigned moved = 0;
    for (uint32_t slot = 0; slot < conns_.size(); ++slot) {
        const Connection& c = conns_[slot];
        if (c.phase != Phase::connecting && c.phase != Phase::relaying) continue;
        if (!c.stats || !std::binary_search(doomed.begin(), doomed.end(), c.stats.get())) continue;
        if (c.phase == Phase::connecting) {
            leave_target(slot);
            ++moved;
            continue;
        }
        note_end(slot, "deregistered");
        close_connection(slot, CloseMode::reset);
        ++closed;
    }
    if (closed > 0)
        log::info("worker {}: reset {} connections to terminated targets", index_, closed);
    if (moved > 0) {
        log::info(
            "worker {}: moving {} connecting clients off terminated targets to their next targets",
            index_, moved);
    }
}

std::optional<uint32_t> Worker::Loop::find_listener(const std::string& name) const {
    for (uint32_t i = 0; i < listeners_.items.size(); ++i) {
        const ListenerState& l = listeners_.items[i];
        if (!l.removed && l.settings.config.name == name) return i;
    }
    return std::nullopt;
}

// The listener hands out no more connections from its snapshot; connections
// still connecting keep it alive until they are done.
void Worker::Loop::drop_pin(ListenerState& listener) {
    SnapshotPin* pin = std::exchange(listener.pin, nullptr);
    if (pin == nullptr) return;
    pin->current = false;
    if (pin->users == 0) std::erase_if(pins_, [pin](const auto& p) { return p.get() == pin; });
}

void Worker::Loop::add_listener(WorkerListener listener) {
    if (stopping_) {  // a reload racing shutdown: nothing will accept any more
        ::close(listener.fd);
        return;
    }
    auto& items = listeners_.items;
    auto free_index = std::find_if(items.begin(), items.end(),
                                   [](const ListenerState& l) { return l.reusable(); });
    if (free_index == items.end()) {
        if (items.size() >= UINT16_MAX) {
            log::error("worker {}: cannot add listener {}: too many listeners", index_,
                       listener.settings.config.name);
            ::close(listener.fd);
            return;
        }
        free_index = items.insert(items.end(), ListenerState{});
    }
    *free_index = ListenerState{};
    free_index->fd = listener.fd;
    free_index->settings = std::move(listener.settings);
    free_index->shared = listener.shared;
    set_nonblocking(listener.fd);
    start_accepting(static_cast<uint32_t>(free_index - items.begin()));
}

void Worker::Loop::update_listener(ListenerSettings settings) {
    std::optional<uint32_t> index = find_listener(settings.config.name);
    if (!index) {
        log::error("worker {}: cannot update listener {}: no such listener", index_,
                   settings.config.name);
        return;
    }
    ListenerState& l = listeners_.items[*index];
    if (settings.route != l.settings.route) drop_pin(l);
    l.settings = std::move(settings);
}

void Worker::Loop::remove_listener(const std::string& name) {
    std::optional<uint32_t> index = find_listener(name);
    if (!index) {
        log::error("worker {}: cannot remove listener {}: no such listener", index_, name);
        return;
    }
    ListenerState& l = listeners_.items[*index];
    // By user_data, so closing the fd right away is fine: the pending accept holds
    // its own reference until the cancel runs.
    if (l.accepting) io_uring_prep_cancel64(sqe(encode(Op::ignore)), encode(Op::accept, *index), 0);
    if (l.backoff_pending) {
        io_uring_prep_cancel64(sqe(encode(Op::ignore)), encode(Op::accept_backoff, *index), 0);
    }
    if (l.fd >= 0) ::close(l.fd);
    l.fd = -1;
    l.removed = true;
    drop_pin(l);
}

// ---------------------------------------------------------------------------
// Stopping: stop() writes the eventfd; the loop stops accepting, lets
// connections finish until the deadline, resets the rest, then drains.

void Worker::Loop::request_stop(std::chrono::milliseconds grace) {
    const int64_t deadline = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                 (Clock::now() + grace).time_since_epoch())
                                 .count();
    int64_t current = stop_deadline_ns_.load();
    while (deadline < current && !stop_deadline_ns_.compare_exchange_weak(current, deadline)) {
    }
    wake();
}

void Worker::Loop::wake() {
    if (!wake_.ring()) {
        log::error("worker {}: cannot wake the loop: {}", index_, std::strerror(errno));
    }
}

void Worker::Loop::arm_wake() {
    wake_.arm(uring_, encode(Op::wake));
    ++worker_ops_;
}

void Worker::Loop::on_wake(int res) {
    --worker_ops_;
    if (draining_) return;
    if (res < 0 && res != -EINTR && res != -EAGAIN) {
        throw std::runtime_error(fmt::format("cannot read the stop eventfd: {}", error_text(res)));
    }
    arm_wake();  // a second stop() (shorter grace) must still get through
    run_commands();
    const int64_t deadline_ns = stop_deadline_ns_.load();
    if (deadline_ns == kNoDeadline) return;
    if (!stopping_) stop_accepting();
    const Clock::time_point deadline{std::chrono::nanoseconds(deadline_ns)};
    if (deadline <= Clock::now()) {
        force_close_all();
    } else if (deadline < armed_deadline_) {
        arm_stop_timer(deadline);
    }
}

void Worker::Loop::stop_accepting() {
    stopping_ = true;
    for (uint32_t i = 0; i < listeners_.items.size(); ++i) {
        ListenerState& l = listeners_.items[i];
        if (l.removed) continue;
        // By user_data, so closing the fd right away is fine: the pending accept
        // holds its own reference until the cancel runs.
        io_uring_prep_cancel64(sqe(encode(Op::ignore)), encode(Op::accept, i), 0);
        io_uring_prep_cancel64(sqe(encode(Op::ignore)), encode(Op::accept_backoff, i), 0);
        ::close(l.fd);
        l.fd = -1;
    }
    // Clients still waiting for an fd never got a target: they go the way of the
    // backlog that closing the listeners just reset.
    std::vector<uint64_t> waiting;
    waiting.swap(fd_waiters_);
    for (uint64_t encoded : waiting) {
        if (!still_waiting(encoded)) continue;
        const uint32_t slot = decode(encoded).slot;
        note_end(slot, "shutdown");
        close_connection(slot, CloseMode::reset);
    }
    log::debug("worker {}: stopped accepting; {} connections open", index_, live_);
}

void Worker::Loop::arm_stop_timer(Clock::time_point deadline) {
    armed_deadline_ = deadline;
    // Absolute CLOCK_MONOTONIC, the clock steady_clock reads.
    stop_ts_ = to_timespec(deadline.time_since_epoch());
    io_uring_prep_timeout(sqe(encode(Op::stop_timer)), &stop_ts_, 0, IORING_TIMEOUT_ABS);
    ++worker_ops_;
}

void Worker::Loop::on_stop_timer(int res) {
    --worker_ops_;
    if (res == -ETIME && !draining_) force_close_all();
}

void Worker::Loop::force_close_all() {
    unsigned count = 0;
    for (uint32_t slot = 0; slot < conns_.size(); ++slot) {
        const Phase phase = conns_[slot].phase;
        if (phase != Phase::handshake && phase != Phase::connecting && phase != Phase::relaying) {
            continue;
        }
        note_end(slot, "shutdown");
        close_connection(slot, CloseMode::reset);
        ++count;
    }
    if (count > 0)
        log::info("worker {}: shutdown grace expired; reset {} connections", index_, count);
}

// No connections left: cancel the worker's own ops (wake read, timers) and let
// run() return once their completions are in.
void Worker::Loop::begin_drain() {
    draining_ = true;
    io_uring_prep_cancel64(sqe(encode(Op::ignore)), 0,
                           IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
}

// The loop threw, and its ring may never turn again, so nothing here goes through
// it: plain syscalls only, none of which can throw. Closing the fds would not do:
// the SQEs in flight hold their own references, which would keep a listener in its
// SO_REUSEPORT group (the kernel would go on queueing clients there, and nobody
// would accept them) and every client connected, waiting for bytes that never come.
void Worker::Loop::abandon() noexcept {
    for (ListenerState& l : listeners_.items) {
        // Leaves the group and resets the clients queued on it, who can retry.
        if (l.fd >= 0 && !l.shared) ::shutdown(l.fd, SHUT_RDWR);
    }
    unsigned reset = 0;
    for (Connection& c : conns_) {
        if (c.phase == Phase::free) continue;
        for (const int fd : {c.client_fd, c.target_fd}) {
            if (fd < 0) continue;
            // connect(AF_UNSPEC) disconnects a TCP socket however many references it
            // has: an RST, so neither peer takes a cut-off stream for a whole one.
            sockaddr any{};
            any.sa_family = AF_UNSPEC;
            ::connect(fd, &any, sizeof any);
        }
        ++reset;
    }
    stats_.active.store(0, std::memory_order_relaxed);
    try {
        log::error("worker {}: failed; reset its {}", index_, count_of(reset, "connection"));
    } catch (...) {  // out of memory, say: the caller's own line will tell
    }
}

// ---------------------------------------------------------------------------

Worker::Worker(unsigned index, std::vector<WorkerListener> listeners, WorkerOptions options) {
    try {
        loop_ = std::make_unique<Loop>(index, std::move(listeners), options, stats_);
    } catch (const std::exception& e) {
        throw std::runtime_error(fmt::format("worker {}: {}", index, e.what()));
    }
}

Worker::~Worker() = default;

void Worker::run() {
    try {
        loop_->run();
    } catch (...) {
        loop_->abandon();
        throw;
    }
}

void Worker::stop(std::chrono::milliseconds grace) {
    loop_->request_stop(grace);
}

void Worker::terminate(std::vector<std::shared_ptr<TargetStats>> targets) {
    loop_->post(TerminateCommand{std::move(targets)});
}

void Worker::add_listener(WorkerListener listener) {
    loop_->post(AddListenerCommand{std::move(listener)});
}

void Worker::update_listener(ListenerSettings settings) {
    loop_->post(UpdateListenerCommand{std::move(settings)});
}

void Worker::remove_listener(const std::string& name) {
    loop_->post(RemoveListenerCommand{name});
}

}  // namespace stickyd
