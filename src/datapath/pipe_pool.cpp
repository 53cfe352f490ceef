#include "datapath/pipe_pool.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

namespace stickyd {

Pipe::Pipe(Pipe&& other) noexcept
    : read_(std::exchange(other.read_, -1)), write_(std::exchange(other.write_, -1)) {}

Pipe& Pipe::operator=(Pipe&& other) noexcept {
    if (this != &other) {
        close();
        read_ = std::exchange(other.read_, -1);
        write_ = std::exchange(other.write_, -1);
    }
    return *this;
}

Pipe::~Pipe() {
    close();
}

void Pipe::close() {
    if (read_ >= 0) ::close(read_);
    if (write_ >= 0) ::close(write_);
    read_ = write_ = -1;
}

std::optional<Pipe> PipePool::take(Clock::time_point now, int& error) {
    if (!spares_.empty()) {
        Pipe pipe = std::move(spares_.back());
        spares_.pop_back();
        ++in_use_;
        return pipe;
    }
    if (in_use_ >= limit_) return std::nullopt;
    // Once refused, asking again for every full buffer would cost three syscalls
    // each for the same answer.
    if (refused_ && now - refused_at_ < std::chrono::seconds(1)) return std::nullopt;
    std::optional<Pipe> pipe = create(error);
    refused_ = !pipe;
    refused_at_ = now;
    if (pipe) ++in_use_;
    return pipe;
}

void PipePool::give_back(Pipe pipe, bool empty) {
    if (--in_use_ == 0) {
        spares_.clear();
        return;
    }
    if (empty && spares_.size() < kMaxSpares) spares_.push_back(std::move(pipe));
}

// Non-blocking ends: the worker's thread must never sleep in splice(2). The
// default 64 KiB pipe moves less per call than a 32 KiB recv/send pair costs
// (scripts/bench: splice through 64 KiB pipes costs ~40% more CPU per GiB than
// recv/send, through 1 MiB pipes 20-26% less), so a pipe that cannot grow is no use.
std::optional<Pipe> PipePool::create(int& error) {
    int ends[2];
    if (::pipe2(ends, O_CLOEXEC | O_NONBLOCK) != 0) {
        error = errno;
        return std::nullopt;
    }
    Pipe pipe(ends[0], ends[1]);
    if (::fcntl(ends[1], F_SETPIPE_SZ, static_cast<int>(size_)) < 0) {
        error = errno;
        return std::nullopt;
    }
    return pipe;
}

}  // namespace stickyd
