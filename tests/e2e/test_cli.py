#!/usr/bin/env python3
"""The command line: configuration errors are one line naming FILE:LINE:COL and the
key, bad flags are one clear line, and nothing half-starts."""
import errno
import os
import re
import socket
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

VALID = """\
[global]
threads = 1

[[listener]]
bind = "127.0.0.1:18000"
target_group = "web"

[[target_group]]
name = "web"

[[target_group.target]]
id = "a"
address = "127.0.0.1:19001"
weight = 1

[[target_group.target]]
id = "b"
address = "127.0.0.1:19002"
"""

# (case, line number -> new text, the line the error must name, the key path or None)
BAD_CONFIGS = [
    ("syntax error", {5: 'bind = "127.0.0.1:18000'}, 5, None),
    ("unknown key", {3: "threadz = 3"}, 3, "global.threadz"),
    ("bad listener address", {5: 'bind = "localhost:8000"'}, 5, "listener[0].bind"),
    (
        "target address without port",
        {13: 'address = "127.0.0.1"'},
        13,
        "target_group[0].target[0].address",
    ),
    ("duplicate id", {17: 'id = "a"'}, 17, "target_group[0].target[1].id"),
    ("zero weight", {14: "weight = 0"}, 14, "target_group[0].target[0].weight"),
    ("listener to an unknown group", {6: 'target_group = "nope"'}, 6, "listener[0].target_group"),
]


def bad_config(changes):
    lines = VALID.splitlines()
    for number, text in changes.items():
        lines[number - 1] = text
    return "\n".join(lines) + "\n"


def one_line(stderr, what):
    lines = [line for line in stderr.splitlines() if line.strip()]
    h.expect(len(lines) == 1, f"{what}: expected one line on stderr, got {len(lines)}: {stderr!r}")
    return lines[0]


def check_error_line(line, path, wanted_line, key, what):
    m = re.match(re.escape(path) + r":(\d+):(\d+): (.+)$", line)
    h.expect(m, f"{what}: {line!r} is not FILE:LINE:COL: ...")
    h.expect_eq(int(m.group(1)), wanted_line, f"{what}: line number in {line!r}")
    h.expect(int(m.group(2)) >= 1, f"{what}: column in {line!r}")
    if key is not None:
        h.expect(
            m.group(3).startswith(key + ": ") and len(m.group(3)) > len(key) + 2,
            f"{what}: expected '{key}: <message>' after the position in {line!r}",
        )


def test_check_config_rejects_each_bad_file_with_one_line():
    h.expect_eq(
        h.run([h.STICKYD_BIN, "--check-config", h.write_file("valid.toml", VALID)]).returncode,
        0,
        "--check-config on the valid base file",
    )
    for i, (case, changes, wanted_line, key) in enumerate(BAD_CONFIGS):
        path = h.write_file(f"bad{i}.toml", bad_config(changes))
        r = h.run([h.STICKYD_BIN, "--check-config", path])
        h.expect_eq(r.returncode, 1, f"{case}: exit status of --check-config")
        check_error_line(one_line(r.stderr, case), path, wanted_line, key, case)


def test_config_flag_reports_the_same_error_and_does_not_start():
    for i, (case, changes, wanted_line, key) in enumerate(BAD_CONFIGS):
        path = h.write_file(f"bad{i}.toml", bad_config(changes))
        r = h.run([h.STICKYD_BIN, "--config", path], timeout=10)
        h.expect(r.returncode != 0, f"{case}: stickyd --config exited 0")
        check_error_line(one_line(r.stderr, case), path, wanted_line, key, case)


def test_shipped_configs_are_valid():
    for name in ("stickyd.toml", "demo.toml"):
        path = os.path.join(h.SOURCE_ROOT, "conf", name)
        r = h.run([h.STICKYD_BIN, "--check-config", path])
        h.expect_eq(r.returncode, 0, f"--check-config conf/{name} (stderr: {r.stderr.strip()!r})")


