#!/usr/bin/env python3
"""Graceful shutdown: on SIGTERM or SIGINT stickyd stops accepting at once, lets open
connections finish, and exits 0 when the last one closes, or closes what is left at
the shutdown_grace deadline and still exits 0."""
import hashlib
import os
import signal
import socket
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

KIB = 1024


def start(grace):
    backend = h.start_backend("echo")
    lb = h.lb_addr()
    lb_process = h.start_stickyd(
        h.simple_config(h.fmt_addr(lb), [backend], global_={"shutdown_grace": grace, "threads": 2}),
        addr=lb,
    ).process
    return lb, lb_process


def wait_refused(addr, timeout=10.0):
    """Connects until the listener is gone. Each success is closed at once.

    A reset is not the end yet: it is what a connection gets that was in the
    accept queue of a listener being closed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with h.connect(addr, timeout=1.0):
                pass
        except ConnectionRefusedError:
            return
        except ConnectionResetError:
            pass
        time.sleep(0.02)
    raise h.Failure(f"{h.fmt_addr(addr)} still accepted connections {timeout}s after the signal")


def open_connection_survives(sig):
    lb, proc = start(grace="30s")
    s = h.connect(lb, "127.0.0.2")
    h.on_cleanup(s.close)
    sent, got = hashlib.sha256(), hashlib.sha256()
    received = 0
    first = h.random_payload(64 * KIB, seed=1)
    h.send_all(s, first)
    sent.update(first)
    got.update(h.recv_exact(s, len(first)))
    received += len(first)

    proc.signal(sig)
    wait_refused(lb)
    h.expect(
        proc.alive(),
        f"stickyd exited on {sig.name} with a connection still open\n" f"{proc.describe()}",
    )

    # The connection keeps working after the signal: a slow transfer in pieces.
    for i in range(10):
        piece = h.random_payload(32 * KIB, seed=10 + i)
        h.send_all(s, piece)
        sent.update(piece)
        got.update(h.recv_exact(s, len(piece)))
        received += len(piece)
        time.sleep(0.05)
    h.expect_eq(got.hexdigest(), sent.hexdigest(), f"SHA-256 of {received} echoed bytes")
    h.expect(proc.alive(), "stickyd exited while a connection was still open")
    # Client FIN -> backend echoes the rest and FINs -> the proxied connection is over.
    s.shutdown(socket.SHUT_WR)
    h.expect_eq(h.recv_until_eof(s), 0, "bytes after the final echo")
    s.close()
    # The grace period is 30 s; the exit must come when the connection closes.
    status = proc.wait(15)
    h.expect(
        status is not None,
        f"stickyd still running 15s after its last connection closed "
        f"(shutdown_grace is 30s)\n{proc.describe()}",
    )
    h.expect_eq(status, 0, f"exit status after {sig.name}")


def test_sigterm_lets_open_connections_finish():
    open_connection_survives(signal.SIGTERM)


def test_sigint_lets_open_connections_finish():
    open_connection_survives(signal.SIGINT)


def test_idle_stop_exits_zero():
    lb, proc = start(grace="30s")
    h.expect_eq(h.whoami("127.0.0.3", lb), "echo", "a request before the signal")
    proc.signal(signal.SIGTERM)
    status = proc.wait(10)
    h.expect(
        status is not None,
        f"stickyd with no connections still running 10s after SIGTERM\n" f"{proc.describe()}",
    )
    h.expect_eq(status, 0, "exit status")


def test_grace_deadline_closes_held_connections():
    lb, proc = start(grace="1s")
    held = []
    for i in range(3):
        s = h.connect(lb, f"127.0.0.{10 + i}")
        h.on_cleanup(s.close)
        h.send_all(s, b"STICKYD-TEST WHOAMI\n")
        h.expect_eq(h.recv_line(s).split()[0], "echo", "WHOAMI before the signal")
        held.append(s)
    proc.signal(signal.SIGTERM)
    for s in held:
        how = h.wait_closed(s, timeout=15)
        h.expect(how in ("eof", "reset"), f"held connection ended with {how}")
    status = proc.wait(10)
    h.expect(
        status is not None,
        f"stickyd still running after closing held connections\n" f"{proc.describe()}",
    )
    h.expect_eq(status, 0, "exit status after the grace deadline")


def test_second_signal_closes_everything_now():
    lb, proc = start(grace="60s")
    s = h.connect(lb, "127.0.0.20")
    h.on_cleanup(s.close)
    h.send_all(s, b"STICKYD-TEST HOLD\n")
    proc.signal(signal.SIGTERM)
    wait_refused(lb)
    h.expect(proc.alive(), "stickyd exited on the first SIGTERM with a connection open")
    proc.signal(signal.SIGTERM)
    how = h.wait_closed(s, timeout=15)
    h.expect(how in ("eof", "reset"), f"held connection ended with {how}")
    status = proc.wait(10)
    h.expect(
        status is not None,
        f"stickyd still running after a second SIGTERM (grace 60s)\n" f"{proc.describe()}",
    )
    h.expect_eq(status, 0, "exit status after a second SIGTERM")


def test_sighup_does_not_stop_the_daemon():
    lb, proc = start(grace="5s")
    before = h.whoami("127.0.0.21", lb)
    proc.signal(signal.SIGHUP)
    time.sleep(0.3)  # lets a mishandled SIGHUP take effect before we look
    h.expect_eq(h.whoami("127.0.0.21", lb), before, "answer after SIGHUP")
    h.expect(proc.alive(), f"stickyd exited on SIGHUP\n{proc.describe()}")


if __name__ == "__main__":
    h.main()
