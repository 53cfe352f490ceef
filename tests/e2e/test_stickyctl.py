#!/usr/bin/env python3
"""stickyctl offline: given the config a daemon runs with, `lookup` names the target
real connections land on, `ring` shares sum to 1, `simulate --remove` moves exactly
the removed target's share and nothing between the others, and mistakes are one
clear line with a non-zero exit."""
import os
import re
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

SOURCES = h.source_ips(60)

# Addresses need not be reachable for the offline commands.
OFFLINE_TARGETS = [
    {"id": f"t{i}", "address": f"127.0.0.1:{19000 + i}", "weight": w}
    for i, w in enumerate([1, 2, 1, 3, 1], start=1)
]


def offline_config(algorithm="ring", groups=None):
    groups = groups or [{"name": "web", "algorithm": algorithm, "targets": OFFLINE_TARGETS}]
    return h.write_file(
        "offline.toml",
        h.config_text([{"bind": "127.0.0.1:18000", "target_group": groups[0]["name"]}], groups),
    )


def test_lookup_agrees_with_real_connections():
    for algorithm in ("ring", "maglev"):
        backends = h.start_backends(4, prefix=f"{algorithm}-")
        lb = h.lb_addr()
        config = h.simple_config(h.fmt_addr(lb), backends, group={"algorithm": algorithm})
        stickyd = h.start_stickyd(config, addr=lb)
        path = h.write_file(f"{algorithm}.toml", config)

        answer = h.stickyctl_json("lookup", "--config", path, *SOURCES)
        h.expect_eq(answer["group"], "web", "group")
        predicted = {entry["ip"]: entry["chosen"] for entry in answer["lookups"]}
        h.expect_eq(sorted(predicted), sorted(SOURCES), "IPs answered")
        for entry in answer["lookups"]:
            h.expect_eq(entry["owner"], entry["chosen"], f"owner of {entry['ip']} (all healthy)")
        actual = h.mapping(stickyd.addr, SOURCES)
        wrong = {ip: (predicted[ip], actual[ip]) for ip in SOURCES if predicted[ip] != actual[ip]}
        h.expect(
            not wrong,
            f"{algorithm}: stickyctl lookup (predicted, actual) differs for "
            f"{len(wrong)} of {len(SOURCES)} sources: {wrong}",
        )
        h.expect(len(set(actual.values())) > 1, f"{algorithm}: every source went to one target")
        for b in backends:
            b.stop()


def test_lookup_table_names_ip_owner_and_address():
    path = offline_config()
    out = h.stickyctl("lookup", "--config", path, "192.0.2.1", "2001:db8::1").stdout
    lines = out.splitlines()
    h.expect(lines[0].split() == ["IP", "KEY", "OWNER", "CHOSEN", "ADDRESS"], f"header: {out}")
    h.expect(lines[1].startswith("192.0.2.1 ") and "192.0.2.1/32" in lines[1], out)
    h.expect(lines[2].startswith("2001:db8::1 "), out)


def test_ring_shares_sum_to_one():
    for algorithm in ("ring", "maglev"):
        path = offline_config(algorithm)
        ring = h.stickyctl_json("ring", "--config", path)
        shares = [t["share"] for t in ring["targets"]]
        h.expect_eq(
            sorted(t["id"] for t in ring["targets"]), [t["id"] for t in OFFLINE_TARGETS], "targets"
        )
        h.expect(abs(sum(shares) - 1) <= 1e-6, f"{algorithm}: shares sum to {sum(shares)}")
        h.expect(
            abs(ring["min"] - min(shares)) < 1e-12 and abs(ring["max"] - max(shares)) < 1e-12,
            f"{algorithm}: min/max {ring}",
        )
        # Weight 3 of 8 in total: within a few percent of 3/8.
        t4 = next(t for t in ring["targets"] if t["id"] == "t4")
        h.expect(abs(t4["share"] - 3 / 8) < 0.03, f"{algorithm}: t4 share {t4['share']}")

        text = h.stickyctl("ring", "--config", path).stdout
        for t in OFFLINE_TARGETS:
            h.expect(
                any(line.startswith(t["id"] + " ") and "█" in line for line in text.splitlines()),
                f"no bar for {t['id']}:\n{text}",
            )
        h.expect("max/mean" in text, f"no summary line:\n{text}")


