// The relay, connect and accept decisions, driven by synthetic completions.
#include "datapath/connection.hpp"

#include <doctest/doctest.h>

#include <cerrno>
#include <string_view>
#include <vector>

#include "stickyd/address.hpp"

using namespace stickyd;
using std::chrono::milliseconds;

namespace {

constexpr uint32_t kBuffer = 32 * 1024;  // what a receive buffer holds

// A flow with a recv in flight, as the worker leaves it after arming one.
Flow receiving_flow() {
    Flow flow;
    start_recv(flow);
    return flow;
}

}  // namespace

TEST_CASE("received data is sent from the same buffer, then the buffer goes back") {
    Flow flow = receiving_flow();
    Decision d = on_recv(flow, 1000, 7, false, kBuffer);
    CHECK(d.step == Step::send);
    CHECK(d.release == kNoBuffer);  // still needed by the send
    CHECK(flow.state == FlowState::sending);
    CHECK(flow.buf == 7);
    CHECK(flow.len == 1000);
    CHECK(flow.sent == 0);

    d = on_send(flow, 1000);
    CHECK(d.step == Step::recv);
    CHECK(d.release == 7);
    CHECK(flow.state == FlowState::receiving);
    CHECK(flow.buf == kNoBuffer);
}

TEST_CASE("a short send resubmits the remainder and keeps the buffer") {
    Flow flow = receiving_flow();
    on_recv(flow, 16384, 3, true, kBuffer);
    Decision d = on_send(flow, 10000);
    CHECK(d.step == Step::send);
    CHECK(d.release == kNoBuffer);
    CHECK(flow.sent == 10000);
    CHECK(flow.len == 16384);
    d = on_send(flow, 6000);
    CHECK(d.step == Step::send);
    CHECK(flow.sent == 16000);
    d = on_send(flow, 384);
    CHECK(d.step == Step::recv);
    CHECK(d.release == 3);
}

TEST_CASE("the source is not read while its data is being sent") {
    Flow flow = receiving_flow();
    on_recv(flow, 10, 1, false, kBuffer);
    // Only a send completion moves the flow back to receiving.
    CHECK(flow.state == FlowState::sending);
    on_send(flow, 4);
    CHECK(flow.state == FlowState::sending);
    on_send(flow, 6);
    CHECK(flow.state == FlowState::receiving);
}

TEST_CASE("readiness hint: poll first only when the source had nothing more queued") {
    Flow flow = receiving_flow();
    on_recv(flow, 100, 1, true, kBuffer);
    CHECK(static_cast<bool>(flow.source_ready));
    on_send(flow, 100);
    on_recv(flow, 100, 2, false, kBuffer);
    CHECK_FALSE(static_cast<bool>(flow.source_ready));
}

TEST_CASE("EOF finishes the flow and returns any buffer the kernel attached") {
    Flow flow = receiving_flow();
    Decision d = on_recv(flow, 0, kNoBuffer, false, kBuffer);
    CHECK(d.step == Step::finish);
    CHECK(d.release == kNoBuffer);
    CHECK(flow.state == FlowState::done);

    Flow other = receiving_flow();
    d = on_recv(other, 0, 12, false, kBuffer);
    CHECK(d.step == Step::finish);
    CHECK(d.release == 12);
}

TEST_CASE("half-close: one flow done, the other keeps relaying, then both done") {
    Connection c;
    c.phase = Phase::relaying;
    start_recv(c.flow(FlowDir::upstream));
    start_recv(c.flow(FlowDir::downstream));

    CHECK(on_recv(c.flow(FlowDir::upstream), 0, kNoBuffer, false, kBuffer).step == Step::finish);
    CHECK_FALSE(c.both_flows_done());

    Flow& down = c.flow(FlowDir::downstream);
    CHECK(on_recv(down, 500, 4, false, kBuffer).step == Step::send);
    CHECK(on_send(down, 500).step == Step::recv);
    CHECK(on_recv(down, 0, kNoBuffer, false, kBuffer).step == Step::finish);
    CHECK(c.both_flows_done());
}

