#!/usr/bin/env python3
"""Runtime registration, the NLB's RegisterTargets and DeregisterTargets: POST /targets
and DELETE /targets/ID (stickyctl register / deregister) against the real daemon. A
registered target takes clients only after its first passed check, and only the keys
the ring gives it move; a deregistered one keeps its open connections for the
deregistration delay while new clients go elsewhere; a SIGHUP keeps both kinds of
change (the runtime overlay); and every bad request gets its exact JSON error."""
import json
import os
import socket
import sys
import threading

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

SOURCES = h.source_ips(60)
FAST_CHECKS = {
    "interval": "200ms",
    "timeout": "150ms",
    "healthy_threshold": 2,
    "unhealthy_threshold": 2,
}


def request(sock, method, target, body=None):
    """(status, JSON document) of one request to the admin socket."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    status, response_headers, text = h.admin_request(sock, method, target, body, headers)
    h.expect(
        response_headers.get("Content-Type", "").startswith("application/json"),
        f"{method} {target}: Content-Type {response_headers.get('Content-Type')}",
    )
    return status, json.loads(text)


def status(sock):
    code, doc = request(sock, "GET", "/status")
    h.expect_eq(code, 200, "GET /status")
    return doc


def targets(sock, group="web"):
    """{id: target document} of the group in /status."""
    for g in status(sock)["groups"]:
        if g["name"] == group:
            return {t["id"]: t for t in g["targets"]}
    raise h.Failure(f"/status has no group {group}")


def owners(sock, ips):
    code, doc = request(sock, "GET", "/lookup?" + "&".join(f"ip={ip}" for ip in ips))
    h.expect_eq(code, 200, f"GET /lookup: {doc}")
    return {e["ip"]: e for e in doc["lookups"]}


def group(backends, **extra):
    g = {
        "name": "web",
        "connect_timeout": "1s",
        "connect_retries": 2,
        "health_check": dict(FAST_CHECKS),
        "targets": [{"id": b.name, "address": b.address} for b in backends],
    }
    g.update(extra)
    return g


class Daemon:
    """A stickyd whose config file the test can rewrite and reload."""

    def __init__(self, groups):
        self.lb = h.lb_addr()
        self.groups = groups
        self.stickyd = h.start_stickyd(self.text(groups), addr=self.lb)
        self.process = self.stickyd.process
        self.sock = self.stickyd.admin_socket
        self.path = self.process.argv[self.process.argv.index("--config") + 1]

    def text(self, groups, more_listeners=()):
        return h.config_text(
            [{"bind": h.fmt_addr(self.lb), "target_group": groups[0]["name"]}, *more_listeners],
            groups,
            {
                "admin_socket": getattr(self, "sock", None)
                or os.path.join(h.temp_dir(), "register-admin.sock")
            },
        )

    def reload(self, groups, more_listeners=(), outcome="reloaded "):
        """Rewrites the file, sends SIGHUP, waits for the outcome; returns its log line."""
        before = self.outcomes()
        tmp = self.path + ".new"
        with open(tmp, "w") as f:
            f.write(self.text(groups, more_listeners))
        os.replace(tmp, self.path)
        self.process.signal(1)  # SIGHUP
        line = h.wait_for(
            "the reload's outcome",
            lambda: self.outcomes()[len(before) :],
            timeout=10,
            process=self.process,
        )[0]
        h.expect(outcome in line, f"expected a '{outcome}' line, got: {line}")
        return line

    def outcomes(self):
        return [
            line
            for line in self.process.log().splitlines()
            if "reloaded " in line or "reload failed" in line
        ]

    def wait_healthy(self, ids):
        h.wait_for(
            f"{ids} healthy",
            lambda: all(targets(self.sock).get(i, {}).get("state") == "healthy" for i in ids),
            process=self.process,
        )


def held_connection(lb, src_ip):
    """An open connection through stickyd and the name of the backend behind it."""
    s = h.connect(lb, src_ip)
    s.sendall(b"STICKYD-TEST WHOAMI\n")
    return s, h.recv_line(s).split()[0]


def echo(s, text):
    data = text.encode()
    s.sendall(data)
    h.expect_eq(h.recv_exact(s, len(data)), data, "echo on the held connection")


class Load:
    """Clients from every source, one connection after another, until stopped: a
    registration or deregistration must not fail a single one."""

    def __init__(self, lb):
        self.lb, self.stop_flag = lb, threading.Event()
        self.done, self.errors = 0, []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        i = 0
        while not self.stop_flag.is_set():
            try:
                h.whoami(SOURCES[i % len(SOURCES)], self.lb)
                self.done += 1
            except Exception as e:  # reported by stop()
                self.errors.append(repr(e))
            i += 1

    def stop(self):
        start = self.done
        h.wait_for("load to go on", lambda: self.done >= start + 20)
        self.stop_flag.set()
        self.thread.join(h.IO_TIMEOUT * 2)
        h.expect(
            not self.errors,
            f"client connections failed {len(self.errors)} times: " f"{self.errors[:3]}",
        )


# ---------------------------------------------------------------------------------


def test_register_under_load_moves_only_keys_onto_the_new_target():
    backends = h.start_backends(4)
    d = Daemon([group(backends[:3])])
    d.wait_healthy([b.name for b in backends[:3]])
    before = h.mapping(d.lb, SOURCES)
    owners_before = owners(d.sock, SOURCES)
    load = Load(d.lb)
    try:
        new = backends[3]
        out = h.stickyctl("register", f"{new.name}={new.address}", "--admin", d.sock).stdout
        h.expect_eq(
            out,
            f"target group 'web': target {new.name} ({new.address}) registered via "
            "admin API: takes connections after its first passed health check\n",
            "stickyctl register output",
        )
        t = targets(d.sock)[new.name]
        h.expect_eq((t["origin"], t["weight"], t["discovered"]), ("runtime", 1, False), "target")
        h.expect(t["state"] in ("initial", "healthy"), f"state of a new target: {t}")
        d.wait_healthy([new.name])
    finally:
        load.stop()

    after = h.mapping(d.lb, SOURCES)
    owners_after = owners(d.sock, SOURCES)
    moved = {ip for ip in SOURCES if after[ip] != before[ip]}
    h.expect(moved, "no source moved to the new target")
    for ip in SOURCES:
        # The ring's expectation: a key changes owner only to the new target, and each
        # client lands where /lookup says.
        o0, o1 = owners_before[ip]["owner"], owners_after[ip]["owner"]
        h.expect(o1 == o0 or o1 == new.name, f"{ip}: owner {o0} -> {o1}")
        h.expect_eq(after[ip], o1, f"{ip}: where it lands against /lookup's owner")
        h.expect(
            after[ip] == before[ip] or after[ip] == new.name,
            f"{ip} moved {before[ip]} -> {after[ip]}, not onto {new.name}",
        )
    h.expect(
        h.stickyctl("register", f"{new.name}={new.address}", "--admin", d.sock, ok=False).returncode
        == 1,
        "registering it twice: exit status",
    )


def test_deregister_drains_open_connections_until_the_delay_and_steers_new_ones():
    backends = h.start_backends(4)
    d = Daemon([group(backends[:3], deregistration_delay={"timeout": "4s"})])
    new = backends[3]
    h.stickyctl("register", f"{new.name}={new.address},weight=2", "--admin", d.sock)
    d.wait_healthy([b.name for b in backends])
    before = h.mapping(d.lb, SOURCES)
    for victim in (new.name, backends[0].name):  # a runtime target, then a file target
        owned = [ip for ip in SOURCES if before[ip] == victim]
        h.expect(owned, f"no source reaches {victim}")
        held, name = held_connection(d.lb, owned[0])
        h.expect_eq(name, victim, "the held connection's backend")

        result = h.stickyctl("deregister", victim, "--admin", d.sock, "--json")
        answer = json.loads(result.stdout)
        address = next(b.address for b in backends if b.name == victim)
        h.expect_eq(
            answer,
            {
                "result": "ok",
                "message": f"target group 'web': target {victim} ({address}) is deregistering: "
                f"deregistered via admin API; its 1 connection gets 4 s",
            },
            "stickyctl deregister --json",
        )
        t = targets(d.sock)[victim]
        h.expect_eq(
            (t["state"], t["deregistration"], t["usable"]),
            ("draining", "removed", False),
            f"{victim} in /status",
        )
        echo(held, "still here\n")  # the open connection survives the deregistration
        after = h.mapping(d.lb, SOURCES)
        for ip in SOURCES:
            h.expect(after[ip] != victim, f"{ip}: a new connection reached {victim}")
            h.expect(
                before[ip] == victim or after[ip] == before[ip],
                f"{ip} moved {before[ip]} -> {after[ip]} though its target stayed",
            )
        echo(held, "and here\n")
        # The delay ends: what is left is reset, and the target is forgotten.
        h.wait_closed(held, timeout=20)
        held.close()
        h.wait_for(
            f"{victim} to be forgotten", lambda: victim not in targets(d.sock), process=d.process
        )
        before = after


def test_a_reload_keeps_runtime_targets_and_deregistrations_until_the_file_says_otherwise():
    backends = h.start_backends(4)
    d = Daemon([group(backends[:3])])
    new, file_target = backends[3], backends[1]
    h.stickyctl("register", f"{new.name}={new.address}", "--admin", d.sock)
    h.stickyctl("deregister", file_target.name, "--admin", d.sock)
    d.wait_healthy([new.name])
    d.reload([group(backends[:3])])  # the same file
    t = targets(d.sock)
    h.expect_eq(
        (t[new.name]["origin"], t[new.name]["state"], t[new.name]["deregistration"]),
        ("runtime", "healthy", "none"),
        f"{new.name} after SIGHUP",
    )
    h.expect(
        file_target.name not in t or t[file_target.name]["deregistration"] == "removed",
        f"{file_target.name} came back on SIGHUP: {t.get(file_target.name)}",
    )
    mapping = h.mapping(d.lb, SOURCES)
    h.expect(file_target.name not in mapping.values(), f"{file_target.name} took clients")
    h.expect(new.name in mapping.values(), f"{new.name} took no clients")

    # The file stops listing the deregistered target, then lists it again: it is back.
    without = [b for b in backends[:3] if b is not file_target]
    d.reload([group(without)])
    d.reload([group(backends[:3])])
    t = targets(d.sock)
    h.expect_eq(
        (t[file_target.name]["origin"], t[file_target.name]["deregistration"]),
        ("config", "none"),
        f"{file_target.name} listed again",
    )
    h.expect(
        "no longer in the configuration file; listing it again registers it" in d.process.log(),
        "the log says the deregistration lapsed",
    )

    # The file takes the runtime target over: it stays, now the file's.
    d.reload([group(backends)])
    t = targets(d.sock)
    h.expect_eq(
        (t[new.name]["origin"], t[new.name]["deregistration"]),
        ("config", "none"),
        f"{new.name} once the file lists it",
    )
    h.expect(
        "registered at run time, is now in the configuration file, which keeps it"
        in d.process.log(),
        "the log says the file took it over",
    )


def test_a_failed_reload_holds_back_no_registration():
    """A reload first asks whether its file holds the registered targets (and refuses
    registrations it would not hold until it is applied), then opens its new listeners.
    One that fails there, at a port someone else holds, is abandoned: a registration
    its file could not have held goes through afterwards."""
    backends = h.start_backends(3)
    web = group(backends[:1], algorithm="maglev", maglev_table_size=307)  # room for 3 targets
    d = Daemon([web])
    first, second = backends[1], backends[2]
    h.stickyctl("register", f"{first.name}={first.address}", "--admin", d.sock)
    squatter = socket.socket()
    h.on_cleanup(squatter.close)
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = h.fmt_addr(squatter.getsockname())
    tight = dict(web, maglev_table_size=211)  # room for the 2 targets there are, not a third
    line = d.reload([tight], [{"bind": taken, "target_group": "web"}], outcome="reload failed")
    h.expect(taken in line, f"the reload failed at the taken port: {line}")
    body = json.dumps({"group": "web", "id": second.name, "address": second.address})
    code, doc = request(d.sock, "POST", "/targets", body)
    h.expect_eq(code, 200, f"POST /targets after the failed reload: {doc}")
    h.expect_eq(
        sorted(targets(d.sock)), sorted(b.name for b in backends), "targets after registering"
    )


def test_bad_requests_get_exact_json_errors():
    backends = h.start_backends(2)
    heavy = {
        "name": "heavy",
        "health_check": {"enabled": False},
        "targets": [
            {"id": f"h{i}", "address": f"127.0.0.1:{1 + i}", "weight": 100} for i in range(10)
        ],
    }
    # localhost comes from /etc/hosts: no resolver needed.
    dns = {
        "name": "dns",
        "dns": "localhost:80",
        "dns_refresh": "1h",
        "health_check": {"enabled": False},
    }
    d = Daemon([group(backends), heavy, dns])
    b1 = backends[0]
    example = '{"id": "web-4", "address": "10.0.0.14:8080", "weight": 1, "group": "web"}'
    cases = [
        (
            '{"id": "x",',
            400,
            "invalid JSON body: parse error at line 1, column 12: syntax error "
            "while parsing object key - unexpected end of input; expected string "
            "literal",
        ),
        (
            '{"group": "web", "id": "a b", "address": "127.0.0.1:9"}',
            400,
            'id: must be printable ASCII without spaces, quotes or backslashes, got "a b"',
        ),
        (
            '{"group": "web", "address": "127.0.0.1:9", "weight": 0}',
            400,
            "weight: must be an integer from 1 to 100, got 0",
        ),
        (
            '{"group": "web", "address": "127.0.0.1:9", "weight": "2"}',
            400,
            'weight: must be an integer from 1 to 100, got "2"',
        ),
        (
            '{"group": "web", "address": "localhost:9"}',
            400,
            'address: "localhost:9": "localhost" is a host name; an IP address is required (names '
            "are not resolved); expected ip:port such as 127.0.0.1:9001 or [::1]:9001",
        ),
        (
            '{"group": "web", "adress": "127.0.0.1:9"}',
            400,
            'unknown key "adress" (did you mean "address"?); a target has id, address, weight and '
            "group",
        ),
        (
            '{"group": "web", "id": "x"}',
            400,
            f"address: missing; a target needs one, as in {example}",
        ),
        (
            '{"address": "127.0.0.1:9"}',
            400,
            "several target groups ('web', 'heavy', 'dns'); name the target group",
        ),
        ('{"group": "nope", "address": "127.0.0.1:9"}', 404, "no target group 'nope'"),
        (
            json.dumps({"group": "web", "id": b1.name, "address": "127.0.0.1:9"}),
            409,
            f"target group 'web' already has a target with id '{b1.name}' ({b1.address})",
        ),
        (
            json.dumps({"group": "web", "id": "x", "address": b1.address}),
            409,
            f"target group 'web' already has a target at {b1.address} (id '{b1.name}')",
        ),
        (
            '{"group": "dns", "address": "127.0.0.1:9"}',
            409,
            "target group 'dns' takes its targets from DNS (dns = \"localhost:80\"), not from the "
            "admin API",
        ),
        (
            '{"group": "heavy", "id": "h10", "address": "127.0.0.1:11", "weight": 25}',
            422,
            "target group 'heavy' cannot take target h10 (127.0.0.1:11): the targets' weights add "
            "up to 1025, more than one ring holds (1024); use smaller weights (only their ratios "
            'matter) or algorithm = "maglev"',
        ),
    ]
    for body, wanted_status, wanted_error in cases:
        code, doc = request(d.sock, "POST", "/targets", body)
        h.expect_eq((code, doc), (wanted_status, {"error": wanted_error}), f"POST /targets {body}")

    code, doc = request(d.sock, "DELETE", "/targets/nope?group=web")
    h.expect_eq(
        (code, doc),
        (404, {"error": "target group 'web' has no target 'nope'"}),
        "DELETE of an unknown target",
    )
    code, doc = request(d.sock, "DELETE", "/targets/127.0.0.1:80?group=dns")
    h.expect_eq(
        (code, doc),
        (
            409,
            {
                "error": "target group 'dns' takes its targets from DNS (dns "
                '= "localhost:80"), not from the admin API; drain a '
                "target to take it out of service"
            },
        ),
        "DELETE in DNS",
    )
    code, doc = request(d.sock, "GET", "/targets/x")
    h.expect_eq((code, doc), (405, {"error": "/targets/x takes DELETE only, not GET"}), "GET")

    big = b'{"group": "web", "address": "127.0.0.1:9", "id": "' + b"x" * 5000 + b'"}'
    code, doc = h.admin_exchange(
        d.sock, b"POST /targets HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(big) + big
    )
    h.expect_eq((code, doc), (413, {"error": "request body larger than 4096 bytes"}), "5 KB body")
    code, doc = h.admin_exchange(
        d.sock,
        b"POST /targets HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" b"5\r\nhello\r\n0\r\n\r\n",
    )
    h.expect_eq(
        (code, doc),
        (
            411,
            {
                "error": "chunked request bodies are not taken; send "
                "Content-Length (at most 4096 bytes)"
            },
        ),
        "chunked",
    )
    # A body that trickles in is waited for.
    body = json.dumps({"group": "web", "id": "slow", "address": "127.0.0.1:19"}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(h.IO_TIMEOUT)
        s.connect(d.sock)
        s.sendall(b"POST /targets HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:10])
        s.sendall(body[10:])
        reply = s.recv(65536)
    h.expect(reply.startswith(b"HTTP/1.1 200 "), f"a body in two pieces: {reply!r}")
    h.expect("slow" in targets(d.sock), "the target sent in two pieces is registered")

    h.expect(d.process.alive(), "stickyd died")
    t = targets(d.sock)
    h.expect_eq(
        sorted(t),
        sorted([b.name for b in backends] + ["slow"]),
        "only the good registration changed the group",
    )


def test_stickyctl_register_and_deregister_output_and_exit_status():
    backends = h.start_backends(2)
    d = Daemon([group(backends)])

    def fails(args, line, code):
        result = h.stickyctl(*args, ok=False)
        h.expect_eq(
            ([x for x in result.stderr.splitlines() if x.strip()], result.returncode),
            ([line], code),
            f"stickyctl {' '.join(args)}",
        )

    admin = ["--admin", d.sock]
    fails(["register", "x"] + admin, 'stickyctl: register "x": expected ID=ADDR[,weight=W]', 2)
    fails(
        ["register", "x=127.0.0.1"] + admin,
        'stickyctl: register "x=127.0.0.1": '
        '"127.0.0.1" is not an address (expected IP:PORT or [IPv6]:PORT)',
        2,
    )
    fails(
        ["register", "x=127.0.0.1:9,weight=0"] + admin,
        "stickyctl: register "
        '"x=127.0.0.1:9,weight=0": expected weight=W with W in 1..100 after the address',
        2,
    )
    fails(
        ["register", 'a"b=127.0.0.1:9'] + admin,
        'stickyctl: register "a"b=127.0.0.1:9": '
        'id: must be printable ASCII without spaces, quotes or backslashes, got "a\\"b"',
        2,
    )
    fails(["register"] + admin, "stickyctl: target is required (see stickyctl --help)", 2)
    fails(
        ["register", f"x={backends[0].address}"] + admin,
        f"stickyctl: target group 'web' already has a target at {backends[0].address} "
        f"(id '{backends[0].name}')",
        1,
    )
    fails(
        ["register", "x=127.0.0.1:9", "--group", "nope"] + admin,
        "stickyctl: no target group 'nope'",
        1,
    )
    fails(["deregister", "nope"] + admin, "stickyctl: no target 'nope' in any target group", 1)
    nowhere = os.path.join(h.temp_dir(), "nowhere.sock")
    result = h.stickyctl("register", "x=127.0.0.1:9", "--admin", nowhere, ok=False)
    h.expect_eq(result.returncode, 1, "register with no daemon: exit status")
    h.expect(nowhere in result.stderr, f"the error names the socket: {result.stderr}")

    out = h.stickyctl("register", "x=127.0.0.1:19,weight=3", "--group", "web", *admin).stdout
    h.expect_eq(
        out,
        "target group 'web': target x (127.0.0.1:19) registered via admin API: "
        "takes connections after its first passed health check\n",
        "register",
    )
    h.expect_eq(targets(d.sock)["x"]["weight"], 3, "registered weight")
    doc = json.loads(h.stickyctl("deregister", "x", "--group", "web", "--json", *admin).stdout)
    h.expect_eq(doc["result"], "ok", f"deregister --json: {doc}")
    h.expect(
        doc["message"].startswith(
            "target group 'web': target x (127.0.0.1:19) is "
            "deregistering: deregistered via admin API"
        ),
        doc,
    )
    out = h.stickyctl("deregister", "x", *admin).stdout
    h.expect_eq(
        out,
        "target group 'web': target x (127.0.0.1:19) is already deregistering "
        "(no longer registered)\n",
        "deregister twice",
    )
    # Over TCP too (the other client path), in quick mode's one group.
    lb, tcp = h.lb_addr(), h.lb_addr()
    h.start_stickyd(
        args=[
            "--listen",
            h.fmt_addr(lb),
            "--target",
            backends[0].address,
            "--admin-address",
            h.fmt_addr(tcp),
        ],
        addr=lb,
    )
    where = h.fmt_addr(tcp)
    b = backends[1]
    out = h.stickyctl("register", f"y={b.address}", "--admin", where).stdout
    h.expect_eq(
        out,
        f"target group 'default': target y ({b.address}) registered via admin API: "
        "takes connections after its first passed health check\n",
        "register on TCP",
    )
    out = h.stickyctl("deregister", "y", "--admin", where).stdout
    h.expect(
        out.startswith(
            f"target group 'default': target y ({b.address}) is deregistering: "
            "deregistered via admin API"
        ),
        f"deregister on TCP: {out}",
    )


if __name__ == "__main__":
    h.main()
