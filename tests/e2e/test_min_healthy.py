#!/usr/bin/env python3
"""minimum_healthy_targets (the NLB's target_group_health.unhealthy_state_routing):
with count = 3 of 4 targets, one unhealthy target is routed around, two make the
group fail open (every client back at its own target, the unhealthy ones included),
and recovery ends it; /status, /metrics, stickyctl and the log say so, once each way.

Each target's health check goes to its own IP at one shared port, served by a stub
that the test closes to fail the check, while the target's stickyd-echo keeps
serving traffic: so a client that reaches an unhealthy target proves where fail-open
sent it, instead of only failing to connect."""
import json
import os
import re
import socket
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

SOURCES = h.source_ips(60)
TARGET_IPS = [f"127.0.10.{i}" for i in range(1, 5)]


def group_status(sock):
    return json.loads(h.admin_get(sock, "/status"))["groups"][0]


def metric(sock, name):
    m = re.search(rf'^{name}{{group="web"}} (\S+)$', h.admin_get(sock, "/metrics"), re.M)
    h.expect(m, f"no {name} in /metrics")
    return float(m.group(1))


class HealthStub:
    """Accepts health checks at ip:port until stopped; stickyd-echo serves the traffic."""

    def __init__(self, ip, port):
        self.ip, self.port = ip, port
        self.server = None
        self.start()

    def start(self):
        def answer(conn):
            while conn.recv(4096):  # the check closes first, with a FIN
                pass

        self.server = h.PyServer(answer, self.ip, self.port)

    def stop(self):
        self.server.close()


def shared_free_port():
    """A port free on every target IP (each IP's health stub binds it)."""
    for _ in range(50):
        port = h.free_port(TARGET_IPS[0])
        probes = []
        try:
            for ip in TARGET_IPS:
                s = socket.socket()
                probes.append(s)
                s.bind((ip, port))
            return port
        except OSError:
            continue
        finally:
            for s in probes:
                s.close()
    raise h.Failure("no port free on all of " + ", ".join(TARGET_IPS))


def count_lines(stickyd, text):
    return sum(text in line for line in stickyd.process.log().splitlines())


def test_count_3_of_4_routes_around_one_and_fails_open_below_it():
    backends = [h.start_backend(f"backend-{i}", ip) for i, ip in enumerate(TARGET_IPS, 1)]
    check_port = shared_free_port()
    stubs = [HealthStub(ip, check_port) for ip in TARGET_IPS]
    lb = h.lb_addr()
    config = h.simple_config(
        h.fmt_addr(lb),
        backends,
        group={
            "minimum_healthy_targets": {"count": 3},
            "health_check": {
                "interval": "200ms",
                "timeout": "100ms",
                "healthy_threshold": 2,
                "unhealthy_threshold": 2,
                "port": check_port,
                "passive": False,
            },
        },
    )
    stickyd = h.start_stickyd(config, addr=lb)
    sock = stickyd.admin_socket

    def states():
        return {t["id"]: t["state"] for t in group_status(sock)["targets"]}

    h.wait_for(
        "four healthy targets",
        lambda: set(states().values()) == {"healthy"},
        process=stickyd.process,
    )
    before = h.mapping(lb, SOURCES)
    owners = {b.name: [ip for ip in SOURCES if before[ip] == b.name] for b in backends}
    for name in ("backend-2", "backend-3"):
        h.expect(owners[name], f"no source hashed to {name}; the test proves nothing")
    g = group_status(sock)
    h.expect_eq(
        (g["failing_open"], g["healthy_targets"], g["targets_in_service"]),
        (False, 4, 4),
        "/status with every target healthy",
    )
    h.expect_eq(
        g["minimum_healthy_targets"],
        {"count": 3, "percentage": None, "required": 3},
        "/status minimum_healthy_targets",
    )

    # One down: 3 of 4 healthy meets count 3, so its clients move and the rest stay.
    stubs[1].stop()
    h.wait_for(
        "backend-2 unhealthy", lambda: states()["backend-2"] == "unhealthy", process=stickyd.process
    )
    one_down = h.mapping(lb, SOURCES, repeat=2)
    for ip in SOURCES:
        if before[ip] == "backend-2":
            h.expect(one_down[ip] != "backend-2", f"{ip} still reached backend-2")
        else:
            h.expect_eq(one_down[ip], before[ip], f"{ip}, a client of a healthy target")
    h.expect_eq(group_status(sock)["failing_open"], False, "failing_open with one down")
    h.expect_eq(count_lines(stickyd, "failing open"), 0, "fail-open lines with one down")

    # Two down: 2 of 4 is below 3, so all four take clients again, each its own.
    stubs[2].stop()
    entered = (
        "error target group 'web': failing open: 2 of 4 targets in service healthy, "
        "below minimum_healthy_targets (count 3: at least 3); routing to all 4 as if "
        "they were healthy"
    )
    h.wait_for(
        "the fail-open line", lambda: entered in stickyd.process.log(), process=stickyd.process
    )
    h.expect_eq(
        states(),
        {
            "backend-1": "healthy",
            "backend-2": "unhealthy",
            "backend-3": "unhealthy",
            "backend-4": "healthy",
        },
        "states",
    )
    h.expect_eq(
        h.mapping(lb, SOURCES, repeat=2),
        before,
        "every client at its owner while failing open, unhealthy owners included",
    )
    g = group_status(sock)
    h.expect_eq(
        (g["failing_open"], g["healthy_targets"], g["targets_in_service"]),
        (True, 2, 4),
        "/status while failing open",
    )
    h.expect_eq(metric(sock, "stickyd_group_failing_open"), 1.0, "stickyd_group_failing_open")
    h.expect_eq(metric(sock, "stickyd_group_healthy_targets"), 2.0, "healthy targets metric")
    h.expect_eq(metric(sock, "stickyd_group_minimum_healthy_targets"), 3.0, "minimum metric")
    out = h.stickyctl("status", "--admin", sock, ok=False).stdout
    h.expect(
        "group web (ring), 4 targets: FAILING OPEN\n"
        "healthy 2 of 4 in service, minimum 3 (count 3): routing to all in service as if "
        "healthy\n" in out,
        f"stickyctl status:\n{out}",
    )
    lookup = json.loads(
        h.admin_get(sock, "/lookup?" + "&".join(f"ip={ip}" for ip in owners["backend-3"][:3]))
    )
    for e in lookup["lookups"]:
        h.expect_eq(
            (e["chosen"], e["reason"]),
            (
                "backend-3",
                "fail-open: fewer healthy targets than "
                "minimum_healthy_targets, routing as if all were healthy",
            ),
            f"/lookup of {e['ip']}",
        )

    # One back: 3 of 4 again; fail-open ends with one line and backend-2's clients
    # move away from it once more, exactly as before.
    stubs[2].start()
    left = (
        "warn  target group 'web': no longer failing open: 3 of 4 targets in service "
        "healthy (minimum_healthy_targets count 3: at least 3)"
    )
    h.wait_for(
        "the line that ends fail-open",
        lambda: left in stickyd.process.log(),
        process=stickyd.process,
    )
    h.expect_eq(h.mapping(lb, SOURCES, repeat=2), one_down, "mapping after backend-3 recovered")
    h.expect_eq(group_status(sock)["failing_open"], False, "failing_open after recovery")
    h.expect_eq(metric(sock, "stickyd_group_failing_open"), 0.0, "metric after recovery")
    h.expect_eq(count_lines(stickyd, "target group 'web': failing open:"), 1, "entering lines")
    h.expect_eq(count_lines(stickyd, "no longer failing open"), 1, "leaving lines")
    out = h.stickyctl("status", "--admin", sock, ok=False).stdout
    h.expect(
        "group web (ring), 4 targets\nhealthy 3 of 4 in service, minimum 3 (count 3)\n" in out,
        f"stickyctl status:\n{out}",
    )


