#!/usr/bin/env python3
"""Data integrity under concurrency: many connections carry MiBs each way at once
and every byte arrives, in order, exactly once (SHA-256 compared at both ends)."""
import hashlib
import os
import random
import socket
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

MIB = 1024 * 1024


def sizes(count, seed, low=1 * MIB, high=4 * MIB):
    rng = random.Random(seed)
    return [rng.randrange(low, high + 1) for _ in range(count)]


def start(backends, extra_groups=()):
    """stickyd with group "echo" (the backends) and one group per (name, address) in
    extra_groups, each on its own listener. Returns (listener addresses, Stickyd)."""
    addrs = [h.lb_addr()]
    listeners = [{"bind": h.fmt_addr(addrs[0]), "target_group": "echo"}]
    groups = [{"name": "echo", "targets": [{"id": b.name, "address": b.address} for b in backends]}]
    for name, address in extra_groups:
        addrs.append(h.lb_addr())
        listeners.append({"bind": h.fmt_addr(addrs[-1]), "target_group": name})
        groups.append({"name": name, "targets": [{"id": name, "address": address}]})
    stickyd = h.start_stickyd(h.config_text(listeners, groups), addr=addrs[0])
    for addr in addrs[1:]:
        h.wait_accepting(addr)
    return addrs, stickyd


def test_32_concurrent_echo_connections_of_several_mib():
    backends = h.start_backends(3)
    (lb,), _ = start(backends)
    ips = h.source_ips(32, first=10)
    plan = sizes(32, seed=1)

    def job(i):
        payload = h.random_payload(plan[i], seed=100 + i)
        with h.connect(lb, ips[i]) as s:
            count, digest = h.echo_roundtrip(s, payload)
        h.expect_eq(count, len(payload), f"connection {i} from {ips[i]}: echoed byte count")
        h.expect_eq(digest, h.sha256(payload), f"connection {i} from {ips[i]}: echoed SHA-256")

    h.run_parallel([lambda i=i: job(i) for i in range(32)], timeout=80)


def test_backend_generated_data_after_client_eof():
    # SINK-THEN-REPLY: the client uploads n bytes, closes its side, and the backend
    # then sends m bytes of its own pattern; the client checks them by hash.
    backends = h.start_backends(3)
    (lb,), _ = start(backends)
    ips = h.source_ips(16, first=50)
    ups, downs = sizes(16, seed=2), sizes(16, seed=3)

    def job(i):
        with h.connect(lb, ips[i]) as s:
            payload = b"STICKYD-TEST SINK-THEN-REPLY %d\n" % downs[i] + h.random_payload(ups[i], 200 + i)
            count, digest = h.echo_roundtrip(s, payload)
        h.expect_eq(count, downs[i], f"connection {i}: reply size")
        h.expect_eq(digest, h.sha256(h.pattern(downs[i])), f"connection {i}: reply SHA-256")

    h.run_parallel([lambda i=i: job(i) for i in range(16)], timeout=80)


def test_32_full_duplex_connections_hashed_at_both_ends():
    # A stub backend that sends its own random stream while it receives, and records
    # the SHA-256 of what it got. Both directions run at the same time, so a relay
    # that serialises them (or loses bytes while the other side is busy) fails.
    records = {}
    lock = threading.Lock()

    def handler(conn):
        try:
            first = h.recv_line(conn)                  # "<key> <bytes to send>"
        except h.Failure:
            return None                                # a readiness probe
        key, size = first.split()
        out = h.random_payload(int(size), seed=1000 + int(key[4:]))
        sent = {}

        def sender():
            h.send_all(conn, out)
            conn.shutdown(socket.SHUT_WR)
            sent["done"] = True
        t = threading.Thread(target=sender, daemon=True)
        t.start()
        got = hashlib.sha256()
        count = h.recv_until_eof(conn, got)
        t.join(h.IO_TIMEOUT * 3)
        with lock:
            records[key] = (count, got.hexdigest(), h.sha256(out), bool(sent))
        return key

    server = h.PyServer(handler)
    backends = h.start_backends(1)
    (_, stub_lb), _ = start(backends, extra_groups=[("stub", server.address)])
    ips = h.source_ips(32, first=80)
    ups, downs = sizes(32, seed=4, high=3 * MIB), sizes(32, seed=5, high=3 * MIB)

    def job(i):
        key = f"conn{i}"
        payload = h.random_payload(ups[i], 300 + i)
        with h.connect(stub_lb, ips[i]) as s:
            h.send_all(s, f"{key} {downs[i]}\n".encode())
            count, digest = h.echo_roundtrip(s, payload)
        return key, len(payload), h.sha256(payload), count, digest

    results = h.run_parallel([lambda i=i: job(i) for i in range(32)], timeout=80)
    for _ in results:
        server.result()
    for key, up_len, up_sha, down_len, down_sha in results:
        got_len, got_sha, sent_sha, sent_ok = records[key]
        h.expect(sent_ok, f"{key}: the stub backend could not send its stream")
        h.expect_eq(got_len, up_len, f"{key}: bytes the backend received")
        h.expect_eq(got_sha, up_sha, f"{key}: SHA-256 of what the backend received")
        h.expect_eq(down_len, downs[int(key[4:])], f"{key}: bytes the client received")
        h.expect_eq(down_sha, sent_sha, f"{key}: SHA-256 of what the client received")


