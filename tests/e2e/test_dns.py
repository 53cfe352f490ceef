"""DNS discovery of targets (target_group.dns = "NAME:PORT"), against a hosts file.

Each process under test runs in a private mount namespace where a file of this
test's is bind-mounted over /etc/hosts, with "hosts: files" in nsswitch.conf (so a
missing name never becomes a DNS query off the machine) and "multi on" in host.conf
(so every line naming the name counts). The test rewrites that file in place (same
inode, fixed size, one write) and glibc re-reads it on every lookup, which makes
names appear, change and vanish as they would in a Kubernetes headless service.

dns-watch (tests/e2e/dns_watch.cpp) runs the discovery code exactly as stickyd does
and prints what it reports; the stickyd cases check the same through traffic.
"""

import os
import re
import shutil
import signal
import time

import harness as h

NAME = "app.stickyd.test"  # .test: reserved, never a real name
DNS_WATCH_BIN = os.path.abspath(
    os.environ.get("DNS_WATCH_BIN")
    or os.path.join(h.SOURCE_ROOT, "build", "tests", "e2e", "dns-watch")
)
HOSTS_SIZE = 4096
REFRESH_MS = 100


def need_namespaces():
    if os.geteuid() != 0:
        h.skip("needs root for a private mount namespace (unshare --mount)")
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        h.skip("needs unshare and mount (util-linux)")
    probe = h.run(["unshare", "--mount", "--", "true"])
    if probe.returncode != 0:
        h.skip(f"cannot create a mount namespace here: {probe.stderr.strip()}")


class HostsFile:
    """A hosts file rewritten in place: same inode and size, one pwrite per change.

    set() takes NAME's addresses, or {name: [addresses]} for several names."""

    def __init__(self, addresses):
        self.path = h.write_file("hosts", "")
        self.set(addresses)

    def set(self, addresses):
        names = addresses if isinstance(addresses, dict) else {NAME: addresses}
        text = "127.0.0.1 localhost\n" + "".join(
            f"{a} {name}\n" for name, ips in names.items() for a in ips
        )
        # Padding with a comment keeps the size fixed, so a lookup racing the write
        # sees the old or the new list, never an empty or a truncated file.
        data = text.encode() + b"#" + b" " * (HOSTS_SIZE - len(text) - 2) + b"\n"
        assert len(data) == HOSTS_SIZE
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)


def in_namespace(argv, hosts, label):
    """Starts argv with `hosts` as its /etc/hosts (and lookups limited to files)."""
    nsswitch = h.write_file("nsswitch.conf", "hosts: files\n")
    mounts = [(hosts.path, "/etc/hosts"), (nsswitch, "/etc/nsswitch.conf")]
    if os.path.exists("/etc/host.conf"):
        mounts.append((h.write_file("host.conf", "multi on\n"), "/etc/host.conf"))
    script = (
        " && ".join(f'mount --bind "${i * 2 + 1}" "${i * 2 + 2}"' for i in range(len(mounts)))
        + f" && shift {len(mounts) * 2}"
        + ' && exec "$@"'
    )
    flat = [p for pair in mounts for p in pair]
    return h.Process(["unshare", "--mount", "--", "sh", "-c", script, "sh"] + flat + argv, label)


# ---------------------------------------------------------------------------------
# dns-watch: the discovery thread on its own, through the real getaddrinfo.


class Watch:
    def __init__(self, hosts, port=9000, refresh_ms=REFRESH_MS):
        if not os.access(DNS_WATCH_BIN, os.X_OK):
            raise h.Failure(f"{DNS_WATCH_BIN} is not an executable (set DNS_WATCH_BIN)")
        self.process = in_namespace([DNS_WATCH_BIN, NAME, port, refresh_ms], hosts, "dns-watch")

    def events(self):
        return [
            line
            for line in self.process.log().splitlines()
            if line.startswith(("result ", "error ", "stopped"))
        ]

    def wait_events(self, count):
        h.wait_for(
            f"{count} reports from dns-watch",
            lambda: len(self.events()) >= count,
            process=self.process,
        )
        return self.events()

    def settle(self, refreshes=10):
        """Lets several refreshes run; anything they would report shows up by then."""
        time.sleep(refreshes * REFRESH_MS / 1000)


