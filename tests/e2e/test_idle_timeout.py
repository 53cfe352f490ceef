#!/usr/bin/env python3
"""Idle timeout (NLB tcp.idle_timeout.seconds): a connection with no bytes in either
direction for the listener's idle timeout is reset on both sides, as the NLB does;
bytes in either direction keep it open."""
import hashlib
import os
import socket
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

IDLE = 2  # seconds: the timeout these tests configure
# Activity comes far more often than the timeout, so a slow, shared machine keeps
# every gap well below it.
CADENCE = 0.2


def lb_in_front_of(address, idle=f"{IDLE}s"):
    lb = h.lb_addr()
    h.start_stickyd(
        args=[
            "--listen",
            h.fmt_addr(lb),
            "--target",
            address,
            "--threads",
            "2",
            "--idle-timeout",
            idle,
        ],
        addr=lb,
    )
    return lb


def end_seen_by_backend(conn):
    """Backend handler: echoes one line, then waits for the connection to end.
    Returns 'reset' or 'eof', or None for a readiness probe."""
    try:
        line = h.recv_line(conn)
    except (h.Failure, ConnectionResetError):
        return None
    h.send_all(conn, (line + "\n").encode())
    return h.wait_closed(conn, timeout=h.IO_TIMEOUT * 2)


def test_idle_connection_is_reset_on_both_sides():
    backend = h.PyServer(end_seen_by_backend)
    lb = lb_in_front_of(backend.address)
    with h.connect(lb, "127.0.0.2") as s:
        h.send_all(s, b"hello\n")
        h.expect_eq(h.recv_line(s), "hello", "echo before going idle")
        h.expect_eq(
            h.wait_closed(s, timeout=h.IO_TIMEOUT * 2),
            "reset",
            "how the idle client connection ended",
        )
    h.expect_eq(backend.result(), "reset", "how the idle target connection ended")


def test_client_traffic_keeps_the_connection_open():
    backend = h.start_backend("echo")
    lb = lb_in_front_of(backend.address)
    with h.connect(lb, "127.0.0.3") as s:
        end = time.monotonic() + 3 * IDLE
        n = 0
        while time.monotonic() < end:
            h.send_all(s, b"tick %d\n" % n)
            h.expect_eq(h.recv_line(s), f"tick {n}", "echo while active")
            n += 1
            time.sleep(CADENCE)
        # Then idle: it goes.
        h.expect_eq(h.wait_closed(s, timeout=h.IO_TIMEOUT * 2), "reset", "end after going idle")


def test_target_to_client_traffic_alone_keeps_it_open():
    # Only the target talks: a server push stream (SockJS, long-polling).
    stop = threading.Event()

    def pusher(conn):
        try:
            first = conn.recv(1)
        except ConnectionResetError:
            return None
        if not first:
            return None  # readiness probe
        try:
            while not stop.is_set():
                conn.sendall(b"x")
                time.sleep(CADENCE)
        except OSError:
            return "closed while pushing"
        return h.wait_closed(conn, timeout=h.IO_TIMEOUT * 2)

    backend = h.PyServer(pusher)
    lb = lb_in_front_of(backend.address)
    with h.connect(lb, "127.0.0.4") as s:
        h.send_all(s, b"s")
        end = time.monotonic() + 3 * IDLE
        got = 0
        while time.monotonic() < end:
            chunk = s.recv(64)
            h.expect(
                chunk,
                f"the connection ended after {got} pushed bytes while the target "
                "was still sending",
            )
            got += len(chunk)
        stop.set()
        h.expect(got >= 3 * IDLE, f"only {got} bytes pushed")
        h.expect_eq(h.wait_closed(s, timeout=h.IO_TIMEOUT * 2), "reset", "end after going idle")
    h.expect_eq(backend.result(), "reset", "how the target connection ended")


def test_slow_reader_still_reading_is_not_idle():
    # Regression (finding 9): activity was stamped only when a send completed. A send
    # to a client whose socket buffer is full does not complete while the client
    # drains it slowly, so a client reading steadily was reset as idle.
    backend = h.start_backend("echo")
    lb = lb_in_front_of(backend.address)
    size = 16 * 1024 * 1024  # far more than the socket buffers hold
    slow_for = 6 * IDLE
    with h.connect(lb, "127.0.0.5") as s:
        h.send_all(s, b"STICKYD-TEST SINK-THEN-REPLY %d\n" % size)
        s.shutdown(socket.SHUT_WR)
        got = hashlib.sha256()
        count = 0
        end = time.monotonic() + slow_for
        try:
            while time.monotonic() < end:  # a few KiB every 300 ms
                chunk = s.recv(4096)
                h.expect(chunk, f"EOF after {count} bytes while reading slowly")
                got.update(chunk)
                count += len(chunk)
                time.sleep(0.3)
            count += h.recv_until_eof(s, got)  # then the rest at full speed
        except ConnectionResetError:
            raise h.Failure(
                f"reset after {count} bytes while still reading " f"(idle timeout {IDLE} s)"
            )
    h.expect_eq((count, got.hexdigest()), (size, h.sha256(h.pattern(size))), "reply")


def test_many_idle_connections_all_go_and_busy_ones_stay():
    backend = h.start_backend("echo")
    lb = lb_in_front_of(backend.address)
    busy = h.connect(lb, "127.0.0.9")
    h.on_cleanup(busy.close)
    stop = threading.Event()
    problems = []

    def chatter():
        n = 0
        try:
            while not stop.is_set():
                h.send_all(busy, b"still %d\n" % n)
                h.expect_eq(h.recv_line(busy), f"still {n}", "echo on the busy connection")
                n += 1
                time.sleep(CADENCE)
        except BaseException as e:
            problems.append(f"the busy connection failed after {n} echoes: {e!r}")

    thread = threading.Thread(target=chatter, daemon=True)
    thread.start()
    idle = []
    for i in range(20):
        s = h.connect(lb, f"127.0.0.{10 + i}")
        h.on_cleanup(s.close)
        h.send_all(s, b"hi\n")
        h.expect_eq(h.recv_line(s), "hi", "echo")
        idle.append(s)
    for i, s in enumerate(idle):
        h.expect_eq(
            h.wait_closed(s, timeout=h.IO_TIMEOUT * 2), "reset", f"end of idle connection {i}"
        )
    time.sleep(2 * IDLE)  # the busy one keeps going well past the timeout
    stop.set()
    thread.join(h.IO_TIMEOUT)
    h.expect(not problems, "; ".join(problems))


def test_idle_timeout_flag_is_validated():
    for bad in ["0s", "6001s", "soon"]:
        r = h.run(
            [
                h.STICKYD_BIN,
                "--listen",
                "127.0.0.1:1",
                "--target",
                "127.0.0.1:2",
                "--idle-timeout",
                bad,
            ]
        )
        # A flag's value is the command line's mistake: exit 2 (1 is for config files).
        h.expect_eq(r.returncode, 2, f"exit status for --idle-timeout {bad}")
        h.expect(
            "--idle-timeout" in r.stderr and "1s to 6000s" in r.stderr,
            f"error for --idle-timeout {bad}: {r.stderr!r}",
        )
        h.expect_eq(len(r.stderr.strip().splitlines()), 1, "error lines")


if __name__ == "__main__":
    h.main()
