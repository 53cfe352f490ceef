#include "daemon/socket_activation.hpp"

#include <fcntl.h>
#include <fmt/core.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "stickyd/log.hpp"
#include "stickyd/parse_number.hpp"

namespace stickyd::activation {
namespace {

std::vector<std::string> split_names(std::string_view text) {
    std::vector<std::string> names;
    for (;;) {
        const size_t colon = text.find(':');
        names.emplace_back(text.substr(0, colon));
        if (colon == std::string_view::npos) return names;
        text.remove_prefix(colon + 1);
    }
}

std::string describe(const PassedSocket& s) {
    return fmt::format("socket-activation fd {} ({})", s.fd, s.name);
}

bool is_wildcard_v6(const SocketAddress& a) {
    if (a.family() != AF_INET6) return false;
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(a.sa());
    return IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr);
}

}  // namespace

std::variant<PassedFds, std::string> parse_listen_env(const char* listen_pid,
                                                      const char* listen_fds,
                                                      const char* listen_fdnames, pid_t self) {
    if (listen_fds == nullptr || listen_pid == nullptr) return PassedFds{};
    const auto pid = parse_whole_number<pid_t>(listen_pid);
    if (!pid || *pid <= 0) {
        return fmt::format("LISTEN_PID: expected a process id, got '{}'", listen_pid);
    }
    if (*pid != self) return PassedFds{};
    const auto count = parse_whole_number<int>(listen_fds);
    if (!count || *count < 0 || *count > INT_MAX - kFirstFd) {
        return fmt::format("LISTEN_FDS: expected a number of file descriptors, got '{}'",
                           listen_fds);
    }
    PassedFds passed;
    // As sd_listen_fds_with_names: with no fds, whatever the names say is moot.
    if (*count == 0) return passed;
    if (listen_fdnames == nullptr) {
        passed.names.assign(static_cast<size_t>(*count), "unknown");
        return passed;
    }
    passed.names = split_names(listen_fdnames);
    if (passed.names.size() != static_cast<size_t>(*count)) {
        return fmt::format("LISTEN_FDNAMES: has {} names for LISTEN_FDS={} ('{}')",
                           passed.names.size(), *count, listen_fdnames);
    }
    return passed;
}

Adoption match_listeners(const std::vector<PassedSocket>& passed,
                         const std::vector<ListenerConfig>& listeners) {
    Adoption out;
    for (const auto& s : passed) {
        if (!s.address) {
            out.warnings.push_back(fmt::format("{}: {}; closing it", describe(s), s.problem));
            out.unused.push_back(s.fd);
            continue;
        }
        const ListenerConfig* match = nullptr;
        for (const auto& l : listeners) {
            if (l.bind == *s.address) match = &l;
        }
        if (match == nullptr) {
            out.warnings.push_back(
                fmt::format("{}: {} matches no [[listener]] bind address; closing it", describe(s),
                            s.address->to_string()));
            out.unused.push_back(s.fd);
            continue;
        }
        if (out.fds.count(match->name) != 0) {
            out.warnings.push_back(
                fmt::format("{}: listener '{}' ({}) already has fd {}; closing it", describe(s),
                            match->name, s.address->to_string(), out.fds.at(match->name)));
            out.unused.push_back(s.fd);
            continue;
        }
        // stickyd's own [::] listeners are dual-stack; a socket unit with
        // BindIPv6Only=ipv6-only is adopted as it is, but say what that means.
        if (s.v6only && is_wildcard_v6(*s.address)) {
            out.warnings.push_back(fmt::format(
                "{}: listener '{}' ({}) is IPv6-only (BindIPv6Only=ipv6-only); IPv4 clients "
                "will not reach it",
                describe(s), match->name, s.address->to_string()));
        }
        out.fds.emplace(match->name, s.fd);
    }
    return out;
}

PassedSocket probe_passed_fd(int fd, std::string name) {
    PassedSocket s;
    s.fd = fd;
    s.name = std::move(name);
    auto int_option = [fd](int level, int option) -> std::optional<int> {
        int value = 0;
        socklen_t len = sizeof value;
        if (::getsockopt(fd, level, option, &value, &len) != 0) return std::nullopt;
        return value;
    };
    const auto domain = int_option(SOL_SOCKET, SO_DOMAIN);
    if (!domain) {
        s.problem = fmt::format("not a socket ({})", std::strerror(errno));
        return s;
    }
    if (*domain != AF_INET && *domain != AF_INET6) {
        s.problem = fmt::format("not an IPv4 or IPv6 socket (address family {})", *domain);
        return s;
    }
    if (int_option(SOL_SOCKET, SO_TYPE) != SOCK_STREAM) {
        s.problem = "not a TCP socket (use ListenStream=)";
        return s;
    }
    if (int_option(SOL_SOCKET, SO_ACCEPTCONN) != 1) {
        s.problem = "not listening (Accept=yes is not supported; use Accept=no)";
        return s;
    }
    sockaddr_storage storage{};
    socklen_t len = sizeof storage;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&storage), &len) != 0) {
        s.problem = fmt::format("getsockname failed: {}", std::strerror(errno));
        return s;
    }
    s.address = SocketAddress::from_sockaddr(reinterpret_cast<sockaddr*>(&storage), len);
    if (*domain == AF_INET6) s.v6only = int_option(IPPROTO_IPV6, IPV6_V6ONLY).value_or(0) != 0;
    return s;
}

std::variant<std::map<std::string, int>, std::string> adopt_listeners(
    const std::vector<ListenerConfig>& listeners) {
    auto parsed = parse_listen_env(std::getenv("LISTEN_PID"), std::getenv("LISTEN_FDS"),
                                   std::getenv("LISTEN_FDNAMES"), ::getpid());
    ::unsetenv("LISTEN_PID");
    ::unsetenv("LISTEN_FDS");
    ::unsetenv("LISTEN_FDNAMES");
    if (auto* error = std::get_if<std::string>(&parsed)) return *error;
    const auto& passed = std::get<PassedFds>(parsed);

    std::vector<PassedSocket> probed;
    for (size_t i = 0; i < passed.count(); ++i) {
        const int fd = kFirstFd + static_cast<int>(i);
        // systemd passes them inheritable; nothing stickyd starts should get them.
        ::fcntl(fd, F_SETFD, FD_CLOEXEC);
        probed.push_back(probe_passed_fd(fd, passed.names[i]));
    }
    Adoption adoption = match_listeners(probed, listeners);
    for (const auto& warning : adoption.warnings) log::warn("{}", warning);
    for (int fd : adoption.unused) ::close(fd);
    for (const auto& [name, fd] : adoption.fds) {
        const int one = 1;
        // The socket unit need not say NoDelay=yes: accepted sockets inherit it from
        // the listener, as with the ones open_listener creates.
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        log::info("adopted socket-activation fd {} for listener '{}'", fd, name);
    }
    return adoption.fds;
}

}  // namespace stickyd::activation
