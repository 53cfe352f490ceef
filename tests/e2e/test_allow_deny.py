#!/usr/bin/env python3
"""Source allow and deny lists per listener (the NLB's security groups). Clients
bound to 127.0.0.x addresses inside the lists are proxied; the others are reset at
once, their target never sees a connection, and the listener counts them by reason.
The target is a stub of a proxy_protocol_v2 group, so it names every client that
reached it independently of stickyd's own counters. Deny wins over allow; IPv6 and
v4-mapped clients; a PROXY-protocol listener judges the header's address; a reload
swaps the lists for new clients only; bad entries are one exact line."""
import json
import os
import re
import sys
import threading

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from test_reload import Daemon  # noqa: E402

NO_CHECKS = {"enabled": False}  # only clients reach the stub target


def refused_counts(sock, listener):
    status = json.loads(h.admin_get(sock, "/status"))
    for entry in status["listeners"]:
        if entry["name"] == listener:
            return entry["refused"]
    raise h.Failure(f"no listener {listener} in /status: {status['listeners']}")


def expect_refused(stickyd, listener, denied, not_allowed, group="web"):
    """Waits for the listener's counters to reach these, then checks /metrics too."""
    wanted = {"denied": denied, "not_allowed": not_allowed}
    h.wait_for(
        f"refused counts {wanted} on {listener}",
        lambda: refused_counts(stickyd.admin_socket, listener) == wanted,
        timeout=10,
        process=stickyd.process,
    )
    metrics = h.admin_get(stickyd.admin_socket, "/metrics")
    for reason, value in wanted.items():
        line = (
            f'stickyd_listener_refused_connections_total{{listener="{listener}",'
            f'target_group="{group}",reason="{reason}"}} {value}'
        )
        h.expect(line in metrics.splitlines(), f"/metrics lacks {line!r}")


class StubTarget:
    """The target of a proxy_protocol_v2 group: records the client each connection's
    PROXY header names, then echoes until the connection ends."""

    def __init__(self, host="127.0.0.1"):
        self.clients = []
        self.lock = threading.Lock()
        self.server = h.PyServer(self.serve, host)
        self.address = self.server.address

    def serve(self, conn):
        command, src, _ = h.read_proxy_v2(conn)
        if command == 0 or src is None:
            return None
        with self.lock:
            self.clients.append(src[0])
        while True:
            data = conn.recv(65536)
            if not data:
                return src[0]
            h.send_all(conn, data)

    def seen(self):
        with self.lock:
            return list(self.clients)


def group(target):
    return {
        "name": "web",
        "connect_timeout": "1s",
        "proxy_protocol_v2": True,
        "health_check": dict(NO_CHECKS),
        "targets": [{"id": "stub", "address": target.address}],
    }


def start(target, listeners):
    """stickyd with these listener tables in front of the stub; waits for the first."""
    first = listeners[0]["bind"]
    host, _, port = first.rpartition(":")
    return h.start_stickyd(
        h.config_text(listeners, [group(target)]), addr=(host.strip("[]"), int(port))
    )


def served(lb, src, preamble=b""):
    """One line echoed through stickyd from source address src."""
    with h.connect(lb, src) as s:
        h.send_all(s, preamble + b"hello\n")
        h.expect_eq(h.recv_line(s), "hello", f"echo for {src} via {h.fmt_addr(lb)}")


def reset(lb, src, preamble=b""):
    """The client from src is reset without an answer."""
    try:
        s = h.connect(lb, src)  # the kernel completes the handshake before stickyd judges
    except ConnectionResetError:  # the reset came before connect() returned
        return
    with s:
        try:
            h.send_all(s, preamble + b"hello\n")
        except (ConnectionResetError, BrokenPipeError):
            return
        h.expect_eq(h.wait_closed(s), "reset", f"how stickyd ended the client {src}")


def expect_reached(target, wanted, refused):
    """After the refused clients, an allowed client round trip is the barrier; then
    the stub must have seen each allowed client, and none of the refused."""
    seen = target.seen()
    for ip in wanted:
        h.expect(ip in seen, f"target never saw the allowed client {ip} (saw {seen})")
    for ip in refused:
        h.expect(ip not in seen, f"target saw a connection for the refused client {ip}")


