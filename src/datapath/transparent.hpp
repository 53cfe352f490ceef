// preserve_client_ip, the socket side: target sockets that connect from the client's
// IP. The recipe of HAProxy's "usesrc clientip" and nginx's "proxy_bind $remote_addr
// transparent": IP_TRANSPARENT to bind an address this host does not own, and a
// bind() before connect().
#pragma once

#include <optional>
#include <string>

#include "stickyd/address.hpp"

namespace stickyd {

// Why this process cannot bind sockets to foreign addresses ("IP_TRANSPARENT:
// Operation not permitted"), or nullopt when it can. The kernel wants CAP_NET_ADMIN
// (or CAP_NET_RAW) for it; asking a throwaway socket is the only reliable test,
// since user namespaces and ambient sets make reading capability bits misleading.
std::optional<std::string> transparent_bind_problem();

// Binds the unconnected TCP socket `fd` to `source`'s IP, leaving the port to
// connect(). Returns 0, or the errno of the step that failed (the socket is then
// still unbound and connects from the host's own address).
int bind_transparent(int fd, const SocketAddress& source);

}  // namespace stickyd
