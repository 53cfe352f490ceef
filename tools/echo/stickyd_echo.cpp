// stickyd-echo: the demo, test and benchmark backend. It plays a "hostname" service.
//
// Each connection's first bytes decide what it is:
//
//   HTTP/1.x (first bytes are a method and a space: "GET ", "HEAD ", "POST ", ...)
//     GET|HEAD /hostname          200, body = NAME and a newline (so curl output ends
//                                 cleanly, as users of HAProxy and nginx demos expect)
//     GET|HEAD /                  200, body = NAME\n (for health checks)
//     GET|HEAD /status/NNN        status NNN (200..599), body = NAME\n (none for 204, 304)
//     any other path              404;  other methods on the paths above: 405
//     HTTP/1.1 keeps the connection unless "Connection: close"; HTTP/1.0 closes unless
//     "Connection: keep-alive". Pipelined requests are answered in order. Request
//     bodies with Content-Length are read and discarded; chunked bodies get 501.
//
//   Test control ("STICKYD-TEST <command>\n" as the first line)
//     WHOAMI                reply "NAME PEER-IP\n", then echo as in raw mode
//     SINK-THEN-REPLY <n>   discard everything until the client's EOF, then send n
//                           bytes of pattern data and shut down the write side
//     HOLD                  say nothing, discard input, close on the client's EOF
//     anything else         reply "ERR <reason>\n" and close
//     Pattern data: the little-endian uint64 words w(i) = i * 0x9E3779B97F4A7C15
//     (mod 2^64) for i = 0, 1, 2, ..., cut to n bytes. Every 8-byte word differs, so
//     lost, repeated or reordered data changes the SHA-256 the test computes.
//
//   Raw TCP echo (anything else)
//     Every byte is echoed back. After the client's EOF the rest is echoed, then the
//     write side is shut down, so a half-close is visible end to end.
//     A first chunk that is only the start of a method or of "STICKYD-TEST " (say a
//     lone "G") waits up to 200 ms for more bytes, then is echoed as raw data.
//
// Design: one epoll loop per thread (--threads, default 1), non-blocking sockets,
// level-triggered. The listening sockets are shared by all threads (EPOLLEXCLUSIVE).
// Each connection owns at most two 64 KiB blocks (input, output), taken from a
// per-thread pool only while data is pending, so thousands of idle connections cost
// almost nothing. A connection stops reading while its output is full: no unbounded
// buffering. SIGTERM or SIGINT closes the listeners and all connections and exits 0.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/core.h>
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_set>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr size_t kBlockSize = 64 * 1024;
constexpr size_t kMaxHeaderBytes = 16 * 1024;        // larger request heads get 431
constexpr size_t kOutputHighWater = kBlockSize / 2;  // stop parsing requests above this
constexpr size_t kMaxControlLine = 256;
constexpr auto kDetectWait = 200ms;  // for a first chunk that could still become HTTP
constexpr auto kLingerWait = 2s;     // after "Connection: close": drain input, then close
constexpr uint64_t kPatternMultiplier = 0x9E3779B97F4A7C15ULL;
constexpr std::string_view kControlPrefix = "STICKYD-TEST ";
constexpr std::string_view kHttpMethods[] = {"GET ",     "HEAD ",  "POST ",    "PUT ",  "DELETE ",
                                             "OPTIONS ", "PATCH ", "CONNECT ", "TRACE "};

void fail(const std::string& message) {
    fmt::print(stderr, "stickyd-echo: {}\n", message);
    std::exit(1);
}

// ---------------------------------------------------------------------------------
// Addresses

struct Endpoint {
    sockaddr_storage storage{};
    socklen_t length = 0;
    const sockaddr* addr() const { return reinterpret_cast<const sockaddr*>(&storage); }
};

