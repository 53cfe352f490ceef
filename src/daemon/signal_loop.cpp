#include "daemon/signal_loop.hpp"

#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <thread>

#include "daemon/sd_notify.hpp"
#include "datapath/uring.hpp"
#include "stickyd/log.hpp"
#include "stickyd/stop_sequence.hpp"
#include "stickyd/words.hpp"
#include "stickyd_version.h"

namespace stickyd {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr int kExitEnvironment = 1;

void raise_nofile_limit() {
    rlimit limit{};
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return;
    if (limit.rlim_cur >= limit.rlim_max) return;
    rlim_t before = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &limit) == 0) {
        log::debug("raised open-file limit from {} to {}", before, limit.rlim_max);
    } else {
        log::warn("cannot raise open-file limit above {}", before);
    }
}

// Failing to reach systemd is worth one warning, not one per status tick.
void notified(int rc) {
    static bool warned = false;
    if (rc < 0 && !warned) {
        warned = true;
        log::warn("cannot notify systemd through NOTIFY_SOCKET: {}", std::strerror(-rc));
    }
}

// True when we were started with SIGINT ignored, as every background job of a script
// is: the Ctrl-C meant for the script must not also stop us (the script stops us with
// SIGTERM), which is the convention of Unix daemons started with `&` or nohup.
bool sigint_ignored_at_start() {
    struct sigaction current {};
    return sigaction(SIGINT, nullptr, &current) == 0 && current.sa_handler == SIG_IGN;
}

// Taken synchronously by the loop's thread only: blocked before any other thread
// starts, so workers inherit the mask and never see them.
sigset_t block_signals() {
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    // A blocked signal is queued even when ignored, so an ignored one stays out of
    // the set rather than being waited for.
    if (!sigint_ignored_at_start()) sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    signal(SIGPIPE, SIG_IGN);
    return signals;
}

// The loop wakes every `tick` to refresh STATUS= and, under a systemd watchdog, to
// ping it at half its timeout. Workers then beat twice per tick, so a loop that is
// turning never misses a ping.
struct Timing {
    milliseconds tick{5000};
    bool watchdog = false;
};

Timing timing_for(std::optional<std::chrono::microseconds> watchdog) {
    Timing timing;
    if (!watchdog) return timing;
    timing.watchdog = true;
    timing.tick = std::clamp(std::chrono::duration_cast<milliseconds>(*watchdog / 2),
                             milliseconds{2}, timing.tick);
    return timing;
}

class SignalLoop {
  public:
    SignalLoop(Daemon& daemon, const sigset_t& signals, Timing timing)
        : daemon_(daemon), signals_(signals), timing_(timing) {}

    int run() {
        // A watcher thread turns "all workers returned" into a wake-up for sigwait,
        // so a crashed worker is not hidden behind a daemon that waits forever.
        std::thread joiner([this] {
            exit_code_ = daemon_.join();
            joined_ = true;
            kill(getpid(), SIGTERM);
        });
        next_tick_ = Clock::now() + timing_.tick;
        for (;;) {
            bool from_inside = false;
            const int sig = wait_for_signal(from_inside);
            if (sig < 0) {
                on_tick();
            } else if (joined_) {
                break;
            } else if (from_inside) {
                // A thread failed: below.
            } else if (sig == SIGHUP) {
                on_reload();
            } else {
                on_stop(sig == SIGINT ? "SIGINT received" : "SIGTERM received");
            }
            // On every wake-up, not just our own: a signal from outside pending at
            // the same time takes the place of the failed thread's.
            if (!failure_seen_) on_thread_failure();
        }
        joiner.join();
        // A worker failed: we stop unasked.
        if (stop_.phase() == StopSequence::Phase::serving) notified(sd::stopping());
        log::info("stopped");
        return exit_code_;
    }

  private:
    // The signal taken, or -1 when the tick (or the end of a withdraw window) came
    // first. `from_inside`: this process sent it (a failed thread, or the joiner).
    int wait_for_signal(bool& from_inside) {
        for (;;) {
            const auto wake = std::min(next_tick_, stop_.deadline().value_or(next_tick_));
            const auto left = std::max(wake - Clock::now(), Clock::duration::zero());
            const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
            const timespec timeout{static_cast<time_t>(ns / 1000000000),
                                   static_cast<long>(ns % 1000000000)};
            siginfo_t info{};
            const int sig = sigtimedwait(&signals_, &info, &timeout);
            from_inside = sig >= 0 && info.si_code == SI_USER && info.si_pid == getpid();
            if (sig >= 0 || errno == EAGAIN) return sig;
        }
    }

