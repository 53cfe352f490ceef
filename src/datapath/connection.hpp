// The per-connection state and the pure "decide" half of the data path.
//
// The worker turns each completion into a call to one of the functions below,
// which update the state and say what to do next; the worker then submits it.
// Nothing here touches a socket or io_uring, so the unit tests drive these
// functions with synthetic completions.
//
// A proxied connection is two independent flows:
//   upstream:   client -> target
//   downstream: target -> client
// Each flow alternates between one recv on its source and one send to its sink,
// so it holds at most one buffer and never reads while its send is pending:
// that is the backpressure. A flow ends at EOF (the sink is shut down for
// writing while the other flow keeps going); any error aborts the whole
// connection with an RST on both sides.
//
// A flow that keeps filling whole buffers (bulk) moves to splice while it does
// (like HAProxy's splice-auto): its bytes go source -> pipe -> sink inside the
// kernel, with no copy to and from user memory, and the same backpressure (the
// source is read only once the pipe is empty). Once a turn brings less than a
// buffer's worth it moves back to recv/send, so interactive connections hold no pipe
// for long, and an idle one gives its empty pipe up to any flow that needs it.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "stickyd/proxy_protocol.hpp"

namespace stickyd {

enum class FlowDir : uint8_t { upstream = 0, downstream = 1 };

inline constexpr uint16_t kNoBuffer = UINT16_MAX;

enum class FlowState : uint8_t {
    idle,            // not started (connection still connecting)
    receiving,       // a recv is in flight on the source
    waiting_buffer,  // the last recv found no free buffer; parked until one returns
    sending,         // a send of buf[sent, len) is in flight to the sink
    splicing,        // moved to splice: the worker's pipe carries it (on_splice_in/out)
    done,            // the source reached EOF and the sink was shut down for writing
};

struct Flow {
    uint32_t sent = 0;  // bytes of buf already delivered to the sink
    uint32_t len = 0;   // bytes received into buf
    uint16_t buf = kNoBuffer;
    FlowState state = FlowState::idle;
    // The last recv left data queued on the source, so the next recv should try
    // straight away instead of waiting for readiness first.
    bool source_ready : 1 = false;
    // Recvs in a row that filled a whole buffer (saturating at 3).
    uint8_t full_recvs : 2 = 0;
};

// A flow whose last kSpliceAfter recvs each filled a whole buffer with more queued
// behind it is a bulk transfer: once that buffer is sent, it moves to splice.
inline constexpr uint8_t kSpliceAfter = 2;

// Whether the send of the flow's current buffer should carry MSG_MORE: the recv
// that filled it came back short of a full buffer yet said more is already
// queued on the source. That is almost always the FIN (the kernel counts it as
// queued), so the next recv completes at once with EOF, and the sink holds the
// partial segment until then: a short reply followed by EOF leaves as one
// segment carrying the FIN instead of two. Full buffers (bulk) go out at once:
// corking them costs more CPU per byte than it saves in segments. Only valid
// right after on_recv (a flow that starts with data from elsewhere has no such
// promise); a recv that then has to wait for a buffer must push the sink.
inline bool send_more(const Flow& flow, uint32_t buffer_size) {
    return flow.source_ready && flow.len < buffer_size;
}

// What the worker does next for a flow.
enum class Step : uint8_t {
    recv,         // arm a recv on the source (IOSQE_BUFFER_SELECT)
    send,         // send buf[sent, len) to the sink
    wait_buffer,  // park until buffers are returned to the ring
    finish,       // EOF: shut down the sink for writing (close if the other flow is done)
    reset,        // error on either socket: RST both sides and tear down
    splice,       // the buffer is sent and the flow keeps its buffers full: move it to
                  // splice if a pipe is free, else recv as usual
};

struct Decision {
    Step step;
    uint16_t release = kNoBuffer;  // buffer to hand back to the ring, if any
};

// Before a recv is submitted (first arm, or re-arm after waiting for a buffer).
void start_recv(Flow& flow);

// A recv on the source completed: res = bytes (0 = EOF) or -errno; bid = the
// buffer the kernel filled (kNoBuffer if none); source_nonempty = the CQE said
// more data is queued (IORING_CQE_F_SOCK_NONEMPTY); buffer_size = what a buffer holds.
Decision on_recv(Flow& flow, int res, uint16_t bid, bool source_nonempty, uint32_t buffer_size);

// A send to the sink completed: res = bytes sent or -errno.
Decision on_send(Flow& flow, int res);

// A spliced flow, one non-blocking splice(2) at a time: source -> pipe ("in") while
// the pipe is empty, pipe -> sink ("out") while it holds data.
enum class SpliceStep : uint8_t {
    out,          // the pipe holds data: splice it to the sink
    in,           // the pipe is empty: splice more from the source
    wait_sink,    // the sink's send buffer is full: poll it for room
    wait_source,  // the source ran dry after a bulk turn: poll it, keeping the empty
                  // pipe (unless a flow that finds none free takes it meanwhile)
    leave,        // the source ran dry after a turn of less: back to recv/send, the
                  // empty pipe to the pool
    finish,       // EOF with the pipe empty: shut down the sink for writing
    reset,        // error on either socket: RST both sides and tear down
};

// Before the first splice: the flow's buffer is sent, the pipe is empty.
void start_splice(Flow& flow);

// Back to recv/send with the pipe empty: the source ran dry after a trickle, or its
// data came when no pipe was free. source_ready: data is known to be queued.
void stop_splice(Flow& flow, bool source_ready);

// splice(source -> pipe) returned res (bytes, 0 = EOF, or -errno); `piped` is what
// the pipe holds; bulk_turn: since the source was last found ready, at least a whole
// buffer's worth came from it.
SpliceStep on_splice_in(Flow& flow, long res, uint32_t& piped, bool bulk_turn);

// splice(pipe -> sink) returned res (bytes or -errno).
SpliceStep on_splice_out(long res, uint32_t& piped);

// The handshake is the PROXY protocol's part of a connection: reading the client's
// PROXY header (accept_proxy_protocol, Phase::handshake) and sending the target ours
// (proxy_protocol_v2, at the end of Phase::connecting).
enum class Phase : uint8_t {
    free,
    handshake,   // reading the client's PROXY header
    connecting,  // connecting to a target, then sending it our PROXY header if any
    relaying,
    closing,
};

struct SnapshotPin;  // worker.cpp: keeps a routing snapshot alive while connects use it
struct Handshake;    // worker.cpp: the PROXY protocol handshake, only while it runs
struct TargetStats;  // stickyd/routing.hpp

// One slot of the worker's connection table. 96 bytes: with no per-connection
// buffers this is most of the user-space cost of an idle connection. What a
// connection needs only before it relays (PROXY headers, addresses) lives in a
// separate Handshake that is freed when relaying starts, and only connections that
// use the PROXY protocol allocate one.
struct Connection {
    Flow flows[2];                   // indexed by FlowDir
    uint64_t key_hash = 0;           // the client's stickiness hash, for connect retries
    SnapshotPin* pin = nullptr;      // only while connecting
    Handshake* handshake = nullptr;  // only while a PROXY header is read or sent
    // The current target's live counters: `active` counts this connection while set.
    std::shared_ptr<TargetStats> stats;
    int client_fd = -1;
    int target_fd = -1;
    uint32_t generation = 0;   // see user_data.hpp
    uint32_t target = 0;       // index into the pinned table's targets (current attempt)
    uint32_t last_active = 0;  // idle-wheel tick of the last byte either way
    uint16_t idle_ticks = 0;   // the listener's idle timeout when accepted, in wheel ticks
    uint16_t listener = 0;     // the worker's listener it came in on (so: its target group)
    uint8_t attempt = 0;       // 0 = the owner; N = N-th retry
    uint8_t inflight = 0;      // submitted ops whose completion has not arrived yet
    uint8_t timeouts = 0;      // of those, linked timeouts (their timespecs: pin, handshake)
    // Which kinds of op are in flight, one bit per kind (the worker's op enum): at
    // most one of each kind runs at a time, so a teardown cancels each by its tag.
    uint16_t pending = 0;
    Phase phase = Phase::free;
    // Connecting: the target was terminated (unhealthy, deregistered) meanwhile; the
    // next completion on the target socket moves the client on, whatever it says.
    bool target_terminated = false;

