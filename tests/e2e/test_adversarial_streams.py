#!/usr/bin/env python3
"""Adversarial streams (issue #10): 200 concurrent full-duplex connections from
distinct sources under hostile pacing, and the half-close / reset matrix beside an
unrelated stream that must not notice.

Every stream is random bytes (slices of a seeded random pool at seeded offsets and
lengths), hashed with SHA-256 by its writer as it goes out and by its reader as it
comes in; the test owns both ends, so a lost, duplicated, reordered or corrupted
byte anywhere shows as a digest or count mismatch."""
import hashlib
import os
import random
import select
import socket
import sys
import threading
import time
import zlib

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

MIB = 1024 * 1024
KIB = 1024
POOL = random.Random(20261204).randbytes(8 * MIB)
POOL_VIEW = memoryview(POOL)
CONNECTIONS = 200
STREAM = 2 * MIB  # bytes each way per connection
LONG_TIMEOUT = 60.0  # per socket operation; the case deadline bounds all

threading.stack_size(512 * KIB)  # ~800 threads in the 200-connection cases


# ---------------------------------------------------------------------------------
# Writers and readers


def write_sizes(mode, total, rng):
    """The sizes of the writes that make up a stream of `total` bytes."""
    sizes = []
    left = total
    while left > 0:
        if mode == "bulk":
            n = rng.randrange(1, 256 * KIB)
        elif mode == "mixed":  # runs of 1-byte writes between 1 MiB writes
            if sizes and sizes[-1] != 1:
                sizes.extend([1] * min(left, rng.randrange(20, 100)))
                left = total - sum(sizes)
                continue
            n = MIB
        else:
            raise ValueError(mode)
        n = min(n, left)
        sizes.append(n)
        left -= n
    return sizes


def write_stream(sock, seed, mode, total):
    """Writes `total` random bytes in `mode`'s pattern; returns their SHA-256. Each
    write is one send() of the whole remaining slice (a 1 MiB write is one syscall
    that may go out partly)."""
    rng = random.Random(seed)
    digest = hashlib.sha256()
    if mode == "mixed":
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # 1-byte segments
    for n in write_sizes(mode, total, rng):
        off = rng.randrange(0, len(POOL) - n)
        view = POOL_VIEW[off : off + n]
        digest.update(view)
        while view:
            view = view[sock.send(view) :]
    return digest.hexdigest()


def read_stream(sock, mode, rng):
    """Reads to EOF; returns (count, SHA-256). `slow`: small reads with pauses and a
    small receive buffer, so the relay toward this reader is the bottleneck."""
    digest = hashlib.sha256()
    count = 0
    while True:
        if mode == "slow":
            chunk = sock.recv(rng.randrange(1, 8 * KIB))
            time.sleep(rng.choice((0, 0.001, 0.002)))
        else:
            chunk = sock.recv(256 * KIB)
        if not chunk:
            return count, digest.hexdigest()
        count += len(chunk)
        digest.update(chunk)


def duplex(sock, write_seed, write_mode, read_mode, total):
    """Writes a stream (then SHUT_WR) from a thread while reading the peer's to EOF.
    Returns (sent SHA-256, received count, received SHA-256)."""
    sent, errors = {}, []

    def writer():
        try:
            sent["sha"] = write_stream(sock, write_seed, write_mode, total)
            sock.shutdown(socket.SHUT_WR)
        except BaseException as e:  # reported below
            errors.append(e)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        count, digest = read_stream(sock, read_mode, random.Random(write_seed ^ 0x5EED))
    finally:
        t.join(LONG_TIMEOUT)
    if errors:
        raise h.Failure(f"writing failed: {errors[0]!r}")
    h.expect(not t.is_alive(), "the writer was still sending after the reader saw EOF")
    return sent["sha"], count, digest


# ---------------------------------------------------------------------------------
# 200 connections

VARIANTS = {
    # name: (client writes, client reads, backend writes, backend reads)
    "plain": ("bulk", "fast", "bulk", "fast"),
    "slow-backend": ("bulk", "fast", "bulk", "slow"),
    "slow-client": ("bulk", "slow", "bulk", "fast"),
    "mixed-writes": ("mixed", "fast", "mixed", "fast"),
}


def start_duplex_backend(records):
    """A stub backend: first line '<key> <variant>', then its own random stream while
    it reads the client's; records[key] = (sent sha, received count, received sha)."""
    lock = threading.Lock()

    def handler(conn):
        conn.settimeout(LONG_TIMEOUT)
        try:
            key, variant = h.recv_line(conn).split()
        except (h.Failure, OSError):
            return None  # stickyd's readiness probe
        _, _, write_mode, read_mode = VARIANTS[variant]
        if read_mode == "slow":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KIB)
        result = duplex(conn, seed_of(key, "backend"), write_mode, read_mode, STREAM)
        with lock:
            records[key] = result
        return key

    return h.PyServer(handler)