def test_simulate_remove_moves_exactly_that_share():
    path = offline_config()
    shares = {t["id"]: t["share"] for t in h.stickyctl_json("ring", "--config", path)["targets"]}
    for removed in ("t2", "t4"):
        sim = h.stickyctl_json("simulate", "--config", path, "--remove", removed)
        h.expect(
            abs(sim["moved"] - shares[removed]) < 1e-9,
            f"remove {removed}: moved {sim['moved']}, its share is {shares[removed]}",
        )
        for move in sim["moves"]:
            h.expect_eq(move["from"], removed, f"a move when removing {removed}: {move}")
        h.expect(abs(sum(m["share"] for m in sim["moves"]) - sim["moved"]) < 1e-12, "move sum")
        h.expect_eq(sim["unaffected_moves"], "OK", "check")
        weight = next(t["weight"] for t in OFFLINE_TARGETS if t["id"] == removed)
        h.expect(abs(sim["ideal"] - weight / 8) < 1e-12, f"ideal {sim['ideal']}")

    text = h.stickyctl("simulate", "--config", path, "--remove", "t2").stdout
    h.expect("no key moves between two unaffected targets: OK" in text, text)
    h.expect("ideal 25.000%" in text, text)


def test_simulate_add_and_down():
    path = offline_config()
    sim = h.stickyctl_json("simulate", "--config", path, "--add", "t6=127.0.0.1:19006,weight=2")
    h.expect(all(m["to"] == "t6" for m in sim["moves"]), f"moves: {sim['moves']}")
    h.expect(abs(sim["ideal"] - 2 / 10) < 1e-12, f"ideal {sim['ideal']}")
    h.expect_eq(sim["unaffected_moves"], "OK", "check after add")

    sim = h.stickyctl_json("simulate", "--config", path, "--down", "t3")
    h.expect(all(m["from"] == "t3" for m in sim["moves"]), f"moves: {sim['moves']}")
    t3 = next(t for t in sim["targets"] if t["id"] == "t3")
    h.expect(abs(sim["moved"] - t3["before"]) < 1e-12 and t3["after"] == 0, f"t3: {t3}")


def one_line_error(args, must_contain):
    result = h.stickyctl(*args, ok=False)
    h.expect(result.returncode != 0, f"stickyctl {' '.join(args)} succeeded: {result.stdout}")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    h.expect(len(lines) == 1, f"{args}: expected one line on stderr, got {result.stderr!r}")
    h.expect(must_contain in lines[0], f"{args}: {lines[0]!r} does not name {must_contain!r}")
    h.expect_eq(result.stdout, "", f"{args}: stdout")


def test_errors_are_one_line():
    path = offline_config()
    one_line_error(["lookup", "--config", path, "127.0.0.1", "10.0.0.300"], '"10.0.0.300"')
    one_line_error(["lookup", "--config", path, "--group", "nope", "127.0.0.1"], '"nope"')
    one_line_error(["ring", "--config", path, "--group", "nope"], '"nope"')
    one_line_error(["simulate", "--config", path, "--remove", "t9"], '"t9"')
    one_line_error(["simulate", "--config", path, "--down", "t9"], '"t9"')
    one_line_error(["simulate", "--config", path, "--add", "t1=127.0.0.1:1"], '"t1"')
    one_line_error(["simulate", "--config", path, "--add", "t7=nowhere"], "nowhere")
    one_line_error(["ring", "--config", path + ".missing"], ".missing")
    heavy = offline_config(
        groups=[
            {
                "name": "web",
                "targets": [
                    {"id": f"h{i}", "address": f"127.0.0.1:{19100 + i}", "weight": 100}
                    for i in range(10)
                ],
            }
        ]
    )
    one_line_error(
        ["simulate", "--config", heavy, "--add", "h10=127.0.0.1:19110,weight=100"],
        "weights add up to 1100",
    )

    two = offline_config(
        groups=[
            {"name": "web", "targets": OFFLINE_TARGETS},
            {"name": "api", "targets": OFFLINE_TARGETS[:2]},
        ]
    )
    one_line_error(["ring", "--config", two], "--group")
    api = h.stickyctl_json("ring", "--config", two, "--group", "api")
    h.expect_eq(len(api["targets"]), 2, "api targets")


def exact_error(args, wanted_line, wanted_status):
    result = h.stickyctl(*args, ok=False)
    what = f"stickyctl {' '.join(args)}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    h.expect_eq(lines, [wanted_line], f"{what}: stderr")
    h.expect_eq(result.returncode, wanted_status, f"{what}: exit status")