    void on_tick() {
        const auto now = Clock::now();
        if (stop_.on_tick(now) == StopSequence::Action::drain) {
            begin_drain("delay over");
            notified(sd::status(stop_.status(daemon_.status_line())));
        }
        if (now < next_tick_) return;  // woken for the end of the withdraw window only
        next_tick_ = now + timing_.tick;
        notified(sd::status(stop_.status(daemon_.status_line())));
        // Past STOPPING=1 systemd no longer expects pings.
        const bool serving = stop_.phase() == StopSequence::Phase::serving;
        if (timing_.watchdog && serving && daemon_.workers_progressed()) notified(sd::watchdog());
    }

    void on_reload() {
        if (stop_.phase() != StopSequence::Phase::serving) return;  // nothing to reload into
        // RELOADING=1 only for a file that validated: a refused reload changes
        // nothing, and says why in STATUS= for `systemctl status`.
        bool reloading = false;
        const Daemon::ReloadResult result = daemon_.reload([&reloading] {
            reloading = true;
            notified(sd::reloading());
        });
        if (result.applied) {
            notified(sd::ready(daemon_.status_line()));
            return;
        }
        // One that failed after RELOADING=1 (the control thread failed) still owes
        // systemd its READY=1, or the reload job would hang until it times out.
        notified(reloading ? sd::ready(result.message) : sd::status(result.message));
        // Keep the failure visible until the next tick replaces it.
        next_tick_ = Clock::now() + timing_.tick;
    }

    // A worker's loop failed: the others go on, but the daemon is less than its
    // config says (that worker's clients were reset). Or the control thread failed:
    // the workers go on, but no target's health changes any more. Either way the
    // daemon stops as for SIGTERM, shutdown delay and grace included, and exits with
    // status 1, for systemd's Restart=on-failure (or any supervisor) to start it
    // whole again. The failed thread logged why.
    void on_thread_failure() {
        const char* what = daemon_.worker_failure()    ? "a worker failed"
                           : daemon_.control_failure() ? "the control thread failed"
                                                       : nullptr;
        if (what == nullptr) return;
        failure_seen_ = true;
        // Already stopping: the stop goes on, and the exit status tells.
        if (stop_.phase() == StopSequence::Phase::serving)
            on_stop(std::string(what) + " (exit status 1)");
    }

    void on_stop(const std::string& why) {
        switch (stop_.on_signal(daemon_.shutdown_delay(), Clock::now())) {
            case StopSequence::Action::withdraw:
                daemon_.withdraw();
                notified(sd::stopping());
                log::info("{}: not ready; still accepting for the shutdown delay of {} ms", why,
                          daemon_.shutdown_delay().count());
                break;
            case StopSequence::Action::drain:
                notified(sd::stopping());
                begin_drain(why);
                break;
            case StopSequence::Action::stop_now:
                log::warn("second signal: closing all connections now");
                daemon_.stop(Duration{0});
                break;
            case StopSequence::Action::none:
                break;
        }
        notified(sd::status(stop_.status(daemon_.status_line())));
    }

    // The listeners close; open connections get shutdown_grace.
    void begin_drain(const std::string& why) {
        const Duration grace = daemon_.shutdown_grace();
        daemon_.withdraw();
        log::info("{}: stopped accepting; waiting up to {} ms for {}", why, grace.count(),
                  count_of(daemon_.active_connections(), "open connection"));
        daemon_.stop(grace);
    }

    Daemon& daemon_;
    const sigset_t signals_;
    const Timing timing_;
    Clock::time_point next_tick_;
    StopSequence stop_;
    int exit_code_ = 0;
    bool failure_seen_ = false;
    std::atomic<bool> joined_{false};
};

}  // namespace

int serve(Config config, DaemonOptions options) {
    log::set_level(config.global.log_level);
    if (auto problem = probe_io_uring()) {
        fmt::print(stderr, "stickyd: {}\n", *problem);
        return kExitEnvironment;
    }
    raise_nofile_limit();
    const sigset_t signals = block_signals();
    const Timing timing = timing_for(sd::watchdog_interval());
    if (timing.watchdog) options.worker.heartbeat = timing.tick / 2;

    Daemon daemon(std::move(config), std::move(options));
    if (!daemon.start()) return kExitEnvironment;
    log::info("stickyd {} ready", STICKYD_VERSION);
    notified(sd::ready(daemon.status_line()));
    return SignalLoop(daemon, signals, timing).run();
}

}  // namespace stickyd
