// The control thread: one thread, one io_uring, every target group's live state.
//
// Reading order: set-up, commands (reload, DNS, drain/enable, view), the loop
// (wake-ups, the tick, deregistration deadlines), one health check from connect to
// close, then verdicts and publishing.
//
// Membership rules are pure (stickyd/target_set.hpp) and health rules too
// (stickyd/health.hpp); this file holds the state, the clock and the I/O.
//
// Health checks: a check is a handful of SQEs and never blocks. Each target owns a
// check slot (a Probe) for as long as it exists; the slot's index goes in
// user_data, and a generation bumped per check makes a late completion from an
// earlier check harmless. A target forgotten mid-check leaves its probe to finish
// its I/O alone; the slot is reused only once nothing is in flight on it. Each check
// runs under one deadline (an IORING_OP_TIMEOUT armed with the connect); when it
// fires whatever is in flight is cancelled, and once a check is decided and needs no
// more I/O the deadline is removed. The socket is closed only when nothing is in
// flight on it any more.
#include "control.hpp"

#include <linux/time_types.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <future>
#include <mutex>
#include <queue>
#include <random>
#include <stdexcept>

#include "stickyd/log.hpp"
#include "stickyd/proxy_protocol.hpp"
#include "uring.hpp"
#include "user_data.hpp"

namespace stickyd {

void CheckDurationHistogram::observe(double seconds) {
    size_t bucket = std::size(kBounds);
    for (size_t i = 0; i < std::size(kBounds); ++i) {
        if (seconds <= kBounds[i]) {
            bucket = i;
            break;
        }
    }
    ++counts[bucket];
    ++total;
    sum_seconds += seconds;
}

const GroupView* ControlView::find(std::string_view group) const {
    for (const GroupView& g : groups)
        if (g.name == group) return &g;
    return nullptr;
}

namespace {

using Clock = std::chrono::steady_clock;

constexpr unsigned kSqEntries = 1024;
constexpr unsigned kCqEntries = 4 * kSqEntries;
// Where the rest of an HTTP response goes while it is drained before the close:
// its content is never looked at, so every check shares it.
constexpr size_t kDiscardSize = 4096;
constexpr uint32_t kNoProbe = UINT32_MAX;

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

// "web-2 (127.0.0.1:9002)", or just the address when that is the id.
std::string name_of(const GroupTarget& t) {
    const std::string address = t.address.to_string();
    return t.id == address ? address : fmt::format("{} ({})", t.id, address);
}

std::string seconds(Duration d) {
    if (d.count() % 1000 == 0) return fmt::format("{} s", d.count() / 1000);
    return fmt::format("{} ms", d.count());
}

// "its 3 connections get 300 s" / "its 3 connections are reset now"
std::string remaining_connections(const GroupTarget& t, const DeregistrationConfig& delay) {
    const uint64_t active = t.stats->active.load(std::memory_order_relaxed);
    const char* noun = active == 1 ? "connection" : "connections";
    if (delay.connection_termination || delay.timeout.count() == 0) {
        return fmt::format("its {} {} are reset now", active, noun);
    }
    return fmt::format("its {} {} get {}", active, noun, seconds(delay.timeout));
}

// Whether a snapshot built by `a`'s balancer settings can reuse one from `b`'s.
bool same_balancer_settings(const TargetGroupConfig& a, const TargetGroupConfig& b) {
    return a.algorithm == b.algorithm &&
           (a.algorithm != Algorithm::maglev || a.maglev_table_size == b.maglev_table_size);
}

enum class Stage : uint8_t {
    idle,        // no check in flight
    connecting,  // connect + deadline in flight
    sending,     // PROXY header and/or HTTP request being sent
    receiving,   // reading the status line
    draining,    // decided; reading to EOF so the close is a FIN, not an RST
    closing,     // no more I/O wanted; waiting for in-flight completions
};

struct Group;

// A target's check slot.
struct Probe {
    // The owner; null when free, or orphaned (its target is gone) while the last
    // check's I/O ends.
    Group* group = nullptr;
    std::string id;
    SocketAddress address;
    // Where the check in flight connects (the health-check port applied). The kernel
    // reads it when the SQE is submitted, after start_check has returned.
    SocketAddress check_address;
    uint32_t epoch = 0;  // bumped per owner: schedule entries of an earlier one are stale
    bool scheduled = false;
    Clock::time_point due;

    // The check in flight.
    Stage stage = Stage::idle;
    uint32_t generation = 0;
    int fd = -1;
    uint8_t inflight = 0;
    bool deadline_armed = false;
    bool decided = false;
    bool tcp = true;
    uint32_t sent = 0;
    std::string request;           // PROXY LOCAL header and/or HTTP request
    std::unique_ptr<char[]> head;  // HTTP: the response so far, only while checking
    uint32_t head_len = 0;
    __kernel_timespec deadline{};
    Duration timeout{0};
    Clock::time_point started;
};

struct Group {
    TargetGroupConfig config;
    bool configured = true;  // false once a reload dropped it; erased when its targets are gone
    std::vector<SocketAddress> discovered;
    std::optional<std::string> dns_error;
    std::vector<GroupTarget> targets;  // sorted by (id, address); handle = probe index
    RouteSlot* slot = nullptr;
    std::shared_ptr<const RoutingTable> table;  // the latest published
    std::vector<size_t> members;                // table index -> index into targets
    bool failing_open = false;
    CheckDurationHistogram durations;

    bool checks_on() const { return config.health_check.enabled; }
};

struct Due {
    Clock::time_point when;
    uint32_t probe;
    uint32_t epoch;
    bool operator>(const Due& other) const { return when > other.when; }
};

struct Deadline {
    Clock::time_point when;
    std::string group;
    std::string id;
    SocketAddress address;
    bool operator>(const Deadline& other) const { return when > other.when; }
};

}  // namespace

struct Control::Loop {
    Loop(const Config& config, Terminate terminate, const Discovered& discovered);
    ~Loop();

