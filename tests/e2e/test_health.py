#!/usr/bin/env python3
"""Health checks and failover with NLB semantics: active TCP and HTTP checks,
fail-open, passive failures, connection termination. State changes are read from
stickyd's log, which records every transition once, with its reason."""
import os
import re
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

SOURCES = h.source_ips(40)
INTERVAL = 1.0  # seconds, as in the configs below
SLACK = 3.0  # generous: scheduling on a loaded 2-core machine


def config(lb, targets, health, group_extra=""):
    """targets: [(id, 'ip:port')]; health: the [target_group.health_check] body."""
    out = [
        "[global]",
        "threads = 2",
        'log_level = "debug"',
        'shutdown_grace = "2s"',
        "",
        "[[listener]]",
        f'bind = "{h.fmt_addr(lb)}"',
        'target_group = "web"',
        "",
        "[[target_group]]",
        'name = "web"',
        'connect_timeout = "500ms"',
        "connect_retries = 2",
        group_extra,
        "",
        "[target_group.health_check]",
        health,
        "",
    ]
    for target_id, address in targets:
        out += ["[[target_group.target]]", f'id = "{target_id}"', f'address = "{address}"', ""]
    return "\n".join(out)


def wait_log(stickyd, pattern, timeout, after=0):
    """The first match of pattern in stickyd's log at or after offset `after`."""
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    while True:
        log = stickyd.process.log()
        m = regex.search(log, after)
        if m:
            return m
        if time.monotonic() > deadline:
            raise h.Failure(
                f"no log line matching {pattern!r} within {timeout}s\n" f"{stickyd.describe()}"
            )
        if not stickyd.process.alive():
            raise h.Failure(f"stickyd exited\n{stickyd.describe()}")
        time.sleep(0.05)


def healthy_line(name):
    return rf"target {re.escape(name)} \(\S+\) is healthy"


def unhealthy_line(name):
    return rf"target {re.escape(name)} \(\S+\) is unhealthy: ([^\n]*)"


class StatusServer(h.PyServer):
    """A Python HTTP health endpoint whose answer can be changed (or silenced)."""

    def __init__(self, host="127.0.0.1", port=0):
        self.status = 200
        self.silent = False
        self.checks = 0
        super().__init__(self._answer, host, port)

    def _answer(self, conn):
        try:
            if b"\r\n\r\n" not in h.recv_head(conn):
                return None
            self.checks += 1
            if self.silent:  # accept, read, never answer
                while conn.recv(4096):
                    pass
                return None
            conn.sendall(
                f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\n"
                f"Connection: close\r\n\r\n".encode()
            )
        except OSError:
            pass
        return None  # nothing to collect: tests read `checks` and the daemon's log


def test_killed_backend_fails_over_and_its_clients_return():
    backends = h.start_backends(4)
    lb = h.lb_addr()
    health = 'interval = "1s"\nhealthy_threshold = 2\nunhealthy_threshold = 2\npassive = false'
    stickyd = h.start_stickyd(config(lb, [(b.name, b.address) for b in backends], health), addr=lb)
    for b in backends:
        wait_log(stickyd, healthy_line(b.name), INTERVAL + SLACK)
    before = h.mapping(lb, SOURCES)
    victim = backends[1]
    owned = [ip for ip in SOURCES if before[ip] == victim.name]
    h.expect(owned, f"no source hashed to {victim.name}; the test proves nothing")

    mark = len(stickyd.process.log())
    victim.stop()
    m = wait_log(stickyd, unhealthy_line(victim.name), INTERVAL * 2 + INTERVAL + SLACK, mark)
    h.expect("connection refused" in m.group(1), f"reason: {m.group(1)}")
    mark = m.end()

    after = h.mapping(lb, SOURCES, repeat=3)  # each source sticks to one replacement
    for ip in owned:
        h.expect(after[ip] != victim.name, f"{ip} still reached {victim.name}")
    moved = [ip for ip in SOURCES if ip not in owned and after[ip] != before[ip]]
    h.expect(not moved, f"sources of other backends moved: {moved[:5]}")
    # No new connection was even attempted on the unhealthy target.
    tried = re.findall(
        rf"connect to target {re.escape(victim.name)} ", stickyd.process.log()[mark:]
    )
    h.expect(not tried, f"{len(tried)} connects to {victim.name} after it was marked unhealthy")

    mark = len(stickyd.process.log())
    revived = h.Backend(victim.name, victim.address)
    m = wait_log(
        stickyd, healthy_line(revived.name) + r": recovered", INTERVAL * 2 + INTERVAL + SLACK, mark
    )
    back = h.mapping(lb, SOURCES, repeat=2)
    h.expect_eq(back, before, "mapping once the target recovered")


