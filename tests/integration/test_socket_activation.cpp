// Socket activation: the environment contract, probing real sockets made here, the
// address matching, and the whole adoption with fds placed at 3.. as systemd would.
#include "daemon/socket_activation.hpp"

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

using namespace stickyd;
using namespace stickyd::activation;

namespace {

constexpr pid_t kSelf = 4242;

PassedFds passed(const char* pid, const char* fds, const char* names) {
    auto result = parse_listen_env(pid, fds, names, kSelf);
    if (auto* error = std::get_if<std::string>(&result)) FAIL("unexpected error: " << *error);
    return std::get<PassedFds>(result);
}

std::string env_error(const char* pid, const char* fds, const char* names) {
    auto result = parse_listen_env(pid, fds, names, kSelf);
    REQUIRE(std::holds_alternative<std::string>(result));
    return std::get<std::string>(result);
}

SocketAddress addr(const char* text) {
    auto a = SocketAddress::parse(text);
    REQUIRE(a.has_value());
    return *a;
}

ListenerConfig listener(const char* name, const char* bind) {
    ListenerConfig l;
    l.name = name;
    l.bind = addr(bind);
    l.target_group = "web";
    return l;
}

PassedSocket listening(int fd, const char* name, const char* address, bool v6only = false) {
    PassedSocket s;
    s.fd = fd;
    s.name = name;
    s.address = addr(address);
    s.v6only = v6only;
    return s;
}

// A socket of `family`/`type` bound to loopback port 0, listening if asked.
int loopback_socket(int family, int type, bool listen) {
    const int fd = ::socket(family, type | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    if (family == AF_INET) {
        sockaddr_in sin{};
        sin.sin_family = AF_INET;
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof sin) == 0);
    } else {
        sockaddr_in6 sin6{};
        sin6.sin6_family = AF_INET6;
        sin6.sin6_addr = in6addr_loopback;
        if (::bind(fd, reinterpret_cast<sockaddr*>(&sin6), sizeof sin6) != 0) {
            ::close(fd);
            return -1;  // no IPv6 on this host
        }
    }
    if (listen) REQUIRE(::listen(fd, 8) == 0);
    return fd;
}

SocketAddress local_address(int fd) {
    sockaddr_storage storage{};
    socklen_t len = sizeof storage;
    REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&storage), &len) == 0);
    return SocketAddress::from_sockaddr(reinterpret_cast<sockaddr*>(&storage), len);
}

bool is_open(int fd) {
    return ::fcntl(fd, F_GETFD) != -1;
}

// Moves sockets onto fds 3, 4, ... as systemd passes them, and puts back whatever
// the test process had there afterwards.
class PassedAt3 {
  public:
    explicit PassedAt3(std::vector<int> sockets) {
        // Out of the way first: the sockets themselves may well be fds 3, 4, ...
        for (int& fd : sockets) {
            const int moved = ::fcntl(fd, F_DUPFD_CLOEXEC, 100);
            REQUIRE(moved >= 0);
            ::close(fd);
            fd = moved;
        }
        for (size_t i = 0; i < sockets.size(); ++i) {
            const int target = kFirstFd + static_cast<int>(i);
            saved_.push_back(is_open(target) ? ::fcntl(target, F_DUPFD_CLOEXEC, 100) : -1);
            REQUIRE(::dup2(sockets[i], target) == target);
            ::close(sockets[i]);
        }
    }
    ~PassedAt3() {
        for (size_t i = 0; i < saved_.size(); ++i) {
            const int target = kFirstFd + static_cast<int>(i);
            if (saved_[i] >= 0) {
                ::dup2(saved_[i], target);
                ::close(saved_[i]);
            } else {
                ::close(target);
            }
        }
        ::unsetenv("LISTEN_PID");
        ::unsetenv("LISTEN_FDS");
        ::unsetenv("LISTEN_FDNAMES");
    }

  private:
    std::vector<int> saved_;
};

}  // namespace

