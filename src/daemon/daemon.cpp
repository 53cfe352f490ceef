#include "daemon/daemon.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <mutex>
#include <set>
#include <stdexcept>

#include "daemon/admin_socket_choice.hpp"
#include "daemon/socket_activation.hpp"
#include "datapath/listener.hpp"
#include "datapath/transparent.hpp"
#include "stickyd/config_warnings.hpp"
#include "stickyd/log.hpp"
#include "stickyd/reload_plan.hpp"
#include "stickyd/words.hpp"

namespace stickyd {
namespace {

unsigned worker_count(const Config& config) {
    if (config.global.threads != 0) return config.global.threads;
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    return online > 0 ? static_cast<unsigned>(online) : 1U;
}

void close_all(const std::vector<int>& fds) {
    for (int fd : fds) ::close(fd);
}

// A thread that failed wakes the signal loop (serve), which tells this SIGTERM from
// one sent from outside by its sender's pid, and stops the daemon.
void wake_signal_loop() {
    kill(getpid(), SIGTERM);
}

void print_error(std::string_view message) {
    fmt::print(stderr, "stickyd: {}\n", message);
}

// A failed control thread takes no DNS results. The failure was logged when it
// happened; one line says the results go nowhere, not one per answer.
template <typename F>
void hand_dns_to(std::once_flag& dropped, F f) {
    try {
        f();
    } catch (const ControlFailed& e) {
        std::call_once(dropped, [&e] {
            log::warn("DNS discovery: answers are dropped from now on: {}", e.what());
        });
    }
}

// preserve_client_ip binds target sockets to clients' addresses, which takes a
// capability: without it every such connect would leave from our own address, so
// the start (or the reload) is refused with the key or flag that asked for it.
std::optional<std::string> client_ip_problem(const Config& config, const std::string& path) {
    for (size_t i = 0; i < config.target_groups.size(); ++i) {
        const TargetGroupConfig& group = config.target_groups[i];
        if (!group.preserve_client_ip) continue;
        auto problem = transparent_bind_problem();
        if (!problem) return std::nullopt;
        const std::string what =
            path.empty() ? std::string("--preserve-client-ip")
                         : fmt::format("{}: target_group[{}].preserve_client_ip (group {:?})", path,
                                       i, group.name);
        return fmt::format(
            "{}: needs CAP_NET_ADMIN to connect to targets from clients' addresses ({}); run "
            "stickyd as root or give it that capability (under systemd: the drop-in in "
            "stickyd(8), CLIENT IP PRESERVATION)",
            what, *problem);
    }
    return std::nullopt;
}

size_t static_targets(const Config& config) {
    size_t n = 0;
    for (const auto& group : config.target_groups) n += group.targets.size();
    return n;
}

}  // namespace

Daemon::Prepared::~Prepared() {
    try {
        if (pending != nullptr) pending->abandon_reload();
    } catch (...) {
        // A failed control thread (ControlFailed) holds no pending reload any more,
        // and a destructor that threw would end the process.
    }
    for (const auto& listener : opened) close_all(listener.second);
}

void apply_overrides(Config& config, const DaemonOptions& options) {
    if (options.threads) config.global.threads = *options.threads;
    if (options.log_level) config.global.log_level = *options.log_level;
    if (options.admin_socket) config.global.admin_socket = *options.admin_socket;
    if (options.admin_address) config.global.admin_address = *options.admin_address;
    if (options.metrics_address) config.global.metrics_address = *options.metrics_address;
}

Daemon::Daemon(Config config, DaemonOptions options)
    : config_(std::move(config)), options_(std::move(options)) {}

Daemon::~Daemon() {
    stop_services();
    for (auto& [name, fd] : adopted_) ::close(fd);
}

ListenerSettings Daemon::settings_for(const ListenerConfig& listener) {
    // One set of counters per configured listener, whichever worker accepts; a
    // listener that a reload keeps keeps its counters.
    auto& stats = listener_stats_[listener.name];
    if (!stats) stats = std::make_shared<ListenerStats>();
    // Built once per listener and reload, shared by every worker: a reload hands
    // new lists to new clients, while connections already accepted are not judged again.
    std::shared_ptr<const SourceFilter> sources;
    if (!listener.allow.empty() || !listener.deny.empty()) {
        sources = std::make_shared<const SourceFilter>(listener.allow, listener.deny);
    }
    return ListenerSettings{listener, control_->slot(listener.target_group), stats,
                            std::move(sources)};
}

std::vector<int> Daemon::open_sockets(const ListenerConfig& listener, std::string& error) {
    const size_t count = worker_count(config_);
    std::vector<int> fds;
    auto adopted = adopted_.find(listener.name);
    for (size_t w = 0; w < count; ++w) {
        int fd = -1;
        if (adopted != adopted_.end()) {
            // Every worker shares systemd's one socket: extra SO_REUSEPORT sockets
            // beside it would reset their queued clients on our next restart.
            fd = ::fcntl(adopted->second, F_DUPFD_CLOEXEC, 0);
            if (fd < 0)
                error = fmt::format("cannot duplicate the socket systemd passed for {}: {}",
                                    listener.bind.to_string(), std::strerror(errno));
        } else {
            fd = open_listener(listener.bind, error);
        }
        if (fd < 0) {
            close_all(fds);
            return {};
        }
        fds.push_back(fd);
    }
    return fds;
}

bool Daemon::start() {
    if (auto problem = client_ip_problem(config_, options_.config_path)) {
        print_error(*problem);
        return false;
    }
    if (!adopt_systemd_sockets()) return false;
    // DNS first: the targets it names at start-up are targets known at start, routed
    // to before their first check like the configured ones.
    const auto initial_dns = resolve_once(config_);
    // Before the workers: they must start from the health-aware snapshots.
    if (!start_control(initial_dns) || !check_ports_free() || !create_workers()) return false;
    create_dns(config_, initial_dns, false);
    control_->start(wake_signal_loop);  // see control_failure()
    if (dns_) dns_->start();
    if (!start_admin()) return false;
    start_worker_threads();
    log_listening();
    return true;
}

bool Daemon::adopt_systemd_sockets() {
    auto adoption = activation::adopt_listeners(config_.listeners);
    if (auto* error = std::get_if<std::string>(&adoption)) {
        print_error(*error);
        return false;
    }
    adopted_ = std::move(std::get<std::map<std::string, int>>(adoption));
    return true;
}

bool Daemon::start_control(const DnsAnswers& initial_dns) {
    Control::Discovered discovered;
    for (const auto& [group, answers] : initial_dns) {
        for (const auto& [name, answer] : answers) {
            if (answer.ok()) discovered[group][name] = answer.addresses;
        }
    }
    try {
        control_ = std::make_unique<Control>(
            config_,
            [this](std::vector<std::shared_ptr<TargetStats>> targets) {
                for (auto& worker : workers_) worker->terminate(targets);
            },
            discovered);
    } catch (const std::exception& e) {
        print_error(e.what());
        return false;
    }
    return true;
}

bool Daemon::check_ports_free() {
    for (const auto& listener : config_.listeners) {
        std::string error;
        // An adopted socket is already listening: that is systemd, not a clash.
        if (!adopted_.contains(listener.name) && !check_port_free(listener.bind, error)) {
            print_error(error);
            return false;
        }
    }
    return true;
}

// Every listener's sockets are open before any worker exists, so a failure leaves
// nothing half-running.
bool Daemon::create_workers() {
    const unsigned count = worker_count(config_);
    std::vector<std::vector<WorkerListener>> per_worker(count);
    auto close_opened = [&] {
        for (auto& list : per_worker)
            for (auto& l : list) ::close(l.fd);
    };
    for (const auto& listener : config_.listeners) {
        std::string error;
        std::vector<int> fds = open_sockets(listener, error);
        if (fds.empty()) {
            print_error(error);
            close_opened();
            return false;
        }
        const ListenerSettings settings = settings_for(listener);
        for (unsigned w = 0; w < count; ++w)
            per_worker[w].push_back(
                WorkerListener{fds[w], settings, adopted_.contains(listener.name)});
    }
    WorkerOptions worker_options = options_.worker;
    worker_options.max_pipes = config_.global.splice_pipes;
    try {
        for (unsigned w = 0; w < count; ++w) {
            workers_.push_back(
                std::make_unique<Worker>(w, std::move(per_worker[w]), worker_options));
        }
    } catch (const std::exception& e) {
        print_error(e.what());
        return false;
    }
    return true;
}

bool Daemon::start_admin() {
    admin_source_ = std::make_unique<DaemonAdminSource>(*control_, workers_);
    admin_source_->update(config_, listener_stats_);
    const GlobalConfig& g = config_.global;
    if (auto warning = admin_address_warning(g)) log::warn("{}", *warning);
    if (g.admin_socket.empty() && !g.admin_address && !g.metrics_address) return true;
    AdminOptions admin_options;
    if (!g.admin_socket.empty()) {
        admin_options.unix_path = choose_admin_socket(g.admin_socket);
        admin_options.unix_mode = g.admin_socket_mode;
        if (!g.admin_socket_group.empty()) {
            admin_options.unix_group = group_id(g.admin_socket_group);
            if (!admin_options.unix_group) {
                print_error(fmt::format("global.admin_socket_group: no group {:?} on this host",
                                        g.admin_socket_group));
                return false;
            }
        }
    }
    admin_options.tcp = g.admin_address;
    admin_options.metrics = g.metrics_address;
    auto admin = std::make_unique<AdminServer>(*admin_source_, admin_options);
    try {
        admin->start();
        admin_ = std::move(admin);  // AdminServer::start logged where it listens
    } catch (const std::exception& e) {
        if (!options_.admin_optional) {
            print_error(e.what());
            return false;
        }
        log::warn("{}; running without the admin endpoint", e.what());
    }
    return true;
}

void Daemon::start_worker_threads() {
    for (size_t i = 0; i < workers_.size(); ++i) {
        threads_.emplace_back([w = workers_[i].get(), i, this] {
            // Named for `top -H` and for tests that find a worker's thread.
            const std::string name = fmt::format("worker-{}", i);
            pthread_setname_np(pthread_self(), name.c_str());
            try {
                w->run();
            } catch (const std::exception& e) {
                const std::string why = fmt::format("worker {} failed: {}", i, e.what());
                log::error("{}", why);
                {
                    const std::lock_guard lock(failure_mutex_);
                    if (!worker_failure_) worker_failure_ = why;
                }
                wake_signal_loop();
            }
        });
    }
}

void Daemon::log_listening() const {
    for (const std::string& warning : config_warnings(config_)) log::warn("{}", warning);
    for (const auto& listener : config_.listeners) {
        log::info("listening on {} -> target group '{}' ({}{})", listener.bind.to_string(),
                  listener.target_group, count_of(workers_.size(), "worker"),
                  adopted_.contains(listener.name) ? ", socket from systemd" : "");
    }
}

// Hands the answers resolve_once found to the control thread (successes went
// into the Control constructor already when starting) and creates the discovery
// thread that keeps them current; the caller starts it.
void Daemon::create_dns(const Config& config, const DnsAnswers& initial, bool apply_results) {
    const bool any = std::any_of(config.target_groups.begin(), config.target_groups.end(),
                                 [](const TargetGroupConfig& g) { return !g.dns.empty(); });
    if (!any) return;
    Control* control = control_.get();
    auto dropped = std::make_shared<std::once_flag>();
    // Not structured bindings: the lambdas capture them (clang 14 cannot).
    for (const auto& by_group : initial) {
        const std::string& group = by_group.first;
        for (const auto& by_name : by_group.second) {
            const std::string& name = by_name.first;
            const auto& answer = by_name.second;
            if (!answer.ok()) {
                hand_dns_to(*dropped,
                            [&] { control->set_discovery_error(group, name, answer.error); });
            } else if (apply_results) {
                hand_dns_to(*dropped,
                            [&] { control->set_discovered(group, name, answer.addresses); });
            }
        }
    }
    dns_ = std::make_unique<DnsDiscovery>(
        config,
        DnsDiscovery::Callbacks{
            [control, dropped](const std::string& group, const std::string& name,
                               std::vector<SocketAddress> addresses) {
                hand_dns_to(*dropped,
                            [&] { control->set_discovered(group, name, std::move(addresses)); });
            },
            [control, dropped](const std::string& group, const std::string& name,
                               std::string error) {
                hand_dns_to(*dropped,
                            [&] { control->set_discovery_error(group, name, std::move(error)); });
            }},
        initial);
}

Daemon::ReloadResult Daemon::reload(const std::function<void()>& before_apply) {
    if (options_.config_path.empty()) {
        ReloadResult result{false,
                            "SIGHUP ignored: started without --config, so there is no file to "
                            "re-read"};
        log::warn("{}", result.message);
        return result;
    }
    auto failed = [](std::string_view why) {
        ReloadResult result{
            false, fmt::format("reload failed, still serving the previous configuration: {}", why)};
        log::error("{}", result.message);
        return result;
    };
    try {
        Prepare prepared = prepare_reload();
        if (auto* why = std::get_if<std::string>(&prepared)) return failed(*why);
        if (before_apply) before_apply();
        Prepared& ready = *std::get<std::unique_ptr<Prepared>>(prepared);
        commit_reload(ready);
        return reloaded(ready.plan);
    } catch (const ControlFailed& e) {
        // Only reload_refusal() and apply() throw it, both before anything changed;
        // the Prepared let its new sockets go.
        return failed(e.what());
    }
}

Daemon::Prepare Daemon::prepare_reload() {
    auto loaded = load_config_file(options_.config_path);
    if (auto* error = std::get_if<ConfigError>(&loaded)) return error->to_string();
    auto prepared = std::make_unique<Prepared>();
    prepared->next = std::move(std::get<Config>(loaded));
    apply_overrides(prepared->next, options_);
    if (auto problem = client_ip_problem(prepared->next, options_.config_path)) return *problem;
    if (auto refusal = control_->reload_refusal(prepared->next)) return *refusal;
    prepared->pending = control_.get();
    prepared->plan = plan_reload(config_, prepared->next);
    std::string error;
    if (!open_added_listeners(*prepared, error)) return error;
    return prepared;
}

// New sockets before anything changes: a port someone else holds fails the whole
// reload with the old config untouched. Our own ports (a listener renamed or moved
// between names) are shared through SO_REUSEPORT, so they are not probed.
bool Daemon::open_added_listeners(Prepared& prepared, std::string& error) {
    std::set<std::string> ours;
    for (const auto& l : config_.listeners) ours.insert(l.bind.to_string());
    for (const ListenerConfig* l : prepared.plan.add) {
        std::string why;
        std::vector<int> fds;
        if (ours.contains(l->bind.to_string()) || check_port_free(l->bind, why)) {
            fds = open_sockets(*l, why);
        }
        if (fds.empty()) {
            for (auto& [opened, opened_fds] : prepared.opened) close_all(opened_fds);
            prepared.opened.clear();
            error = fmt::format("listener {:?}: {}", l->name, why);
            return false;
        }
        prepared.opened.emplace_back(l, std::move(fds));
    }
    return true;
}

void Daemon::commit_reload(Prepared& prepared) {
    Config& next = prepared.next;
    control_->apply(next);       // new groups get their slots here, before listeners use them
    prepared.pending = nullptr;  // apply() ended it: nothing to abandon
    swap_listeners(prepared);
    apply_dns(next);
    for (const std::string& line : prepared.plan.restart_only) {
        log::warn("{}: applies on restart only; keeping the running value", line);
    }
    log::set_level(next.global.log_level);
    // What only a restart applies stays as it runs, so the view of "the running
    // config" is the new file with those few values kept.
    next.global.threads = config_.global.threads;
    next.global.splice_pipes = config_.global.splice_pipes;
    next.global.admin_socket = config_.global.admin_socket;
    next.global.admin_address = config_.global.admin_address;
    next.global.metrics_address = config_.global.metrics_address;
    config_ = std::move(next);
    admin_source_->update(config_, listener_stats_);
}

// A listener moving to another address is closed first: its name must be unique in
// each worker. Everything else is added before it is removed, so a port handed from
// one listener name to another never stops accepting.
void Daemon::swap_listeners(Prepared& prepared) {
    const ReloadPlan& plan = prepared.plan;
    std::set<std::string> readded;
    for (const ListenerConfig* l : plan.add) readded.insert(l->name);
    for (const std::string& name : plan.remove) {
        if (!readded.contains(name)) continue;
        for (auto& worker : workers_) worker->remove_listener(name);
    }
    for (auto& [l, fds] : prepared.opened) {
        const ListenerSettings settings = settings_for(*l);
        for (size_t w = 0; w < workers_.size(); ++w) {
            workers_[w]->add_listener(WorkerListener{fds[w], settings, adopted_.contains(l->name)});
        }
    }
    prepared.opened.clear();  // the workers own those sockets now
    for (const ListenerConfig* l : plan.update) {
        const ListenerSettings settings = settings_for(*l);
        for (auto& worker : workers_) worker->update_listener(settings);
    }
    for (const std::string& name : plan.remove) {
        if (readded.contains(name)) continue;  // closed above
        for (auto& worker : workers_) worker->remove_listener(name);
        listener_stats_.erase(name);
        if (auto it = adopted_.find(name); it != adopted_.end()) {
            ::close(it->second);  // systemd keeps its own copy open
            adopted_.erase(it);
        }
    }
}

void Daemon::apply_dns(const Config& next) {
    if (dns_) {
        dns_->apply(next);
        return;
    }
    create_dns(next, resolve_once(next), true);
    if (dns_) dns_->start();
}

Daemon::ReloadResult Daemon::reloaded(const ReloadPlan& plan) {
    ReloadResult result{
        true,
        fmt::format("reloaded {}: {} ({} added, {} removed), {}, {}", options_.config_path,
                    count_of(config_.listeners.size(), "listener"), plan.add.size(),
                    plan.remove.size(), count_of(config_.target_groups.size(), "target group"),
                    count_of(static_targets(config_), "static target"))};
    log::info("{}", result.message);
    for (const std::string& warning : config_warnings(config_)) log::warn("{}", warning);
    return result;
}

void Daemon::withdraw() {
    if (admin_source_) admin_source_->withdraw();
}

void Daemon::stop(Duration grace) {
    for (auto& worker : workers_) worker->stop(grace);
}

int Daemon::join() {
    for (auto& thread : threads_) thread.join();
    const bool failed = worker_failure() || control_failure();
    stop_services();
    return failed ? 1 : 0;
}

std::optional<std::string> Daemon::control_failure() const {
    return control_ ? control_->failure() : std::nullopt;
}

std::optional<std::string> Daemon::worker_failure() const {
    const std::lock_guard lock(failure_mutex_);
    return worker_failure_;
}

// In reverse order of start: nothing may call the control thread once it is gone.
void Daemon::stop_services() {
    if (admin_) admin_->stop();
    if (dns_) dns_->stop();
    if (control_) control_->stop();
}

Duration Daemon::shutdown_grace() const {
    return config_.global.shutdown_grace;
}

Duration Daemon::shutdown_delay() const {
    return config_.global.shutdown_delay;
}

uint64_t Daemon::active_connections() const {
    uint64_t total = 0;
    for (const auto& worker : workers_) total += worker->stats().active.load();
    return total;
}

std::string Daemon::status_line() const {
    // Targets in service, DNS-discovered ones included.
    size_t targets = 0;
    std::optional<std::string> failed = control_->failure();
    if (!failed) {
        try {
            // Named: a range-for over view()->groups would free the view before the loop.
            const std::shared_ptr<const ControlView> view = control_->view();
            for (const GroupView& group : view->groups) {
                for (const TargetView& t : group.targets) {
                    if (t.deregistration == Deregistration::none) ++targets;
                }
            }
        } catch (const ControlFailed& e) {
            failed = e.what();
        }
    }
    if (auto worker = worker_failure()) failed = failed ? *worker + "; " + *failed : *worker;
    // The workers still serve: what they do is still worth a line after why.
    if (failed) {
        return fmt::format("{}; {}, {}", *failed, count_of(config_.listeners.size(), "listener"),
                           count_of(active_connections(), "active connection"));
    }
    return fmt::format("{}, {}, {}", count_of(config_.listeners.size(), "listener"),
                       count_of(targets, "target"),
                       count_of(active_connections(), "active connection"));
}

bool Daemon::workers_progressed() {
    std::vector<uint64_t> beats;
    for (const auto& worker : workers_) {
        beats.push_back(worker->stats().heartbeat.load(std::memory_order_relaxed));
    }
    return heartbeats_.all_moved(beats);
}

}  // namespace stickyd