TEST_CASE("no free buffer parks the recv instead of closing") {
    Flow flow = receiving_flow();
    Decision d = on_recv(flow, -ENOBUFS, kNoBuffer, false, kBuffer);
    CHECK(d.step == Step::wait_buffer);
    CHECK(flow.state == FlowState::waiting_buffer);
    CHECK(static_cast<bool>(
        flow.source_ready));  // data is there: the re-armed recv should not poll first
    start_recv(flow);
    CHECK(flow.state == FlowState::receiving);
    CHECK(on_recv(flow, 42, 9, false, kBuffer).step == Step::send);
}

TEST_CASE("a short chunk with more queued behind it is sent with MSG_MORE, a full one is not") {
    constexpr uint32_t kSize = 32 * 1024;
    Flow flow = receiving_flow();
    // A reply with its FIN already queued: held back to leave with the FIN.
    REQUIRE(on_recv(flow, 120, 1, true, kBuffer).step == Step::send);
    CHECK(send_more(flow, kSize));
    CHECK(on_send(flow, 120).step == Step::recv);
    // Nothing queued behind it: out at once.
    REQUIRE(on_recv(flow, 120, 1, false, kBuffer).step == Step::send);
    CHECK_FALSE(send_more(flow, kSize));
    CHECK(on_send(flow, 120).step == Step::recv);
    // A full buffer (bulk) goes out at once even with more queued.
    REQUIRE(on_recv(flow, kSize, 1, true, kBuffer).step == Step::send);
    CHECK_FALSE(send_more(flow, kSize));
}

// Receives one chunk of `n` bytes (more queued behind it if `more`) and sends it
// whole; returns what the send completion decided.
Step relay_chunk(Flow& flow, uint32_t n, bool more) {
    REQUIRE(on_recv(flow, static_cast<int>(n), 1, more, kBuffer).step == Step::send);
    return on_send(flow, static_cast<int>(n)).step;
}

TEST_CASE("a flow that fills whole buffers with more queued moves to splice, once sent") {
    Flow flow = receiving_flow();
    CHECK(relay_chunk(flow, kBuffer, true) == Step::recv);  // once could be one big reply
    CHECK(relay_chunk(flow, kBuffer, true) == Step::splice);
    CHECK(flow.buf == kNoBuffer);  // nothing of the buffer is left to send first
    CHECK(relay_chunk(flow, kBuffer, true) == Step::splice);  // no pipe was free: asks again
}

TEST_CASE("a short chunk, or a full one with nothing behind it, restarts the splice count") {
    Flow flow = receiving_flow();
    CHECK(relay_chunk(flow, kBuffer, true) == Step::recv);
    CHECK(relay_chunk(flow, kBuffer - 1, true) == Step::recv);
    CHECK(relay_chunk(flow, kBuffer, true) == Step::recv);
    CHECK(relay_chunk(flow, kBuffer, false) == Step::recv);  // it all fitted: not bulk
    CHECK(relay_chunk(flow, kBuffer, true) == Step::recv);
    // A short send in between changes nothing: the count is of receives.
    REQUIRE(on_recv(flow, static_cast<int>(kBuffer), 1, true, kBuffer).step == Step::send);
    CHECK(on_send(flow, 100).step == Step::send);
    CHECK(on_send(flow, static_cast<int>(kBuffer) - 100).step == Step::splice);
}

TEST_CASE("a parked receive keeps the count: starvation says nothing about the flow") {
    Flow flow = receiving_flow();
    CHECK(relay_chunk(flow, kBuffer, true) == Step::recv);
    CHECK(on_recv(flow, -ENOBUFS, kNoBuffer, false, kBuffer).step == Step::wait_buffer);
    start_recv(flow);
    CHECK(relay_chunk(flow, kBuffer, true) == Step::splice);
}

TEST_CASE("splicing: in while the pipe is empty, out while it holds bytes") {
    Flow flow = receiving_flow();
    relay_chunk(flow, kBuffer, true);
    relay_chunk(flow, kBuffer, true);
    start_splice(flow);
    CHECK(flow.state == FlowState::splicing);
    uint32_t piped = 0;
    CHECK(on_splice_in(flow, 1 << 20, piped, true) == SpliceStep::out);
    CHECK(piped == 1u << 20);
    CHECK(on_splice_out(300000, piped) == SpliceStep::out);  // short: try the rest
    CHECK(piped == (1u << 20) - 300000);
    CHECK(on_splice_out(-EAGAIN, piped) == SpliceStep::wait_sink);  // the sink is full
    CHECK(piped == (1u << 20) - 300000);
    CHECK(on_splice_out(-EINTR, piped) == SpliceStep::out);
    CHECK(on_splice_out((1 << 20) - 300000, piped) == SpliceStep::in);  // empty: read on
    CHECK(piped == 0);
    CHECK(flow.state == FlowState::splicing);
}