# Files that used to overflow the stack inside the TOML parser (exit 139): 50,000
# levels of each kind of nesting, and where the 33rd level starts.
DEEP_CONFIGS = [
    ("dotted key", "a." * 50_000 + "a = 1\n", 65),
    ("table header", "[" + "a." * 50_000 + "a]\n", 66),
    ("array-of-tables header", "[[" + "a." * 50_000 + "a]]\n", 67),
    ("inline tables", "a = {" * 50_000 + "}" * 50_000 + "\n", 81),
    ("arrays", "a = " + "[" * 50_000 + "]" * 50_000 + "\n", 36),
]


def test_deep_nesting_is_one_line_not_a_crash():
    for i, (case, text, column) in enumerate(DEEP_CONFIGS):
        path = h.write_file(f"deep{i}.toml", text)
        r = h.run([h.STICKYD_BIN, "--check-config", path])
        h.expect_eq(r.returncode, 1, f"{case}: exit status of --check-config")
        h.expect_eq(
            one_line(r.stderr, case),
            f"{path}:1:{column}: nesting deeper than 32",
            f"{case}: the error line",
        )


def test_a_file_over_1_mib_is_refused_with_one_line():
    path = h.write_file("huge.toml", VALID + "#" + "x" * (1 << 20) + "\n")
    r = h.run([h.STICKYD_BIN, "--check-config", path])
    h.expect_eq(r.returncode, 1, "exit status of --check-config")
    h.expect_eq(
        one_line(r.stderr, "huge file"),
        f"{path}: larger than 1 MiB, the limit for a config file",
        "the error line",
    )


def test_missing_config_file():
    path = os.path.join(h.temp_dir(), "does-not-exist.toml")
    r = h.run([h.STICKYD_BIN, "--check-config", path])
    h.expect_eq(r.returncode, 1, "exit status for a missing file")
    h.expect(
        path in one_line(r.stderr, "missing file"), f"the error does not name {path}: {r.stderr!r}"
    )


def test_bad_command_lines_fail_with_one_clear_line():
    port = h.free_port()
    cases = [
        (
            "listen address that is not one",
            ["--listen", "nonsense", "--target", "127.0.0.1:9001"],
            "nonsense",
        ),
        (
            "target without a port",
            ["--listen", f"127.0.0.1:{port}", "--target", "1.2.3.4"],
            "1.2.3.4",
        ),
        ("unknown flag", ["--bogus"], "--bogus"),
        ("nothing to do", [], "--config"),
        ("targets without a listener", ["--target", "127.0.0.1:9001"], "--listen"),
        (
            "a check protocol stickyd does not offer",
            [
                "--listen",
                f"127.0.0.1:{port}",
                "--target",
                "127.0.0.1:9001",
                "--health-check",
                "udp",
            ],
            "--health-check",
        ),
    ]
    for case, args, mention in cases:
        r = h.run([h.STICKYD_BIN] + args, timeout=5)
        h.expect(r.returncode != 0, f"{case}: stickyd {' '.join(args)} exited 0")
        line = one_line(r.stderr, case)
        h.expect(mention in line, f"{case}: the error does not mention {mention!r}: {line!r}")


def stickyd_error(args, wanted_line, wanted_status):
    """stickyd with args fails with exactly wanted_line on stderr and wanted_status."""
    r = h.run([h.STICKYD_BIN] + args, timeout=10)
    what = f"stickyd {' '.join(args)}"
    h.expect_eq(one_line(r.stderr, what), wanted_line, f"{what}: the error")
    h.expect_eq(r.returncode, wanted_status, f"{what}: exit status")