TEST_CASE("not socket-activated: LISTEN_FDS or LISTEN_PID unset, or another process's") {
    CHECK(passed(nullptr, nullptr, nullptr).count() == 0);
    CHECK(passed("4242", nullptr, nullptr).count() == 0);
    CHECK(passed(nullptr, "2", nullptr).count() == 0);
    CHECK(passed("1", "2", "a:b").count() == 0);  // inherited from our parent
}

TEST_CASE("LISTEN_FDS counts the fds; without LISTEN_FDNAMES each is 'unknown'") {
    PassedFds p = passed("4242", "3", nullptr);
    CHECK(p.names == std::vector<std::string>{"unknown", "unknown", "unknown"});
    CHECK(passed("4242", "0", nullptr).count() == 0);
    CHECK(passed("4242", "0", "").count() == 0);
}

TEST_CASE("LISTEN_FDNAMES names each fd in order, empty names included") {
    CHECK(passed("4242", "2", "web:sockjs").names == std::vector<std::string>{"web", "sockjs"});
    CHECK(passed("4242", "3", "a::c").names == std::vector<std::string>{"a", "", "c"});
    CHECK(passed("4242", "1", "stickyd.socket").names ==
          std::vector<std::string>{"stickyd.socket"});
}

TEST_CASE("malformed variables are one-line errors naming the variable and value") {
    CHECK(env_error("abc", "1", nullptr) == "LISTEN_PID: expected a process id, got 'abc'");
    CHECK(env_error("0", "1", nullptr) == "LISTEN_PID: expected a process id, got '0'");
    CHECK(env_error("-5", "1", nullptr) == "LISTEN_PID: expected a process id, got '-5'");
    CHECK(env_error("4242 ", "1", nullptr) == "LISTEN_PID: expected a process id, got '4242 '");
    CHECK(env_error("4242", "x", nullptr) ==
          "LISTEN_FDS: expected a number of file descriptors, got 'x'");
    CHECK(env_error("4242", "-1", nullptr) ==
          "LISTEN_FDS: expected a number of file descriptors, got '-1'");
    CHECK(env_error("4242", "2x", nullptr) ==
          "LISTEN_FDS: expected a number of file descriptors, got '2x'");
    CHECK(env_error("4242", "", nullptr) ==
          "LISTEN_FDS: expected a number of file descriptors, got ''");
    CHECK(env_error("4242", "99999999999", nullptr) ==
          "LISTEN_FDS: expected a number of file descriptors, got '99999999999'");
    CHECK(env_error("4242", "2", "web") == "LISTEN_FDNAMES: has 1 names for LISTEN_FDS=2 ('web')");
    CHECK(env_error("4242", "1", "a:b") == "LISTEN_FDNAMES: has 2 names for LISTEN_FDS=1 ('a:b')");
}

TEST_CASE("probe: a listening IPv4 TCP socket reports its bound address") {
    const int fd = loopback_socket(AF_INET, SOCK_STREAM, true);
    PassedSocket s = probe_passed_fd(fd, "web");
    CHECK(s.fd == fd);
    CHECK(s.name == "web");
    REQUIRE(s.address.has_value());
    CHECK(*s.address == local_address(fd));
    CHECK(s.address->to_string().rfind("127.0.0.1:", 0) == 0);
    CHECK(s.problem.empty());
    ::close(fd);
}

TEST_CASE("probe: a listening IPv6 socket reports its address and IPV6_V6ONLY") {
    const int fd = loopback_socket(AF_INET6, SOCK_STREAM, true);
    if (fd < 0) return;  // no IPv6 loopback here: nothing to probe
    PassedSocket s = probe_passed_fd(fd, "v6");
    REQUIRE(s.address.has_value());
    CHECK(*s.address == local_address(fd));
    int v6only = 0;
    socklen_t len = sizeof v6only;
    REQUIRE(::getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &len) == 0);
    CHECK(s.v6only == (v6only != 0));
    ::close(fd);
}