std::optional<Endpoint> parse_endpoint(std::string_view text) {
    std::string host;
    std::string_view port_text;
    if (text.starts_with('[')) {
        auto close = text.find("]:");
        if (close == std::string_view::npos) return std::nullopt;
        host = std::string(text.substr(1, close - 1));
        port_text = text.substr(close + 2);
    } else {
        auto colon = text.rfind(':');
        if (colon == std::string_view::npos) return std::nullopt;
        host = std::string(text.substr(0, colon));
        port_text = text.substr(colon + 1);
    }
    unsigned port = 0;
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc() || end != port_text.data() + port_text.size() || port > 65535 ||
        port_text.empty()) {
        return std::nullopt;
    }
    Endpoint ep;
    auto* v4 = reinterpret_cast<sockaddr_in*>(&ep.storage);
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&ep.storage);
    if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1 && !text.starts_with('[')) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(static_cast<uint16_t>(port));
        ep.length = sizeof(sockaddr_in);
    } else if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1 && text.starts_with('[')) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(static_cast<uint16_t>(port));
        ep.length = sizeof(sockaddr_in6);
    } else {
        return std::nullopt;
    }
    return ep;
}

std::string ip_text(const sockaddr_storage& storage) {
    char text[INET6_ADDRSTRLEN] = {};
    if (storage.ss_family == AF_INET) {
        inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(storage).sin_addr, text,
                  sizeof text);
    } else if (storage.ss_family == AF_INET6) {
        inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6&>(storage).sin6_addr, text,
                  sizeof text);
    }
    return text;
}

uint16_t port_of(const sockaddr_storage& storage) {
    if (storage.ss_family == AF_INET) {
        return ntohs(reinterpret_cast<const sockaddr_in&>(storage).sin_port);
    }
    return ntohs(reinterpret_cast<const sockaddr_in6&>(storage).sin6_port);
}

std::string endpoint_text(const sockaddr_storage& storage) {
    if (storage.ss_family == AF_INET6)
        return fmt::format("[{}]:{}", ip_text(storage), port_of(storage));
    return fmt::format("{}:{}", ip_text(storage), port_of(storage));
}

// Binds and listens; returns the fd and the bound address (port 0 becomes the real port).
std::pair<int, std::string> listen_socket(const std::string& text) {
    auto ep = parse_endpoint(text);
    if (!ep)
        fail(fmt::format("--listen '{}': expected ip:port such as 127.0.0.1:9001 or [::1]:9001",
                         text));
    int fd = socket(ep->storage.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) fail(fmt::format("socket for {}: {}", text, strerror(errno)));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ep->storage.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, ep->addr(), ep->length) != 0) {
        fail(fmt::format("cannot listen on {}: {}", text, strerror(errno)));
    }
    if (listen(fd, 4096) != 0) fail(fmt::format("listen on {}: {}", text, strerror(errno)));
    sockaddr_storage bound{};
    socklen_t length = sizeof bound;
    getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &length);
    return {fd, endpoint_text(bound)};
}

// ---------------------------------------------------------------------------------
// Buffers: a byte queue in one 64 KiB block that exists only while it holds data.

class BlockPool {
  public:
    std::unique_ptr<char[]> get() {
        if (free_.empty()) return std::make_unique<char[]>(kBlockSize);
        auto block = std::move(free_.back());
        free_.pop_back();
        return block;
    }
    void put(std::unique_ptr<char[]> block) {
        if (block && free_.size() < 256) free_.push_back(std::move(block));
    }

  private:
    std::vector<std::unique_ptr<char[]>> free_;
};

class Buffer {
  public:
    size_t size() const { return tail_ - head_; }
    bool empty() const { return head_ == tail_; }
    bool full() const { return size() == kBlockSize; }
    size_t room() const { return kBlockSize - size(); }
    std::string_view view() const { return {block_.get() + head_, size()}; }

    // Free space for the next read, at the end of the block.
    std::pair<char*, size_t> prepare(BlockPool& pool) {
        if (!block_) block_ = pool.get();
        if (head_ > 0 && kBlockSize - tail_ < kBlockSize / 4) {
            std::memmove(block_.get(), block_.get() + head_, size());
            tail_ -= head_;
            head_ = 0;
        }
        return {block_.get() + tail_, kBlockSize - tail_};
    }
    void commit(size_t n) { tail_ += n; }

