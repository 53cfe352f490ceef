// Active health checks as I/O: one check is connect (+ a deadline) [-> send a PROXY
// LOCAL header] [-> TLS handshake] [-> send an HTTP request -> receive the status
// line] -> drain -> close, a handful of SQEs on the control thread's io_uring that
// never block. HTTPS runs TLS through memory BIOs (tls_session.hpp) over the same
// sends and receives.
//
// The checker knows nothing of target groups, schedules or health policy: the
// control thread starts a check in a numbered slot, and the checker reports the
// verdict (passed or not, why, how long it took) and, later, that the slot is quiet
// again. A slot's generation is bumped per check, so a late completion from an
// earlier check is harmless; the socket is closed only when nothing is in flight on
// it any more.
#pragma once

#include <liburing.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "control/control_ops.hpp"
#include "control/tls_session.hpp"
#include "datapath/uring.hpp"
#include "stickyd/address.hpp"
#include "stickyd/config.hpp"
#include "stickyd/health.hpp"

namespace stickyd {

// "connection refused", or strerror's text in lower case: a check's or a passive
// report's reason.
std::string connect_error(int err);

// What to check: everything a check needs, copied in when it starts, so a reload
// or a removed target cannot change a check under way.
struct CheckRequest {
    SocketAddress address;  // the target's, with the check's port applied
    // https: the DNS name the target was found by, sent as SNI; empty for a target
    // given by address (an IP literal gets no SNI).
    std::string server_name;
    HealthProtocol protocol = HealthProtocol::tcp;
    std::string path = "/";          // http and https
    bool proxy_protocol_v2 = false;  // send a PROXY v2 LOCAL header first
    Matcher matcher;
    std::chrono::milliseconds timeout{0};
};

class HealthChecker {
  public:
    // The slot's check has decided. Never called for an abandoned slot's check.
    using Verdict = std::function<void(uint32_t slot, bool passed, const std::string& reason,
                                       std::chrono::steady_clock::duration took)>;
    // The slot's check has ended and its socket is closed: the slot may be reused.
    using Quiet = std::function<void(uint32_t slot)>;

    HealthChecker(Uring& ring, Verdict verdict, Quiet quiet);
    ~HealthChecker();  // closes the sockets of checks a loop that never ended left behind
    HealthChecker(const HealthChecker&) = delete;
    HealthChecker& operator=(const HealthChecker&) = delete;

    // Starts a check in `slot` (which must not be busy). False when no socket could
    // be had: our problem (out of fds), not the target's, so there is no verdict.
    bool start(uint32_t slot, const CheckRequest& request);
    bool busy(uint32_t slot) const;
    // Ends the slot's check early with no verdict (its target is gone); Quiet follows.
    void abandon(uint32_t slot);
    // No more verdicts; every check ends as its cancelled I/O completes.
    void stop();
    // Checks not yet quiet; the control loop ends only at zero.
    unsigned in_flight() const { return in_flight_; }

    // A completion of one of the check ops (ControlOp::check_*).
    void on_completion(ControlTag tag, int res);

  private:
    enum class Stage : uint8_t {
        idle,         // no check in flight
        connecting,   // connect + deadline in flight
        handshaking,  // https: the PROXY header (if any) and TLS, up to its Finished
        sending,      // PROXY header and/or HTTP request (https: inside TLS) being sent
        receiving,    // reading the status line
        draining,     // decided; reading to EOF so the close is a FIN, not an RST
        closing,      // no more I/O wanted; waiting for in-flight completions
    };

    // Where a recv lands.
    enum class Into : uint8_t { head, ciphertext, discard };

    // One slot's check. Everything an SQE points at (the address, the request, the
    // response buffer, the ciphertext received, the deadline) lives here until its
    // completion.
    struct Check {
        Stage stage = Stage::idle;
        uint32_t generation = 0;
        int fd = -1;
        uint8_t inflight = 0;
        bool deadline_armed = false;
        bool decided = false;
        bool abandoned = false;
        CheckRequest request;
        std::string out;  // on the wire: PROXY LOCAL header, HTTP request, TLS records
        uint32_t sent = 0;
        std::string request_text;      // https: the HTTP request, until TLS can carry it
        std::unique_ptr<char[]> head;  // HTTP: the response so far, only while checking
        uint32_t head_len = 0;
        std::unique_ptr<TlsSession> tls;     // https, only while checking
        std::unique_ptr<char[]> ciphertext;  // https: where recvs land, ditto
        __kernel_timespec deadline{};
        std::chrono::steady_clock::time_point started;

        bool tcp() const { return request.protocol == HealthProtocol::tcp; }
        bool https() const { return request.protocol == HealthProtocol::https; }
    };

    Check& at(uint32_t slot);
    bool start_tls(Check& check);
    void on_connect(uint32_t slot, int res);
    void continue_handshake(uint32_t slot);
    void send_tls_output(uint32_t slot);
    void submit_send(uint32_t slot);
    void on_send(uint32_t slot, int res);
    void submit_recv(uint32_t slot, Into into);
    void on_recv(uint32_t slot, int res);
    void read_tls_response(uint32_t slot);
    bool judge_status_line(uint32_t slot);
    void on_deadline(uint32_t slot, int res);
    void drain(uint32_t slot);
    void decide(uint32_t slot, bool passed, const std::string& reason);
    void end_io(uint32_t slot);
    void finish_if_quiet(uint32_t slot);
    uint64_t tag(ControlOp op, uint32_t slot) const;

    Uring& ring_;
    Verdict verdict_;
    Quiet quiet_;
    // Made on the first https check, so that a daemon without one never sets up
    // OpenSSL; before checks_, so it outlives every session.
    std::unique_ptr<TlsContext> tls_context_;
    // By slot, growing with the highest slot used. A deque: growing never moves a
    // check whose SQEs point into it.
    std::deque<Check> checks_;
    unsigned in_flight_ = 0;
    bool stopping_ = false;
    // Where the rest of a response goes while it is drained before the close: its
    // content is never looked at, so every check shares it.
    static constexpr size_t kDiscardSize = 4096;
    // Per https check while it runs. Small: the session gathers a TLS record
    // from as many recvs as it takes.
    static constexpr size_t kCiphertextSize = 4096;
    std::unique_ptr<char[]> discard_ = std::make_unique<char[]>(kDiscardSize);
};

}  // namespace stickyd
