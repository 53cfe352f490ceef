#!/usr/bin/env python3
"""A target group without targets: a static group that lists none (which
--check-config accepts, with a warning) or a dns group whose name resolves to nothing
(a Kubernetes headless service without ready pods). The admin endpoint answers /ring
and /lookup for it with 503 "group X has no targets" and keeps running; offline
stickyctl says so in one line and exits 1; clients of its listener are closed and
counted, with one warning in the log for the group, not one per client."""
import os
import re
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import test_dns as dns  # noqa: E402

CLIENTS = 5


def expect_one_line_error(result, message, what):
    h.expect(
        result.returncode == 1,
        f"{what}: exit {result.returncode} (a negative one is a crash): {result.stderr}",
    )
    h.expect_eq(result.stderr, f"stickyctl: {message}\n", f"{what}: stderr")


def expect_no_targets_answers(sock, group):
    """/ring and /lookup answer 503 for the group, the CLI says so; /status works."""
    wanted = f"group {group} has no targets"
    for target in (f"/ring?group={group}", f"/lookup?group={group}&ip=10.0.0.1"):
        code, body = h.admin_document(sock, target)
        h.expect_eq((code, body), (503, {"error": wanted}), f"GET {target}")
    expect_one_line_error(
        h.stickyctl("ring", "--admin", sock, "--group", group, ok=False), wanted, "stickyctl ring"
    )
    expect_one_line_error(
        h.stickyctl("lookup", "--admin", sock, "--group", group, "10.0.0.1", ok=False),
        wanted,
        "stickyctl lookup",
    )
    code, status = h.admin_document(sock, "/status")
    h.expect_eq(code, 200, "GET /status")
    return status


def expect_clients_closed_and_counted(lb, sock, group, process, probes=1):
    """Each caller's h.wait_accepting(lb) made `probes` connections (it stops at the first one
    accepted), and the daemon closes and counts those too, maybe only after this starts: so the
    count must reach exactly probes + CLIENTS, not CLIENTS more than whatever it was first read as.
    """

    def counted():
        _, status = h.admin_document(sock, "/status")
        return sum(
            listener["no_target"]
            for listener in status["listeners"]
            if listener["target_group"] == group
        )

    for i in range(CLIENTS):
        client = h.connect(lb, f"127.0.0.{10 + i}")
        h.expect(h.wait_closed(client) in ("eof", "reset"), "client closed")
        client.close()
    total = probes + CLIENTS
    h.wait_for(
        f"{total} no-target closes counted ({probes} readiness probe and {CLIENTS} clients)",
        lambda: counted() == total,
        process=process,
    )
    text = h.admin_request(sock, "GET", "/metrics")[2]
    h.expect(
        re.search(
            r'^stickyd_listener_no_target_closes_total\{listener="[^"]*",'
            rf'target_group="{group}"\}} {total}$',
            text,
            re.M,
        ),
        "stickyd_listener_no_target_closes_total in /metrics",
    )
    warnings = [
        ln
        for ln in process.log().splitlines()
        if f"target group '{group}' has no targets" in ln and "clients of its" in ln
    ]
    h.expect_eq(len(warnings), 1, f"warnings about the empty group ({warnings})")


def static_config(lb_web, lb_empty, backend, extra_groups=()):
    return h.config_text(
        [
            {"bind": h.fmt_addr(lb_web), "target_group": "web"},
            {"bind": h.fmt_addr(lb_empty), "target_group": "empty"},
        ],
        [
            {"name": "web", "targets": [{"id": backend.name, "address": backend.address}]},
            {"name": "empty"},
        ]
        + list(extra_groups),
    )


def test_check_config_warns_about_a_group_without_targets_and_an_unused_one():
    backend = h.start_backend("backend-1")
    config = static_config(
        h.lb_addr(),
        h.lb_addr(),
        backend,
        [{"name": "spare", "targets": [{"address": "127.0.0.1:9"}]}],
    )
    path = h.write_file("warn.toml", config)
    result = h.run([h.STICKYD_BIN, "--check-config", path])
    h.expect_eq(result.returncode, 0, f"--check-config exit ({result.stderr})")
    h.expect("configuration OK" in result.stdout, result.stdout)
    h.expect_eq(
        result.stderr.splitlines(),
        [
            f"{path}: warning: target group 'empty' has no targets (none listed and no dns): its "
            "listeners will close every client",
            f"{path}: warning: target group 'spare' is not used by any listener",
        ],
        "--check-config warnings",
    )