def test_quick_mode_flags_and_a_reload_change_the_minimum():
    backends = h.start_backends(4)
    lb = h.lb_addr()
    dead = backends[0]
    args = [
        "--listen",
        h.fmt_addr(lb),
        "--min-healthy-count",
        "2",
        "--min-healthy-percent",
        "100",
        "--health-interval",
        "200ms",
        "--passive-failures",
        "0",
    ]
    for b in backends:
        args += ["--target", b.address]
    stickyd = h.start_stickyd(args=args, addr=lb)
    sock = stickyd.admin_socket
    h.wait_for(
        "4 healthy", lambda: group_status(sock)["healthy_targets"] == 4, process=stickyd.process
    )
    h.expect_eq(
        group_status(sock)["minimum_healthy_targets"],
        {"count": 2, "percentage": 100, "required": 4},
        "quick mode's minimum",
    )
    dead.stop()
    # 100%: any unhealthy target fails the group open.
    h.wait_for(
        "the fail-open line",
        lambda: re.search(
            r"failing open: 3 of 4 targets in service healthy, below minimum_healthy_targets "
            r"\(count 2, percentage 100%: at least 4\)",
            stickyd.process.log(),
        ),
        process=stickyd.process,
    )

    # With a file, a reload applies a new minimum at once.
    lb2 = h.lb_addr()

    def config(minimum):
        return h.simple_config(
            h.fmt_addr(lb2),
            backends,
            group={
                "minimum_healthy_targets": minimum,
                "health_check": {
                    "interval": "200ms",
                    "timeout": "100ms",
                    "healthy_threshold": 2,
                    "unhealthy_threshold": 2,
                    "passive": False,
                },
            },
        )

    path = h.write_file("reloaded.toml", config({"percentage": 80}))
    second = h.start_stickyd(args=["--config", path], addr=lb2)
    h.wait_for(
        "the fail-open line",
        lambda: re.search(
            r"failing open: 3 of 4 targets in service healthy, below minimum_healthy_targets "
            r"\(count 1, percentage 80%: at least 4\)",
            second.process.log(),
        ),
        process=second.process,
    )
    h.write_file("reloaded.toml", config({"percentage": 75}))
    second.process.signal(1)  # SIGHUP
    h.wait_for(
        "the line that ends fail-open",
        lambda: re.search(
            r"no longer failing open: 3 of 4 targets in service healthy \(minimum_healthy_targets "
            r"count 1, percentage 75%: at least 3\)",
            second.process.log(),
        ),
        process=second.process,
    )
    h.expect_eq(group_status(second.admin_socket)["failing_open"], False, "after the reload")

    bad = h.run(
        [
            h.STICKYD_BIN,
            "--listen",
            h.fmt_addr(h.lb_addr()),
            "--target",
            backends[1].address,
            "--min-healthy-percent",
            "0",
        ]
    )
    h.expect_eq(
        (bad.returncode, bad.stderr),
        (2, "stickyd: --min-healthy-percent: expected 1-100 or off, got '0'\n"),
        "a bad --min-healthy-percent",
    )
    bad = h.run(
        [
            h.STICKYD_BIN,
            "--listen",
            h.fmt_addr(h.lb_addr()),
            "--target",
            backends[1].address,
            "--min-healthy-count",
            "0",
        ]
    )
    h.expect_eq(
        (bad.returncode, bad.stderr),
        (2, "stickyd: --min-healthy-count: must be an integer from 1 to 50000, got 0\n"),
        "a bad --min-healthy-count",
    )


if __name__ == "__main__":
    h.main()
