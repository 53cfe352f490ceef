// Reading order: starting a check, its completions from connect through the TLS
// handshake, the request and the response to close, then the verdict and the end
// of its I/O.
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
    // First, as it may throw (a failing submit): a check counted in flight with no
    // I/O submitted would keep the control loop waiting for I/O that never ends.
    ring_.reserve(2);
    Check& check = at(slot);
    check.request = request;
    if (check.https() && !start_tls(check)) return false;
    const int fd = ::socket(request.address.family(), SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd < 0) {
        check.tls.reset();
        check.ciphertext.reset();
        return false;
    }
    check.out.clear();
    if (request.proxy_protocol_v2) {
        // As the NLB: the target may demand a PROXY header on every connection, and
        // LOCAL says "this one is the balancer's own", with no client to report.
        const auto header = proxy::encode_v2_local();
        check.out.assign(reinterpret_cast<const char*>(header.view().data()), header.view().size());
    }
    if (!check.tcp()) {
        std::string text = fmt::format(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: "
            "stickyd-health\r\nAccept: */*\r\n\r\n",
            request.path, request.address.to_string());
        // https: the PROXY header goes in the clear, the request inside TLS.
        if (check.https()) {
            check.request_text = std::move(text);
        } else {
            check.out += text;
        }
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

// The session and its receive buffer come before the socket: running out of
// memory for them is our problem, as a missing socket is, not the target's.
bool HealthChecker::start_tls(Check& check) {
    if (!tls_context_) tls_context_ = TlsContext::create();
    // SNI names the target as it was found: by its DNS name, else by address (and an
    // IP literal gets none).
    if (tls_context_) {
        const std::string& name = check.request.server_name;
        check.tls = TlsSession::create(
            *tls_context_, name.empty() ? to_string(ip_key_of(check.request.address.sa())) : name);
    }
    if (!check.tls) {
        errno = ENOMEM;
        return false;
    }
    check.ciphertext = std::make_unique<char[]>(kCiphertextSize);
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
    if (check.https()) {
        check.stage = Stage::handshaking;
        continue_handshake(slot);
        return;
    }
    if (!check.out.empty()) {
        check.stage = Stage::sending;
        submit_send(slot);
        return;
    }
    drain(slot);
}

// One step of the handshake, after each thing that can move it: the connect, a
// flight sent, ciphertext received. Only one send or recv is ever in flight.
void HealthChecker::continue_handshake(uint32_t slot) {
    Check& check = checks_[slot];
    const TlsSession::Status status = check.tls->handshake();
    if (status == TlsSession::Status::failed || status == TlsSession::Status::closed) {
        decide(slot, false, fmt::format("TLS handshake failed: {}", check.tls->error()));
        end_io(slot);
        return;
    }
    if (check.tls->has_output()) {
        send_tls_output(slot);  // the ClientHello (after the PROXY header), or a Finished
        return;
    }
    if (status == TlsSession::Status::want_input) {
        submit_recv(slot, Into::ciphertext);
        return;
    }
    if (check.tls->write(check.request_text) != TlsSession::Status::done) {
        decide(slot, false,
               fmt::format("sending the HTTP request failed: TLS: {}", check.tls->error()));
        end_io(slot);
        return;
    }
    check.stage = Stage::sending;
    send_tls_output(slot);
}

// Sends what the session has for the target, after whatever `out` still holds
// unsent (the PROXY header, before the ClientHello).
void HealthChecker::send_tls_output(uint32_t slot) {
    Check& check = checks_[slot];
    check.out.erase(0, check.sent);
    check.sent = 0;
    check.tls->take_output(check.out);
    submit_send(slot);
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
        const std::string why = res == 0 ? "connection closed" : connect_error(-res);
        if (check.stage == Stage::handshaking) {
            decide(slot, false, fmt::format("TLS handshake failed: {}", why));
        } else {
            decide(slot, false,
                   fmt::format("sending the {} failed: {}",
                               check.tcp() ? "PROXY header" : "HTTP request", why));
        }
        end_io(slot);
        return;
    }
    check.sent += static_cast<uint32_t>(res);
    if (check.sent < check.out.size()) {
        submit_send(slot);
        return;
    }
    if (check.stage == Stage::handshaking) {
        continue_handshake(slot);
        return;
    }
    if (check.tcp()) {
        drain(slot);
        return;
    }
    check.head = std::make_unique<char[]>(kMaxStatusLine);
    check.stage = Stage::receiving;
    if (check.tls) {
        read_tls_response(slot);  // the session may hold records that came early
    } else {
        submit_recv(slot, Into::head);
    }
}