def test_a_mistyped_flag_gets_a_did_you_mean():
    stickyd_error(
        ["--listn", "127.0.0.1:8000", "--target", "127.0.0.1:9001"],
        "stickyd: unknown option --listn (did you mean --listen?)",
        2,
    )
    stickyd_error(
        ["--health-intervall=2s"],
        "stickyd: unknown option --health-intervall (did you mean --health-interval?)",
        2,
    )
    stickyd_error(["--bogus"], "stickyd: unknown option --bogus (see stickyd --help)", 2)
    stickyd_error(
        ["stray", "--listen", "127.0.0.1:8000"],
        "stickyd: unexpected argument 'stray' (see stickyd --help)",
        2,
    )


def test_quick_mode_flags_beside_a_file_are_one_line():
    path = h.write_file("valid.toml", VALID)
    stickyd_error(
        ["--config", path, "--target", "127.0.0.1:9001"],
        "stickyd: --target cannot be used with --config (quick mode flags build their "
        "own configuration)",
        2,
    )
    stickyd_error(
        ["--check-config", path, "--health-interval", "2s"],
        "stickyd: --health-interval cannot be used with --check-config (quick mode "
        "flags build their own configuration)",
        2,
    )
    stickyd_error(
        ["--config", path, "--check-config", path],
        "stickyd: --check-config cannot be used with --config",
        2,
    )


def test_quick_mode_errors_name_the_flag():
    listen = f"127.0.0.1:{h.free_port()}"
    quick = ["--listen", listen, "--target", "127.0.0.1:9001"]
    stickyd_error(
        quick + ["--target", "127.0.0.1:9001"],
        "stickyd: --target #2 127.0.0.1:9001: duplicate address",
        2,
    )
    stickyd_error(
        ["--listen", listen, "--listen", listen, "--target", "127.0.0.1:9001"],
        f"stickyd: --listen #2 {listen}: duplicate address",
        2,
    )
    stickyd_error(
        ["--listen", listen, "--target", "127.0.0.1:9001", "--target", "1.2.3.4"],
        "stickyd: --target #2 1.2.3.4: not an address or HOST:PORT; expected ip:port such as "
        "127.0.0.1:9001 or [::1]:9001, or HOST:PORT such as localhost:9001",
        2,
    )
    stickyd_error(
        ["--listen", listen],
        "stickyd: quick mode needs at least one --target IP:PORT or HOST:PORT",
        2,
    )
    stickyd_error(
        ["--target", "localhost:9001"],
        "stickyd: quick mode needs --listen IP:PORT as well as --target IP:PORT or HOST:PORT",
        2,
    )
    stickyd_error(quick + ["--threads", "abc"], "stickyd: --threads: 'abc' is not a number", 2)
    stickyd_error(
        quick + ["--threads", "300"], "stickyd: --threads: must be from 1 to 256, got 300", 2
    )
    stickyd_error(
        quick + ["--health-interval", "1s", "--health-timeout", "2s"],
        "stickyd: --health-timeout: must be shorter than the interval (1s), got 2s",
        2,
    )


def test_exit_status_1_for_configuration_2_for_command_line():
    stickyd_error(["--bogus"], "stickyd: unknown option --bogus (see stickyd --help)", 2)
    path = h.write_file("bad-exit.toml", bad_config({14: "weight = 0"}))
    r = h.run([h.STICKYD_BIN, "--config", path], timeout=10)
    h.expect_eq(r.returncode, 1, "stickyd --config with a bad file: exit status")
    r = h.run([h.STICKYD_BIN, "--check-config", path], timeout=10)
    h.expect_eq(r.returncode, 1, "stickyd --check-config with a bad file: exit status")


def test_check_config_counts_in_words():
    path = h.write_file("valid.toml", VALID)
    r = h.run([h.STICKYD_BIN, "--check-config", path])
    h.expect_eq(
        r.stdout,
        f"{path}: configuration OK (1 listener, 1 target group, 2 targets)\n",
        "--check-config output",
    )