TEST_CASE("probe: what is not a listening TCP socket says what it is instead") {
    SUBCASE("bound but not listening") {
        const int fd = loopback_socket(AF_INET, SOCK_STREAM, false);
        PassedSocket s = probe_passed_fd(fd, "x");
        CHECK_FALSE(s.address.has_value());
        CHECK(s.problem == "not listening (Accept=yes is not supported; use Accept=no)");
        ::close(fd);
    }
    SUBCASE("UDP") {
        const int fd = loopback_socket(AF_INET, SOCK_DGRAM, false);
        PassedSocket s = probe_passed_fd(fd, "x");
        CHECK_FALSE(s.address.has_value());
        CHECK(s.problem == "not a TCP socket (use ListenStream=)");
        ::close(fd);
    }
    SUBCASE("AF_UNIX") {
        int pair[2];
        REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0);
        PassedSocket s = probe_passed_fd(pair[0], "x");
        CHECK_FALSE(s.address.has_value());
        CHECK(s.problem == "not an IPv4 or IPv6 socket (address family 1)");
        ::close(pair[0]);
        ::close(pair[1]);
    }
    SUBCASE("a pipe") {
        int pipe_fds[2];
        REQUIRE(::pipe2(pipe_fds, O_CLOEXEC) == 0);
        PassedSocket s = probe_passed_fd(pipe_fds[0], "x");
        CHECK_FALSE(s.address.has_value());
        CHECK(s.problem == "not a socket (Socket operation on non-socket)");
        ::close(pipe_fds[0]);
        ::close(pipe_fds[1]);
    }
}

TEST_CASE("match: each socket goes to the listener with its bind address, whatever the order") {
    const std::vector<ListenerConfig> listeners = {listener("web", "0.0.0.0:8000"),
                                                   listener("web-v6", "[::1]:8000"),
                                                   listener("sockjs", "0.0.0.0:9999")};
    Adoption a =
        match_listeners({listening(3, "s", "0.0.0.0:9999"), listening(4, "s", "[::1]:8000"),
                         listening(5, "s", "0.0.0.0:8000")},
                        listeners);
    CHECK(a.fds == std::map<std::string, int>{{"sockjs", 3}, {"web-v6", 4}, {"web", 5}});
    CHECK(a.unused.empty());
    CHECK(a.warnings.empty());
}

TEST_CASE("match: a listener without a passed socket is simply not in the map") {
    Adoption a =
        match_listeners({listening(3, "s", "127.0.0.1:8000")},
                        {listener("a", "127.0.0.1:8000"), listener("b", "127.0.0.1:8001")});
    CHECK(a.fds == std::map<std::string, int>{{"a", 3}});
}

TEST_CASE("match: port, address and family must all agree") {
    const std::vector<ListenerConfig> listeners = {listener("web", "127.0.0.1:8000")};
    Adoption a = match_listeners(
        {listening(3, "p", "127.0.0.1:8001"), listening(4, "a", "127.0.0.2:8000"),
         listening(5, "f", "[::ffff:127.0.0.1]:8000"), listening(6, "w", "0.0.0.0:8000")},
        listeners);
    CHECK(a.fds.empty());
    CHECK(a.unused == std::vector<int>{3, 4, 5, 6});
    REQUIRE(a.warnings.size() == 4);
    CHECK(a.warnings[0] ==
          "socket-activation fd 3 (p): 127.0.0.1:8001 matches no [[listener]] bind address; "
          "closing it");
}

TEST_CASE("match: a socket that is not a TCP listener is unused, with its problem") {
    PassedSocket bad;
    bad.fd = 7;
    bad.name = "metrics";
    bad.problem = "not a TCP socket (use ListenStream=)";
    Adoption a = match_listeners({bad}, {listener("web", "127.0.0.1:8000")});
    CHECK(a.fds.empty());
    CHECK(a.unused == std::vector<int>{7});
    CHECK(a.warnings ==
          std::vector<std::string>{"socket-activation fd 7 (metrics): not a TCP socket (use "
                                   "ListenStream=); closing it"});
}

