#!/usr/bin/env python3
"""The admin endpoint and remote stickyctl against the real daemon: lookups agree with
where real connections land (also with a target down), /ring matches the offline ring,
drain keeps open connections and steers new ones away until enable, /metrics passes a
strict format check and its counters follow real traffic, and malformed requests get
clean JSON errors while traffic keeps flowing."""
import json
import math
import os
import re
import socket
import stat
import sys
import threading

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

SOURCES = h.source_ips(60)
FAST_CHECKS = {
    "interval": "200ms",
    "timeout": "100ms",
    "healthy_threshold": 2,
    "unhealthy_threshold": 2,
}


# ---------------------------------------------------------------------------------
# Talking to the endpoint


def admin_json(where, target, method="GET", status=200):
    code, headers, body = h.admin_request(where, method, target)
    h.expect(code == status, f"{method} {target}: expected HTTP {status}, got {code}: {body}")
    h.expect(
        headers.get("Content-Type", "").startswith("application/json"),
        f"{method} {target}: Content-Type {headers.get('Content-Type')}",
    )
    return json.loads(body)


def target_state(sock, target_id):
    status = admin_json(sock, "/status")
    for group in status["groups"]:
        for t in group["targets"]:
            if t["id"] == target_id:
                return t
    raise h.Failure(f"/status has no target {target_id}")


# ---------------------------------------------------------------------------------
# A strict check of the Prometheus text exposition format 0.0.4

METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE_RE = re.compile(
    rf"({METRIC_NAME})(?:\{{({LABEL}(?:,{LABEL})*)?\}})? " r"(-?[0-9.eE+-]+|[+-]Inf|NaN)"
)
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """{(name, frozenset(labels)): value}; fails on anything the format does not allow."""
    h.expect(text.endswith("\n"), "metrics do not end with a newline")
    samples, declared = {}, set()
    family = kind = None
    buckets = {}
    for n, line in enumerate(text.split("\n")[:-1], start=1):
        where = f"line {n}: {line!r}"
        m = re.fullmatch(rf"# HELP ({METRIC_NAME}) (.*)", line)
        if m:
            continue
        m = re.fullmatch(rf"# TYPE ({METRIC_NAME}) (counter|gauge|histogram|summary|untyped)", line)
        if m:
            h.expect(m.group(1) not in declared, f"family declared twice, {where}")
            declared.add(m.group(1))
            family, kind = m.group(1), m.group(2)
            h.expect(kind != "counter" or family.endswith("_total"), f"counter name, {where}")
            continue
        h.expect(not line.startswith("#"), f"stray comment, {where}")
        m = SAMPLE_RE.fullmatch(line)
        h.expect(m is not None, f"not a sample, {where}")
        name, label_text, value_text = m.groups()
        suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
        h.expect(
            family is not None and any(name == family + s for s in suffixes),
            f"sample outside its family {family}, {where}",
        )
        value = float(value_text.replace("Inf", "inf"))
        labels = dict(LABEL_RE.findall(label_text or ""))
        h.expect(len(labels) == len(LABEL_RE.findall(label_text or "")), f"label twice, {where}")
        key = (name, frozenset(labels.items()))
        h.expect(key not in samples, f"series repeated, {where}")
        samples[key] = value
        if kind == "counter" or name.endswith(("_bucket", "_count")):
            h.expect(value >= 0 and not math.isnan(value), f"negative count, {where}")
        if name.endswith("_bucket"):
            rest = frozenset((k, v) for k, v in labels.items() if k != "le")
            previous = buckets.get(rest, 0)
            h.expect(value >= previous, f"buckets not cumulative, {where}")
            buckets[rest] = value
        if name.endswith("_count") and kind == "histogram":
            inf = samples.get(
                (family + "_bucket", frozenset(list(labels.items()) + [("le", "+Inf")]))
            )
            h.expect(inf == value, f"_count differs from the +Inf bucket, {where}")
    return samples