TEST_CASE("splicing: a source dry after a bulk turn is polled, still spliced") {
    Flow flow;
    start_splice(flow);
    uint32_t piped = 0;
    CHECK(on_splice_in(flow, -EAGAIN, piped, true) == SpliceStep::wait_source);
    CHECK(flow.state == FlowState::splicing);
}

TEST_CASE("splicing: a source dry after a trickle goes back to recv/send, which polls first") {
    Flow flow = receiving_flow();
    relay_chunk(flow, kBuffer, true);
    relay_chunk(flow, kBuffer, true);
    start_splice(flow);
    uint32_t piped = 0;
    CHECK(on_splice_in(flow, -EINTR, piped, false) == SpliceStep::in);
    CHECK(on_splice_in(flow, -EAGAIN, piped, false) == SpliceStep::leave);
    CHECK(flow.state == FlowState::receiving);
    CHECK_FALSE(static_cast<bool>(flow.source_ready));  // poll first
    // Back to counting from zero: one full buffer is not enough to return.
    CHECK(relay_chunk(flow, kBuffer, true) == Step::recv);
    CHECK(relay_chunk(flow, kBuffer, true) == Step::splice);
}

TEST_CASE("splicing: data that finds no free pipe goes back to recv/send without waiting") {
    Flow flow;
    start_splice(flow);
    flow.full_recvs = 2;
    stop_splice(flow, true);
    CHECK(flow.state == FlowState::receiving);
    CHECK(static_cast<bool>(flow.source_ready));  // the data is there: recv at once
    CHECK(static_cast<int>(flow.full_recvs) == 0);
}

TEST_CASE("splicing: EOF finishes the flow; errors on either socket reset") {
    Flow flow;
    start_splice(flow);
    uint32_t piped = 0;
    CHECK(on_splice_in(flow, 0, piped, true) == SpliceStep::finish);
    CHECK(flow.state == FlowState::done);
    for (int err : {ECONNRESET, EPIPE, ETIMEDOUT, EBADF}) {
        CAPTURE(err);
        Flow in;
        start_splice(in);
        uint32_t none = 0;
        CHECK(on_splice_in(in, -err, none, true) == SpliceStep::reset);
        uint32_t some = 10;
        CHECK(on_splice_out(-err, some) == SpliceStep::reset);
    }
    // Nothing taken from a non-empty pipe means the sink is gone, like -EPIPE.
    uint32_t some = 10;
    CHECK(on_splice_out(0, some) == SpliceStep::reset);
}

TEST_CASE("resets and errors abort the connection from either side") {
    for (int err : {ECONNRESET, EPIPE, ETIMEDOUT, EHOSTUNREACH, ECANCELED}) {
        CAPTURE(err);
        Flow reading = receiving_flow();
        CHECK(on_recv(reading, -err, kNoBuffer, false, kBuffer).step == Step::reset);

        Flow sending = receiving_flow();
        on_recv(sending, 10, 2, false, kBuffer);
        CHECK(on_send(sending, -err).step == Step::reset);
        CHECK(sending.buf == 2);  // still held: the worker returns it when the slot is freed
    }
}

TEST_CASE("a zero-byte send completion is treated as a dead sink, not retried forever") {
    Flow flow = receiving_flow();
    on_recv(flow, 10, 2, false, kBuffer);
    CHECK(on_send(flow, 0).step == Step::reset);
}

TEST_CASE("interrupted ops are simply retried") {
    Flow flow = receiving_flow();
    CHECK(on_recv(flow, -EAGAIN, kNoBuffer, false, kBuffer).step == Step::recv);
    on_recv(flow, 10, 2, false, kBuffer);
    CHECK(on_send(flow, -EINTR).step == Step::send);
    CHECK(flow.sent == 0);
}