    bool append(std::string_view bytes, BlockPool& pool) {
        if (bytes.size() > room()) return false;
        auto [space, length] = prepare(pool);
        if (length < bytes.size()) {  // room exists, but not at the end: compact fully
            std::memmove(block_.get(), block_.get() + head_, size());
            tail_ -= head_;
            head_ = 0;
            space = block_.get() + tail_;
        }
        std::memcpy(space, bytes.data(), bytes.size());
        tail_ += bytes.size();
        return true;
    }

    void consume(size_t n, BlockPool& pool) {
        head_ += n;
        if (head_ == tail_) {
            head_ = tail_ = 0;
            release(pool);
        }
    }
    void release(BlockPool& pool) {
        if (empty()) pool.put(std::move(block_));
    }
    void clear(BlockPool& pool) {
        head_ = tail_ = 0;
        pool.put(std::move(block_));
    }

  private:
    std::unique_ptr<char[]> block_;
    size_t head_ = 0;
    size_t tail_ = 0;
};

// ---------------------------------------------------------------------------------
// HTTP helpers

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) ==
                      std::tolower(static_cast<unsigned char>(y));
           });
}

bool icontains(std::string_view haystack, std::string_view needle) {
    for (size_t i = 0; i + needle.size() <= haystack.size(); ++i) {
        if (iequals(haystack.substr(i, needle.size()), needle)) return true;
    }
    return false;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
        s.remove_suffix(1);
    return s;
}

std::string_view reason_phrase(int status) {
    switch (status) {
        case 200:
            return "OK";
        case 201:
            return "Created";
        case 202:
            return "Accepted";
        case 204:
            return "No Content";
        case 301:
            return "Moved Permanently";
        case 302:
            return "Found";
        case 304:
            return "Not Modified";
        case 400:
            return "Bad Request";
        case 403:
            return "Forbidden";
        case 404:
            return "Not Found";
        case 405:
            return "Method Not Allowed";
        case 431:
            return "Request Header Fields Too Large";
        case 500:
            return "Internal Server Error";
        case 501:
            return "Not Implemented";
        case 502:
            return "Bad Gateway";
        case 503:
            return "Service Unavailable";
        case 504:
            return "Gateway Timeout";
        default:
            return "Status";
    }
}

struct Request {
    std::string_view method;
    std::string_view target;
    bool http10 = false;
    bool keep_alive = true;
    bool chunked = false;
    uint64_t content_length = 0;
    bool bad = false;
};

// Parses one request head (request line and headers, without the blank line).
Request parse_request(std::string_view head) {
    Request req;
    auto line_end = head.find('\n');
    std::string_view line = trim(head.substr(0, line_end));
    auto sp1 = line.find(' ');
    auto sp2 = line.rfind(' ');
    if (sp1 == std::string_view::npos || sp2 == sp1) {
        req.bad = true;
        return req;
    }
    req.method = line.substr(0, sp1);
    req.target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    std::string_view version = line.substr(sp2 + 1);
    if (version == "HTTP/1.0") {
        req.http10 = true;
        req.keep_alive = false;
    } else if (version != "HTTP/1.1") {
        req.bad = true;
        return req;
    }
    while (line_end != std::string_view::npos) {
        head.remove_prefix(line_end + 1);
        line_end = head.find('\n');
        std::string_view header = trim(head.substr(0, line_end));
        auto colon = header.find(':');
        if (colon == std::string_view::npos) continue;
        std::string_view name = trim(header.substr(0, colon));
        std::string_view value = trim(header.substr(colon + 1));
        if (iequals(name, "connection")) {
            if (icontains(value, "close")) req.keep_alive = false;
            if (icontains(value, "keep-alive")) req.keep_alive = true;
        } else if (iequals(name, "content-length")) {
            auto [end, ec] =
                std::from_chars(value.data(), value.data() + value.size(), req.content_length);
            if (ec != std::errc() || end != value.data() + value.size()) req.bad = true;
        } else if (iequals(name, "transfer-encoding")) {
            req.chunked = true;
        }
    }
    return req;
}