def settled_fd_count(pid, at_most=None, timeout=10.0):
    """stickyd's descriptor count once closing connections are gone: waits until it
    is at most `at_most` (or, without it, until it stops falling)."""
    deadline = time.monotonic() + timeout
    last = h.fd_count(pid)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = h.fd_count(pid)
        if (at_most is not None and now <= at_most) or (at_most is None and now >= last):
            return now
        last = now
    return last


def test_1000_held_connections_stay_sticky_alive_and_leave_nothing_behind():
    h.need_open_files(4096)
    backends = h.start_backends(3)
    (lb,), stickyd = start(backends)
    pid = stickyd.process.pid
    baseline = settled_fd_count(pid)
    ips = h.source_ips(100, first=2)
    socks, owner = [], {}
    try:
        for i in range(1000):
            ip = ips[i % len(ips)]
            s = h.connect(lb, ip)
            socks.append(s)
            h.send_all(s, b"STICKYD-TEST WHOAMI\n")
        for i, s in enumerate(socks):
            ip = ips[i % len(ips)]
            name, peer = h.recv_line(s).split()
            h.expect(owner.setdefault(ip, name) == name,
                     f"{ip} reached {owner[ip]} and {name} while 1000 connections were open")
        h.expect(len(set(owner.values())) >= 2, "all sources went to one backend")
        during = h.fd_count(pid)
        h.expect(during >= baseline + 2000, f"stickyd holds {during} descriptors with 1000 "
                                            f"connections open (baseline {baseline})")
        for i, s in enumerate(socks):                 # every held connection still works
            h.send_all(s, b"ping %d\n" % i)
        for i, s in enumerate(socks):
            h.expect_eq(h.recv_line(s), f"ping {i}", f"echo on held connection {i}")
    finally:
        for s in socks:
            s.close()
    after = settled_fd_count(pid, at_most=baseline)
    h.expect(after <= baseline, f"stickyd still holds {after} descriptors after all 1000 "
                                f"connections closed (baseline {baseline})")


def test_slow_reader_gets_everything():
    # The client sends 8 MiB but reads nothing for a second: the relay must apply
    # backpressure (stop reading) rather than drop or reorder, then deliver it all.
    backends = h.start_backends(1)
    (lb,), _ = start(backends)
    payload = h.random_payload(8 * MIB, seed=7)
    with h.connect(lb, "127.0.0.2", timeout=30) as s:
        def sender():
            h.send_all(s, payload)
            s.shutdown(socket.SHUT_WR)
        t = threading.Thread(target=sender, daemon=True)
        t.start()
        time.sleep(1.0)
        got = hashlib.sha256()
        count = h.recv_until_eof(s, got)
        t.join(10)
    h.expect_eq((count, got.hexdigest()), (len(payload), h.sha256(payload)), "8 MiB slow read")



def private_dirty(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1]) * 1024
    raise h.Failure("no Private_Dirty in smaps_rollup")


def test_a_backend_that_does_not_read_stalls_the_client_without_growing_memory():
    # Backpressure, seen from outside: with the backend not reading, stickyd stops
    # reading the clients once the kernel's buffers are full, so the clients' sends
    # stall and stickyd's own memory stays flat (at most a buffer per direction per
    # connection). A relay that kept reading would grow by what the clients push.
    release = threading.Event()

    def handler(conn):
        release.wait(60)
        count = h.recv_until_eof(conn)
        return count or None  # the readiness probe sends nothing

    server = h.PyServer(handler)
    (_, stub_lb), stickyd = start(h.start_backends(1), extra_groups=[("stub", server.address)])
    pid = stickyd.process.pid
    clients, size = 10, 48 * MIB
    sent = [0] * clients
    chunk = h.random_payload(256 * 1024, seed=9)

    def push(i):
        with h.connect(stub_lb, h.source_ips(clients, first=120)[i], timeout=60) as s:
            while sent[i] < size:
                n = s.send(chunk[:min(len(chunk), size - sent[i])])
                sent[i] += n
            s.shutdown(socket.SHUT_WR)
            return h.recv_until_eof(s)

    base = private_dirty(pid)
    threads = [threading.Thread(target=push, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    sent_1, mem_1 = sum(sent), private_dirty(pid)
    time.sleep(1.5)
    sent_2, mem_2 = sum(sent), private_dirty(pid)
    h.expect(sent_2 < clients * size, "every client got all its bytes out with nobody reading")
    h.expect(sent_2 - sent_1 < 2 * MIB,
             f"clients kept sending while the backend read nothing: {sent_1} then {sent_2} bytes")
    h.expect(mem_2 - mem_1 < 1 * MIB, f"stickyd grew from {mem_1} to {mem_2} B while stalled")
    bound = clients * 2 * 32 * 1024 + 4 * MIB  # a receive buffer per direction, plus slack
    h.expect(mem_2 - base < bound,
             f"stickyd holds {mem_2 - base} B more than before {clients} stalled clients")

    release.set()
    for t in threads:
        t.join(60)
    counts = sorted(server.result(timeout=60) for _ in range(clients))
    h.expect_eq(counts, [size] * clients, "bytes each backend connection received")


if __name__ == "__main__":
    h.main()
