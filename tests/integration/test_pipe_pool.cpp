// The pipes spliced flows run through, against the real kernel.
#include "datapath/pipe_pool.hpp"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

using namespace stickyd;

namespace {

constexpr uint32_t kSize = 1 << 20;

bool is_open(int fd) {
    return ::fcntl(fd, F_GETFD) >= 0;
}

PipePool::Clock::time_point at(int seconds) {
    return PipePool::Clock::time_point{} + std::chrono::seconds(seconds);
}

}  // namespace

TEST_CASE("a pipe is non-blocking at both ends and as large as asked") {
    PipePool pool(4, kSize);
    int error = 0;
    std::optional<Pipe> pipe = pool.take(at(1), error);
    REQUIRE(pipe.has_value());
    CHECK(error == 0);
    CHECK(::fcntl(pipe->write_end(), F_GETPIPE_SZ) >= static_cast<int>(kSize));
    CHECK((::fcntl(pipe->read_end(), F_GETFL) & O_NONBLOCK) != 0);
    CHECK((::fcntl(pipe->write_end(), F_GETFL) & O_NONBLOCK) != 0);
    CHECK((::fcntl(pipe->read_end(), F_GETFD) & FD_CLOEXEC) != 0);
    CHECK(pool.in_use() == 1);
}

TEST_CASE("the limit counts pipes in use; none at all with limit 0") {
    PipePool pool(3, kSize);
    int error = 0;
    std::optional<Pipe> a = pool.take(at(1), error);
    std::optional<Pipe> b = pool.take(at(1), error);
    std::optional<Pipe> c = pool.take(at(1), error);
    REQUIRE(a.has_value());
    REQUIRE(b.has_value());
    REQUIRE(c.has_value());
    CHECK_FALSE(pool.take(at(1), error).has_value());
    CHECK(error == 0);  // not a refusal: just the limit
    pool.give_back(std::move(*a), true);
    CHECK(pool.take(at(1), error).has_value());  // the spare

    PipePool off(0, kSize);
    CHECK_FALSE(off.take(at(1), error).has_value());
    CHECK(error == 0);
}

TEST_CASE("an empty pipe given back is reused; one holding bytes is closed") {
    PipePool pool(8, kSize);
    int error = 0;
    std::optional<Pipe> busy = pool.take(at(1), error);  // another flow splices meanwhile
    std::optional<Pipe> pipe = pool.take(at(1), error);
    REQUIRE(busy.has_value());
    REQUIRE(pipe.has_value());
    const int read_end = pipe->read_end();
    pool.give_back(std::move(*pipe), true);
    CHECK(pool.in_use() == 1);
    CHECK(pool.spares() == 1);
    CHECK(is_open(read_end));
    std::optional<Pipe> again = pool.take(at(1), error);
    REQUIRE(again.has_value());
    CHECK(again->read_end() == read_end);

    // Stale bytes must never reach the next flow.
    REQUIRE(::write(again->write_end(), "stale", 5) == 5);
    pool.give_back(std::move(*again), false);
    CHECK(pool.spares() == 0);
    CHECK_FALSE(is_open(read_end));
}

TEST_CASE("spares are capped, and closed once no flow splices or fds run short") {
    PipePool pool(16, kSize);
    int error = 0;
    std::vector<Pipe> pipes;
    for (int i = 0; i < 8; ++i) {
        std::optional<Pipe> pipe = pool.take(at(1), error);
        REQUIRE(pipe.has_value());
        pipes.push_back(std::move(*pipe));
    }
    std::vector<int> ends;
    for (const Pipe& p : pipes) ends.push_back(p.read_end());
    for (size_t i = 1; i < pipes.size(); ++i) pool.give_back(std::move(pipes[i]), true);
    CHECK(pool.spares() == PipePool::kMaxSpares);
    unsigned open = 0;
    for (int fd : ends) open += is_open(fd) ? 1 : 0;
    CHECK(open == 1 + PipePool::kMaxSpares);
    pool.release_spares();
    CHECK(pool.spares() == 0);
    CHECK(is_open(ends[0]));  // in use
    for (size_t i = 1; i < ends.size(); ++i) CHECK_FALSE(is_open(ends[i]));

    // A quiet worker holds no pipe: the last one back takes the spares with it.
    std::optional<Pipe> spare = pool.take(at(1), error);
    REQUIRE(spare.has_value());
    const int spare_end = spare->read_end();
    pool.give_back(std::move(*spare), true);
    CHECK(pool.spares() == 1);
    pool.give_back(std::move(pipes[0]), true);
    CHECK(pool.in_use() == 0);
    CHECK(pool.spares() == 0);
    CHECK_FALSE(is_open(ends[0]));
    CHECK_FALSE(is_open(spare_end));
}

TEST_CASE("a refused pipe says why, and is not asked for again within a second") {
    // Larger than any pipe can be: the kernel refuses F_SETPIPE_SZ.
    PipePool pool(4, 1U << 31);
    int error = 0;
    CHECK_FALSE(pool.take(at(10), error).has_value());
    CHECK(error != 0);
    CHECK(pool.in_use() == 0);
    error = 0;
    CHECK_FALSE(pool.take(at(10), error).has_value());
    CHECK(error == 0);  // not asked: still within the second
    CHECK_FALSE(pool.take(at(12), error).has_value());
    CHECK(error != 0);  // asked again, refused again
}