void HealthChecker::submit_recv(uint32_t slot, Into into) {
    Check& check = checks_[slot];
    void* buffer = discard_.get();
    size_t size = kDiscardSize;
    if (into == Into::head) {
        // Reads land after what has arrived so far, up to the status-line limit
        // (parse_status_line calls a full buffer without a line ending malformed).
        buffer = check.head.get() + check.head_len;
        size = kMaxStatusLine - check.head_len;
    } else if (into == Into::ciphertext) {
        buffer = check.ciphertext.get();
        size = kCiphertextSize;
    }
    io_uring_prep_recv(ring_.sqe(tag(ControlOp::check_recv, slot)), check.fd, buffer, size, 0);
    ++check.inflight;
}

void HealthChecker::on_recv(uint32_t slot, int res) {
    Check& check = checks_[slot];
    if (check.stage == Stage::draining) {
        if (res > 0) {
            submit_recv(slot, Into::discard);
        } else {
            end_io(slot);  // EOF (or an error): the conversation is over
        }
        return;
    }
    if (res <= 0) {
        const std::string why = res == 0 ? "connection closed" : connect_error(-res);
        if (check.stage == Stage::handshaking) {
            decide(slot, false, fmt::format("TLS handshake failed: {}", why));
        } else if (res == 0) {
            decide(slot, false, "connection closed before an HTTP status line");
        } else {
            decide(slot, false, fmt::format("reading the HTTP response failed: {}", why));
        }
        end_io(slot);
        return;
    }
    if (check.tls) {
        if (!check.tls->feed(check.ciphertext.get(), static_cast<size_t>(res))) {
            decide(slot, false, "TLS: out of memory for the received records");
            end_io(slot);
        } else if (check.stage == Stage::handshaking) {
            continue_handshake(slot);
        } else {
            read_tls_response(slot);
        }
        return;
    }
    check.head_len += static_cast<uint32_t>(res);
    if (!judge_status_line(slot)) submit_recv(slot, Into::head);
}

// Decrypts what has been received into the status line until it can be judged
// or the session needs more from the target.
void HealthChecker::read_tls_response(uint32_t slot) {
    Check& check = checks_[slot];
    while (true) {
        const TlsSession::Read read =
            check.tls->read(check.head.get() + check.head_len, kMaxStatusLine - check.head_len);
        switch (read.status) {
            case TlsSession::Status::done:
                check.head_len += static_cast<uint32_t>(read.size);
                if (judge_status_line(slot)) return;
                continue;
            case TlsSession::Status::want_input:
                submit_recv(slot, Into::ciphertext);
                return;
            case TlsSession::Status::closed:
                decide(slot, false, "connection closed before an HTTP status line");
                break;
            case TlsSession::Status::failed:
                decide(
                    slot, false,
                    fmt::format("reading the HTTP response failed: TLS: {}", check.tls->error()));
                break;
        }
        end_io(slot);
        return;
    }
}

// The response so far: true once it is judged (or found malformed), false while
// the status line is still incomplete.
bool HealthChecker::judge_status_line(uint32_t slot) {
    Check& check = checks_[slot];
    const StatusLine line = parse_status_line(std::string_view(check.head.get(), check.head_len));
    switch (line.result) {
        case StatusLine::Result::incomplete:
            return false;
        case StatusLine::Result::malformed:
            decide(slot, false, fmt::format("malformed HTTP response: {}", line.problem));
            end_io(slot);
            return true;
        case StatusLine::Result::ok: {
            const Matcher& matcher = check.request.matcher;
            if (matcher.matches(line.code)) {
                decide(slot, true, fmt::format("HTTP {}", line.code));
            } else {
                decide(slot, false, fmt::format("HTTP {} (matcher {})", line.code, matcher.text()));
            }
            // Connection: close was asked for; read to the target's FIN so that
            // closing does not reset a connection with unread data. https sends
            // no close_notify: the target closes first, and anything sent to a
            // closed socket would draw the reset this avoids.
            check.stage = Stage::draining;
            submit_recv(slot, Into::discard);
            return true;
        }
    }
    return true;
}

void HealthChecker::on_deadline(uint32_t slot, int res) {
    Check& check = checks_[slot];
    if (res != -ETIME) return;  // removed: the check ended first
    if (!check.decided) {
        const char* what =
            check.stage == Stage::connecting    ? "connect"
            : check.stage == Stage::handshaking ? "TLS handshake"
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
    submit_recv(slot, Into::discard);
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
    // A check holds no buffer and no TLS session between runs.
    check.head.reset();
    check.tls.reset();
    check.ciphertext.reset();
    --in_flight_;
    quiet_(slot);
}

}  // namespace stickyd