def seed_of(key, side):
    return zlib.crc32(f"{key}/{side}".encode())


def two_hundred_connections(variant):
    records = {}
    server = start_duplex_backend(records)
    lb = h.lb_addr()
    h.start_stickyd(
        h.config_text(
            [{"bind": h.fmt_addr(lb), "target_group": "stub"}],
            [
                {
                    "name": "stub",
                    "connect_timeout": "5s",
                    "targets": [{"id": "stub", "address": server.address}],
                }
            ],
        ),
        addr=lb,
    )
    client_write, client_read, _, _ = VARIANTS[variant]
    ips = h.source_ips(CONNECTIONS)
    start = threading.Barrier(CONNECTIONS, timeout=LONG_TIMEOUT)

    def job(i):
        key = f"{variant}-{i}"
        with h.connect(lb, ips[i], timeout=LONG_TIMEOUT) as s:
            if client_read == "slow":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KIB)
            h.send_all(s, f"{key} {variant}\n".encode())
            start.wait()  # all 200 open before any data
            return key, duplex(s, seed_of(key, "client"), client_write, client_read, STREAM)

    results = h.run_parallel([lambda i=i: job(i) for i in range(CONNECTIONS)], timeout=150)
    for _ in results:
        server.result(timeout=LONG_TIMEOUT)
    bad = []
    for key, (c_sent, c_count, c_got) in results:
        b_sent, b_count, b_got = records[key]
        if (b_count, b_got) != (STREAM, c_sent):
            bad.append(
                f"{key} client->backend: {b_count} bytes, sha {b_got[:12]} "
                f"(sent {STREAM}, sha {c_sent[:12]})"
            )
        if (c_count, c_got) != (STREAM, b_sent):
            bad.append(
                f"{key} backend->client: {c_count} bytes, sha {c_got[:12]} "
                f"(sent {STREAM}, sha {b_sent[:12]})"
            )
    h.expect(not bad, f"{len(bad)} of {2 * CONNECTIONS} streams damaged: {bad[:5]}")


def test_200_connections_2_mib_each_way_plain():
    two_hundred_connections("plain")


def test_200_connections_2_mib_each_way_slow_reading_backend():
    two_hundred_connections("slow-backend")


def test_200_connections_2_mib_each_way_slow_reading_client():
    two_hundred_connections("slow-client")


def test_200_connections_2_mib_each_way_mixed_1_byte_and_1_mib_writes():
    two_hundred_connections("mixed-writes")


# ---------------------------------------------------------------------------------
# The half-close and reset matrix


def pump(sock, seed, stop_after, timeout=h.IO_TIMEOUT):
    """Sends random bytes and reads whatever comes, in one thread (so the first error
    of the socket is seen by whichever call meets it), until the peer ends the
    connection or, with stop_after, until both `stop_after` bytes were sent and
    received. Returns (outcome, sent, received): 'reset', 'eof', 'enough' or
    'timeout'."""
    rng = random.Random(seed)
    sock.setblocking(False)
    sent = got = 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if stop_after is not None and sent >= stop_after and got >= stop_after:
                return "enough", sent, got
            readable, writable, _ = select.select([sock], [sock], [], 0.2)
            try:
                if readable:
                    chunk = sock.recv(64 * KIB)
                    if not chunk:
                        return "eof", sent, got
                    got += len(chunk)
                if writable:
                    off = rng.randrange(0, len(POOL) - 64 * KIB)
                    sent += sock.send(POOL_VIEW[off : off + 64 * KIB])
            except BlockingIOError:
                pass
            except ConnectionResetError:
                return "reset", sent, got
        return "timeout", sent, got
    finally:
        sock.setblocking(True)
        sock.settimeout(h.IO_TIMEOUT)


def read_until_end(sock, timeout=h.IO_TIMEOUT):
    """Reads until the peer ends the connection: ('reset' or 'eof', bytes read), or
    ('timeout', bytes read)."""
    sock.settimeout(timeout)
    got = 0
    try:
        while True:
            chunk = sock.recv(64 * KIB)
            if not chunk:
                return "eof", got
            got += len(chunk)
    except ConnectionResetError:
        return "reset", got
    except socket.timeout:
        return "timeout", got


def send_part(sock, seed, total, digest):
    rng = random.Random(seed)
    left = total
    while left:
        n = min(left, rng.randrange(1, 128 * KIB))
        off = rng.randrange(0, len(POOL) - n)
        digest.update(POOL_VIEW[off : off + n])
        h.send_all(sock, POOL_VIEW[off : off + n])
        left -= n


