// The one place that encodes and decodes io_uring CQE user_data.
//
// Every SQE a loop submits (a worker's, the control thread's) carries a 64-bit tag
// that says what the completion is about. The layout is fixed here and nowhere
// else; each loop has its own op enum (the worker's Op below, the control thread's
// ControlOp), and 0 is `ignore` in every one of them:
//
//    63                      40 39                             8 7        0
//   +--------------------------+--------------------------------+----------+
//   |   generation (24 bits)   |        slot index (32 bits)    | op (8)   |
//   +--------------------------+--------------------------------+----------+
//
// - op:         what kind of operation completed (the loop's op enum).
// - slot:       the connection slot for connection ops, the listener index for
//               accept ops, the check slot for health-check ops, 0 for loop-wide ops.
// - generation: the slot's generation when the op was submitted. A slot's
//               generation is bumped each time it is freed, so a completion that
//               arrives for an earlier occupant of the slot is recognisably stale.
//               It wraps modulo 2^24; a slot is only freed once nothing is in
//               flight on it, so the generation is a second line of defence.
//
// user_data 0 decodes as Op::ignore: completions nobody waits for (cancel and
// close results).
#pragma once

#include <cstdint>

namespace stickyd {

// The worker's ops. The values never leave the process, so their order is free.
enum class Op : uint8_t {
    ignore = 0,         // cancel/close results: nothing to do
    wake,               // eventfd read: stop() was called, or commands are queued
    stop_timer,         // shutdown grace deadline
    accept,             // multishot accept; slot = listener index
    accept_backoff,     // timer before re-arming an accept that hit EMFILE & co.
    recv_handshake,     // recv of the client's PROXY header (accept_proxy_protocol)
    handshake_timeout,  // that recv's linked timeout: proxy_protocol_timeout ran out
    connect,            // connect to a target
    connect_timeout,    // the connect's linked timeout
    send_handshake,     // send of our PROXY v2 header to the target
    recv_client,        // recv from the client (upstream flow)
    recv_target,        // recv from the target (downstream flow)
    send_target,        // send to the target (upstream flow)
    send_client,        // send to the client (downstream flow)
    idle_timer,         // the idle wheel's next due tick
    watch_client,       // poll for an error (a reset) on the client socket while relaying
    watch_target,       // the same on the target socket
};

// One decoded tag of a loop whose ops are OpT.
template <typename OpT>
struct Tagged {
    OpT op = OpT{};
    uint32_t slot = 0;
    uint32_t generation = 0;

    friend bool operator==(const Tagged&, const Tagged&) = default;
};

using UserData = Tagged<Op>;

inline constexpr unsigned kOpBits = 8;
inline constexpr unsigned kSlotBits = 32;
inline constexpr unsigned kGenerationBits = 24;
inline constexpr uint32_t kGenerationMask = (1U << kGenerationBits) - 1;

static_assert(kOpBits + kSlotBits + kGenerationBits == 64);

// The generation is truncated to its 24 bits.
template <typename OpT>
constexpr uint64_t encode(Tagged<OpT> d) {
    return static_cast<uint64_t>(d.op) | (static_cast<uint64_t>(d.slot) << kOpBits) |
           (static_cast<uint64_t>(d.generation & kGenerationMask) << (kOpBits + kSlotBits));
}

template <typename OpT>
constexpr uint64_t encode(OpT op, uint32_t slot = 0, uint32_t generation = 0) {
    return encode(Tagged<OpT>{op, slot, generation});
}

template <typename OpT = Op>
constexpr Tagged<OpT> decode(uint64_t value) {
    static_assert(sizeof(OpT) == 1, "an op must fit the tag's 8 bits");
    return Tagged<OpT>{static_cast<OpT>(value & 0xFF), static_cast<uint32_t>(value >> kOpBits),
                       static_cast<uint32_t>(value >> (kOpBits + kSlotBits)) & kGenerationMask};
}

constexpr uint32_t next_generation(uint32_t generation) {
    return (generation + 1) & kGenerationMask;
}

}  // namespace stickyd