def test_help_groups_the_flags_and_states_the_exit_status():
    out = h.run([h.STICKYD_BIN, "--help"]).stdout
    h.expect("Excludes" not in out, f"--help still lists exclusions:\n{out}")
    for heading, flag in (
        ("Daemon", "--config"),
        ("Quick mode", "--target"),
        ("Health checks (quick mode)", "--health-interval"),
    ):
        section = re.search(rf"^{re.escape(heading)}:\n((?:[ ]+.*\n|\n)*)", out, re.M)
        h.expect(
            section and flag in section.group(1), f"--help has no {heading!r} with {flag}:\n{out}"
        )
    h.expect(
        "Exit status: 0 done; 1 the configuration or the environment is wrong" in out,
        f"--help does not state the exit status:\n{out}",
    )
    h.expect("2 the command line is wrong" in out, f"--help: exit status 2:\n{out}")


def test_io_uring_refused_by_seccomp_is_one_clear_line():
    tool = os.environ.get("WITHOUT_URING_BIN")
    if not tool:
        h.skip("WITHOUT_URING_BIN is not set (run through meson)")
    port = h.free_port()
    for err, name, cause in ((errno.EPERM, "EPERM", "seccomp"), (errno.ENOSYS, "ENOSYS", "kernel")):
        r = h.run(
            [
                tool,
                str(err),
                h.STICKYD_BIN,
                "--listen",
                f"127.0.0.1:{port}",
                "--target",
                "127.0.0.1:9001",
            ],
            timeout=10,
        )
        h.expect_eq(r.returncode, 1, f"exit status with io_uring_setup failing with {name}")
        line = one_line(r.stderr, f"io_uring refused with {name}")
        for word in ("io_uring", name, cause):
            h.expect(word in line, f"{name}: {line!r} does not name {word!r}")


def listening_sockets(pid, port):
    """How many of pid's sockets listen on TCP port (any IPv4 address)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        if m:
            inodes.add(m.group(1))
    count = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.split(":")[1], 16) == port and inode in inodes:
                count += 1
    return count


def test_one_reuseport_listener_per_worker():
    backend = h.start_backend("b1")
    for threads in (1, 3):
        lb = h.lb_addr()
        d = h.start_stickyd(
            args=[
                "--listen",
                h.fmt_addr(lb),
                "--target",
                backend.address,
                "--threads",
                str(threads),
            ],
            addr=lb,
        )
        h.expect_eq(
            listening_sockets(d.process.pid, lb[1]),
            threads,
            f"listening sockets on port {lb[1]} with --threads {threads}",
        )
        d.process.kill()


def test_version_and_help():
    r = h.run([h.STICKYD_BIN, "--version"])
    h.expect_eq(r.returncode, 0, "--version exit status")
    h.expect(re.search(r"stickyd.*\d+\.\d+\.\d+", r.stdout), f"--version printed {r.stdout!r}")
    r = h.run([h.STICKYD_BIN, "--help"])
    h.expect_eq(r.returncode, 0, "--help exit status")
    for flag in ("--config", "--check-config", "--listen", "--target"):
        h.expect(flag in r.stdout, f"--help does not mention {flag}")
    checks = re.search(r"--health-check TEXT.*", r.stdout)
    h.expect(
        checks and "https" in checks.group(0),
        f"--help does not offer https checks: {checks and checks.group(0)!r}",
    )


def option_help(text, flag):
    """The --help entry of one option: its line and the description under it."""
    m = re.search(rf"^\s*{re.escape(flag)} (.*)\n((?:\s{{10,}}.*\n)*)", text, re.M)
    h.expect(m, f"--help has no entry for {flag}")
    return " ".join((m.group(1) + " " + m.group(2)).split())


def check_timeouts_logged(stickyd, count=1):
    """The timeouts (ms) of stickyd's first failed HTTP checks, from its debug log."""
    pattern = re.compile(r"health check of \S+: failed \(timed out after (\d+) ms")
    h.wait_for(
        "a timed-out check in the log",
        lambda: len(pattern.findall(stickyd.process.log())) >= count,
        timeout=25,
        process=stickyd.process,
    )
    return [int(ms) for ms in pattern.findall(stickyd.process.log())]


