#!/usr/bin/env python3
"""Data integrity under concurrency: many connections carry MiBs each way at once
and every byte arrives, in order, exactly once (SHA-256 compared at both ends)."""
import hashlib
import os
import random
import re
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


def start(backends, extra_groups=(), env=None):
    """stickyd with group "echo" (the backends) and one group per (name, address) in
    extra_groups, each on its own listener. Returns (listener addresses, Stickyd)."""
    addrs = [h.lb_addr()]
    listeners = [{"bind": h.fmt_addr(addrs[0]), "target_group": "echo"}]
    groups = [{"name": "echo", "targets": [{"id": b.name, "address": b.address} for b in backends]}]
    for name, address in extra_groups:
        addrs.append(h.lb_addr())
        listeners.append({"bind": h.fmt_addr(addrs[-1]), "target_group": name})
        groups.append({"name": name, "targets": [{"id": name, "address": address}]})
    stickyd = h.start_stickyd(h.config_text(listeners, groups), addr=addrs[0], env=env)
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
            payload = b"STICKYD-TEST SINK-THEN-REPLY %d\n" % downs[i] + h.random_payload(
                ups[i], 200 + i
            )
            count, digest = h.echo_roundtrip(s, payload)
        h.expect_eq(count, downs[i], f"connection {i}: reply size")
        h.expect_eq(digest, h.sha256(h.pattern(downs[i])), f"connection {i}: reply SHA-256")

    h.run_parallel([lambda i=i: job(i) for i in range(16)], timeout=80)


def spliced_flows(stickyd):
    text = h.admin_get(stickyd.admin_socket, "/metrics")
    m = re.search(r"^stickyd_spliced_flows_total (\d+)$", text, re.M)
    h.expect(m, "no stickyd_spliced_flows_total in /metrics")
    return int(m.group(1))


def test_bulk_flows_splice_and_splice_pipes_0_keeps_them_on_recv_send():
    # Bulk both ways moves flows to splice; every byte still arrives in order. With
    # splice_pipes = 0 the same traffic never splices, and arrives just the same.
    backends = h.start_backends(1)
    payload = h.random_payload(32 * MIB, seed=7)
    for pipes, spliced in ((None, True), (0, False)):
        g = {} if pipes is None else {"splice_pipes": pipes}
        lb = h.lb_addr()
        groups = [{"name": "echo", "targets": [{"id": "b", "address": backends[0].address}]}]
        listeners = [{"bind": h.fmt_addr(lb), "target_group": "echo"}]
        stickyd = h.start_stickyd(h.config_text(listeners, groups, g), addr=lb)
        with h.connect(lb) as s:
            count, digest = h.echo_roundtrip(s, payload)
        h.expect_eq(count, len(payload), f"splice_pipes {pipes}: echoed byte count")
        h.expect_eq(digest, h.sha256(payload), f"splice_pipes {pipes}: echoed SHA-256")
        flows = spliced_flows(stickyd)
        h.expect(
            (flows > 0) == spliced,
            f"splice_pipes {pipes}: stickyd_spliced_flows_total is {flows}",
        )
        stickyd.process.kill()


def test_32_full_duplex_connections_hashed_at_both_ends():
    # A stub backend that sends its own random stream while it receives, and records
    # the SHA-256 of what it got. Both directions run at the same time, so a relay
    # that serialises them (or loses bytes while the other side is busy) fails.
    records = {}
    lock = threading.Lock()

    def handler(conn):
        try:
            first = h.recv_line(conn)  # "<key> <bytes to send>"
        except h.Failure:
            return None  # a readiness probe
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


def test_1000_held_connections_stay_sticky_alive_and_leave_nothing_behind():
    h.need_open_files(4096)
    backends = h.start_backends(3)
    (lb,), stickyd = start(backends)
    pid = stickyd.process.pid
    baseline = h.resting_fd_count(stickyd.process)
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
            h.expect(
                owner.setdefault(ip, name) == name,
                f"{ip} reached {owner[ip]} and {name} while 1000 connections were open",
            )
        h.expect(len(set(owner.values())) >= 2, "all sources went to one backend")
        # Both legs of every connection, counted as TCP connection sockets: a count of
        # all fds against the baseline flaked when the baseline caught a passing admin
        # connection (2015 fds against a baseline of 17 under ASan).
        during = len(h.connection_sockets(pid))
        h.expect(
            during >= 2000,
            f"stickyd holds {during} TCP connection sockets with 1000 connections open",
        )
        for i, s in enumerate(socks):  # every held connection still works
            h.send_all(s, b"ping %d\n" % i)
        for i, s in enumerate(socks):
            h.expect_eq(h.recv_line(s), f"ping {i}", f"echo on held connection {i}")
    finally:
        for s in socks:
            s.close()
    after = h.settled_fd_count(pid, at_most=baseline)
    h.expect(
        after <= baseline,
        f"stickyd still holds {after} descriptors after all 1000 "
        f"connections closed (baseline {baseline})",
    )


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


