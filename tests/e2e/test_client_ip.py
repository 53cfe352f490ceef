#!/usr/bin/env python3
"""Client IP preservation (NLB preserve_client_ip.enabled): with preserve_client_ip a
target sees the client's own address as the peer of stickyd's connection, with no
PROXY header: on loopback (every 127.0.0.0/8 address is local, so no routing is
needed), with the address a PROXY header names, over IPv6, through a retry, and in
network namespaces where the backend is another host whose default route leads
through the balancer, with the policy routing the README documents. Health checks
still come from stickyd's own address, IPv4 clients of IPv6 targets connect from it
too (counted), and without the capability stickyd refuses to start or reload."""
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

IP_TRANSPARENT = 19  # <linux/in.h>; older Pythons lack socket.IP_TRANSPARENT
NFT_RULES = os.path.join(h.SOURCE_ROOT, "conf", "preserve-client-ip.nft")


def transparent_unavailable():
    """Why this process (and so stickyd) cannot bind foreign addresses, or None."""
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    except OSError as e:
        return f"needs CAP_NET_ADMIN for IP_TRANSPARENT ({e.strerror})"
    return None


def need_transparent():
    reason = transparent_unavailable()
    if reason:
        h.skip(reason)


def whoami(lb, src_ip=None, preamble=b""):
    """(backend name, the peer address it saw) for one connection."""
    with h.connect(lb, src_ip) as s:
        h.send_all(s, preamble + b"STICKYD-TEST WHOAMI\n")
        name, _, peer = h.recv_line(s).partition(" ")
        return name, peer


def metric(stickyd, name):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(h.IO_TIMEOUT)
        s.connect(stickyd.admin_socket)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    m = re.search(rb"^" + name.encode() + rb" (\d+)$", reply, re.M)
    h.expect(m, f"no {name} in /metrics:\n{reply[:400]!r}")
    return int(m.group(1))


def quick(targets, *flags, host="127.0.0.1"):
    lb = h.lb_addr(host)
    args = ["--listen", h.fmt_addr(lb), "--threads", "2", "--preserve-client-ip", *flags]
    for t in targets:
        args += ["--target", t]
    return lb, h.start_stickyd(args=args, addr=lb)


# ---------------------------------------------------------------------------------
# Loopback


def test_the_backend_sees_each_client_address_and_bytes_flow_both_ways():
    need_transparent()
    backend = h.start_backend("be-1")
    lb, _ = quick([backend.address], "--health-check", "off")
    for ip in ["127.0.0.7"] + h.source_ips(4, first=20):
        h.expect_eq(whoami(lb, ip), ("be-1", ip), f"what the backend saw of client {ip}")
    payload = h.random_payload(2 << 20, seed=7)
    with h.connect(lb, "127.0.0.7") as s:
        h.send_all(s, b"STICKYD-TEST WHOAMI\n")
        h.expect_eq(h.recv_line(s), "be-1 127.0.0.7", "WHOAMI before the payload")
        h.expect_eq(
            h.echo_roundtrip(s, payload),
            (len(payload), h.sha256(payload)),
            "2 MiB echoed through a half-closed connection",
        )


def test_without_the_setting_the_backend_sees_stickyd():
    backend = h.start_backend("be-1")
    lb = h.lb_addr()
    h.start_stickyd(
        args=["--listen", h.fmt_addr(lb), "--target", backend.address, "--health-check", "off"],
        addr=lb,
    )
    h.expect_eq(whoami(lb, "127.0.0.7"), ("be-1", "127.0.0.1"), "peer without the setting")


def test_health_checks_still_come_from_stickyd():
    need_transparent()
    seen = []
    lock = threading.Lock()

    def record(conn):
        """A check connects and closes without a byte; a client asks who it is."""
        peer = conn.getpeername()[0]
        data = conn.recv(64)
        with lock:
            seen.append(("client" if data else "check", peer))
        if data:
            h.send_all(conn, f"stub {peer}\n".encode())
        return None

    backend = h.PyServer(record)
    lb, _ = quick([backend.address], "--health-interval", "200ms")
    h.wait_for("two health checks", lambda: sum(k == "check" for k, _ in seen) >= 2)
    h.expect_eq(whoami(lb, "127.0.0.7"), ("stub", "127.0.0.7"), "a client through stickyd")
    h.wait_for(
        "another health check after the client",
        lambda: any(k == "check" for k, _ in seen[seen.index(("client", "127.0.0.7")) :]),
    )
    with lock:
        checks = {peer for kind, peer in seen if kind == "check"}
    h.expect_eq(checks, {"127.0.0.1"}, "addresses health checks came from")


