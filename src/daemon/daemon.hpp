// One run of the daemon: the control thread, the workers and their listeners, DNS
// discovery and the admin endpoint, started in dependency order, reloaded as a
// difference on SIGHUP, and stopped in reverse. main.cpp parses the command line;
// signal_loop.cpp turns signals and ticks into calls here.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include "admin/daemon_source.hpp"
#include "admin/server.hpp"
#include "control/control.hpp"
#include "control/dns_discovery.hpp"
#include "daemon/sd_notify.hpp"
#include "datapath/worker.hpp"
#include "stickyd/config.hpp"
#include "stickyd/reload_plan.hpp"

namespace stickyd {

struct DaemonOptions {
    WorkerOptions worker;
    // The file SIGHUP re-reads; empty in quick mode (nothing to re-read).
    std::string config_path;
    // Command-line settings that win over the file, on start and on every reload.
    std::optional<unsigned> threads;
    std::optional<LogLevel> log_level;
    std::optional<std::string> admin_socket;
    std::optional<SocketAddress> admin_address;
    std::optional<SocketAddress> metrics_address;
    // Quick mode is a developer's tool: an admin socket that cannot be set up is a
    // warning there, and a start-up error with a config file.
    bool admin_optional = false;
};

// Applies the command-line overrides to a loaded config.
void apply_overrides(Config& config, const DaemonOptions& options);

class Daemon {
  public:
    Daemon(Config config, DaemonOptions options);
    ~Daemon();
    Daemon(const Daemon&) = delete;
    Daemon& operator=(const Daemon&) = delete;

    // Binds every listener once per worker before any thread starts, so a port clash
    // is reported (one line on stderr) and nothing is half-running.
    bool start();

    struct ReloadResult {
        bool applied = false;
        std::string message;  // one line: what was applied, or why nothing was
    };
    // SIGHUP: re-reads and validates the file; on success applies the difference
    // (targets via the control thread, listeners via the workers, DNS, log level,
    // shutdown grace). On any error nothing changes. Logs the outcome itself.
    // `before_apply` runs once the new config is known to be good (RELOADING=1).
    ReloadResult reload(const std::function<void()>& before_apply);

    // A stop began: /ready answers 503 from now on; listeners keep accepting.
    void withdraw();
    // Stop accepting; connections get `grace` to finish.
    void stop(Duration grace);
    // Waits for the workers, then stops the rest; non-zero once a worker or the
    // control thread failed.
    int join();
    // What the first worker to fail said ("worker 1 failed: ..."), once one has. Its
    // thread then sends this process SIGTERM, for the signal loop to notice and
    // stop the daemon: the other workers alone are not the service configured.
    std::optional<std::string> worker_failure() const;
    // The control thread's failure, once it failed (it sends SIGTERM too): with
    // health and membership frozen the daemon stops, to be started afresh.
    std::optional<std::string> control_failure() const;

    Duration shutdown_grace() const;
    Duration shutdown_delay() const;
    uint64_t active_connections() const;
    std::string status_line() const;  // for STATUS=; only after a successful start()
    bool workers_progressed();        // for the watchdog

  private:
    // A reload that validated and has its new sockets open: commit() applies it and
    // cannot fail. `plan` points into `next`, so a Prepared is never copied.
    struct Prepared {
        Prepared() = default;
        Prepared(const Prepared&) = delete;
        Prepared& operator=(const Prepared&) = delete;
        // One not committed (prepare failed, or anything threw before the commit)
        // lets the control thread's pending reload go and closes its new sockets.
        ~Prepared();

        Config next;
        ReloadPlan plan;
        std::vector<std::pair<const ListenerConfig*, std::vector<int>>> opened;
        // Set once the control thread accepted `next` (reload_refusal): it holds
        // registrations to it until apply() or abandon_reload().
        Control* pending = nullptr;
    };
    using Prepare = std::variant<std::unique_ptr<Prepared>, std::string>;

    bool adopt_systemd_sockets();
    bool start_control(const DnsAnswers& initial_dns);
    bool check_ports_free();
    bool create_workers();
    bool start_admin();
    void start_worker_threads();
    void log_listening() const;

    // Everything that may refuse a reload, with nothing running changed; the error
    // is the reason, without the "reload failed" preamble.
    Prepare prepare_reload();
    bool open_added_listeners(Prepared& prepared, std::string& error);
    void commit_reload(Prepared& prepared);
    void swap_listeners(Prepared& prepared);
    void apply_dns(const Config& next);
    ReloadResult reloaded(const ReloadPlan& plan);

    ListenerSettings settings_for(const ListenerConfig& listener);
    void stop_services();
    // One socket per worker for `listener` (adopted ones are dup'ed); empty on error.
    std::vector<int> open_sockets(const ListenerConfig& listener, std::string& error);
    void create_dns(const Config& config, const DnsAnswers& initial, bool apply_results);

    Config config_;
    DaemonOptions options_;
    std::map<std::string, int> adopted_;  // socket activation: listener name -> fd
    std::map<std::string, std::shared_ptr<ListenerStats>> listener_stats_;
    sd::HeartbeatGate heartbeats_;
    // Destroyed in reverse: admin first, then DNS, then the control thread (nothing
    // may call it after that), then the workers.
    std::vector<std::unique_ptr<Worker>> workers_;
    std::unique_ptr<Control> control_;
    std::unique_ptr<DnsDiscovery> dns_;
    std::unique_ptr<DaemonAdminSource> admin_source_;
    std::unique_ptr<AdminServer> admin_;
    std::vector<std::thread> threads_;
    mutable std::mutex failure_mutex_;
    std::optional<std::string> worker_failure_;  // under failure_mutex_
};

}  // namespace stickyd
