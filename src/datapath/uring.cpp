#include "datapath/uring.hpp"

#include <fmt/core.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <stdexcept>

namespace stickyd {
namespace {

constexpr unsigned kBaseSetupFlags =
    IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_R_DISABLED;

// Tried in order; the kernel answers -EINVAL for flags it does not know.
struct SetupMode {
    unsigned flags;
    std::string_view name;
};
constexpr SetupMode kSetupModes[] = {
    // Completions run only when we ask for them, in our thread: no IPIs, no
    // task-work interrupting the loop mid-batch (6.1+).
    {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, "defer_taskrun"},
    // Task work still runs in our thread but without forced interrupts (5.19+).
    {IORING_SETUP_COOP_TASKRUN, "coop_taskrun"},
    {0, "plain"},
};

struct RequiredOp {
    int op;
    std::string_view name;
};
constexpr RequiredOp kRequiredOps[] = {
    {IORING_OP_ACCEPT, "ACCEPT"},
    {IORING_OP_CONNECT, "CONNECT"},
    {IORING_OP_RECV, "RECV"},
    {IORING_OP_SEND, "SEND"},
    {IORING_OP_LINK_TIMEOUT, "LINK_TIMEOUT"},
    {IORING_OP_ASYNC_CANCEL, "ASYNC_CANCEL"},
    {IORING_OP_CLOSE, "CLOSE"},
    {IORING_OP_TIMEOUT, "TIMEOUT"},
    {IORING_OP_READ, "READ"},
};

std::string errno_text(int err) {
    return std::strerror(err);
}

// -1 when the sysctl does not exist (kernels before 6.6).
int read_io_uring_disabled() {
    std::ifstream in("/proc/sys/kernel/io_uring_disabled");
    int value = -1;
    if (!(in >> value)) return -1;
    return value;
}

std::string setup_failure(int err, int disabled) {
    switch (err) {
        case ENOSYS:
            return "io_uring is not available: io_uring_setup() returned ENOSYS (kernel built "
                   "without io_uring, or a sandbox/seccomp filter hides it); stickyd needs Linux "
                   "6.1 or newer with io_uring allowed";
        case EPERM:
            if (disabled == 1) {
                return "io_uring is restricted on this host (sysctl kernel.io_uring_disabled=1): "
                       "run stickyd as a member of the group in kernel.io_uring_group, or set "
                       "kernel.io_uring_disabled=0";
            }
            return "io_uring is blocked: io_uring_setup() returned EPERM (a seccomp profile such "
                   "as Docker's default, or an LSM policy, denies it); allow the io_uring_setup, "
                   "io_uring_enter and io_uring_register syscalls for stickyd";
        case ENOMEM:
            return "io_uring_setup() failed: out of memory (check RLIMIT_MEMLOCK / memory cgroup)";
        default:
            return fmt::format("io_uring_setup() failed: {}", errno_text(err));
    }
}

// Provided buffer rings cannot be probed by opcode: try registering a tiny one.
std::optional<std::string> probe_buffer_ring(io_uring& uring) {
    constexpr unsigned kEntries = 8;
    size_t bytes = kEntries * sizeof(io_uring_buf);
    void* memory = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) return fmt::format("cannot map memory: {}", errno_text(errno));
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<uint64_t>(memory);
    reg.ring_entries = kEntries;
    reg.bgid = 0;
    int rc = io_uring_register_buf_ring(&uring, &reg, 0);
    if (rc == 0) io_uring_unregister_buf_ring(&uring, 0);
    munmap(memory, bytes);
    if (rc < 0) {
        return fmt::format(
            "this kernel's io_uring lacks provided buffer rings ({}); stickyd needs Linux 6.1 or "
            "newer",
            errno_text(-rc));
    }
    return std::nullopt;
}

}  // namespace

std::optional<std::string> io_uring_refusal(int setup_errno, int disabled) {
    if (disabled == 2) {
        return "io_uring is disabled on this host (sysctl kernel.io_uring_disabled=2); stickyd "
               "needs it: set kernel.io_uring_disabled=0 (or 1 with kernel.io_uring_group)";
    }
    if (setup_errno == 0) return std::nullopt;
    return setup_failure(setup_errno, disabled);
}

