// The pipes that spliced flows run through (see connection.hpp: a flow that keeps
// its buffers full moves to splice while it does).
//
// A pipe costs two fds and is charged its whole size against the user's pipe quota
// (/proc/sys/fs/pipe-user-pages-soft) even while empty, so a worker holds a bounded
// number of them, allocates them only when a flow moves to splice, and keeps only a
// few spare for the next bulk flow.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <vector>

namespace stickyd {

// One pipe, closed with its owner.
class Pipe {
  public:
    Pipe() = default;
    Pipe(int read_end, int write_end) : read_(read_end), write_(write_end) {}
    Pipe(Pipe&& other) noexcept;
    Pipe& operator=(Pipe&& other) noexcept;
    Pipe(const Pipe&) = delete;
    Pipe& operator=(const Pipe&) = delete;
    ~Pipe();

    int read_end() const { return read_; }
    int write_end() const { return write_; }

  private:
    void close();
    int read_ = -1;
    int write_ = -1;
};

class PipePool {
  public:
    using Clock = std::chrono::steady_clock;

    // limit: pipes in use and spare together (0: splice is off); size: bytes each.
    PipePool(uint32_t limit, uint32_t size) : limit_(limit), size_(size) {}

    // An empty pipe of size() bytes, or nothing: the limit is reached, splice is off,
    // or the kernel refused one within the last second. A refusal (out of fds, or
    // over the user's pipe quota) sets `error` to its errno; nothing else does.
    std::optional<Pipe> take(Clock::time_point now, int& error);

    // An empty pipe is kept for the next bulk flow (a few at most) while other flows
    // splice; one still holding bytes of a connection that is gone is closed, and so
    // is every spare once no flow splices, so a quiet worker holds no pipe.
    void give_back(Pipe pipe, bool empty);

    // Short of fds: close the spare ones now.
    void release_spares() { spares_.clear(); }

    uint32_t size() const { return size_; }
    uint32_t in_use() const { return in_use_; }
    uint32_t spares() const { return static_cast<uint32_t>(spares_.size()); }

    // Spare pipes kept at most: enough for a few bulk flows starting together,
    // without holding the quota of a busy worker's peak.
    static constexpr uint32_t kMaxSpares = 4;

  private:
    std::optional<Pipe> create(int& error);

    uint32_t limit_;
    uint32_t size_;
    uint32_t in_use_ = 0;
    std::vector<Pipe> spares_;
    Clock::time_point refused_at_{};
    bool refused_ = false;
};

}  // namespace stickyd