def test_help_states_the_default_check_timeout_the_daemon_uses():
    # Regression: --help said "half the interval when that is shorter", which gives
    # 4s at an 8s interval over http; the rule is half the interval only when the
    # interval is not longer than the protocol's default (6s http, 10s tcp).
    r = h.run([h.STICKYD_BIN, "--help"])
    h.expect(
        "default 1s" in option_help(r.stdout, "--health-interval"),
        f"--health-interval help: {option_help(r.stdout, '--health-interval')!r}",
    )
    timeout_help = option_help(r.stdout, "--health-timeout")
    for words in (
        "10s tcp",
        "6s http",
        "half the interval when the interval is not longer",
        "500ms at the default 1s",
    ):
        h.expect(words in timeout_help, f"--health-timeout help lacks {words!r}: {timeout_help!r}")
    # Targets that accept (the kernel's backlog) but never answer: every HTTP check
    # times out, after exactly the timeout stickyd chose.
    mute = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    h.on_cleanup(mute.close)
    mute.bind(("127.0.0.1", 0))
    mute.listen(64)
    target = h.fmt_addr(mute.getsockname())
    daemons = {}
    for interval, wanted in ((None, 500), ("8s", 6000)):
        lb = h.lb_addr()
        args = [
            "--listen",
            h.fmt_addr(lb),
            "--target",
            target,
            "--health-check",
            "http",
            "--log-level",
            "debug",
        ]
        if interval:
            args += ["--health-interval", interval]
        daemons[interval] = (h.start_stickyd(args=args, addr=lb), wanted)
    for interval, (stickyd, wanted) in daemons.items():
        timeouts = check_timeouts_logged(stickyd)
        h.expect_eq(
            set(timeouts),
            {wanted},
            f"check timeouts (ms) at --health-interval {interval or 'default'}",
        )


def test_port_already_in_use():
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    h.on_cleanup(holder.close)
    holder.bind(("127.0.0.1", 0))
    holder.listen(8)
    port = holder.getsockname()[1]
    r = h.run(
        [h.STICKYD_BIN, "--listen", f"127.0.0.1:{port}", "--target", "127.0.0.1:9"]
        + h.admin_socket_args(),
        timeout=10,
    )
    h.expect(r.returncode != 0, f"stickyd exited 0 although 127.0.0.1:{port} is taken")
    h.expect(
        re.search(
            rf"127\.0\.0\.1:{port}\b.*in use|in use.*127\.0\.0\.1:{port}\b", r.stderr, re.IGNORECASE
        ),
        f"no clear 'address in use' error naming 127.0.0.1:{port}: {r.stderr.strip()!r}",
    )


def test_second_instance_on_the_same_port_is_refused():
    # Regression: with SO_REUSEPORT a second stickyd used to bind the same port
    # silently and take half the clients.
    port = h.free_port()
    first = h.start_stickyd(
        args=["--listen", f"127.0.0.1:{port}", "--target", "127.0.0.1:9"], addr=("127.0.0.1", port)
    )
    r = h.run(
        [h.STICKYD_BIN, "--listen", f"127.0.0.1:{port}", "--target", "127.0.0.1:9"]
        + h.admin_socket_args(),
        timeout=10,
    )
    h.expect(r.returncode != 0, "a second stickyd started on a port the first one serves")
    h.expect(
        re.search(rf"127\.0\.0\.1:{port}\b.*in use", r.stderr, re.IGNORECASE),
        f"no clear 'address in use' error: {r.stderr.strip()!r}",
    )
    h.expect(first.process.alive(), "the first stickyd died")


if __name__ == "__main__":
    h.main()