std::optional<std::string> probe_io_uring() {
    const int disabled = read_io_uring_disabled();
    if (disabled == 2) return io_uring_refusal(0, disabled);  // no ring to try
    io_uring uring{};
    int rc = io_uring_queue_init(8, &uring, 0);
    if (rc < 0) return io_uring_refusal(-rc, disabled);

    std::optional<std::string> problem;
    io_uring_probe* probe = io_uring_get_probe_ring(&uring);
    if (probe == nullptr) {
        problem =
            "cannot probe io_uring opcodes (kernel too old); stickyd needs Linux 6.1 or newer";
    } else {
        std::string missing;
        for (const auto& required : kRequiredOps) {
            if (io_uring_opcode_supported(probe, required.op)) continue;
            if (!missing.empty()) missing += ", ";
            missing += required.name;
        }
        io_uring_free_probe(probe);
        if (!missing.empty()) {
            problem = fmt::format(
                "this kernel's io_uring lacks {} (needed by stickyd); it needs Linux 6.1 or newer",
                missing);
        }
    }
    if (!problem && !(uring.features & IORING_FEAT_NODROP)) {
        problem =
            "this kernel's io_uring may drop completions (no IORING_FEAT_NODROP); stickyd "
            "needs Linux 6.1 or newer";
    }
    if (!problem) problem = probe_buffer_ring(uring);
    io_uring_queue_exit(&uring);
    return problem;
}

Uring::Uring(unsigned sq_entries, unsigned cq_entries) {
    int rc = -EINVAL;
    for (const auto& mode : kSetupModes) {
        io_uring_params params{};
        params.flags = kBaseSetupFlags | mode.flags;
        params.cq_entries = cq_entries;
        rc = io_uring_queue_init_params(sq_entries, &uring_, &params);
        if (rc == 0) {
            mode_ = mode.name;
            return;
        }
        if (rc != -EINVAL) break;
    }
    throw std::runtime_error(fmt::format("cannot set up io_uring ({} SQ / {} CQ entries): {}",
                                         sq_entries, cq_entries, errno_text(-rc)));
}

Uring::~Uring() {
    io_uring_queue_exit(&uring_);
}

void Uring::enable() {
    // liburing 2.3 declares io_uring_enable_rings() but does not export it.
    int rc = io_uring_register(uring_.ring_fd, IORING_REGISTER_ENABLE_RINGS, nullptr, 0);
    if (rc < 0)
        throw std::runtime_error(fmt::format("cannot enable io_uring: {}", errno_text(-rc)));
    // Saves an fdget/fdput per io_uring_enter; purely an optimisation.
    io_uring_register_ring_fd(&uring_);
}

io_uring_sqe* Uring::get_sqe() {
    for (;;) {
        if (io_uring_sqe* sqe = io_uring_get_sqe(&uring_)) return sqe;
        int rc = io_uring_submit(&uring_);
        if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
            throw std::runtime_error(fmt::format("io_uring submit failed: {}", errno_text(-rc)));
        }
    }
}

void Uring::reserve(unsigned count) {
    while (io_uring_sq_space_left(&uring_) < count) {
        int rc = io_uring_submit(&uring_);
        if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
            throw std::runtime_error(fmt::format("io_uring submit failed: {}", errno_text(-rc)));
        }
    }
}

void Uring::submit_and_wait(unsigned wait_nr) {
    int rc = io_uring_submit_and_wait(&uring_, wait_nr);
    if (rc >= 0 || rc == -EINTR || rc == -EAGAIN || rc == -EBUSY || rc == -ETIME) return;
    throw std::runtime_error(fmt::format("io_uring_enter failed: {}", errno_text(-rc)));
}

void Uring::submit_and_wait(unsigned wait_nr, __kernel_timespec timeout) {
    io_uring_cqe* cqe = nullptr;
    int rc = io_uring_submit_and_wait_timeout(&uring_, &cqe, wait_nr, &timeout, nullptr);
    if (rc >= 0 || rc == -EINTR || rc == -EAGAIN || rc == -EBUSY || rc == -ETIME) return;
    throw std::runtime_error(fmt::format("io_uring_enter failed: {}", errno_text(-rc)));
}