def metric(samples, name, **labels):
    key = (name, frozenset(labels.items()))
    h.expect(key in samples, f"no sample {name}{labels}")
    return samples[key]


def metric_sum(samples, name):
    return sum(v for (n, _), v in samples.items() if n == name)


# ---------------------------------------------------------------------------------


def wait_until_all_healthy(sock):
    """Targets known at start are routable while `initial` (before their first check);
    the cases that assert health states, reasons or health metrics wait for the checks."""

    def states():
        status = admin_json(sock, "/status")
        return {t["id"]: t["state"] for g in status["groups"] for t in g["targets"]}

    h.wait_for(
        "the first health checks to pass", lambda: all(s == "healthy" for s in states().values())
    )


def start(backends, group=None, global_=None, healthy=True):
    lb = h.lb_addr()
    g = {"health_check": dict(FAST_CHECKS)}
    g.update(group or {})
    config = h.simple_config(h.fmt_addr(lb), backends, group=g, global_=global_)
    stickyd = h.start_stickyd(config, addr=lb)
    sock = stickyd.admin_socket
    h.expect(sock and os.path.exists(sock), f"no admin socket at {sock}\n{stickyd.describe()}")
    if healthy:
        wait_until_all_healthy(sock)
    return stickyd, sock, h.write_file("same.toml", config)


def lookups(sock, ips):
    return {e["ip"]: e for e in h.stickyctl_json("lookup", "--admin", sock, *ips)["lookups"]}


def test_lookup_agrees_with_real_connections_also_with_a_target_down():
    backends = h.start_backends(4)
    stickyd, sock, _ = start(backends, healthy=False)

    # Right after start the targets may still be `initial` (routable, not checked yet):
    # the reason follows the owner's state. States only go initial -> healthy here, so an
    # owner healthy before the lookup must be reported healthy, and one still initial
    # after it must be reported initial.
    def states():
        return {
            t["id"]: t["state"] for g in admin_json(sock, "/status")["groups"] for t in g["targets"]
        }

    before = states()
    early = lookups(sock, SOURCES)
    after = states()
    for ip, e in early.items():
        h.expect(e["chosen"] == e["owner"], f"{ip}: chosen {e['chosen']}, owner {e['owner']}")
        if before[e["owner"]] == "healthy":
            h.expect_eq(e["reason"], "owner healthy", f"reason for {ip} (owner healthy)")
        elif after[e["owner"]] == "initial":
            h.expect_eq(
                e["reason"],
                "owner usable (initial, not checked yet)",
                f"reason for {ip} (owner initial)",
            )
        else:
            h.expect(
                e["reason"] in ("owner healthy", "owner usable (initial, not checked yet)"),
                f"reason for {ip}: {e['reason']}",
            )

    wait_until_all_healthy(sock)
    predicted = lookups(sock, SOURCES)
    h.expect_eq(
        {ip: e["chosen"] for ip, e in predicted.items()},
        {ip: e["chosen"] for ip, e in early.items()},
        "lookups before and after checks",
    )
    via_http = admin_json(sock, "/lookup?" + "&".join(f"ip={ip}" for ip in SOURCES))["lookups"]
    h.expect_eq(
        {e["ip"]: e["chosen"] for e in via_http},
        {ip: e["chosen"] for ip, e in predicted.items()},
        "/lookup vs stickyctl lookup",
    )
    actual = h.mapping(stickyd.addr, SOURCES)
    wrong = {
        ip: (predicted[ip]["chosen"], actual[ip])
        for ip in SOURCES
        if predicted[ip]["chosen"] != actual[ip]
    }
    h.expect(not wrong, f"(predicted, actual) differ for {len(wrong)} sources: {wrong}")
    h.expect(len(set(actual.values())) == 4, f"sources reached only {set(actual.values())}")
    h.expect(
        all(e["reason"] == "owner healthy" for e in predicted.values()),
        f"reasons: {set(e['reason'] for e in predicted.values())}",
    )

    down = backends[1]
    down.stop()
    h.wait_for(
        f"{down.name} unhealthy", lambda: target_state(sock, down.name)["state"] == "unhealthy"
    )
    healthy_predicted = predicted
    predicted = lookups(sock, SOURCES)
    h.expect_eq(
        {ip: e["owner"] for ip, e in predicted.items()},
        {ip: e["owner"] for ip, e in healthy_predicted.items()},
        "owners with one down",
    )
    moved = [ip for ip, e in predicted.items() if e["owner"] == down.name]
    h.expect(moved, f"no source owned by {down.name}")
    for ip in set(SOURCES) - set(moved):
        h.expect_eq(
            (predicted[ip]["chosen"], predicted[ip]["reason"]),
            (healthy_predicted[ip]["chosen"], "owner healthy"),
            f"unaffected {ip}",
        )
    for ip in moved:
        h.expect_eq(
            predicted[ip]["reason"], "owner unhealthy -> next usable clockwise", f"reason for {ip}"
        )
        h.expect(predicted[ip]["chosen"] != down.name, f"{ip} still chosen for the down target")
    actual = h.mapping(stickyd.addr, SOURCES)
    wrong = {
        ip: (predicted[ip]["chosen"], actual[ip])
        for ip in SOURCES
        if predicted[ip]["chosen"] != actual[ip]
    }
    h.expect(not wrong, f"with {down.name} down, (predicted, actual) differ: {wrong}")
    table = h.stickyctl("lookup", "--admin", sock, moved[0]).stdout
    h.expect("owner unhealthy -> next usable clockwise" in table, table)


