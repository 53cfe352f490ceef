// sd_notify against a real AF_UNIX datagram socket standing in for systemd.
#include "daemon/sd_notify.hpp"

#include <doctest/doctest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>

using namespace stickyd;

namespace {

// Environment variables are process-wide: each test sets what it needs and the
// guard restores "unset", so test order does not matter.
struct EnvGuard {
    EnvGuard() { clear(); }
    ~EnvGuard() { clear(); }
    static void clear() {
        unsetenv("NOTIFY_SOCKET");
        unsetenv("WATCHDOG_USEC");
        unsetenv("WATCHDOG_PID");
    }
};

// A bound datagram socket: a filesystem path, or an abstract name when the
// name passed starts with '@'.
class Receiver {
  public:
    explicit Receiver(std::string name) : name_(std::move(name)) {
        fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd_ >= 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::memcpy(addr.sun_path, name_.data(), name_.size());
        if (name_[0] == '@') addr.sun_path[0] = '\0';
        auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name_.size());
        REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) == 0);
        timeval tv{2, 0};
        setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setenv("NOTIFY_SOCKET", name_.c_str(), 1);
    }
    ~Receiver() {
        ::close(fd_);
        if (name_[0] == '/') ::unlink(name_.c_str());
    }
    std::string receive() {
        char buf[4096];
        ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
        REQUIRE(n >= 0);
        return std::string(buf, static_cast<size_t>(n));
    }

  private:
    std::string name_;
    int fd_ = -1;
};

std::string unique_name(const char* prefix) {
    return std::string(prefix) + "stickyd-test-notify-" + std::to_string(::getpid());
}

}  // namespace

TEST_CASE("sd_notify: every message arrives intact on a path socket") {
    EnvGuard env;
    Receiver systemd(unique_name("/tmp/"));
    CHECK(sd::ready() == 1);
    CHECK(systemd.receive() == "READY=1");
    CHECK(sd::ready("2 listeners, 3 targets") == 1);
    CHECK(systemd.receive() == "READY=1\nSTATUS=2 listeners, 3 targets");
    CHECK(sd::status("12 active\nconnections") == 1);
    CHECK(systemd.receive() == "STATUS=12 active connections");
    CHECK(sd::stopping() == 1);
    CHECK(systemd.receive() == "STOPPING=1");
    CHECK(sd::watchdog() == 1);
    CHECK(systemd.receive() == "WATCHDOG=1");

    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    CHECK(sd::reloading() == 1);
    const std::string reload = systemd.receive();
    const std::string prefix = "RELOADING=1\nMONOTONIC_USEC=";
    REQUIRE(reload.rfind(prefix, 0) == 0);
    const unsigned long long usec = std::stoull(reload.substr(prefix.size()));
    CHECK(usec >= static_cast<unsigned long long>(now.tv_sec) * 1000000ULL);
}

TEST_CASE("sd_notify: abstract socket names") {
    EnvGuard env;
    Receiver systemd(unique_name("@"));
    CHECK(sd::notify("STATUS=abstract") == 1);
    CHECK(systemd.receive() == "STATUS=abstract");
}

TEST_CASE("sd_notify: no NOTIFY_SOCKET is a no-op; a bad one is an error") {
    EnvGuard env;
    CHECK(sd::ready() == 0);
    CHECK(sd::watchdog() == 0);
    setenv("NOTIFY_SOCKET", "", 1);
    CHECK(sd::stopping() == 0);
    setenv("NOTIFY_SOCKET", "relative/path", 1);
    CHECK(sd::stopping() == -EINVAL);
    setenv("NOTIFY_SOCKET", ("/" + std::string(200, 'x')).c_str(), 1);
    CHECK(sd::stopping() == -EINVAL);
    setenv("NOTIFY_SOCKET", unique_name("/tmp/nobody-listens-").c_str(), 1);
    CHECK(sd::stopping() < 0);
}

TEST_CASE("sd_notify: watchdog_interval") {
    EnvGuard env;
    CHECK_FALSE(sd::watchdog_interval());
    setenv("WATCHDOG_USEC", "30000000", 1);
    REQUIRE(sd::watchdog_interval());
    CHECK(*sd::watchdog_interval() == std::chrono::seconds(30));
    setenv("WATCHDOG_PID", std::to_string(::getpid()).c_str(), 1);
    CHECK(sd::watchdog_interval() == std::chrono::microseconds(30000000));
    // Inherited from a parent the watchdog was meant for.
    setenv("WATCHDOG_PID", std::to_string(::getpid() + 1).c_str(), 1);
    CHECK_FALSE(sd::watchdog_interval());
    setenv("WATCHDOG_PID", "12x", 1);
    CHECK_FALSE(sd::watchdog_interval());
    unsetenv("WATCHDOG_PID");
    for (const char* bad : {"", "0", "-5", "10s", "abc", "99999999999999999999999"}) {
        setenv("WATCHDOG_USEC", bad, 1);
        CHECK_MESSAGE(!sd::watchdog_interval(), bad);
    }
}

TEST_CASE("sd_notify: the watchdog is fed only while every loop turns") {
    sd::HeartbeatGate gate;
    CHECK(gate.all_moved({1, 1, 1}));
    CHECK(gate.all_moved({2, 5, 9}));
    // Worker 1 wedged: no ping, however busy the others are.
    CHECK_FALSE(gate.all_moved({3, 5, 10}));
    CHECK_FALSE(gate.all_moved({4, 5, 11}));
    // It turns again: pings resume.
    CHECK(gate.all_moved({5, 6, 12}));
    // A loop that never beat (counter still 0) counts as wedged.
    sd::HeartbeatGate fresh;
    CHECK_FALSE(fresh.all_moved({0, 1}));
    // No loops at all: nothing is wedged.
    sd::HeartbeatGate none;
    CHECK(none.all_moved({}));
}
