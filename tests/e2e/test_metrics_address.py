#!/usr/bin/env python3
"""metrics_address: a read-only TCP door for Prometheus and readiness probes. It
serves GET /metrics, /status and /ready; drain, enable, /ring and /lookup answer
403 and change nothing, other methods 405, unknown paths 404. admin_address off
loopback is warned about once, word for word; bad or clashing addresses are refused
with one line, from a file and from the command line."""
import json
import os
import re
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

SOURCES = h.source_ips(30)
READ_ONLY = "(GET /metrics, GET /status, GET /ready); use the admin socket"
EXPOSED_WARNING = (
    "admin_address {} is not on loopback: whoever reaches it can drain targets (the admin "
    "endpoint has no authentication); keep it on 127.0.0.1 or [::1] and let Prometheus "
    "scrape metrics_address, which serves only /metrics, /status and /ready"
)


def json_error(where, method, target, status):
    code, headers, body = h.admin_request(where, method, target)
    h.expect_eq(code, status, f"{method} {target} status ({body.strip()})")
    h.expect(
        headers.get("Content-Type", "").startswith("application/json"),
        f"{method} {target}: Content-Type {headers.get('Content-Type')}",
    )
    return json.loads(body)["error"]


def deregistration(sock, target_id):
    status = json.loads(h.admin_request(sock, "GET", "/status")[2])
    return {t["id"]: t["deregistration"] for t in status["groups"][0]["targets"]}[target_id]


def test_metrics_address_serves_read_only_and_mutations_never_reach_the_daemon():
    backends = h.start_backends(2)
    lb = h.lb_addr()
    port = h.free_port()
    metrics = ("127.0.0.1", port)
    config = h.simple_config(
        h.fmt_addr(lb), backends, global_={"metrics_address": f"127.0.0.1:{port}"}
    )
    path = h.write_file("metrics.toml", config)
    stickyd = h.start_stickyd(args=["--config", path], addr=lb)
    h.wait_for(
        "the metrics endpoint",
        lambda: "metrics endpoint" in stickyd.process.log(),
        process=stickyd.process,
    )
    h.expect(
        f"metrics endpoint (read-only: /metrics, /status, /ready) on "
        f"http://127.0.0.1:{port}" in stickyd.process.log(),
        stickyd.describe(),
    )
    h.expect("not on loopback" not in stickyd.process.log(), "a warning without admin_address")
    before = h.mapping(lb, SOURCES)

    code, headers, text = h.admin_request(metrics, "GET", "/metrics")
    h.expect_eq(code, 200, "GET /metrics")
    h.expect(headers["Content-Type"].startswith("text/plain; version=0.0.4"), headers)
    h.expect(re.search(r'^stickyd_group_failing_open\{group="web"\} 0$', text, re.M), text)
    code, _, body = h.admin_request(metrics, "GET", "/status")
    h.expect_eq(code, 200, "GET /status")
    h.expect_eq(
        sorted(t["id"] for t in json.loads(body)["groups"][0]["targets"]),
        sorted(b.name for b in backends),
        "/status targets",
    )
    h.expect_eq(h.admin_request(metrics, "GET", "/ready")[:1], (200,), "GET /ready")
    h.expect_eq(h.admin_request(metrics, "HEAD", "/metrics")[:1], (200,), "HEAD /metrics")

    victim = backends[0].name
    for method, target in [
        ("POST", f"/targets/{victim}/drain"),
        ("POST", f"/targets/{victim}/enable"),
        ("GET", f"/targets/{victim}/drain"),
        ("PUT", f"/targets/{victim}/drain?group=web"),
        ("GET", "/ring"),
        ("GET", f"/lookup?ip={SOURCES[0]}"),
    ]:
        path_only = target.split("?")[0]
        h.expect_eq(
            json_error(metrics, method, target, 403),
            f"{method} {path_only} is not served on the metrics address, which is "
            f"read-only {READ_ONLY}",
            f"{method} {target}",
        )
    for method in ("POST", "DELETE"):
        h.expect_eq(
            json_error(metrics, method, "/metrics", 405),
            f"/metrics takes GET only, not {method}",
            f"{method} /metrics",
        )
    h.expect_eq(
        json_error(metrics, "GET", "/nope", 404),
        "no such endpoint: GET /nope (the metrics address serves GET /metrics, GET "
        "/status, GET /ready)",
        "GET /nope",
    )

    h.expect_eq(
        deregistration(stickyd.admin_socket, victim),
        "none",
        "the target after drains through the metrics address",
    )
    h.expect_eq(h.mapping(lb, SOURCES), before, "mapping after drains through the metrics address")
    h.expect("is draining" not in stickyd.process.log(), "a drain reached the control thread")
    # The unix socket still drains.
    code, _, body = h.admin_request(stickyd.admin_socket, "POST", f"/targets/{victim}/drain")
    h.expect_eq(code, 200, f"drain over the admin socket: {body}")
    h.expect_eq(deregistration(stickyd.admin_socket, victim), "drained", "after a real drain")

    # The address applies on restart only.
    moved = h.free_port()
    h.write_file("metrics.toml", config.replace(f"127.0.0.1:{port}", f"127.0.0.1:{moved}"))
    stickyd.process.signal(1)  # SIGHUP
    line = (
        f"global.metrics_address changed from 127.0.0.1:{port} to 127.0.0.1:{moved}: "
        "applies on restart only; keeping the running value"
    )
    h.wait_for(
        "the restart-only warning", lambda: line in stickyd.process.log(), process=stickyd.process
    )
    h.expect_eq(
        h.admin_request(metrics, "GET", "/ready")[:1], (200,), "the old address after reload"
    )


