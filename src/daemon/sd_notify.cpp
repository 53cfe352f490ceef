#include "daemon/sd_notify.hpp"

#include "stickyd/parse_number.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>

namespace stickyd::sd {
namespace {

class Fd {
  public:
    explicit Fd(int fd) : fd_(fd) {}
    ~Fd() {
        if (fd_ >= 0) ::close(fd_);
    }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    int get() const { return fd_; }

  private:
    int fd_;
};

}  // namespace

int notify(std::string_view state) {
    const char* env = std::getenv("NOTIFY_SOCKET");
    if (env == nullptr || *env == '\0') return 0;
    const std::string_view name(env);

    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    // "@name" is a Linux abstract socket: a leading NUL and no terminator, so the
    // address length must cover exactly the name.
    if ((name[0] != '/' && name[0] != '@') || name.size() >= sizeof addr.sun_path) return -EINVAL;
    std::memcpy(addr.sun_path, name.data(), name.size());
    if (name[0] == '@') addr.sun_path[0] = '\0';
    const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size() +
                                            (name[0] == '/' ? 1 : 0));

    Fd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (fd.get() < 0) return -errno;
    const ssize_t sent = ::sendto(fd.get(), state.data(), state.size(), MSG_NOSIGNAL,
                                  reinterpret_cast<const sockaddr*>(&addr), len);
    if (sent < 0) return -errno;
    // A datagram is all or nothing; a short count would be a kernel surprise.
    return static_cast<size_t>(sent) == state.size() ? 1 : -EMSGSIZE;
}

int ready(std::string_view status) {
    if (status.empty()) return notify("READY=1");
    std::string message = "READY=1\nSTATUS=";
    for (char c : status) message += c == '\n' ? ' ' : c;
    return notify(message);
}

int stopping() {
    return notify("STOPPING=1");
}

int reloading() {
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    const auto usec = static_cast<unsigned long long>(now.tv_sec) * 1000000ULL +
                      static_cast<unsigned long long>(now.tv_nsec) / 1000ULL;
    return notify("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(usec));
}

int status(std::string_view text) {
    std::string message = "STATUS=";
    for (char c : text) message += c == '\n' ? ' ' : c;
    return notify(message);
}

int watchdog() {
    return notify("WATCHDOG=1");
}

std::optional<std::chrono::microseconds> watchdog_interval() {
    const char* usec_text = std::getenv("WATCHDOG_USEC");
    if (usec_text == nullptr) return std::nullopt;
    auto usec = parse_whole_number<unsigned long long>(usec_text);
    if (!usec || *usec == 0 || *usec > static_cast<unsigned long long>(INT64_MAX)) {
        return std::nullopt;
    }
    if (const char* pid_text = std::getenv("WATCHDOG_PID")) {
        auto pid = parse_whole_number<pid_t>(pid_text);
        if (!pid || *pid != ::getpid()) return std::nullopt;
    }
    return std::chrono::microseconds(static_cast<int64_t>(*usec));
}

}  // namespace stickyd::sd
