#include "connection.hpp"

#include <algorithm>
#include <cerrno>

namespace stickyd {

static_assert(sizeof(Connection) <= 64, "keep the per-connection slot within a cache line");

void start_recv(Flow& flow) {
    flow.state = FlowState::receiving;
}

Decision on_recv(Flow& flow, int res, uint16_t bid, bool source_nonempty) {
    if (res > 0 && bid != kNoBuffer) {
        flow.buf = bid;
        flow.sent = 0;
        flow.len = static_cast<uint32_t>(res);
        flow.source_ready = source_nonempty;
        flow.state = FlowState::sending;
        return {Step::send};
    }
    // Any buffer the kernel handed over without data goes straight back.
    if (res == 0) {
        flow.state = FlowState::done;
        return {Step::finish, bid};
    }
    if (res == -ENOBUFS) {
        // Data is waiting, there was just nowhere to put it.
        flow.source_ready = true;
        flow.state = FlowState::waiting_buffer;
        return {Step::wait_buffer, bid};
    }
    if (res == -EAGAIN || res == -EINTR) return {Step::recv, bid};
    return {Step::reset, bid};
}

Decision on_send(Flow& flow, int res) {
    if (res > 0) {
        flow.sent += static_cast<uint32_t>(res);
        if (flow.sent < flow.len) return {Step::send};  // short send: the rest, same buffer
        uint16_t done = flow.buf;
        flow.buf = kNoBuffer;
        flow.sent = flow.len = 0;
        flow.state = FlowState::receiving;
        return {Step::recv, done};
    }
    if (res == -EAGAIN || res == -EINTR) return {Step::send};
    // 0 bytes for a non-empty send means the sink is gone, like -EPIPE.
    return {Step::reset};
}

ConnectStep on_connect(int res, unsigned attempt, unsigned connect_retries) {
    if (res == 0) return ConnectStep::relay;
    return attempt < connect_retries ? ConnectStep::retry : ConnectStep::give_up;
}

AcceptStep on_accept_error(int err) {
    switch (err) {
        case ECONNABORTED:  // the client gave up while queued
        case EINTR:
        case EAGAIN:
        case EPERM:  // a firewall rule refused this one connection
        case EPROTO:
        case ECANCELED:
            return AcceptStep::rearm;
        default:  // EMFILE, ENFILE, ENOBUFS, ENOMEM, and anything unexpected
            return AcceptStep::back_off;
    }
}

std::chrono::milliseconds next_backoff(std::chrono::milliseconds current) {
    constexpr std::chrono::milliseconds kFirst{100};
    constexpr std::chrono::milliseconds kMax{1000};
    if (current.count() <= 0) return kFirst;
    return std::min(current * 2, kMax);
}

}  // namespace stickyd
