#!/usr/bin/env python3
"""Quick mode's --target HOST:PORT: a name resolved as a file's dns = "HOST:PORT" is,
beside literal addresses, in the one target group quick mode builds.

The cases that change what a name resolves to run stickyd in a private mount
namespace with a hosts file of their own (test_dns.py's approach), so nothing is
ever asked of a real DNS server; the localhost cases use the machine's own
/etc/hosts, as a user's `--target localhost:9001` does."""
import json
import os
import socket
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import test_dns as dns  # noqa: E402
import test_empty_group as empty  # noqa: E402

APP = "app.stickyd.test"  # .test: reserved, never a real name
API = "api.stickyd.test"
REFRESH = "200ms"


def localhost_addresses():
    """What getaddrinfo makes of localhost here, as stickyd asks it (SOCK_STREAM)."""
    infos = socket.getaddrinfo("localhost", None, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


def status_of(sock):
    r = h.run([h.STICKYCTL_BIN, "status", "--json", "--admin", sock])
    h.expect_eq(r.returncode, 0, f"stickyctl status --json ({r.stderr.strip()})")
    return json.loads(r.stdout)


def group_of(sock):
    groups = status_of(sock)["groups"]
    h.expect_eq([g["name"] for g in groups], ["default"], "quick mode's groups")
    return groups[0]


def live_targets(sock):
    """{id: (address, origin)} of the targets not deregistering."""
    return {
        t["id"]: (t["address"], t["origin"])
        for t in group_of(sock)["targets"]
        if t["deregistration"] != "removed"
    }


def backends_on(name, ips, port=None):
    """stickyd-echo backends answering `name` on each IP, all on one port."""
    port = port or h.free_port(ips[0])
    for ip in ips:
        h.Backend(name, h.fmt_addr((ip, port)))
    return port


def quick(targets, extra=()):
    """stickyd in quick mode with fast checks; returns (lb, admin socket, argv)."""
    lb = h.lb_addr()
    sock = os.path.join(h.temp_dir(), f"admin-{lb[1]}.sock")
    argv = ["--listen", h.fmt_addr(lb), "--admin-socket", sock, "--threads", "2"]
    for t in targets:
        argv += ["--target", t]
    argv += ["--health-interval", "300ms", "--health-timeout", "200ms", "--connect-timeout", "1s"]
    return lb, sock, argv + list(extra)


def reached(lb, clients):
    return set(h.mapping(lb, clients).values())


# ---------------------------------------------------------------------------------
# localhost, from this machine's /etc/hosts.


def test_target_localhost_works_and_sticks():
    addresses = localhost_addresses()
    h.expect("127.0.0.1" in addresses, f"localhost resolves to {addresses}")
    if "::1" in addresses and not h.ipv6_available():
        h.skip("localhost resolves to ::1 here, but IPv6 loopback is not available")
    port = backends_on("web", addresses)
    lb, sock, argv = quick([f"localhost:{port}"])
    stickyd = h.Stickyd(argv, lb, admin_socket=sock)
    log = stickyd.process.log()
    h.expect(
        f"target group 'default': dns localhost:{port} resolves to" in log,
        f"the start-up log names the name it resolves:\n{log}",
    )
    clients = h.source_ips(20, first=20)
    h.expect_eq(set(h.mapping(lb, clients, repeat=3).values()), {"web"}, "backends reached")

    group = group_of(sock)
    h.expect_eq(group["dns_names"], [f"localhost:{port}"], "/status dns_names")
    h.expect_eq(group["dns_error"], None, "/status dns_error")
    wanted = {
        h.fmt_addr((ip, port)): (h.fmt_addr((ip, port)), "dns") for ip in localhost_addresses()
    }
    h.expect_eq(live_targets(sock), wanted, "targets: each address of localhost, from DNS")
    text = h.run([h.STICKYCTL_BIN, "status", "--admin", sock]).stdout
    h.expect(f"DNS names: localhost:{port}\n" in text, f"stickyctl status names it:\n{text}")


def test_literal_and_name_mix_in_one_group_and_one_backend_is_one_target():
    a_port = backends_on("literal", ["127.0.0.2"])
    b_port = backends_on("named", localhost_addresses())
    # The same backend twice, as an address and through localhost: one target.
    lb, sock, argv = quick(
        [f"127.0.0.2:{a_port}", f"localhost:{b_port}", f"127.0.0.1:{b_port}"],
    )
    h.Stickyd(argv, lb, admin_socket=sock)
    clients = h.source_ips(40, first=20)
    first = h.mapping(lb, clients, repeat=2)
    h.expect_eq(set(first.values()), {"literal", "named"}, "both backends reached")
    h.expect_eq(h.mapping(lb, clients), first, "each client on the same backend again")

    targets = live_targets(sock)
    literal = f"127.0.0.2:{a_port}"
    same = f"127.0.0.1:{b_port}"
    h.expect_eq(targets[literal], (literal, "config"), "the literal target")
    h.expect_eq(targets[same], (same, "config"), "the address given as both: the literal's")
    h.expect_eq(
        sorted(a for a, _ in targets.values()),
        sorted(set(a for a, _ in targets.values())),
        f"no address twice among {targets}",
    )
    h.expect_eq(group_of(sock)["dns_names"], [f"localhost:{b_port}"], "/status dns_names")


# ---------------------------------------------------------------------------------
# Names whose addresses change, in a private mount namespace.


def quick_in_namespace(hosts, targets):
    lb, sock, argv = quick(targets, ["--dns-refresh", REFRESH])
    process = dns.in_namespace([h.STICKYD_BIN] + argv, hosts, "stickyd")
    h.wait_accepting(lb, process)
    h.wait_for(
        "the admin endpoint",
        lambda: f"admin endpoint on unix:{sock}" in process.log(),
        process=process,
    )
    return lb, sock, process


def test_names_addresses_move_targets_in_and_out():
    dns.need_namespaces()
    port = h.free_port("127.0.0.2")
    for name, ip in (("app-a", "127.0.0.2"), ("app-b", "127.0.0.3"), ("api-a", "127.0.0.4")):
        h.Backend(name, f"{ip}:{port}")
    h.Backend("static", f"127.0.0.5:{port}")
    hosts = dns.HostsFile({APP: ["127.0.0.2"], API: ["127.0.0.4"]})
    lb, sock, stickyd = quick_in_namespace(
        hosts, [f"{APP}:{port}", f"127.0.0.5:{port}", f"{API}:{port}"]
    )
    clients = h.source_ips(40, first=20)
    h.expect_eq(reached(lb, clients), {"app-a", "api-a", "static"}, "backends at start")
    h.expect_eq(
        group_of(sock)["dns_names"], [f"{APP}:{port}", f"{API}:{port}"], "/status dns_names"
    )

    hosts.set({APP: ["127.0.0.2", "127.0.0.3"], API: ["127.0.0.4"]})
    h.wait_for(
        "app-b to take clients",
        lambda: reached(lb, clients) == {"app-a", "app-b", "api-a", "static"},
        process=stickyd,
    )
    before = h.mapping(lb, clients)

    # app-a leaves the name: only its clients move.
    hosts.set({APP: ["127.0.0.3"], API: ["127.0.0.4"]})
    h.wait_for(
        "app-a gone from new connections",
        lambda: reached(lb, clients) == {"app-b", "api-a", "static"},
        process=stickyd,
    )
    after = h.mapping(lb, clients)
    moved = {ip for ip in clients if before[ip] != after[ip]}
    h.expect_eq(moved, {ip for ip in clients if before[ip] == "app-a"}, "clients that moved")

    # One name failing keeps its last set; the other still changes meanwhile.
    hosts.set({APP: ["127.0.0.3", "127.0.0.2"]})
    h.wait_for(
        "api's failure in the log",
        lambda: f"cannot resolve {API}" in stickyd.log(),
        process=stickyd,
    )
    h.wait_for("app-a back", lambda: "app-a" in reached(lb, clients), process=stickyd, timeout=20)
    h.expect_eq(
        reached(lb, clients), {"app-a", "app-b", "api-a", "static"}, "api keeps its last set"
    )
    error = group_of(sock)["dns_error"]
    h.expect(error and error.startswith(f"cannot resolve {API}: "), f"dns_error {error!r}")
    time.sleep(1)  # five refreshes of a name that stays broken
    failures = [ln for ln in stickyd.log().splitlines() if f"cannot resolve {API}" in ln]
    h.expect_eq(len(failures), 1, f"log lines about the failure ({failures})")


def test_a_name_that_resolves_to_nothing_then_appears():
    dns.need_namespaces()
    port = h.free_port("127.0.0.2")
    hosts = dns.HostsFile({})
    lb, sock, stickyd = quick_in_namespace(hosts, [f"{APP}:{port}"])
    log = stickyd.log()
    h.expect(
        f"target group 'default': dns {APP}:{port}: cannot resolve {APP}" in log,
        f"the start-up warning names the name:\n{log}",
    )
    h.expect(
        f"target group 'default' has no targets (DNS name {APP}:{port} gave no addresses)" in log,
        f"the empty group's warning:\n{log}",
    )
    empty.expect_clients_closed_and_counted(lb, sock, "default", stickyd)
    h.expect(group_of(sock)["dns_error"].startswith(f"cannot resolve {APP}: "), "dns_error")

    h.Backend("app-a", f"127.0.0.2:{port}")
    hosts.set({APP: ["127.0.0.2"]})
    h.wait_for(
        "the group to have its target",
        lambda: h.admin_document(sock, "/ring")[0] == 200,
        process=stickyd,
    )
    h.expect_eq(h.whoami("127.0.0.30", lb), "app-a", "a client once the name resolves")
    h.expect_eq(group_of(sock)["dns_error"], None, "dns_error once it resolves")


# ---------------------------------------------------------------------------------
# Command-line errors: one line naming the flag and which --target.


def test_bad_targets_are_one_line_naming_the_flag():
    listen = f"127.0.0.1:{h.free_port()}"
    address = "ip:port such as 127.0.0.1:9001 or [::1]:9001"
    not_a_name = "is not a host name (letters, digits, '-', '_' and dots between labels of 1 to 63)"
    cases = [
        (
            ["127.0.0.1:9001", "localhost:9001", "127.0.0.1:9001"],
            "#3 127.0.0.1:9001: duplicate address",
        ),
        (["web:8080", "localhost:9001", "WEB:8080"], "#3 WEB:8080: duplicate host name"),
        (
            ["127.0.0.1:9001", ":80"],
            "#2 :80: the host is empty; expected HOST:PORT such as localhost:9001",
        ),
        (["web:0"], "#1 web:0: the port must be from 1 to 65535, got '0'"),
        (["web:http"], "#1 web:http: the port must be from 1 to 65535, got 'http'"),
        (
            ["web"],
            f"#1 web: not an address or HOST:PORT; expected {address}, or HOST:PORT such as "
            "localhost:9001",
        ),
        (["256.1.2.3:80"], f"#1 256.1.2.3:80: not an address; expected {address}"),
        (["::1:80"], f"#1 ::1:80: not an address; expected {address}"),
        (["my_app:80", "a b:80"], f"#2 a b:80: 'a b' {not_a_name}"),
        (["a..b:80"], f"#1 a..b:80: 'a..b' {not_a_name}"),
    ]
    for targets, wanted in cases:
        argv = ["--listen", listen]
        for t in targets:
            argv += ["--target", t]
        r = h.run([h.STICKYD_BIN] + argv, timeout=10)
        h.expect_eq(r.stderr, f"stickyd: --target {wanted}\n", f"stickyd {' '.join(argv)}")
        h.expect_eq(r.returncode, 2, f"stickyd {' '.join(argv)}: exit status")

    for extra, wanted in (
        (
            ["--target", "127.0.0.1:9001", "--dns-refresh", "1s"],
            "--dns-refresh: only applies with a --target HOST:PORT (a name to resolve); add one "
            "or remove the flag",
        ),
        (
            ["--target", "web:8080", "--dns-refresh", "10ms"],
            "--dns-refresh: expected a duration from 100ms to 1h, got '10ms'",
        ),
    ):
        r = h.run([h.STICKYD_BIN, "--listen", listen] + extra, timeout=10)
        h.expect_eq(r.stderr, f"stickyd: {wanted}\n", f"stickyd {' '.join(extra)}")
        h.expect_eq(r.returncode, 2, f"stickyd {' '.join(extra)}: exit status")


if __name__ == "__main__":
    h.main()
