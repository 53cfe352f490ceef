#!/usr/bin/env python3
"""The README's first command and the setup script it runs: `scripts/demo` brings up
three backends and stickyd on 127.0.0.1:8000, shows one source IP sticking to one
backend, serves curl-like clients, and leaves nothing behind on Ctrl-C; and
`scripts/setup` prints nothing when everything is installed."""
import os
import re
import signal
import socket
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

DEMO_PORTS = [8000, 9001, 9002, 9003]


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
        fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] != "Z":
            found[int(name)] = command
    return found


def test_setup_is_quiet_when_nothing_is_missing():
    # As in CI: no terminal (a session of its own) and stdin from /dev/null.
    r = h.run([os.path.join(h.SOURCE_ROOT, "scripts", "setup")], timeout=300)
    h.expect_eq(r.returncode, 0, "scripts/setup exit status")
    h.expect_eq((r.stdout, r.stderr), ("", ""), "what scripts/setup printed")


def test_demo_runs_sticks_and_stops_cleanly():
    taken = [p for p in DEMO_PORTS if port_taken(p)]
    if taken:
        h.skip(f"the demo's fixed ports {taken} are in use (is a demo running?)")
    demo = h.Process([os.path.join(h.SOURCE_ROOT, "scripts", "demo")], "demo")

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
    shown = re.search(r"Right now: (.*)", demo.log()).group(1)
    answers = re.findall(r"127\.0\.0\.2 -> (\S+)", shown)
    h.expect(len(answers) == 3 and len(set(answers)) == 1,
             f"the demo's own stickiness line is not one backend three times: {shown!r}")

    lb = ("127.0.0.1", 8000)
    # The README's command, three times.
    curl = ["curl", "-s", "--max-time", "5", "--interface", "127.0.0.2",
            "http://127.0.0.1:8000/hostname"]
    mine = [h.run(curl).stdout for _ in range(3)]
    h.expect_eq(mine, [answers[0]] * 3, "curl --interface 127.0.0.2 through the demo")
    spread = {h.http_get(lb, src_ip=f"127.0.0.{i}")[1] for i in range(2, 21)}
    h.expect(len(spread) >= 2, f"19 source IPs all reached one backend: {spread}")

    demo.signal(signal.SIGINT)
    h.expect(demo.wait(15) is not None, f"scripts/demo did not stop on SIGINT\n{demo.describe()}")
    # Everything it started (backends, stickyd) is in its session: nothing may outlive it.
    deadline = time.monotonic() + 10
    while session_members(demo.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = session_members(demo.pid)
    h.expect(not left, f"processes of the demo still running after it stopped: {left}")
    deadline = time.monotonic() + 10
    while any(port_taken(p) for p in DEMO_PORTS) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in DEMO_PORTS if port_taken(p)]
    h.expect(not left, f"ports still in use after the demo stopped: {left}")


if __name__ == "__main__":
    h.main()