// ---------------------------------------------------------------------------------
// Connections and the per-thread event loop

struct Pollable {
    enum class Kind { listener, wakeup, connection } kind;
    explicit Pollable(Kind k) : kind(k) {}
};

struct Listener : Pollable {
    int fd;
    explicit Listener(int f) : Pollable(Kind::listener), fd(f) {}
};

enum class Mode {
    detect,  // waiting for enough bytes to tell HTTP, control and raw apart
    http,
    echo,
    sink,  // SINK-THEN-REPLY
    hold,
    linger,  // said its last words: send `out`, shut the write side, drain input
};

struct EchoSession : Pollable {
    explicit EchoSession(int f, std::string peer)
        : Pollable(Kind::connection), fd(f), peer_ip(std::move(peer)) {}

    int fd;
    std::string peer_ip;
    Mode mode = Mode::detect;
    Buffer in;                        // received and not yet handled (echo mode: not yet sent)
    Buffer out;                       // to send (sent before `in` in echo mode)
    bool peer_eof = false;            // the client shut down its write side
    bool close_after_output = false;  // HTTP: answered a request that ends the connection
    bool write_shut = false;          // linger: shutdown(SHUT_WR) done
    uint64_t body_left = 0;           // HTTP: request body bytes still to discard
    uint64_t pattern_next = 0;        // SINK-THEN-REPLY: offset of the next pattern byte
    uint64_t pattern_end = 0;
    uint32_t registered = 0;  // epoll events currently registered
    std::optional<std::multimap<Clock::time_point, EchoSession*>::iterator> timer;
};

class EchoLoop {
  public:
    EchoLoop(std::string name, const std::vector<int>& listeners)
        : name_(std::move(name)), body_(name_ + "\n") {
        epoll_ = epoll_create1(EPOLL_CLOEXEC);
        wakeup_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (epoll_ < 0 || wakeup_fd_ < 0) fail(fmt::format("epoll/eventfd: {}", strerror(errno)));
        add(wakeup_fd_, EPOLLIN, &wakeup_);
        for (int fd : listeners) {
            listeners_.push_back(std::make_unique<Listener>(fd));
            add(fd, EPOLLIN | EPOLLEXCLUSIVE, listeners_.back().get());
        }
        spare_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }

    ~EchoLoop() {
        for (EchoSession* c : connections_) {
            ::close(c->fd);
            delete c;
        }
        ::close(epoll_);
        ::close(wakeup_fd_);
        if (spare_fd_ >= 0) ::close(spare_fd_);
    }

    void stop() {
        uint64_t one = 1;
        [[maybe_unused]] auto n = write(wakeup_fd_, &one, sizeof one);
    }

    void run() {
        epoll_event events[256];
        while (!stopping_) {
            int n = epoll_wait(epoll_, events, 256, next_timeout_ms());
            if (n < 0 && errno != EINTR) fail(fmt::format("epoll_wait: {}", strerror(errno)));
            for (int i = 0; i < n; ++i) {
                auto* p = static_cast<Pollable*>(events[i].data.ptr);
                switch (p->kind) {
                    case Pollable::Kind::listener:
                        accept_all(static_cast<Listener*>(p)->fd);
                        break;
                    case Pollable::Kind::wakeup:
                        stopping_ = true;
                        break;
                    case Pollable::Kind::connection:
                        on_ready(*static_cast<EchoSession*>(p), events[i].events);
                        break;
                }
            }
            run_timers();
        }
    }

  private:
    void add(int fd, uint32_t events, Pollable* p) {
        epoll_event ev{};
        ev.events = events;
        ev.data.ptr = p;
        if (epoll_ctl(epoll_, EPOLL_CTL_ADD, fd, &ev) != 0) {
            fail(fmt::format("epoll_ctl: {}", strerror(errno)));
        }
    }

