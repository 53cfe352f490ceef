// An LD_PRELOAD library for the e2e tests of a failing thread: makes liburing's
// io_uring_submit_and_wait{,_timeout} fail with -ENOMEM (as io_uring_enter(2) does
// when the kernel is out of memory) in the one thread named $FAIL_URING_THREAD
// ("worker-1", "control"), from the moment the file $FAIL_URING_WHEN exists: every
// call from then on, or only the first $FAIL_URING_COUNT. Every other call goes
// through to liburing. So a test can make one loop fail while stickyd runs, through
// the error path a real failure takes, with nothing in stickyd made for tests.
#include <dlfcn.h>
#include <liburing.h>
#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace {

// Failures left to make; negative: no end to them.
std::atomic<long> left{[] {
    const char* count = std::getenv("FAIL_URING_COUNT");
    return count != nullptr ? std::atol(count) : -1L;
}()};

bool failing() {
    const char* thread = std::getenv("FAIL_URING_THREAD");
    const char* when = std::getenv("FAIL_URING_WHEN");
    if (thread == nullptr || when == nullptr) return false;
    char name[16] = {};
    if (pthread_getname_np(pthread_self(), name, sizeof name) != 0) return false;
    if (std::strcmp(name, thread) != 0 || access(when, F_OK) != 0) return false;
    long now = left.load();
    while (now != 0) {
        if (now < 0 || left.compare_exchange_weak(now, now - 1)) return true;
    }
    return false;
}

template <typename Function>
Function next(const char* name) {
    return reinterpret_cast<Function>(dlsym(RTLD_NEXT, name));
}

}  // namespace

extern "C" int io_uring_submit_and_wait(io_uring* ring, unsigned wait_nr) {
    if (failing()) return -ENOMEM;
    using Function = int (*)(io_uring*, unsigned);
    static const Function real = next<Function>("io_uring_submit_and_wait");
    return real(ring, wait_nr);
}

extern "C" int io_uring_submit_and_wait_timeout(io_uring* ring, io_uring_cqe** cqe,
                                                unsigned wait_nr, __kernel_timespec* ts,
                                                sigset_t* sigmask) {
    if (failing()) return -ENOMEM;
    using Function = int (*)(io_uring*, io_uring_cqe**, unsigned, __kernel_timespec*, sigset_t*);
    static const Function real = next<Function>("io_uring_submit_and_wait_timeout");
    return real(ring, cqe, wait_nr, ts, sigmask);
}