    RouteSlot* slot(const std::string& group);
    void run();
    void request_stop();
    void set_running(bool running);

    // Runs `f` on the control thread and returns its result; inline (under the
    // lock) while the thread is not running, when nothing else touches the state.
    template <typename F>
    auto call(F f) -> decltype(f());

    // Commands.
    void apply(const Config& config);
    std::optional<std::string> check(const Config& config);
    void set_discovered(const std::string& group, std::vector<SocketAddress> addresses);
    void set_discovery_error(const std::string& group, std::string error);
    AdminChange drain(const std::string& group, const std::string& id);
    AdminChange enable(const std::string& group, const std::string& id);
    std::shared_ptr<const ControlView> view();

  private:
    // Membership.
    Group& add_group(const TargetGroupConfig& config);
    void reconcile_group(Group& group, Clock::time_point now);
    void deregister(Group& group, GroupTarget& target, const std::string& why);
    Group* find_group(std::string_view name);
    GroupTarget* find_target(Group& group, const std::string& id, const SocketAddress& address);
    std::variant<std::pair<Group*, GroupTarget*>, AdminChange> admin_target(
        const std::string& group, const std::string& id);
    void forget_removed(Group& group, const GroupTarget& target);
    void erase_finished_groups();

    // Probes and the schedule.
    uint32_t take_probe(Group& group, const GroupTarget& target);
    void release_probe(uint32_t p);
    void schedule_checks(Group& group, Clock::time_point now);

    // The loop.
    void dispatch(const io_uring_cqe& cqe);
    void arm_wake();
    void on_wake(int res);
    void run_commands();
    void rearm_tick();
    void on_tick(int res);
    void run_due_checks(Clock::time_point now);
    void run_deadlines(Clock::time_point now);
    void take_passive_reports();

    // One check.
    void start_check(uint32_t p);
    void on_check_event(UserData ud, int res);
    void on_connect(uint32_t p, int res);
    void submit_send(uint32_t p);
    void on_send(uint32_t p, int res);
    void submit_recv(uint32_t p, bool discard);
    void on_recv(uint32_t p, int res);
    void on_deadline(uint32_t p, int res);
    void end_io(uint32_t p);
    void finish_if_quiet(uint32_t p);

    // Verdicts and publishing.
    void decide(uint32_t p, bool passed, const std::string& reason);
    void apply_step(Group& group, GroupTarget& target, const HealthStep& step,
                    const std::string& reason);
    // Rebuilds the group's snapshot from its targets, reusing what it can of the
    // last one (see build_group_routing); stores it only when routing changed.
    void publish(Group& group);
    void terminate(const GroupTarget& target);

    io_uring_sqe* sqe(uint64_t user_data) {
        io_uring_sqe* s = ring_.get_sqe();
        io_uring_sqe_set_data64(s, user_data);
        return s;
    }
    uint64_t tag(Op op, uint32_t p) const { return encode(op, p, probes_[p].generation); }

    Terminate terminate_;
    std::vector<std::unique_ptr<Group>> groups_;  // config order, then dropped ones
    std::mutex slots_mutex_;
    std::map<std::string, std::unique_ptr<RouteSlot>> slots_;  // never shrinks
    // A deque: taking a probe never moves the others, whose SQEs point into them
    // (address, request, timespec) until submitted and completed.
    std::deque<Probe> probes_;
    std::vector<uint32_t> free_probes_;

    Uring ring_;
    int wake_fd_ = -1;
    uint64_t wake_value_ = 0;
    std::mutex commands_mutex_;
    std::deque<std::function<void()>> commands_;
    bool running_ = false;
    std::atomic<bool> stop_{false};
    bool stopping_ = false;
    unsigned loop_ops_ = 0;  // wake read and tick in flight
    unsigned checks_ = 0;    // probes whose check is not idle

