#include "admin/server.hpp"

#include <errno.h>
#include <fcntl.h>
#include <httplib.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "stickyd/log.hpp"

namespace stickyd {
namespace {

using Clock = std::chrono::steady_clock;

std::string errno_text(int err) {
    return std::strerror(err);
}

// Milliseconds left until `deadline` for poll(), at least 0.
int ms_left(Clock::time_point deadline) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    return static_cast<int>(std::max<int64_t>(0, left.count()));
}

// Waits for `events` on fd until the deadline; false on timeout or error.
bool wait_for(int fd, short events, Clock::time_point deadline) {
    for (;;) {
        pollfd p{fd, events, 0};
        const int rc = poll(&p, 1, ms_left(deadline));
        if (rc > 0) return true;
        if (rc == 0 || errno != EINTR) return false;
    }
}

// Sends everything by the deadline (non-blocking fd).
bool send_all(int fd, std::string_view data, Clock::time_point deadline) {
    while (!data.empty()) {
        const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
        if (n > 0) {
            data.remove_prefix(static_cast<size_t>(n));
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!wait_for(fd, POLLOUT, deadline)) return false;
        } else {
            return false;
        }
    }
    return true;
}

std::string reason_phrase(int status) {
    switch (status) {
        case 400:
            return "Bad Request";
        case 408:
            return "Request Timeout";
        case 431:
            return "Request Header Fields Too Large";
        case 503:
            return "Service Unavailable";
        default:
            return "Error";
    }
}

// For requests httplib never sees (too large, too slow, no thread free).
std::string raw_error(int status, std::string_view message) {
    const std::string body = error_reply(status, message).body;
    return fmt::format(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n"
        "Connection: close\r\n\r\n{}",
        status, reason_phrase(status), body.size(), body);
}

// httplib's Stream over an accepted non-blocking socket: first the bytes already
// read while looking for the end of the head, then the socket, every operation
// bounded by the request's deadline.
class DeadlineStream final : public httplib::Stream {
  public:
    DeadlineStream(int fd, std::string head, Clock::time_point read_deadline,
                   std::chrono::milliseconds write_timeout)
        : fd_(fd),
          head_(std::move(head)),
          read_deadline_(read_deadline),
          write_timeout_(write_timeout) {}

    bool is_readable() const override { return offset_ < head_.size(); }
    bool is_writable() const override {
        return wait_for(fd_, POLLOUT, Clock::now() + write_timeout_);
    }
    ssize_t read(char* ptr, size_t size) override {
        if (offset_ < head_.size()) {
            const size_t n = std::min(size, head_.size() - offset_);
            std::memcpy(ptr, head_.data() + offset_, n);
            offset_ += n;
            return static_cast<ssize_t>(n);
        }
        for (;;) {
            const ssize_t n = ::recv(fd_, ptr, size, 0);
            if (n >= 0) return n;
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
            if (!wait_for(fd_, POLLIN, read_deadline_)) return -1;
        }
    }
    ssize_t write(const char* ptr, size_t size) override {
        return send_all(fd_, {ptr, size}, Clock::now() + write_timeout_)
                   ? static_cast<ssize_t>(size)
                   : -1;
    }
    void get_remote_ip_and_port(std::string& ip, int& port) const override {
        ip = "local";
        port = 0;
    }
    void get_local_ip_and_port(std::string& ip, int& port) const override {
        ip = "local";
        port = 0;
    }
    int socket() const override { return fd_; }

  private:
    int fd_;
    std::string head_;
    size_t offset_ = 0;
    Clock::time_point read_deadline_;
    std::chrono::milliseconds write_timeout_;
};

