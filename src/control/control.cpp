// The control thread: one thread, one io_uring, every target group's live state.
//
// Reading order: set-up, commands (reload, DNS, drain/enable, view), the loop
// (wake-ups, the tick, deregistration deadlines), one health check from connect to
// close, then verdicts and publishing.
//
// Membership rules are pure (stickyd/target_set.hpp) and health rules too
// (stickyd/health.hpp); this file holds the state, the clock and the I/O.
//
// Health checks: each target owns a check slot (a Probe) for as long as it exists;
// its schedule lives here and its I/O in the HealthChecker (health_checker.hpp),
// which reports verdicts back. A target forgotten mid-check leaves its slot to the
// checker until the check is quiet; only then is the slot reused.
#include "control/control.hpp"

#include <linux/time_types.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <exception>
#include <future>
#include <iterator>
#include <mutex>
#include <queue>
#include <random>
#include <stdexcept>
#include <type_traits>

#include "control/control_ops.hpp"
#include "control/health_checker.hpp"
#include "datapath/uring.hpp"
#include "stickyd/log.hpp"
#include "stickyd/proxy_protocol.hpp"

namespace stickyd {

namespace {

using Clock = std::chrono::steady_clock;

constexpr unsigned kSqEntries = 1024;
constexpr unsigned kCqEntries = 4 * kSqEntries;

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

// "web-2 (127.0.0.1:9002)", or just the address when that is the id.
std::string name_of(const std::string& id, const SocketAddress& address) {
    const std::string text = address.to_string();
    return id == text ? text : fmt::format("{} ({})", id, text);
}

std::string name_of(const GroupTarget& t) {
    return name_of(t.id, t.address);
}

std::string seconds(Duration d) {
    if (d.count() % 1000 == 0) return fmt::format("{} s", d.count() / 1000);
    return fmt::format("{} ms", d.count());
}

// "its 3 connections get 300 s" / "its 1 connection is reset now" / for a target
// drained before, whose delay has been running since: "its 3 connections keep the
// 120 s left of the delay that began with its drain".
std::string remaining_connections(const GroupTarget& t, const DeregistrationConfig& delay,
                                  bool drained_before = false,
                                  Clock::time_point now = Clock::now()) {
    const uint64_t active = t.stats->active.load(std::memory_order_relaxed);
    const bool one = active == 1;
    const char* noun = one ? "connection" : "connections";
    if (delay.connection_termination || delay.timeout.count() == 0) {
        return fmt::format("its {} {} {} reset now", active, noun, one ? "is" : "are");
    }
    if (drained_before && t.deadline) {
        const Duration left = std::chrono::ceil<std::chrono::seconds>(*t.deadline - now);
        return fmt::format("its {} {} keep the {} left of the delay that began with its drain",
                           active, noun, seconds(std::max(Duration::zero(), left)));
    }
    return fmt::format("its {} {} {} {}", active, noun, one ? "gets" : "get",
                       seconds(delay.timeout));
}

// Whether a snapshot built by `a`'s balancer settings can reuse one from `b`'s.
bool same_balancer_settings(const TargetGroupConfig& a, const TargetGroupConfig& b) {
    return a.algorithm == b.algorithm &&
           (a.algorithm != Algorithm::maglev || a.maglev_table_size == b.maglev_table_size);
}

struct Group;

// A target's check slot: whose it is and when its next check is due.
struct Probe {
    // The owner; null when free, or orphaned (its target is gone) while the last
    // check's I/O ends.
    Group* group = nullptr;
    std::string id;
    SocketAddress address;
    uint32_t epoch = 0;  // bumped per owner: schedule entries of an earlier one are stale
    bool scheduled = false;
    Clock::time_point due;
};

struct Group {
    TargetGroupConfig config;
    bool configured = true;  // false once a reload dropped it; erased when its targets are gone
    // Each DNS name's last good answer and, while its lookups fail, why; by "NAME:PORT".
    std::map<std::string, std::vector<SocketAddress>> answers;
    std::map<std::string, std::string> lookup_errors;
    // The addresses the group uses: the answers' union when the balancer can hold it,
    // else the last union it could (capacity_error says why, until they fit again).
    std::vector<SocketAddress> discovered;
    std::optional<std::string> capacity_error;
    RuntimeOverlay overlay;            // the admin API's registrations and deregistrations
    std::vector<GroupTarget> targets;  // sorted by (id, address); handle = probe index
    RouteSlot* slot = nullptr;
    std::shared_ptr<const RoutingTable> table;  // the latest published
    std::vector<size_t> members;                // table index -> index into targets
    bool failing_open = false;
    size_t healthy = 0;  // as in the latest GroupRouting
    size_t in_service = 0;
    size_t required = 0;
    CheckDurationHistogram durations;

