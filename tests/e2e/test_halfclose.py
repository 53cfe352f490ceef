#!/usr/bin/env python3
"""Half-close and reset forwarding.

A FIN in one direction must become shutdown(SHUT_WR) on the other connection while
the opposite direction keeps flowing; an RST must arrive as an RST, not as a FIN."""
import hashlib
import os
import socket
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

KIB = 1024


def lb_in_front_of(address):
    lb = h.lb_addr()
    h.start_stickyd(
        args=["--listen", h.fmt_addr(lb), "--target", address, "--threads", "2"], addr=lb
    )
    return lb


def first_line_or_none(conn):
    """The client's first line, or None for a readiness probe (connect, then close)."""
    try:
        return h.recv_line(conn)
    except (h.Failure, ConnectionResetError):
        return None


def test_echo_finishes_after_client_shutdown():
    # Everything is sent and SHUT_WR'd before the first byte is read back: the
    # echoes of data still in flight when the FIN arrived must all come back.
    backend = h.start_backend("echo")
    lb = lb_in_front_of(backend.address)
    payload = h.random_payload(100 * KIB, seed=1)
    with h.connect(lb, "127.0.0.2") as s:
        h.send_all(s, payload)
        s.shutdown(socket.SHUT_WR)
        got = hashlib.sha256()
        count = h.recv_until_eof(s, got)
    h.expect_eq(count, len(payload), "bytes echoed after the client's FIN")
    h.expect_eq(got.hexdigest(), h.sha256(payload), "SHA-256 of the echo")


def test_reply_sent_after_client_eof_arrives():
    # stickyd-echo's SINK-THEN-REPLY only starts answering once it has seen EOF.
    backend = h.start_backend("echo")
    lb = lb_in_front_of(backend.address)
    reply = 1024 * KIB
    with h.connect(lb, "127.0.0.3") as s:
        h.send_all(s, b"STICKYD-TEST SINK-THEN-REPLY %d\n" % reply)
        h.send_all(s, h.random_payload(256 * KIB, seed=2))
        s.shutdown(socket.SHUT_WR)
        got = hashlib.sha256()
        count = h.recv_until_eof(s, got)
    h.expect_eq(count, reply, "bytes of the reply sent after EOF")
    h.expect_eq(got.hexdigest(), h.sha256(h.pattern(reply)), "SHA-256 of the reply")


def test_backend_sees_eof_after_all_data_and_can_still_reply():
    def handler(conn):
        if first_line_or_none(conn) is None:
            return None
        got = hashlib.sha256()
        count = h.recv_until_eof(conn, got)  # the client's FIN, forwarded
        answer = f"{count} {got.hexdigest()}\n".encode()
        h.send_all(conn, answer + h.pattern(300 * KIB))
        conn.shutdown(socket.SHUT_WR)
        return count, got.hexdigest()

    server = h.PyServer(handler)
    lb = lb_in_front_of(server.address)
    payload = h.random_payload(700 * KIB, seed=3)
    with h.connect(lb, "127.0.0.4") as s:
        h.send_all(s, b"hello\n")
        count, digest = h.echo_roundtrip(s, payload)
    seen_count, seen_sha = server.result()
    h.expect_eq(seen_count, len(payload), "bytes the backend read before EOF")
    h.expect_eq(seen_sha, h.sha256(payload), "SHA-256 of what the backend read")
    answer = f"{len(payload)} {h.sha256(payload)}\n".encode()
    h.expect_eq(count, len(answer) + 300 * KIB, "bytes of the backend's reply after EOF")
    h.expect_eq(digest, h.sha256(answer + h.pattern(300 * KIB)), "SHA-256 of the reply")


def test_backend_shuts_first_and_client_keeps_sending():
    # The reverse direction: the backend says its piece and shuts its write side.
    # The client sees EOF, and only then uploads; the backend must receive all of it.
    greeting = h.random_payload(200 * KIB, seed=4)

    def handler(conn):
        if first_line_or_none(conn) is None:
            return None
        h.send_all(conn, greeting)
        conn.shutdown(socket.SHUT_WR)
        got = hashlib.sha256()
        count = h.recv_until_eof(conn, got)
        return count, got.hexdigest()

    server = h.PyServer(handler)
    lb = lb_in_front_of(server.address)
    payload = h.random_payload(1024 * KIB, seed=5)
    with h.connect(lb, "127.0.0.5") as s:
        h.send_all(s, b"start\n")
        got = hashlib.sha256()
        count = h.recv_until_eof(s, got)  # the backend's FIN, forwarded
        h.expect_eq(count, len(greeting), "greeting bytes before the backend's FIN")
        h.expect_eq(got.hexdigest(), h.sha256(greeting), "SHA-256 of the greeting")
        h.send_all(s, payload)  # the other direction still flows
        s.shutdown(socket.SHUT_WR)
        h.expect_eq(h.wait_closed(s), "eof", "end of the connection once both sides shut")
    seen_count, seen_sha = server.result()
    h.expect_eq(seen_count, len(payload), "bytes the backend received after its own FIN")
    h.expect_eq(seen_sha, h.sha256(payload), "SHA-256 of what the backend received")


