// The health checker: one thread, one io_uring, every target's checks.
//
// Reading order: set-up (targets, first snapshots), the loop (wake-ups and the
// schedule), one check from connect to close, then verdicts and publishing.
//
// A check is at most a handful of SQEs and never blocks: thousands of targets cost
// one thread that mostly sleeps. Each target has at most one check in flight, so
// the target's index is the check's slot in user_data, and a generation (bumped
// per check) makes a late completion from an earlier check harmless.
//
// Each check runs under one deadline (an IORING_OP_TIMEOUT armed with the
// connect). When it fires, whatever is still in flight is cancelled; once a
// check is decided and needs no more I/O, the deadline is removed. The socket is
// closed only when nothing is in flight on it any more.
#include "health_checker.hpp"

#include <linux/time_types.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <queue>
#include <random>
#include <stdexcept>

#include "stickyd/log.hpp"
#include "uring.hpp"
#include "user_data.hpp"

namespace stickyd {
namespace {

using Clock = std::chrono::steady_clock;

constexpr unsigned kSqEntries = 1024;
constexpr unsigned kCqEntries = 4 * kSqEntries;
// Where the rest of an HTTP response goes while it is drained before the close:
// its content is never looked at, so every check shares it.
constexpr size_t kDiscardSize = 4096;

__kernel_timespec to_timespec(std::chrono::nanoseconds d) {
    __kernel_timespec ts{};
    ts.tv_sec = d.count() / 1'000'000'000;
    ts.tv_nsec = d.count() % 1'000'000'000;
    return ts;
}

SocketAddress with_port(const SocketAddress& address, std::optional<uint16_t> port) {
    if (!port) return address;
    sockaddr_storage storage{};
    std::memcpy(&storage, address.sa(), address.len());
    if (storage.ss_family == AF_INET) {
        reinterpret_cast<sockaddr_in*>(&storage)->sin_port = htons(*port);
    } else {
        reinterpret_cast<sockaddr_in6*>(&storage)->sin6_port = htons(*port);
    }
    return SocketAddress::from_sockaddr(reinterpret_cast<const sockaddr*>(&storage), address.len());
}

std::string connect_error(int err) {
    if (err == ECONNREFUSED) return "connection refused";
    std::string text = std::strerror(err);
    if (!text.empty())
        text[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(text[0])));
    return text;
}

enum class Stage : uint8_t {
    idle,        // no check in flight
    connecting,  // connect + deadline in flight
    sending,     // HTTP request being sent
    receiving,   // reading the status line
    draining,    // decided; reading to EOF so the close is a FIN, not an RST
    closing,     // no more I/O wanted; waiting for in-flight completions
};

struct Target {
    uint32_t group = 0;
    uint32_t index = 0;  // in the group's RoutingTable::targets
    HealthRecord* record = nullptr;
    std::string name;  // "id (ip:port)" for logs
    SocketAddress check_address;
    Clock::time_point due;

    // The check in flight.
    Stage stage = Stage::idle;
    uint32_t generation = 0;
    int fd = -1;
    uint8_t inflight = 0;
    bool deadline_armed = false;
    bool decided = false;
    uint32_t sent = 0;
    std::string request;           // HTTP: built once, with this target's Host header
    std::unique_ptr<char[]> head;  // HTTP: the response so far, only while checking
    uint32_t head_len = 0;
    __kernel_timespec deadline{};
};

struct Group {
    std::string name;
    HealthCheckConfig hc;
    bool terminate = true;  // connection_termination_on_unhealthy
    RouteSlot* slot = nullptr;
    std::shared_ptr<const RoutingTable> table;  // the latest published
    std::shared_ptr<PassiveHealth> passive;
    std::vector<uint32_t> targets;  // into Loop::targets_, by table index
    __kernel_timespec timeout{};
    bool failing_open = false;
};

struct Due {
    Clock::time_point when;
    uint32_t target;
    bool operator>(const Due& other) const { return when > other.when; }
};

}  // namespace