TEST_CASE("match: a second socket for the same listener is unused") {
    Adoption a =
        match_listeners({listening(3, "a", "127.0.0.1:8000"), listening(4, "b", "127.0.0.1:8000")},
                        {listener("web", "127.0.0.1:8000")});
    CHECK(a.fds == std::map<std::string, int>{{"web", 3}});
    CHECK(a.unused == std::vector<int>{4});
    CHECK(a.warnings == std::vector<std::string>{
                            "socket-activation fd 4 (b): listener 'web' (127.0.0.1:8000) already "
                            "has fd 3; closing it"});
}

TEST_CASE("match: an IPv6-only wildcard is adopted with a warning; a specific address is not") {
    Adoption a = match_listeners(
        {listening(3, "any", "[::]:8000", true), listening(4, "lo", "[::1]:8001", true)},
        {listener("any", "[::]:8000"), listener("lo", "[::1]:8001")});
    CHECK(a.fds == std::map<std::string, int>{{"any", 3}, {"lo", 4}});
    CHECK(a.warnings ==
          std::vector<std::string>{"socket-activation fd 3 (any): listener 'any' ([::]:8000) is "
                                   "IPv6-only (BindIPv6Only=ipv6-only); IPv4 clients will not "
                                   "reach it"});
}

TEST_CASE("adopt_listeners: not activated leaves everything alone") {
    ::unsetenv("LISTEN_PID");
    ::unsetenv("LISTEN_FDS");
    auto result = adopt_listeners({listener("web", "127.0.0.1:8000")});
    REQUIRE(std::holds_alternative<std::map<std::string, int>>(result));
    CHECK(std::get<std::map<std::string, int>>(result).empty());
}

TEST_CASE("adopt_listeners: matches fds 3.., closes the rest and unsets the variables") {
    const int web = loopback_socket(AF_INET, SOCK_STREAM, true);
    const int stray = loopback_socket(AF_INET, SOCK_STREAM, true);
    const int udp = loopback_socket(AF_INET, SOCK_DGRAM, false);
    const SocketAddress web_address = local_address(web);
    PassedAt3 at3({stray, web, udp});  // fds 3, 4, 5
    // As systemd leaves them: inheritable.
    for (int fd = 3; fd <= 5; ++fd) REQUIRE(::fcntl(fd, F_SETFD, 0) == 0);
    ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);
    ::setenv("LISTEN_FDS", "3", 1);
    ::setenv("LISTEN_FDNAMES", "stray:web:udp", 1);

    ListenerConfig l;
    l.name = "web";
    l.bind = web_address;
    auto result = adopt_listeners({l});
    REQUIRE(std::holds_alternative<std::map<std::string, int>>(result));
    CHECK(std::get<std::map<std::string, int>>(result) == std::map<std::string, int>{{"web", 4}});
    CHECK(is_open(4));
    CHECK((::fcntl(4, F_GETFD) & FD_CLOEXEC) != 0);
    CHECK_FALSE(is_open(3));
    CHECK_FALSE(is_open(5));
    CHECK(std::getenv("LISTEN_PID") == nullptr);
    CHECK(std::getenv("LISTEN_FDS") == nullptr);
    CHECK(std::getenv("LISTEN_FDNAMES") == nullptr);
}

TEST_CASE("adopt_listeners: malformed variables are an error, and are unset too") {
    ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);
    ::setenv("LISTEN_FDS", "two", 1);
    auto result = adopt_listeners({});
    REQUIRE(std::holds_alternative<std::string>(result));
    CHECK(std::get<std::string>(result) ==
          "LISTEN_FDS: expected a number of file descriptors, got 'two'");
    CHECK(std::getenv("LISTEN_FDS") == nullptr);
}