def test_allow_list_proxies_inside_and_resets_outside():
    target = StubTarget()
    lb = h.lb_addr()
    stickyd = start(
        target,
        [{"bind": h.fmt_addr(lb), "target_group": "web", "allow": ["127.0.0.1", "127.0.0.0/29"]}],
    )
    inside = ["127.0.0.2", "127.0.0.5", "127.0.0.7"]
    outside = ["127.0.0.8", "127.0.0.9", "127.0.1.2"]
    for ip in outside:
        reset(lb, ip)
    for ip in inside:
        served(lb, ip)
    expect_reached(target, inside, outside)
    expect_refused(stickyd, h.fmt_addr(lb), denied=0, not_allowed=len(outside))
    # Per connection, refusals stay out of the log at info level.
    for ip in outside:
        h.expect(ip not in stickyd.process.log(), f"{ip} was logged:\n{stickyd.describe()}")


def test_deny_wins_over_allow():
    target = StubTarget()
    lb = h.lb_addr()
    stickyd = start(
        target,
        [
            {
                "bind": h.fmt_addr(lb),
                "target_group": "web",
                "allow": ["127.0.0.0/24"],
                "deny": ["127.0.0.8/29", "127.0.0.3"],
            }
        ],
    )
    reset(lb, "127.0.0.3")  # a host in allow and deny
    reset(lb, "127.0.0.9")  # in the deny /29 inside the allowed /24
    reset(lb, "127.0.0.15")
    reset(lb, "127.0.1.2")  # outside allow
    served(lb, "127.0.0.2")
    served(lb, "127.0.0.16")
    expect_reached(
        target, ["127.0.0.2", "127.0.0.16"], ["127.0.0.3", "127.0.0.9", "127.0.0.15", "127.0.1.2"]
    )
    expect_refused(stickyd, h.fmt_addr(lb), denied=3, not_allowed=1)


def test_ipv6_and_v4_mapped_clients():
    if not h.ipv6_available():
        h.skip("no IPv6 loopback (::1)")
    target = StubTarget()
    v6_port = h.free_port("::1")
    mapped_port = h.free_port("127.0.0.1")
    # An IPv6 socket on ::ffff:127.0.0.1 sees IPv4 clients as ::ffff:a.b.c.d, as a
    # dual-stack [::] listener does, without listening beyond loopback.
    lists = {"allow": ["::1", "127.0.0.0/29"], "deny": ["127.0.0.3"]}
    stickyd = start(
        target,
        [
            dict({"name": "v6", "bind": f"[::1]:{v6_port}", "target_group": "web"}, **lists),
            dict(
                {
                    "name": "mapped",
                    "bind": f"[::ffff:127.0.0.1]:{mapped_port}",
                    "target_group": "web",
                },
                **lists,
            ),
        ],
    )
    mapped = ("127.0.0.1", mapped_port)
    h.wait_accepting(mapped)
    served(("::1", v6_port), "::1")
    served(mapped, "127.0.0.2")
    reset(mapped, "127.0.0.3")  # an IPv4 deny entry holds the v4-mapped client
    reset(mapped, "127.0.0.9")
    expect_reached(target, ["::1", "127.0.0.2"], ["127.0.0.3", "127.0.0.9"])
    # The waits above already passed through each listener once from allowed sources.
    expect_refused(stickyd, "mapped", denied=1, not_allowed=1)
    expect_refused(stickyd, "v6", denied=0, not_allowed=0)

    # An IPv4-only allow list refuses every IPv6 client.
    target2 = StubTarget()
    lb = ("::1", h.free_port("::1"))
    stickyd2 = start(
        target2,
        [
            {
                "name": "v4only",
                "bind": h.fmt_addr(lb),
                "target_group": "web",
                "allow": ["127.0.0.0/8"],
            }
        ],
    )
    reset(lb, "::1")
    h.expect_eq(target2.seen(), [], "clients the IPv4-only target group saw")
    # wait_accepting's own probe from ::1 was refused too.
    h.wait_for(
        "the refusals of ::1",
        lambda: refused_counts(stickyd2.admin_socket, "v4only")["not_allowed"] >= 2,
        timeout=10,
        process=stickyd2.process,
    )