    std::priority_queue<Due, std::vector<Due>, std::greater<>> schedule_;
    std::priority_queue<Deadline, std::vector<Deadline>, std::greater<>> deadlines_;
    bool tick_armed_ = false;
    bool tick_removing_ = false;
    Clock::time_point tick_at_;
    __kernel_timespec tick_ts_{};
    std::mt19937_64 random_{std::random_device{}()};
    char discard_[kDiscardSize];
};

// ---------------------------------------------------------------------------
// Set-up

Control::Loop::Loop(const Config& config, Terminate terminate, const Discovered& discovered)
    : terminate_(std::move(terminate)), ring_(kSqEntries, kCqEntries) {
    // Blocking on purpose, as in the worker: io_uring completes a read of a
    // non-blocking eventfd with -EAGAIN at once.
    wake_fd_ = eventfd(0, EFD_CLOEXEC);
    if (wake_fd_ < 0) {
        throw std::runtime_error(
            fmt::format("control thread: cannot create an eventfd: {}", std::strerror(errno)));
    }
    const Clock::time_point now = Clock::now();
    for (const TargetGroupConfig& gc : config.target_groups) {
        Group& group = add_group(gc);
        if (auto it = discovered.find(gc.name); it != discovered.end()) {
            if (auto error = capacity_error(gc, desired_targets(gc, it->second))) {
                log::error(
                    "target group '{}': the {} addresses DNS gave at start-up are not used: {}",
                    gc.name, it->second.size(), *error);
                group.dns_error = std::move(error);
            } else {
                group.discovered = it->second;
            }
        }
        // Every target known at start is routed to while initial (see HealthRecord),
        // the ones DNS named at start-up included.
        auto r = reconcile({}, desired_targets(gc, group.discovered), gc.deregistration_delay, now,
                           true);
        group.targets = std::move(r.targets);
        for (GroupTarget& t : group.targets) t.handle = take_probe(group, t);
        publish(group);
        schedule_checks(group, now);
    }
}

Control::Loop::~Loop() {
    for (const Probe& p : probes_)
        if (p.fd >= 0) ::close(p.fd);
    if (wake_fd_ >= 0) ::close(wake_fd_);
}

Group& Control::Loop::add_group(const TargetGroupConfig& config) {
    auto group = std::make_unique<Group>();
    group->config = config;
    {
        std::lock_guard lock(slots_mutex_);
        auto& slot = slots_[config.name];
        // A group dropped and added back gets its old slot: a listener may still hold it.
        if (!slot) slot = std::make_unique<RouteSlot>(nullptr);
        group->slot = slot.get();
        group->table = slot->load();
    }
    groups_.push_back(std::move(group));
    return *groups_.back();
}

RouteSlot* Control::Loop::slot(const std::string& group) {
    std::lock_guard lock(slots_mutex_);
    auto it = slots_.find(group);
    return it == slots_.end() ? nullptr : it->second.get();
}

void Control::Loop::set_running(bool running) {
    std::deque<std::function<void()>> left;
    {
        std::lock_guard lock(commands_mutex_);
        running_ = running;
        if (running) return;
        left.swap(commands_);
    }
    // Queued while the loop was ending: their callers are waiting.
    for (auto& command : left) command();
}

template <typename F>
auto Control::Loop::call(F f) -> decltype(f()) {
    using Result = decltype(f());
    std::unique_lock lock(commands_mutex_);
    if (!running_) return f();
    std::packaged_task<Result()> task(std::move(f));
    auto result = task.get_future();
    commands_.emplace_back([&task] { task(); });
    lock.unlock();
    eventfd_write(wake_fd_, 1);
    return result.get();
}

// ---------------------------------------------------------------------------
// Membership

Group* Control::Loop::find_group(std::string_view name) {
    for (auto& g : groups_)
        if (g->config.name == name) return g.get();
    return nullptr;
}

GroupTarget* Control::Loop::find_target(Group& group, const std::string& id,
                                        const SocketAddress& address) {
    for (GroupTarget& t : group.targets)
        if (t.id == id && t.address == address) return &t;
    return nullptr;
}

// Moves the group's targets to its config ∪ discovered set; logs, deregisters,
// schedules and publishes what changed.
void Control::Loop::reconcile_group(Group& group, Clock::time_point now) {
    std::vector<DesiredTarget> desired;
    if (group.configured) desired = desired_targets(group.config, group.discovered);
    const DeregistrationConfig& delay = group.config.deregistration_delay;
    auto r = reconcile(std::move(group.targets), desired, delay, now, false);
    group.targets = std::move(r.targets);
    const std::string& name = group.config.name;
    for (size_t i : r.added) {
        GroupTarget& t = group.targets[i];
        t.handle = take_probe(group, t);
        log::info("target group '{}': target {} registered{}: {}", name, name_of(t),
                  t.discovered ? " from DNS" : "",
                  group.checks_on() ? "takes connections after its first passed health check"
                                    : "takes connections now (health checks are off)");
    }
    for (size_t i : r.removed) {
        GroupTarget& t = group.targets[i];
        const char* why = !group.configured ? "its target group was removed from the configuration"
                          : t.discovered    ? "no longer in DNS"
                                            : "removed from the configuration";
        log::info("target group '{}': target {} is deregistering: {}; {}", name, name_of(t), why,
                  remaining_connections(t, delay));
        deadlines_.push({*t.deadline, name, t.id, t.address});
    }
    for (size_t i : r.restored) {
        log::info(
            "target group '{}': target {} registered again before its deregistration "
            "ended: it keeps its health and connections",
            name, name_of(group.targets[i]));
    }
    publish(group);
    schedule_checks(group, now);
}

void Control::Loop::forget_removed(Group& group, const GroupTarget& target) {
    const std::string id = target.id;
    const SocketAddress address = target.address;
    release_probe(target.handle);
    std::erase_if(group.targets,
                  [&](const GroupTarget& t) { return t.id == id && t.address == address; });
    // The snapshot does not list removed targets; only the index mapping changes.
    publish(group);
}

void Control::Loop::erase_finished_groups() {
    std::erase_if(groups_, [](const std::unique_ptr<Group>& g) {
        return !g->configured && g->targets.empty();
    });
}

void Control::Loop::apply(const Config& config) {
    const Clock::time_point now = Clock::now();
    std::vector<std::unique_ptr<Group>> ordered;
    for (const TargetGroupConfig& gc : config.target_groups) {
        Group* group = find_group(gc.name);
        if (group == nullptr) {
            group = &add_group(gc);
            log::info("target group '{}' added with {} targets", gc.name, gc.targets.size());
        } else {
            if (!group->configured) log::info("target group '{}' is configured again", gc.name);
            const bool same_balancer = same_balancer_settings(group->config, gc);
            group->config = gc;
            group->configured = true;
            if (!gc.dns) {
                group->discovered.clear();
                group->dns_error.reset();
            } else if (auto error = capacity_error(gc, desired_targets(gc, group->discovered))) {
                // check() refuses such a reload; this is a DNS answer that came in between.
                log::error("target group '{}': its {} DNS addresses deregister: {}", gc.name,
                           group->discovered.size(), *error);
                group->discovered.clear();
                group->dns_error = std::move(error);
            }
            // Another algorithm (or table size): the last snapshot has nothing to lend.
            if (!same_balancer) group->table = nullptr;
        }
        reconcile_group(*group, now);
    }
    for (auto& g : groups_) {
        if (!g->configured || config.find_group(g->config.name) != nullptr) continue;
        g->configured = false;
        log::info("target group '{}' removed from the configuration: its {} targets deregister",
                  g->config.name, g->targets.size());
        reconcile_group(*g, now);
    }
    // Config order, then the dropped groups still deregistering.
    for (const TargetGroupConfig& gc : config.target_groups) {
        auto it = std::find_if(groups_.begin(), groups_.end(),
                               [&](const auto& g) { return g && g->config.name == gc.name; });
        ordered.push_back(std::move(*it));
    }
    for (auto& g : groups_)
        if (g) ordered.push_back(std::move(g));
    groups_ = std::move(ordered);
    erase_finished_groups();
}

std::optional<std::string> Control::Loop::check(const Config& config) {
    for (const TargetGroupConfig& gc : config.target_groups) {
        const Group* group = find_group(gc.name);
        if (group == nullptr || !gc.dns || group->discovered.empty()) continue;
        if (auto error = capacity_error(gc, desired_targets(gc, group->discovered))) {
            return fmt::format("target group '{}' with the {} addresses DNS gives now: {}", gc.name,
                               group->discovered.size(), *error);
        }
    }
    return std::nullopt;
}

void Control::Loop::set_discovered(const std::string& name, std::vector<SocketAddress> addresses) {
    Group* group = find_group(name);
    if (group == nullptr || !group->configured) return;
    std::sort(addresses.begin(), addresses.end(),
              [](const auto& a, const auto& b) { return a.to_string() < b.to_string(); });
    addresses.erase(std::unique(addresses.begin(), addresses.end()), addresses.end());
    if (auto error = capacity_error(group->config, desired_targets(group->config, addresses))) {
        if (group->dns_error != error) {
            log::error(
                "target group '{}': DNS answer of {} addresses not used, the previous {} "
                "stay: {}",
                name, addresses.size(), group->discovered.size(), *error);
        }
        group->dns_error = std::move(error);
        return;
    }
    if (group->dns_error) {
        log::info("target group '{}': DNS discovery works again ({} addresses)", name,
                  addresses.size());
        group->dns_error.reset();
    }
    if (addresses == group->discovered) return;
    group->discovered = std::move(addresses);
    reconcile_group(*group, Clock::now());
}

void Control::Loop::set_discovery_error(const std::string& name, std::string error) {
    Group* group = find_group(name);
    if (group == nullptr || !group->configured) return;
    // Logged once per failure run by DnsDiscovery itself; here it is only kept for
    // the admin view.
    group->dns_error = std::move(error);
}

// The target an admin request names: by id within the group, or across all groups
// when the group is empty. Removed targets are only found when nothing else is.
std::variant<std::pair<Group*, GroupTarget*>, AdminChange> Control::Loop::admin_target(
    const std::string& group_name, const std::string& id) {
    std::vector<std::pair<Group*, GroupTarget*>> found;
    bool group_seen = false;
    for (auto& g : groups_) {
        if (!group_name.empty() && g->config.name != group_name) continue;
        group_seen = true;
        GroupTarget* best = nullptr;
        for (GroupTarget& t : g->targets) {
            if (t.id != id) continue;
            if (best == nullptr || best->deregistration == Deregistration::removed) best = &t;
        }
        if (best != nullptr) found.emplace_back(g.get(), best);
    }
    if (!group_seen) {
        return AdminChange{AdminChange::Result::unknown_group,
                           fmt::format("no target group '{}'", group_name)};
    }
    if (found.empty()) {
        return AdminChange{
            AdminChange::Result::unknown_target,
            group_name.empty()
                ? fmt::format("no target '{}' in any target group", id)
                : fmt::format("target group '{}' has no target '{}'", group_name, id)};
    }
    if (found.size() > 1) {
        std::string names;
        for (const auto& [g, t] : found) {
            names += names.empty() ? "" : ", ";
            names += "'" + g->config.name + "'";
        }
        return AdminChange{AdminChange::Result::ambiguous,
                           fmt::format("target '{}' is in several target groups ({}); name the "
                                       "target group",
                                       id, names)};
    }
    return found.front();
}

AdminChange Control::Loop::drain(const std::string& group_name, const std::string& id) {
    auto found = admin_target(group_name, id);
    if (auto* error = std::get_if<AdminChange>(&found)) return *error;
    auto [group, target] = std::get<std::pair<Group*, GroupTarget*>>(found);
    const std::string& name = group->config.name;
    if (target->deregistration != Deregistration::none) {
        return AdminChange{
            AdminChange::Result::ok,
            fmt::format("target group '{}': target {} is already {}", name, name_of(*target),
                        target->deregistration == Deregistration::drained
                            ? "draining"
                            : "deregistering (removed)")};
    }
    const DeregistrationConfig& delay = group->config.deregistration_delay;
    target->deregistration = Deregistration::drained;
    target->deadline = deregistration_deadline(delay, Clock::now());
    deadlines_.push({*target->deadline, name, target->id, target->address});
    std::string message =
        fmt::format("target group '{}': target {} is draining: deregistered via admin API; {}",
                    name, name_of(*target), remaining_connections(*target, delay));
    log::info("{}", message);
    publish(*group);
    return AdminChange{AdminChange::Result::ok, std::move(message)};
}

AdminChange Control::Loop::enable(const std::string& group_name, const std::string& id) {
    auto found = admin_target(group_name, id);
    if (auto* error = std::get_if<AdminChange>(&found)) return *error;
    auto [group, target] = std::get<std::pair<Group*, GroupTarget*>>(found);
    const std::string& name = group->config.name;
    if (target->deregistration == Deregistration::removed) {
        return AdminChange{AdminChange::Result::unknown_target,
                           fmt::format("target group '{}': target {} was removed from the {}; "
                                       "only a registered target can be enabled",
                                       name, name_of(*target),
                                       target->discovered ? "DNS records" : "configuration")};
    }
    if (target->deregistration == Deregistration::none) {
        return AdminChange{
            AdminChange::Result::ok,
            fmt::format("target group '{}': target {} is already enabled", name, name_of(*target))};
    }
    target->deregistration = Deregistration::none;
    target->deadline.reset();
    const bool healthy = !group->checks_on() || routable(target->record);
    std::string message = fmt::format(
        "target group '{}': target {} is enabled via admin API: {}", name, name_of(*target),
        healthy ? "takes new connections"
                : fmt::format("takes new connections once healthy (now {})",
                              to_string(target->record.state)));
    log::info("{}", message);
    publish(*group);
    return AdminChange{AdminChange::Result::ok, std::move(message)};
}

std::shared_ptr<const ControlView> Control::Loop::view() {
    auto out = std::make_shared<ControlView>();
    const auto steady_now = Clock::now();
    const auto system_now = std::chrono::system_clock::now();
    for (const auto& g : groups_) {
        GroupView gv;
        gv.name = g->config.name;
        gv.algorithm = g->config.algorithm;
        gv.health_checks = g->checks_on();
        gv.failing_open = g->failing_open;
        gv.table = g->table;
        gv.check_durations = g->durations;
        gv.dns_error = g->dns_error;
        std::vector<uint8_t> usable(g->targets.size(), 0);
        if (g->table) {
            for (size_t m = 0; m < g->members.size(); ++m) {
                // Fail-open aside: the view says whether the target itself is fit.
                const GroupTarget& t = g->targets[g->members[m]];
                usable[g->members[m]] = t.deregistration == Deregistration::none &&
                                        (!g->checks_on() || routable(t.record));
            }
        }
        for (size_t i = 0; i < g->targets.size(); ++i) {
            const GroupTarget& t = g->targets[i];
            TargetView tv;
            tv.id = t.id;
            tv.address = t.address;
            tv.weight = t.weight;
            tv.discovered = t.discovered;
            tv.state = t.record.state;
            tv.deregistration = t.deregistration;
            tv.usable = usable[i] != 0;
            if (t.last_check) {
                tv.last_check_passed = t.last_check->passed;
                tv.last_check_reason = t.last_check->reason;
                tv.last_check_at = t.last_check->at;
                tv.last_check_duration = t.last_check->duration;
            }
            if (t.deadline) {
                tv.deregistration_deadline =
                    system_now + std::chrono::duration_cast<std::chrono::system_clock::duration>(
                                     *t.deadline - steady_now);
            }
            tv.stats = t.stats;
            gv.targets.push_back(std::move(tv));
        }
        out->groups.push_back(std::move(gv));
    }
    return out;
}

// ---------------------------------------------------------------------------
// Probes and the schedule

uint32_t Control::Loop::take_probe(Group& group, const GroupTarget& target) {
    uint32_t p = 0;
    if (!free_probes_.empty()) {
        p = free_probes_.back();
        free_probes_.pop_back();
    } else {
        p = static_cast<uint32_t>(probes_.size());
        probes_.emplace_back();
    }
    Probe& probe = probes_[p];
    probe.group = &group;
    probe.id = target.id;
    probe.address = target.address;
    ++probe.epoch;
    probe.scheduled = false;
    return p;
}

void Control::Loop::release_probe(uint32_t p) {
    Probe& probe = probes_[p];
    probe.group = nullptr;
    probe.scheduled = false;
    ++probe.epoch;
    if (probe.stage == Stage::idle) {
        free_probes_.push_back(p);
    } else {
        end_io(p);  // finish_if_quiet frees it
    }
}

// Every target in service gets a check schedule. Jitter (envoy #10498): the first
// check at a random point of the interval; later ones keep that phase.
void Control::Loop::schedule_checks(Group& group, Clock::time_point now) {
    if (!group.checks_on() || !group.configured) return;
    const auto interval =
        std::chrono::duration_cast<Clock::duration>(group.config.health_check.interval);
    std::uniform_int_distribution<Clock::rep> offset(0, interval.count() - 1);
    for (const GroupTarget& t : group.targets) {
        if (t.deregistration == Deregistration::removed) continue;
        Probe& probe = probes_[t.handle];
        if (probe.scheduled) continue;
        probe.scheduled = true;
        probe.due = now + Clock::duration(offset(random_));
        schedule_.push({probe.due, t.handle, probe.epoch});
    }
}

// ---------------------------------------------------------------------------
// The loop

void Control::Loop::run() {
    ring_.enable();
    arm_wake();
    rearm_tick();
    while (!(stopping_ && loop_ops_ == 0 && checks_ == 0)) {
        ring_.submit_and_wait(1);
        ring_.for_each_completion([this](const io_uring_cqe& cqe) { dispatch(cqe); });
        if (!stopping_) rearm_tick();
    }
}

void Control::Loop::request_stop() {
    stop_ = true;
    eventfd_write(wake_fd_, 1);
}

void Control::Loop::dispatch(const io_uring_cqe& cqe) {
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

void Control::Loop::arm_wake() {
    io_uring_prep_read(sqe(encode(Op::check_wake)), wake_fd_, &wake_value_, sizeof wake_value_, 0);
    ++loop_ops_;
}

void Control::Loop::on_wake(int res) {
    --loop_ops_;
    if (stopping_) return;
    run_commands();
    if (stop_) {
        // Cancel every check and the tick; the loop ends when all have completed.
        stopping_ = true;
        io_uring_prep_cancel64(sqe(encode(Op::ignore)), 0,
                               IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
        return;
    }
    if (res < 0 && res != -EINTR && res != -EAGAIN) {
        log::error("control thread: cannot read its eventfd: {}", std::strerror(-res));
        return;
    }
    arm_wake();
    take_passive_reports();
}

void Control::Loop::run_commands() {
    std::deque<std::function<void()>> batch;
    {
        std::lock_guard lock(commands_mutex_);
        batch.swap(commands_);
    }
    for (auto& command : batch) command();
}

// One absolute timer for the earliest due check or deregistration deadline. An
// earlier one than the timer's (a drain) removes it; on_tick then re-arms.
void Control::Loop::rearm_tick() {
    std::optional<Clock::time_point> next;
    if (!schedule_.empty()) next = schedule_.top().when;
    if (!deadlines_.empty() && (!next || deadlines_.top().when < *next)) {
        next = deadlines_.top().when;
    }
    if (!next) return;
    if (tick_armed_) {
        if (*next < tick_at_ && !tick_removing_) {
            io_uring_prep_timeout_remove(sqe(encode(Op::ignore)), encode(Op::check_tick), 0);
            tick_removing_ = true;
        }
        return;
    }
    tick_at_ = *next;
    tick_ts_ = to_timespec(tick_at_.time_since_epoch());
    io_uring_prep_timeout(sqe(encode(Op::check_tick)), &tick_ts_, 0, IORING_TIMEOUT_ABS);
    tick_armed_ = true;
    ++loop_ops_;
}

void Control::Loop::on_tick(int /*res*/) {
    --loop_ops_;
    tick_armed_ = false;
    tick_removing_ = false;
    if (stopping_) return;
    const Clock::time_point now = Clock::now();
    run_deadlines(now);
    run_due_checks(now);
}

void Control::Loop::run_due_checks(Clock::time_point now) {
    while (!schedule_.empty() && schedule_.top().when <= now) {
        const Due due = schedule_.top();
        schedule_.pop();
        Probe& probe = probes_[due.probe];
        if (probe.group == nullptr || probe.epoch != due.epoch || !probe.scheduled) continue;
        Group& group = *probe.group;
        GroupTarget* target = find_target(group, probe.id, probe.address);
        // Checks stop with the group's health checking, and for removed targets.
        if (!group.checks_on() || !group.configured || target == nullptr ||
            target->deregistration == Deregistration::removed) {
            probe.scheduled = false;
            continue;
        }
        const auto interval =
            std::chrono::duration_cast<Clock::duration>(group.config.health_check.interval);
        // Keep the phase: the next check is one interval after this one was due,
        // skipping whole intervals if the loop fell behind.
        probe.due += interval;
        if (probe.due <= now) probe.due += ((now - probe.due) / interval + 1) * interval;
        schedule_.push({probe.due, due.probe, probe.epoch});
        // timeout < interval, so a check still running here has overrun badly:
        // let it end rather than stack another on the same target.
        if (probe.stage == Stage::idle) start_check(due.probe);
    }
}

// A drained or removed target's delay is over: reset what is left; a removed one
// is then forgotten.
void Control::Loop::run_deadlines(Clock::time_point now) {
    while (!deadlines_.empty() && deadlines_.top().when <= now) {
        const Deadline d = deadlines_.top();
        deadlines_.pop();
        Group* group = find_group(d.group);
        if (group == nullptr) continue;
        GroupTarget* target = find_target(*group, d.id, d.address);
        // Enabled or re-registered since, or drained again later: not this deadline.
        if (target == nullptr || target->deadline != d.when) continue;
        const uint64_t active = target->stats->active.load(std::memory_order_relaxed);
        log::info(
            "target group '{}': target {} deregistration delay over: resetting its {} "
            "remaining connections{}",
            d.group, name_of(*target), active,
            target->deregistration == Deregistration::removed ? " and forgetting it" : "");
        terminate(*target);
        if (target->deregistration == Deregistration::removed) {
            forget_removed(*group, *target);
        } else {
            target->deadline.reset();
        }
    }
    erase_finished_groups();
}

void Control::Loop::take_passive_reports() {
    for (auto& g : groups_) {
        Group& group = *g;
        if (!group.table || !group.table->passive || !group.checks_on()) continue;
        for (size_t m = 0; m < group.members.size(); ++m) {
            auto err = group.table->passive->take_tripped(static_cast<uint32_t>(m));
            if (!err) continue;
            GroupTarget& target = group.targets[group.members[m]];
            const std::string reason =
                fmt::format("{} consecutive connect failures on client traffic (last: {})",
                            group.table->passive->threshold(), connect_error(*err));
            log::debug("target group '{}': passive check of {}: {}", group.config.name,
                       name_of(target), reason);
            apply_step(group, target, passive_failure(target.record), reason);
        }
    }
}

// ---------------------------------------------------------------------------
// One check: connect (+ deadline) [-> send PROXY LOCAL / HTTP request -> recv
// status line] -> drain -> close

void Control::Loop::start_check(uint32_t p) {
    Probe& probe = probes_[p];
    const Group& group = *probe.group;
    const HealthCheckConfig& hc = group.config.health_check;
    probe.check_address = with_port(probe.address, hc.port);
    const SocketAddress& address = probe.check_address;
    const int fd = ::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd < 0) {
        // Our problem (out of fds), not the target's: no verdict.
        log::warn("control thread: cannot create a socket to check {} of target group '{}': {}",
                  probe.id, group.config.name, std::strerror(errno));
        return;
    }
    // Built per check, so a reload's new settings apply from the next check on.
    probe.request.clear();
    if (group.config.proxy_protocol_v2) {
        // As the NLB: the target may demand a PROXY header on every connection, and
        // LOCAL says "this one is the balancer's own", with no client to report.
        const auto header = proxy::encode_v2_local();
        probe.request.assign(reinterpret_cast<const char*>(header.view().data()),
                             header.view().size());
    }
    probe.tcp = hc.protocol == HealthProtocol::tcp;
    if (!probe.tcp) {
        probe.request += fmt::format(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: "
            "stickyd-health\r\nAccept: */*\r\n\r\n",
            hc.path, address.to_string());
    }
    probe.generation = next_generation(probe.generation);
    probe.fd = fd;
    probe.stage = Stage::connecting;
    probe.decided = false;
    probe.sent = 0;
    probe.head_len = 0;
    probe.timeout = hc.effective_timeout();
    probe.deadline = to_timespec(probe.timeout);
    probe.started = Clock::now();
    ++checks_;
    ring_.reserve(2);
    io_uring_prep_connect(sqe(tag(Op::check_connect, p)), fd, address.sa(), address.len());
    io_uring_prep_timeout(sqe(tag(Op::check_timeout, p)), &probe.deadline, 0, 0);
    probe.deadline_armed = true;
    probe.inflight = 2;
}

void Control::Loop::on_check_event(UserData ud, int res) {
    if (ud.slot >= probes_.size()) return;
    const uint32_t p = ud.slot;
    Probe& probe = probes_[p];
    if (probe.stage == Stage::idle || probe.generation != ud.generation) return;
    --probe.inflight;
    if (ud.op == Op::check_timeout) {
        probe.deadline_armed = false;
        on_deadline(p, res);
    } else if (probe.stage == Stage::closing || stopping_) {
        // Cancelled or overtaken by the deadline: nothing more to learn.
    } else if (ud.op == Op::check_connect) {
        on_connect(p, res);
    } else if (ud.op == Op::check_send) {
        on_send(p, res);
    } else if (ud.op == Op::check_recv) {
        on_recv(p, res);
    }
    if (stopping_ && probe.stage != Stage::closing) end_io(p);
    finish_if_quiet(p);
}

void Control::Loop::on_connect(uint32_t p, int res) {
    Probe& probe = probes_[p];
    if (res < 0) {
        decide(p, false, res == -ECANCELED ? "connect timed out" : connect_error(-res));
        end_io(p);
        return;
    }
    if (probe.tcp) decide(p, true, "connected");
    if (!probe.request.empty()) {
        probe.stage = Stage::sending;
        submit_send(p);
        return;
    }
    // Close politely: our FIN first, then wait (within the deadline) for the
    // target's, so backends log a clean disconnect instead of a reset.
    ::shutdown(probe.fd, SHUT_WR);
    probe.stage = Stage::draining;
    submit_recv(p, true);
}

void Control::Loop::submit_send(uint32_t p) {
    Probe& probe = probes_[p];
    io_uring_prep_send(sqe(tag(Op::check_send, p)), probe.fd, probe.request.data() + probe.sent,
                       probe.request.size() - probe.sent, MSG_NOSIGNAL);
    ++probe.inflight;
}

void Control::Loop::on_send(uint32_t p, int res) {
    Probe& probe = probes_[p];
    if (res <= 0) {
        decide(p, false,
               fmt::format("sending the {} failed: {}", probe.tcp ? "PROXY header" : "HTTP request",
                           res == 0 ? "connection closed" : connect_error(-res)));
        end_io(p);
        return;
    }
    probe.sent += static_cast<uint32_t>(res);
    if (probe.sent < probe.request.size()) {
        submit_send(p);
        return;
    }
    if (probe.tcp) {
        ::shutdown(probe.fd, SHUT_WR);
        probe.stage = Stage::draining;
        submit_recv(p, true);
        return;
    }
    probe.head = std::make_unique<char[]>(kMaxStatusLine);
    probe.stage = Stage::receiving;
    submit_recv(p, false);
}

void Control::Loop::submit_recv(uint32_t p, bool discard) {
    Probe& probe = probes_[p];
    void* buffer = discard_;
    size_t size = kDiscardSize;
    if (!discard) {
        // Reads land after what has arrived so far, up to the status-line limit
        // (parse_status_line calls a full buffer without a line ending malformed).
        buffer = probe.head.get() + probe.head_len;
        size = kMaxStatusLine - probe.head_len;
    }
    io_uring_prep_recv(sqe(tag(Op::check_recv, p)), probe.fd, buffer, size, 0);
    ++probe.inflight;
}

void Control::Loop::on_recv(uint32_t p, int res) {
    Probe& probe = probes_[p];
    if (probe.stage == Stage::draining) {
        if (res > 0) {
            submit_recv(p, true);
        } else {
            end_io(p);  // EOF (or an error): the conversation is over
        }
        return;
    }
    if (res <= 0) {
        decide(p, false,
               res == 0 ? "connection closed before an HTTP status line"
                        : fmt::format("reading the HTTP response failed: {}", connect_error(-res)));
        end_io(p);
        return;
    }
    probe.head_len += static_cast<uint32_t>(res);
    const StatusLine line = parse_status_line(std::string_view(probe.head.get(), probe.head_len));
    switch (line.result) {
        case StatusLine::Result::incomplete:
            submit_recv(p, false);
            return;
        case StatusLine::Result::malformed:
            decide(p, false, fmt::format("malformed HTTP response: {}", line.problem));
            end_io(p);
            return;
        case StatusLine::Result::ok: {
            // An orphaned probe has no group any more; its verdict is dropped anyway.
            const Matcher* matcher =
                probe.group ? &probe.group->config.health_check.matcher : nullptr;
            if (matcher == nullptr || matcher->matches(line.code)) {
                decide(p, true, fmt::format("HTTP {}", line.code));
            } else {
                decide(p, false, fmt::format("HTTP {} (matcher {})", line.code, matcher->text()));
            }
            // Connection: close was asked for; read to the target's FIN so that
            // closing does not reset a connection with unread data.
            probe.stage = Stage::draining;
            submit_recv(p, true);
            return;
        }
    }
}

void Control::Loop::on_deadline(uint32_t p, int res) {
    Probe& probe = probes_[p];
    if (res != -ETIME) return;  // removed: the check ended first
    if (!probe.decided) {
        const char* what =
            probe.stage == Stage::connecting ? "connect"
            : probe.stage == Stage::sending
                ? (probe.tcp ? "sending the PROXY header" : "sending the HTTP request")
                : "waiting for the HTTP status line";
        decide(p, false, fmt::format("timed out after {} ms ({})", probe.timeout.count(), what));
    }
    end_io(p);
}

// No more I/O for this check: cancel what is in flight and the deadline; the
// socket is closed once their completions are in.
void Control::Loop::end_io(uint32_t p) {
    Probe& probe = probes_[p];
    if (probe.stage == Stage::closing || probe.stage == Stage::idle) return;
    probe.stage = Stage::closing;
    if (probe.inflight > (probe.deadline_armed ? 1 : 0)) {
        io_uring_prep_cancel_fd(sqe(encode(Op::ignore)), probe.fd, IORING_ASYNC_CANCEL_ALL);
    }
    if (probe.deadline_armed) {
        io_uring_prep_timeout_remove(sqe(encode(Op::ignore)), tag(Op::check_timeout, p), 0);
    }
}

void Control::Loop::finish_if_quiet(uint32_t p) {
    Probe& probe = probes_[p];
    if (probe.stage != Stage::closing || probe.inflight != 0) return;
    ::close(probe.fd);
    probe.fd = -1;
    probe.stage = Stage::idle;
    probe.head.reset();  // a check holds no buffer between runs
    --checks_;
    if (probe.group == nullptr) free_probes_.push_back(p);  // orphaned: its target is gone
}

// ---------------------------------------------------------------------------
// Verdicts and publishing

void Control::Loop::decide(uint32_t p, bool passed, const std::string& reason) {
    Probe& probe = probes_[p];
    if (probe.decided || stopping_) return;
    probe.decided = true;
    if (probe.group == nullptr) return;
    Group& group = *probe.group;
    GroupTarget* target = find_target(group, probe.id, probe.address);
    if (target == nullptr) return;
    const auto took = Clock::now() - probe.started;
    const auto micros = std::chrono::duration_cast<std::chrono::microseconds>(took);
    target->last_check = LastCheck{passed, reason, std::chrono::system_clock::now(), micros};
    group.durations.observe(std::chrono::duration<double>(took).count());
    log::debug("target group '{}': health check of {}: {} ({})", group.config.name,
               name_of(*target), passed ? "passed" : "failed", reason);
    const Thresholds thresholds = group.config.health_check.thresholds();
    const HealthState before = target->record.state;
    const HealthStep step = next(target->record, passed, thresholds);
    std::string why = reason;
    if (step.transition == HealthState::unhealthy) {
        why += fmt::format("; {} consecutive failed checks", thresholds.unhealthy);
    } else if (step.transition == HealthState::healthy && before == HealthState::unhealthy) {
        why += fmt::format("; {} consecutive passed checks", thresholds.healthy);
    }
    apply_step(group, *target, step, why);
}

void Control::Loop::apply_step(Group& group, GroupTarget& target, const HealthStep& step,
                               const std::string& reason) {
    const HealthRecord before = target.record;
    target.record = step.record;
    if (!step.transition) return;
    const std::string& name = group.config.name;
    const HealthState state = *step.transition;
    if (state == HealthState::unhealthy) {
        log::warn("target group '{}': target {} is unhealthy: {}", name, name_of(target), reason);
    } else if (state == HealthState::healthy) {
        const bool recovered = before.state == HealthState::unhealthy;
        log::info("target group '{}': target {} is healthy: {} ({})", name, name_of(target),
                  recovered ? "recovered" : "first check passed", reason);
    } else {
        log::info("target group '{}': target {} is {}: {}", name, name_of(target), to_string(state),
                  reason);
    }
    publish(group);
    // Connections are reset only for a target that was taking traffic; a drained
    // or removed one keeps its deregistration delay.
    if (group.config.connection_termination_on_unhealthy &&
        target.deregistration == Deregistration::none && routable(before) &&
        !routable(target.record)) {
        terminate(target);
    }
}

void Control::Loop::publish(Group& group) {
    GroupRouting routing = build_group_routing(group.config, group.targets, group.table.get());
    RoutingTable& table = *routing.table;
    const HealthCheckConfig& hc = group.config.health_check;
    if (!hc.enabled || !hc.passive) {
        table.passive = nullptr;
    } else if (!table.passive || table.passive->threshold() != hc.passive_failures) {
        table.passive =
            std::make_shared<PassiveHealth>(table.targets.size(), hc.passive_failures, wake_fd_);
    }
    group.members = std::move(routing.members);
    const std::string& name = group.config.name;
    if (routing.failing_open && !group.failing_open) {
        log::error(
            "target group '{}': no target is healthy; failing open: routing to all {} targets "
            "in service as if they were healthy",
            name, std::count(table.usable.begin(), table.usable.end(), 1));
    } else if (!routing.failing_open && group.failing_open && routing.usable > 0) {
        log::warn("target group '{}': {} of {} targets healthy again; no longer failing open", name,
                  routing.usable, table.targets.size());
    }
    if (table.no_target && !(group.table && group.table->no_target)) {
        log::warn("target group '{}': every target is drained: new clients are refused", name);
    }
    group.failing_open = routing.failing_open;
    if (group.table && same_routing(*group.table, table)) return;
    group.table = routing.table;
    group.slot->store(group.table);
}

void Control::Loop::terminate(const GroupTarget& target) {
    if (terminate_) terminate_({target.stats});
}

// ---------------------------------------------------------------------------

Control::Control(const Config& config, Terminate terminate, const Discovered& discovered)
    : loop_(std::make_unique<Loop>(config, std::move(terminate), discovered)) {}

Control::~Control() {
    stop();
}

RouteSlot* Control::slot(const std::string& group) {
    return loop_->slot(group);
}

void Control::start() {
    if (thread_.joinable()) return;
    loop_->set_running(true);
    thread_ = std::thread([this] {
        try {
            loop_->run();
        } catch (const std::exception& e) {
            log::error("control thread failed: {}; target health and membership are frozen",
                       e.what());
        }
    });
}

void Control::stop() {
    if (!thread_.joinable()) return;
    loop_->request_stop();
    thread_.join();
    loop_->set_running(false);
}

void Control::apply(const Config& config) {
    loop_->call([&] { loop_->apply(config); });
}

std::optional<std::string> Control::check(const Config& config) {
    return loop_->call([&] { return loop_->check(config); });
}

void Control::set_discovered(const std::string& group, std::vector<SocketAddress> addresses) {
    loop_->call([&] { loop_->set_discovered(group, std::move(addresses)); });
}

void Control::set_discovery_error(const std::string& group, std::string error) {
    loop_->call([&] { loop_->set_discovery_error(group, std::move(error)); });
}

AdminChange Control::drain(const std::string& group, const std::string& id) {
    return loop_->call([&] { return loop_->drain(group, id); });
}

AdminChange Control::enable(const std::string& group, const std::string& id) {
    return loop_->call([&] { return loop_->enable(group, id); });
}

std::shared_ptr<const ControlView> Control::view() {
    return loop_->call([&] { return loop_->view(); });
}

}  // namespace stickyd