    void accept_all(int listen_fd) {
        for (int i = 0; i < 64; ++i) {
            sockaddr_storage peer{};
            socklen_t length = sizeof peer;
            int fd = accept4(listen_fd, reinterpret_cast<sockaddr*>(&peer), &length,
                             SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                if ((errno == EMFILE || errno == ENFILE) && spare_fd_ >= 0) {
                    // Out of descriptors: accept and drop one, so the listener does not
                    // stay readable and spin this loop at 100% CPU.
                    ::close(spare_fd_);
                    int dropped = accept(listen_fd, nullptr, nullptr);
                    if (dropped >= 0) ::close(dropped);
                    spare_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
                    fmt::print(stderr,
                               "stickyd-echo: out of file descriptors; dropped a connection\n");
                }
                return;  // EAGAIN, or another thread took it, or a transient error
            }
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            auto* c = new EchoSession(fd, ip_text(peer));
            connections_.insert(c);
            c->registered = EPOLLIN | EPOLLRDHUP;
            add(fd, c->registered, c);
        }
    }

    // --- the per-connection state machine --------------------------------------

    void on_ready(EchoSession& c, uint32_t events) {
        if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) && wants_read(c)) {
            if (!receive(c)) return close(c);
        }
        step(c);
    }

    // Reads once. False on a connection error (the connection must be closed).
    bool receive(EchoSession& c) {
        auto [space, length] = c.in.prepare(pool_);
        ssize_t n = recv(c.fd, space, length, 0);
        if (n > 0) {
            c.in.commit(static_cast<size_t>(n));
            return true;
        }
        c.in.release(pool_);
        if (n == 0) {
            c.peer_eof = true;
            return true;
        }
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    }

    // Handles what has arrived, sends what it can, and decides what to wait for next.
    void step(EchoSession& c) {
        if (c.mode == Mode::detect) detect(c);
        switch (c.mode) {
            case Mode::detect:
                break;
            case Mode::http:
                serve_http(c);
                break;
            case Mode::echo:
                break;  // `in` is sent as it is
            case Mode::sink:
            case Mode::hold:
            case Mode::linger:
                c.in.clear(pool_);
                break;
        }
        if (!send_pending(c)) return close(c);

        switch (c.mode) {
            case Mode::detect:
                break;
            case Mode::http:
                if (c.close_after_output && c.out.empty()) {
                    c.mode = Mode::linger;
                } else if (c.peer_eof && c.out.empty()) {
                    return close(c);
                }
                break;
            case Mode::echo:
            case Mode::sink:
                if (c.peer_eof && c.out.empty() && c.in.empty() &&
                    c.pattern_next == c.pattern_end) {
                    shutdown(c.fd, SHUT_WR);
                    return close(c);
                }
                break;
            case Mode::hold:
                if (c.peer_eof) return close(c);
                break;
            case Mode::linger:
                break;
        }
        if (c.mode == Mode::linger && c.out.empty()) {
            // Our last words are sent: shut our side, then read until the client closes.
            // Closing with unread input would reset the connection and could destroy
            // the response on its way.
            if (!c.write_shut) {
                shutdown(c.fd, SHUT_WR);
                c.write_shut = true;
                c.in.clear(pool_);
                set_timer(c, Clock::now() + kLingerWait);
            }
            if (c.peer_eof) return close(c);
        }
        update_interest(c);
    }

    void detect(EchoSession& c) {
        std::string_view data = c.in.view();
        if (data.empty()) {
            if (c.peer_eof) c.mode = Mode::echo;  // nothing to echo; just shut down
            return;
        }
        bool could_grow = false;
        for (std::string_view method : kHttpMethods) {
            if (data.starts_with(method)) return become(c, Mode::http);
            could_grow |= method.starts_with(data);
        }
        if (data.starts_with(kControlPrefix)) {
            auto newline = data.find('\n');
            if (newline != std::string_view::npos) return control(c, data.substr(0, newline + 1));
            if (data.size() > kMaxControlLine || c.peer_eof)
                return refuse(c, "control line too long or cut short");
            return;  // wait for the rest of the line
        }
        could_grow |= kControlPrefix.starts_with(data);
        if (!could_grow || c.peer_eof) return become(c, Mode::echo);
        if (!c.timer) set_timer(c, Clock::now() + kDetectWait);
    }

    void become(EchoSession& c, Mode mode) {
        cancel_timer(c);
        c.mode = mode;
    }

    void control(EchoSession& c, std::string_view line) {
        size_t line_size = line.size();
        std::string_view command = trim(line.substr(kControlPrefix.size()));
        if (command.ends_with('\n')) command.remove_suffix(1);
        command = trim(command);
        if (command == "WHOAMI") {
            c.in.consume(line_size, pool_);
            c.out.append(fmt::format("{} {}\n", name_, c.peer_ip), pool_);
            return become(c, Mode::echo);
        }
        if (command == "HOLD") {
            c.in.clear(pool_);
            return become(c, Mode::hold);
        }
        constexpr std::string_view kSink = "SINK-THEN-REPLY ";
        if (command.starts_with(kSink)) {
            std::string_view count = trim(command.substr(kSink.size()));
            uint64_t n = 0;
            auto [end, ec] = std::from_chars(count.data(), count.data() + count.size(), n);
            if (ec != std::errc() || end != count.data() + count.size() || count.empty()) {
                return refuse(c, "SINK-THEN-REPLY needs a byte count");
            }
            c.in.clear(pool_);
            c.pattern_next = 0;
            c.pattern_end = n;
            return become(c, Mode::sink);
        }
        refuse(c, fmt::format("unknown command '{}'", command));
    }

    // Answers a bad control line with "ERR ...", then ends the connection.
    void refuse(EchoSession& c, std::string_view reason) {
        c.in.clear(pool_);
        c.out.append(fmt::format("ERR {}\n", reason.substr(0, 200)), pool_);
        become(c, Mode::linger);
    }

    void serve_http(EchoSession& c) {
        while (!c.close_after_output) {
            if (c.body_left > 0) {
                size_t skip = static_cast<size_t>(std::min<uint64_t>(c.body_left, c.in.size()));
                c.in.consume(skip, pool_);
                c.body_left -= skip;
                if (c.body_left > 0) return;
            }
            if (c.out.size() > kOutputHighWater) return;  // backpressure: send first
            std::string_view data = c.in.view();
            auto end = data.find("\r\n\r\n");
            size_t head_size = end == std::string_view::npos ? 0 : end + 4;
            if (end == std::string_view::npos) {
                auto bare = data.find("\n\n");
                if (bare != std::string_view::npos) head_size = bare + 2;
            }
            if (head_size == 0) {
                if (data.size() >= kMaxHeaderBytes) respond(c, 431, false, false);
                return;
            }
            Request req = parse_request(data.substr(0, head_size));
            c.in.consume(head_size, pool_);
            answer(c, req);
        }
    }

    void answer(EchoSession& c, const Request& req) {
        if (req.bad) return respond(c, 400, false, false);
        if (req.chunked) return respond(c, 501, false, false);
        c.body_left = req.content_length;
        bool head = req.method == "HEAD";
        bool readable = head || req.method == "GET";
        std::string_view path = req.target.substr(0, req.target.find('?'));
        int status = 404;
        if (path == "/hostname" || path == "/") {
            status = 200;
        } else if (path.starts_with("/status/")) {
            std::string_view code = path.substr(8);
            auto [end, ec] = std::from_chars(code.data(), code.data() + code.size(), status);
            if (ec != std::errc() || end != code.data() + code.size() || status < 200 ||
                status > 599) {
                status = 400;
            }
        }
        if (status != 404 && status != 400 && !readable) status = 405;
        respond(c, status, req.keep_alive, head, req.http10);
    }

    void respond(EchoSession& c, int status, bool keep_alive, bool head, bool http10 = false) {
        bool has_body = status != 204 && status != 304;
        std::string_view body = has_body ? std::string_view(body_) : std::string_view();
        std::string_view connection = !keep_alive ? "Connection: close\r\n"
                                      : http10    ? "Connection: keep-alive\r\n"
                                                  : "";
        std::string response = fmt::format(
            "HTTP/1.1 {} {}\r\nServer: stickyd-echo\r\nContent-Type: text/plain\r\n"
            "{}{}\r\n{}",
            status, reason_phrase(status),
            has_body ? fmt::format("Content-Length: {}\r\n", body.size()) : std::string(),
            connection, head ? std::string_view() : body);
        if (!c.out.append(response, pool_)) {  // cannot happen below the high-water mark
            c.close_after_output = true;
            return;
        }
        if (!keep_alive) c.close_after_output = true;
    }

    // Sends `out`, then (echo mode) `in`, then generated pattern data, until the
    // socket is full. False on a connection error.
    bool send_pending(EchoSession& c) {
        for (;;) {
            if (c.mode == Mode::sink && c.peer_eof) fill_pattern(c);
            Buffer* source = !c.out.empty()                            ? &c.out
                             : (c.mode == Mode::echo && !c.in.empty()) ? &c.in
                                                                       : nullptr;
            if (source == nullptr) return true;
            std::string_view data = source->view();
            ssize_t n = send(c.fd, data.data(), data.size(), MSG_NOSIGNAL);
            if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
            source->consume(static_cast<size_t>(n), pool_);
            if (static_cast<size_t>(n) < data.size()) return true;  // socket full
        }
    }

    void fill_pattern(EchoSession& c) {
        if (c.pattern_next == c.pattern_end || c.out.room() < kBlockSize / 2) return;
        char chunk[8192];
        size_t n = static_cast<size_t>(
            std::min<uint64_t>({sizeof chunk, c.out.room(), c.pattern_end - c.pattern_next}));
        for (size_t i = 0; i < n; ++i) {
            uint64_t offset = c.pattern_next + i;
            uint64_t word = (offset / 8) * kPatternMultiplier;
            chunk[i] = static_cast<char>(word >> (8 * (offset % 8)));
        }
        c.out.append({chunk, n}, pool_);
        c.pattern_next += n;
    }

    bool wants_read(const EchoSession& c) const {
        if (c.peer_eof) return false;
        switch (c.mode) {
            case Mode::detect:
                return !c.in.full();
            case Mode::http:
                return !c.in.full() && c.out.size() <= kOutputHighWater;
            case Mode::echo:
                return !c.in.full();
            case Mode::sink:
            case Mode::hold:
            case Mode::linger:
                return true;
        }
        return false;
    }

    void update_interest(EchoSession& c) {
        bool writable = !c.out.empty() || (c.mode == Mode::echo && !c.in.empty()) ||
                        (c.mode == Mode::sink && c.peer_eof && c.pattern_next < c.pattern_end);
        uint32_t events = (wants_read(c) ? EPOLLIN | EPOLLRDHUP : 0U) | (writable ? EPOLLOUT : 0U);
        if (events == c.registered) return;
        epoll_event ev{};
        ev.events = events;
        ev.data.ptr = &c;
        epoll_ctl(epoll_, EPOLL_CTL_MOD, c.fd, &ev);
        c.registered = events;
    }

    void close(EchoSession& c) {
        cancel_timer(c);
        ::close(c.fd);  // also removes it from the epoll set
        c.in.clear(pool_);
        c.out.clear(pool_);
        connections_.erase(&c);
        delete &c;
    }

    // --- timers ---------------------------------------------------------------

    void set_timer(EchoSession& c, Clock::time_point when) {
        cancel_timer(c);
        c.timer = timers_.emplace(when, &c);
    }

    void cancel_timer(EchoSession& c) {
        if (c.timer) timers_.erase(*c.timer);
        c.timer.reset();
    }

    int next_timeout_ms() const {
        if (timers_.empty()) return -1;
        auto wait = timers_.begin()->first - Clock::now();
        if (wait <= Clock::duration::zero()) return 0;
        return static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(wait).count());
    }

    void run_timers() {
        auto now = Clock::now();
        while (!timers_.empty() && timers_.begin()->first <= now) {
            EchoSession& c = *timers_.begin()->second;
            cancel_timer(c);
            if (c.mode == Mode::linger) {
                close(c);
            } else if (c.mode == Mode::detect) {
                c.mode = Mode::echo;  // a slow raw client that started like "GE"
                step(c);
            }
        }
    }

    std::string name_;
    std::string body_;  // of HTTP responses: the name and a line end
    int epoll_ = -1;
    int wakeup_fd_ = -1;
    int spare_fd_ = -1;
    bool stopping_ = false;
    Pollable wakeup_{Pollable::Kind::wakeup};
    std::vector<std::unique_ptr<Listener>> listeners_;
    std::unordered_set<EchoSession*> connections_;
    std::multimap<Clock::time_point, EchoSession*> timers_;
    BlockPool pool_;
};