def test_quick_mode_warns_once_for_an_admin_address_off_loopback():
    backends = h.start_backends(2)
    lb = h.lb_addr()
    admin_port = h.free_port("0.0.0.0")
    metrics_port = h.free_port()
    stickyd = h.start_stickyd(
        args=[
            "--listen",
            h.fmt_addr(lb),
            "--target",
            backends[0].address,
            "--target",
            backends[1].address,
            "--admin-address",
            f"0.0.0.0:{admin_port}",
            "--metrics-address",
            f"127.0.0.1:{metrics_port}",
        ],
        addr=lb,
    )
    h.wait_for(
        "the metrics endpoint",
        lambda: "metrics endpoint" in stickyd.process.log(),
        process=stickyd.process,
    )
    warning = "warn  " + EXPOSED_WARNING.format(f"0.0.0.0:{admin_port}")
    lines = [ln for ln in stickyd.process.log().splitlines() if "not on loopback" in ln]
    h.expect(
        len(lines) == 1 and lines[0].endswith(warning),
        f"one warning line ending {warning!r}, got {lines}",
    )

    # Traffic stays on 127/8: the admin address is bound to every address, asked here.
    victim = backends[1].address  # quick mode's target ids are the addresses
    h.expect_eq(
        json_error(("127.0.0.1", metrics_port), "POST", f"/targets/{victim}/drain", 403),
        f"POST /targets/{victim}/drain is not served on the metrics address, which is "
        f"read-only {READ_ONLY}",
        "drain via --metrics-address",
    )
    code, _, body = h.admin_request(("127.0.0.1", admin_port), "POST", f"/targets/{victim}/drain")
    h.expect_eq(code, 200, f"drain via --admin-address: {body}")
    h.expect_eq(deregistration(stickyd.admin_socket, victim), "drained", "drained via admin")

    # On loopback: no warning.
    lb2 = h.lb_addr()
    quiet = h.start_stickyd(
        args=[
            "--listen",
            h.fmt_addr(lb2),
            "--target",
            backends[0].address,
            "--admin-address",
            f"127.0.0.1:{h.free_port()}",
        ],
        addr=lb2,
    )
    h.wait_for(
        "the admin address",
        lambda: "admin endpoint on http://" in quiet.process.log(),
        process=quiet.process,
    )
    h.expect("not on loopback" not in quiet.process.log(), quiet.describe())


def test_check_config_warns_and_bad_or_clashing_addresses_are_refused():
    config = h.config_text(
        [{"bind": "127.0.0.1:8000", "target_group": "web"}],
        [{"name": "web", "targets": [{"address": "127.0.0.1:9001"}]}],
        {"admin_address": "0.0.0.0:9090"},
    )
    path = h.write_file("exposed.toml", config)
    result = h.run([h.STICKYD_BIN, "--check-config", path])
    h.expect_eq(
        (result.returncode, result.stderr),
        (0, f"{path}: warning: " + EXPOSED_WARNING.format("0.0.0.0:9090") + "\n"),
        "--check-config with admin_address on 0.0.0.0",
    )

    def check(global_, listener="127.0.0.1:8000"):
        text = h.config_text(
            [{"bind": listener, "target_group": "web"}],
            [{"name": "web", "targets": [{"address": "127.0.0.1:9001"}]}],
            global_,
        )
        path = h.write_file("bad.toml", text)
        line = next(n for n, l in enumerate(text.splitlines(), 1) if "metrics_address" in l)
        result = h.run([h.STICKYD_BIN, "--check-config", path])
        h.expect_eq(result.returncode, 1, f"--check-config exit status: {result.stderr}")
        return result.stderr.replace(path, "FILE"), line

    err, line = check({"admin_address": "127.0.0.1:9090", "metrics_address": "127.0.0.1:9090"})
    h.expect_eq(
        err,
        f"FILE:{line}:19: global.metrics_address: 127.0.0.1:9090 clashes with "
        "admin_address 127.0.0.1:9090; give it a port of its own\n",
        "same as admin",
    )
    err, line = check({"metrics_address": "127.0.0.1:8000"})
    h.expect(
        re.fullmatch(
            rf"FILE:{line}:19: global\.metrics_address: 127\.0\.0\.1:8000 clashes "
            r"with listener\[0\]\.bind 127\.0\.0\.1:8000 at line \d+; give it a "
            r"port of its own\n",
            err,
        ),
        f"same as a listener: {err!r}",
    )
    err, line = check({"metrics_address": "localhost:9100"})
    h.expect(err.startswith(f"FILE:{line}:19: global.metrics_address: "), err)

    lb = h.lb_addr()
    quick = [h.STICKYD_BIN, "--listen", h.fmt_addr(lb), "--target", "127.0.0.1:9001"]
    for extra, wanted in [
        (
            ["--metrics-address", "nope"],
            "stickyd: --metrics-address: 'nope' is not an address; expected ip:port such as "
            "127.0.0.1:9100\n",
        ),
        (
            ["--metrics-address", "127.0.0.1:9100", "--admin-address", "127.0.0.1:9100"],
            "stickyd: --metrics-address: 127.0.0.1:9100 clashes with admin_address "
            "127.0.0.1:9100; give it a port of its own\n",
        ),
        (
            ["--metrics-address", h.fmt_addr(lb)],
            f"stickyd: --metrics-address: {h.fmt_addr(lb)} clashes with listener[0].bind "
            f"{h.fmt_addr(lb)}; give it a port of its own\n",
        ),
    ]:
        result = h.run(quick + extra)
        h.expect_eq((result.returncode, result.stderr), (2, wanted), " ".join(extra))


if __name__ == "__main__":
    h.main()