def test_ring_shares_sum_to_one_and_match_the_offline_ring():
    backends = h.start_backends(3)
    for algorithm in ("ring", "maglev"):
        stickyd, sock, path = start(backends, group={"algorithm": algorithm})
        ring = admin_json(sock, "/ring")
        shares = {t["id"]: t["share"] for t in ring["targets"]}
        h.expect(abs(sum(shares.values()) - 1) < 1e-9, f"{algorithm}: sum {sum(shares.values())}")
        offline = h.stickyctl_json("ring", "--config", path)
        h.expect_eq(
            shares,
            {t["id"]: t["share"] for t in offline["targets"]},
            f"{algorithm}: /ring vs offline shares",
        )
        h.expect_eq(ring, offline, f"{algorithm}: /ring vs offline document")
        h.expect_eq(
            h.stickyctl("ring", "--admin", sock).stdout,
            h.stickyctl("ring", "--config", path).stdout,
            f"{algorithm}: ring tables",
        )
        if algorithm == "ring":
            h.expect(all(t["points"] == 4096 for t in ring["targets"]), "points per target")
        else:
            h.expect_eq(sum(t["points"] for t in ring["targets"]), 65537, "maglev entries")
        stickyd.process.kill()


def whoami_connection(lb, src_ip):
    s = h.connect(lb, src_ip)
    s.sendall(b"STICKYD-TEST WHOAMI\n")
    return s, h.recv_line(s).split()[0]