void raise_nofile_limit() {
    rlimit limit{};
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
    }
}

constexpr const char* kProtocolHelp = R"(What a connection gets is decided by its first bytes:

HTTP/1.x ("GET ", "HEAD ", "POST ", ...):
  GET /hostname, GET /   200 with body NAME and a newline
  GET /status/NNN        status NNN (200-599), body NAME\n (none for 204/304)
  any other path         404 (other methods on the paths above: 405)
  Keep-alive and pipelining. "Connection: close" ends the connection; so does
  HTTP/1.0 unless it asks for "Connection: keep-alive".

Test control, a first line "STICKYD-TEST <command>\n":
  WHOAMI                 reply "NAME PEER-IP\n", then echo as raw
  SINK-THEN-REPLY <n>    discard input until EOF, then send n bytes of pattern
                         data and shut down the write side
  HOLD                   stay silent, discard input, close on EOF
  anything else          reply "ERR <reason>\n" and close
  Pattern data: little-endian uint64 words i * 0x9E3779B97F4A7C15 (mod 2^64),
  i = 0, 1, 2, ..., cut to n bytes.

Anything else is a raw TCP echo: every byte comes back; after the client's EOF
the rest is echoed and the write side is shut down (half-close is visible).

Prints "stickyd-echo NAME listening on ADDR" on stderr per address when ready.
SIGTERM or SIGINT closes everything and exits 0.)";

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> listen;
    std::string name = "stickyd-echo";
    unsigned threads = 1;
    CLI::App app{"stickyd-echo: demo, test and benchmark backend for stickyd", "stickyd-echo"};
    app.add_option("--listen,-l", listen,
                   "ip:port or [ipv6]:port to accept on (repeatable; port 0 picks one)")
        ->required()
        ->type_name("ADDR");
    app.add_option("--name,-n", name, "The name this backend answers with")->capture_default_str();
    app.add_option("--threads,-t", threads, "Event-loop threads")
        ->check(CLI::Range(1U, 64U))
        ->capture_default_str();
    app.footer(kProtocolHelp);
    CLI11_PARSE(app, argc, argv);

    raise_nofile_limit();
    signal(SIGPIPE, SIG_IGN);
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    // Started with SIGINT ignored (a background job of a script such as scripts/demo),
    // we keep ignoring it, so a Ctrl-C reaches only the script that stops us.
    struct sigaction sigint {};
    if (sigaction(SIGINT, nullptr, &sigint) != 0 || sigint.sa_handler != SIG_IGN) {
        sigaddset(&signals, SIGINT);
    }
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // inherited by the workers

    std::vector<int> fds;
    std::vector<std::string> bound;
    for (const auto& text : listen) {
        auto [fd, address] = listen_socket(text);
        fds.push_back(fd);
        bound.push_back(address);
    }
    std::vector<std::unique_ptr<EchoLoop>> workers;
    std::vector<std::thread> loops;
    for (unsigned i = 0; i < threads; ++i) workers.push_back(std::make_unique<EchoLoop>(name, fds));
    for (auto& worker : workers) loops.emplace_back([w = worker.get()] { w->run(); });
    for (const auto& address : bound)
        fmt::print(stderr, "stickyd-echo {} listening on {}\n", name, address);

    int sig = 0;
    while (sigwait(&signals, &sig) != 0) {
    }
    for (auto& worker : workers) worker->stop();
    for (auto& loop : loops) loop.join();
    for (int fd : fds) ::close(fd);
    return 0;
}
