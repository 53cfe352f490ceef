#include "datapath/user_data.hpp"

#include "control/control_ops.hpp"

#include <doctest/doctest.h>

#include <cstddef>
#include <vector>

using namespace stickyd;

TEST_CASE("user_data round-trips op, slot and generation") {
    const Op ops[] = {
        Op::ignore,          Op::wake,           Op::stop_timer,        Op::accept,
        Op::accept_backoff,  Op::recv_handshake, Op::handshake_timeout, Op::connect,
        Op::connect_timeout, Op::send_handshake, Op::recv_client,       Op::recv_target,
        Op::send_target,     Op::send_client,    Op::idle_timer,        Op::watch_client,
        Op::watch_target};
    const uint32_t slots[] = {0, 1, 65535, 65536, 0xDEADBEEF, UINT32_MAX};
    const uint32_t generations[] = {0, 1, 0x123456, kGenerationMask};
    for (Op op : ops) {
        for (uint32_t slot : slots) {
            for (uint32_t generation : generations) {
                const UserData d{op, slot, generation};
                CHECK(decode(encode(d)) == d);
            }
        }
    }
}

TEST_CASE("the bit layout is pinned: op in bits 0-7, slot in 8-39, generation in 40-63") {
    CHECK(encode(Op::wake) == 0x01);
    CHECK(encode(Op::accept, 2) == 0x0203);
    CHECK(encode(Op::recv_client, 0xAABBCCDD, 0x112233) == 0x112233'AABBCCDD'0AULL);
    CHECK(encode(Op::send_client, UINT32_MAX, kGenerationMask) == 0xFFFFFF'FFFFFFFF'0DULL);
    const UserData d = decode(0x000001'00000005'0BULL);
    CHECK(d.op == Op::recv_target);
    CHECK(d.slot == 5);
    CHECK(d.generation == 1);
}

TEST_CASE("zero is the ignorable tag") {
    CHECK(decode(0) == UserData{Op::ignore, 0, 0});
    CHECK(encode(Op::ignore) == 0);
}

TEST_CASE("generations wrap within 24 bits and never bleed into the slot") {
    CHECK(next_generation(0) == 1);
    CHECK(next_generation(kGenerationMask) == 0);
    // A generation wider than 24 bits is truncated, leaving op and slot intact.
    const UserData d = decode(encode(Op::connect, 7, 0x1000001));
    CHECK(d.op == Op::connect);
    CHECK(d.slot == 7);
    CHECK(d.generation == 1);
}

// What the generation buys: a completion left over from any of a slot's previous
// 2^24 - 1 occupants carries a tag that no later occupant's op has, so it can only
// be mistaken for a fresh one after 2^24 reuses of that slot. Walks all of them,
// across the wrap, from one slot's tag.
TEST_CASE("a slot's tags repeat only after 2^24 reuses") {
    constexpr uint32_t kSlot = 0xABCDEF;
    constexpr uint32_t kFirst = kGenerationMask - 7;  // wraps a few reuses in
    std::vector<bool> seen(std::size_t{1} << kGenerationBits);
    const uint64_t first = encode(Op::recv_client, kSlot, kFirst);
    uint32_t generation = kFirst;
    uint64_t repeats = 0, misplaced = 0, reuses = 0;
    for (;;) {
        const uint64_t tag = encode(Op::recv_client, kSlot, generation);
        const UserData d = decode(tag);
        if (d.op != Op::recv_client || d.slot != kSlot) ++misplaced;
        if (seen[d.generation]) ++repeats;
        seen[d.generation] = true;
        generation = next_generation(generation);
        ++reuses;
        if (encode(Op::recv_client, kSlot, generation) == first) break;
        if (reuses > (uint64_t{1} << kGenerationBits)) break;  // never repeats: also wrong
    }
    CHECK(reuses == (uint64_t{1} << kGenerationBits));
    CHECK(repeats == 0);
    CHECK(misplaced == 0);
}

TEST_CASE("the control thread's ops share the layout") {
    const ControlOp ops[] = {ControlOp::ignore,        ControlOp::wake,       ControlOp::tick,
                             ControlOp::check_connect, ControlOp::check_send, ControlOp::check_recv,
                             ControlOp::check_timeout};
    for (ControlOp op : ops) {
        const ControlTag tag{op, 0xDEADBEEF, 0x123456};
        CHECK(decode<ControlOp>(encode(tag)) == tag);
    }
    CHECK(encode(ControlOp::check_recv, 7, 3) == 0x000003'00000007'05ULL);
    CHECK(decode<ControlOp>(0).op == ControlOp::ignore);
}
