// Listening sockets for the workers: one SO_REUSEPORT socket per worker per
// configured listener, so the kernel spreads new connections across workers.
#pragma once

#include <string>

#include "stickyd/address.hpp"

namespace stickyd {

// Returns a bound, listening TCP socket, or -1 with `error` set to one line such
// as "cannot bind 127.0.0.1:8000: Address already in use". An IPv6 wildcard
// ([::]) also accepts IPv4 clients. Accepted sockets inherit TCP_NODELAY.
int open_listener(const SocketAddress& address, std::string& error);

// False (with `error` set) if something already listens on `address`, even a
// socket with SO_REUSEPORT such as another stickyd.
bool check_port_free(const SocketAddress& address, std::string& error);

}  // namespace stickyd
