#include "admin/server.hpp"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "admin/http.hpp"
#include "stickyd/log.hpp"

namespace stickyd {
namespace {

using Clock = std::chrono::steady_clock;

// Clients connect in bursts (a scrape, a script's loop); the acceptor keeps up, but
// a short backlog turns a burst into SYN retries of a second or more.
constexpr int kBacklog = 1024;

std::string errno_text(int err) {
    return std::strerror(err);
}

// Each listener is a kind with budgets of its own, so a scrape storm on the metrics
// address cannot take the unix socket's or the admin address's places.
enum class Kind : uint8_t { unix_socket = 0, tcp = 1, metrics = 2 };
constexpr size_t kKinds = 3;

std::string_view kind_name(Kind kind) {
    switch (kind) {
        case Kind::unix_socket:
            return "unix socket";
        case Kind::tcp:
            return "TCP";
        case Kind::metrics:
            return "metrics address";
    }
    return "?";
}

AdminAccess access_of(Kind kind) {
    return kind == Kind::metrics ? AdminAccess::read_only : AdminAccess::full;
}

// reading: waiting for the whole head (and body); answering: a pool thread has it; closing:
// writing the answer, then (write side shut) dropping what the client still sends.
enum class Phase : uint8_t { reading, answering, closing };

struct Conn {
    int fd = -1;
    Kind kind = Kind::unix_socket;
    std::string source;  // TCP kinds: the client's IP; what the per-source budget counts
    Phase phase = Phase::reading;
    bool budgeted = false;  // counted in its listener's (and source's) budget
    std::string in;
    std::string out;
    size_t sent = 0;
    bool shut = false;  // SHUT_WR done: the answer is out
    size_t drained = 0;
    Clock::time_point deadline;
};

struct Job {
    uint64_t id;
    Kind kind = Kind::unix_socket;
    std::string request;  // the head and its body
};

struct Done {
    uint64_t id;
    std::string response;
};

// At most this much of what a client sends after its answer is read and dropped.
constexpr size_t kMaxDrain = 8 * 1024 * 1024;

}  // namespace

struct AdminServer::Impl {
    AdminSource& source;
    AdminOptions options;
    HttpLimits limits;
    int unix_fd = -1;
    int tcp_fd = -1;
    int metrics_fd = -1;
    int wake_fd = -1;
    dev_t unix_dev = 0;
    ino_t unix_ino = 0;
    std::optional<SocketAddress> tcp_bound;
    std::optional<SocketAddress> metrics_bound;

    // Shared by the I/O thread and the pool.
    std::mutex mutex;
    std::condition_variable ready;
    std::array<std::deque<Job>, kKinds> jobs;
    size_t next_kind = 0;
    std::vector<Done> done;
    bool stopping = false;
    std::thread io;
    std::vector<std::thread> pool;

    // The I/O thread's own.
    std::map<uint64_t, Conn> conns;  // by id: ascending ids are oldest first
    uint64_t next_id = 1;
    std::array<size_t, kKinds> open{};  // reading or answering, per listener
    std::array<std::map<std::string, size_t>, kKinds> per_source;  // per listener
    size_t closing = 0;
    Clock::time_point accept_paused_until{};
    uint64_t busy_count = 0;
    Clock::time_point busy_logged{};

    Impl(AdminSource& s, AdminOptions o) : source(s), options(std::move(o)) {
        limits.max_head = options.max_head;
        limits.max_body = options.max_body;
    }

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
        if (options.unix_group &&
            ::chown(options.unix_path.c_str(), static_cast<uid_t>(-1), *options.unix_group) != 0) {
            const int err = errno;
            ::unlink(options.unix_path.c_str());
            throw unix_error(fmt::format(
                "cannot give it to group {}: {}{}", *options.unix_group, errno_text(err),
                err == EPERM ? " (the daemon must be a member: SupplementaryGroups= in the unit)"
                             : ""));
        }
        if (::chmod(options.unix_path.c_str(), options.unix_mode) != 0 ||
            ::stat(options.unix_path.c_str(), &st) != 0) {
            const int err = errno;
            ::unlink(options.unix_path.c_str());
            throw unix_error(
                fmt::format("cannot set mode {:04o}: {}", options.unix_mode, errno_text(err)));
        }
        unix_dev = st.st_dev;
        unix_ino = st.st_ino;
        if (::listen(unix_fd, kBacklog) != 0)
            throw unix_error(fmt::format("listen: {}", errno_text(errno)));
    }

