#!/usr/bin/env python3
"""Several instances behind one route: they can be checked for agreement
(`stickyctl compare`: same fingerprint whatever the listing order; one extra target
differs by exactly the share `stickyctl simulate` computes offline), they withdraw
before they stop (/ready 503 while still accepting for shutdown_delay, refused
after), and three of them behind a router's resilient ECMP nexthop group in network
namespaces keep every client on one backend, also while one of them is scaled in
under a continuous stream of new connections, by hand and with BIRD announcing
the VIP over BGP (conf/bird) while stickyd is ready."""
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

CLIENT_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fleet_client.py")


def ready_status(path):
    """/ready's HTTP status, or None while the endpoint does not answer."""
    try:
        return h.admin_document(path, "/ready")[0]
    except OSError:
        return None


# ---------------------------------------------------------------------------------
# stickyctl compare


def two_instances(targets_a, targets_b):
    """Two daemons of one group "web"; returns their admin socket paths."""
    paths = []
    for targets in (targets_a, targets_b):
        lb = h.lb_addr()
        config = h.config_text(
            [{"bind": h.fmt_addr(lb), "target_group": "web"}], [{"name": "web", "targets": targets}]
        )
        paths.append(h.start_stickyd(config, addr=lb).admin_socket)
    return paths


def targets_of(backends):
    return [
        {"id": b.name, "address": b.address, "weight": 2 if i == 1 else 1}
        for i, b in enumerate(backends)
    ]


def test_compare_agrees_when_targets_are_listed_in_another_order():
    backends = h.start_backends(4)
    targets = targets_of(backends)
    a, b = two_instances(targets, list(reversed(targets)))

    result = h.stickyctl("compare", "--admin", a, "--admin", b, ok=False)
    h.expect(
        result.returncode == 0,
        f"compare exited {result.returncode}: {result.stdout}" f"{result.stderr}",
    )
    h.expect("group web: 2 instances agree" in result.stdout, result.stdout)
    h.expect(result.stdout.rstrip().endswith("all instances agree"), result.stdout)

    fingerprints = set()
    for path in (a, b):
        _, status = h.admin_document(path, "/status")
        routing = status["groups"][0]["routing"]
        h.expect_eq(routing["mapping_version"], 1, "mapping version")
        h.expect_eq(
            [t["id"] for t in routing["targets"]],
            sorted(x.name for x in backends),
            "routing targets, by id",
        )
        fingerprints.add(routing["fingerprint"])
        _, metrics = h.admin_document(path, "/metrics")
        line = (
            f'stickyd_target_group_routing_info{{group="web",'
            f'fingerprint="{routing["fingerprint"]}"}} 1'
        )
        h.expect(line in metrics.splitlines(), f"no {line!r} in /metrics")
        shown = h.stickyctl("status", "--admin", path, ok=False)
        h.expect(
            f"routing fingerprint {routing['fingerprint']} (mapping version 1)" in shown.stdout,
            f"stickyctl status: {shown.stdout}",
        )
    h.expect_eq(len(fingerprints), 1, "distinct fingerprints of the two instances")