    Flow& flow(FlowDir dir) { return flows[static_cast<unsigned>(dir)]; }
    const Flow& flow(FlowDir dir) const { return flows[static_cast<unsigned>(dir)]; }
    int source_fd(FlowDir dir) const { return dir == FlowDir::upstream ? client_fd : target_fd; }
    int sink_fd(FlowDir dir) const { return dir == FlowDir::upstream ? target_fd : client_fd; }
    bool both_flows_done() const {
        return flows[0].state == FlowState::done && flows[1].state == FlowState::done;
    }
};

inline constexpr FlowDir other(FlowDir dir) {
    return dir == FlowDir::upstream ? FlowDir::downstream : FlowDir::upstream;
}

enum class ConnectStep : uint8_t {
    relay,    // connected: start both flows
    retry,    // try attempt + 1 (the next distinct target)
    give_up,  // out of attempts: close the client
};

// The idle timeout in wheel ticks, rounded up (never closes early) and kept
// within what Connection::idle_ticks holds.
uint16_t idle_timeout_ticks(std::chrono::milliseconds timeout, std::chrono::milliseconds tick);

// The first wheel tick at which a connection last active at `last_active` has been
// idle for `idle_ticks` whole ticks. One extra tick because activity is stamped
// with the tick it happened in, which may have been almost over.
inline uint64_t idle_due(uint64_t last_active, uint16_t idle_ticks) {
    return last_active + idle_ticks + 1;
}

// accept_proxy_protocol: the client's PROXY header, read in whatever pieces the
// network delivers it.
enum class HandshakeStep : uint8_t {
    more,     // incomplete: read on
    invalid,  // cannot become a valid header (or too long): close the client
    done,     // complete: route by it; the rest of the last chunk is client data
};

struct HandshakeOutcome {
    HandshakeStep step = HandshakeStep::more;
    std::string reason;         // invalid: why, one short phrase
    size_t payload_offset = 0;  // done: where client data starts in the last chunk
    proxy::ProxyHeader header;  // done
};

// The most header bytes (TLVs included) a client may send before its data.
inline constexpr size_t kMaxInboundHandshake = 4096;

// Appends `chunk` to `pending` (the bytes read so far) and parses them.
HandshakeOutcome on_handshake_bytes(std::vector<uint8_t>& pending, std::span<const uint8_t> chunk,
                                    size_t limit = kMaxInboundHandshake);

// A connect completed with res (0 or -errno; -ECANCELED = the linked timeout fired).
ConnectStep on_connect(int res, unsigned attempt, unsigned connect_retries);

// The target was terminated while the client was still connecting to it (its
// connect, or our PROXY header, in flight). Termination is for relaying
// connections: the client moves on to the next target, counted as a retry, even
// when it was on its last attempt (one extra attempt per termination, so a
// termination alone never costs a client its connection and cannot loop).
ConnectStep on_target_terminated(unsigned attempt);

enum class AcceptStep : uint8_t {
    rearm,     // transient, tied to one client: accept again now
    back_off,  // resource exhaustion or unknown: wait, then accept again (never spin)
};

// A multishot accept ended with -err.
AcceptStep on_accept_error(int err);

// The accept back-off: 100 ms, doubling up to 1 s. `current` 0 = first failure.
std::chrono::milliseconds next_backoff(std::chrono::milliseconds current);

}  // namespace stickyd