    // `fd` is set as soon as the socket exists, so close_fds() cleans up a failure.
    static void open_tcp(const SocketAddress& address, std::string_view what, int& fd,
                         std::optional<SocketAddress>& bound_to) {
        auto fail = [&](std::string_view step) {
            return std::runtime_error(
                fmt::format("{} {}: {}: {}", what, address.to_string(), step, errno_text(errno)));
        };
        fd = ::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) throw fail("socket");
        const int one = 1;
        ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (::bind(fd, address.sa(), address.len()) != 0) throw fail("cannot bind");
        if (::listen(fd, kBacklog) != 0) throw fail("listen");
        sockaddr_storage bound{};
        socklen_t len = sizeof bound;
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
        bound_to = SocketAddress::from_sockaddr(reinterpret_cast<sockaddr*>(&bound), len);
    }

    void close_fds() {
        for (int* fd : {&unix_fd, &tcp_fd, &metrics_fd, &wake_fd}) {
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

    // ---------------------------------------------------------------------------
    // The I/O thread.

    void io_loop() {
        std::vector<pollfd> fds;
        std::vector<uint64_t> ids;  // per entry of fds past the wake fd and the listeners
        for (;;) {
            build_poll_set(fds, ids);
            const int rc = ::poll(fds.data(), fds.size(), poll_timeout());
            if (rc < 0 && errno != EINTR) {
                log::error("admin endpoint: poll: {}", errno_text(errno));
                return;
            }
            if (rc > 0 && fds[0].revents != 0) {
                eventfd_t ignored;
                eventfd_read(wake_fd, &ignored);
                if (take_done()) return;
            }
            for (size_t i = 1; i <= kKinds; ++i) {
                if (fds[i].fd >= 0 && fds[i].revents != 0) accept_all(fds[i].fd, Kind(i - 1));
            }
            for (size_t i = kKinds + 1; i < fds.size(); ++i) {
                if (rc > 0 && fds[i].revents != 0) on_event(ids[i - kKinds - 1]);
            }
            expire(Clock::now());
        }
    }

    void build_poll_set(std::vector<pollfd>& fds, std::vector<uint64_t>& ids) const {
        const bool paused = Clock::now() < accept_paused_until;
        // In Kind order after the wake fd: io_loop maps entry i to Kind(i - 1).
        fds.assign({{wake_fd, POLLIN, 0},
                    {paused ? -1 : unix_fd, POLLIN, 0},
                    {paused ? -1 : tcp_fd, POLLIN, 0},
                    {paused ? -1 : metrics_fd, POLLIN, 0}});
        ids.clear();
        for (const auto& [id, c] : conns) {
            if (c.phase == Phase::answering) continue;
            const bool writing = c.phase == Phase::closing && !c.shut;
            fds.push_back({c.fd, static_cast<short>(writing ? POLLOUT : POLLIN), 0});
            ids.push_back(id);
        }
    }

    int poll_timeout() const {
        Clock::time_point next = Clock::time_point::max();
        for (const auto& [id, c] : conns) {
            if (c.phase != Phase::answering) next = std::min(next, c.deadline);
        }
        const Clock::time_point now = Clock::now();
        if (accept_paused_until > now) next = std::min(next, accept_paused_until);
        if (next == Clock::time_point::max()) return -1;
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(next - now);
        return static_cast<int>(std::clamp<int64_t>(left.count() + 1, 0, 60'000));
    }

    // Hands finished answers to their connections; true when stopping.
    bool take_done() {
        std::vector<Done> finished;
        {
            std::lock_guard lock(mutex);
            if (stopping) return true;
            finished.swap(done);
        }
        for (Done& d : finished) {
            auto it = conns.find(d.id);
            if (it != conns.end() && it->second.phase == Phase::answering) {
                start_closing(d.id, it->second, std::move(d.response));
            }
        }
        return false;
    }

    void accept_all(int listen_fd, Kind kind) {
        // Bounded, so one busy listener cannot keep the loop from everything else.
        for (int i = 0; i < 64; ++i) {
            sockaddr_storage peer{};
            socklen_t len = sizeof peer;
            const int fd = ::accept4(listen_fd, reinterpret_cast<sockaddr*>(&peer), &len,
                                     SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (fd < 0) {
                if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED) return;
                // EMFILE and the like: back off rather than spin on a ready socket.
                log::warn("admin endpoint: accept: {}", errno_text(errno));
                accept_paused_until = Clock::now() + std::chrono::milliseconds(100);
                return;
            }
            std::string source_ip;
            if (kind != Kind::unix_socket)
                source_ip = to_string(ip_key_of(reinterpret_cast<sockaddr*>(&peer)));
            admit(fd, kind, std::move(source_ip));
        }
    }

    // A newcomer over a budget makes room by evicting the connection of that budget
    // that has waited longest for its head: a slow client loses its place to a
    // prompt one, never the other way round.
    void admit(int fd, Kind kind, std::string source_ip) {
        auto& sources = per_source[static_cast<size_t>(kind)];
        const auto counted = sources.find(source_ip);
        const bool source_full = kind != Kind::unix_socket && counted != sources.end() &&
                                 counted->second >= options.max_per_source;
        const bool kind_full = open[static_cast<size_t>(kind)] >= options.max_connections;
        if (source_full || kind_full) {
            const std::optional<uint64_t> victim =
                oldest_reading(kind, source_full ? &source_ip : nullptr);
            if (!victim) return refuse(fd, kind);
            note_busy(kind);
            start_closing(*victim, conns.at(*victim), busy_response());
        }
        const uint64_t id = next_id++;
        Conn& c = conns[id];
        c.fd = fd;
        c.kind = kind;
        c.source = std::move(source_ip);
        c.deadline = Clock::now() + options.io_timeout;
        c.budgeted = true;
        ++open[static_cast<size_t>(kind)];
        if (kind != Kind::unix_socket) ++sources[c.source];
        on_readable(id, c);  // the request often arrived with the connection
    }

    std::optional<uint64_t> oldest_reading(Kind kind, const std::string* source_ip) const {
        for (const auto& [id, c] : conns) {
            if (c.phase == Phase::reading && c.kind == kind &&
                (source_ip == nullptr || c.source == *source_ip)) {
                return id;
            }
        }
        return std::nullopt;
    }

    // Every budgeted connection is being answered: the newcomer gets the 503, after
    // which it is drained like any answered connection.
    void refuse(int fd, Kind kind) {
        note_busy(kind);
        const uint64_t id = next_id++;
        Conn& c = conns[id];
        c.fd = fd;
        c.kind = kind;
        start_closing(id, c, busy_response());
    }

    static std::string busy_response() {
        return error_response(503, "admin endpoint busy (too many open connections); try again");
    }

    void note_busy(Kind kind) {
        ++busy_count;
        const Clock::time_point now = Clock::now();
        if (now - busy_logged < std::chrono::seconds(10)) return;
        log::warn(
            "admin endpoint: {} too busy, {} connection(s) answered 503 so far (at most {} "
            "open per listener, {} per client IP on each TCP address)",
            kind_name(kind), busy_count, options.max_connections, options.max_per_source);
        busy_logged = now;
    }

    void on_event(uint64_t id) {
        auto it = conns.find(id);
        if (it == conns.end()) return;
        Conn& c = it->second;
        if (c.phase == Phase::reading) return on_readable(id, c);
        if (c.phase == Phase::closing && !c.shut) return write_some(id, c);
        if (c.phase == Phase::closing) return drain(id, c);
    }

    void on_readable(uint64_t id, Conn& c) {
        char buffer[4096];
        for (;;) {
            const ssize_t n = ::recv(c.fd, buffer, sizeof buffer, 0);
            if (n > 0) {
                c.in.append(buffer, static_cast<size_t>(n));
                if (c.in.size() >= options.max_head + options.max_body + sizeof buffer) break;
                continue;
            }
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
            if (n < 0 || c.in.empty()) return close_now(id);
            // EOF: a client that half-closed after a truncated request gets told.
            return start_closing(id, c, error_response(400, "incomplete HTTP request"));
        }
        const HeadScan scan = scan_request(c.in, limits);
        if (scan.state == HeadScan::State::rejected) {
            return start_closing(id, c, error_response(scan.status, scan.message));
        }
        if (scan.state == HeadScan::State::complete) {
            c.phase = Phase::answering;
            c.in.resize(scan.head_size + scan.body_size);
            submit(id, c.kind, std::move(c.in));
            c.in.clear();
        }
    }

    void submit(uint64_t id, Kind kind, std::string request) {
        {
            std::lock_guard lock(mutex);
            jobs[static_cast<size_t>(kind)].push_back({id, kind, std::move(request)});
        }
        ready.notify_one();
    }

    // Leaves the budgets, and writes `response` then drains; bounded in number.
    void start_closing(uint64_t id, Conn& c, std::string response) {
        release_budget(c);
        if (c.phase != Phase::closing) ++closing;
        c.phase = Phase::closing;
        c.out = std::move(response);
        c.sent = 0;
        c.deadline = Clock::now() + options.io_timeout;
        if (closing > options.max_closing) close_oldest_closing(id);
        write_some(id, c);
    }

    void release_budget(Conn& c) {
        if (!c.budgeted) return;
        c.budgeted = false;
        --open[static_cast<size_t>(c.kind)];
        if (c.kind != Kind::unix_socket) {
            auto& sources = per_source[static_cast<size_t>(c.kind)];
            auto it = sources.find(c.source);
            if (it != sources.end() && --it->second == 0) sources.erase(it);
        }
    }

    void close_oldest_closing(uint64_t keep) {
        for (auto& [id, c] : conns) {
            if (c.phase == Phase::closing && id != keep) {
                drain_once(c);
                return close_now(id);
            }
        }
    }

    void write_some(uint64_t id, Conn& c) {
        while (c.sent < c.out.size()) {
            const ssize_t n = ::send(c.fd, c.out.data() + c.sent, c.out.size() - c.sent,
                                     MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n > 0) {
                c.sent += static_cast<size_t>(n);
                c.deadline = Clock::now() + options.io_timeout;
            } else if (n < 0 && errno == EINTR) {
                continue;
            } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                return;
            } else {
                return close_now(id);
            }
        }
        // All out: the FIN follows the answer; reading on keeps the close from
        // becoming a reset that would destroy the answer in flight.
        ::shutdown(c.fd, SHUT_WR);
        c.shut = true;
        c.out.clear();
        c.deadline = Clock::now() + options.linger;
        drain(id, c);
    }

    void drain(uint64_t id, Conn& c) {
        const int rc = drain_once(c);
        if (rc <= 0 || c.drained >= kMaxDrain) close_now(id);
    }

    // Reads and drops what is there: 1 while more may come, 0 at EOF, -1 on error.
    static int drain_once(Conn& c) {
        char buffer[16384];
        for (;;) {
            const ssize_t n = ::recv(c.fd, buffer, sizeof buffer, MSG_DONTWAIT);
            if (n > 0) {
                c.drained += static_cast<size_t>(n);
                if (c.drained >= kMaxDrain) return 1;
                continue;
            }
            if (n == 0) return 0;
            if (errno == EINTR) continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 1 : -1;
        }
    }

    void close_now(uint64_t id) {
        auto it = conns.find(id);
        if (it == conns.end()) return;
        Conn& c = it->second;
        if (c.phase == Phase::closing) --closing;
        release_budget(c);
        ::close(c.fd);
        conns.erase(it);
    }

    void expire(Clock::time_point now) {
        std::vector<uint64_t> due;
        for (const auto& [id, c] : conns) {
            if (c.phase != Phase::answering && c.deadline <= now) due.push_back(id);
        }
        for (uint64_t id : due) {
            auto it = conns.find(id);  // an earlier one may have made room by closing it
            if (it == conns.end()) continue;
            Conn& c = it->second;
            if (c.phase == Phase::reading && !c.in.empty()) {
                start_closing(id, c,
                              error_response(408, fmt::format("request not complete within {} ms",
                                                              options.io_timeout.count())));
            } else {
                // Silent, lingered long enough, or a reader too slow to take its answer.
                if (c.phase == Phase::closing) drain_once(c);
                close_now(id);
            }
        }
    }

    // ---------------------------------------------------------------------------
    // The pool: answers complete heads, each listener's in turn.

    bool any_job() const {
        return std::any_of(jobs.begin(), jobs.end(), [](const auto& q) { return !q.empty(); });
    }

    void pool_loop() {
        for (;;) {
            Job job;
            {
                std::unique_lock lock(mutex);
                ready.wait(lock, [&] { return stopping || any_job(); });
                if (stopping) return;
                while (jobs[next_kind].empty()) next_kind = (next_kind + 1) % kKinds;
                job = std::move(jobs[next_kind].front());
                jobs[next_kind].pop_front();
                next_kind = (next_kind + 1) % kKinds;
            }
            std::string response = answer(job.request, source, limits, access_of(job.kind));
            {
                std::lock_guard lock(mutex);
                done.push_back({job.id, std::move(response)});
            }
            eventfd_write(wake_fd, 1);
        }
    }

    void close_connections() {
        for (auto& [id, c] : conns) ::close(c.fd);
        conns.clear();
        open = {};
        for (auto& sources : per_source) sources.clear();
        closing = 0;
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
        if (s.options.tcp) Impl::open_tcp(*s.options.tcp, "admin address", s.tcp_fd, s.tcp_bound);
        if (s.options.metrics) {
            Impl::open_tcp(*s.options.metrics, "metrics address", s.metrics_fd, s.metrics_bound);
        }
    } catch (...) {
        s.close_fds();
        s.unlink_socket();
        s.unix_ino = 0;
        throw;
    }
    s.stopping = false;
    s.io = std::thread([&s] {
        pthread_setname_np(pthread_self(), "admin-io");
        s.io_loop();
    });
    for (unsigned i = 0; i < std::max(1U, s.options.threads); ++i) {
        s.pool.emplace_back([&s] {
            pthread_setname_np(pthread_self(), "admin");
            s.pool_loop();
        });
    }
    if (!s.options.unix_path.empty()) log::info("admin endpoint on unix:{}", s.options.unix_path);
    if (s.tcp_bound) log::info("admin endpoint on http://{}", s.tcp_bound->to_string());
    if (s.metrics_bound) {
        log::info("metrics endpoint (read-only: /metrics, /status, /ready) on http://{}",
                  s.metrics_bound->to_string());
    }
}

void AdminServer::stop() {
    Impl& s = *impl_;
    {
        std::lock_guard lock(s.mutex);
        s.stopping = true;
    }
    s.ready.notify_all();
    if (s.io.joinable()) {
        eventfd_write(s.wake_fd, 1);
        s.io.join();
    }
    for (std::thread& t : s.pool) t.join();
    s.pool.clear();
    for (auto& queue : s.jobs) queue.clear();
    s.done.clear();
    s.close_connections();
    s.unlink_socket();
    s.unix_ino = 0;
    s.close_fds();
}

std::optional<SocketAddress> AdminServer::tcp_address() const {
    return impl_->tcp_bound;
}

std::optional<SocketAddress> AdminServer::metrics_address() const {
    return impl_->metrics_bound;
}

}  // namespace stickyd
