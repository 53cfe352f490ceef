#!/usr/bin/env python3
"""Data integrity under concurrency: many connections carry MiBs each way at once
and every byte arrives, in order, exactly once (SHA-256 compared at both ends)."""
import hashlib
import random
import socket
import sys
import threading

sys.dont_write_bytecode = True
import harness as h  # noqa: E402

MIB = 1024 * 1024


def sizes(count, seed, low=1 * MIB, high=4 * MIB):
    rng = random.Random(seed)
    return [rng.randrange(low, high + 1) for _ in range(count)]


def start(backends, extra_groups=()):
    """stickyd with group "echo" (the backends) and one group per (name, address) in
    extra_groups, each on its own listener. Returns the listener addresses in order."""
    addrs = [h.lb_addr()]
    listeners = [{"bind": h.fmt_addr(addrs[0]), "target_group": "echo"}]
    groups = [{"name": "echo", "targets": [{"id": b.name, "address": b.address} for b in backends]}]
    for name, address in extra_groups:
        addrs.append(h.lb_addr())
        listeners.append({"bind": h.fmt_addr(addrs[-1]), "target_group": name})
        groups.append({"name": name, "targets": [{"id": name, "address": address}]})
    h.start_stickyd(h.config_text(listeners, groups), addr=addrs[0])
    for addr in addrs[1:]:
        h.wait_accepting(addr)
    return addrs


def test_32_concurrent_echo_connections_of_several_mib():
    backends = h.start_backends(3)
    lb = start(backends)[0]
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
    lb = start(backends)[0]
    ips = h.source_ips(16, first=50)
    ups, downs = sizes(16, seed=2), sizes(16, seed=3)

    def job(i):
        with h.connect(lb, ips[i]) as s:
            payload = b"STICKYD-TEST SINK-THEN-REPLY %d\n" % downs[i] + h.random_payload(ups[i], 200 + i)
            count, digest = h.echo_roundtrip(s, payload)
        h.expect_eq(count, downs[i], f"connection {i}: reply size")
        h.expect_eq(digest, h.sha256(h.pattern(downs[i])), f"connection {i}: reply SHA-256")

    h.run_parallel([lambda i=i: job(i) for i in range(16)], timeout=80)


def test_full_duplex_hashed_at_both_ends():
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
    lbs = start(backends, extra_groups=[("stub", server.address)])
    stub_lb = lbs[1]
    ips = h.source_ips(8, first=80)
    ups, downs = sizes(8, seed=4), sizes(8, seed=5)

    def job(i):
        key = f"conn{i}"
        payload = h.random_payload(ups[i], 300 + i)
        with h.connect(stub_lb, ips[i]) as s:
            h.send_all(s, f"{key} {downs[i]}\n".encode())
            count, digest = h.echo_roundtrip(s, payload)
        return key, len(payload), h.sha256(payload), count, digest

    results = h.run_parallel([lambda i=i: job(i) for i in range(8)], timeout=80)
    for _ in results:
        server.result()
    for key, up_len, up_sha, down_len, down_sha in results:
        got_len, got_sha, sent_sha, sent_ok = records[key]
        h.expect(sent_ok, f"{key}: the stub backend could not send its stream")
        h.expect_eq(got_len, up_len, f"{key}: bytes the backend received")
        h.expect_eq(got_sha, up_sha, f"{key}: SHA-256 of what the backend received")
        h.expect_eq(down_len, downs[int(key[4:])], f"{key}: bytes the client received")
        h.expect_eq(down_sha, sent_sha, f"{key}: SHA-256 of what the client received")


if __name__ == "__main__":
    h.main()