def test_client_reset_reaches_backend_as_reset():
    line_read = threading.Event()

    def handler(conn):
        if first_line_or_none(conn) is None:
            return None
        line_read.set()
        try:
            data = conn.recv(4096)
        except ConnectionResetError:
            return "reset"
        return "eof" if not data else f"data {data!r}"

    server = h.PyServer(handler)
    lb = lb_in_front_of(server.address)
    s = h.connect(lb, "127.0.0.6")
    try:
        h.send_all(s, b"hello\n")
        h.expect(line_read.wait(h.IO_TIMEOUT), "the backend never got the client's first line")
        h.set_linger_zero(s)
    finally:
        s.close()  # RST
    h.expect_eq(server.result(), "reset", "what the backend saw after the client's RST")


def test_backend_reset_reaches_client_as_reset():
    def handler(conn):
        if first_line_or_none(conn) is None:
            return None
        h.set_linger_zero(conn)  # the handler's return closes: RST
        return "sent reset"

    server = h.PyServer(handler)
    lb = lb_in_front_of(server.address)
    with h.connect(lb, "127.0.0.7") as s:
        h.send_all(s, b"hello\n")
        h.expect_eq(server.result(), "sent reset", "stub backend")
        h.expect_eq(h.wait_closed(s), "reset", "what the client saw after the backend's RST")


def test_abrupt_endings_mid_transfer_leave_stickyd_healthy():
    # Clients that vanish in the middle of a bulk transfer in either direction, and
    # a backend killed mid-stream: stickyd must tear each pair down, keep serving,
    # and leak no descriptors.
    backends = [h.start_backend("steady"), h.start_backend("doomed")]
    lb = h.lb_addr()
    args = ["--listen", h.fmt_addr(lb), "--threads", "2"]
    stickyd = h.start_stickyd(args=args + ["--target", backends[0].address], addr=lb)
    doomed_lb = h.lb_addr()
    doomed = h.start_stickyd(
        args=["--listen", h.fmt_addr(doomed_lb), "--target", backends[1].address], addr=doomed_lb
    )
    pid = stickyd.process.pid
    baseline = h.fd_count(pid)

    def download_then_reset(i):
        with h.connect(lb, f"127.0.0.{20 + i}") as s:
            h.send_all(s, b"STICKYD-TEST SINK-THEN-REPLY %d\n" % (200 * 1024 * 1024))
            s.shutdown(socket.SHUT_WR)
            h.recv_exact(s, 256 * KIB)
            if i % 2:
                h.set_linger_zero(s)  # RST; otherwise FIN with unread data

    def upload_then_reset(i):
        with h.connect(lb, f"127.0.0.{40 + i}") as s:
            h.send_all(s, b"STICKYD-TEST HOLD\n" + h.random_payload(512 * KIB, seed=i))
            h.set_linger_zero(s)

    h.run_parallel(
        [lambda i=i: download_then_reset(i) for i in range(8)]
        + [lambda i=i: upload_then_reset(i) for i in range(8)],
        timeout=60,
    )

    # A backend that dies mid-stream: the client must see the end, not hang.
    with h.connect(doomed_lb, "127.0.0.60") as s:
        h.send_all(s, b"STICKYD-TEST SINK-THEN-REPLY %d\n" % (200 * 1024 * 1024))
        s.shutdown(socket.SHUT_WR)
        h.recv_exact(s, 256 * KIB)
        backends[1].stop()
        try:
            h.recv_until_eof(s)
        except ConnectionResetError:
            pass
    h.expect(doomed.process.alive(), f"stickyd died with its backend\n{doomed.describe()}")

    h.expect_eq(h.whoami("127.0.0.99", lb), "steady", "a request after the abrupt endings")
    deadline = time.monotonic() + 10
    while h.fd_count(pid) > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    h.expect(
        h.fd_count(pid) <= baseline,
        f"stickyd holds {h.fd_count(pid)} descriptors, " f"{baseline} before the abrupt endings",
    )


if __name__ == "__main__":
    h.main()