def test_the_address_a_proxy_header_names_is_the_one_preserved():
    need_transparent()
    backend = h.start_backend("be-1")
    lb, stickyd = quick([backend.address], "--accept-proxy-protocol", "--health-check", "off")
    # Only loopback addresses in headers: the backend answers whatever address the
    # header names, and an address off this host would send its reply away.
    cases = [
        (h.proxy_v1_header(("127.0.0.8", 40000), lb), "127.0.0.8"),
        (h.proxy_v2_header(("127.0.0.9", 40000), lb), "127.0.0.9"),
        # An IPv4-mapped client toward an IPv4 target goes out as plain IPv4.
        (
            h.proxy_v1_header(("::ffff:127.0.0.10", 40000), ("::ffff:127.0.0.1", lb[1])),
            "127.0.0.10",
        ),
    ]
    for header, expected in cases:
        h.expect_eq(
            whoami(lb, "127.0.0.2", header),
            ("be-1", expected),
            f"peer the backend saw for the header {header!r}",
        )
    h.expect_eq(metric(stickyd, "stickyd_preserve_client_ip_fallbacks_total"), 0, "fallbacks")

    # An IPv6 client cannot reach an IPv4 target from its own address: this one comes
    # from stickyd's, counted and logged once (no traffic toward 2001:db8::/32).
    for _ in range(3):
        header = h.proxy_v2_header(("2001:db8::7", 40000), ("2001:db8::1", lb[1]))
        h.expect_eq(
            whoami(lb, "127.0.0.2", header),
            ("be-1", "127.0.0.1"),
            "peer the backend saw for an IPv6 client",
        )
    h.expect_eq(metric(stickyd, "stickyd_preserve_client_ip_fallbacks_total"), 3, "fallbacks")
    lines = [line for line in stickyd.process.log().splitlines() if "preserve_client_ip" in line]
    h.expect(
        len(lines) == 1
        and "[2001:db8::7]:40000 cannot reach target" in lines[0]
        and "connecting from stickyd's own address instead" in lines[0],
        f"one warning for the fallbacks, naming the client: {lines}",
    )


def test_ipv6_loopback():
    need_transparent()
    if not h.ipv6_available():
        h.skip("no IPv6 on loopback")
    backend = h.start_backend("be-6", host="::1")
    lb, _ = quick([backend.address], "--health-check", "off", host="::1")
    h.expect_eq(whoami(lb), ("be-6", "::1"), "peer over IPv6")


def test_a_refused_connect_is_retried_on_the_next_target_from_the_client_address():
    need_transparent()
    backend = h.start_backend("live")
    refusing = f"127.0.0.1:{h.free_port()}"
    # Checks off, so the refusing target keeps its share and every one of its clients
    # is retried.
    lb, stickyd = quick(
        [backend.address, refusing], "--health-check", "off", "--connect-retries", "2"
    )
    clients = h.source_ips(16, first=30)
    for ip in clients:
        h.expect_eq(whoami(lb, ip), ("live", ip), f"peer after any retry for {ip}")
    h.expect(
        metric(stickyd, "stickyd_connect_retries_total") > 0,
        "no client was owned by the refusing target; pick other addresses",
    )


# ---------------------------------------------------------------------------------
# Refusals: the capability, and a group where no client could keep its address

SETPRIV_DROP = ["--inh-caps=-net_admin,-net_raw", "--bounding-set=-net_admin,-net_raw"]


