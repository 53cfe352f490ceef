// systemd socket activation (sd_listen_fds(3)), without libsystemd.
//
// With stickyd.socket, systemd binds the listeners and keeps them open across
// stickyd restarts, so a client connecting during a restart waits in the backlog
// instead of being refused. stickyd then adopts the passed sockets: fds 3.. (as many
// as $LISTEN_FDS says, if $LISTEN_PID is this process), named by $LISTEN_FDNAMES.
// Each is matched to a configured listener by its bound address (getsockname), not
// by position or name: the socket unit and the TOML file are edited separately, and
// an address either matches or it does not.
//
// The environment parsing and the matching are pure; only probe_passed_fd and
// adopt_listeners touch file descriptors.
#pragma once

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "stickyd/address.hpp"
#include "stickyd/config.hpp"

namespace stickyd::activation {

constexpr int kFirstFd = 3;  // SD_LISTEN_FDS_START

// What systemd passed: fds kFirstFd .. kFirstFd + names.size() - 1, one name each
// ("unknown" when $LISTEN_FDNAMES is unset, as sd_listen_fds_with_names says).
struct PassedFds {
    std::vector<std::string> names;
    size_t count() const { return names.size(); }
};

// The variables' values, nullptr when unset. Not activated (no fds, no error): no
// $LISTEN_FDS, or $LISTEN_PID unset or naming another process (the variables were
// inherited, so the fds are not ours). A malformed value is a one-line error.
std::variant<PassedFds, std::string> parse_listen_env(const char* listen_pid,
                                                      const char* listen_fds,
                                                      const char* listen_fdnames, pid_t self);

// One passed fd as probed: `address` is set only for a listening TCP socket
// (IPv4 or IPv6); otherwise `problem` says what it is instead.
struct PassedSocket {
    int fd = -1;
    std::string name;
    std::optional<SocketAddress> address;
    bool v6only = false;  // IPV6_V6ONLY on an IPv6 socket
    std::string problem;
};

struct Adoption {
    std::map<std::string, int> fds;  // listener name -> the passed fd it takes over
    std::vector<int> unused;         // matched no listener: the caller closes them
    std::vector<std::string> warnings;
};

// Pure. Each listening socket whose address equals a listener's bind address
// (addresses are unique across listeners) goes to that listener; everything else
// is unused with a one-line warning naming the fd, its name and why.
Adoption match_listeners(const std::vector<PassedSocket>& passed,
                         const std::vector<ListenerConfig>& listeners);

// getsockopt/getsockname on one fd.
PassedSocket probe_passed_fd(int fd, std::string name);

// The whole start-up step: reads and unsets the variables (nothing we start should
// inherit them), probes and matches, logs each warning and closes the unused fds,
// and prepares the adopted ones as open_listener would (close-on-exec, TCP_NODELAY
// for the accepted sockets to inherit). Returns listener name -> fd (empty when not
// socket-activated), or a one-line error for malformed variables.
std::variant<std::map<std::string, int>, std::string> adopt_listeners(
    const std::vector<ListenerConfig>& listeners);

}  // namespace stickyd::activation
