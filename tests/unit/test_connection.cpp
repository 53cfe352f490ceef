// The relay, connect and accept decisions, driven by synthetic completions.
#include "src/connection.hpp"

#include <doctest/doctest.h>

#include <cerrno>

using namespace stickyd;
using std::chrono::milliseconds;

namespace {

// A flow with a recv in flight, as the worker leaves it after arming one.
Flow receiving_flow() {
    Flow flow;
    start_recv(flow);
    return flow;
}

}  // namespace

TEST_CASE("received data is sent from the same buffer, then the buffer goes back") {
    Flow flow = receiving_flow();
    Decision d = on_recv(flow, 1000, 7, false);
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
    on_recv(flow, 16384, 3, true);
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
    on_recv(flow, 10, 1, false);
    // Only a send completion moves the flow back to receiving.
    CHECK(flow.state == FlowState::sending);
    on_send(flow, 4);
    CHECK(flow.state == FlowState::sending);
    on_send(flow, 6);
    CHECK(flow.state == FlowState::receiving);
}

TEST_CASE("readiness hint: poll first only when the source had nothing more queued") {
    Flow flow = receiving_flow();
    on_recv(flow, 100, 1, true);
    CHECK(flow.source_ready);
    on_send(flow, 100);
    on_recv(flow, 100, 2, false);
    CHECK_FALSE(flow.source_ready);
}

TEST_CASE("EOF finishes the flow and returns any buffer the kernel attached") {
    Flow flow = receiving_flow();
    Decision d = on_recv(flow, 0, kNoBuffer, false);
    CHECK(d.step == Step::finish);
    CHECK(d.release == kNoBuffer);
    CHECK(flow.state == FlowState::done);

    Flow other = receiving_flow();
    d = on_recv(other, 0, 12, false);
    CHECK(d.step == Step::finish);
    CHECK(d.release == 12);
}

TEST_CASE("half-close: one flow done, the other keeps relaying, then both done") {
    Connection c;
    c.phase = Phase::relaying;
    start_recv(c.flow(FlowDir::upstream));
    start_recv(c.flow(FlowDir::downstream));

    CHECK(on_recv(c.flow(FlowDir::upstream), 0, kNoBuffer, false).step == Step::finish);
    CHECK_FALSE(c.both_flows_done());

    Flow& down = c.flow(FlowDir::downstream);
    CHECK(on_recv(down, 500, 4, false).step == Step::send);
    CHECK(on_send(down, 500).step == Step::recv);
    CHECK(on_recv(down, 0, kNoBuffer, false).step == Step::finish);
    CHECK(c.both_flows_done());
}

TEST_CASE("no free buffer parks the recv instead of closing") {
    Flow flow = receiving_flow();
    Decision d = on_recv(flow, -ENOBUFS, kNoBuffer, false);
    CHECK(d.step == Step::wait_buffer);
    CHECK(flow.state == FlowState::waiting_buffer);
    CHECK(flow.source_ready);  // data is there: the re-armed recv should not poll first
    start_recv(flow);
    CHECK(flow.state == FlowState::receiving);
    CHECK(on_recv(flow, 42, 9, false).step == Step::send);
}

TEST_CASE("resets and errors abort the connection from either side") {
    for (int err : {ECONNRESET, EPIPE, ETIMEDOUT, EHOSTUNREACH, ECANCELED}) {
        CAPTURE(err);
        Flow reading = receiving_flow();
        CHECK(on_recv(reading, -err, kNoBuffer, false).step == Step::reset);

        Flow sending = receiving_flow();
        on_recv(sending, 10, 2, false);
        CHECK(on_send(sending, -err).step == Step::reset);
        CHECK(sending.buf == 2);  // still held: the worker returns it when the slot is freed
    }
}

TEST_CASE("a zero-byte send completion is treated as a dead sink, not retried forever") {
    Flow flow = receiving_flow();
    on_recv(flow, 10, 2, false);
    CHECK(on_send(flow, 0).step == Step::reset);
}

TEST_CASE("interrupted ops are simply retried") {
    Flow flow = receiving_flow();
    CHECK(on_recv(flow, -EAGAIN, kNoBuffer, false).step == Step::recv);
    on_recv(flow, 10, 2, false);
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

TEST_CASE("the connection slot stays within one cache line") {
    CHECK(sizeof(Connection) <= 64);
    Connection c;
    c.client_fd = 10;
    c.target_fd = 11;
    CHECK(c.source_fd(FlowDir::upstream) == 10);
    CHECK(c.sink_fd(FlowDir::upstream) == 11);
    CHECK(c.source_fd(FlowDir::downstream) == 11);
    CHECK(c.sink_fd(FlowDir::downstream) == 10);
    CHECK(other(FlowDir::upstream) == FlowDir::downstream);
}