def without_capability(argv):
    """argv run with CAP_NET_ADMIN and CAP_NET_RAW gone for good (either allows
    IP_TRANSPARENT), even as root."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        h.skip("setpriv is not installed (util-linux)")
    if transparent_unavailable():
        return list(argv)  # this process has neither to begin with
    return [setpriv, *SETPRIV_DROP, "--"] + list(argv)


def test_without_the_capability_the_start_is_refused_in_one_line():
    backend = h.start_backend("be-1")
    lb = h.lb_addr()
    result = h.run(
        without_capability(
            [
                h.STICKYD_BIN,
                "--listen",
                h.fmt_addr(lb),
                "--target",
                backend.address,
                "--preserve-client-ip",
            ]
            + h.admin_socket_args()
        )
    )
    h.expect_eq(result.returncode, 1, f"exit status ({result.stderr})")
    lines = result.stderr.strip().splitlines()
    h.expect(
        len(lines) == 1
        and lines[0].startswith(
            "stickyd: --preserve-client-ip: needs CAP_NET_ADMIN to connect to targets "
            "from clients' addresses (IP_TRANSPARENT: Operation not permitted)"
        ),
        f"stderr: {result.stderr}",
    )

    config = h.simple_config(h.fmt_addr(lb), [backend], group={"preserve_client_ip": True})
    path = h.write_file("nocap.toml", config)
    result = h.run(without_capability([h.STICKYD_BIN, "--config", path]))
    h.expect_eq(result.returncode, 1, f"exit status with a file ({result.stderr})")
    lines = result.stderr.strip().splitlines()
    h.expect(
        len(lines) == 1
        and lines[0].startswith(
            f'stickyd: {path}: target_group[0].preserve_client_ip (group "web"): needs '
            "CAP_NET_ADMIN"
        ),
        f"stderr: {result.stderr}",
    )


def test_without_the_capability_a_reload_that_asks_for_it_keeps_the_old_config():
    backend = h.start_backend("be-1")
    lb = h.lb_addr()
    text = h.simple_config(h.fmt_addr(lb), [backend], group={"health_check": {"enabled": False}})
    path = h.write_file("reload.toml", text)
    proc = h.Process(without_capability([h.STICKYD_BIN, "--config", path]), "stickyd-nocap")
    h.wait_accepting(lb, proc)
    h.expect_eq(whoami(lb, "127.0.0.7"), ("be-1", "127.0.0.1"), "peer before the reload")
    with open(path, "w") as f:
        f.write(
            h.simple_config(
                h.fmt_addr(lb),
                [backend],
                group={"preserve_client_ip": True, "health_check": {"enabled": False}},
            )
        )
    proc.signal(signal.SIGHUP)
    log = h.wait_for(
        "the refused reload", lambda: "reload failed" in proc.log() and proc.log(), process=proc
    )
    line = [x for x in log.splitlines() if "reload failed" in x][0]
    h.expect(
        line.endswith(
            f"reload failed, still serving the previous configuration: {path}: "
            'target_group[0].preserve_client_ip (group "web"): needs CAP_NET_ADMIN to connect to '
            "targets from clients' addresses (IP_TRANSPARENT: Operation not permitted); "
            "run stickyd as root or give it that capability (under systemd: the drop-in in "
            "stickyd(8), CLIENT IP PRESERVATION)"
        ),
        f"log line: {line}",
    )
    h.expect_eq(whoami(lb, "127.0.0.7"), ("be-1", "127.0.0.1"), "peer after the refused reload")


def test_a_group_no_client_could_keep_its_address_is_refused_at_load():
    lb = h.lb_addr()
    path = h.write_file(
        "mismatch.toml",
        h.simple_config(h.fmt_addr(lb), ["[::1]:9001"], group={"preserve_client_ip": True}),
    )
    result = h.run([h.STICKYD_BIN, "--check-config", path])
    h.expect_eq(result.returncode, 1, f"--check-config exit status ({result.stderr})")
    h.expect(
        re.fullmatch(
            re.escape(path) + r":\d+:\d+: target_group\[0\]\.preserve_client_ip: "
            r"every target is IPv6 but the group's listeners only take IPv4 "
            r"clients .*\n",
            result.stderr,
        ),
        f"stderr: {result.stderr!r}",
    )
    result = h.run(
        [
            h.STICKYD_BIN,
            "--listen",
            h.fmt_addr(lb),
            "--target",
            "[::1]:9001",
            "--preserve-client-ip",
        ]
    )
    h.expect_eq(result.returncode, 2, f"quick-mode exit status ({result.stderr})")
    h.expect(
        result.stderr.startswith("stickyd: --preserve-client-ip: every target is IPv6")
        and len(result.stderr.strip().splitlines()) == 1,
        f"stderr: {result.stderr!r}",
    )


# ---------------------------------------------------------------------------------
# Another host: client, balancer and backend namespaces

CLIENT_V4, CLIENT_V6 = "10.200.70.7", "fd00:200:70::7"
VIP_V4, VIP_V6 = "10.200.61.1", "fd00:200:61::1"
BACKEND_V4, BACKEND_V6 = "10.200.62.2", "fd00:200:62::2"

# Runs in the client namespace: WHOAMI, then 1 MiB echoed back through a half-close.
CLIENT = r"""
import hashlib, json, random, socket, sys, threading
src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
family = socket.AF_INET6 if ":" in dst else socket.AF_INET
out = {}
s = socket.socket(family, socket.SOCK_STREAM)
s.settimeout(10)
s.bind((src, 0))
s.connect((dst, port))
s.sendall(b"STICKYD-TEST WHOAMI\n")
line = b""
try:
    while not line.endswith(b"\n"):
        chunk = s.recv(1)
        if not chunk:
            break
        line += chunk