// httplib parses and writes HTTP; we route. process_request is protected, hence
// the subclass: httplib 0.11 cannot listen on AF_UNIX itself.
class HttpGlue final : public httplib::Server {
  public:
    explicit HttpGlue(AdminSource& source, size_t max_body) {
        set_payload_max_length(max_body);
        // The pre-routing handler runs before httplib reads a body, so the size cap
        // is ours to apply. No endpoint reads a body; small ones are ignored.
        set_pre_routing_handler([&source, max_body](const httplib::Request& req,
                                                    httplib::Response& res) {
            if (req.has_header("Transfer-Encoding") ||
                req.get_header_value<uint64_t>("Content-Length") > max_body) {
                const AdminReply reply = error_reply(
                    413, fmt::format("request body larger than {} bytes (no endpoint takes one)",
                                     max_body));
                res.status = reply.status;
                res.set_content(reply.body, reply.content_type.c_str());
                return HandlerResponse::Handled;
            }
            AdminRequest request;
            request.method = req.method;
            request.path = req.target.substr(0, req.target.find('?'));
            for (const auto& [k, v] : req.params) request.query.emplace(k, v);
            AdminReply reply;
            try {
                reply = handle_admin_request(request, source);
            } catch (const std::exception& e) {
                reply = error_reply(500, e.what());
            }
            res.status = reply.status;
            if (!reply.allow.empty()) res.set_header("Allow", reply.allow);
            res.set_content(reply.body, reply.content_type.c_str());
            return HandlerResponse::Handled;
        });
        // httplib's own rejections (malformed request line, body too large) come
        // with an empty body: give them the JSON error every other error has.
        set_error_handler(HandlerWithResponse(
            [](const httplib::Request&, httplib::Response& res) -> HandlerResponse {
                if (!res.body.empty()) return HandlerResponse::Unhandled;
                std::string message = fmt::format("HTTP {}", res.status);
                if (res.status == 400) message = "malformed HTTP request";
                if (res.status == 413) message = "request body too large (no endpoint takes one)";
                const AdminReply reply = error_reply(res.status, message);
                res.set_content(reply.body, reply.content_type.c_str());
                return HandlerResponse::Handled;
            }));
    }

    void serve(httplib::Stream& stream) {
        bool closed = false;
        process_request(stream, /*close_connection=*/true, closed, [](httplib::Request&) {});
    }
};

// Where the head ends ("\r\n\r\n", or "\n\n" from a lax client), or npos.
// Debian's cpp-httplib is a compiled library built with an 8192-byte line limit
// (CPPHTTPLIB_HEADER_MAX_LENGTH); a longer line would come back as a bare 400.
constexpr size_t kMaxHeadLine = 8192;

size_t longest_line(std::string_view head) {
    size_t longest = 0;
    while (!head.empty()) {
        const size_t nl = head.find('\n');
        const size_t len = nl == std::string_view::npos ? head.size() : nl + 1;
        longest = std::max(longest, len);
        head.remove_prefix(len);
    }
    return longest;
}

size_t head_end(std::string_view data) {
    const size_t crlf = data.find("\r\n\r\n");
    const size_t lf = data.find("\n\n");
    if (crlf == std::string_view::npos) return lf == std::string_view::npos ? lf : lf + 2;
    if (lf == std::string_view::npos || crlf + 2 < lf) return crlf + 4;
    return lf + 2;
}

}  // namespace

struct AdminServer::Impl {
    AdminSource& source;
    AdminOptions options;
    HttpGlue http;
    int unix_fd = -1;
    int tcp_fd = -1;
    int wake_fd = -1;
    dev_t unix_dev = 0;
    ino_t unix_ino = 0;
    std::optional<SocketAddress> tcp_bound;

    std::mutex mutex;
    std::condition_variable ready;
    std::deque<int> queued;
    bool stopping = false;
    std::thread acceptor;
    std::vector<std::thread> pool;

    Impl(AdminSource& s, AdminOptions o)
        : source(s), options(std::move(o)), http(s, options.max_body) {}

    std::runtime_error unix_error(std::string_view what) const {
        return std::runtime_error(fmt::format("admin socket {}: {}", options.unix_path, what));
    }