def test_compare_names_the_extra_target_and_the_exact_share_that_differs():
    backends = h.start_backends(5)
    targets = targets_of(backends)
    a, b = two_instances(targets[:4], list(reversed(targets)))

    result = h.stickyctl("compare", "--admin", a, "--admin", b, "--json", ok=False)
    h.expect(
        result.returncode == 1,
        f"compare of differing instances exited " f"{result.returncode}: {result.stderr}",
    )
    doc = json.loads(result.stdout)
    h.expect_eq(doc["agree"], False, "agree")
    group = doc["groups"][0]
    h.expect_eq(len(group["differences"]), 1, "differences")
    diff = group["differences"][0]
    h.expect_eq(diff["only_here"], [backends[4].name], "targets only on the second instance")
    h.expect_eq(diff["only_in_reference"], [], "targets only on the first")

    # The same question offline: what would adding the fifth target to the first
    # instance's configuration move?
    config = h.write_file(
        "a.toml",
        h.config_text(
            [{"bind": "127.0.0.1:1", "target_group": "web"}],
            [{"name": "web", "targets": targets[:4]}],
        ),
    )
    sim = h.stickyctl(
        "simulate",
        "--config",
        config,
        "--json",
        "--add",
        f"{backends[4].name}={backends[4].address}",
        ok=False,
    )
    h.expect(sim.returncode == 0, f"simulate: {sim.stderr}")
    moved = json.loads(sim.stdout)
    h.expect(moved["moved"] > 0, f"simulate moved nothing: {moved}")
    h.expect_eq(diff["differs"], moved["moved"], "share routed differently (compare, simulate)")
    h.expect_eq(
        sorted((m["from"], m["to"]) for m in diff["moves"]),
        sorted((m["from"], m["to"]) for m in moved["moves"]),
        "moves",
    )

    text = h.stickyctl("compare", "--admin", a, "--admin", b, ok=False)
    h.expect(text.returncode == 1, f"compare (text) exited {text.returncode}")
    h.expect("group web: instances DIFFER" in text.stdout, text.stdout)
    h.expect(f"only on {b}: {backends[4].name}" in text.stdout, text.stdout)
    h.expect(
        f"{moved['moved'] * 100:.4f}% of the keyspace routes to another backend" in text.stdout,
        text.stdout,
    )
    h.expect("instances differ" in text.stdout.splitlines()[-1], text.stdout)


def test_compare_needs_two_instances_and_names_an_unreachable_one():
    result = h.stickyctl("compare", "--admin", "/nonexistent/a.sock", ok=False)
    h.expect(result.returncode != 0, "compare with one instance succeeded")
    h.expect("at least two" in result.stderr, result.stderr)
    result = h.stickyctl(
        "compare", "--admin", "/nonexistent/a.sock", "--admin", "/nonexistent/b", ok=False
    )
    h.expect(result.returncode == 1, f"exit {result.returncode}")
    h.expect("/nonexistent/a.sock" in result.stderr, result.stderr)


# ---------------------------------------------------------------------------------
# /ready and shutdown_delay


def connects(addr):
    try:
        with h.connect(addr, timeout=2.0):
            return True
    except OSError:
        return False


def test_ready_turns_503_on_sigterm_while_the_delay_still_accepts():
    backend = h.start_backend("echo")
    lb = h.lb_addr()
    admin = os.path.join(h.temp_dir(), "ready.sock")
    stickyd = h.start_stickyd(
        args=[
            "--listen",
            h.fmt_addr(lb),
            "--target",
            backend.address,
            "--shutdown-delay",
            "8s",
            "--shutdown-grace",
            "5s",
            "--admin-socket",
            admin,
        ],
        addr=lb,
    )
    proc = stickyd.process
    h.expect_eq(h.admin_document(admin, "/ready"), (200, {"ready": True}), "/ready while serving")
    h.expect_eq(
        h.stickyctl("ready", "--admin", admin, ok=False).returncode, 0, "stickyctl ready, serving"
    )

    held = h.connect(lb, "127.0.0.2")
    h.on_cleanup(held.close)
    proc.signal(signal.SIGTERM)
    h.wait_for("/ready to answer 503", lambda: ready_status(admin) == 503, process=proc)
    h.expect_eq(h.admin_document(admin, "/ready")[1], {"ready": False}, "/ready body once stopping")
    not_ready = h.stickyctl("ready", "--admin", admin, ok=False)
    h.expect(
        not_ready.returncode == 1 and "not ready" in not_ready.stdout,
        f"stickyctl ready while withdrawing: {not_ready.returncode} {not_ready.stdout}",
    )
    # Within the delay: a new connection still reaches the backend.
    fresh = h.connect(lb, "127.0.0.3")
    payload = b"during the delay\n" * 100
    with fresh:
        h.expect_eq(
            h.echo_roundtrip(fresh, payload),
            (len(payload), h.sha256(payload)),
            "echo through a connection accepted during the delay",
        )
    h.expect(proc.alive(), "stickyd exited during its shutdown delay")
    # After it: refused, while the held connection still has its grace.
    h.wait_for(
        "the listener to close after the delay", lambda: not connects(lb), timeout=30, process=proc
    )
    payload = b"held through it all\n" * 10
    h.expect_eq(
        h.echo_roundtrip(held, payload),
        (len(payload), h.sha256(payload)),
        "echo through the connection opened before SIGTERM",
    )
    log = proc.log()
    h.expect("not ready; still accepting for the shutdown delay of 8000 ms" in log, log)
    h.expect("delay over: stopped accepting" in log, log)


