#!/usr/bin/env python3
"""Logging per connection: none at info level unless a listener asks for an access
log; with `access_log` (or --access-log) exactly one line per finished connection,
naming the client, the target and the bytes each way; --log-level hides or shows
lines by level; a reload turns the access log on and off for new connections."""
import os
import re
import signal
import socket
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

PAYLOAD = b"x" * 1000


def echo_once_on(s):
    h.send_all(s, PAYLOAD)
    h.expect_eq(h.recv_exact(s, len(PAYLOAD)), PAYLOAD, "echo")


def echo_once(lb, ip):
    with h.connect(lb, ip) as s:
        echo_once_on(s)


def quick(backends, *extra, refusing=None):
    lb = h.lb_addr()
    args = ["--listen", h.fmt_addr(lb), "--health-check", "off", "--connect-retries", "2"]
    for b in backends:
        args += ["--target", b.address]
    if refusing:
        args += ["--target", f"127.0.0.1:{refusing}"]
    return h.start_stickyd(args=args + list(extra), addr=lb), lb


def access_lines(log):
    return [line for line in log.splitlines() if " access listener=" in line]


def settled_log(process, predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate(process.log()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return process.log()


def connect_retries_total(d):
    """stickyd_connect_retries_total from the admin endpoint."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(h.IO_TIMEOUT)
        s.connect(d.admin_socket)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    m = re.search(rb"^stickyd_connect_retries_total (\d+)$", reply, re.M)
    h.expect(m, f"no retries counter in /metrics:\n{reply[:400]!r}")
    return int(m.group(1))


def test_no_line_per_connection_at_info_level_without_the_access_log():
    backends = h.start_backends(2)
    # Passive health is off so that the refusing target keeps its clients: they
    # are all retried, and none of them may add a line either.
    d, lb = quick(backends, "--passive-failures", "0", refusing=h.free_port())
    time.sleep(0.2)
    before = d.process.log().count("\n")
    ips = h.source_ips(100)
    for ip in ips:
        echo_once(lb, ip)
        echo_once(lb, ip)
    h.expect(connect_retries_total(d) >= 10, "too few clients were retried to prove anything")
    time.sleep(0.5)
    added = d.process.log().splitlines()[before:]
    h.expect_eq(added, [], "info lines added by 200 connections")


def test_one_access_line_per_connection_with_client_target_and_bytes():
    backends = h.start_backends(2)
    d, lb = quick(backends, "--access-log")
    ips = h.source_ips(12, first=30)
    for ip in ips:
        echo_once(lb, ip)
    log = settled_log(d.process, lambda text: len(access_lines(text)) >= len(ips) + 1)
    lines = [ln for ln in access_lines(log) if "up=0 down=0" not in ln]  # the readiness probe
    h.expect_eq(len(lines), len(ips), "access lines for the echoed connections")
    by_backend = {b.address: b for b in backends}
    # Two workers log as connections close, so lines need not come in client order.
    by_client = {re.search(r" client=([\d.]+):", ln).group(1): ln for ln in lines}
    h.expect_eq(sorted(by_client), sorted(ips), "clients named by the access lines")
    for ip in ips:
        line = by_client[ip]
        m = re.search(
            r"access listener=(\S+) client=(\S+) group=default target=(\S+) "
            r"addr=(\S+) attempts=1 up=(\d+) down=(\d+) ms=[\d.]+ end=closed$",
            line,
        )
        h.expect(m, f"unexpected access line: {line!r}")
        h.expect(m.group(2).startswith(ip + ":"), f"client in {line!r} is not {ip}")
        h.expect(m.group(4) in by_backend, f"target address in {line!r}")
        h.expect_eq(
            (int(m.group(5)), int(m.group(6))), (len(PAYLOAD), len(PAYLOAD)), f"bytes in {line!r}"
        )


def test_a_retried_client_is_logged_once_with_the_target_that_served_it():
    backends = h.start_backends(1)
    d, lb = quick(backends, "--access-log", "--passive-failures", "0", refusing=h.free_port())
    ips = h.source_ips(20, first=80)
    for ip in ips:
        echo_once(lb, ip)
    log = settled_log(d.process, lambda text: all(f"client={ip}:" in text for ip in ips))
    attempts = []
    for ip in ips:
        lines = [ln for ln in access_lines(log) if f" client={ip}:" in ln]
        h.expect_eq(len(lines), 1, f"access lines for {ip}")
        m = re.search(
            r" target=(\S+) addr=(\S+) attempts=(\d) up=(\d+) down=(\d+) .* end=closed$", lines[0]
        )
        h.expect(m, f"unexpected access line: {lines[0]!r}")
        h.expect_eq(m.group(2), backends[0].address, f"target address in {lines[0]!r}")
        h.expect_eq(
            (int(m.group(4)), int(m.group(5))),
            (len(PAYLOAD), len(PAYLOAD)),
            f"bytes in {lines[0]!r}",
        )
        attempts.append(int(m.group(3)))
    h.expect_eq(sorted(set(attempts)), [1, 2], "attempts over the clients (owner, retried)")


def test_no_target_reached_is_logged_with_dashes_and_connect_failed():
    refusing = [h.free_port(), h.free_port()]
    lb = h.lb_addr()
    args = [
        "--listen",
        h.fmt_addr(lb),
        "--health-check",
        "off",
        "--connect-retries",
        "1",
        "--access-log",
    ]
    for port in refusing:
        args += ["--target", f"127.0.0.1:{port}"]
    d = h.start_stickyd(args=args, addr=lb)
    with h.connect(lb, "127.0.0.7") as s:
        h.wait_closed(s)
    log = settled_log(d.process, lambda text: "client=127.0.0.7:" in text)
    lines = [ln for ln in access_lines(log) if " client=127.0.0.7:" in ln]
    h.expect(
        len(lines) == 1
        and " target=- addr=- attempts=2 up=0 down=0 " in lines[0]
        and lines[0].endswith('end="connect failed"'),
        f"line of a refused client: {lines}",
    )


def test_a_reset_names_the_side_that_reset():
    backends = h.start_backends(1)

    def reset_after_reading(conn):
        data = conn.recv(100)
        if not data:
            return None  # the readiness probe
        h.set_linger_zero(conn)
        return data

    resetting = h.PyServer(reset_after_reading)
    d, lb = quick(backends, "--access-log")
    with h.connect(lb, "127.0.0.8") as s:
        echo_once_on(s)
        h.set_linger_zero(s)
    other, lb2 = quick([resetting], "--access-log")
    with h.connect(lb2, "127.0.0.9") as s:
        h.send_all(s, b"hello")
        h.expect_eq(h.wait_closed(s), "reset", "what the client saw")
    for proc, ip, end in (
        (d.process, "127.0.0.8", "client reset"),
        (other.process, "127.0.0.9", "target reset"),
    ):
        log = settled_log(proc, lambda text: f"client={ip}:" in text)
        lines = [ln for ln in access_lines(log) if f" client={ip}:" in ln]
        h.expect(
            len(lines) == 1 and lines[0].endswith(f'end="{end}"'),
            f"expected one line ending {end}: {lines}",
        )


def test_a_proxy_header_client_is_logged_as_source_and_a_bad_header_as_such():
    backends = h.start_backends(1)
    d, lb = quick(backends, "--access-log", "--accept-proxy-protocol")
    with h.connect(lb, "127.0.0.5") as s:
        h.send_all(s, h.proxy_v1_header(("203.0.113.7", 41000), ("127.0.0.1", lb[1])) + PAYLOAD)
        h.expect_eq(h.recv_exact(s, len(PAYLOAD)), PAYLOAD, "echo after a PROXY header")
    with h.connect(lb, "127.0.0.6") as s:
        h.send_all(s, b"GET / HTTP/1.0\r\n\r\n")
        h.wait_closed(s)
    log = settled_log(d.process, lambda text: "127.0.0.6:" in text and "127.0.0.5:" in text)
    lines = access_lines(log)
    proxied = [ln for ln in lines if "client=127.0.0.5:" in ln]
    h.expect(
        len(proxied) == 1
        and " source=203.0.113.7:41000 " in proxied[0]
        and f" up={len(PAYLOAD)} " in proxied[0],
        f"PROXY client's line: {proxied}",
    )
    bad = [ln for ln in lines if "client=127.0.0.6:" in ln]
    h.expect(
        len(bad) == 1 and bad[0].endswith('end="bad PROXY header"') and " target=- " in bad[0],
        f"bad header's line: {bad}",
    )


def test_log_level_hides_info_and_shows_debug():
    backends = h.start_backends(1)
    quiet, lb = quick(backends, "--access-log", "--log-level", "warn")
    echo_once(lb, "127.0.0.2")
    time.sleep(0.3)
    h.expect_eq(quiet.process.log().strip(), "", "what --log-level warn printed")
    # Per-connection events (here: connects to a refusing target) are debug lines.
    loud, lb = quick(backends, "--log-level", "debug", refusing=h.free_port())
    for ip in h.source_ips(10, first=60):
        echo_once(lb, ip)
    log = settled_log(
        loud.process, lambda text: "debug worker" in text and "connect to target" in text
    )
    h.expect(
        re.search(r" debug +worker \d+: connect to target", log),
        f"no debug line for a refused connect:\n{log}",
    )


def test_reload_turns_the_access_log_on_and_off_for_new_connections():
    backends = h.start_backends(1)
    lb = h.lb_addr()
    config = h.simple_config(h.fmt_addr(lb), backends)
    d = h.start_stickyd(config, addr=lb)
    path = d.process.argv[d.process.argv.index("--config") + 1]

    def reload(text, count):
        with open(path, "w") as f:
            f.write(text)
        d.process.signal(signal.SIGHUP)
        settled_log(d.process, lambda log: log.count("reloaded") >= count)
        h.expect(d.process.log().count("reloaded") >= count, f"no reload\n{d.describe()}")

    # The setting a connection was accepted under decides whether it gets a line.
    on = config.replace('target_group = "', 'access_log = true\ntarget_group = "', 1)
    echo_once(lb, "127.0.0.2")
    reload(on, 1)
    echo_once(lb, "127.0.0.3")
    reload(config, 2)
    echo_once(lb, "127.0.0.4")
    reload(on, 3)
    echo_once(lb, "127.0.0.5")
    log = settled_log(d.process, lambda text: "client=127.0.0.5:" in text)
    clients = [re.search(r" client=([\d.]+):", ln).group(1) for ln in access_lines(log)]
    h.expect_eq(clients, ["127.0.0.3", "127.0.0.5"], "clients with an access line")


if __name__ == "__main__":
    h.main()