def test_http_check_follows_the_status_code():
    status = StatusServer()
    lb = h.lb_addr()
    health = (
        'protocol = "http"\npath = "/health"\ninterval = "1s"\ntimeout = "500ms"\n'
        "healthy_threshold = 2\nunhealthy_threshold = 2"
    )
    stickyd = h.start_stickyd(config(lb, [("web-1", status.address)], health), addr=lb)
    wait_log(
        stickyd, healthy_line("web-1") + r": first check passed \(HTTP 200\)", INTERVAL + SLACK
    )
    status.status = 500
    m = wait_log(stickyd, unhealthy_line("web-1"), INTERVAL * 3 + SLACK)
    h.expect(m.group(1).startswith("HTTP 500 (matcher 200-399)"), f"reason: {m.group(1)}")
    status.status = 200
    wait_log(
        stickyd, healthy_line("web-1") + r": recovered \(HTTP 200", INTERVAL * 3 + SLACK, m.end()
    )


def test_http_check_that_never_answers_times_out():
    status = StatusServer()
    status.silent = True
    lb = h.lb_addr()
    health = (
        'protocol = "http"\ninterval = "1s"\ntimeout = "300ms"\n'
        "healthy_threshold = 2\nunhealthy_threshold = 2"
    )
    stickyd = h.start_stickyd(config(lb, [("mute", status.address)], health), addr=lb)
    m = wait_log(stickyd, unhealthy_line("mute"), INTERVAL * 3 + SLACK)
    h.expect(
        "timed out after 300 ms (waiting for the HTTP status line)" in m.group(1),
        f"reason: {m.group(1)}",
    )
    h.expect(status.checks >= 2, f"only {status.checks} requests reached the backend")


def test_all_targets_down_fails_open():
    dead = [("down-1", f"127.0.0.1:{h.free_port()}"), ("down-2", f"127.0.0.1:{h.free_port()}")]
    lb = h.lb_addr()
    health = 'interval = "1s"\nhealthy_threshold = 2\nunhealthy_threshold = 2'
    stickyd = h.start_stickyd(config(lb, dead, health), addr=lb)
    m = wait_log(
        stickyd,
        r"error target group 'web': failing open: 0 of 2 targets in service healthy",
        INTERVAL * 3 + SLACK,
    )
    for ip in SOURCES[:5]:
        with h.connect(lb, ip) as s:
            h.send_all(s, b"GET /hostname HTTP/1.1\r\nHost: x\r\n\r\n")
            h.expect_eq(h.wait_closed(s), "eof", f"how stickyd ended {ip}'s connection")
    # Fail-open: the unhealthy targets were still tried.
    h.expect(
        re.search(r"connect to target down-\d", stickyd.process.log()[m.end() :]),
        "no connection was attempted while failing open",
    )
    h.expect_eq(stickyd.process.log().count("failing open"), 1, "failing-open log lines")
    h.expect(stickyd.process.alive(), f"stickyd died\n{stickyd.describe()}")
    revived = h.Backend("down-2", dead[1][1])
    wait_log(stickyd, r"no longer failing open", INTERVAL * 3 + SLACK, m.end())
    h.expect_eq(set(h.mapping(lb, SOURCES[:10]).values()), {revived.name}, "backends")