def test_proxy_protocol_listener_judges_the_header_address():
    target = StubTarget()
    lb = h.lb_addr()
    stickyd = start(
        target,
        [
            {
                "bind": h.fmt_addr(lb),
                "target_group": "web",
                "accept_proxy_protocol": True,
                "access_log": True,
                "allow": ["203.0.113.0/24"],
                "deny": ["203.0.113.66"],
            }
        ],
    )

    def header(src):
        return h.proxy_v1_header((src, 40000), (lb[0], lb[1]))

    served(lb, "127.0.0.2", header("203.0.113.7"))
    # The peer 127.0.0.9 is in no list: its header's address is what counts.
    served(lb, "127.0.0.9", h.proxy_v2_header(("203.0.113.8", 40000), lb))
    reset(lb, "127.0.0.2", header("198.51.100.7"))
    reset(lb, "127.0.0.2", header("203.0.113.66"))
    served(lb, "127.0.0.3", header("203.0.113.9"))
    expect_reached(
        target,
        ["203.0.113.7", "203.0.113.8", "203.0.113.9"],
        ["198.51.100.7", "203.0.113.66", "127.0.0.2", "127.0.0.9"],
    )
    expect_refused(stickyd, h.fmt_addr(lb), denied=1, not_allowed=1)
    # What the refused client sent after its header counts nowhere.
    for source, end in (("198.51.100.7", '"not allowed"'), ("203.0.113.66", "denied")):
        wait_for_access_line(
            stickyd,
            source,
            rf"client=127\.0\.0\.2:\d+ source={re.escape(source)}:40000 group=- "
            rf"target=- addr=- attempts=0 up=0 down=0 ms=\d+\.\d end={end}$",
        )


def wait_for_access_line(stickyd, who, pattern):
    """Waits until stickyd's log has an access line (a whole line) matching pattern."""
    h.wait_for(
        f"the access line of {who}",
        lambda: re.search(pattern, stickyd.process.log(), re.M),
        timeout=10,
        process=stickyd.process,
    )


def test_access_log_records_refusals_when_on():
    target = StubTarget()
    lb = h.lb_addr()
    stickyd = start(
        target,
        [
            {
                "bind": h.fmt_addr(lb),
                "target_group": "web",
                "access_log": True,
                "allow": ["127.0.0.1", "127.0.0.2"],
                "deny": ["127.0.0.2"],
            }
        ],
    )
    reset(lb, "127.0.0.2")
    reset(lb, "127.0.0.9")
    for ip, end in (("127.0.0.2", "denied"), ("127.0.0.9", '"not allowed"')):
        wait_for_access_line(
            stickyd,
            ip,
            rf"access listener={re.escape(h.fmt_addr(lb))} client={re.escape(ip)}:\d+ "
            rf"group=- target=- addr=- attempts=0 up=0 down=0 ms=\d+\.\d end={end}$",
        )


def test_reload_swaps_the_lists_for_new_clients_only():
    target = StubTarget()
    lb = h.lb_addr()
    admin = os.path.join(h.temp_dir(), "reloaded-admin.sock")  # the same in every version

    def text(**lists):
        listener = {"bind": h.fmt_addr(lb), "target_group": "web"}
        listener.update(lists)
        return h.config_text([listener], [group(target)], {"admin_socket": admin})

    d = Daemon(text(allow=["127.0.0.1", "127.0.0.2"]), lb)
    old = h.connect(lb, "127.0.0.2")
    h.on_cleanup(old.close)
    h.send_all(old, b"before\n")
    h.expect_eq(h.recv_line(old), "before", "echo on the connection opened before the reload")
    reset(lb, "127.0.0.3")

    d.reload(text(allow=["127.0.0.1", "127.0.0.3"]))
    served(lb, "127.0.0.3")
    reset(lb, "127.0.0.2")
    h.send_all(old, b"after\n")  # an open connection is not judged again
    h.expect_eq(h.recv_line(old), "after", "echo on the old connection after the reload")

    # A bad list changes nothing: the running lists keep serving.
    line = d.reload(text(allow=["127.0.0.1", "127.0.0.3/8"]), outcome="reload failed")
    h.expect(
        line.endswith(
            f'{d.path}:10:23: listener[0].allow[1]: "127.0.0.3/8": host bits are '
            "set; did you mean 127.0.0.0/8?"
        ),
        f"reload error line: {line}",
    )
    served(lb, "127.0.0.3")
    reset(lb, "127.0.0.2")

    d.reload(text())  # no lists: everyone again
    served(lb, "127.0.0.2")
    served(lb, "127.0.0.9")
    h.expect_eq(
        refused_counts(d.stickyd.admin_socket, h.fmt_addr(lb)),
        {"denied": 0, "not_allowed": 3},
        "refusals over the reloads",
    )


