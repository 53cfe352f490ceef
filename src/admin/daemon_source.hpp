// The admin endpoint's view of a running daemon: the control thread's snapshots,
// drain/enable and runtime registration, the workers' counters and the configured
// listeners' counters. Every method is safe on admin threads: Control serialises its
// own commands, the rest is atomics and data replaced under a mutex only on reload.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "admin/api.hpp"
#include "control/control.hpp"
#include "datapath/worker.hpp"
#include "stickyd/config.hpp"

namespace stickyd {

class DaemonAdminSource final : public AdminSource {
  public:
    // `workers` must outlive this source (the Daemon owns both; the admin server is
    // stopped before the workers are destroyed).
    DaemonAdminSource(Control& control, const std::vector<std::unique_ptr<Worker>>& workers)
        : control_(control), workers_(workers) {}

    // After start and after every reload: listener names, binds and their shared
    // stats (the same ListenerStats the workers' ListenerSettings carry), and the
    // maglev table sizes /ring reports entry counts with.
    void update(const Config& config,
                const std::map<std::string, std::shared_ptr<ListenerStats>>& listener_stats) {
        std::vector<ListenerInfo> listeners;
        for (const ListenerConfig& l : config.listeners) {
            auto it = listener_stats.find(l.name);
            listeners.push_back({l.name, l.bind.to_string(), l.target_group,
                                 it == listener_stats.end() ? nullptr : it->second});
        }
        std::map<std::string, uint32_t> sizes;
        for (const TargetGroupConfig& g : config.target_groups) {
            if (g.algorithm == Algorithm::maglev) sizes[g.name] = g.maglev_table_size;
        }
        std::lock_guard lock(mutex_);
        listeners_ = std::move(listeners);
        maglev_sizes_ = std::move(sizes);
    }

    std::shared_ptr<const ControlView> view() override { return control_.view(); }
    AdminChange drain(const std::string& group, const std::string& id) override {
        return control_.drain(group, id);
    }
    AdminChange enable(const std::string& group, const std::string& id) override {
        return control_.enable(group, id);
    }
    AdminChange register_target(const std::string& group, const Registration& target) override {
        return control_.register_target(group, target);
    }
    AdminChange deregister_target(const std::string& group, const std::string& id) override {
        return control_.deregister_target(group, id);
    }
    std::vector<ListenerInfo> listeners() override {
        std::lock_guard lock(mutex_);
        return listeners_;
    }
    uint32_t maglev_table_size(const std::string& group) override {
        std::lock_guard lock(mutex_);
        auto it = maglev_sizes_.find(group);
        return it == maglev_sizes_.end() ? 0 : it->second;
    }
    DaemonTotals totals() override {
        DaemonTotals t;
        for (const auto& worker : workers_) {
            const WorkerStats& s = worker->stats();
            t.accepted += s.accepted.load(std::memory_order_relaxed);
            t.active += s.active.load(std::memory_order_relaxed);
            t.connect_failures += s.connect_failures.load(std::memory_order_relaxed);
            t.retries += s.retries.load(std::memory_order_relaxed);
            t.bytes_in += s.bytes_in.load(std::memory_order_relaxed);
            t.bytes_out += s.bytes_out.load(std::memory_order_relaxed);
            t.client_ip_fallbacks += s.client_ip_fallbacks.load(std::memory_order_relaxed);
            t.spliced_flows += s.spliced_flows.load(std::memory_order_relaxed);
        }
        return t;
    }

    // Not once the control thread failed either: its health checks and membership
    // are frozen until a restart, so routers should send clients elsewhere.
    bool ready() override { return ready_.load(std::memory_order_relaxed) && !control_.failure(); }
    // A stop began: routers and probes must send no new clients from now on.
    void withdraw() { ready_.store(false, std::memory_order_relaxed); }

  private:
    std::atomic<bool> ready_{true};
    Control& control_;
    const std::vector<std::unique_ptr<Worker>>& workers_;
    std::mutex mutex_;
    std::vector<ListenerInfo> listeners_;
    std::map<std::string, uint32_t> maglev_sizes_;
};

}  // namespace stickyd
