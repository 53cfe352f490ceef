#include "datapath/listener.hpp"

#include <fmt/core.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace stickyd {
namespace {

// The kernel clamps this to net.core.somaxconn.
constexpr int kBacklog = 65535;

bool set_int_option(int fd, int level, int name, int value) {
    return setsockopt(fd, level, name, &value, sizeof value) == 0;
}

}  // namespace

bool check_port_free(const SocketAddress& address, std::string& error) {
    // SO_REUSEPORT would let a second stickyd bind the same port and silently take
    // half the clients. A bind without it fails if anyone is listening there.
    int fd = ::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd < 0) {
        error = fmt::format("cannot create a socket for {}: {}", address.to_string(),
                            std::strerror(errno));
        return false;
    }
    set_int_option(fd, SOL_SOCKET, SO_REUSEADDR, 1);  // TIME_WAIT from a restart is fine
    if (address.family() == AF_INET6) set_int_option(fd, IPPROTO_IPV6, IPV6_V6ONLY, 0);
    bool ok = ::bind(fd, address.sa(), address.len()) == 0 && ::listen(fd, 1) == 0;
    if (!ok) {
        error = fmt::format("cannot bind {}: {}", address.to_string(), std::strerror(errno));
    }
    ::close(fd);
    return ok;
}

int open_listener(const SocketAddress& address, std::string& error) {
    const std::string where = address.to_string();
    auto fail = [&](int fd, std::string_view what) {
        error = fmt::format("cannot {} {}: {}", what, where, std::strerror(errno));
        if (fd >= 0) ::close(fd);
        return -1;
    };

    int fd = ::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd < 0) return fail(fd, "create a socket for");
    if (!set_int_option(fd, SOL_SOCKET, SO_REUSEADDR, 1)) return fail(fd, "set SO_REUSEADDR on");
    if (!set_int_option(fd, SOL_SOCKET, SO_REUSEPORT, 1)) return fail(fd, "set SO_REUSEPORT on");
    // Dual stack for [::], whatever net.ipv6.bindv6only says.
    if (address.family() == AF_INET6 && !set_int_option(fd, IPPROTO_IPV6, IPV6_V6ONLY, 0)) {
        return fail(fd, "clear IPV6_V6ONLY on");
    }
    // Inherited by every accepted socket, which saves a setsockopt per client.
    if (!set_int_option(fd, IPPROTO_TCP, TCP_NODELAY, 1)) return fail(fd, "set TCP_NODELAY on");
    if (::bind(fd, address.sa(), address.len()) != 0) return fail(fd, "bind");
    if (::listen(fd, kBacklog) != 0) return fail(fd, "listen on");
    return fd;
}

}  // namespace stickyd