def test_bad_entries_are_one_exact_line():
    base = (
        '[[listener]]\nbind = "127.0.0.1:8000"\ntarget_group = "web"\n{}\n'
        '[[target_group]]\nname = "web"\n[[target_group.target]]\naddress = "127.0.0.1:9001"\n'
    )
    cases = [
        (
            'allow = ["10.0.0.0/8", "10.0.0.1/8"]',
            '4:24: listener[0].allow[1]: "10.0.0.1/8": host bits are set; did you mean 10.0.0.0/8?',
        ),
        (
            'deny = ["2001:db8::/129"]',
            '4:9: listener[0].deny[0]: "2001:db8::/129": prefix length 129 is out of range 0-128 '
            "for an IPv6 address",
        ),
        (
            'allow = ["office.example.com"]',
            '4:10: listener[0].allow[0]: "office.example.com": not an IPv4 or IPv6 address; '
            "expected a CIDR prefix such as 10.0.0.0/8 or 2001:db8::/32, or a bare address",
        ),
        (
            "allow = []",
            "4:9: listener[0].allow: an empty list would refuse every client; remove the key to "
            'allow every client, or list prefixes such as "10.0.0.0/8"',
        ),
    ]
    for i, (keys, wanted) in enumerate(cases):
        path = h.write_file(f"bad{i}.toml", base.format(keys))
        r = h.run([h.STICKYD_BIN, "--check-config", path])
        h.expect_eq((r.returncode, r.stderr), (1, f"{path}:{wanted}\n"), f"--check-config {keys}")


def test_quick_mode_flags():
    target = StubTarget()
    lb = h.lb_addr()
    stickyd = h.start_stickyd(
        args=[
            "--listen",
            h.fmt_addr(lb),
            "--target",
            target.address,
            "--proxy-protocol-v2",
            "--health-check",
            "off",
            "--threads",
            "2",
            "--allow",
            "127.0.0.1",
            "--allow",
            "127.0.0.0/29",
            "--deny",
            "127.0.0.3",
        ],
        addr=lb,
    )
    served(lb, "127.0.0.2")
    reset(lb, "127.0.0.3")
    reset(lb, "127.0.0.9")
    expect_reached(target, ["127.0.0.2"], ["127.0.0.3", "127.0.0.9"])
    expect_refused(stickyd, h.fmt_addr(lb), denied=1, not_allowed=1, group="default")

    common = [h.STICKYD_BIN, "--listen", "127.0.0.1:1", "--target", "127.0.0.1:2"]
    for flags, wanted in [
        (
            ["--allow", "10.0.0.1/33"],
            "--allow 10.0.0.1/33: prefix length 33 is out of range 0-32 for an IPv4 address",
        ),
        (
            ["--allow", "10.0.0.0/8", "--deny", "10.0.0.1/8"],
            "--deny 10.0.0.1/8: host bits are set; did you mean 10.0.0.0/8?",
        ),
        (
            ["--deny", "localhost"],
            "--deny localhost: not an IPv4 or IPv6 address; expected a CIDR prefix such as "
            "10.0.0.0/8 or 2001:db8::/32, or a bare address",
        ),
    ]:
        r = h.run(common + flags)
        h.expect_eq((r.returncode, r.stderr), (2, f"stickyd: {wanted}\n"), " ".join(flags))


if __name__ == "__main__":
    h.main()
