// The control thread: the one place that decides which targets exist and which may
// take new connections. It owns every target group's live state (targets from the
// config and from DNS, their health, admin drains, deregistrations), runs the
// active health checks on its own io_uring, and publishes a new routing snapshot
// into a group's RouteSlot whenever routing must change. Workers only read those
// snapshots; everything else reaches the control thread as a command (reload,
// drain, enable, DNS results) executed on its own thread, in order.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "stickyd/config.hpp"
#include "stickyd/control_view.hpp"
#include "stickyd/health.hpp"
#include "stickyd/routing.hpp"
#include "stickyd/target_set.hpp"

namespace stickyd {

class Control {
  public:
    // Asks every worker to reset its relaying connections to these targets (those
    // still connecting move on to their next target). Called on the control thread.
    using Terminate = std::function<void(std::vector<std::shared_ptr<TargetStats>>)>;

    // Builds every group's first snapshot (all targets routable while `initial`, as
    // at any daemon start) and publishes it, so workers never see an empty slot.
    // Throws std::runtime_error with a one-line message if its ring cannot be set up.
    // DNS answers resolved before start, by group and then by name ("NAME:PORT"):
    // their targets count as known at start too, so a restart does not move their
    // clients either.
    using Discovered = std::map<std::string, std::map<std::string, std::vector<SocketAddress>>>;
    Control(const Config& config, Terminate terminate, const Discovered& discovered = {});
    ~Control();
    Control(const Control&) = delete;
    Control& operator=(const Control&) = delete;

    // The group's slot; stable for the life of the Control, also for groups a reload
    // removed (their listeners are gone by then). nullptr for an unknown group.
    RouteSlot* slot(const std::string& group);

    // `on_failure`, if set, runs on the control thread once it has failed (failure()
    // is set by then): the daemon's wake-up for its signal loop.
    void start(std::function<void()> on_failure = {});
    void stop();  // idempotent; cancels every check and joins the thread
    // After stop(): false when the control thread failed and its I/O could not be
    // waited for, so that the kernel may still write into its state, which is then
    // never freed.
    bool settled() const;

    // Why the control thread failed (the ControlFailed message), or nullopt while it
    // has not. Thread-safe.
    std::optional<std::string> failure() const;

    // Thread-safe, each returns once the control thread has applied it. Before
    // start() and after stop() they run on the caller's thread instead (nothing else
    // touches the state then). Once the control thread has failed, each throws
    // ControlFailed (control_view.hpp) instead, also after stop(): its state may be
    // half changed. Never call them from a Terminate callback.
    // A reload with an already validated config: targets that stay keep their health,
    // stats and connections; new ones start `initial` (routable after their first
    // passed check); removed ones deregister with their group's delay. Groups that
    // are new get slots (call slot() after apply).
    void apply(const Config& config);
    // Why a reload to config is refused: apply(config) would have to drop targets
    // registered at run time or discovered through DNS (what a group holds now does
    // not fit its new balancer settings), or nullopt. An accepted config is the
    // pending reload until apply() or abandon_reload(): registrations must fit it too,
    // so none comes in between that apply() would have to drop. Every accepted
    // config is either applied or abandoned.
    std::optional<std::string> reload_refusal(const Config& config);
    // The pending reload will not be applied (it failed after reload_refusal).
    void abandon_reload();
    // DNS discovery results for one name ("NAME:PORT") of a group's `dns`: its full
    // current set. The group discovers the union of its names' sets (a static target
    // at one of the addresses stays the static one). A union the group's balancer
    // cannot hold is not used: the last one that fitted stays, and the reason shows
    // as the group's DNS error. Names the group does not list (a reload dropped
    // them) are ignored.
    void set_discovered(const std::string& group, const std::string& name,
                        std::vector<SocketAddress> addresses);
    // That name's lookup failed: keep its last good set; `error` is shown in the view
    // until the name's next success (set_discovered clears it).
    void set_discovery_error(const std::string& group, const std::string& name, std::string error);
    // Admin drain/enable. group may be empty when the id is unique across groups.
    AdminChange drain(const std::string& group, const std::string& id);
    AdminChange enable(const std::string& group, const std::string& id);
    // Runtime registration (the NLB's RegisterTargets and DeregisterTargets), laid
    // over the config as a RuntimeOverlay (target_set.hpp) that reloads keep. A
    // registered target starts `initial` and takes clients after its first passed
    // check; a deregistered one drains for the group's deregistration delay. group
    // may be empty when there is one group (register) or the id is unique (deregister).
    // While a reload is pending, a registration its config could not hold is refused
    // as a conflict.
    AdminChange register_target(const std::string& group, const Registration& target);
    AdminChange deregister_target(const std::string& group, const std::string& id);
    // A consistent copy of every group's state.
    std::shared_ptr<const ControlView> view();

  private:
    struct Loop;
    std::unique_ptr<Loop> loop_;
    std::thread thread_;
};

}  // namespace stickyd
