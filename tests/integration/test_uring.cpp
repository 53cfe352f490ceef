// The ring wrapper and the provided-buffer pool against the real kernel.
#include "datapath/uring.hpp"

#include <doctest/doctest.h>

#include <cerrno>
#include <set>

using namespace stickyd;

namespace {

// Reaps whatever is ready; returns how many of those completions carried `tag`.
unsigned reap(Uring& ring, uint64_t tag) {
    unsigned seen = 0;
    io_uring_cqe* cqe = nullptr;
    unsigned head = 0;
    unsigned n = 0;
    io_uring_for_each_cqe(ring.get(), head, cqe) {
        if (cqe->user_data == tag) ++seen;
        ++n;
    }
    io_uring_cq_advance(ring.get(), n);
    return seen;
}

}  // namespace

TEST_CASE("io_uring is usable on this machine (stickyd needs it)") {
    auto problem = probe_io_uring();
    INFO(problem.value_or(""));
    REQUIRE_FALSE(problem.has_value());
}

TEST_CASE("why io_uring is refused names the cause and the fix") {
    CHECK(io_uring_refusal(0, -1) == std::nullopt);
    CHECK(io_uring_refusal(0, 0) == std::nullopt);
    CHECK(io_uring_refusal(0, 1) == std::nullopt);  // allowed for this process's group
    auto disabled = io_uring_refusal(0, 2);
    REQUIRE(disabled.has_value());
    CHECK(disabled->starts_with(
        "io_uring is disabled on this host (sysctl kernel.io_uring_disabled=2)"));
    CHECK(io_uring_refusal(EPERM, 2) == disabled);
    auto restricted = io_uring_refusal(EPERM, 1);
    REQUIRE(restricted.has_value());
    CHECK(
        restricted->starts_with("io_uring is restricted on this host (sysctl "
                                "kernel.io_uring_disabled=1)"));
    CHECK(restricted->find("kernel.io_uring_group") != std::string::npos);
    auto seccomp = io_uring_refusal(EPERM, 0);
    REQUIRE(seccomp.has_value());
    CHECK(seccomp->find("seccomp") != std::string::npos);
    CHECK(io_uring_refusal(EPERM, -1) == seccomp);
    CHECK(io_uring_refusal(ENOSYS, -1)->starts_with("io_uring is not available"));
    CHECK(io_uring_refusal(ENOMEM, 0)->find("RLIMIT_MEMLOCK") != std::string::npos);
    CHECK(io_uring_refusal(EINVAL, 0) == "io_uring_setup() failed: Invalid argument");
}

TEST_CASE("get_sqe never fails: a full SQ is submitted to make room") {
    Uring ring(8, 64);
    ring.enable();
    CHECK_FALSE(ring.mode().empty());
    constexpr unsigned kNops = 50;  // many more than the 8 SQ entries
    unsigned done = 0;
    for (unsigned i = 0; i < kNops; ++i) {
        io_uring_sqe* sqe = ring.get_sqe();
        REQUIRE(sqe != nullptr);
        io_uring_prep_nop(sqe);
        io_uring_sqe_set_data64(sqe, 42);
        if (i % 16 == 15) done += reap(ring, 42);  // keep the 64-entry CQ from overflowing
    }
    while (done < kNops) {
        ring.submit_and_wait(1);
        done += reap(ring, 42);
    }
    CHECK(done == kNops);
}

TEST_CASE("reserve keeps linked SQEs in one submission") {
    Uring ring(4, 16);
    ring.enable();
    for (int i = 0; i < 3; ++i) io_uring_prep_nop(ring.get_sqe());
    ring.reserve(2);
    CHECK(io_uring_sq_space_left(ring.get()) >= 2);
}

TEST_CASE("provided buffers: distinct, correctly sized, and the pool grows when all are held") {
    Uring ring(8, 64);
    ProvidedBuffers buffers(ring, 3, 4, 1024, 12);
    ring.enable();
    CHECK(buffers.group() == 3);
    CHECK(buffers.buffer_size() == 1024);
    CHECK(buffers.total() == 4);
    CHECK(buffers.posted() == 4);

    std::set<char*> seen;
    for (uint16_t bid = 0; bid < 4; ++bid) {
        char* p = buffers.data(bid);
        p[0] = p[1023] = 'x';  // the whole buffer is writable
        seen.insert(p);
    }
    CHECK(seen.size() == 4);

    // The kernel hands out all four and none come back: the next starvation grows
    // the pool by a chunk, up to the limit.
    for (int i = 0; i < 4; ++i) buffers.consumed();
    buffers.starved();
    CHECK(buffers.replenish() == 4);
    CHECK(buffers.total() == 8);
    CHECK(buffers.posted() == 4);
    for (int i = 0; i < 4; ++i) buffers.consumed();
    buffers.starved();
    CHECK(buffers.replenish() == 4);
    for (int i = 0; i < 4; ++i) buffers.consumed();
    buffers.starved();
    CHECK(buffers.replenish() == 0);  // at max_count
    CHECK(buffers.total() == 12);
    CHECK(buffers.posted() == 0);

    // Released buffers are posted again, most recently released first.
    buffers.release(9);
    buffers.replenish();
    CHECK(buffers.posted() == 1);
}

TEST_CASE("provided buffers reject a count the kernel cannot take") {
    Uring ring(8, 64);
    CHECK_THROWS_AS(ProvidedBuffers(ring, 0, 3, 1024, 3), std::runtime_error);
    CHECK_THROWS_AS(ProvidedBuffers(ring, 0, 65536, 1024, 65536), std::runtime_error);
}