def test_a_second_signal_during_the_delay_stops_at_once():
    backend = h.start_backend("echo")
    lb = h.lb_addr()
    admin = os.path.join(h.temp_dir(), "twice.sock")
    proc = h.start_stickyd(
        args=[
            "--listen",
            h.fmt_addr(lb),
            "--target",
            backend.address,
            "--shutdown-delay",
            "5m",
            "--shutdown-grace",
            "5m",
            "--admin-socket",
            admin,
        ],
        addr=lb,
    ).process
    held = h.connect(lb, "127.0.0.2")
    h.on_cleanup(held.close)
    h.send_all(held, b"STICKYD-TEST HOLD\n")
    proc.signal(signal.SIGTERM)
    h.wait_for("/ready to answer 503", lambda: ready_status(admin) == 503, process=proc)
    proc.signal(signal.SIGTERM)
    h.expect_eq(proc.wait(15), 0, "exit status after a second SIGTERM (delay and grace 5m)")
    h.expect(h.wait_closed(held, timeout=10) in ("eof", "reset"), "held connection still open")


def notify_socket():
    """A datagram socket standing in for systemd's NOTIFY_SOCKET: (path, socket)."""
    path = os.path.join(h.temp_dir(), "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    h.on_cleanup(sock.close)
    return path, sock


def statuses_until(sock, wanted, timeout=20.0):
    """Every STATUS= received until one starts with `wanted`."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(4096).decode()
        except socket.timeout:
            break
        for line in data.splitlines():
            if line.startswith("STATUS="):
                seen.append(line[len("STATUS=") :])
                if seen[-1].startswith(wanted):
                    return seen
    raise h.Failure(f"no STATUS= starting with {wanted!r} within {timeout}s; got {seen}")


def test_status_says_withdrawing_then_draining():
    backend = h.start_backend("echo")
    lb = h.lb_addr()
    path, sock = notify_socket()
    argv = [
        h.STICKYD_BIN,
        "--listen",
        h.fmt_addr(lb),
        "--target",
        backend.address,
        "--shutdown-delay",
        "2s",
        "--admin-socket",
        os.path.join(h.temp_dir(), "a.sock"),
    ]
    os.environ["NOTIFY_SOCKET"] = path
    try:
        proc = h.Process(argv, "stickyd-notify")
    finally:
        del os.environ["NOTIFY_SOCKET"]
    h.wait_accepting(lb, proc)
    proc.signal(signal.SIGTERM)
    seen = statuses_until(sock, "withdrawing (shutdown delay 2s): not ready, still accepting; ")
    seen += statuses_until(sock, "draining: not accepting; ")
    h.expect(proc.wait(20) == 0, f"stickyd did not exit 0 after draining; STATUS= seen: {seen}")


def test_without_a_delay_ready_is_503_as_soon_as_the_stop_begins():
    backend = h.start_backend("echo")
    lb = h.lb_addr()
    config = h.simple_config(h.fmt_addr(lb), [backend], global_={"shutdown_grace": "30s"})
    stickyd = h.start_stickyd(config, addr=lb)
    admin = stickyd.admin_socket
    h.expect_eq(ready_status(admin), 200, "/ready while serving")
    held = h.connect(lb, "127.0.0.2")
    h.on_cleanup(held.close)
    h.send_all(held, b"STICKYD-TEST HOLD\n")
    stickyd.process.signal(signal.SIGTERM)
    h.wait_for("the listener to close", lambda: not connects(lb), process=stickyd.process)
    h.expect_eq(ready_status(admin), 503, "/ready while draining")


def test_shutdown_delay_is_checked_like_every_duration():
    path = h.write_file(
        "bad.toml",
        h.config_text(
            [{"bind": "127.0.0.1:1", "target_group": "web"}],
            [{"name": "web", "targets": [{"address": "127.0.0.1:2"}]}],
            global_={"shutdown_delay": "forever"},
        ),
    )
    result = h.run([h.STICKYD_BIN, "--check-config", path])
    h.expect(result.returncode != 0, "a bad shutdown_delay passed --check")
    h.expect(
        "shutdown_delay" in result.stderr and len(result.stderr.strip().splitlines()) == 1,
        f"one line naming the key: {result.stderr}",
    )
    result = h.run(
        [
            h.STICKYD_BIN,
            "--listen",
            "127.0.0.1:1",
            "--target",
            "127.0.0.1:2",
            "--shutdown-delay",
            "soon",
        ]
    )
    h.expect(
        result.returncode != 0 and "--shutdown-delay" in result.stderr,
        f"--shutdown-delay soon: {result.returncode} {result.stderr}",
    )


def duration_seconds(text):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return int(text[: -len(unit)]) * units[unit]
    raise h.Failure(f"not a duration: {text!r}")


def test_kubernetes_manifest_probes_ready_and_waits_for_delay_and_grace():
    try:
        import yaml
    except ImportError:
        h.skip("python3-yaml is not installed")
    kubernetes = os.path.join(h.SOURCE_ROOT, "kubernetes")
    with open(os.path.join(kubernetes, "stickyd.yaml"), encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    pod = [d for d in docs if d["kind"] == "Deployment"][0]["spec"]["template"]["spec"]
    with open(os.path.join(kubernetes, "stickyd-config.yaml"), encoding="utf-8") as f:
        toml = yaml.safe_load(f)["data"]["stickyd.toml"]
    # The config must load as it is, and it is what the numbers below come from.
    path = h.write_file("k8s.toml", toml)
    result = h.run([h.STICKYD_BIN, "--check-config", path])
    h.expect(result.returncode == 0, f"stickyd --check on the ConfigMap: {result.stderr}")
    found = dict(re.findall(r'^(shutdown_delay|shutdown_grace) = "(\S+)"$', toml, re.M))
    h.expect(
        set(found) == {"shutdown_delay", "shutdown_grace"},
        f"the ConfigMap sets shutdown_delay and shutdown_grace: {found}",
    )
    needed = duration_seconds(found["shutdown_delay"]) + duration_seconds(found["shutdown_grace"])
    h.expect(
        pod["terminationGracePeriodSeconds"] > needed,
        f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} does not "
        f"cover shutdown_delay + shutdown_grace ({needed}s)",
    )
    probe = pod["containers"][0]["readinessProbe"]
    h.expect_eq(probe.get("exec", {}).get("command"), ["stickyctl", "ready"], "readiness probe")
    h.expect(
        probe["periodSeconds"] * probe.get("failureThreshold", 3)
        < duration_seconds(found["shutdown_delay"]),
        f"the probe notices a stop only after the delay is over: {probe}",
    )


# ---------------------------------------------------------------------------------
# Three instances behind a router's resilient ECMP group, in network namespaces

VIP = "10.200.100.1"
VIP_PORT = 80
SOURCES = [f"10.200.10.{i}" for i in range(1, 121)]
INSTANCES = 3


def sh(*argv, check=True):
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=20)
    if check and result.returncode != 0:
        raise h.Failure(
            f"{' '.join(map(str, argv))}: exit {result.returncode}: " f"{result.stderr.strip()}"
        )
    return result


def namespaces_unavailable():
    """Why this machine cannot run the topology, or None."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup installs iproute2 and nftables)"
    probe = f"sfprobe{os.getpid()}"
    if sh("ip", "netns", "add", probe, check=False).returncode != 0:
        return "cannot create network namespaces (ip netns add failed)"
    try:
        sh("ip", "-n", probe, "link", "set", "lo", "up")
        sh("ip", "-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
        sh("ip", "-n", probe, "link", "set", "p0", "up")
        sh("ip", "-n", probe, "link", "set", "p1", "up")
        sh("ip", "-n", probe, "addr", "add", "10.200.0.1/24", "dev", "p0")
        sh("ip", "-n", probe, "nexthop", "add", "id", "1", "via", "10.200.0.2", "dev", "p0")
        if (
            sh(
                "ip",
                "-n",
                probe,
                "nexthop",
                "add",
                "id",
                "2",
                "group",
                "1",
                "type",
                "resilient",
                "buckets",
                "8",
                check=False,
            ).returncode
            != 0
        ):
            return "ip nexthop ... type resilient is not supported here"
        if sh("ip", "netns", "exec", probe, "nft", "list", "tables", check=False).returncode != 0:
            return "nft (nftables) cannot run in a network namespace"
    except h.Failure as e:
        return f"cannot set up a test network namespace: {e}"
    finally:
        sh("ip", "netns", "del", probe, check=False)
    return None


class Fleet:
    """Router R with a resilient nexthop group for the VIP over instances I0..I2 (the
    VIP on their lo), clients in C on 120 source addresses, backends in B."""

    def __init__(self, with_bird=False):
        tag = f"sf{os.getpid() % 100000}{random.randrange(1000):03d}"
        self.router, self.client, self.backends = f"{tag}r", f"{tag}c", f"{tag}b"
        self.instances = [f"{tag}i{k}" for k in range(INSTANCES)]
        self.created = []
        h.on_cleanup(self.destroy)
        for ns in [self.router, self.client, self.backends] + self.instances:
            sh("ip", "netns", "add", ns)
            self.created.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        r = self.router
        sysctls = {
            "net.ipv4.ip_forward": 1,
            "net.ipv4.fib_multipath_hash_policy": 1,
            "net.ipv4.conf.all.rp_filter": 0,
            "net.ipv4.conf.default.rp_filter": 0,
        }
        for key, value in sysctls.items():
            sh("ip", "netns", "exec", r, "sysctl", "-qw", f"{key}={value}")
        self.link(self.client, "c0", "10.200.1")
        sh("ip", "-n", r, "route", "add", "10.200.10.0/24", "via", "10.200.1.2")
        batch = h.write_file(
            "client-addresses.ip", "".join(f"addr add {src}/32 dev lo\n" for src in SOURCES)
        )
        sh("ip", "-n", self.client, "-batch", batch)
        self.link(self.backends, "b0", "10.200.3")
        for k, ns in enumerate(self.instances):
            self.link(ns, f"i{k}", f"10.200.{20 + k}")
            sh("ip", "-n", ns, "addr", "add", f"{VIP}/32", "dev", "lo")
            sh(
                "ip",
                "-n",
                r,
                "nexthop",
                "add",
                "id",
                k + 1,
                "via",
                f"10.200.{20 + k}.2",
                "dev",
                f"i{k}",
            )
            # Pinned flows: a connection stays on the instance it started on, as
            # connection tracking on a router or a load balancer's flow table would.
            sh("ip", "-n", r, "rule", "add", "fwmark", k + 1, "lookup", 100 + k + 1)
            sh(
                "ip",
                "-n",
                r,
                "route",
                "add",
                f"{VIP}/32",
                "via",
                f"10.200.{20 + k}.2",
                "dev",
                f"i{k}",
                "table",
                100 + k + 1,
            )
        self.members = list(range(1, INSTANCES + 1))
        if not with_bird:  # else BIRD installs the VIP's route from BGP
            sh(
                "ip",
                "-n",
                r,
                "nexthop",
                "add",
                "id",
                100,
                "group",
                self.group(),
                "type",
                "resilient",
                "buckets",
                128,
            )
            sh("ip", "-n", r, "route", "add", f"{VIP}/32", "nhid", 100)
        marks = "".join(
            f'  ct state new ct mark 0 oifname "i{k}" ct mark set {k + 1}\n'
            for k in range(INSTANCES)
        )
        rules = (
            "table ip fleet {\n"
            " chain pre {\n  type filter hook prerouting priority mangle\n"
            "  meta mark set ct mark\n }\n"
            " chain post {\n  type filter hook postrouting priority mangle\n"
            f"{marks} }}\n"
            "}\n"
        )
        path = h.write_file("router.nft", rules)
        sh("ip", "netns", "exec", r, "nft", "-f", path)

    def group(self):
        return "/".join(str(m) for m in self.members)

    def link(self, ns, router_side, net):
        sh(
            "ip",
            "-n",
            self.router,
            "link",
            "add",
            router_side,
            "type",
            "veth",
            "peer",
            "name",
            "uplink",
            "netns",
            ns,
        )
        sh("ip", "-n", self.router, "addr", "add", f"{net}.1/24", "dev", router_side)
        sh("ip", "-n", self.router, "link", "set", router_side, "up")
        sh("ip", "-n", ns, "addr", "add", f"{net}.2/24", "dev", "uplink")
        sh("ip", "-n", ns, "link", "set", "uplink", "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", f"{net}.1")

    def withdraw(self, k):
        """What BIRD does when instance k stops announcing: its nexthop leaves the group."""
        self.members.remove(k + 1)
        sh(
            "ip",
            "-n",
            self.router,
            "nexthop",
            "replace",
            "id",
            100,
            "group",
            self.group(),
            "type",
            "resilient",
            "buckets",
            128,
        )

    def destroy(self):
        for ns in reversed(self.created):
            sh("ip", "netns", "del", ns, check=False)
        self.created = []


def in_ns(ns, argv, label):
    return h.Process(["ip", "netns", "exec", ns] + list(argv), label)


def json_lines(proc):
    out = []
    for line in proc.log().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def client_phase(proc, key, timeout=60):
    def found():
        for doc in json_lines(proc):
            if key in doc:
                return doc
        return None

    return h.wait_for(f"the clients' {key!r} line", found, timeout=timeout, process=proc)[key]


def progress(proc):
    return max([d["progress"] for d in json_lines(proc) if "progress" in d] or [0])


def start_backends(fleet, count=3):
    """Echo backends backend-1.. in the backends' namespace: their target entries."""
    backends = []
    for i in range(1, count + 1):
        proc = in_ns(
            fleet.backends,
            [h.ECHO_BIN, "--listen", "10.200.3.2:0", "--name", f"backend-{i}"],
            f"echo-{i}",
        )
        log = h.wait_for(
            f"backend-{i} to listen",
            lambda: "listening on" in proc.log() and proc.log(),
            process=proc,
        )
        backends.append({"id": f"backend-{i}", "address": log.split("listening on ")[1].split()[0]})
    return backends


def test_ecmp_fleet_keeps_clients_on_their_backend_through_a_scale_in():
    reason = namespaces_unavailable()
    if reason:
        h.skip(reason)
    fleet = Fleet()
    backends = start_backends(fleet)

    daemons, admins = [], []
    for k, ns in enumerate(fleet.instances):
        targets = backends[k:] + backends[:k]  # each instance lists them in another order
        admin = os.path.join(h.temp_dir(), f"i{k}.sock")
        config = h.config_text(
            [{"bind": f"{VIP}:{VIP_PORT}", "target_group": "web"}],
            [
                {
                    "name": "web",
                    "health_check": {"interval": "1s", "healthy_threshold": 2},
                    "targets": targets,
                }
            ],
            global_={"admin_socket": admin, "shutdown_delay": "4s", "shutdown_grace": "60s"},
        )
        path = h.write_file(f"i{k}.toml", config)
        daemons.append(in_ns(ns, [h.STICKYD_BIN, "--config", path], f"stickyd-i{k}"))
        admins.append(admin)
    for proc, admin in zip(daemons, admins):
        h.wait_for(f"{proc.label} to be ready", lambda: ready_status(admin) == 200, process=proc)
    agree = h.stickyctl("compare", *[x for a in admins for x in ("--admin", a)], ok=False)
    h.expect(agree.returncode == 0, f"the three instances disagree: {agree.stdout}")

    clients = in_ns(
        fleet.client,
        [sys.executable, CLIENT_SCRIPT, VIP, VIP_PORT, h.temp_dir()] + SOURCES,
        "clients",
    )
    spread = client_phase(clients, "spread")
    for src, answers in spread.items():
        h.expect(
            len({name for name, _ in answers}) == 1, f"{src} reached several backends: {answers}"
        )
    used = {peer for answers in spread.values() for _, peer in answers}
    h.expect_eq(len(used), INSTANCES, "instances that relayed connections (ECMP spreads them)")
    h.expect(
        any(len({peer for _, peer in a}) > 1 for a in spread.values()),
        "no client's connections were spread over several instances",
    )
    backend_of = {src: answers[0][0] for src, answers in spread.items()}

    held = client_phase(clients, "held")
    client_phase(clients, "streaming")
    h.wait_for("the stream to run", lambda: progress(clients) >= 200, process=clients)

    # Scale in instance 0: it turns not-ready, the watcher withdraws its route.
    leaving, leaving_admin = daemons[0], admins[0]
    leaving.signal(signal.SIGTERM)
    h.wait_for(
        "instance 0's /ready to answer 503",
        lambda: ready_status(leaving_admin) == 503,
        process=leaving,
    )
    time.sleep(0.5)  # the watcher's poll and BGP's propagation, not a wait for a result
    fleet.withdraw(0)
    withdrawn_at = progress(clients)
    h.wait_for(
        "instance 0 to stop accepting (delay over)",
        lambda: "delay over: stopped accepting" in leaving.log(),
        process=leaving,
    )
    h.wait_for(
        "more connections after the withdrawal",
        lambda: progress(clients) >= withdrawn_at + 300,
        process=clients,
    )
    with open(os.path.join(h.temp_dir(), "stop"), "w"):
        pass
    done = client_phase(clients, "done")

    h.expect_eq(done["failures"], [], "failed connections over the whole run")
    for src, names in done["backends"].items():
        h.expect_eq(names, [backend_of[src]], f"backends of {src} during the stream")
    for src, (name, peer) in held.items():
        h.expect_eq(done["held"][src], "ok", f"held connection of {src} (via {peer})")
    for proc in daemons[1:]:
        h.expect(proc.alive(), f"{proc.label} exited\n{proc.describe()}")


# ---------------------------------------------------------------------------------
# The same with BIRD: instances announce the VIP over BGP while stickyd is ready

WATCH_SCRIPT = os.path.join(h.SOURCE_ROOT, "conf", "bird", "stickyd-bird-watch")
ROUTER_AS, INSTANCE_AS = 65000, 65001


def bird_unavailable():
    for tool in ("bird", "birdc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install bird2)"
    return None


def router_bird_conf():
    sessions = "".join(
        f"""
protocol bgp i{k} {{
    local 10.200.{20 + k}.1 as {ROUTER_AS};
    neighbor 10.200.{20 + k}.2 as {INSTANCE_AS};
    hold time 9;
    ipv4 {{ import all; export none; }};
}}
"""
        for k in range(INSTANCES)
    )
    return f"""router id 10.200.1.1;
protocol device {{ }}
# One ECMP route over every instance that announces the VIP.
protocol kernel {{
    merge paths on;
    ipv4 {{ import none; export all; }};
}}
{sessions}"""


def instance_bird_conf(k):
    """conf/bird/bird.conf with this instance's addresses."""
    with open(os.path.join(h.SOURCE_ROOT, "conf", "bird", "bird.conf"), encoding="utf-8") as f:
        text = f.read()
    for old, new in (
        ("192.0.2.10", VIP),
        ("10.0.0.11", f"10.200.{20 + k}.2"),
        ("10.0.0.1", f"10.200.{20 + k}.1"),
        ("as 65001", f"as {INSTANCE_AS}"),
        ("as 65000", f"as {ROUTER_AS}"),
    ):
        h.expect(old in text, f"conf/bird/bird.conf has no {old!r} to replace")
        text = text.replace(old, new)
    return text


def start_bird(ns, label, conf):
    conf_path = h.write_file(f"{label}.conf", conf)
    sock = os.path.join(h.temp_dir(), f"{label}.ctl")
    proc = in_ns(
        ns,
        [
            "bird",
            "-f",
            "-c",
            conf_path,
            "-s",
            sock,
            "-P",
            os.path.join(h.temp_dir(), f"{label}.pid"),
        ],
        label,
    )
    h.wait_for(f"{label} to answer", lambda: os.path.exists(sock), process=proc)
    return proc, sock


def vip_paths(fleet):
    """The instances the router's VIP route leads to (their router-side devices)."""
    route = sh("ip", "-n", fleet.router, "route", "show", f"{VIP}/32").stdout
    return sorted(set(re.findall(r"dev (i\d)", route)))


def test_bird_withdraws_a_stopping_instance_and_clients_do_not_notice():
    reason = namespaces_unavailable() or bird_unavailable()
    if reason:
        h.skip(reason)
    fleet = Fleet(with_bird=True)
    start_bird(fleet.router, "bird-router", router_bird_conf())
    backends = start_backends(fleet)
    daemons, admins = [], []
    for k, ns in enumerate(fleet.instances):
        admin = os.path.join(h.temp_dir(), f"i{k}.sock")
        config = h.config_text(
            [{"bind": f"{VIP}:{VIP_PORT}", "target_group": "web"}],
            [{"name": "web", "targets": backends[k:] + backends[:k]}],
            global_={"admin_socket": admin, "shutdown_delay": "5s", "shutdown_grace": "60s"},
        )
        daemons.append(
            in_ns(
                ns, [h.STICKYD_BIN, "--config", h.write_file(f"i{k}.toml", config)], f"stickyd-i{k}"
            )
        )
        admins.append(admin)
        _, ctl = start_bird(ns, f"bird-i{k}", instance_bird_conf(k))
        env = {
            "STICKYD_ADMIN": admin,
            "BIRDC": f"birdc -s {ctl}",
            "STICKYCTL": h.STICKYCTL_BIN,
            "INTERVAL": "0.2",
        }
        in_ns(
            ns,
            ["env"] + [f"{key}={value}" for key, value in env.items()] + [WATCH_SCRIPT],
            f"watch-i{k}",
        )
    h.wait_for(
        "the router to have a path to every instance",
        lambda: vip_paths(fleet) == ["i0", "i1", "i2"],
        timeout=45,
    )

    clients = in_ns(
        fleet.client,
        [sys.executable, CLIENT_SCRIPT, VIP, VIP_PORT, h.temp_dir()] + SOURCES,
        "clients",
    )
    spread = client_phase(clients, "spread")
    backend_of = {src: answers[0][0] for src, answers in spread.items()}
    for src, answers in spread.items():
        h.expect(
            len({name for name, _ in answers}) == 1, f"{src} reached several backends: {answers}"
        )
    client_phase(clients, "held")
    client_phase(clients, "streaming")
    h.wait_for("the stream to run", lambda: progress(clients) >= 200, process=clients)

    daemons[0].signal(signal.SIGTERM)
    h.wait_for(
        "BGP to withdraw instance 0's route", lambda: vip_paths(fleet) == ["i1", "i2"], timeout=30
    )
    withdrawn_at = progress(clients)
    h.wait_for(
        "instance 0 to stop accepting (delay over)",
        lambda: "delay over: stopped accepting" in daemons[0].log(),
        process=daemons[0],
    )
    h.wait_for(
        "more connections after the withdrawal",
        lambda: progress(clients) >= withdrawn_at + 300,
        process=clients,
    )
    with open(os.path.join(h.temp_dir(), "stop"), "w"):
        pass
    done = client_phase(clients, "done")
    h.expect_eq(done["failures"], [], "failed connections over the whole run")
    for src, names in done["backends"].items():
        h.expect_eq(names, [backend_of[src]], f"backends of {src} during the stream")
    h.expect(all(v == "ok" for v in done["held"].values()), f"held connections: {done['held']}")


if __name__ == "__main__":
    h.main()
