#include "datapath/connection.hpp"

#include <algorithm>
#include <cerrno>

#include <fmt/core.h>

namespace stickyd {

static_assert(sizeof(Flow) == 12, "the splice streak must not grow the flow");
static_assert(sizeof(Connection) <= 96,
              "keep the per-connection slot small: idle memory is a goal");

void start_recv(Flow& flow) {
    flow.state = FlowState::receiving;
}

Decision on_recv(Flow& flow, int res, uint16_t bid, bool source_nonempty, uint32_t buffer_size) {
    if (res > 0 && bid != kNoBuffer) {
        flow.buf = bid;
        flow.sent = 0;
        flow.len = static_cast<uint32_t>(res);
        flow.source_ready = source_nonempty;
        const bool full = flow.len >= buffer_size && source_nonempty;
        flow.full_recvs = full ? std::min<uint8_t>(flow.full_recvs + 1, 3) : 0;
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
        return {flow.full_recvs >= kSpliceAfter ? Step::splice : Step::recv, done};
    }
    if (res == -EAGAIN || res == -EINTR) return {Step::send};
    // 0 bytes for a non-empty send means the sink is gone, like -EPIPE.
    return {Step::reset};
}

void start_splice(Flow& flow) {
    flow.state = FlowState::splicing;
}

void stop_splice(Flow& flow, bool source_ready) {
    flow.state = FlowState::receiving;
    flow.full_recvs = 0;  // it has to prove itself bulk again
    flow.source_ready = source_ready;
}

SpliceStep on_splice_in(Flow& flow, long res, uint32_t& piped, bool bulk_turn) {
    if (res > 0) {
        piped += static_cast<uint32_t>(res);
        return SpliceStep::out;
    }
    if (res == 0) {
        flow.state = FlowState::done;
        return SpliceStep::finish;
    }
    if (res == -EAGAIN) {
        if (bulk_turn) return SpliceStep::wait_source;
        // A trickle, which recv/send serves without holding a pipe.
        stop_splice(flow, false);
        return SpliceStep::leave;
    }
    if (res == -EINTR) return SpliceStep::in;
    return SpliceStep::reset;
}

SpliceStep on_splice_out(long res, uint32_t& piped) {
    if (res > 0) {
        piped -= std::min(piped, static_cast<uint32_t>(res));
        return piped > 0 ? SpliceStep::out : SpliceStep::in;
    }
    if (res == -EAGAIN) return SpliceStep::wait_sink;
    if (res == -EINTR) return SpliceStep::out;
    // 0 for a non-empty pipe means the sink is gone, like -EPIPE.
    return SpliceStep::reset;
}

uint16_t idle_timeout_ticks(std::chrono::milliseconds timeout, std::chrono::milliseconds tick) {
    if (timeout.count() <= 0 || tick.count() <= 0) return 1;
    const int64_t ticks = (timeout.count() + tick.count() - 1) / tick.count();
    return static_cast<uint16_t>(std::clamp<int64_t>(ticks, 1, UINT16_MAX));
}

HandshakeOutcome on_handshake_bytes(std::vector<uint8_t>& pending, std::span<const uint8_t> chunk,
                                    size_t limit) {
    const size_t before = pending.size();
    // Never copy more than could still belong to a header of the allowed size.
    const size_t take = std::min(chunk.size(), limit + 1 - std::min(before, limit + 1));
    pending.insert(pending.end(), chunk.begin(), chunk.begin() + static_cast<ptrdiff_t>(take));
    proxy::ParseResult parsed = proxy::parse_proxy_header(pending);
    HandshakeOutcome out;
    switch (parsed.status) {
        case proxy::ParseStatus::ok:
            out.step = HandshakeStep::done;
            out.payload_offset = parsed.header.consumed - before;
            out.header = std::move(parsed.header);
            return out;
        case proxy::ParseStatus::invalid:
            out.step = HandshakeStep::invalid;
            out.reason = std::move(parsed.reason);
            return out;
        case proxy::ParseStatus::incomplete:
            if (parsed.needed > limit || pending.size() > limit) {
                out.step = HandshakeStep::invalid;
                out.reason = fmt::format("header longer than {} bytes", limit);
                return out;
            }
            out.step = HandshakeStep::more;
            return out;
    }
    return out;
}

ConnectStep on_connect(int res, unsigned attempt, unsigned connect_retries) {
    if (res == 0) return ConnectStep::relay;
    return attempt < connect_retries ? ConnectStep::retry : ConnectStep::give_up;
}

ConnectStep on_target_terminated(unsigned attempt) {
    return attempt < UINT8_MAX ? ConnectStep::retry : ConnectStep::give_up;  // Connection::attempt
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