    bool checks_on() const { return config.health_check.enabled; }
};

bool lists_dns_name(const TargetGroupConfig& group, std::string_view name) {
    return std::any_of(group.dns.begin(), group.dns.end(),
                       [&](const DnsDiscoveryConfig& d) { return d.text() == name; });
}

std::vector<SocketAddress> sorted_unique(std::vector<SocketAddress> addresses) {
    std::sort(addresses.begin(), addresses.end(),
              [](const auto& a, const auto& b) { return a.to_string() < b.to_string(); });
    addresses.erase(std::unique(addresses.begin(), addresses.end()), addresses.end());
    return addresses;
}

// Every name's addresses once: two names may well share some.
std::vector<SocketAddress> union_of(
    const std::map<std::string, std::vector<SocketAddress>>& answers) {
    std::vector<SocketAddress> all;
    for (const auto& [name, addresses] : answers) {
        all.insert(all.end(), addresses.begin(), addresses.end());
    }
    return sorted_unique(std::move(all));
}

// The addresses of `used` that some name still gives (both sorted_unique).
std::vector<SocketAddress> still_named(const std::vector<SocketAddress>& used,
                                       const std::vector<SocketAddress>& named) {
    std::vector<SocketAddress> out;
    std::set_intersection(
        used.begin(), used.end(), named.begin(), named.end(), std::back_inserter(out),
        [](const auto& a, const auto& b) { return a.to_string() < b.to_string(); });
    return out;
}

// "app:80" or "a:80, b:8080", in the file's order.
std::string dns_names_text(const Group& group) {
    std::string out;
    for (const DnsDiscoveryConfig& dns : group.config.dns) {
        out += (out.empty() ? "" : ", ") + dns.text();
    }
    return out;
}

// What the view shows: each failing name's reason in the file's order, then why the
// answers are not all in use; nullopt while all is well.
std::optional<std::string> dns_error(const Group& group) {
    std::string out;
    for (const DnsDiscoveryConfig& dns : group.config.dns) {
        auto it = group.lookup_errors.find(dns.text());
        if (it != group.lookup_errors.end()) out += (out.empty() ? "" : "; ") + it->second;
    }
    if (group.capacity_error) out += (out.empty() ? "" : "; ") + *group.capacity_error;
    if (out.empty()) return std::nullopt;
    return out;
}

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
    // Fails every queued command and every later one with `why`. Called on the
    // control thread as run() fails, before it waits for its I/O, so callers are not
    // kept waiting for that. Never throws: run() must still wait for its I/O.
    void fail(std::string_view why) noexcept;
    std::optional<std::string> failure() const;
    // False once run() failed and its I/O could not be waited for: the kernel may
    // still write into this Loop, so it must never be freed.
    bool settled() const { return settled_; }

    // Runs `f` on the control thread and returns its result; inline (under the
    // lock) while the thread is not running, when nothing else touches the state.
    // Throws ControlFailed once the thread failed.
    template <typename F>
    auto call(F f) -> decltype(f());

    // Commands.
    void apply(const Config& config);
    std::optional<std::string> reload_refusal(const Config& config);
    void abandon_reload();
    void set_discovered(const std::string& group, const std::string& name,
                        std::vector<SocketAddress> addresses);
    void set_discovery_error(const std::string& group, const std::string& name, std::string error);
    AdminChange drain(const std::string& group, const std::string& id);
    AdminChange enable(const std::string& group, const std::string& id);
    AdminChange register_target(const std::string& group, const Registration& target);
    AdminChange deregister_target(const std::string& group, const std::string& id);
    std::shared_ptr<const ControlView> view();

  private:
    // Membership.
    Group& add_group(const TargetGroupConfig& config);
    std::optional<std::string> refusal_of(const Config& config);
    // Why the pending reload could not hold the group with `overlay`, or nullopt.
    std::optional<std::string> pending_misfit(const Group& group,
                                              const RuntimeOverlay& overlay) const;
    // Why the pending reload could not hold the group's DNS answers, or nullopt.
    std::optional<std::string> pending_dns_misfit(const Group& group) const;
    // The pending reload's config of the group, or null (none pending, or it drops it).
    const TargetGroupConfig* pending_group(const Group& group) const;
    // Returns the lines it logged; `via_admin` when the admin API changed the overlay.
    std::vector<std::string> reconcile_group(Group& group, Clock::time_point now,
                                             bool via_admin = false);
    std::string removal_reason(const Group& group, const GroupTarget& target) const;
    void deregister(Group& group, GroupTarget& target, const std::string& why);
    Group* find_group(std::string_view name);
    // The group's configured group that lists DNS name `name`, or null.
    Group* find_dns_group(std::string_view group, std::string_view name);
    // Takes the answers' union when it fits (reconciling if it changed), or keeps
    // the last one that did and says why.
    void use_answers(Group& group);
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
    void loop();
    bool quiesce() noexcept;
    void dispatch(const io_uring_cqe& cqe);
    void arm_wake();
    void on_wake(int res);
    void run_commands();
    void rearm_tick();
    void on_tick(int res);
    void run_due_checks(Clock::time_point now);
    void run_deadlines(Clock::time_point now);
    void take_passive_reports();

    // Checks.
    void start_check(uint32_t p);
    void on_verdict(uint32_t p, bool passed, const std::string& reason, Clock::duration took);
    void on_quiet(uint32_t p);