ProvidedBuffers::ProvidedBuffers(Uring& uring, uint16_t group, uint32_t count, uint32_t size,
                                 uint32_t max_count)
    : uring_(uring), group_(group), count_(count), size_(size) {
    // The kernel caps a buffer ring at 32768 entries.
    if (count == 0 || count > 32768 || (count & (count - 1)) != 0) {
        throw std::runtime_error(
            fmt::format("buffer count must be a power of two from 1 to 32768, not {}", count));
    }
    if (size == 0 || size > (1U << 30)) {
        throw std::runtime_error(fmt::format("invalid receive buffer size {}", size));
    }
    constexpr uint32_t kMaxChunk = 256;
    const uint32_t chunk = std::min(count, kMaxChunk);
    chunk_shift_ = static_cast<uint32_t>(std::countr_zero(chunk));
    chunk_mask_ = chunk - 1;
    // Ids are 16 bits and 0xFFFF means "no buffer" to the worker.
    constexpr uint32_t kIdLimit = 65535;
    max_total_ = std::max(count, std::min(max_count, kIdLimit) & ~chunk_mask_);

    ring_bytes_ = count * sizeof(io_uring_buf);
    void* ring_memory =
        mmap(nullptr, ring_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ring_memory == MAP_FAILED) {
        throw std::runtime_error(
            fmt::format("cannot map the provided-buffer ring: {}", errno_text(errno)));
    }
    ring_memory_ = static_cast<io_uring_buf_ring*>(ring_memory);
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<uint64_t>(ring_memory_);
    reg.ring_entries = count;
    reg.bgid = group;
    int rc = io_uring_register_buf_ring(uring_.get(), &reg, 0);
    if (rc < 0) {
        munmap(ring_memory_, ring_bytes_);
        throw std::runtime_error(
            fmt::format("cannot register the provided-buffer ring: {}", errno_text(-rc)));
    }
    io_uring_buf_ring_init(ring_memory_);

    spare_.reserve(count);
    while (total_ < count) {
        if (!add_chunk()) {
            const int err = errno;
            unmap_all();
            throw std::runtime_error(fmt::format("cannot map {} MiB of receive buffers: {}",
                                                 (static_cast<size_t>(count) * size) >> 20,
                                                 errno_text(err)));
        }
    }
    constexpr uint32_t kInitialPosted = 32;
    target_posted_ = std::min(count, kInitialPosted);
    replenish();
}

ProvidedBuffers::~ProvidedBuffers() {
    unmap_all();
}

void ProvidedBuffers::unmap_all() {
    io_uring_unregister_buf_ring(uring_.get(), group_);
    const size_t chunk_bytes = (static_cast<size_t>(chunk_mask_) + 1) * size_;
    for (char* chunk : chunks_) munmap(chunk, chunk_bytes);
    chunks_.clear();
    if (ring_memory_ != nullptr) munmap(ring_memory_, ring_bytes_);
    ring_memory_ = nullptr;
}

// Pages are only made resident when first used; see the class comment.
bool ProvidedBuffers::add_chunk() {
    const uint32_t chunk = chunk_mask_ + 1;
    if (total_ + chunk > max_total_) return false;
    void* memory = mmap(nullptr, static_cast<size_t>(chunk) * size_, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (memory == MAP_FAILED) return false;
    chunks_.push_back(static_cast<char*>(memory));
    // Lowest id on top of the LIFO, so a fresh pool is used from its start.
    for (uint32_t bid = total_ + chunk; bid-- > total_;)
        spare_.push_back(static_cast<uint16_t>(bid));
    total_ += chunk;
    return true;
}

uint32_t ProvidedBuffers::replenish() {
    uint32_t grown = 0;
    if (starved_) {
        // Once per batch however many receives went without: one burst should
        // not double the ring a hundred times over.
        if (!spare_.empty()) {
            target_posted_ = std::min(count_, target_posted_ * 2);
        } else if (add_chunk()) {
            grown = chunk_mask_ + 1;
        }
        starved_ = false;
    }
    const int mask = io_uring_buf_ring_mask(count_);
    int added = 0;
    while (posted_ < target_posted_ && !spare_.empty()) {
        uint16_t bid = spare_.back();
        spare_.pop_back();
        io_uring_buf_ring_add(ring_memory_, data(bid), size_, bid, mask, added++);
        ++posted_;
    }
    if (added > 0) io_uring_buf_ring_advance(ring_memory_, added);
    return grown;
}

// ---------------------------------------------------------------------------
// Doorbell

Doorbell::Doorbell(std::string_view owner) : fd_(eventfd(0, EFD_CLOEXEC)) {
    if (fd_ < 0) {
        throw std::runtime_error(
            fmt::format("{}: cannot create an eventfd: {}", owner, std::strerror(errno)));
    }
}

Doorbell::~Doorbell() {
    ::close(fd_);
}

bool Doorbell::ring() const {
    const uint64_t one = 1;
    return ::write(fd_, &one, sizeof one) == sizeof one;
}

void Doorbell::arm(Uring& uring, uint64_t user_data) {
    io_uring_prep_read(uring.sqe(user_data), fd_, &value_, sizeof value_, 0);
}

}  // namespace stickyd