TEST_CASE("connect: success relays, failures retry up to connect_retries extra attempts") {
    CHECK(on_connect(0, 0, 2) == ConnectStep::relay);
    CHECK(on_connect(0, 2, 2) == ConnectStep::relay);
    CHECK(on_connect(-ECONNREFUSED, 0, 2) == ConnectStep::retry);
    CHECK(on_connect(-ECANCELED, 1, 2) == ConnectStep::retry);  // the linked timeout fired
    CHECK(on_connect(-ENETUNREACH, 2, 2) == ConnectStep::give_up);
    CHECK(on_connect(-ECONNREFUSED, 0, 0) == ConnectStep::give_up);
}

TEST_CASE("a terminated target moves a connecting client on, even past connect_retries") {
    CHECK(on_target_terminated(0) == ConnectStep::retry);
    CHECK(on_target_terminated(2) == ConnectStep::retry);  // connect_retries = 2: its last
    CHECK(on_target_terminated(254) == ConnectStep::retry);
    CHECK(on_target_terminated(255) == ConnectStep::give_up);  // Connection::attempt is full
}

TEST_CASE("accept: per-client errors re-arm, exhaustion backs off") {
    CHECK(on_accept_error(ECONNABORTED) == AcceptStep::rearm);
    CHECK(on_accept_error(EINTR) == AcceptStep::rearm);
    for (int err : {EMFILE, ENFILE, ENOBUFS, ENOMEM, EINVAL, EBADF}) {
        CAPTURE(err);
        CHECK(on_accept_error(err) == AcceptStep::back_off);
    }
}

TEST_CASE("accept back-off: 100 ms doubling to 1 s") {
    milliseconds delay{0};
    const milliseconds expected[] = {milliseconds{100}, milliseconds{200},  milliseconds{400},
                                     milliseconds{800}, milliseconds{1000}, milliseconds{1000}};
    for (milliseconds want : expected) {
        delay = next_backoff(delay);
        CHECK(delay == want);
    }
}

TEST_CASE("the connection slot stays within 96 bytes (idle memory per connection)") {
    CHECK(sizeof(Connection) <= 96);
    Connection c;
    c.client_fd = 10;
    c.target_fd = 11;
    CHECK(c.source_fd(FlowDir::upstream) == 10);
    CHECK(c.sink_fd(FlowDir::upstream) == 11);
    CHECK(c.source_fd(FlowDir::downstream) == 11);
    CHECK(c.sink_fd(FlowDir::downstream) == 10);
    CHECK(other(FlowDir::upstream) == FlowDir::downstream);
}

// ---------------------------------------------------------------------------
// Idle timeout in wheel ticks

TEST_CASE("idle timeouts round up to whole ticks and fit the slot's field") {
    const milliseconds tick{100};
    CHECK(idle_timeout_ticks(milliseconds{1000}, tick) == 10);
    CHECK(idle_timeout_ticks(milliseconds{1001}, tick) == 11);  // never close early
    CHECK(idle_timeout_ticks(milliseconds{350000}, tick) == 3500);
    CHECK(idle_timeout_ticks(milliseconds{6000000}, tick) == 60000);
    CHECK(idle_timeout_ticks(milliseconds{1}, tick) == 1);
    CHECK(idle_timeout_ticks(milliseconds{0}, tick) == 1);
    CHECK(idle_timeout_ticks(milliseconds{100000000}, tick) == UINT16_MAX);
}

TEST_CASE("a connection is due one tick after its timeout, counted from its last tick") {
    CHECK(idle_due(0, 10) == 11);
    CHECK(idle_due(500, 3500) == 4001);
}

// ---------------------------------------------------------------------------
// Reading the client's PROXY header

namespace {

std::vector<uint8_t> bytes(std::string_view text) {
    return {text.begin(), text.end()};
}

std::vector<uint8_t> v2_header(const char* client, const char* local) {
    const auto header =
        proxy::encode_v2_proxy(*SocketAddress::parse(client), *SocketAddress::parse(local));
    return {header.view().begin(), header.view().end()};
}

}  // namespace