def stickyd_receive_queues(lb, client_ips):
    """Recv-Q of each of stickyd's sockets on the listener's port connected to one of
    client_ips: bytes the kernel holds that stickyd has not read. A client whose bytes
    all fit in the kernel's buffers has sent its FIN too, so its socket may be in
    CLOSE-WAIT."""
    r = h.run(["ss", "-Htna", f"( sport = :{lb[1]} )"])
    h.expect_eq(r.returncode, 0, f"ss exit status ({r.stderr.strip()})")
    rows = [line.split() for line in r.stdout.splitlines()]
    return sorted(
        int(row[1])
        for row in rows
        if len(row) >= 5
        and row[0] in ("ESTAB", "CLOSE-WAIT")
        and row[4].rpartition(":")[0] in client_ips
    )


def wait_until_stalled(sent, quiet=0.5, timeout=30.0):
    """Waits until the clients' byte counts stop moving for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last = sum(sent)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = sum(sent)
        if now == last:
            return now
        last = now
    raise h.Failure(f"the clients were still sending after {timeout}s ({last} bytes)")


def test_a_backend_that_does_not_read_stalls_the_clients_without_growing_memory():
    # Backpressure, seen from outside: with the backend not reading, stickyd stops
    # reading the clients once the kernel's buffers are full (a side is not read
    # while its peer's send is pending), so their bytes wait in the kernel's receive
    # queues of stickyd's sockets, the clients' sends stall, and stickyd's own
    # memory stays flat. A relay that kept reading would hold what the clients push.
    release = threading.Event()

    def handler(conn):
        release.wait(60)
        got = hashlib.sha256()
        count = h.recv_until_eof(conn, got)
        return (count, got.hexdigest()) if count else None  # the probe sends nothing

    server = h.PyServer(handler)
    (_, stub_lb), stickyd = start(
        h.start_backends(1), extra_groups=[("stub", server.address)], env=h.measured_memory_env()
    )
    pid = stickyd.process.pid
    # 10 MB per client (200 MB in all), about twice what the kernel buffers along one
    # connection: the client's send buffer (kept small), stickyd's receive buffer,
    # stickyd's send buffer toward the backend (up to tcp_wmem's maximum, 4 MiB by
    # default; more where it is raised) and the backend's receive buffer.
    with open("/proc/sys/net/ipv4/tcp_wmem") as f:
        wmem_max = int(f.read().split()[2])
    clients = 20
    size = max(10 * 1000 * 1000, 2 * wmem_max)
    chunks = [h.random_payload(256 * 1024, seed=900 + i) for i in range(clients)]
    ips = h.source_ips(clients, first=120)
    sent = [0] * clients

    def push(i):
        with h.connect(stub_lb, ips[i], timeout=60) as s:  # 60 s per send, at most
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 128 * 1024)
            chunk = chunks[i]
            while sent[i] < size:
                start_at = sent[i] % len(chunk)
                sent[i] += s.send(chunk[start_at : start_at + size - sent[i]])
            s.shutdown(socket.SHUT_WR)
            return h.recv_until_eof(s)

    def expected_sha256(i):
        digest = hashlib.sha256()
        for _ in range(size // len(chunks[i])):
            digest.update(chunks[i])
        digest.update(chunks[i][: size % len(chunks[i])])
        return digest.hexdigest()

    base = h.private_dirty(pid)
    threads = [threading.Thread(target=push, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    sent_1 = wait_until_stalled(sent)
    mem_1, queues_1 = h.private_dirty(pid), stickyd_receive_queues(stub_lb, ips)
    time.sleep(1.5)
    sent_2, mem_2, queues_2 = sum(sent), h.private_dirty(pid), stickyd_receive_queues(stub_lb, ips)

    h.expect(sent_2 < clients * size, "every client got all its bytes out with nobody reading")
    h.expect(
        sent_2 - sent_1 < MIB,
        f"clients kept sending while the backend read nothing: {sent_1} then {sent_2} bytes",
    )
    for when, queues in (("first", queues_1), ("second", queues_2)):
        h.expect(
            len(queues) == clients and min(queues) > 0,
            f"Recv-Q of stickyd's {len(queues)} client-side sockets at the {when} sample "
            f"(all {clients} should hold unread bytes): {queues}",
        )
    h.expect(mem_2 - mem_1 < MIB, f"stickyd grew from {mem_1} to {mem_2} B while stalled")
    # A receive buffer per direction per connection, plus slack for the buffers the
    # start touched: far below what the clients pushed, which a relay without
    # backpressure would hold.
    bound = clients * 2 * 32 * 1024 + 8 * MIB
    h.expect(
        mem_2 - base < bound,
        f"stickyd holds {mem_2 - base} B more than before {clients} stalled clients "
        f"(they pushed {sent_2} B)",
    )

    release.set()
    for t in threads:
        t.join(60)
    results = sorted(server.result(timeout=60) for _ in range(clients))
    h.expect_eq(
        results,
        sorted((size, expected_sha256(i)) for i in range(clients)),
        "(bytes, SHA-256) each backend connection received",
    )


if __name__ == "__main__":
    h.main()
