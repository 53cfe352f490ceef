// RAII wrappers around one io_uring instance and its provided-buffer ring, and
// the scaffolding every loop built on one shares (the worker's and the control
// thread's): SQEs with their tag, timespecs, the doorbell other threads ring, and
// the queue their commands wait in.
#pragma once

#include <liburing.h>
#include <linux/time_types.h>

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace stickyd {

// nullopt if io_uring can run stickyd here; otherwise one human-readable line
// saying why not and what to change (sysctl, seccomp profile, kernel version).
std::optional<std::string> probe_io_uring();

// The reasoning behind it, without I/O: why io_uring cannot run stickyd given
// io_uring_setup's errno (0: it worked) and the kernel.io_uring_disabled sysctl
// (-1: absent, before Linux 6.6), or nullopt if it can.
std::optional<std::string> io_uring_refusal(int setup_errno, int disabled);

class Uring {
  public:
    // Throws std::runtime_error with a one-line message if no ring can be set up.
    // The ring starts disabled: call enable() from the thread that will drive it.
    Uring(unsigned sq_entries, unsigned cq_entries);
    ~Uring();
    Uring(const Uring&) = delete;
    Uring& operator=(const Uring&) = delete;

    // A SINGLE_ISSUER ring belongs to the thread that enables it.
    void enable();

    // Never returns null: submits what is queued when the SQ is full.
    io_uring_sqe* get_sqe();
    // get_sqe() with its user_data set: every SQE a loop submits carries its tag.
    io_uring_sqe* sqe(uint64_t user_data) {
        io_uring_sqe* s = get_sqe();
        io_uring_sqe_set_data64(s, user_data);
        return s;
    }
    // Makes sure the next `count` get_sqe() calls do not submit in between, so
    // linked SQEs reach the kernel together.
    void reserve(unsigned count);
    // Submits everything queued and waits for at least `wait_nr` completions.
    // Interrupted waits return normally; other failures throw.
    void submit_and_wait(unsigned wait_nr);
    // The same, but returns after `timeout` at the latest even if nothing
    // completed. Uses IORING_ENTER_EXT_ARG (5.11+), so it costs no SQE.
    void submit_and_wait(unsigned wait_nr, __kernel_timespec timeout);

    io_uring* get() { return &uring_; }

    // Hands every completion that is ready to `handle`, then retires them all at
    // once (one store to the CQ head instead of one per completion). A handler that
    // throws has still taken its completion: it is retired with those before it, so
    // a loop that waits for its I/O after the failure never handles one twice.
    template <typename Handle>
    unsigned for_each_completion(Handle&& handle) {
        struct Retire {
            io_uring* ring;
            unsigned seen = 0;
            ~Retire() { io_uring_cq_advance(ring, seen); }
        } retire{&uring_};
        unsigned head = 0;
        io_uring_cqe* cqe = nullptr;
        io_uring_for_each_cqe(&uring_, head, cqe) {
            ++retire.seen;
            handle(*cqe);
        }
        return retire.seen;
    }
    // IOSQE_CQE_SKIP_SUCCESS is honoured (5.17+).
    bool can_skip_success() const { return (uring_.features & IORING_FEAT_CQE_SKIP) != 0; }
    // "defer_taskrun", "coop_taskrun" or "plain": how completions are run.
    std::string_view mode() const { return mode_; }

  private:
    io_uring uring_{};
    std::string_view mode_;
};

// For IORING_OP_TIMEOUT and link timeouts, relative or (with IORING_TIMEOUT_ABS) a
// steady-clock time_since_epoch. The result must live until the timeout completes.
inline __kernel_timespec to_timespec(std::chrono::nanoseconds d) {
    __kernel_timespec ts{};
    ts.tv_sec = d.count() / 1'000'000'000;
    ts.tv_nsec = d.count() % 1'000'000'000;
    return ts;
}

// How other threads wake a loop: an eventfd the loop keeps a read armed on.
// Blocking on purpose: io_uring completes a read of an O_NONBLOCK eventfd with
// -EAGAIN at once instead of waiting for it to become readable.
class Doorbell {
  public:
    // Throws std::runtime_error with a one-line message naming `owner`.
    explicit Doorbell(std::string_view owner);
    ~Doorbell();
    Doorbell(const Doorbell&) = delete;
    Doorbell& operator=(const Doorbell&) = delete;

    // Any thread. False (errno set) only if the eventfd cannot be written.
    bool ring() const;
    // The loop's thread: queues the read that completes on the next ring().
    void arm(Uring& uring, uint64_t user_data);
    int fd() const { return fd_; }

  private:
    int fd_ = -1;
    uint64_t value_ = 0;  // the armed read's target: lives as long as the doorbell
};

// Commands from other threads, applied by the loop in order between completions.
template <typename Command>
class CommandQueue {
  public:
    void push(Command command) {
        std::lock_guard lock(mutex_);
        items_.push_back(std::move(command));
    }
    // Everything queued so far, oldest first; the queue is empty afterwards.
    std::vector<Command> take() {
        std::vector<Command> taken;
        std::lock_guard lock(mutex_);
        taken.swap(items_);
        return taken;
    }

  private:
    std::mutex mutex_;
    std::vector<Command> items_;
};

// A kernel-registered ring of equally sized receive buffers (one buffer group)
// plus a user-space LIFO of buffers not currently handed to the kernel.
//
// Only a bounded number of buffers sit in the kernel ring at a time; the rest
// wait on the LIFO. Reuse is therefore last-in-first-out, so the buffers that
// are touched (resident, cache-hot) are the ones recently needed rather than
// the whole pool cycling FIFO through the ring. The posted count grows when
// receives find the ring empty while spare buffers exist.
//
// The pool starts with `count` buffers. If a receive finds none at all because
// every buffer is held by a send to a peer that is not reading, the pool grows
// (in chunks, up to `max_count`): otherwise enough slow readers could hold every
// buffer and stall all other connections, or deadlock against peers that stop
// reading until they can write. Memory then tracks the number of blocked flows,
// never the number of idle connections.
class ProvidedBuffers {
  public:
    // count: power of two, 1..32768; max_count >= count. Throws std::runtime_error.
    ProvidedBuffers(Uring& uring, uint16_t group, uint32_t count, uint32_t size,
                    uint32_t max_count);
    ~ProvidedBuffers();
    ProvidedBuffers(const ProvidedBuffers&) = delete;
    ProvidedBuffers& operator=(const ProvidedBuffers&) = delete;

    uint16_t group() const { return group_; }
    uint32_t buffer_size() const { return size_; }
    char* data(uint16_t bid) {
        return chunks_[bid >> chunk_shift_] + static_cast<size_t>(bid & chunk_mask_) * size_;
    }

    // A completion reported that the kernel took a buffer out of the ring.
    void consumed() { --posted_; }
    // The worker is done with `bid`; it becomes the first candidate for reuse.
    void release(uint16_t bid) { spare_.push_back(bid); }
    // A receive found no buffer: post more (or grow) at the next replenish().
    void starved() { starved_ = true; }
    // Tops the kernel ring up from the spare LIFO. Call once per completion batch.
    // Returns the number of buffers added to the pool, if it had to grow.
    uint32_t replenish();
    // Buffers believed to be in the kernel ring (an upper bound: the kernel may
    // have taken some whose completions are not reaped yet).
    uint32_t posted() const { return posted_; }
    uint32_t total() const { return total_; }

  private:
    bool add_chunk();
    void unmap_all();

    Uring& uring_;
    io_uring_buf_ring* ring_memory_ = nullptr;
    size_t ring_bytes_ = 0;
    std::vector<char*> chunks_;  // each holds 1 << chunk_shift_ buffers
    uint32_t chunk_shift_ = 0;
    uint32_t chunk_mask_ = 0;
    uint16_t group_;
    uint32_t count_;      // kernel ring entries
    uint32_t size_;       // bytes per buffer
    uint32_t max_total_;  // pool growth limit (buffer ids are 16 bits)
    uint32_t total_ = 0;  // buffers created so far
    uint32_t posted_ = 0;
    uint32_t target_posted_;
    bool starved_ = false;
    std::vector<uint16_t> spare_;
};

}  // namespace stickyd