struct HealthChecker::Loop {
    Loop(const Config& config, const std::map<std::string, RouteSlot*>& slots, HealthStore store,
         std::function<void()> on_terminate);
    ~Loop();

    void run();
    void request_stop();
    const HealthStore& store() const { return store_; }

  private:
    // Wake-ups and the schedule.
    void dispatch(const io_uring_cqe& cqe);
    void arm_wake();
    void on_wake(int res);
    void arm_tick();
    void on_tick(int res);
    void take_passive_reports();

    // One check.
    void start_check(uint32_t t);
    void on_check_event(UserData ud, int res);
    void on_connect(Target& target, int res);
    void submit_send(uint32_t t);
    void on_send(Target& target, int res);
    void submit_recv(uint32_t t, bool discard);
    void on_recv(uint32_t t, int res);
    void on_deadline(Target& target, int res);
    void end_io(uint32_t t);
    void finish_if_quiet(Target& target);

    // Verdicts and publishing.
    void decide(Target& target, bool passed, const std::string& reason);
    void apply(Target& target, const HealthStep& step, const std::string& reason);
    void publish(Group& group, std::optional<uint32_t> terminated);

    io_uring_sqe* sqe(uint64_t user_data) {
        io_uring_sqe* s = ring_.get_sqe();
        io_uring_sqe_set_data64(s, user_data);
        return s;
    }
    uint64_t tag(Op op, uint32_t t) const { return encode(op, t, targets_[t].generation); }

    HealthStore store_;
    std::function<void()> on_terminate_;
    std::vector<Group> groups_;
    std::vector<Target> targets_;
    Uring ring_;
    int wake_fd_ = -1;
    uint64_t wake_value_ = 0;
    std::atomic<bool> stop_{false};
    bool stopping_ = false;
    unsigned loop_ops_ = 0;  // wake read and tick in flight
    unsigned checks_ = 0;    // targets whose check is not idle

    std::priority_queue<Due, std::vector<Due>, std::greater<>> schedule_;
    bool tick_armed_ = false;
    Clock::time_point tick_at_;
    __kernel_timespec tick_ts_{};
    std::mt19937_64 random_{std::random_device{}()};
    char discard_[kDiscardSize];
};

// ---------------------------------------------------------------------------
// Set-up

HealthChecker::Loop::Loop(const Config& config, const std::map<std::string, RouteSlot*>& slots,
                          HealthStore store, std::function<void()> on_terminate)
    : store_(std::move(store)),
      on_terminate_(std::move(on_terminate)),
      ring_(kSqEntries, kCqEntries) {
    // Blocking on purpose, as in the worker: io_uring completes a read of a
    // non-blocking eventfd with -EAGAIN at once.
    wake_fd_ = eventfd(0, EFD_CLOEXEC);
    if (wake_fd_ < 0) {
        throw std::runtime_error(
            fmt::format("health checker: cannot create an eventfd: {}", std::strerror(errno)));
    }
    const Clock::time_point now = Clock::now();
    for (const TargetGroupConfig& gc : config.target_groups) {
        if (!gc.health_check.enabled) continue;
        auto it = slots.find(gc.name);
        if (it == slots.end()) continue;
        Group group;
        group.name = gc.name;
        group.hc = gc.health_check;
        group.terminate = gc.connection_termination_on_unhealthy;
        group.slot = it->second;
        group.table = group.slot->load();
        group.timeout = to_timespec(gc.health_check.effective_timeout());
        const auto& table_targets = group.table->targets;
        if (gc.health_check.passive) {
            group.passive = std::make_shared<PassiveHealth>(
                table_targets.size(), gc.health_check.passive_failures, wake_fd_);
        }
        const auto gi = static_cast<uint32_t>(groups_.size());
        const auto interval = std::chrono::duration_cast<Clock::duration>(gc.health_check.interval);
        std::uniform_int_distribution<Clock::rep> offset(0, interval.count() - 1);
        for (uint32_t i = 0; i < table_targets.size(); ++i) {
            const RouteTarget& rt = table_targets[i];
            const std::string address = rt.address.to_string();
            auto record = store_.find(TargetKey{gc.name, rt.id, address});
            if (record == store_.end()) {
                record = store_.emplace(TargetKey{gc.name, rt.id, address}, HealthRecord{}).first;
            }
            Target target;
            target.group = gi;
            target.index = i;
            target.record = &record->second;
            target.name = rt.id == address ? address : fmt::format("{} ({})", rt.id, address);
            target.check_address = with_port(rt.address, gc.health_check.port);
            if (gc.health_check.protocol == HealthProtocol::http) {
                target.request = fmt::format(
                    "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: "
                    "stickyd-health\r\nAccept: */*\r\n\r\n",
                    gc.health_check.path, target.check_address.to_string());
            }
            // Jitter (envoy #10498): the first check at a random point of the
            // interval; later ones keep that phase.
            target.due = now + Clock::duration(offset(random_));
            group.targets.push_back(static_cast<uint32_t>(targets_.size()));
            schedule_.push({target.due, static_cast<uint32_t>(targets_.size())});
            targets_.push_back(std::move(target));
        }
        groups_.push_back(std::move(group));
        publish(groups_.back(), std::nullopt);
    }
}

