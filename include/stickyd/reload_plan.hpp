// What a reload changes outside the target groups (which the control thread
// reconciles itself): listeners to open, retune or close, and settings that only a
// restart can apply. Pure: the daemon carries the plan out.
#pragma once

#include <string>
#include <vector>

#include "stickyd/config.hpp"

namespace stickyd {

struct ReloadPlan {
    // New listeners (by name), or ones whose bind address changed: open a socket.
    std::vector<const ListenerConfig*> add;
    // Same name and bind address: keep the socket (queued clients are not lost) and
    // apply the new settings (target group, idle timeout, PROXY protocol).
    std::vector<const ListenerConfig*> update;
    // Listeners that are gone, or that move to another address: stop accepting on
    // the old socket; its connections continue.
    std::vector<std::string> remove;
    // One line per changed setting that applies on restart only, naming the key.
    std::vector<std::string> restart_only;
};

// `next` is a validated config. Removals of a listener re-added under a new address
// are listed in both `remove` (old socket) and `add` (new one); the daemon opens new
// sockets before closing old ones, so a port moving between names keeps accepting.
ReloadPlan plan_reload(const Config& current, const Config& next);

}  // namespace stickyd
