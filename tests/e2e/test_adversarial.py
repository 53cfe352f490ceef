#!/usr/bin/env python3
"""Adversarial clients (issue #10): what a hostile client can do to the data path.

Slowloris on a PROXY-protocol listener, PROXY v2 headers that announce more than
they send, a storm of connections reset at once, a client that never reads while
its backend floods, and a client whose FIN arrives before stickyd has a target.
Each case checks that stickyd keeps serving others, closes what it should when it
should, and gives back every descriptor and byte of memory it took."""
import errno
import hashlib
import os
import random
import re
import selectors
import socket
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

KIB = 1024
MIB = 1024 * KIB


def start_lb(targets, *flags, threads=2):
    lb = h.lb_addr()
    args = ["--listen", h.fmt_addr(lb), "--threads", str(threads), *flags]
    for t in targets:
        args += ["--target", t]
    # Every case here measures stickyd's memory or leans on it.
    return lb, h.start_stickyd(args=args, addr=lb, env=h.measured_memory_env())


def memory(pid):
    """(VmRSS, Private_Dirty) of a process, in bytes."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                values["rss"] = int(line.split()[1]) * 1024
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Private_Dirty:"):
                values["dirty"] = int(line.split()[1]) * 1024
    return values["rss"], values["dirty"]


def established_to(port):
    """Connections in any state but LISTEN/TIME-WAIT whose remote end is port."""
    r = h.run(["ss", "-Htan", f"( dport = :{port} )"])
    h.expect_eq(r.returncode, 0, f"ss exit status ({r.stderr.strip()})")
    return [
        line
        for line in r.stdout.splitlines()
        if line.split() and line.split()[0] not in ("TIME-WAIT", "LISTEN")
    ]


def log_lines(process):
    return len(process.process.log().splitlines())


# ---------------------------------------------------------------------------------
# Slowloris on the PROXY-protocol listener

SLOW_CLIENTS = 300
HEADER_TIMEOUT = 5.0


def test_slowloris_on_the_proxy_listener_does_not_stop_a_real_client():
    # 300 clients send a v1 header one byte per second. A client with a whole header
    # is served while all 300 are still held; each slow one is closed at its header
    # deadline (never before: the deadline starts at accept, after its connect
    # returned), and stickyd ends with the descriptors it started with.
    h.need_open_files(4096)
    backend = h.start_backend("echo")
    lb, stickyd = start_lb(
        [backend.address],
        "--accept-proxy-protocol",
        "--proxy-protocol-timeout",
        f"{int(HEADER_TIMEOUT)}s",
    )
    pid = stickyd.process.pid
    baseline = h.resting_fd_count(stickyd.process)
    header = h.proxy_v1_header(("203.0.113.9", 4321), lb)
    ips = h.source_ips(50, first=2)
    slow, opened_at, closed_at = [], {}, {}
    try:
        for i in range(SLOW_CLIENTS):
            s = h.connect(lb, ips[i % len(ips)])
            opened_at[s] = time.monotonic()
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.send(header[:1])
            slow.append(s)
        sel = selectors.DefaultSelector()
        for s in slow:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        stop = threading.Event()

        def drip():  # one more byte a second
            sent = 1
            while not stop.wait(1.0):
                for s in slow:
                    if s not in closed_at and sent < len(header) - 2:
                        try:
                            s.send(header[sent : sent + 1])
                        except OSError:
                            pass
                sent += 1

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()

        def watch(timeout):
            for key, _ in sel.select(timeout):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except (ConnectionResetError, BlockingIOError):
                    data = b""
                if not data:
                    closed_at[s] = time.monotonic()
                    sel.unregister(s)

        # A real client, several times, while every slow one is held.
        for k in range(10):
            status, name = h.http_get(lb, src_ip=ips[k], preamble=header, timeout=5.0)
            h.expect_eq((status, name), (200, "echo"), f"request {k} during the slowloris")
        watch(0)
        held = h.fd_count(pid)
        h.expect(
            not closed_at and held >= baseline + SLOW_CLIENTS,
            f"the real client was served only after slow clients were let go: "
            f"{len(closed_at)} closed, stickyd holds {held} fds (baseline {baseline})",
        )

        deadline = time.monotonic() + HEADER_TIMEOUT + 15
        while len(closed_at) < SLOW_CLIENTS and time.monotonic() < deadline:
            watch(0.2)
        stop.set()
        dripper.join(5)
        h.expect_eq(len(closed_at), SLOW_CLIENTS, "slow clients closed by stickyd")
        early = [
            closed_at[s] - opened_at[s]
            for s in slow
            if closed_at[s] - opened_at[s] < HEADER_TIMEOUT - 0.05
        ]
        h.expect(
            not early,
            f"{len(early)} slow clients closed before their header deadline: "
            f"after {sorted(early)[:5]} s",
        )
    finally:
        for s in slow:
            s.close()
    h.expect(
        re.search(r"no complete PROXY header within 5000 ms", stickyd.process.log()),
        "no timeout warning logged",
    )
    after = h.settled_fd_count(pid, at_most=baseline)
    h.expect(
        after <= baseline,
        f"stickyd holds {after} fds after the slowloris " f"(baseline {baseline})",
    )
    h.expect_eq(
        h.http_get(lb, src_ip="127.0.0.2", preamble=header),
        (200, "echo"),
        "a request after the slowloris",
    )


# ---------------------------------------------------------------------------------
# PROXY v2 headers that announce more than they send


def v2_fixed(length, family_proto=0x11):
    return h.PROXY_V2_SIGNATURE + bytes([0x21, family_proto]) + length.to_bytes(2, "big")


def test_proxy_v2_lengths_beyond_the_limit_are_refused_at_once():
    # The header timeout is 30 s; each of these must be refused long before it, by
    # what the bytes say, and none may cost stickyd memory or descriptors.
    backend = h.start_backend("echo")
    lb, stickyd = start_lb(
        [backend.address], "--accept-proxy-protocol", "--proxy-protocol-timeout", "30s"
    )
    pid = stickyd.process.pid
    baseline = h.resting_fd_count(stickyd.process)
    addresses = bytes(12)
    cases = [
        # 64 KiB announced, nothing more sent.
        ("length 65535", v2_fixed(0xFFFF), r"header longer than \d+ bytes"),
        # A length under the limit whose one TLV claims 64 KiB.
        (
            "TLV overrun",
            v2_fixed(12 + 3 + 100) + addresses + b"\x04\xff\xff" + bytes(100),
            r"v2 TLV overruns the header",
        ),
    ]
    for what, data, pattern in cases:
        # A daemon each: warnings are limited to one a second.
        _, one = start_lb(
            [backend.address], "--accept-proxy-protocol", "--proxy-protocol-timeout", "30s"
        )
        with h.connect(one.addr, "127.0.0.2") as s:
            h.send_all(s, data)
            h.expect(h.wait_closed(s, timeout=10) in ("eof", "reset"), f"{what}: still open")
        h.wait_for(
            f"a warning for {what}", lambda: re.search(pattern, one.process.log()), timeout=10
        )

    # 500 at once, each announcing 4000 bytes and sending 3000: all held until the
    # deadline would be 1.5 MB of header bytes; RSS must stay far below 64 KiB each.
    h.need_open_files(4096)
    rss0, _ = memory(pid)
    held = []
    try:
        for i in range(500):
            s = h.connect(lb, f"127.0.1.{2 + i % 200}")
            h.send_all(s, v2_fixed(4000) + addresses + bytes(2988))
            held.append(s)
        h.wait_for(
            "stickyd to read the 500 partial headers",
            lambda: h.fd_count(pid) >= baseline + 500,
            timeout=10,
        )
        rss1, _ = memory(pid)
        h.expect(
            rss1 - rss0 < 500 * 16 * KIB, f"stickyd grew by {rss1 - rss0} B for 500 partial headers"
        )
        status, name = h.http_get(
            lb, src_ip="127.0.0.3", preamble=h.proxy_v2_header(("127.0.0.9", 1), lb)
        )
        h.expect_eq((status, name), (200, "echo"), "a request beside 500 partial headers")
    finally:
        for s in held:
            h.set_linger_zero(s)
            s.close()
    after = h.settled_fd_count(pid, at_most=baseline)
    h.expect(after <= baseline, f"stickyd holds {after} fds, baseline {baseline}")


# ---------------------------------------------------------------------------------
# 10,000 connections reset at once


def rst_storm(lb, count, first_bytes):
    """count connections from 8 threads, each closed with an RST right after
    connect (after sending first_bytes(i), if any). Returns how many connected."""
    done = [0] * 8
    ips = h.source_ips(64, first=10)

    def worker(k):
        for i in range(k, count, 8):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.settimeout(h.IO_TIMEOUT)
                s.bind((ips[i % len(ips)], 0))
                s.connect(lb)
                data = first_bytes(i)
                if data:
                    s.send(data)
                h.set_linger_zero(s)
                done[k] += 1
            finally:
                s.close()

    h.run_parallel([lambda k=k: worker(k) for k in range(8)], timeout=80)
    return sum(done)


def test_ten_thousand_instant_resets_leave_nothing_behind():
    h.need_open_files(4096)
    backend = h.start_backend("echo")
    lb, stickyd = start_lb([backend.address])
    plb, pstickyd = start_lb([backend.address], "--accept-proxy-protocol")
    pids = (stickyd.process.pid, pstickyd.process.pid)
    base_fds = [h.resting_fd_count(s.process) for s in (stickyd, pstickyd)]
    base_mem = [memory(p) for p in pids]
    base_lines = [log_lines(s) for s in (stickyd, pstickyd)]
    header = h.proxy_v2_header(("198.51.100.1", 1), plb)

    # Plain: nothing sent, or a few bytes and then RST, alternately.
    n = rst_storm(lb, 6000, lambda i: b"x" * (i % 3))
    # PROXY listener: no header, half a header, a whole header (+ data), then RST.
    n += rst_storm(plb, 4000, lambda i: (b"", header[:10], header, header + b"hi")[i % 4])
    h.expect_eq(n, 10000, "connections made")

    for label, s, pid, fds, mem, lines in zip(
        ("plain", "proxy"), (stickyd, pstickyd), pids, base_fds, base_mem, base_lines
    ):
        h.expect(s.process.alive(), f"{label} stickyd died\n{s.describe()}")
        after = h.settled_fd_count(pid, at_most=fds)
        h.expect(
            after <= fds, f"{label}: stickyd holds {after} fds after the storm " f"(baseline {fds})"
        )
        rss, dirty = memory(pid)
        h.expect(
            dirty - mem[1] < 8 * MIB,
            f"{label}: Private_Dirty grew from {mem[1]} to "
            f"{dirty} B over 5000 reset connections",
        )
        extra = log_lines(s) - lines
        h.expect(
            extra < 20,
            f"{label}: {extra} log lines for the storm:\n"
            + "\n".join(s.process.log().splitlines()[-5:]),
        )
    # Nothing left open toward the backend either (stickyd resets or closes its side).
    h.wait_for(
        "no connection to the backend left open",
        lambda: not established_to(backend.addr[1]),
        timeout=15,
    )
    h.expect_eq(h.whoami("127.0.0.2", lb), "echo", "plain listener after the storm")
    h.expect_eq(
        h.http_get(plb, src_ip="127.0.0.2", preamble=header),
        (200, "echo"),
        "PROXY listener after the storm",
    )


# ---------------------------------------------------------------------------------
# A client that never reads while its backend floods


def test_a_client_that_never_reads_stalls_its_backend_without_growing_memory():
    # The mirror of test_integrity's silent backend: up to 20 backends' streams at as
    # many clients that read nothing. stickyd must stop reading the backends once the
    # clients' buffers are full (so the backends' sends stall), hold no more than its
    # buffers meanwhile, then deliver every byte once the clients read.
    # Each stream must be longer than all that the path can hold without anyone
    # reading, or a stream may fit whole and the stall not show: the backend's send
    # buffer, stickyd's receive buffer (autotuned up to tcp_rmem's maximum while it
    # reads fast, before the client's buffers fill), a spliced flow's 1 MiB pipe,
    # stickyd's send buffer and the client's 64 KiB. Fewer clients when that is
    # long, so the whole test moves about as many bytes as ever.
    with open("/proc/sys/net/ipv4/tcp_wmem") as f:
        wmem_max = int(f.read().split()[2])
    with open("/proc/sys/net/ipv4/tcp_rmem") as f:
        rmem_max = int(f.read().split()[2])
    size = max(10 * 1000 * 1000, 2 * wmem_max + rmem_max + 4 * MIB)
    clients = max(4, min(20, 200 * 1000 * 1000 // size))
    pool = random.Random(31).randbytes(4 * MIB)
    pushed = {}

    def handler(conn):
        try:
            key = h.recv_line(conn)
        except (h.Failure, OSError):
            return None
        conn.settimeout(90)
        rng = random.Random(key)
        digest = hashlib.sha256()
        pushed[key] = 0
        while pushed[key] < size:
            n = min(rng.randrange(1, 256 * KIB), size - pushed[key])
            off = rng.randrange(0, len(pool) - n)
            view = memoryview(pool)[off : off + n]
            digest.update(view)
            while view:
                k = conn.send(view)
                pushed[key] += k
                view = view[k:]
        conn.shutdown(socket.SHUT_WR)
        return key, digest.hexdigest()

    server = h.PyServer(handler)
    lb, stickyd = start_lb([server.address])
    pid = stickyd.process.pid
    base = memory(pid)[1]
    ips = h.source_ips(clients, first=140)
    socks = []
    for i in range(clients):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        h.on_cleanup(s.close)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KIB)
        s.settimeout(90)
        s.bind((ips[i], 0))
        s.connect(lb)
        h.send_all(s, f"flood-{i}\n".encode())
        socks.append(s)
    h.wait_for(f"all {clients} backend connections", lambda: len(pushed) == clients, timeout=20)

    def stalled():
        before = sum(pushed.values())
        time.sleep(0.5)
        return sum(pushed.values()) == before

    h.wait_for("the backends' sends to stall", stalled, timeout=30)
    sent_1, mem_1 = sum(pushed.values()), memory(pid)[1]
    time.sleep(1.5)
    sent_2, mem_2 = sum(pushed.values()), memory(pid)[1]
    h.expect(sent_2 < clients * size, "every backend got all its bytes out with nobody reading")
    h.expect(
        sent_2 - sent_1 < MIB,
        f"backends kept sending to clients that read nothing: " f"{sent_1} then {sent_2} bytes",
    )
    h.expect(mem_2 - mem_1 < MIB, f"stickyd grew from {mem_1} to {mem_2} B while stalled")
    bound = clients * 2 * 32 * KIB + 8 * MIB
    h.expect(
        mem_2 - base < bound,
        f"stickyd holds {mem_2 - base} B more than before "
        f"{clients} stalled clients (backends pushed {sent_2} B)",
    )

    def drain(i):
        got = hashlib.sha256()
        count = h.recv_until_eof(socks[i], got)
        return f"flood-{i}", count, got.hexdigest()

    received = h.run_parallel([lambda i=i: drain(i) for i in range(clients)], timeout=80)
    sent = dict(server.result(timeout=60) for _ in range(clients))
    for key, count, digest in received:
        h.expect_eq((count, digest), (size, sent[key]), f"{key}: bytes and SHA-256 received")


# ---------------------------------------------------------------------------------
# A FIN before there is a target


def test_fin_before_the_target_connect_still_gets_the_reply():
    # The client sends its request and FIN in the same moment it connects (with a
    # PROXY header too, on the second listener): stickyd reads EOF before its own
    # connect to the target completes. The FIN must reach the target after the
    # request, and the target's reply must still reach the client.
    def handler(conn):
        got = hashlib.sha256()
        try:
            count = h.recv_until_eof(conn, got)
        except OSError:
            return None
        if count == 0:
            return None  # a readiness probe
        h.send_all(conn, f"{count} {got.hexdigest()}\n".encode())
        return count

    server = h.PyServer(handler)
    lb, _ = start_lb([server.address])
    plb, _ = start_lb([server.address], "--accept-proxy-protocol")
    for k in range(40):
        proxied = k % 2 == 1
        target = plb if proxied else lb
        payload = h.random_payload(1 + k * 997, seed=k)
        preamble = h.proxy_v1_header(("192.0.2.1", 9), plb) if proxied else b""
        with h.connect(target, f"127.0.0.{2 + k}") as s:
            s.sendall(preamble + payload)
            s.shutdown(socket.SHUT_WR)
            reply = h.recv_line(s)
            h.expect_eq(h.wait_closed(s), "eof", f"connection {k}: end after the reply")
        h.expect_eq(
            reply,
            f"{len(payload)} {h.sha256(payload)}",
            f"connection {k} ({'PROXY' if proxied else 'plain'}): what the target saw",
        )
        h.expect_eq(server.result(), len(payload), f"connection {k}: the target's count")


# ---------------------------------------------------------------------------------
# A reset from the side stickyd is not reading


def socket_error(sock):
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)


def stalled_then_reset(direction):
    """One connection whose receiver reads nothing until the sender's stream stalls
    in the buffers; then the sender resets. stickyd has no recv posted on the sender
    (a side is not read while its peer's send is pending), but the receiver must still
    learn of the reset, and stickyd must give back both descriptors, within a bounded
    time, not when the idle timeout (350 s) ends the pair."""
    conns = []
    pool = random.Random(8).randbytes(MIB)

    def flood(sock, stop):
        sock.setblocking(False)
        sent = 0
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 1.0 and not stop.is_set():
            try:
                sent += sock.send(pool)
                quiet_since = time.monotonic()
            except BlockingIOError:
                time.sleep(0.05)
        sock.setblocking(True)
        return sent

    def handler(conn):
        try:
            h.recv_line(conn)
        except (h.Failure, OSError):
            return None
        conns.append(conn)
        if direction != "backend-rst":  # the backend reads nothing
            return wait_reset(conn)
        sent = flood(conn, threading.Event())  # the backend floods, then resets
        h.set_linger_zero(conn)
        return f"reset after {sent} bytes"

    def wait_reset(sock):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            # ECONNRESET; EPIPE once the socket had seen the peer's FIN.
            if socket_error(sock) in (errno.ECONNRESET, errno.EPIPE):
                return "reset"
            time.sleep(0.05)
        return "no reset"

    server = h.PyServer(handler)
    lb, stickyd = start_lb([server.address])
    pid = stickyd.process.pid
    baseline = h.resting_fd_count(stickyd.process)
    s = h.connect(lb, "127.0.0.2")
    h.on_cleanup(s.close)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KIB)
    h.send_all(s, b"hello\n")
    h.wait_for("the backend connection", lambda: conns, timeout=10)
    if direction == "request-fin-rst":
        # A whole request and its FIN reach the backend, which stays silent; then
        # the client gives up. No flow is stalled: stickyd reads neither side.
        h.send_all(s, b"GET / HTTP/1.0\r\n\r\n")
        s.shutdown(socket.SHUT_WR)

        def fin_seen():
            try:
                while conns[0].recv(4096, socket.MSG_DONTWAIT):
                    pass  # the request
                return True
            except BlockingIOError:
                return False

        h.wait_for("the backend to see the client's FIN", fin_seen, timeout=10)
        h.set_linger_zero(s)
        s.close()
        h.expect_eq(
            server.result(),
            "reset",
            "what the silent backend's socket reported within 10 s after the client, "
            "having sent its request and FIN, reset",
        )
    elif direction != "backend-rst":
        sent = flood(s, threading.Event())
        h.expect(sent > 0, "the client could not send at all")
        if direction == "client-fin-rst":
            s.shutdown(socket.SHUT_WR)  # its FIN waits behind the data
        h.set_linger_zero(s)
        s.close()
        h.expect_eq(
            server.result(),
            "reset",
            f"what the silent backend's socket reported within 10 s after the client, "
            f"stalled after {sent} bytes, reset",
        )
    else:
        h.expect("reset after" in server.result(), "the backend did not flood")
        h.expect_eq(
            wait_reset(s),
            "reset",
            "what the silent client's socket reported within 10 s after the backend, "
            "stalled, reset",
        )
    after = h.settled_fd_count(pid, at_most=baseline)
    h.expect(
        after <= baseline,
        f"stickyd holds {after} fds after the reset (baseline "
        f"{baseline}): the pair is kept until the idle timeout",
    )


def test_client_reset_while_its_upload_is_stalled_reaches_the_backend():
    stalled_then_reset("client-rst")


def test_client_reset_after_its_fin_while_the_upload_is_stalled_reaches_the_backend():
    stalled_then_reset("client-fin-rst")


def test_client_reset_after_its_request_and_fin_reaches_a_silent_backend():
    stalled_then_reset("request-fin-rst")


def test_backend_reset_while_its_download_is_stalled_reaches_the_client():
    stalled_then_reset("backend-rst")


if __name__ == "__main__":
    h.main(deadline=100)