def test_a_mistyped_command_or_flag_gets_a_did_you_mean():
    exact_error(["staus"], "stickyctl: unknown command 'staus' (did you mean 'status'?)", 2)
    exact_error(["status", "--jsn"], "stickyctl: unknown option --jsn (did you mean --json?)", 2)
    exact_error(
        ["--jsn", "staus"], "stickyctl: unknown command 'staus' (did you mean 'status'?)", 2
    )
    exact_error(
        ["ring", "--confg", "x.toml"],
        "stickyctl: unknown option --confg (did you mean --config?)",
        2,
    )
    exact_error(["frobnicate"], "stickyctl: unknown command 'frobnicate' (see stickyctl --help)", 2)
    exact_error(
        [],
        "stickyctl: a command is required: ring, lookup, simulate, status, drain or "
        "enable (see stickyctl --help)",
        2,
    )


def test_exit_status_1_for_configuration_or_daemon_2_for_command_line():
    path = offline_config()
    exact_error(
        ["lookup", "--config", path, "10.0.0.300"],
        'stickyctl: lookup: "10.0.0.300" is not an IP address (expected e.g. 192.0.2.1 or '
        "2001:db8::1)",
        2,
    )
    exact_error(
        ["simulate", "--config", path],
        "stickyctl: simulate: nothing to simulate; give " "--remove, --add or --down",
        2,
    )
    h.expect_eq(h.stickyctl("ring", "--bogus", ok=False).returncode, 2, "a bad flag: exit status")
    h.expect_eq(
        h.stickyctl("ring", "--config", path + ".missing", ok=False).returncode,
        1,
        "a missing config file: exit status",
    )
    h.expect_eq(
        h.stickyctl("ring", "--config", path, "--group", "nope", ok=False).returncode,
        1,
        "an unknown group: exit status",
    )
    nowhere = os.path.join(h.temp_dir(), "no-daemon.sock")
    for args in (["status"], ["lookup", "127.0.0.2"]):
        result = h.stickyctl(*args, "--admin", nowhere, ok=False)
        h.expect_eq(result.returncode, 1, f"stickyctl {args[0]} with no daemon: exit status")
        h.expect(nowhere in result.stderr, f"the error does not name {nowhere}: {result.stderr!r}")


def test_ring_max_over_mean_is_against_weight_proportional_shares():
    path = offline_config()
    ring = h.stickyctl_json("ring", "--config", path)
    total = sum(t["weight"] for t in OFFLINE_TARGETS)
    worst = max(t["share"] / (t["weight"] / total) for t in ring["targets"])
    h.expect(
        abs(ring["max_over_mean"] - worst) < 1e-12,
        f"max_over_mean {ring['max_over_mean']}, the largest share/expected is {worst}",
    )
    h.expect(
        ring["max_over_mean"] < 1.1,
        f"weights 1,2,1,3,1 on a ring: {ring['max_over_mean']} (max/mean alone is ~1.9)",
    )
    text = h.stickyctl("ring", "--config", path).stdout
    footer = text.splitlines()[-1]
    h.expect_eq(
        footer,
        f"min {ring['min'] * 100:.3f}%  max {ring['max'] * 100:.3f}%  max/mean "
        f"{ring['max_over_mean']:.4f} (each share against its weight-proportional "
        "one)",
        "the summary line with unequal weights",
    )
    equal = offline_config(
        groups=[{"name": "web", "targets": [dict(t, weight=1) for t in OFFLINE_TARGETS]}]
    )
    footer = h.stickyctl("ring", "--config", equal).stdout.splitlines()[-1]
    h.expect(
        footer.endswith(
            f"max/mean {h.stickyctl_json('ring', '--config', equal)['max_over_mean']:.4f}"
        ),
        f"the summary line with equal weights: {footer!r}",
    )


def test_counts_are_pluralised():
    one = offline_config(groups=[{"name": "web", "targets": OFFLINE_TARGETS[:1]}])
    h.expect_eq(
        h.stickyctl("ring", "--config", one).stdout.splitlines()[0],
        "group web (ring, 4096 points per unit of weight), 1 target",
        "ring heading",
    )
    backend = h.start_backend("only")
    lb = h.lb_addr()
    d = h.start_stickyd(args=["--listen", h.fmt_addr(lb), "--target", backend.address], addr=lb)
    lines = h.stickyctl("status", "--admin", d.admin_socket).stdout.splitlines()
    h.expect(
        re.fullmatch(
            r"stickyd \S+: 0 active connections, \d+ accepted, 0 connect failures, "
            r"0 retries, \d+ B in, \d+ B out",
            lines[0],
        ),
        f"status heading: {lines[0]!r}",
    )
    h.expect("group default (ring), 1 target" in lines, f"status group line: {lines}")


if __name__ == "__main__":
    h.main()