TEST_CASE("a v1 header in one chunk: the rest of the chunk is client data") {
    std::vector<uint8_t> pending;
    const auto chunk = bytes("PROXY TCP4 10.1.2.3 10.0.0.1 40000 80\r\nGET / HTTP/1.0\r\n");
    HandshakeOutcome out = on_handshake_bytes(pending, chunk);
    REQUIRE(out.step == HandshakeStep::done);
    CHECK(out.payload_offset == 39);
    CHECK(std::string(chunk.begin() + 39, chunk.end()) == "GET / HTTP/1.0\r\n");
    REQUIRE(out.header.source);
    CHECK(out.header.source->to_string() == "10.1.2.3:40000");
    CHECK(out.header.destination->to_string() == "10.0.0.1:80");
}

TEST_CASE("a v2 header delivered byte by byte completes on its last byte") {
    const auto header = v2_header("[2001:db8::7]:5000", "[2001:db8::1]:443");
    std::vector<uint8_t> pending;
    for (size_t i = 0; i + 1 < header.size(); ++i) {
        CHECK(on_handshake_bytes(pending, std::span(&header[i], 1)).step == HandshakeStep::more);
    }
    // The last header byte arrives together with the first payload bytes.
    std::vector<uint8_t> last = {header.back(), 'h', 'i'};
    HandshakeOutcome out = on_handshake_bytes(pending, last);
    REQUIRE(out.step == HandshakeStep::done);
    CHECK(out.payload_offset == 1);
    CHECK(out.header.version == 2);
    CHECK(out.header.source->to_string() == "[2001:db8::7]:5000");
}

TEST_CASE("a header that ends exactly with the chunk leaves no client data") {
    const auto header = v2_header("192.0.2.9:1234", "192.0.2.1:80");
    std::vector<uint8_t> pending;
    HandshakeOutcome out = on_handshake_bytes(pending, header);
    REQUIRE(out.step == HandshakeStep::done);
    CHECK(out.payload_offset == header.size());
}

TEST_CASE("LOCAL and UNKNOWN headers complete without addresses") {
    std::vector<uint8_t> pending;
    HandshakeOutcome out = on_handshake_bytes(pending, bytes("PROXY UNKNOWN\r\nx"));
    REQUIRE(out.step == HandshakeStep::done);
    CHECK_FALSE(out.header.source);
    CHECK(out.payload_offset == 15);
    const auto local = proxy::encode_v2_local();
    pending.clear();
    out = on_handshake_bytes(pending, local.view());
    REQUIRE(out.step == HandshakeStep::done);
    CHECK(out.header.command == proxy::Command::local);
    CHECK_FALSE(out.header.source);
}

TEST_CASE("garbage is invalid as soon as it cannot be a header") {
    std::vector<uint8_t> pending;
    HandshakeOutcome out = on_handshake_bytes(pending, bytes("GET / HTTP/1.1\r\n"));
    CHECK(out.step == HandshakeStep::invalid);
    CHECK_FALSE(out.reason.empty());
    pending.clear();
    CHECK(on_handshake_bytes(pending, bytes("PROX")).step == HandshakeStep::more);
    CHECK(on_handshake_bytes(pending, bytes("Y TCP4 999.1.1.1 1.1.1.1 1 2\r\n")).step ==
          HandshakeStep::invalid);
}

TEST_CASE("a header longer than the limit is refused without buffering it all") {
    // A v2 header announcing 5000 address/TLV bytes.
    std::vector<uint8_t> big;
    for (uint8_t b : proxy::kV2Signature) big.push_back(b);
    for (uint8_t b : {0x21, 0x11, 0x13, 0x88}) big.push_back(b);
    std::vector<uint8_t> pending;
    HandshakeOutcome out = on_handshake_bytes(pending, big, 4096);
    CHECK(out.step == HandshakeStep::invalid);
    CHECK(out.reason == "header longer than 4096 bytes");
    // A v1 line that never ends: cut off at the limit, whatever the chunk size.
    pending.clear();
    HandshakeOutcome last = on_handshake_bytes(pending, bytes("PROXY TCP4 "));
    for (int i = 0; i < 100 && last.step == HandshakeStep::more; ++i) {
        last = on_handshake_bytes(pending, std::vector<uint8_t>(1000, '1'));
    }
    CHECK(last.step == HandshakeStep::invalid);
    CHECK(pending.size() <= 4097);
}
