#!/usr/bin/env python3
"""The control thread seen from outside: health checks of a proxy_protocol_v2 target
group start with a PROXY v2 LOCAL header, as the NLB's do, so a target that demands
the header on every connection can be checked; other groups' checks send nothing
before their own bytes."""
import os
import re
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

# PROXY v2: the 12-byte signature, version 2 + LOCAL (0x20), family UNSPEC, length 0.
LOCAL = b"\r\n\r\n\x00\r\nQUIT\n" + b"\x20\x00\x00\x00"
SLACK = 20.0  # generous: scheduling on a loaded 2-core machine


def config(lb, target, health, proxy):
    return "\n".join(
        [
            "[global]",
            "threads = 1",
            'log_level = "debug"',
            'shutdown_grace = "1s"',
            "",
            "[[listener]]",
            f'bind = "{h.fmt_addr(lb)}"',
            'target_group = "web"',
            "",
            "[[target_group]]",
            'name = "web"',
            f"proxy_protocol_v2 = {'true' if proxy else 'false'}",
            "",
            "[target_group.health_check]",
            health,
            "",
            "[[target_group.target]]",
            'id = "web-1"',
            f'address = "{target}"',
            "",
        ]
    )


def read_all(conn):
    data = b""
    while True:
        chunk = conn.recv(4096)
        if not chunk:
            return data
        data += chunk


def wait_log(stickyd, pattern, timeout=SLACK):
    deadline = time.monotonic() + timeout
    while True:
        m = re.search(pattern, stickyd.process.log())
        if m:
            return m
        if time.monotonic() > deadline:
            raise h.Failure(f"no log line matching {pattern!r}\n{stickyd.describe()}")
        time.sleep(0.05)


def connections_until(server, predicate, what):
    """Every connection's bytes, until one satisfies predicate."""
    seen = []
    deadline = time.monotonic() + SLACK
    while time.monotonic() < deadline:
        data = server.result(timeout=SLACK)
        seen.append(data)
        if predicate(data):
            return seen
    raise h.Failure(f"no connection {what} among {seen!r}")


def test_tcp_check_of_a_proxy_protocol_group_sends_a_local_header():
    target = h.PyServer(read_all)
    lb = h.lb_addr()
    health = 'interval = "1s"\ntimeout = "500ms"\nhealthy_threshold = 2\nunhealthy_threshold = 2'
    stickyd = h.start_stickyd(config(lb, target.address, health, proxy=True), addr=lb)
    seen = connections_until(target, lambda d: d.startswith(LOCAL), "with a LOCAL header")
    h.expect_eq(seen[-1], LOCAL, "a TCP check's bytes (the header, then FIN)")
    wait_log(stickyd, r"target web-1 \(\S+\) is healthy: first check passed \(connected\)")


def test_http_check_of_a_proxy_protocol_group_sends_the_header_then_the_request():
    def answer(conn):
        data = h.recv_head(conn)
        if b"\r\n\r\n" not in data:
            return data
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        return data

    target = h.PyServer(answer)
    lb = h.lb_addr()
    health = (
        'protocol = "http"\npath = "/health"\ninterval = "1s"\ntimeout = "500ms"\n'
        "healthy_threshold = 2\nunhealthy_threshold = 2"
    )
    stickyd = h.start_stickyd(config(lb, target.address, health, proxy=True), addr=lb)
    seen = connections_until(target, lambda d: d.startswith(LOCAL), "with a LOCAL header")
    h.expect(
        seen[-1][len(LOCAL) :].startswith(b"GET /health HTTP/1.1\r\n"),
        f"the HTTP request right after the header: {seen[-1]!r}",
    )
    wait_log(stickyd, r"target web-1 \(\S+\) is healthy: first check passed \(HTTP 200\)")


def test_checks_of_other_groups_send_no_header():
    target = h.PyServer(read_all)
    lb = h.lb_addr()
    health = 'interval = "1s"\ntimeout = "500ms"\nhealthy_threshold = 2\nunhealthy_threshold = 2'
    stickyd = h.start_stickyd(config(lb, target.address, health, proxy=False), addr=lb)
    wait_log(stickyd, r"target web-1 \(\S+\) is healthy: first check passed \(connected\)")
    # The readiness probe and at least two checks: none carries a byte.
    for _ in range(3):
        h.expect_eq(target.result(timeout=SLACK), b"", "bytes a TCP check sent")


if __name__ == "__main__":
    h.main()
