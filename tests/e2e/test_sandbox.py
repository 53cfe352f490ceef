#!/usr/bin/env python3
"""stickyd inside its systemd unit's syscall sandbox, without a systemd to start it.

SystemCallFilter= and RestrictAddressFamilies= of systemd/stickyd.service.in are
expanded with `systemd-analyze syscall-filter`, then stickyd runs under the same
seccomp filter (the syscall-filter helper): any syscall the unit does not allow fails
with EPERM, socket() of another family with EAFNOSUPPORT. Under it stickyd must start,
run health checks, discover targets through DNS (glibc's getaddrinfo, which may want
AF_NETLINK), proxy, answer its admin endpoint, reload on SIGHUP and stop on SIGTERM
without a single refused syscall showing."""
import http.client
import json
import os
import re
import signal
import socket
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

FILTER_BIN = os.environ.get("SYSCALL_FILTER_BIN") or os.path.join(
    h.SOURCE_ROOT, "build", "tests", "e2e", "syscall-filter"
)
UNIT = os.path.join(h.SOURCE_ROOT, "systemd", "stickyd.service.in")
FAST_CHECKS = {
    "interval": "200ms",
    "timeout": "150ms",
    "healthy_threshold": 2,
    "unhealthy_threshold": 2,
}


def unit_settings():
    """{key: [value of each line, in order]} of the unit's [Service] section."""
    settings = {}
    with open(UNIT, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def expand(tool, name, seen=None):
    """The syscalls of `name` (a syscall, or a @set with nested sets expanded)."""
    if not name.startswith("@"):
        return {name}
    seen = set() if seen is None else seen
    if name in seen:
        return set()
    seen.add(name)
    result = h.run([tool, "syscall-filter", "--no-pager", name], timeout=30)
    h.expect(result.returncode == 0, f"systemd-analyze syscall-filter {name}: {result.stderr}")
    calls = set()
    for line in result.stdout.splitlines()[1:]:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            calls |= expand(tool, entry, seen)
    h.expect(calls, f"systemd-analyze knows no syscalls in {name}")
    return calls


def allowed_syscalls(tool, settings):
    """SystemCallFilter= lines as systemd combines them: the first line allow-lists (and
    systemd then adds @default), a later ~ line removes from that list."""
    allowed = None
    for value in settings.get("SystemCallFilter", []):
        deny = value.startswith("~")
        names = value.lstrip("~").split()
        calls = set().union(*(expand(tool, n) for n in names))
        if allowed is None:
            h.expect(
                not deny,
                "the unit's first SystemCallFilter= is a deny list; this "
                "test emulates allow lists only",
            )
            allowed = expand(tool, "@default") | calls
        elif deny:
            allowed -= calls
        else:
            allowed |= calls
    h.expect(allowed is not None, "the unit has no SystemCallFilter=")
    return allowed


def sandbox():
    """The argv prefix that runs a program inside the unit's syscall sandbox."""
    tool = h.systemd_analyze()
    if not os.access(FILTER_BIN, os.X_OK):
        h.skip(f"{FILTER_BIN} is not built (needs libseccomp-dev; scripts/setup installs it)")
    settings = unit_settings()
    h.expect_eq(
        settings.get("SystemCallErrorNumber"),
        ["EPERM"],
        "SystemCallErrorNumber= (the helper returns EPERM)",
    )
    families = settings.get("RestrictAddressFamilies", [])
    h.expect_eq(len(families), 1, "RestrictAddressFamilies= lines")
    allowed = allowed_syscalls(tool, settings)
    path = h.write_file("allowed-syscalls.txt", "\n".join(sorted(allowed)) + "\n")
    return [FILTER_BIN, path, ",".join(families[0].split())], allowed


def sandboxed_env():
    """LeakSanitizer stops the world with ptrace, which the unit does not allow: in the
    sanitized run leaks are looked for everywhere else, not in the sandbox."""
    if h.sanitized():
        opts = os.environ.get("ASAN_OPTIONS", "")
        return {"ASAN_OPTIONS": (opts + ":" if opts else "") + "detect_leaks=0"}
    return {}


def spawn(argv, env, label):
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return h.Process(argv, label)
    finally:
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


def test_the_emulated_filter_refuses_what_the_unit_refuses():
    prefix, allowed = sandbox()
    h.expect("sethostname" not in allowed, "sethostname (@privileged) is not allowed")
    h.expect("io_uring_setup" in allowed, "io_uring_setup is allowed")
    probe = (
        "import errno, socket\n"
        "def attempt(f):\n"
        "    try:\n"
        "        f()\n"
        "        return 'ok'\n"
        "    except OSError as e:\n"
        "        return errno.errorcode[e.errno]\n"
        "print('inet', attempt(lambda: socket.socket(socket.AF_INET).close()))\n"
        "print('netlink', attempt(lambda: socket.socket(socket.AF_NETLINK,"
        " socket.SOCK_RAW).close()))\n"
        "print('sethostname', attempt(lambda: socket.sethostname('x')))\n"
    )
    result = h.run(prefix + [sys.executable, "-c", probe], timeout=30)
    h.expect_eq(result.returncode, 0, f"python under the filter ({result.stderr.strip()})")
    h.expect_eq(
        result.stdout.split("\n")[:3],
        ["inet ok", "netlink EAFNOSUPPORT", "sethostname EPERM"],
        "socket(AF_INET), socket(AF_NETLINK), sethostname() under the filter",
    )


def admin_status(path):
    conn = http.client.HTTPConnection("stickyd", timeout=h.IO_TIMEOUT)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(h.IO_TIMEOUT)
    sock.connect(path)
    conn.sock = sock
    try:
        conn.request("GET", "/status")
        response = conn.getresponse()
        h.expect_eq(response.status, 200, "GET /status")
        return json.loads(response.read())
    finally:
        conn.close()


def group_targets(path, group):
    """{address: target} of one group from GET /status; {} while the endpoint does not
    answer yet."""
    try:
        status = admin_status(path)
    except OSError:
        return {}
    return targets_of(status, group)


def targets_of(status, group):
    for g in status["groups"]:
        if g["name"] == group:
            return {t["address"]: t for t in g["targets"]}
    raise h.Failure(f"no group {group} in {status}")


def test_stickyd_runs_in_its_unit_sandbox():
    prefix, _ = sandbox()
    web = h.start_backends(2, prefix="web-")
    discovered = h.start_backend("dns-1")
    dead_port = h.free_port()  # nothing listens there
    lb = h.lb_addr()
    admin = os.path.join(h.temp_dir(), "admin.sock")
    web_group = {
        "name": "web",
        "connect_timeout": "1s",
        "connect_retries": 2,
        "health_check": FAST_CHECKS,
        "targets": [{"id": b.name, "address": b.address} for b in web]
        + [{"id": "dead", "address": f"127.0.0.1:{dead_port}"}],
    }
    # "localhost" comes from /etc/hosts through glibc's getaddrinfo, whatever it
    # opens on the way (nss modules, AF_NETLINK for address selection).
    dns_group = {
        "name": "dns",
        "connect_timeout": "1s",
        "dns": f"localhost:{discovered.addr[1]}",
        "dns_refresh": "200ms",
        "health_check": FAST_CHECKS,
    }
    dns_lb = h.lb_addr()

    def config(extra_targets=()):
        group = dict(web_group, targets=web_group["targets"] + list(extra_targets))
        return h.config_text(
            [
                {"bind": h.fmt_addr(lb), "target_group": "web"},
                {"bind": h.fmt_addr(dns_lb), "target_group": "dns"},
            ],
            [group, dns_group],
            {"admin_socket": admin},
        )

    path = h.write_file("stickyd.toml", config())
    proc = spawn(prefix + [h.STICKYD_BIN, "--config", path], sandboxed_env(), "stickyd")
    h.wait_accepting(lb, proc)

    # Health checks: the live targets turn healthy, the dead one unhealthy.
    def settled():
        t = group_targets(admin, "web")
        states = {a: t[a]["state"] for a in t}
        want = {b.address: "healthy" for b in web}
        want[f"127.0.0.1:{dead_port}"] = "unhealthy"
        return states == want

    h.wait_for("web's checks to settle", settled, process=proc)

    # DNS discovery: localhost's IPv4 address with the port, healthy and routed to.
    ipv4 = f"127.0.0.1:{discovered.addr[1]}"
    h.wait_for(
        "the DNS target to be healthy",
        lambda: group_targets(admin, "dns").get(ipv4, {}).get("state") == "healthy",
        process=proc,
    )
    h.expect_eq(h.whoami("127.0.0.2", dns_lb), "dns-1", "a request to the discovered target")

    # Proxying: every source reaches a live target, each always the same one.
    names = set(h.mapping(lb, h.source_ips(20), repeat=2).values())
    h.expect(names <= {b.name for b in web} and names, f"backends reached: {names}")

    # SIGHUP: a reload adds a target.
    extra = h.start_backend("web-3")
    with open(path, "w", encoding="utf-8") as f:
        f.write(config([{"id": "web-3", "address": extra.address}]))
    proc.signal(signal.SIGHUP)
    h.wait_for(
        "web-3 after the reload",
        lambda: group_targets(admin, "web").get(extra.address, {}).get("state") == "healthy",
        process=proc,
    )

    # SIGTERM: a clean stop.
    proc.signal(signal.SIGTERM)
    h.expect_eq(proc.wait(15), 0, f"exit status after SIGTERM\n{proc.describe()}")
    log = proc.log()
    refused = [
        line
        for line in log.splitlines()
        if re.search(r"Operation not permitted|Address family not supported", line)
    ]
    h.expect(not refused, "the sandbox refused something:\n" + "\n".join(refused))


if __name__ == "__main__":
    h.main()
