// The systemd notification protocol (sd_notify(3)), without libsystemd.
//
// A Type=notify service tells systemd about its state by sending newline-separated
// KEY=VALUE datagrams to the AF_UNIX socket named in $NOTIFY_SOCKET. The protocol
// is a documented, stable interface, and small enough that a few dozen lines beat
// a library dependency. Every call is a no-op when $NOTIFY_SOCKET is unset, so
// stickyd behaves the same outside systemd.
#pragma once

#include <chrono>
#include <optional>
#include <string_view>
#include <vector>

namespace stickyd::sd {

// Sends `state` as one datagram to $NOTIFY_SOCKET, read at each call. Returns 1
// when sent, 0 when $NOTIFY_SOCKET is unset (nothing to do), or a negative errno
// (-EINVAL for a socket name that is neither an absolute path nor "@abstract").
int notify(std::string_view state);

// "READY=1", with an optional STATUS= line in the same datagram.
int ready(std::string_view status = {});
// "STOPPING=1": shutdown began.
int stopping();
// "RELOADING=1" with MONOTONIC_USEC=, which systemd 253+ needs to match a
// Type=notify-reload reload to its READY=1; older versions ignore the extra key.
int reloading();
// "STATUS=<text>": the free-form line `systemctl status` shows. Newlines in
// `text` are replaced, since each line of a datagram is its own assignment.
int status(std::string_view text);
// "WATCHDOG=1": keep-alive for WatchdogSec=.
int watchdog();

// The watchdog timeout systemd expects pings within, from $WATCHDOG_USEC, or
// nullopt if there is none: unset, not a positive integer, or $WATCHDOG_PID is set
// and names another process (the variables were inherited from a parent).
std::optional<std::chrono::microseconds> watchdog_interval();

// Decides whether to feed the watchdog: only when every event loop's heartbeat
// counter moved since the previous look, so one wedged loop among several still
// gets the service restarted.
class HeartbeatGate {
  public:
    // beats: each loop's counter now, in a fixed order.
    bool all_moved(const std::vector<uint64_t>& beats) {
        bool all = true;
        last_.resize(beats.size(), 0);
        for (size_t i = 0; i < beats.size(); ++i) {
            if (beats[i] == last_[i]) all = false;
            last_[i] = beats[i];
        }
        return all;
    }

  private:
    std::vector<uint64_t> last_;
};

}  // namespace stickyd::sd