    // Verdicts and publishing.
    void apply_step(Group& group, GroupTarget& target, const HealthStep& step,
                    const std::string& reason);
    // Rebuilds the group's snapshot from its targets, reusing what it can of the
    // last one (see build_group_routing); stores it only when routing changed.
    void publish(Group& group);
    void terminate(const GroupTarget& target);

    Terminate terminate_;
    std::vector<std::unique_ptr<Group>> groups_;  // config order, then dropped ones
    // The groups of the config reload_refusal() last accepted, until apply() or
    // abandon_reload(): what a registration must fit as well as the running config.
    std::optional<std::vector<TargetGroupConfig>> pending_;
    std::mutex slots_mutex_;
    std::map<std::string, std::unique_ptr<RouteSlot>> slots_;  // never shrinks
    // A deque: taking a probe never moves the others, whose SQEs point into them
    // (address, request, timespec) until submitted and completed.
    std::deque<Probe> probes_;
    std::vector<uint32_t> free_probes_;

    Uring ring_;
    HealthChecker checker_;  // after ring_: its I/O runs there
    Doorbell wake_{"control thread"};
    // A queued command is run with nullptr, or failed with why it will never run.
    using Command = std::function<void(std::exception_ptr)>;
    mutable std::mutex running_mutex_;
    bool running_ = false;  // false: commands run inline on the caller, under running_mutex_
    // Set once, under running_mutex_: from then on no command is queued or run.
    bool failed_ = false;
    std::optional<std::string> failure_;  // why, unless even that could not be allocated
    std::string failure_text() const;     // under running_mutex_, once failed_
    CommandQueue<Command> commands_;
    std::atomic<bool> stop_{false};
    bool stopping_ = false;
    unsigned loop_ops_ = 0;  // wake read and tick in flight
    bool settled_ = true;