def test_passive_failures_mark_a_refusing_target_before_the_next_check():
    backends = h.start_backends(3)
    lb = h.lb_addr()
    # A long interval: the only active check of each target in this test is its first.
    health = 'interval = "60s"\ntimeout = "5s"\npassive = true\npassive_failures = 2'
    stickyd = h.start_stickyd(config(lb, [(b.name, b.address) for b in backends], health), addr=lb)
    before = h.mapping(lb, SOURCES)
    victim = backends[0]
    owned = [ip for ip in SOURCES if before[ip] == victim.name]
    h.expect(len(owned) >= 2, f"fewer than 2 sources hashed to {victim.name}")
    mark = len(stickyd.process.log())
    victim.stop()
    t0 = time.monotonic()
    for ip in owned[:2]:  # each retried transparently
        name = h.whoami(ip, lb)
        h.expect(name != victim.name, f"{ip} answered by the stopped {victim.name}")
    m = wait_log(stickyd, unhealthy_line(victim.name), SLACK, mark)
    h.expect(
        "2 consecutive connect failures on client traffic (last: connection refused)" in m.group(1),
        f"reason: {m.group(1)}",
    )
    h.expect(time.monotonic() - t0 < 30, "marked only after a long wait")
    # From now on nobody even tries the victim.
    mark = m.end()
    h.mapping(lb, SOURCES, repeat=2)
    h.expect(
        not re.search(
            rf"connect to target {re.escape(victim.name)} ", stickyd.process.log()[mark:]
        ),
        "connects to the passively failed target continued",
    )


def termination_setup(terminate):
    """Two echo backends on one port of two loopback IPs, each with its own HTTP
    health endpoint on another common port (health_check.port)."""
    port = h.free_port("127.0.0.1")
    health_port = h.free_port("127.0.0.1")
    backends, statuses = [], []
    for i, ip in enumerate(("127.0.0.11", "127.0.0.12"), start=1):
        backends.append(h.Backend(f"term-{i}", f"{ip}:{port}"))
        statuses.append(StatusServer(ip, health_port))
    lb = h.lb_addr()
    health = (
        f'protocol = "http"\nport = {health_port}\ninterval = "1s"\ntimeout = "500ms"\n'
        "healthy_threshold = 2\nunhealthy_threshold = 2\npassive = false"
    )
    extra = f"connection_termination_on_unhealthy = {'true' if terminate else 'false'}"
    stickyd = h.start_stickyd(
        config(lb, [(b.name, b.address) for b in backends], health, extra), addr=lb
    )
    for b in backends:
        wait_log(stickyd, healthy_line(b.name), INTERVAL + SLACK)
    return lb, stickyd, backends, statuses


def open_relay_to(lb, name):
    """An echo connection through stickyd that reached backend `name`."""
    for ip in SOURCES:
        s = h.connect(lb, ip)
        h.send_all(s, b"STICKYD-TEST WHOAMI\n")
        if h.recv_line(s).split()[0] == name:
            return s
        s.close()
    raise h.Failure(f"no source reached {name}")


def test_unhealthy_target_connections_are_reset():
    lb, stickyd, backends, statuses = termination_setup(terminate=True)
    victim_conn = open_relay_to(lb, backends[0].name)
    other_conn = open_relay_to(lb, backends[1].name)
    statuses[0].status = 503
    wait_log(stickyd, unhealthy_line(backends[0].name), INTERVAL * 3 + SLACK)
    h.expect_eq(h.wait_closed(victim_conn), "reset", "connection to the unhealthy target")
    h.send_all(other_conn, b"ping")  # others are untouched
    h.expect_eq(h.recv_exact(other_conn, 4), b"ping", "echo on the healthy target")
    victim_conn.close()
    other_conn.close()


def test_connection_termination_off_keeps_connections():
    lb, stickyd, backends, statuses = termination_setup(terminate=False)
    conn = open_relay_to(lb, backends[0].name)
    statuses[0].status = 503
    m = wait_log(stickyd, unhealthy_line(backends[0].name), INTERVAL * 3 + SLACK)
    h.send_all(conn, b"still here")
    h.expect_eq(h.recv_exact(conn, 10), b"still here", "echo after the target turned unhealthy")
    h.expect("reset" not in stickyd.process.log()[m.end() :], "stickyd reset connections")
    conn.close()


if __name__ == "__main__":
    h.main()