def test_drain_keeps_open_connections_and_steers_new_ones_until_enable():
    backends = h.start_backends(3)
    stickyd, sock, _ = start(backends)
    before = h.mapping(stickyd.addr, SOURCES)
    victim = "backend-1"
    owned = [ip for ip in SOURCES if before[ip] == victim]
    h.expect(owned, f"no source reaches {victim}")
    held, name = whoami_connection(stickyd.addr, owned[0])
    h.expect_eq(name, victim, "long-lived connection's backend")

    out = h.stickyctl("drain", victim, "--admin", sock).stdout
    h.expect(victim in out, f"drain output: {out}")
    h.wait_for(f"{victim} draining", lambda: not target_state(sock, victim)["usable"])
    state = target_state(sock, victim)
    h.expect_eq((state["state"], state["deregistration"]), ("draining", "drained"), "state")
    after = h.mapping(stickyd.addr, SOURCES)
    h.expect(all(after[ip] != victim for ip in SOURCES), f"new connections reached {victim}")
    unmoved = {
        ip: (before[ip], after[ip])
        for ip in SOURCES
        if before[ip] != victim and before[ip] != after[ip]
    }
    h.expect(not unmoved, f"sources of other targets moved: {unmoved}")
    reasons = {e["reason"] for ip, e in lookups(sock, owned).items()}
    h.expect_eq(reasons, {"owner draining -> next usable clockwise"}, "lookup reasons")

    for i in range(3):  # the drained target's open connection still works both ways
        message = f"still here {i}\n".encode()
        held.sendall(message)
        h.expect_eq(h.recv_exact(held, len(message)), message, "echo on the held connection")
    h.expect(target_state(sock, victim)["active_connections"] >= 1, "active connection count")

    h.stickyctl("enable", victim, "--admin", sock)
    h.wait_for(f"{victim} usable again", lambda: target_state(sock, victim)["usable"])
    h.expect_eq(h.mapping(stickyd.addr, SOURCES), before, "mapping after enable")
    held.sendall(b"bye\n")
    h.expect_eq(h.recv_exact(held, 4), b"bye\n", "echo after enable")
    held.close()


def test_lookup_with_every_target_drained_or_down():
    """Regression: /lookup with every target of the group drained crashed the daemon
    (the chosen target was indexed as kNoMember); with every target down the reason
    and failing_open must say the group fails open."""
    backends = h.start_backends(2)
    stickyd, sock, _ = start(backends)
    ips = SOURCES[:10]
    for b in backends:
        h.stickyctl("drain", b.name, "--admin", sock)
    h.wait_for(
        "both drained", lambda: not any(target_state(sock, b.name)["usable"] for b in backends)
    )
    doc = admin_json(sock, "/lookup?" + "&".join(f"ip={ip}" for ip in ips))
    h.expect_eq(doc["failing_open"], False, "failing_open with every target drained")
    for e in doc["lookups"]:
        h.expect(e["owner"] in {b.name for b in backends}, f"owner: {e}")
        h.expect_eq((e["chosen"], e["address"]), (None, None), f"chosen with all drained: {e}")
        h.expect("every target is drained" in e["reason"], f"reason: {e}")
    table = h.stickyctl("lookup", "--admin", sock, ips[0]).stdout
    h.expect("every target is drained" in table, table)
    h.expect(stickyd.process.alive(), "stickyd died answering /lookup with every target drained")
    try:
        reached = h.whoami(ips[0], stickyd.addr)
    except (OSError, h.Failure):  # refused: what stickyd does with no target in service
        reached = None
    h.expect(reached is None, f"a new connection reached {reached} with every target drained")
    for b in backends:
        h.stickyctl("enable", b.name, "--admin", sock)
    h.wait_for("enabled", lambda: all(target_state(sock, b.name)["usable"] for b in backends))
    h.expect_eq(
        {e["ip"]: e["chosen"] for e in lookups(sock, ips).values()},
        h.mapping(stickyd.addr, ips),
        "lookups after enable vs real connections",
    )

    for b in backends:
        b.stop()
    h.wait_for(
        "every target unhealthy",
        lambda: all(target_state(sock, b.name)["state"] == "unhealthy" for b in backends),
    )
    doc = admin_json(sock, "/lookup?" + "&".join(f"ip={ip}" for ip in ips))
    h.expect_eq(doc["failing_open"], True, "failing_open with every target down")
    status = admin_json(sock, "/status")
    h.expect_eq(status["groups"][0]["failing_open"], True, "/status failing_open")
    for e in doc["lookups"]:
        h.expect(e["reason"].startswith("fail-open"), f"reason with every target down: {e}")
        h.expect_eq(e["chosen"], e["owner"], f"fail-open routes to the owner: {e}")


