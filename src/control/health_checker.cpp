// Reading order: starting a check, its completions from connect to close, then the
// verdict and the end of its I/O.
//
// Each check runs under one deadline (an IORING_OP_TIMEOUT armed with the connect);
// when it fires whatever is in flight is cancelled, and once a check is decided and
// needs no more I/O the deadline is removed.
#include "control/health_checker.hpp"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "stickyd/log.hpp"
#include "stickyd/proxy_protocol.hpp"

namespace stickyd {

using Clock = std::chrono::steady_clock;

std::string connect_error(int err) {
    if (err == ECONNREFUSED) return "connection refused";
    std::string text = std::strerror(err);
    if (!text.empty())
        text[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(text[0])));
    return text;
}

HealthChecker::HealthChecker(Uring& ring, Verdict verdict, Quiet quiet)
    : ring_(ring), verdict_(std::move(verdict)), quiet_(std::move(quiet)) {}

HealthChecker::~HealthChecker() {
    for (const Check& check : checks_)
        if (check.fd >= 0) ::close(check.fd);
}

HealthChecker::Check& HealthChecker::at(uint32_t slot) {
    if (slot >= checks_.size()) checks_.resize(slot + 1);
    return checks_[slot];
}

bool HealthChecker::busy(uint32_t slot) const {
    return slot < checks_.size() && checks_[slot].stage != Stage::idle;
}

uint64_t HealthChecker::tag(ControlOp op, uint32_t slot) const {
    return encode(op, slot, checks_[slot].generation);
}

// ---------------------------------------------------------------------------
// Starting a check

bool HealthChecker::start(uint32_t slot, const CheckRequest& request) {
    const int fd = ::socket(request.address.family(), SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd < 0) return false;
    Check& check = at(slot);
    check.request = request;
    check.out.clear();
    if (request.proxy_protocol_v2) {
        // As the NLB: the target may demand a PROXY header on every connection, and
        // LOCAL says "this one is the balancer's own", with no client to report.
        const auto header = proxy::encode_v2_local();
        check.out.assign(reinterpret_cast<const char*>(header.view().data()), header.view().size());
    }
    if (!check.tcp()) {
        check.out += fmt::format(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: "
            "stickyd-health\r\nAccept: */*\r\n\r\n",
            request.path, request.address.to_string());
    }
    check.generation = next_generation(check.generation);
    check.fd = fd;
    check.stage = Stage::connecting;
    check.decided = false;
    check.abandoned = false;
    check.sent = 0;
    check.head_len = 0;
    check.deadline = to_timespec(request.timeout);
    check.started = Clock::now();
    ++in_flight_;
    ring_.reserve(2);
    // The address the kernel reads is the check's own copy: it lives until the
    // connect completes (a local here would be gone by submission).
    const SocketAddress& address = check.request.address;
    io_uring_prep_connect(ring_.sqe(tag(ControlOp::check_connect, slot)), fd, address.sa(),
                          address.len());
    io_uring_prep_timeout(ring_.sqe(tag(ControlOp::check_timeout, slot)), &check.deadline, 0, 0);
    check.deadline_armed = true;
    check.inflight = 2;
    return true;
}

// ---------------------------------------------------------------------------
// Completions

void HealthChecker::on_completion(ControlTag tag, int res) {
    if (tag.slot >= checks_.size()) return;
    const uint32_t slot = tag.slot;
    Check& check = checks_[slot];
    if (check.stage == Stage::idle || check.generation != tag.generation) return;
    --check.inflight;
    if (tag.op == ControlOp::check_timeout) {
        check.deadline_armed = false;
        on_deadline(slot, res);
    } else if (check.stage == Stage::closing || stopping_) {
        // Cancelled or overtaken by the deadline: nothing more to learn.
    } else if (tag.op == ControlOp::check_connect) {
        on_connect(slot, res);
    } else if (tag.op == ControlOp::check_send) {
        on_send(slot, res);
    } else if (tag.op == ControlOp::check_recv) {
        on_recv(slot, res);
    }
    if (stopping_ && check.stage != Stage::closing) end_io(slot);
    finish_if_quiet(slot);
}

void HealthChecker::on_connect(uint32_t slot, int res) {
    Check& check = checks_[slot];
    if (res < 0) {
        decide(slot, false, res == -ECANCELED ? "connect timed out" : connect_error(-res));
        end_io(slot);
        return;
    }
    if (check.tcp()) decide(slot, true, "connected");
    if (!check.out.empty()) {
        check.stage = Stage::sending;
        submit_send(slot);
        return;
    }
    drain(slot);
}

void HealthChecker::submit_send(uint32_t slot) {
    Check& check = checks_[slot];
    io_uring_prep_send(ring_.sqe(tag(ControlOp::check_send, slot)), check.fd,
                       check.out.data() + check.sent, check.out.size() - check.sent, MSG_NOSIGNAL);
    ++check.inflight;
}