def test_watch_reports_the_start_set_then_each_change():
    need_namespaces()
    hosts = HostsFile(["127.0.0.2"])
    watch = Watch(hosts)
    h.expect_eq(watch.wait_events(1), ["result 127.0.0.2:9000"], "start-up report")
    watch.settle()
    h.expect_eq(watch.events(), ["result 127.0.0.2:9000"], "reports while nothing changed")

    hosts.set(["127.0.0.4", "127.0.0.2", "::1", "127.0.0.3"])
    h.expect_eq(
        watch.wait_events(2)[1],
        "result 127.0.0.2:9000,127.0.0.3:9000," "127.0.0.4:9000,[::1]:9000",
        "A and AAAA lines, sorted, with the port",
    )
    hosts.set(["127.0.0.3", "::1", "127.0.0.4"])
    h.expect_eq(
        watch.wait_events(3)[2],
        "result 127.0.0.3:9000,127.0.0.4:9000,[::1]:9000",
        "after one address went away",
    )
    # A duplicate line and a reordering are the same set: nothing to report.
    hosts.set(["::1", "127.0.0.4", "127.0.0.3", "127.0.0.3"])
    watch.settle()
    h.expect_eq(len(watch.events()), 3, "reports after a reorder/duplicate")


def test_watch_failure_is_reported_once_then_recovery():
    need_namespaces()
    hosts = HostsFile(["127.0.0.2", "127.0.0.3"])
    watch = Watch(hosts)
    watch.wait_events(1)
    hosts.set([])
    events = watch.wait_events(2)
    h.expect(
        re.fullmatch(rf"error cannot resolve {re.escape(NAME)}: .+", events[1]),
        f"the failure names the name: {events[1]!r}",
    )
    watch.settle()
    h.expect_eq(len(watch.events()), 2, "reports during one run of failures")
    # The same set again still reports: it ends the failure (the view clears it).
    hosts.set(["127.0.0.3", "127.0.0.2"])
    h.expect_eq(watch.wait_events(3)[2], "result 127.0.0.2:9000,127.0.0.3:9000", "recovery")
    hosts.set([])
    h.expect(watch.wait_events(4)[3].startswith("error "), "a second failure run reports")


def test_watch_unresolvable_at_start_then_appears():
    need_namespaces()
    hosts = HostsFile([])
    watch = Watch(hosts, port=8080)
    h.expect(
        watch.wait_events(1)[0].startswith(f"error cannot resolve {NAME}: "),
        f"start-up failure: {watch.events()}",
    )
    hosts.set(["127.0.0.9"])
    h.expect_eq(watch.wait_events(2)[1], "result 127.0.0.9:8080", "first good set")


def test_watch_stops_at_once_despite_a_long_refresh():
    need_namespaces()
    hosts = HostsFile(["127.0.0.2"])
    watch = Watch(hosts, refresh_ms=3600 * 1000)
    watch.wait_events(1)
    watch.process.signal(signal.SIGTERM)
    # The next lookup is an hour away: only a condition-variable wake-up ends it.
    h.expect_eq(watch.process.wait(h.START_TIMEOUT), 0, "dns-watch exit status after SIGTERM")
    h.expect_eq(watch.events()[-1], "stopped", "last line")


# ---------------------------------------------------------------------------------
# stickyd with `dns = "NAME:PORT"`: targets follow the name, traffic follows them.


def dns_supported(config_path):
    """Skips when this stickyd's parser rejects the dns keys (feature not merged)."""
    check = h.run([h.STICKYD_BIN, "--check-config", config_path])
    if check.returncode != 0 and re.search(
        r"\bdns(_refresh)?\b.*unknown key|unknown key.*\bdns", check.stderr
    ):
        h.skip(f"this stickyd does not parse target_group.dns yet: {check.stderr.strip()}")
    h.expect_eq(check.returncode, 0, f"--check-config ({check.stderr.strip()})")


def dns_backends(names_ips):
    """stickyd-echo backends sharing one port on distinct loopback IPs, as pods do."""
    port = h.free_port(names_ips[0][1])
    backends = {}
    for name, ip in names_ips:
        backends[ip] = h.Backend(name, f"{ip}:{port}")
    return port, backends