def test_metrics_pass_a_strict_format_check_and_move_with_traffic():
    backends = h.start_backends(3)
    stickyd, sock, _ = start(backends)
    code, headers, text = h.admin_request(sock, "GET", "/metrics")
    h.expect_eq(code, 200, "/metrics status")
    h.expect(headers["Content-Type"].startswith("text/plain; version=0.0.4"), headers)
    first = parse_metrics(text)
    listener = h.fmt_addr(stickyd.addr)
    accepted0 = metric(
        first, "stickyd_listener_accepted_connections_total", listener=listener, target_group="web"
    )
    connections0 = metric_sum(first, "stickyd_target_connections_total")

    count = 30
    h.mapping(stickyd.addr, SOURCES[:count])

    def moved():
        m = parse_metrics(h.admin_request(sock, "GET", "/metrics")[2])
        ok = (
            metric(
                m,
                "stickyd_listener_accepted_connections_total",
                listener=listener,
                target_group="web",
            )
            >= accepted0 + count
            and metric_sum(m, "stickyd_target_connections_total") >= connections0 + count
            and metric_sum(m, "stickyd_target_bytes_sent_total") > 0
            and metric_sum(m, "stickyd_target_bytes_received_total") > 0
            and metric(m, "stickyd_health_check_duration_seconds_count", group="web") > 0
        )
        return m if ok else None

    m = h.wait_for("counters to follow the traffic", moved)
    for b in backends:
        labels = {"group": "web", "target": b.name, "address": b.address}
        h.expect_eq(metric(m, "stickyd_target_healthy", **labels), 1.0, f"{b.name} healthy")
        h.expect_eq(metric(m, "stickyd_target_state", state="healthy", **labels), 1.0, "state")
    h.expect(metric(m, "stickyd_process_open_fds") > 0, "open fds")
    h.expect(
        metric(m, "stickyd_process_max_fds") >= metric(m, "stickyd_process_open_fds"), "max fds"
    )
    h.expect(("stickyd_connect_retries_total", frozenset()) in m, "retries counter")