HealthChecker::Loop::~Loop() {
    for (const Target& t : targets_)
        if (t.fd >= 0) ::close(t.fd);
    if (wake_fd_ >= 0) ::close(wake_fd_);
}

// ---------------------------------------------------------------------------
// The loop

void HealthChecker::Loop::run() {
    ring_.enable();
    arm_wake();
    arm_tick();
    while (!(stopping_ && loop_ops_ == 0 && checks_ == 0)) {
        ring_.submit_and_wait(1);
        ring_.for_each_completion([this](const io_uring_cqe& cqe) { dispatch(cqe); });
        if (!stopping_ && !tick_armed_) arm_tick();
    }
}

void HealthChecker::Loop::request_stop() {
    stop_ = true;
    eventfd_write(wake_fd_, 1);
}

void HealthChecker::Loop::dispatch(const io_uring_cqe& cqe) {
    const UserData ud = decode(cqe.user_data);
    switch (ud.op) {
        case Op::check_wake:
            return on_wake(cqe.res);
        case Op::check_tick:
            return on_tick(cqe.res);
        case Op::check_connect:
        case Op::check_send:
        case Op::check_recv:
        case Op::check_timeout:
            return on_check_event(ud, cqe.res);
        default:
            return;  // cancel and timeout-remove results
    }
}

void HealthChecker::Loop::arm_wake() {
    io_uring_prep_read(sqe(encode(Op::check_wake)), wake_fd_, &wake_value_, sizeof wake_value_, 0);
    ++loop_ops_;
}