def in_thread(fn):
    """Runs fn in a thread; returns join() -> fn's result (re-raising its error)."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def join():
        t.join(LONG_TIMEOUT)
        h.expect(not t.is_alive(), f"{fn} still running after {LONG_TIMEOUT}s")
        if "error" in box:
            raise box["error"]
        return box["value"]

    return join


PART = 1 * MIB


def matrix_backend(case, key, conn):
    """The backend's half of each case; returns what it observed."""
    seed = zlib.crc32(key.encode())
    if case == "client-fin-first":
        # Streams part 1 while the client streams at it; once the client's FIN
        # arrives, streams part 2 (the direction still open), then its own FIN.
        sent = hashlib.sha256()
        first = in_thread(lambda: send_part(conn, seed, PART, sent))
        got = hashlib.sha256()
        count = h.recv_until_eof(conn, got)
        first()
        send_part(conn, seed + 1, PART, sent)
        conn.shutdown(socket.SHUT_WR)
        return count, got.hexdigest(), sent.hexdigest()
    if case == "backend-fin-first":
        sent = hashlib.sha256()
        send_part(conn, seed, PART, sent)
        conn.shutdown(socket.SHUT_WR)  # while the client still streams
        got = hashlib.sha256()
        count = h.recv_until_eof(conn, got)
        return count, got.hexdigest(), sent.hexdigest()
    if case == "client-rst":
        return pump(conn, seed, stop_after=None)
    if case == "backend-rst":
        outcome = pump(conn, seed, stop_after=512 * KIB)
        h.set_linger_zero(conn)  # PyServer closes it: RST
        return outcome
    if case == "client-fin-then-backend-rst":
        # The client's direction has ended; ours is mid-stream when we reset.
        count = h.recv_until_eof(conn)
        send_part(conn, seed, 512 * KIB, hashlib.sha256())
        h.set_linger_zero(conn)
        return "sent", count
    if case == "backend-fin-then-client-rst":
        send_part(conn, seed, 256 * KIB, hashlib.sha256())
        conn.shutdown(socket.SHUT_WR)
        return read_until_end(conn)
    raise ValueError(case)


def matrix_client(case, key, s):
    """The client's half; returns what it observed."""
    seed = zlib.crc32(key.encode()) ^ 0xC11E
    if case == "client-fin-first":
        sent = hashlib.sha256()
        first = in_thread(lambda: send_part(s, seed, PART, sent))
        got = hashlib.sha256()
        # Part 1 of the backend's stream, then its part 2 after our FIN, then EOF.
        reader = in_thread(lambda: (h.recv_until_eof(s, got), got.hexdigest()))
        first()
        s.shutdown(socket.SHUT_WR)
        count, digest = reader()
        return count, digest, sent.hexdigest()
    if case == "backend-fin-first":
        sent = hashlib.sha256()
        first = in_thread(lambda: send_part(s, seed, PART, sent))
        got = hashlib.sha256()
        count = h.recv_until_eof(s, got)  # the backend's FIN, forwarded
        first()
        send_part(s, seed + 1, PART, sent)  # our direction still flows
        s.shutdown(socket.SHUT_WR)
        return count, got.hexdigest(), sent.hexdigest()
    if case == "client-rst":
        outcome = pump(s, seed, stop_after=512 * KIB)
        h.set_linger_zero(s)
        s.close()  # RST, mid-stream both ways
        return outcome
    if case == "backend-rst":
        return pump(s, seed, stop_after=None)
    if case == "client-fin-then-backend-rst":
        send_part(s, seed, 256 * KIB, hashlib.sha256())
        s.shutdown(socket.SHUT_WR)
        return read_until_end(s)
    if case == "backend-fin-then-client-rst":
        count = h.recv_until_eof(s)  # the backend's direction ended
        send_part(s, seed, 512 * KIB, hashlib.sha256())
        h.set_linger_zero(s)
        s.close()
        return "sent", count
    raise ValueError(case)


MATRIX = (
    "client-fin-first",
    "backend-fin-first",
    "client-rst",
    "backend-rst",
    "client-fin-then-backend-rst",
    "backend-fin-then-client-rst",
)