def test_malformed_requests_get_clean_errors_while_traffic_flows():
    backends = h.start_backends(2)
    stickyd, sock, _ = start(backends)
    stop = threading.Event()
    done, errors = [0], []

    def traffic():
        i = 0
        while not stop.is_set():
            try:
                h.whoami(SOURCES[i % len(SOURCES)], stickyd.addr)
                done[0] += 1
            except Exception as e:  # reported below
                errors.append(repr(e))
            i += 1

    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    try:
        cases = [
            ("GET", "/lookup?ip=10.0.0.300", 400, "is not an IP address"),
            ("GET", "/lookup?ip=not-an-ip", 400, "is not an IP address"),
            ("GET", "/ring?group=nope", 404, "unknown target group"),
            ("POST", "/targets/nope/drain", 404, "nope"),
            ("POST", "/targets/backend-1/enable?group=nope", 404, "nope"),
            ("DELETE", "/status", 405, "takes GET only"),
            ("GET", "/targets/backend-1/drain", 405, "takes POST only"),
            ("GET", "/nope", 404, "no such endpoint"),
        ]
        for method, target, status, text in cases:
            body = admin_json(sock, target, method=method, status=status)
            h.expect(text in body["error"], f"{method} {target}: {body}")
        status, body = h.admin_exchange(sock, b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
        h.expect_eq(status, 400, f"garbage bytes: {body}")
        big = b"GET /status HTTP/1.1\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
        status, body = h.admin_exchange(sock, big)
        h.expect_eq(status, 431, f"1 MiB header: {body}")
        h.expect("larger than" in body["error"], body)
        start_count = done[0]
        h.wait_for("traffic to go on", lambda: done[0] >= start_count + 20)
    finally:
        stop.set()
        t.join(h.IO_TIMEOUT * 2)
    h.expect(not errors, f"client traffic failed {len(errors)} times: {errors[:3]}")
    h.expect(stickyd.process.alive(), "stickyd died")
    admin_json(sock, "/status")
    h.expect(target_state(sock, "backend-1")["deregistration"] == "none", "nothing drained")


def test_admin_socket_mode_refusal_stale_file_and_removal():
    backends = h.start_backends(1)
    stickyd, sock, _ = start(backends)
    mode = stat.S_IMODE(os.stat(sock).st_mode)
    h.expect_eq(oct(mode), oct(0o660), "admin socket mode")
    h.expect(stat.S_ISSOCK(os.stat(sock).st_mode), "is a socket")

    # A second daemon (config mode) on the same admin socket refuses to start.
    lb2 = h.lb_addr()
    config2 = h.simple_config(h.fmt_addr(lb2), backends, global_={"admin_socket": sock})
    path2 = h.write_file("second.toml", config2)
    result = h.run([h.STICKYD_BIN, "--config", path2], timeout=20)
    h.expect(result.returncode == 1, f"second daemon exit {result.returncode}: {result.stderr}")
    lines = [ln for ln in result.stderr.splitlines() if "admin socket" in ln]
    h.expect(
        len(lines) == 1 and sock in lines[0] and "another process answers" in lines[0],
        f"refusal: {result.stderr}",
    )
    admin_json(sock, "/status")  # the first one still answers

    stickyd.process.signal(15)
    h.expect_eq(stickyd.process.wait(20), 0, "exit status after SIGTERM")
    h.expect(not os.path.exists(sock), "admin socket left behind after SIGTERM")

    # A socket file nobody answers on (a killed daemon's) is replaced.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock)
    stale.close()
    lb3 = h.lb_addr()
    config3 = h.simple_config(h.fmt_addr(lb3), backends, global_={"admin_socket": sock})
    third = h.start_stickyd(config3, addr=lb3)

    # Its listener accepts before the admin socket replaces the stale file.
    def answers():
        try:
            return h.admin_request(sock, "GET", "/status")[0] == 200
        except ConnectionRefusedError:
            return False

    h.wait_for("the new daemon on the replaced socket", answers, process=third.process)


def test_quick_mode_flags_and_tcp_admin_address():
    backends = h.start_backends(2)
    lb = h.lb_addr()
    port = h.free_port()
    sock = os.path.join(h.temp_dir(), "quick.sock")
    stickyd = h.start_stickyd(
        args=["--listen", h.fmt_addr(lb)]
        + [a for b in backends for a in ("--target", b.address)]
        + ["--admin-socket", sock, "--admin-address", f"127.0.0.1:{port}"],
        addr=lb,
    )
    h.whoami(SOURCES[0], stickyd.addr)
    announced = [ln for ln in stickyd.process.log().splitlines() if "admin endpoint on" in ln]
    h.expect(
        len(announced) == 2 and sock in announced[0] and f"http://127.0.0.1:{port}" in announced[1],
        f"each admin address is announced once: {announced}",
    )
    code, headers, text = h.admin_request(("127.0.0.1", port), "GET", "/metrics")
    h.expect_eq(code, 200, "/metrics over TCP")
    parse_metrics(text)
    status = h.stickyctl_json("status", "--admin", f"127.0.0.1:{port}")
    h.expect_eq(len(status["groups"][0]["targets"]), 2, "targets over TCP")
    by_unix = h.stickyctl_json("status", "--admin", sock)
    h.expect_eq(
        [t["id"] for t in by_unix["groups"][0]["targets"]],
        [t["id"] for t in status["groups"][0]["targets"]],
        "unix socket and TCP agree",
    )
    out = h.stickyctl("status", "--admin", sock).stdout
    h.expect("TARGET" in out and backends[0].address in out, out)

    # Quick mode: an admin socket that cannot be set up is a warning, not a failure.
    blocker = h.write_file("not-a-dir", "")
    lb2 = h.lb_addr()
    second = h.start_stickyd(
        args=[
            "--listen",
            h.fmt_addr(lb2),
            "--target",
            backends[0].address,
            "--admin-socket",
            os.path.join(blocker, "admin.sock"),
        ],
        addr=lb2,
    )
    h.whoami(SOURCES[1], second.addr)
    h.expect("admin" in second.process.log() and "warn" in second.process.log(), second.describe())


if __name__ == "__main__":
    h.main()
