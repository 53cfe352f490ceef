#include "datapath/transparent.hpp"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <initializer_list>

namespace stickyd {
namespace {

int set_option(int fd, int level, int name) {
    const int one = 1;
    return setsockopt(fd, level, name, &one, sizeof one) == 0 ? 0 : errno;
}

// IPV6_TRANSPARENT sets the same socket flag as IP_TRANSPARENT, so either covers an
// IPv6 socket bound to an IPv4-mapped address.
int set_transparent(int fd, int family) {
    return family == AF_INET ? set_option(fd, IPPROTO_IP, IP_TRANSPARENT)
                             : set_option(fd, IPPROTO_IPV6, IPV6_TRANSPARENT);
}

}  // namespace

std::optional<std::string> transparent_bind_problem() {
    for (int family : {AF_INET, AF_INET6}) {
        const int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
        if (fd < 0) {
            if (errno == EAFNOSUPPORT) continue;  // a host without IPv4 (or IPv6)
            return std::string("cannot create a socket to test IP_TRANSPARENT: ") +
                   std::strerror(errno);
        }
        const int error = set_transparent(fd, family);
        ::close(fd);
        if (error == 0) return std::nullopt;
        return std::string(family == AF_INET ? "IP_TRANSPARENT: " : "IPV6_TRANSPARENT: ") +
               std::strerror(error);
    }
    return std::string("no IPv4 or IPv6 sockets");
}

int bind_transparent(int fd, const SocketAddress& source) {
    if (int error = set_transparent(fd, source.family())) return error;
    // Without it, bind() would reserve a port for the source address alone, so one
    // client IP could hold at most one port range's worth of connections to all
    // targets together; with it, connect() picks a port that is unique for the whole
    // (client IP, port, target IP, port) tuple, the same range again per target.
    if (int error = set_option(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT)) return error;
    return ::bind(fd, source.sa(), source.len()) == 0 ? 0 : errno;
}

}  // namespace stickyd
