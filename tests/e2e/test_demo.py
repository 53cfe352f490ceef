#!/usr/bin/env python3
"""The README's first command and the setup script it runs: `scripts/demo` brings up
three backends and stickyd (here on free ports, chosen with its options and
environment variables, so the test never depends on 8000 and 9001-9003), shows one
source IP sticking to one backend, serves curl-like clients, and leaves nothing
behind on Ctrl-C, not even its private working directory; and `scripts/setup`
prints nothing when everything is installed."""
import os
import re
import signal
import socket
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def port_taken(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def session_members(sid):
    """{pid: command} of the live processes in session sid (zombies do not count)."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] != "Z":
            found[int(name)] = command
    return found


def test_setup_is_quiet_when_nothing_is_missing():
    # As in CI: no terminal (a session of its own) and stdin from /dev/null.
    r = h.run([os.path.join(h.SOURCE_ROOT, "scripts", "setup")], timeout=300)
    h.expect_eq(r.returncode, 0, "scripts/setup exit status")
    h.expect_eq((r.stdout, r.stderr), ("", ""), "what scripts/setup printed")


def start_demo(ports, by_environment):
    """scripts/demo on ports [stickyd, backend, backend, backend]."""
    argv = [os.path.join(h.SOURCE_ROOT, "scripts", "demo")]
    backends = ",".join(str(p) for p in ports[1:])
    saved = {k: os.environ.get(k) for k in ("STICKYD_DEMO_PORT", "STICKYD_DEMO_BACKEND_PORTS")}
    if by_environment:
        os.environ.update(STICKYD_DEMO_PORT=str(ports[0]), STICKYD_DEMO_BACKEND_PORTS=backends)
    else:
        argv += ["--port", str(ports[0]), "--backend-ports", backends]
    try:
        return h.Process(argv, "demo")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_demo_runs_sticks_and_stops_cleanly():
    demo_runs_sticks_and_stops_cleanly(by_environment=False)


def test_demo_ports_from_the_environment():
    demo_runs_sticks_and_stops_cleanly(by_environment=True)


def demo_runs_sticks_and_stops_cleanly(by_environment):
    ports = [h.free_port() for _ in range(4)]
    demo = start_demo(ports, by_environment)

    @h.on_cleanup
    def kill_leftovers():  # the harness only kills the group while the script runs
        for pid in session_members(demo.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    deadline = time.monotonic() + 240  # scripts/build may have to build first
    while "Press Ctrl-C to stop." not in demo.log():
        h.expect(demo.alive(), f"scripts/demo exited early\n{demo.describe()}")
        h.expect(time.monotonic() < deadline, f"scripts/demo did not come up\n{demo.describe()}")
        time.sleep(0.2)
    # stickyd's own log lines may land in the middle of the demo's output line.
    shown = demo.log().split("Right now: ", 1)[1]
    answers = re.findall(r"127\.0\.0\.2 -> (\S+)", shown)[:3]
    h.expect(
        len(answers) == 3 and len(set(answers)) == 1,
        f"the demo's own stickiness line is not one backend three times: {shown!r}",
    )

    h.expect(
        f"stickyd is running on 127.0.0.1:{ports[0]} in front of backend-1..3 "
        f"(127.0.0.1:{ports[1]}, {ports[2]}, {ports[3]})" in demo.log(),
        f"the demo does not announce the ports it was given\n{demo.describe()}",
    )
    admin = re.search(r"stickyctl status --admin (\S+)", demo.log()).group(1)
    workdir = os.path.dirname(admin)
    h.expect(
        os.path.basename(workdir).startswith("stickyd-demo.") and os.path.isdir(workdir),
        f"the admin socket {admin} is not in a private directory of this run",
    )
    status = h.stickyctl("status", "--admin", admin, ok=False)
    h.expect_eq(status.returncode, 0, f"stickyctl status on the demo's socket ({status.stderr})")

    lb = ("127.0.0.1", ports[0])
    # The README's command, three times.
    curl = [
        "curl",
        "-s",
        "--max-time",
        "5",
        "--interface",
        "127.0.0.2",
        f"http://127.0.0.1:{ports[0]}/hostname",
    ]
    mine = [h.run(curl).stdout for _ in range(3)]
    # The body ends with a newline, so a shell prompt after curl starts on its own line.
    h.expect_eq(mine, [answers[0] + "\n"] * 3, "curl --interface 127.0.0.2 through the demo")
    spread = {h.http_get(lb, src_ip=f"127.0.0.{i}")[1] for i in range(2, 21)}
    h.expect(len(spread) >= 2, f"19 source IPs all reached one backend: {spread}")

    # Ctrl-C in a terminal signals the whole foreground process group, not the script
    # alone. stickyd must still see one signal: the script's SIGTERM.
    os.killpg(demo.pid, signal.SIGINT)
    h.expect(demo.wait(15) is not None, f"scripts/demo did not stop on SIGINT\n{demo.describe()}")
    stops = re.findall(r"(SIG\w+) received|second signal", demo.log())
    h.expect_eq(stops, ["SIGTERM"], f"the stop signals stickyd logged\n{demo.describe()}")
    # Everything it started (backends, stickyd) is in its session: nothing may outlive it.
    deadline = time.monotonic() + 10
    while session_members(demo.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = session_members(demo.pid)
    h.expect(not left, f"processes of the demo still running after it stopped: {left}")
    h.wait_for(
        "the demo's ports to be free", lambda: not any(port_taken(p) for p in ports), timeout=10
    )
    h.expect(not os.path.exists(workdir), f"the demo left {workdir} behind")


def demo_refuses(ports, squatter_port, expected):
    """scripts/demo with squatter_port held by another program must exit 1 naming the
    problem, never announce that it runs, and leave nothing behind."""
    squatter = h.Backend("squatter", f"127.0.0.1:{squatter_port}")
    demo = start_demo(ports, by_environment=False)
    code = demo.wait(240)  # scripts/build may have to build first
    h.expect_eq(code, 1, f"scripts/demo exit status\n{demo.describe()}")
    h.expect(expected in demo.log(), f"no '{expected}' in\n{demo.describe()}")
    h.expect("stickyd is running" not in demo.log(), f"the demo claimed to run\n{demo.describe()}")
    h.wait_for("the demo's processes to end", lambda: not session_members(demo.pid), timeout=10)
    h.expect(squatter.process.alive(), "the demo stopped a program it did not start")


def test_demo_fails_when_a_backend_port_is_taken():
    ports = [h.free_port() for _ in range(4)]
    demo_refuses(ports, ports[2], f"backend-2 exited (is 127.0.0.1:{ports[2]} in use?)")


def test_demo_fails_when_its_port_is_answered_by_another_program():
    # The squatter answers GET /hostname on the demo's port, as an earlier demo would.
    ports = [h.free_port() for _ in range(4)]
    demo_refuses(ports, ports[0], "stickyd exited; see its log above")


if __name__ == "__main__":
    h.main()
