#include "src/user_data.hpp"

#include <doctest/doctest.h>

using namespace stickyd;

TEST_CASE("user_data round-trips op, slot and generation") {
    const Op ops[] = {Op::ignore,         Op::wake,          Op::stop_timer,      Op::accept,
                      Op::accept_backoff, Op::connect,       Op::connect_timeout, Op::recv_client,
                      Op::recv_target,    Op::send_target,   Op::send_client,     Op::check_wake,
                      Op::check_tick,     Op::check_connect, Op::check_send,      Op::check_recv,
                      Op::check_timeout,  Op::recv_header,   Op::header_timeout,  Op::send_header,
                      Op::idle_timer};
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
    CHECK(encode(Op::recv_client, 0xAABBCCDD, 0x112233) == 0x112233'AABBCCDD'07ULL);
    CHECK(encode(Op::send_client, UINT32_MAX, kGenerationMask) == 0xFFFFFF'FFFFFFFF'0AULL);
    const UserData d = decode(0x000001'00000005'08ULL);
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

TEST_CASE("a reused slot's tags differ from its previous occupant's") {
    const uint32_t before = 41;
    const uint64_t stale = encode(Op::recv_client, 9, before);
    const uint64_t fresh = encode(Op::recv_client, 9, next_generation(before));
    CHECK(stale != fresh);
    CHECK(decode(stale).slot == decode(fresh).slot);
    CHECK(decode(stale).generation != decode(fresh).generation);
}