except ConnectionResetError:
    out["reset"] = True
out["whoami"] = line.decode().strip()
if line.endswith(b"\n"):
    payload = random.Random(port).randbytes(1 << 20)
    def send():
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=send)
    t.start()
    received = hashlib.sha256()
    count = 0
    while chunk := s.recv(65536):
        received.update(chunk)
        count += len(chunk)
    t.join()
    out.update(sent=hashlib.sha256(payload).hexdigest(), received=received.hexdigest(),
               bytes=count)
print(json.dumps(out))
"""


def sh(*argv, check=True):
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=20)
    if check and result.returncode != 0:
        raise h.Failure(
            f"{' '.join(map(str, argv))}: exit {result.returncode}: " f"{result.stderr.strip()}"
        )
    return result


class Hosts:
    """Client C, balancer L and backend B, each a network namespace: C and B reach
    each other only through L (veth pairs), B's default route leads to L, and L
    delivers the replies to its transparent sockets as the README says."""

    def __init__(self):
        tag = f"ci{os.getpid() % 100000}{random.randrange(1000):03d}"
        self.client, self.lb, self.backend = f"{tag}c", f"{tag}l", f"{tag}b"
        self.created = []
        h.on_cleanup(self.destroy)
        for ns in (self.client, self.lb, self.backend):
            sh("ip", "netns", "add", ns)
            self.created.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            # Without DAD a link-local address is usable as soon as its link is up.
            # A tentative one is worse than slow: the client's address lives on lo,
            # so neighbour solicitations need the uplink's link-local address as
            # their source, and while it is tentative none is sent at all, and a
            # connect fails with "No route to host".
            for conf in ("all", "default"):
                sh(
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-q",
                    "-w",
                    f"net.ipv6.conf.{conf}.accept_dad=0",
                )
        self.link(self.client, "lc", "10.200.61", "fd00:200:61")
        self.link(self.backend, "lb", "10.200.62", "fd00:200:62")
        # The client's own address sits behind its uplink, as a client across a network.
        sh("ip", "-n", self.client, "addr", "add", f"{CLIENT_V4}/32", "dev", "lo")
        sh("ip", "-n", self.client, "addr", "add", f"{CLIENT_V6}/128", "dev", "lo")
        sh("ip", "-n", self.lb, "route", "add", "10.200.70.0/24", "via", "10.200.61.2")
        sh("ip", "-n", self.lb, "route", "add", "fd00:200:70::/64", "via", "fd00:200:61::2")
        for ns in self.created:
            h.wait_for(
                f"no tentative IPv6 address in {ns}",
                lambda ns=ns: not sh(
                    "ip", "-n", ns, "-6", "addr", "show", "tentative"
                ).stdout.strip(),
            )

    def link(self, ns, lb_side, net4, net6):
        sh(
            "ip",
            "-n",
            self.lb,
            "link",
            "add",
            lb_side,
            "type",
            "veth",
            "peer",
            "name",
            "uplink",
            "netns",
            ns,
        )
        for where, dev, host in ((self.lb, lb_side, 1), (ns, "uplink", 2)):
            sh("ip", "-n", where, "addr", "add", f"{net4}.{host}/24", "dev", dev)
            # nodad: usable at once, not tentative for a second.
            sh("ip", "-n", where, "addr", "add", f"{net6}::{host}/64", "dev", dev, "nodad")
            sh("ip", "-n", where, "link", "set", dev, "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", f"{net4}.1")
        sh("ip", "-n", ns, "route", "add", "default", "via", f"{net6}::1")

    def policy_routing(self):
        """The README's recipe, on the balancer."""
        for v in ("-4", "-6"):
            sh("ip", v, "-n", self.lb, "rule", "add", "fwmark", "1", "lookup", "100")
        sh("ip", "-n", self.lb, "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
        sh("ip", "-6", "-n", self.lb, "route", "add", "local", "::/0", "dev", "lo", "table", "100")
        sh("ip", "netns", "exec", self.lb, "nft", "-f", NFT_RULES)

    def without_policy_routing(self):
        for v in ("-4", "-6"):
            sh("ip", v, "-n", self.lb, "rule", "del", "fwmark", "1", "lookup", "100")

    def destroy(self):
        for ns in reversed(self.created):
            sh("ip", "netns", "del", ns, check=False)
        self.created = []


def namespaces_unavailable():
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup installs iproute2 and nftables)"
    probe = f"ciprobe{os.getpid()}"
    if sh("ip", "netns", "add", probe, check=False).returncode != 0:
        return "cannot create network namespaces (ip netns add failed)"
    try:
        result = sh("ip", "netns", "exec", probe, "nft", "-f", NFT_RULES, check=False)
        if result.returncode != 0:
            return f"nft cannot load {NFT_RULES} here: {result.stderr.strip()}"
    finally:
        sh("ip", "netns", "del", probe, check=False)
    return None