def start_dns_stickyd(hosts, port, lb):
    group = {
        "name": "web",
        "connect_timeout": "1s",
        "connect_retries": 2,
        "dns": f"{NAME}:{port}",
        "dns_refresh": "200ms",
        # A pod that appears takes clients after its first passed check (NLB
        # "initial"): check fast so that happens within the test's patience.
        "health_check": {"interval": "300ms", "timeout": "200ms"},
    }
    config = h.config_text([{"bind": h.fmt_addr(lb), "target_group": "web"}], [group])
    path = h.write_file("stickyd.toml", config)
    dns_supported(path)
    process = in_namespace([h.STICKYD_BIN, "--config", path], hosts, "stickyd")
    h.wait_accepting(lb, process)
    return process


def reached(lb, ips):
    return set(h.mapping(lb, ips).values())


def test_stickyd_targets_follow_the_name():
    need_namespaces()
    port, _ = dns_backends([("pod-a", "127.0.0.2"), ("pod-b", "127.0.0.3"), ("pod-c", "127.0.0.4")])
    hosts = HostsFile(["127.0.0.2"])
    lb = h.lb_addr()
    stickyd = start_dns_stickyd(hosts, port, lb)
    clients = h.source_ips(40, first=20)
    h.expect_eq(reached(lb, clients), {"pod-a"}, "backends reached with one address")

    hosts.set(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    h.wait_for(
        "clients on all three pods",
        lambda: reached(lb, clients) == {"pod-a", "pod-b", "pod-c"},
        process=stickyd,
    )

    # A client of pod-b keeps an open connection through the removal: the
    # deregistration delay (300 s by default) lets it finish.
    before = h.mapping(lb, clients)
    b_client = next(ip for ip, name in before.items() if name == "pod-b")
    held = h.connect(lb, b_client)
    h.send_all(held, b"STICKYD-TEST WHOAMI\n")
    h.expect(h.recv_line(held).startswith("pod-b "), "held connection is on pod-b")

    hosts.set(["127.0.0.2", "127.0.0.4"])
    h.wait_for(
        "pod-b gone from new connections",
        lambda: reached(lb, clients) == {"pod-a", "pod-c"},
        process=stickyd,
    )
    after = h.mapping(lb, clients)
    moved = {ip for ip in clients if before[ip] != after[ip]}
    h.expect_eq(
        moved, {ip for ip in clients if before[ip] == "pod-b"}, "clients that moved (only pod-b's)"
    )
    h.send_all(held, b"still here\n")
    h.expect_eq(h.recv_line(held), "still here", "the drained target's open connection")
    held.close()


def test_stickyd_keeps_the_last_good_set_when_the_name_fails():
    need_namespaces()
    port, _ = dns_backends([("pod-a", "127.0.0.2"), ("pod-b", "127.0.0.3")])
    hosts = HostsFile(["127.0.0.2", "127.0.0.3"])
    lb = h.lb_addr()
    stickyd = start_dns_stickyd(hosts, port, lb)
    clients = h.source_ips(30, first=20)
    before = h.mapping(lb, clients)
    h.expect_eq(set(before.values()), {"pod-a", "pod-b"}, "backends reached")

    hosts.set([])
    h.wait_for(
        "the resolution failure in the log",
        lambda: "cannot resolve" in stickyd.log(),
        process=stickyd,
    )
    time.sleep(2)  # ten refreshes of a name that stays broken
    h.expect_eq(h.mapping(lb, clients), before, "mapping while the name does not resolve")
    failures = [line for line in stickyd.log().splitlines() if "cannot resolve" in line]
    h.expect_eq(len(failures), 1, f"log lines about the failure ({failures})")

    hosts.set(["127.0.0.3", "127.0.0.2"])
    h.wait_for(
        "recovery in the log", lambda: stickyd.log().count("resolves to") >= 2, process=stickyd
    )
    h.expect_eq(h.mapping(lb, clients), before, "mapping after the name is back")


# ---------------------------------------------------------------------------------
# Several names in one group, beside a static target: dns = ["a:PORT", "b:PORT"].

API = "api.stickyd.test"


def test_stickyd_several_names_and_a_reload_that_drops_one():
    need_namespaces()
    port, _ = dns_backends(
        [("app-a", "127.0.0.2"), ("api-a", "127.0.0.3"), ("static", "127.0.0.4")]
    )
    hosts = HostsFile({NAME: ["127.0.0.2"], API: ["127.0.0.3"]})
    lb = h.lb_addr()
    group = {
        "name": "web",
        "connect_timeout": "1s",
        "dns": [f"{NAME}:{port}", f"{API}:{port}"],
        "dns_refresh": "200ms",
        "health_check": {"interval": "300ms", "timeout": "200ms"},
        "targets": [{"id": "static", "address": f"127.0.0.4:{port}"}],
    }
    config = h.config_text([{"bind": h.fmt_addr(lb), "target_group": "web"}], [group])
    path = h.write_file("stickyd.toml", config)
    dns_supported(path)
    stickyd = in_namespace([h.STICKYD_BIN, "--config", path], hosts, "stickyd")
    h.wait_accepting(lb, stickyd)
    clients = h.source_ips(40, first=20)
    h.expect_eq(reached(lb, clients), {"app-a", "api-a", "static"}, "backends reached")

    group["dns"] = [f"{NAME}:{port}"]
    h.write_file(
        "stickyd.toml", h.config_text([{"bind": h.fmt_addr(lb), "target_group": "web"}], [group])
    )
    stickyd.signal(signal.SIGHUP)
    h.wait_for(
        "api's target gone from new connections",
        lambda: reached(lb, clients) == {"app-a", "static"},
        process=stickyd,
    )
    h.expect(
        f"target 127.0.0.3:{port} is deregistering: no longer in DNS" in stickyd.log(),
        f"the log says why:\n{stickyd.log()}",
    )


def test_check_config_and_offline_stickyctl_on_a_group_with_names():
    path = h.write_file(
        "names.toml",
        h.config_text(
            [{"bind": "127.0.0.1:8000", "target_group": "web"}],
            [
                {
                    "name": "web",
                    "dns": [f"{NAME}:80", f"{API}:8080"],
                    "targets": [{"address": "127.0.0.1:9001"}],
                }
            ],
        ),
    )
    r = h.run([h.STICKYD_BIN, "--check-config", path])
    h.expect_eq(
        r.stdout,
        f"{path}: configuration OK (1 listener, 1 target group, 1 target, 2 DNS names)\n",
        "--check-config",
    )
    # Offline, only the static targets are known: the answer says so, off stdout.
    stickyctl = os.environ.get("STICKYCTL_BIN") or os.path.join(
        os.path.dirname(h.STICKYD_BIN), "stickyctl"
    )
    r = h.run([stickyctl, "lookup", "--config", path, "10.0.0.1"])
    h.expect_eq(r.returncode, 0, f"stickyctl lookup --config ({r.stderr})")
    h.expect("127.0.0.1:9001" in r.stdout, r.stdout)
    h.expect_eq(
        r.stderr,
        f"stickyctl: note: group web also takes targets from DNS {NAME}:80, {API}:8080; this "
        "answer counts only its 1 static target (ask the daemon with --admin for all)\n",
        "stickyctl lookup --config: stderr",
    )


# ---------------------------------------------------------------------------------
# The Kubernetes example: stickyd's dns name must be the headless service it ships.


def test_kubernetes_example_discovers_its_headless_service():
    try:
        import yaml
    except ImportError:
        h.skip("python3-yaml is not installed")
    directory = os.path.join(h.SOURCE_ROOT, "kubernetes")
    docs = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".yaml"):
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                docs += [d for d in yaml.safe_load_all(f) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    headless = [s for s in by_kind.get("Service", []) if s["spec"].get("clusterIP") == "None"]
    h.expect_eq(len(headless), 1, "headless services")
    svc = headless[0]
    port = svc["spec"]["ports"][0]["port"]
    wanted = f'{svc["metadata"]["name"]}.{svc["metadata"]["namespace"]}.svc.cluster.local:{port}'
    config = by_kind["ConfigMap"][0]["data"]["stickyd.toml"]
    h.expect(f'dns = "{wanted}"' in config, f"the ConfigMap's dns is {wanted}")
    path = h.write_file("k8s-stickyd.toml", config)
    dns_supported(path)  # and --check-config accepts it


if __name__ == "__main__":
    h.main()