void HealthChecker::Loop::on_wake(int res) {
    --loop_ops_;
    if (stopping_) return;
    if (stop_) {
        // Cancel every check and the tick; the loop ends when all have completed.
        stopping_ = true;
        io_uring_prep_cancel64(sqe(encode(Op::ignore)), 0,
                               IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
        return;
    }
    if (res < 0 && res != -EINTR && res != -EAGAIN) {
        log::error("health checker: cannot read its eventfd: {}", std::strerror(-res));
        return;
    }
    arm_wake();
    take_passive_reports();
}

// One absolute timer for the earliest due check; re-armed after each batch.
void HealthChecker::Loop::arm_tick() {
    if (schedule_.empty()) return;
    tick_at_ = schedule_.top().when;
    tick_ts_ = to_timespec(tick_at_.time_since_epoch());
    io_uring_prep_timeout(sqe(encode(Op::check_tick)), &tick_ts_, 0, IORING_TIMEOUT_ABS);
    tick_armed_ = true;
    ++loop_ops_;
}

void HealthChecker::Loop::on_tick(int /*res*/) {
    --loop_ops_;
    tick_armed_ = false;
    if (stopping_) return;
    const Clock::time_point now = Clock::now();
    while (!schedule_.empty() && schedule_.top().when <= now) {
        const uint32_t t = schedule_.top().target;
        schedule_.pop();
        Target& target = targets_[t];
        const auto interval =
            std::chrono::duration_cast<Clock::duration>(groups_[target.group].hc.interval);
        // Keep the phase: the next check is one interval after this one was due,
        // skipping whole intervals if the loop fell behind.
        target.due += interval;
        if (target.due <= now) target.due += ((now - target.due) / interval + 1) * interval;
        schedule_.push({target.due, t});
        // timeout < interval, so a check still running here has overrun badly:
        // let it end rather than stack another on the same target.
        if (target.stage == Stage::idle) start_check(t);
    }
}

void HealthChecker::Loop::take_passive_reports() {
    for (Group& group : groups_) {
        if (!group.passive) continue;
        for (uint32_t t : group.targets) {
            Target& target = targets_[t];
            auto err = group.passive->take_tripped(target.index);
            if (!err) continue;
            const std::string reason = fmt::format(
                "{} consecutive connect failures on client traffic (last: {})",
                group.passive->threshold(), *err == ECANCELED ? "timed out" : connect_error(*err));
            apply(target, passive_failure(*target.record), reason);
        }
    }
}

// ---------------------------------------------------------------------------
// One check: connect (+ deadline) [-> send -> recv status line] -> drain -> close

void HealthChecker::Loop::start_check(uint32_t t) {
    Target& target = targets_[t];
    const Group& group = groups_[target.group];
    const int fd = ::socket(target.check_address.family(), SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd < 0) {
        // Our problem (out of fds), not the target's: no verdict.
        log::warn("health checker: cannot create a socket to check {}: {}", target.name,
                  std::strerror(errno));
        return;
    }
    target.generation = next_generation(target.generation);
    target.fd = fd;
    target.stage = Stage::connecting;
    target.decided = false;
    target.sent = 0;
    target.head_len = 0;
    target.deadline = group.timeout;
    ++checks_;
    io_uring_prep_connect(sqe(tag(Op::check_connect, t)), fd, target.check_address.sa(),
                          target.check_address.len());
    io_uring_prep_timeout(sqe(tag(Op::check_timeout, t)), &target.deadline, 0, 0);
    target.deadline_armed = true;
    target.inflight = 2;
}

void HealthChecker::Loop::on_check_event(UserData ud, int res) {
    if (ud.slot >= targets_.size()) return;
    Target& target = targets_[ud.slot];
    if (target.stage == Stage::idle || target.generation != ud.generation) return;
    --target.inflight;
    if (ud.op == Op::check_timeout) {
        target.deadline_armed = false;
        on_deadline(target, res);
    } else if (target.stage == Stage::closing || stopping_) {
        // Cancelled or overtaken by the deadline: nothing more to learn.
    } else if (ud.op == Op::check_connect) {
        on_connect(target, res);
    } else if (ud.op == Op::check_send) {
        on_send(target, res);
    } else if (ud.op == Op::check_recv) {
        on_recv(ud.slot, res);
    }
    if (stopping_ && target.stage != Stage::closing) end_io(ud.slot);
    finish_if_quiet(target);
}

void HealthChecker::Loop::on_connect(Target& target, int res) {
    const uint32_t t = static_cast<uint32_t>(&target - targets_.data());
    const Group& group = groups_[target.group];
    if (res < 0) {
        decide(target, false, res == -ECANCELED ? "connect timed out" : connect_error(-res));
        end_io(t);
        return;
    }
    if (group.hc.protocol == HealthProtocol::tcp) {
        decide(target, true, "connected");
        // Close politely: our FIN first, then wait (within the deadline) for the
        // target's, so backends log a clean disconnect instead of a reset.
        ::shutdown(target.fd, SHUT_WR);
        target.stage = Stage::draining;
        submit_recv(t, true);
        return;
    }
    target.stage = Stage::sending;
    submit_send(t);
}

void HealthChecker::Loop::submit_send(uint32_t t) {
    Target& target = targets_[t];
    io_uring_prep_send(sqe(tag(Op::check_send, t)), target.fd, target.request.data() + target.sent,
                       target.request.size() - target.sent, MSG_NOSIGNAL);
    ++target.inflight;
}

void HealthChecker::Loop::on_send(Target& target, int res) {
    const uint32_t t = static_cast<uint32_t>(&target - targets_.data());
    if (res <= 0) {
        decide(target, false,
               fmt::format("sending the HTTP request failed: {}",
                           res == 0 ? "connection closed" : connect_error(-res)));
        end_io(t);
        return;
    }
    target.sent += static_cast<uint32_t>(res);
    if (target.sent < target.request.size()) {
        submit_send(t);
        return;
    }
    target.head = std::make_unique<char[]>(kMaxStatusLine);
    target.stage = Stage::receiving;
    submit_recv(t, false);
}

void HealthChecker::Loop::submit_recv(uint32_t t, bool discard) {
    Target& target = targets_[t];
    void* buffer = discard_;
    size_t size = kDiscardSize;
    if (!discard) {
        // Reads land after what has arrived so far, up to the status-line limit
        // (parse_status_line calls a full buffer without a line ending malformed).
        buffer = target.head.get() + target.head_len;
        size = kMaxStatusLine - target.head_len;
    }
    io_uring_prep_recv(sqe(tag(Op::check_recv, t)), target.fd, buffer, size, 0);
    ++target.inflight;
}

void HealthChecker::Loop::on_recv(uint32_t t, int res) {
    Target& target = targets_[t];
    const Group& group = groups_[target.group];
    if (target.stage == Stage::draining) {
        if (res > 0) {
            submit_recv(t, true);
        } else {
            end_io(t);  // EOF (or an error): the conversation is over
        }
        return;
    }
    if (res <= 0) {
        decide(target, false,
               res == 0 ? "connection closed before an HTTP status line"
                        : fmt::format("reading the HTTP response failed: {}", connect_error(-res)));
        end_io(t);
        return;
    }
    target.head_len += static_cast<uint32_t>(res);
    const StatusLine line = parse_status_line(std::string_view(target.head.get(), target.head_len));
    switch (line.result) {
        case StatusLine::Result::incomplete:
            submit_recv(t, false);
            return;
        case StatusLine::Result::malformed:
            decide(target, false, fmt::format("malformed HTTP response: {}", line.problem));
            end_io(t);
            return;
        case StatusLine::Result::ok:
            if (group.hc.matcher.matches(line.code)) {
                decide(target, true, fmt::format("HTTP {}", line.code));
            } else {
                decide(target, false,
                       fmt::format("HTTP {} (matcher {})", line.code, group.hc.matcher.text()));
            }
            // Connection: close was asked for; read to the target's FIN so that
            // closing does not reset a connection with unread data.
            target.stage = Stage::draining;
            submit_recv(t, true);
            return;
    }
}

void HealthChecker::Loop::on_deadline(Target& target, int res) {
    const uint32_t t = static_cast<uint32_t>(&target - targets_.data());
    if (res != -ETIME) return;  // removed: the check ended first
    if (!target.decided) {
        const auto ms = groups_[target.group].hc.effective_timeout().count();
        const char* what = target.stage == Stage::connecting ? "connect"
                           : target.stage == Stage::sending  ? "sending the HTTP request"
                                                             : "waiting for the HTTP status line";
        decide(target, false, fmt::format("timed out after {} ms ({})", ms, what));
    }
    end_io(t);
}

// No more I/O for this check: cancel what is in flight and the deadline; the
// socket is closed once their completions are in.
void HealthChecker::Loop::end_io(uint32_t t) {
    Target& target = targets_[t];
    if (target.stage == Stage::closing) return;
    target.stage = Stage::closing;
    if (target.inflight > (target.deadline_armed ? 1 : 0)) {
        io_uring_prep_cancel_fd(sqe(encode(Op::ignore)), target.fd, IORING_ASYNC_CANCEL_ALL);
    }
    if (target.deadline_armed) {
        io_uring_prep_timeout_remove(sqe(encode(Op::ignore)), tag(Op::check_timeout, t), 0);
    }
}

void HealthChecker::Loop::finish_if_quiet(Target& target) {
    if (target.stage != Stage::closing || target.inflight != 0) return;
    ::close(target.fd);
    target.fd = -1;
    target.stage = Stage::idle;
    target.head.reset();  // a check holds no buffer between runs
    --checks_;
}

// ---------------------------------------------------------------------------
// Verdicts and publishing

void HealthChecker::Loop::decide(Target& target, bool passed, const std::string& reason) {
    if (target.decided || stopping_) return;
    target.decided = true;
    log::debug("health check of {}: {} ({})", target.name, passed ? "passed" : "failed", reason);
    const Thresholds thresholds = groups_[target.group].hc.thresholds();
    const HealthState before = target.record->state;
    const HealthStep step = next(*target.record, passed, thresholds);
    std::string why = reason;
    if (step.transition == HealthState::unhealthy) {
        why += fmt::format("; {} consecutive failed checks", thresholds.unhealthy);
    } else if (step.transition == HealthState::healthy && before == HealthState::unhealthy) {
        why += fmt::format("; {} consecutive passed checks", thresholds.healthy);
    }
    apply(target, step, why);
}

void HealthChecker::Loop::apply(Target& target, const HealthStep& step, const std::string& reason) {
    const HealthRecord before = *target.record;
    *target.record = step.record;
    if (!step.transition) return;
    Group& group = groups_[target.group];
    const HealthState state = *step.transition;
    if (state == HealthState::unhealthy) {
        log::warn("target group '{}': target {} is unhealthy: {}", group.name, target.name, reason);
    } else if (state == HealthState::healthy) {
        const bool recovered = before.state == HealthState::unhealthy;
        log::info("target group '{}': target {} is healthy: {} ({})", group.name, target.name,
                  recovered ? "recovered" : "first check passed", reason);
    } else {
        log::info("target group '{}': target {} is {}: {}", group.name, target.name,
                  to_string(state), reason);
    }
    // Connections are reset only for a target that was taking traffic.
    const bool terminate = group.terminate && routable(before) && !routable(*target.record);
    if (routable(before) != routable(*target.record) || terminate) {
        publish(group, terminate ? std::optional<uint32_t>(target.index) : std::nullopt);
    }
}

void HealthChecker::Loop::publish(Group& group, std::optional<uint32_t> terminated) {
    auto table = std::make_shared<RoutingTable>(*group.table);
    table->passive = group.passive;
    size_t usable = 0;
    for (uint32_t t : group.targets) {
        const Target& target = targets_[t];
        const bool ok = routable(*target.record);
        table->usable[target.index] = ok ? 1 : 0;
        usable += ok ? 1 : 0;
    }
    if (terminated) ++table->terminations[*terminated];
    const bool failing_open = usable == 0 && !table->targets.empty();
    if (failing_open && !group.failing_open) {
        log::error(
            "target group '{}': no target is healthy; failing open: routing to all {} targets "
            "as if they were healthy",
            group.name, table->targets.size());
    } else if (!failing_open && group.failing_open) {
        log::warn("target group '{}': {} of {} targets healthy again; no longer failing open",
                  group.name, usable, table->targets.size());
    }
    group.failing_open = failing_open;
    group.table = table;
    group.slot->store(std::move(table));
    if (terminated && on_terminate_) on_terminate_();
}

// ---------------------------------------------------------------------------

HealthChecker::HealthChecker(const Config& config, const std::map<std::string, RouteSlot*>& slots,
                             HealthStore store, std::function<void()> on_terminate)
    : loop_(std::make_unique<Loop>(config, slots, std::move(store), std::move(on_terminate))) {}

HealthChecker::~HealthChecker() {
    stop();
}

void HealthChecker::start() {
    thread_ = std::thread([this] {
        try {
            loop_->run();
        } catch (const std::exception& e) {
            log::error("health checker failed: {}; target health is frozen", e.what());
        }
    });
}

void HealthChecker::stop() {
    if (!thread_.joinable()) return;
    loop_->request_stop();
    thread_.join();
}

const HealthStore& HealthChecker::store() const {
    return loop_->store();
}

}  // namespace stickyd