    void make_parent_directory() const {
        const std::string& path = options.unix_path;
        for (size_t slash = path.find('/', 1); slash != std::string::npos;
             slash = path.find('/', slash + 1)) {
            const std::string dir = path.substr(0, slash);
            if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
                throw unix_error(
                    fmt::format("cannot create directory {}: {}", dir, errno_text(errno)));
            }
        }
    }

    // A socket file left by a daemon that died is removed; one that a live process
    // answers on is not ours to take.
    void clear_stale_socket(const sockaddr_un& addr) const {
        struct stat st {};
        if (::lstat(options.unix_path.c_str(), &st) != 0) return;
        if (!S_ISSOCK(st.st_mode)) throw unix_error("exists and is not a socket");
        const int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (probe < 0) throw unix_error(fmt::format("socket: {}", errno_text(errno)));
        const int rc = ::connect(probe, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
        const int err = errno;
        ::close(probe);
        if (rc == 0 || err == EAGAIN) {
            throw unix_error(
                "another process answers on it (another stickyd?); stop it or choose another "
                "path (admin_socket, --admin-socket)");
        }
        if (err != ECONNREFUSED) throw unix_error(fmt::format("cannot probe: {}", errno_text(err)));
        if (::unlink(options.unix_path.c_str()) != 0 && errno != ENOENT) {
            throw unix_error(fmt::format("cannot remove the stale socket: {}", errno_text(errno)));
        }
        log::info("removed stale admin socket {}", options.unix_path);
    }

    void open_unix() {
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        if (options.unix_path.size() >= sizeof addr.sun_path) {
            throw unix_error(fmt::format("path longer than {} bytes", sizeof addr.sun_path - 1));
        }
        std::memcpy(addr.sun_path, options.unix_path.data(), options.unix_path.size());
        make_parent_directory();
        clear_stale_socket(addr);
        unix_fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (unix_fd < 0) throw unix_error(fmt::format("socket: {}", errno_text(errno)));
        if (::bind(unix_fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
            throw unix_error(fmt::format("cannot bind: {}", errno_text(errno)));
        }
        struct stat st {};
        if (::chmod(options.unix_path.c_str(), 0660) != 0 ||
            ::stat(options.unix_path.c_str(), &st) != 0) {
            const int err = errno;
            ::unlink(options.unix_path.c_str());
            throw unix_error(fmt::format("cannot set mode 0660: {}", errno_text(err)));
        }
        unix_dev = st.st_dev;
        unix_ino = st.st_ino;
        if (::listen(unix_fd, 64) != 0)
            throw unix_error(fmt::format("listen: {}", errno_text(errno)));
    }

    void open_tcp() {
        const SocketAddress& address = *options.tcp;
        auto fail = [&](std::string_view what) {
            return std::runtime_error(fmt::format("admin address {}: {}: {}", address.to_string(),
                                                  what, errno_text(errno)));
        };
        tcp_fd = ::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (tcp_fd < 0) throw fail("socket");
        const int one = 1;
        ::setsockopt(tcp_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (::bind(tcp_fd, address.sa(), address.len()) != 0) throw fail("cannot bind");
        if (::listen(tcp_fd, 64) != 0) throw fail("listen");
        sockaddr_storage bound{};
        socklen_t len = sizeof bound;
        ::getsockname(tcp_fd, reinterpret_cast<sockaddr*>(&bound), &len);
        tcp_bound = SocketAddress::from_sockaddr(reinterpret_cast<sockaddr*>(&bound), len);
    }

    void close_fds() {
        for (int* fd : {&unix_fd, &tcp_fd, &wake_fd}) {
            if (*fd >= 0) ::close(*fd);
            *fd = -1;
        }
    }

    // Only the file we bound: a newer daemon may have replaced it since.
    void unlink_socket() const {
        if (options.unix_path.empty() || unix_ino == 0) return;
        struct stat st {};
        if (::lstat(options.unix_path.c_str(), &st) == 0 && st.st_dev == unix_dev &&
            st.st_ino == unix_ino) {
            ::unlink(options.unix_path.c_str());
        }
    }

    void accept_loop() {
        std::vector<pollfd> fds{{wake_fd, POLLIN, 0}};
        if (unix_fd >= 0) fds.push_back({unix_fd, POLLIN, 0});
        if (tcp_fd >= 0) fds.push_back({tcp_fd, POLLIN, 0});
        for (;;) {
            if (::poll(fds.data(), fds.size(), -1) < 0) {
                if (errno == EINTR) continue;
                log::error("admin endpoint: poll: {}", errno_text(errno));
                return;
            }
            if (fds[0].revents != 0) return;
            for (size_t i = 1; i < fds.size(); ++i) {
                if (fds[i].revents == 0) continue;
                const int fd = ::accept4(fds[i].fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
                if (fd < 0) {
                    // EMFILE and the like: back off rather than spin on a ready socket.
                    if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
                        log::warn("admin endpoint: accept: {}", errno_text(errno));
                        ::poll(fds.data(), 1, 100);
                    }
                    continue;
                }
                enqueue(fd);
            }
        }
    }

    void enqueue(int fd) {
        {
            std::lock_guard lock(mutex);
            if (queued.size() < options.max_queued) {
                queued.push_back(fd);
                ready.notify_one();
                return;
            }
        }
        // Every thread is busy and the queue is full: say so without waiting.
        const std::string reply = raw_error(503, "admin endpoint busy; try again");
        ::send(fd, reply.data(), reply.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        ::close(fd);
    }

    void pool_loop() {
        for (;;) {
            int fd;
            {
                std::unique_lock lock(mutex);
                ready.wait(lock, [&] { return stopping || !queued.empty(); });
                if (stopping) return;
                fd = queued.front();
                queued.pop_front();
            }
            serve(fd);
            ::close(fd);
        }
    }

    // Reads the head under a size cap and one deadline for all of it, so a client
    // that trickles bytes cannot hold a thread past io_timeout.
    void serve(int fd) {
        const Clock::time_point deadline = Clock::now() + options.io_timeout;
        std::string head;
        char buffer[4096];
        for (;;) {
            // Exactly max_head, whatever the recv sizes: a head that ends past it,
            // or has not ended within it, is too large.
            const size_t end = head_end(head);
            if ((end == std::string::npos && head.size() >= options.max_head) ||
                (end != std::string::npos && end > options.max_head)) {
                return reject(fd, 431,
                              fmt::format("request head larger than {} bytes", options.max_head),
                              deadline);
            }
            if (end != std::string::npos) {
                if (longest_line(std::string_view(head).substr(0, end)) > kMaxHeadLine) {
                    return reject(
                        fd, 431,
                        fmt::format("request header line longer than {} bytes", kMaxHeadLine),
                        deadline);
                }
                break;
            }
            const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
            if (n > 0) {
                head.append(buffer, static_cast<size_t>(n));
            } else if (n == 0) {
                // EOF: a client that half-closed after a truncated request gets told.
                if (!head.empty()) reject(fd, 400, "incomplete HTTP request", deadline);
                return;
            } else if (errno == EINTR) {
                continue;
            } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!wait_for(fd, POLLIN, deadline)) {
                    if (!head.empty()) {
                        reject(fd, 408,
                               fmt::format("request not complete within {} ms",
                                           options.io_timeout.count()),
                               Clock::now() + options.io_timeout);
                    }
                    return;
                }
            } else {
                return;
            }
        }
        DeadlineStream stream(fd, std::move(head), deadline, options.io_timeout);
        http.serve(stream);
        linger_and_drain(fd, deadline);
    }

    void reject(int fd, int status, std::string_view message, Clock::time_point deadline) const {
        if (!send_all(fd, raw_error(status, message), deadline)) return;
        linger_and_drain(fd, deadline);
    }

    // Reads and drops what the client still sends for a moment after the answer,
    // so the close does not turn into a reset that destroys the answer in flight.
    static void linger_and_drain(int fd, Clock::time_point deadline) {
        ::shutdown(fd, SHUT_WR);
        const Clock::time_point linger =
            std::min(deadline, Clock::now() + std::chrono::milliseconds(1000));
        char buffer[16384];
        size_t drained = 0;
        while (drained < 8 * 1024 * 1024 && wait_for(fd, POLLIN, linger)) {
            const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
            if (n <= 0 && !(n < 0 && errno == EINTR)) break;
            if (n > 0) drained += static_cast<size_t>(n);
        }
    }
};

AdminServer::AdminServer(AdminSource& source, AdminOptions options)
    : impl_(std::make_unique<Impl>(source, std::move(options))) {}

AdminServer::~AdminServer() {
    stop();
}

void AdminServer::start() {
    Impl& s = *impl_;
    try {
        s.wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (s.wake_fd < 0) {
            throw std::runtime_error(fmt::format("admin endpoint: eventfd: {}", errno_text(errno)));
        }
        if (!s.options.unix_path.empty()) s.open_unix();
        if (s.options.tcp) s.open_tcp();
    } catch (...) {
        s.close_fds();
        s.unlink_socket();
        s.unix_ino = 0;
        throw;
    }
    s.acceptor = std::thread([&s] { s.accept_loop(); });
    for (unsigned i = 0; i < std::max(1U, s.options.threads); ++i) {
        s.pool.emplace_back([&s] { s.pool_loop(); });
    }
    if (!s.options.unix_path.empty()) log::info("admin endpoint on unix:{}", s.options.unix_path);
    if (s.tcp_bound) log::info("admin endpoint on http://{}", s.tcp_bound->to_string());
}

void AdminServer::stop() {
    Impl& s = *impl_;
    if (s.acceptor.joinable()) {
        eventfd_write(s.wake_fd, 1);
        s.acceptor.join();
    }
    {
        std::lock_guard lock(s.mutex);
        s.stopping = true;
    }
    s.ready.notify_all();
    for (std::thread& t : s.pool) t.join();
    s.pool.clear();
    for (int fd : s.queued) ::close(fd);
    s.queued.clear();
    s.unlink_socket();
    s.unix_ino = 0;
    s.close_fds();
}

std::optional<SocketAddress> AdminServer::tcp_address() const {
    return impl_->tcp_bound;
}

}  // namespace stickyd