def in_ns(ns, argv, label):
    return h.Process(["ip", "netns", "exec", ns] + list(argv), label)


def client_run(hosts, src, dst, port):
    import json

    result = h.run(
        ["ip", "netns", "exec", hosts.client, sys.executable, "-c", CLIENT, src, dst, port],
        timeout=60,
    )
    h.expect_eq(result.returncode, 0, f"client from {src}: {result.stderr}")
    return json.loads(result.stdout)


def start_echo(hosts, ip, name):
    proc = in_ns(hosts.backend, [h.ECHO_BIN, "--listen", h.fmt_addr((ip, 0)), "--name", name], name)
    log = h.wait_for(
        f"{name} to listen", lambda: "listening on" in proc.log() and proc.log(), process=proc
    )
    return log.split("listening on ")[1].split()[0]


def test_a_backend_on_another_host_sees_the_client_through_policy_routing():
    need_transparent()
    reason = namespaces_unavailable()
    if reason:
        h.skip(reason)
    hosts = Hosts()
    hosts.policy_routing()
    echo4 = start_echo(hosts, BACKEND_V4, "be-4")
    echo6 = start_echo(hosts, BACKEND_V6, "be-6")
    admin = os.path.join(h.temp_dir(), "lb.sock")
    config = h.config_text(
        [
            {"bind": f"{VIP_V4}:80", "target_group": "v4"},
            {"bind": f"[{VIP_V6}]:80", "target_group": "v6"},
        ],
        [
            {
                "name": g,
                "preserve_client_ip": True,
                "connect_timeout": "1s",
                "connect_retries": 0,
                "health_check": {"interval": "1s", "healthy_threshold": 2},
                "targets": [{"address": address}],
            }
            for g, address in (("v4", echo4), ("v6", echo6))
        ],
        global_={"admin_socket": admin},
    )
    lb = in_ns(hosts.lb, [h.STICKYD_BIN, "--config", h.write_file("lb.toml", config)], "stickyd")
    h.wait_for("stickyd to listen", lambda: "ready" in lb.log(), process=lb)

    for src, dst, name in (
        (CLIENT_V4, VIP_V4, "be-4"),
        ("10.200.61.2", VIP_V4, "be-4"),
        (CLIENT_V6, VIP_V6, "be-6"),
    ):
        out = client_run(hosts, src, dst, 80)
        h.expect_eq(out["whoami"], f"{name} {src}", f"what the backend saw of {src}")
        h.expect_eq(
            (out["bytes"], out["received"]),
            (1 << 20, out["sent"]),
            f"1 MiB from {src} echoed back after its half-close",
        )

    # Without the rule the backend's replies never reach stickyd: connects time out
    # and the client is closed without a byte.
    hosts.without_policy_routing()
    out = client_run(hosts, CLIENT_V4, VIP_V4, 80)
    h.expect_eq(out["whoami"], "", "a client while the replies are not routed to stickyd")
    h.expect(lb.alive(), f"stickyd exited\n{lb.describe()}")


if __name__ == "__main__":
    h.main()