class Bystander:
    """An unrelated connection through the same worker that streams random chunks
    to stickyd-echo and checks each echo, from before the matrix until after it."""

    def __init__(self, lb):
        self.sock = h.connect(lb, "127.0.0.250", timeout=LONG_TIMEOUT)
        h.on_cleanup(self.sock.close)
        self.sent, self.got = hashlib.sha256(), hashlib.sha256()
        self.count = 0
        self.stop = threading.Event()
        self.join = in_thread(self._run)

    def _run(self):
        rng = random.Random(77)
        while not self.stop.is_set():
            n = rng.randrange(1, 64 * KIB)
            off = rng.randrange(0, len(POOL) - n)
            chunk = POOL_VIEW[off : off + n]
            self.sent.update(chunk)
            h.send_all(self.sock, chunk)
            self.got.update(h.recv_exact(self.sock, n))
            self.count += n
            time.sleep(0.002)
        self.sock.shutdown(socket.SHUT_WR)
        return h.recv_until_eof(self.sock)

    def moved_since(self, before, what):
        h.wait_for(
            f"the bystander to move data during {what}",
            lambda: self.count > before,
            timeout=h.IO_TIMEOUT,
        )

    def finish(self):
        self.stop.set()
        trailing = self.join()
        h.expect_eq(trailing, 0, "bytes after the bystander's echo ended")
        h.expect_eq(
            self.got.hexdigest(),
            self.sent.hexdigest(),
            f"SHA-256 of the bystander's {self.count} echoed bytes",
        )


def test_half_close_and_reset_matrix_beside_an_unrelated_stream():
    records = {}

    def handler(conn):
        conn.settimeout(h.IO_TIMEOUT)
        try:
            case, key = h.recv_line(conn).split()
        except (h.Failure, OSError):
            return None
        records[key] = matrix_backend(case, key, conn)
        return key

    server = h.PyServer(handler)
    echo = h.start_backend("echo")
    lb, echo_lb = h.lb_addr(), h.lb_addr()
    # One worker: every connection of the case shares the bystander's loop.
    stickyd = h.start_stickyd(
        h.config_text(
            [
                {"bind": h.fmt_addr(lb), "target_group": "stub"},
                {"bind": h.fmt_addr(echo_lb), "target_group": "echo"},
            ],
            [
                {"name": "stub", "targets": [{"id": "stub", "address": server.address}]},
                {"name": "echo", "targets": [{"id": "echo", "address": echo.address}]},
            ],
            {"threads": 1},
        ),
        addr=lb,
    )
    h.wait_accepting(echo_lb)
    bystander = Bystander(echo_lb)
    bystander.moved_since(0, "start-up")
    ips = h.source_ips(3 * len(MATRIX), first=100)

    def job(i):
        case = MATRIX[i % len(MATRIX)]
        key = f"{case}-{i}"
        with h.connect(lb, ips[i]) as s:
            h.send_all(s, f"{case} {key}\n".encode())
            return case, key, matrix_client(case, key, s)

    for round_ in range(2):
        before = bystander.count
        results = h.run_parallel([lambda i=i: job(i) for i in range(3 * len(MATRIX))], timeout=60)
        for _ in results:
            server.result()
        bystander.moved_since(before, f"round {round_ + 1} of the matrix")
        for case, key, client in results:
            backend = records[key]
            if case in ("client-fin-first", "backend-fin-first"):
                c_count, c_got, c_sent = client
                b_count, b_got, b_sent = backend
                h.expect_eq(
                    (b_count, b_got),
                    (2 * PART if case == "backend-fin-first" else PART, c_sent),
                    f"{key}: what the backend received",
                )
                h.expect_eq(
                    (c_count, c_got),
                    (2 * PART if case == "client-fin-first" else PART, b_sent),
                    f"{key}: what the client received",
                )
            elif case == "client-fin-then-backend-rst":
                h.expect_eq(backend, ("sent", 256 * KIB), f"{key}: the backend's side")
                h.expect_eq(
                    client[0],
                    "reset",
                    f"{key}: how the client, half-closed, saw the "
                    f"backend's RST (after {client[1]} bytes)",
                )
            elif case == "backend-fin-then-client-rst":
                h.expect_eq(client, ("sent", 256 * KIB), f"{key}: the client's side")
                h.expect_eq(
                    backend[0],
                    "reset",
                    f"{key}: how the backend, half-closed, saw "
                    f"the client's RST (after {backend[1]} bytes)",
                )
            elif case == "client-rst":
                h.expect_eq(client[0], "enough", f"{key}: the client's streaming before its RST")
                h.expect_eq(
                    backend[0],
                    "reset",
                    f"{key}: how the backend saw the client's RST " f"(after {backend[2]} bytes)",
                )
            else:
                h.expect_eq(backend[0], "enough", f"{key}: the backend's streaming before its RST")
                h.expect_eq(
                    client[0],
                    "reset",
                    f"{key}: how the client saw the backend's RST " f"(after {client[2]} bytes)",
                )
    bystander.finish()
    h.expect(stickyd.process.alive(), "stickyd exited")


if __name__ == "__main__":
    h.main(deadline=170)