    std::priority_queue<Due, std::vector<Due>, std::greater<>> schedule_;
    std::priority_queue<Deadline, std::vector<Deadline>, std::greater<>> deadlines_;
    bool tick_armed_ = false;
    bool tick_removing_ = false;
    Clock::time_point tick_at_;
    __kernel_timespec tick_ts_{};
    std::mt19937_64 random_{std::random_device{}()};
};

// ---------------------------------------------------------------------------
// Set-up

Control::Loop::Loop(const Config& config, Terminate terminate, const Discovered& discovered)
    : terminate_(std::move(terminate)),
      ring_(kSqEntries, kCqEntries),
      checker_(
          ring_,
          [this](uint32_t p, bool passed, const std::string& reason, Clock::duration took) {
              on_verdict(p, passed, reason, took);
          },
          [this](uint32_t p) { on_quiet(p); }) {
    const Clock::time_point now = Clock::now();
    for (const TargetGroupConfig& gc : config.target_groups) {
        Group& group = add_group(gc);
        if (auto it = discovered.find(gc.name); it != discovered.end()) {
            for (const auto& [name, addresses] : it->second) {
                if (lists_dns_name(gc, name)) group.answers[name] = sorted_unique(addresses);
            }
            std::vector<SocketAddress> all = union_of(group.answers);
            if (auto error = capacity_error(gc, desired_targets(gc, all))) {
                log::error(
                    "target group '{}': the {} addresses DNS gave at start-up are not used: {}",
                    gc.name, all.size(), *error);
                group.capacity_error = std::move(error);
            } else {
                group.discovered = std::move(all);
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

Control::Loop::~Loop() = default;

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
    std::vector<Command> left;
    {
        std::lock_guard lock(running_mutex_);
        running_ = running;
        if (running) return;
        left = commands_.take();
    }
    // Queued while the loop was ending: their callers are waiting.
    for (auto& command : left) command(nullptr);
}

void Control::Loop::fail(std::string_view why) noexcept {
    std::vector<Command> left;
    std::exception_ptr error;
    {
        // Under the lock that call() queues under: a command is either queued before
        // this takes the queue, or sees failed_ and is never queued.
        std::lock_guard lock(running_mutex_);
        if (failed_) return;
        failed_ = true;
        try {
            failure_ = fmt::format(
                "control thread failed: {}; target health and membership are frozen; restart "
                "stickyd",
                why);
            error = std::make_exception_ptr(ControlFailed(*failure_));
        } catch (...) {
            // Out of memory even for the message: the waiting callers get that
            // instead, rather than no answer.
            error = std::current_exception();
        }
        left = commands_.take();
    }
    for (auto& command : left) command(error);
}

std::string Control::Loop::failure_text() const {
    return failure_.value_or(
        "control thread failed; target health and membership are frozen; restart stickyd");
}

std::optional<std::string> Control::Loop::failure() const {
    std::lock_guard lock(running_mutex_);
    if (!failed_) return std::nullopt;
    return failure_text();
}

template <typename F>
auto Control::Loop::call(F f) -> decltype(f()) {
    using Result = decltype(f());
    std::unique_lock lock(running_mutex_);
    if (failed_) throw ControlFailed(failure_text());
    if (!running_) return f();
    std::promise<Result> promise;
    auto result = promise.get_future();
    commands_.push([&promise, &f](std::exception_ptr error) {
        if (error) return promise.set_exception(error);
        try {
            if constexpr (std::is_void_v<Result>) {
                f();
                promise.set_value();
            } else {
                promise.set_value(f());
            }
        } catch (...) {
            promise.set_exception(std::current_exception());
        }
    });
    lock.unlock();
    wake_.ring();
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

// Why a target left its group, for the log and for enable's refusal.
std::string Control::Loop::removal_reason(const Group& group, const GroupTarget& t) const {
    if (!group.configured) return "its target group was removed from the configuration";
    const bool admin =
        std::any_of(group.overlay.deregistered.begin(), group.overlay.deregistered.end(),
                    [&](const DesiredTarget& d) { return d.id == t.id && d.address == t.address; });
    if (admin) return "deregistered via admin API";
    switch (t.origin) {
        case TargetOrigin::dns:
            return "no longer in DNS";
        case TargetOrigin::runtime:
            return "no longer registered";
        case TargetOrigin::config:
            break;
    }
    return "removed from the configuration";
}

// Moves the group's targets to its config ∪ overlay ∪ discovered set; logs,
// deregisters, schedules and publishes what changed.
std::vector<std::string> Control::Loop::reconcile_group(Group& group, Clock::time_point now,
                                                        bool via_admin) {
    std::vector<DesiredTarget> desired;
    if (group.configured) desired = desired_targets(group.config, group.discovered, group.overlay);
    const DeregistrationConfig& delay = group.config.deregistration_delay;
    std::vector<std::pair<std::string, SocketAddress>> drained;
    for (const GroupTarget& t : group.targets) {
        if (t.deregistration == Deregistration::drained) drained.emplace_back(t.id, t.address);
    }
    auto was_drained = [&](const GroupTarget& t) {
        return std::find(drained.begin(), drained.end(), std::pair(t.id, t.address)) !=
               drained.end();
    };
    auto r = reconcile(std::move(group.targets), desired, delay, now, false);
    group.targets = std::move(r.targets);
    const std::string& name = group.config.name;
    std::vector<std::string> lines;
    for (size_t i : r.added) {
        GroupTarget& t = group.targets[i];
        t.handle = take_probe(group, t);
        lines.push_back(
            fmt::format("target group '{}': target {} registered{}: {}", name, name_of(t),
                        via_admin                       ? " via admin API"
                        : t.origin == TargetOrigin::dns ? " from DNS"
                                                        : "",
                        group.checks_on() ? "takes connections after its first passed health check"
                                          : "takes connections now (health checks are off)"));
    }
    for (size_t i : r.removed) {
        GroupTarget& t = group.targets[i];
        lines.push_back(
            fmt::format("target group '{}': target {} is deregistering: {}; {}", name, name_of(t),
                        via_admin ? "deregistered via admin API" : removal_reason(group, t),
                        remaining_connections(t, delay, was_drained(t), now)));
        deadlines_.push({*t.deadline, name, t.id, t.address});
    }
    for (size_t i : r.restored) {
        lines.push_back(
            fmt::format("target group '{}': target {} registered again{} before its deregistration "
                        "ended: it keeps its health and connections",
                        name, name_of(group.targets[i]), via_admin ? " via admin API" : ""));
    }
    for (const std::string& line : lines) log::info("{}", line);
    publish(group);
    schedule_checks(group, now);
    return lines;
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
    pending_.reset();
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
            std::vector<std::string> notes;
            group->overlay = rebase_overlay(group->overlay, &gc, notes);
            for (const std::string& note : notes) log::info("{}", note);
            // A name the file no longer lists takes its addresses with it; a new one
            // brings its own when the discovery thread first answers for it.
            std::erase_if(group->answers,
                          [&](const auto& a) { return !lists_dns_name(gc, a.first); });
            std::erase_if(group->lookup_errors,
                          [&](const auto& e) { return !lists_dns_name(gc, e.first); });
            std::vector<SocketAddress> all = union_of(group->answers);
            group->capacity_error = capacity_error(gc, desired_targets(gc, all));
            if (!group->capacity_error) {
                group->discovered = std::move(all);
            } else {
                // Answers held back before stay held; what is in use stays if it fits.
                group->discovered = still_named(group->discovered, all);
                if (capacity_error(gc, desired_targets(gc, group->discovered))) {
                    // Not reached by a reload: reload_refusal() refuses such a config, and
                    // use_answers() holds back what the config it accepted could not hold.
                    log::error("target group '{}': its {} DNS addresses deregister: {}", gc.name,
                               group->discovered.size(), *group->capacity_error);
                    group->discovered.clear();
                }
            }
            if (!group->overlay.registered.empty()) {
                if (auto error = capacity_error(gc, desired_targets(gc, {}, group->overlay))) {
                    // Not reached by a reload: reload_refusal() refuses such a config, and
                    // register_target() what the config it accepted could not hold. Only
                    // an apply() of a config no reload_refusal() accepted gets here.
                    log::error(
                        "target group '{}': its {} targets registered at run time "
                        "deregister: {}",
                        gc.name, group->overlay.registered.size(), *error);
                    group->overlay.registered.clear();
                }
            }
            // Another algorithm (or table size): the last snapshot has nothing to lend.
            if (!same_balancer) group->table = nullptr;
        }
        reconcile_group(*group, now);
    }
    for (auto& g : groups_) {
        if (!g->configured || config.find_group(g->config.name) != nullptr) continue;
        g->configured = false;
        g->overlay = {};
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

std::optional<std::string> Control::Loop::reload_refusal(const Config& config) {
    pending_.reset();  // a refused reload is not applied; an accepted one replaces it
    auto refusal = refusal_of(config);
    if (!refusal) pending_ = config.target_groups;
    return refusal;
}

void Control::Loop::abandon_reload() {
    pending_.reset();
    // DNS answers held back for it are taken up now: the names may not answer anew.
    for (auto& g : groups_) {
        if (g->configured && !g->answers.empty()) use_answers(*g);
    }
}

std::optional<std::string> Control::Loop::refusal_of(const Config& config) {
    for (const TargetGroupConfig& gc : config.target_groups) {
        const Group* group = find_group(gc.name);
        if (group == nullptr) continue;
        std::vector<std::string> notes;
        const RuntimeOverlay overlay = rebase_overlay(group->overlay, &gc, notes);
        if (!overlay.registered.empty()) {
            if (auto error = capacity_error(gc, desired_targets(gc, {}, overlay))) {
                return fmt::format(
                    "target group '{}' with the {} targets registered at run time: {}; "
                    "deregister some first",
                    gc.name, overlay.registered.size(), *error);
            }
        }
        // What DNS gives now and the group uses (apply keeps that when the answers'
        // union does not fit).
        std::map<std::string, std::vector<SocketAddress>> kept;
        for (const auto& [name, addresses] : group->answers) {
            if (lists_dns_name(gc, name)) kept.emplace(name, addresses);
        }
        const std::vector<SocketAddress> used = still_named(group->discovered, union_of(kept));
        if (used.empty()) continue;
        if (auto error = capacity_error(gc, desired_targets(gc, used))) {
            return fmt::format("target group '{}' with the {} addresses DNS gives now: {}", gc.name,
                               used.size(), *error);
        }
    }
    return std::nullopt;
}

Group* Control::Loop::find_dns_group(std::string_view group, std::string_view name) {
    Group* found = find_group(group);
    // A late answer for a name a reload has just dropped is not the group's any more.
    if (found == nullptr || !found->configured || !lists_dns_name(found->config, name)) {
        return nullptr;
    }
    return found;
}

void Control::Loop::use_answers(Group& group) {
    const std::string& name = group.config.name;
    std::vector<SocketAddress> all = union_of(group.answers);
    if (auto error = capacity_error(group.config, desired_targets(group.config, all))) {
        if (group.capacity_error != error) {
            log::error(
                "target group '{}': DNS answers of {} addresses not used, the previous {} "
                "stay: {}",
                name, all.size(), group.discovered.size(), *error);
        }
        group.capacity_error = std::move(error);
        return;
    }
    if (auto misfit = pending_dns_misfit(group)) {
        // Used now, apply() would have to deregister every DNS address of the group;
        // held back, apply() takes the answers up with the new settings.
        log::info(
            "target group '{}': DNS answers of {} addresses wait for the reload in progress, "
            "which could not hold them: {}",
            name, all.size(), *misfit);
        return;
    }
    if (group.capacity_error) {
        log::info("target group '{}': DNS discovery works again ({} addresses)", name, all.size());
        group.capacity_error.reset();
    }
    if (all == group.discovered) return;
    group.discovered = std::move(all);
    reconcile_group(group, Clock::now());
}

void Control::Loop::set_discovered(const std::string& group_name, const std::string& name,
                                   std::vector<SocketAddress> addresses) {
    Group* group = find_dns_group(group_name, name);
    if (group == nullptr) return;
    if (group->lookup_errors.erase(name) > 0) {
        log::info("target group '{}': DNS discovery of {} works again ({} addresses)", group_name,
                  name, addresses.size());
    }
    group->answers[name] = sorted_unique(std::move(addresses));
    use_answers(*group);
}

void Control::Loop::set_discovery_error(const std::string& group_name, const std::string& name,
                                        std::string error) {
    Group* group = find_dns_group(group_name, name);
    if (group == nullptr) return;
    // Logged once per failure run by DnsDiscovery itself; here it is only kept for
    // the admin view. The name's last good answer stays in use.
    group->lookup_errors[name] = std::move(error);
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
                           fmt::format("target group '{}': target {} is deregistering ({}); "
                                       "only a registered target can be enabled",
                                       name, name_of(*target), removal_reason(*group, *target))};
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

namespace {

AdminChange::Result result_of(OverlayEdit::Outcome outcome) {
    switch (outcome) {
        case OverlayEdit::Outcome::changed:
            return AdminChange::Result::ok;
        case OverlayEdit::Outcome::conflict:
            return AdminChange::Result::conflict;
        case OverlayEdit::Outcome::over_capacity:
            return AdminChange::Result::over_capacity;
        case OverlayEdit::Outcome::unknown_target:
            break;
    }
    return AdminChange::Result::unknown_target;
}

std::string joined(const std::vector<std::string>& lines) {
    std::string out;
    for (const std::string& line : lines) out += (out.empty() ? "" : "; ") + line;
    return out;
}

}  // namespace

AdminChange Control::Loop::register_target(const std::string& group_name,
                                           const Registration& target) {
    Group* group = nullptr;
    if (group_name.empty()) {
        std::vector<std::string> names;
        for (auto& g : groups_) {
            if (!g->configured) continue;
            group = g.get();
            names.push_back("'" + g->config.name + "'");
        }
        if (names.size() != 1) {
            std::string list;
            for (const std::string& n : names) list += (list.empty() ? "" : ", ") + n;
            return AdminChange{AdminChange::Result::invalid,
                               names.empty() ? std::string("there is no target group")
                                             : fmt::format("several target groups ({}); name "
                                                           "the target group",
                                                           list)};
        }
    } else {
        group = find_group(group_name);
        if (group == nullptr || !group->configured) {
            return AdminChange{AdminChange::Result::unknown_group,
                               fmt::format("no target group '{}'", group_name)};
        }
    }
    OverlayEdit edit =
        stickyd::register_target(group->config, group->discovered, group->overlay, target);
    if (edit.outcome != OverlayEdit::Outcome::changed) {
        return AdminChange{result_of(edit.outcome), std::move(edit.message)};
    }
    // Let in, it would be dropped again when the reload is applied.
    if (auto misfit = pending_misfit(*group, edit.overlay)) {
        return AdminChange{
            AdminChange::Result::conflict,
            fmt::format("target group '{}' cannot take target {}: the reload in progress would "
                        "not hold it: {}; try again once it is done",
                        group->config.name, name_of(target.id, target.address), *misfit)};
    }
    group->overlay = std::move(edit.overlay);
    return AdminChange{AdminChange::Result::ok,
                       joined(reconcile_group(*group, Clock::now(), /*via_admin=*/true))};
}

const TargetGroupConfig* Control::Loop::pending_group(const Group& group) const {
    if (!pending_) return nullptr;
    auto gc = std::find_if(pending_->begin(), pending_->end(),
                           [&](const TargetGroupConfig& g) { return g.name == group.config.name; });
    return gc == pending_->end() ? nullptr : &*gc;
}

// As reload_refusal() asks it of the registered targets. Deregistrations only ever
// shrink what the pending config would have to hold, so only registrations ask.
std::optional<std::string> Control::Loop::pending_misfit(const Group& group,
                                                         const RuntimeOverlay& overlay) const {
    const TargetGroupConfig* gc = pending_group(group);
    // A group the reload removes drops its registrations anyway.
    if (gc == nullptr) return std::nullopt;
    std::vector<std::string> notes;
    const RuntimeOverlay rebased = rebase_overlay(overlay, &*gc, notes);
    if (rebased.registered.empty()) return std::nullopt;
    return capacity_error(*gc, desired_targets(*gc, {}, rebased));
}

// What the pending reload would make of the group's DNS answers, as apply() will:
// only the names its config still lists.
std::optional<std::string> Control::Loop::pending_dns_misfit(const Group& group) const {
    const TargetGroupConfig* gc = pending_group(group);
    if (gc == nullptr) return std::nullopt;
    std::map<std::string, std::vector<SocketAddress>> kept;
    for (const auto& [name, addresses] : group.answers) {
        if (lists_dns_name(*gc, name)) kept.emplace(name, addresses);
    }
    return capacity_error(*gc, desired_targets(*gc, union_of(kept)));
}

AdminChange Control::Loop::deregister_target(const std::string& group_name, const std::string& id) {
    auto found = admin_target(group_name, id);
    if (auto* error = std::get_if<AdminChange>(&found)) return *error;
    auto [group, target] = std::get<std::pair<Group*, GroupTarget*>>(found);
    if (target->deregistration == Deregistration::removed) {
        return AdminChange{
            AdminChange::Result::ok,
            fmt::format("target group '{}': target {} is already deregistering ({})",
                        group->config.name, name_of(*target), removal_reason(*group, *target))};
    }
    OverlayEdit edit =
        stickyd::deregister_target(group->config, group->discovered, group->overlay, id);
    if (edit.outcome != OverlayEdit::Outcome::changed) {
        return AdminChange{result_of(edit.outcome), std::move(edit.message)};
    }
    group->overlay = std::move(edit.overlay);
    return AdminChange{AdminChange::Result::ok,
                       joined(reconcile_group(*group, Clock::now(), /*via_admin=*/true))};
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
        gv.minimum_healthy_targets = g->config.minimum_healthy_targets;
        gv.healthy_targets = g->healthy;
        gv.targets_in_service = g->in_service;
        gv.required_healthy = g->required;
        gv.table = g->table;
        gv.check_durations = g->durations;
        gv.dns_error = dns_error(*g);
        if (g->configured) {
            for (const DnsDiscoveryConfig& dns : g->config.dns) gv.dns_names.push_back(dns.text());
        }
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
            tv.origin = t.origin;
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
    if (checker_.busy(p)) {
        checker_.abandon(p);  // on_quiet frees it
    } else {
        free_probes_.push_back(p);
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
    try {
        loop();
    } catch (const std::exception& e) {
        fail(e.what());
        settled_ = quiesce();
        throw;
    } catch (...) {
        fail("an unknown exception");
        settled_ = quiesce();
        throw;
    }
}

void Control::Loop::loop() {
    ring_.enable();
    arm_wake();
    rearm_tick();
    while (!(stopping_ && loop_ops_ == 0 && checker_.in_flight() == 0)) {
        ring_.submit_and_wait(1);
        ring_.for_each_completion([this](const io_uring_cqe& cqe) { dispatch(cqe); });
        if (!stopping_) rearm_tick();
    }
}

// The loop failed, and nothing reaps completions any more: yet the kernel may still
// write into what in-flight SQEs point at (the checks' buffers, the doorbell's
// counter), all of it freed with the Loop. So everything is cancelled and waited
// for, as on a stop, here: a SINGLE_ISSUER ring takes no io_uring_enter from another
// thread. Bounded, since the failure may have left a count that never drops.
bool Control::Loop::quiesce() noexcept {
    constexpr auto kLimit = std::chrono::seconds(5);
    try {
        stopping_ = true;
        checker_.stop();
        io_uring_prep_cancel64(ring_.sqe(encode(ControlOp::ignore)), 0,
                               IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
        const Clock::time_point give_up = Clock::now() + kLimit;
        while (loop_ops_ != 0 || checker_.in_flight() != 0) {
            if (Clock::now() >= give_up) {
                log::error(
                    "control thread: {} health checks and {} loop operations still in flight "
                    "after {} s; their memory is never freed",
                    checker_.in_flight(), loop_ops_, kLimit.count());
                return false;
            }
            ring_.submit_and_wait(1, to_timespec(std::chrono::milliseconds(100)));
            ring_.for_each_completion([this](const io_uring_cqe& cqe) { dispatch(cqe); });
        }
        return true;
    } catch (const std::exception& e) {
        log::error("control thread: cannot wait for its I/O to end: {}; its memory is never freed",
                   e.what());
    } catch (...) {
        log::error("control thread: cannot wait for its I/O to end; its memory is never freed");
    }
    return false;
}

void Control::Loop::request_stop() {
    stop_ = true;
    wake_.ring();
}

void Control::Loop::dispatch(const io_uring_cqe& cqe) {
    const ControlTag tag = decode<ControlOp>(cqe.user_data);
    switch (tag.op) {
        case ControlOp::ignore:
            return;  // cancel and timeout-remove results
        case ControlOp::wake:
            return on_wake(cqe.res);
        case ControlOp::tick:
            return on_tick(cqe.res);
        case ControlOp::check_connect:
        case ControlOp::check_send:
        case ControlOp::check_recv:
        case ControlOp::check_timeout:
            return checker_.on_completion(tag, cqe.res);
    }
}

void Control::Loop::arm_wake() {
    wake_.arm(ring_, encode(ControlOp::wake));
    ++loop_ops_;
}

void Control::Loop::on_wake(int res) {
    --loop_ops_;
    if (stopping_) return;
    run_commands();
    if (stop_) {
        // Cancel every check and the tick; the loop ends when all have completed.
        stopping_ = true;
        checker_.stop();
        io_uring_prep_cancel64(ring_.sqe(encode(ControlOp::ignore)), 0,
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
    for (auto& command : commands_.take()) command(nullptr);
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
            io_uring_prep_timeout_remove(ring_.sqe(encode(ControlOp::ignore)),
                                         encode(ControlOp::tick), 0);
            tick_removing_ = true;
        }
        return;
    }
    tick_at_ = *next;
    tick_ts_ = to_timespec(tick_at_.time_since_epoch());
    io_uring_prep_timeout(ring_.sqe(encode(ControlOp::tick)), &tick_ts_, 0, IORING_TIMEOUT_ABS);
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
        if (!checker_.busy(due.probe)) start_check(due.probe);
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
// Checks and their verdicts

namespace {

// The DNS name whose last answer holds this address ("" if none does): the first
// in name order when several do, so every check of it names the same one.
std::string dns_name_of(const Group& group, const SocketAddress& address) {
    for (const auto& [key, addresses] : group.answers) {
        if (std::find(addresses.begin(), addresses.end(), address) == addresses.end()) continue;
        return key.substr(0, key.rfind(':'));  // answers are by "NAME:PORT"
    }
    return {};
}

}  // namespace

void Control::Loop::start_check(uint32_t p) {
    const Probe& probe = probes_[p];
    const TargetGroupConfig& config = probe.group->config;
    const HealthCheckConfig& hc = config.health_check;
    // Built per check, so a reload's new settings apply from the next check on.
    CheckRequest request;
    request.address = with_port(probe.address, hc.port);
    if (hc.protocol == HealthProtocol::https) {
        request.server_name = dns_name_of(*probe.group, probe.address);
    }
    request.protocol = hc.protocol;
    request.path = hc.path;
    request.proxy_protocol_v2 = config.proxy_protocol_v2;
    request.matcher = hc.matcher;
    request.timeout = hc.effective_timeout();
    if (!checker_.start(p, request)) {
        // Our problem (out of fds), not the target's: no verdict.
        log::warn("control thread: cannot create a socket to check {} of target group '{}': {}",
                  probe.id, config.name, std::strerror(errno));
    }
}

void Control::Loop::on_verdict(uint32_t p, bool passed, const std::string& reason,
                               Clock::duration took) {
    const Probe& probe = probes_[p];
    if (probe.group == nullptr) return;
    Group& group = *probe.group;
    GroupTarget* target = find_target(group, probe.id, probe.address);
    if (target == nullptr) return;
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

// An orphaned slot (its target is gone) is free once its last check is quiet.
void Control::Loop::on_quiet(uint32_t p) {
    if (probes_[p].group == nullptr) free_probes_.push_back(p);
}

// ---------------------------------------------------------------------------
// Health steps and publishing

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
            std::make_shared<PassiveHealth>(table.targets.size(), hc.passive_failures, wake_.fd());
    }
    group.members = std::move(routing.members);
    const std::string& name = group.config.name;
    if (routing.failing_open && !group.failing_open) {
        log::error(
            "target group '{}': failing open: {} of {} targets in service healthy, below "
            "minimum_healthy_targets ({}: at least {}); routing to all {} as if they were healthy",
            name, routing.usable, routing.in_service,
            to_string(group.config.minimum_healthy_targets), routing.required, routing.in_service);
    } else if (!routing.failing_open && group.failing_open && routing.usable > 0) {
        // All healthy ends it too, even under a minimum larger than the group.
        log::warn(
            "target group '{}': no longer failing open: {} of {} targets in service healthy "
            "(minimum_healthy_targets {}: at least {})",
            name, routing.usable, routing.in_service,
            to_string(group.config.minimum_healthy_targets), routing.required);
    }
    // Once when the group becomes empty (or starts so), not once per client.
    if (table.targets.empty() && group.configured &&
        !(group.table && group.table->targets.empty())) {
        log::warn(
            "target group '{}' has no targets{}: clients of its listeners are closed (counted in "
            "stickyd_listener_no_target_closes_total)",
            name,
            group.config.dns.empty()
                ? ""
                : fmt::format(" (DNS name{} {} gave no addresses)",
                              group.config.dns.size() == 1 ? "" : "s", dns_names_text(group)));
    }
    if (table.no_target && !(group.table && group.table->no_target)) {
        log::warn("target group '{}': every target is drained: new clients are refused", name);
    }
    group.failing_open = routing.failing_open;
    group.healthy = routing.usable;
    group.in_service = routing.in_service;
    group.required = routing.required;
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
    if (!loop_->settled()) {
        // The kernel may still write into it: never freeing it is the only safe way
        // out. Held by a pointer that is never freed either, so that LeakSanitizer
        // sees it kept on purpose rather than lost.
        static auto* const abandoned = new std::vector<Loop*>;
        abandoned->push_back(loop_.release());
    }
}

RouteSlot* Control::slot(const std::string& group) {
    return loop_->slot(group);
}

void Control::start(std::function<void()> on_failure) {
    if (thread_.joinable()) return;
    loop_->set_running(true);
    thread_ = std::thread([this, on_failure = std::move(on_failure)] {
        pthread_setname_np(pthread_self(), "control");  // for `top -H`, and tests
        try {
            loop_->run();
        } catch (...) {
            // run() recorded why; every caller gets that message from now on.
            log::error("{}", loop_->failure().value_or("control thread failed"));
            if (on_failure) on_failure();
        }
    });
}

void Control::stop() {
    if (!thread_.joinable()) return;
    loop_->request_stop();
    thread_.join();
    loop_->set_running(false);
}

bool Control::settled() const {
    return loop_->settled();
}

std::optional<std::string> Control::failure() const {
    return loop_->failure();
}

void Control::apply(const Config& config) {
    loop_->call([&] { loop_->apply(config); });
}

std::optional<std::string> Control::reload_refusal(const Config& config) {
    return loop_->call([&] { return loop_->reload_refusal(config); });
}

void Control::abandon_reload() {
    loop_->call([&] { loop_->abandon_reload(); });
}

void Control::set_discovered(const std::string& group, const std::string& name,
                             std::vector<SocketAddress> addresses) {
    loop_->call([&] { loop_->set_discovered(group, name, std::move(addresses)); });
}

void Control::set_discovery_error(const std::string& group, const std::string& name,
                                  std::string error) {
    loop_->call([&] { loop_->set_discovery_error(group, name, std::move(error)); });
}

AdminChange Control::drain(const std::string& group, const std::string& id) {
    return loop_->call([&] { return loop_->drain(group, id); });
}

AdminChange Control::enable(const std::string& group, const std::string& id) {
    return loop_->call([&] { return loop_->enable(group, id); });
}

AdminChange Control::register_target(const std::string& group, const Registration& target) {
    return loop_->call([&] { return loop_->register_target(group, target); });
}

AdminChange Control::deregister_target(const std::string& group, const std::string& id) {
    return loop_->call([&] { return loop_->deregister_target(group, id); });
}

std::shared_ptr<const ControlView> Control::view() {
    return loop_->call([&] { return loop_->view(); });
}

}  // namespace stickyd