def test_daemon_answers_503_for_an_empty_static_group_and_closes_its_clients():
    backend = h.start_backend("backend-1")
    lb_web, lb_empty = h.lb_addr(), h.lb_addr()
    stickyd = h.start_stickyd(static_config(lb_web, lb_empty, backend), addr=lb_web)
    h.wait_accepting(lb_empty, stickyd.process)
    expect_no_targets_answers(stickyd.admin_socket, "empty")
    h.expect(
        "target group 'empty' has no targets (none listed" in stickyd.process.log(),
        "the config warning at start",
    )
    expect_clients_closed_and_counted(lb_empty, stickyd.admin_socket, "empty", stickyd.process)
    h.expect(stickyd.process.alive(), stickyd.describe())
    h.expect_eq(h.whoami("127.0.0.3", lb_web), "backend-1", "the other group still serves")

    # A reload that adds a group no listener uses says so.
    config_path = stickyd.process.argv[stickyd.process.argv.index("--config") + 1]
    with open(config_path, "w", encoding="utf-8") as f:
        f.write(
            static_config(
                lb_web,
                lb_empty,
                backend,
                [{"name": "spare", "targets": [{"address": "127.0.0.1:9"}]}],
            )
        )
    stickyd.process.signal(1)  # SIGHUP
    h.wait_for(
        "the reload's warning",
        lambda: "target group 'spare' is not used by any listener" in stickyd.process.log(),
        process=stickyd.process,
    )


def test_offline_stickyctl_on_an_empty_group_is_one_line_and_exit_1():
    path = h.write_file(
        "offline.toml",
        h.config_text(
            [
                {"bind": "127.0.0.1:8000", "target_group": "empty"},
                {"bind": "127.0.0.1:8001", "target_group": "disc"},
            ],
            [{"name": "empty"}, {"name": "disc", "dns": "app.stickyd.test:80"}],
        ),
    )
    static = f"group empty has no targets in {path}"
    for args in (["lookup", "10.0.0.1"], ["simulate", "--add", "n=127.0.0.1:9009"], ["ring"]):
        expect_one_line_error(
            h.stickyctl(*args, "--config", path, "--group", "empty", ok=False),
            static,
            f"stickyctl {args[0]} --config",
        )
    expect_one_line_error(
        h.stickyctl("ring", "--config", path, "--group", "disc", ok=False),
        f"group disc has no targets in {path} (they come from DNS app.stickyd.test:80; ask the "
        "daemon with --admin)",
        "stickyctl ring --config of a dns group",
    )


def test_dns_group_that_resolves_to_nothing():
    dns.need_namespaces()
    hosts = dns.HostsFile([])
    backend_port = h.free_port("127.0.0.2")
    lb = h.lb_addr()
    group = {
        "name": "web",
        "dns": f"{dns.NAME}:{backend_port}",
        "dns_refresh": "200ms",
        "health_check": {"interval": "300ms", "timeout": "200ms"},
    }
    config = h.config_text([{"bind": h.fmt_addr(lb), "target_group": "web"}], [group])
    path = h.write_file("dns.toml", config)
    dns.dns_supported(path)
    sock = re.search(r'^admin_socket = "(.*)"$', config, re.M).group(1)
    process = dns.in_namespace([h.STICKYD_BIN, "--config", path], hosts, "stickyd")
    h.wait_accepting(lb, process)
    # The listeners accept (into their backlog) before the admin endpoint is up.
    h.wait_for(
        "the admin endpoint",
        lambda: f"admin endpoint on unix:{sock}" in process.log(),
        process=process,
    )
    expect_no_targets_answers(sock, "web")
    expect_clients_closed_and_counted(lb, sock, "web", process)
    h.expect(process.alive(), process.describe())

    # A pod becomes ready: the group fills and is served.
    h.Backend("pod-a", f"127.0.0.2:{backend_port}")
    hosts.set(["127.0.0.2"])
    h.wait_for(
        "the group to have its target",
        lambda: h.admin_document(sock, "/ring")[0] == 200,
        process=process,
    )
    h.wait_for(
        "a client served by the pod", lambda: h.whoami("127.0.0.30", lb) == "pod-a", process=process
    )


if __name__ == "__main__":
    h.main()