void HealthChecker::on_send(uint32_t slot, int res) {
    Check& check = checks_[slot];
    if (res <= 0) {
        decide(
            slot, false,
            fmt::format("sending the {} failed: {}", check.tcp() ? "PROXY header" : "HTTP request",
                        res == 0 ? "connection closed" : connect_error(-res)));
        end_io(slot);
        return;
    }
    check.sent += static_cast<uint32_t>(res);
    if (check.sent < check.out.size()) {
        submit_send(slot);
        return;
    }
    if (check.tcp()) {
        drain(slot);
        return;
    }
    check.head = std::make_unique<char[]>(kMaxStatusLine);
    check.stage = Stage::receiving;
    submit_recv(slot, false);
}

void HealthChecker::submit_recv(uint32_t slot, bool discard) {
    Check& check = checks_[slot];
    void* buffer = discard_.get();
    size_t size = kDiscardSize;
    if (!discard) {
        // Reads land after what has arrived so far, up to the status-line limit
        // (parse_status_line calls a full buffer without a line ending malformed).
        buffer = check.head.get() + check.head_len;
        size = kMaxStatusLine - check.head_len;
    }
    io_uring_prep_recv(ring_.sqe(tag(ControlOp::check_recv, slot)), check.fd, buffer, size, 0);
    ++check.inflight;
}

void HealthChecker::on_recv(uint32_t slot, int res) {
    Check& check = checks_[slot];
    if (check.stage == Stage::draining) {
        if (res > 0) {
            submit_recv(slot, true);
        } else {
            end_io(slot);  // EOF (or an error): the conversation is over
        }
        return;
    }
    if (res <= 0) {
        decide(slot, false,
               res == 0 ? "connection closed before an HTTP status line"
                        : fmt::format("reading the HTTP response failed: {}", connect_error(-res)));
        end_io(slot);
        return;
    }
    check.head_len += static_cast<uint32_t>(res);
    on_status_line(slot);
}

void HealthChecker::on_status_line(uint32_t slot) {
    Check& check = checks_[slot];
    const StatusLine line = parse_status_line(std::string_view(check.head.get(), check.head_len));
    switch (line.result) {
        case StatusLine::Result::incomplete:
            submit_recv(slot, false);
            return;
        case StatusLine::Result::malformed:
            decide(slot, false, fmt::format("malformed HTTP response: {}", line.problem));
            end_io(slot);
            return;
        case StatusLine::Result::ok: {
            const Matcher& matcher = check.request.matcher;
            if (matcher.matches(line.code)) {
                decide(slot, true, fmt::format("HTTP {}", line.code));
            } else {
                decide(slot, false, fmt::format("HTTP {} (matcher {})", line.code, matcher.text()));
            }
            // Connection: close was asked for; read to the target's FIN so that
            // closing does not reset a connection with unread data.
            check.stage = Stage::draining;
            submit_recv(slot, true);
            return;
        }
    }
}

void HealthChecker::on_deadline(uint32_t slot, int res) {
    Check& check = checks_[slot];
    if (res != -ETIME) return;  // removed: the check ended first
    if (!check.decided) {
        const char* what =
            check.stage == Stage::connecting ? "connect"
            : check.stage == Stage::sending
                ? (check.tcp() ? "sending the PROXY header" : "sending the HTTP request")
                : "waiting for the HTTP status line";
        decide(slot, false,
               fmt::format("timed out after {} ms ({})", check.request.timeout.count(), what));
    }
    end_io(slot);
}

// Close politely: our FIN first, then wait (within the deadline) for the target's,
// so backends log a clean disconnect instead of a reset.
void HealthChecker::drain(uint32_t slot) {
    Check& check = checks_[slot];
    ::shutdown(check.fd, SHUT_WR);
    check.stage = Stage::draining;
    submit_recv(slot, true);
}

// ---------------------------------------------------------------------------
// The verdict and the end of a check's I/O

void HealthChecker::decide(uint32_t slot, bool passed, const std::string& reason) {
    Check& check = checks_[slot];
    if (check.decided || stopping_) return;
    check.decided = true;
    if (check.abandoned) return;
    verdict_(slot, passed, reason, Clock::now() - check.started);
}

void HealthChecker::abandon(uint32_t slot) {
    if (!busy(slot)) return;
    checks_[slot].abandoned = true;
    end_io(slot);
}

void HealthChecker::stop() {
    stopping_ = true;
}

// No more I/O for this check: cancel what is in flight and the deadline; the
// socket is closed once their completions are in.
void HealthChecker::end_io(uint32_t slot) {
    Check& check = checks_[slot];
    if (check.stage == Stage::closing || check.stage == Stage::idle) return;
    check.stage = Stage::closing;
    if (check.inflight > (check.deadline_armed ? 1 : 0)) {
        io_uring_prep_cancel_fd(ring_.sqe(encode(ControlOp::ignore)), check.fd,
                                IORING_ASYNC_CANCEL_ALL);
    }
    if (check.deadline_armed) {
        io_uring_prep_timeout_remove(ring_.sqe(encode(ControlOp::ignore)),
                                     tag(ControlOp::check_timeout, slot), 0);
    }
}

void HealthChecker::finish_if_quiet(uint32_t slot) {
    Check& check = checks_[slot];
    if (check.stage != Stage::closing || check.inflight != 0) return;
    ::close(check.fd);
    check.fd = -1;
    check.stage = Stage::idle;
    check.head.reset();  // a check holds no buffer between runs
    --in_flight_;
    quiet_(slot);
}

}  // namespace stickyd
