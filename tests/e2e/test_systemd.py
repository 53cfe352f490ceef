#!/usr/bin/env python3
"""systemd integration: the unit passes `systemd-analyze verify` and rates an
exposure of 2.0 or lower, and the real stickyd speaks the sd_notify protocol to a
datagram socket standing in for systemd: READY=1 once it accepts, STATUS= lines,
STOPPING=1 on SIGTERM, and WATCHDOG=1 pings while its loops run."""
import os
import re
import shutil
import signal
import socket
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

MAX_EXPOSURE = 2.0


def test_unit_verifies():
    unit = h.service_unit_for_this_build()
    result = h.systemd_verify([unit])
    # verify also reports on the units it loads alongside; only ours counts.
    ours = [
        line for line in (result.stdout + result.stderr).splitlines() if "stickyd.service" in line
    ]
    h.expect(
        result.returncode == 0 and not ours,
        f"systemd-analyze verify exited {result.returncode}:\n" f"{result.stdout}{result.stderr}",
    )


def test_template_unit_verifies_as_an_instance():
    unit = h.service_unit_for_this_build(instance="web")
    result = h.systemd_verify([unit])
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "stickyd@" in line]
    h.expect(
        result.returncode == 0 and not ours,
        f"systemd-analyze verify exited {result.returncode}:\n" f"{result.stdout}{result.stderr}",
    )


def test_template_instances_have_their_own_config_admin_socket_and_runtime_dir():
    with open(
        h.service_unit_for_this_build(instance="web").replace("@web", "@"), encoding="utf-8"
    ) as f:
        text = f.read()
    h.expect(
        re.search(
            r"^ExecStart=\S+/stickyd --config \S+/%i\.toml "
            r"--admin-socket /run/stickyd/%i/admin\.sock$",
            text,
            re.M,
        ),
        f"ExecStart of the template:\n{text}",
    )
    h.expect(
        re.search(r"^RuntimeDirectory=stickyd/%i$", text, re.M),
        "instances must not share (and remove) one runtime directory",
    )


def exposure(unit, name):
    result = h.run([h.systemd_analyze(), "security", "--offline=yes", unit], timeout=60)
    output = result.stdout + result.stderr
    match = re.search(rf"Overall exposure level for {re.escape(name)}: (\d+\.\d+)", output)
    h.expect(match is not None, f"no exposure level in:\n{output}")
    return float(match.group(1)), output


def test_template_unit_exposure_at_most_2():
    score, output = exposure(h.service_unit_for_this_build(instance="web"), "stickyd@web.service")
    h.expect(score <= MAX_EXPOSURE, f"exposure {score} > {MAX_EXPOSURE}:\n{output}")


def test_unit_exposure_at_most_2():
    tool = h.systemd_analyze()
    unit = h.service_unit_for_this_build()
    result = h.run([tool, "security", "--offline=yes", unit], timeout=60)
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for stickyd\.service: (\d+\.\d+)", output)
    h.expect(match is not None, f"no exposure level in:\n{output}")
    score = float(match.group(1))
    h.expect(score <= MAX_EXPOSURE, f"exposure {score} > {MAX_EXPOSURE}:\n{output}")


def flagged_capabilities(output):
    """The capabilities systemd-analyze security counts against a unit."""
    return set(re.findall(r"^\S+ CapabilityBoundingSet=~(\S+)\s+Service has (?!no )", output, re.M))


def test_client_ip_drop_in_verifies_and_adds_only_cap_net_admin():
    # preserve_client_ip needs CAP_NET_ADMIN; the unit leaves it out and the drop-in
    # systemd/stickyd.service.d/preserve-client-ip.conf adds it where it is used.
    unit = h.service_unit_for_this_build()
    _, without = exposure(unit, "stickyd.service")
    drop_ins = os.path.join(os.path.dirname(unit), "stickyd.service.d")
    os.makedirs(drop_ins)
    shutil.copy(
        os.path.join(h.SOURCE_ROOT, "systemd", "stickyd.service.d", "preserve-client-ip.conf"),
        drop_ins,
    )
    result = h.systemd_verify([unit])
    ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "stickyd.service" in line or "preserve-client-ip" in line
    ]
    h.expect(
        result.returncode == 0 and not ours,
        f"systemd-analyze verify with the drop-in exited {result.returncode}:\n"
        f"{result.stdout}{result.stderr}",
    )
    score, with_drop_in = exposure(unit, "stickyd.service")
    h.expect_eq(
        flagged_capabilities(with_drop_in) - flagged_capabilities(without),
        {"CAP_NET_ADMIN"},
        "capabilities the drop-in adds",
    )
    h.expect(
        score <= MAX_EXPOSURE,
        f"exposure with the drop-in {score} > {MAX_EXPOSURE}:\n" f"{with_drop_in}",
    )


# ---------------------------------------------------------------------------------
# The notify protocol, with a socket of ours as NOTIFY_SOCKET


class FakeSystemd:
    def __init__(self):
        self.path = os.path.join(h.temp_dir(), "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        h.on_cleanup(self.sock.close)
        self.messages = []

    def next(self, timeout):
        """The next datagram as a dict of its assignments, or None on timeout."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096).decode()
        except socket.timeout:
            return None
        message = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
        self.messages.append(message)
        return message

    def wait_for(self, key, timeout=h.START_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.next(max(0.01, deadline - time.monotonic()))
            if message is not None and key in message:
                return message
        raise h.Failure(f"no {key}= within {timeout}s; got {self.messages}")


def spawn(argv, env, label):
    """A Process whose environment adds `env` (Process takes the harness's own)."""
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


def stickyd_argv(lb, backend):
    return [
        h.STICKYD_BIN,
        "--listen",
        h.fmt_addr(lb),
        "--target",
        backend.address,
        "--threads",
        "2",
        "--health-check",
        "off",
    ] + h.admin_socket_args()


def test_ready_status_stopping():
    systemd = FakeSystemd()
    backend = h.start_backend("echo")
    lb = h.lb_addr()
    proc = spawn(stickyd_argv(lb, backend), {"NOTIFY_SOCKET": systemd.path}, "stickyd")
    ready = systemd.wait_for("READY")
    h.expect_eq(ready["READY"], "1", "READY value")
    # No retry: the listener must already accept when READY=1 is sent.
    with h.connect(lb, timeout=2.0):
        pass
    h.expect(
        re.fullmatch(r"1 listener, 1 target, \d+ active connections?", ready.get("STATUS", ""))
        is not None,
        f"STATUS= with READY=1: {ready}",
    )
    h.expect_eq(h.whoami("127.0.0.2", lb), "echo", "a request through stickyd")
    proc.signal(signal.SIGTERM)
    systemd.wait_for("STOPPING")
    h.expect_eq(proc.wait(10), 0, "exit status after SIGTERM")


def test_reload_notifies_reloading_then_ready():
    systemd = FakeSystemd()
    backend = h.start_backend("echo")
    lb = h.lb_addr()
    text = h.simple_config(h.fmt_addr(lb), [backend], group={"health_check": {"enabled": False}})
    path = h.write_file("reload.toml", text)
    proc = spawn([h.STICKYD_BIN, "--config", path], {"NOTIFY_SOCKET": systemd.path}, "stickyd")
    systemd.wait_for("READY")

    # An invalid file: no RELOADING=1, and STATUS= says what is wrong.
    with open(path, "w") as f:
        f.write(text.replace("[[listener]]", "[[listener]]\nbogus = 1"))
    proc.signal(signal.SIGHUP)
    status = systemd.wait_for("STATUS")
    while "reload failed" not in status["STATUS"]:
        status = systemd.wait_for("STATUS")
    h.expect("bogus: unknown key" in status["STATUS"], f"STATUS= names the key: {status}")
    h.expect(
        not any("RELOADING" in m for m in systemd.messages),
        f"RELOADING=1 for a reload that was refused: {systemd.messages}",
    )

    # A valid one: RELOADING=1 with MONOTONIC_USEC, then READY=1.
    with open(path, "w") as f:
        f.write(text)
    proc.signal(signal.SIGHUP)
    reloading = systemd.wait_for("RELOADING")
    h.expect_eq(reloading["RELOADING"], "1", "RELOADING value")
    h.expect(reloading.get("MONOTONIC_USEC", "").isdigit(), f"MONOTONIC_USEC: {reloading}")
    ready = systemd.wait_for("READY")
    h.expect_eq(ready["READY"], "1", "READY after the reload")
    h.expect_eq(h.whoami("127.0.0.2", lb), "echo", "a request after the reload")
    proc.signal(signal.SIGTERM)
    h.expect_eq(proc.wait(10), 0, "exit status after SIGTERM")


def test_status_counts_targets_at_start_and_after_a_reload():
    # Finding 1 of issue #10: STATUS= was counted over a view freed before the loop
    # ran (a heap use-after-free at start, at every STATUS= and after each reload).
    systemd = FakeSystemd()
    backends = h.start_backends(2)
    lb = h.lb_addr()
    group = {"health_check": {"enabled": False}}
    text = h.simple_config(h.fmt_addr(lb), backends[:1], group=group)
    path = h.write_file("status.toml", text)
    proc = spawn([h.STICKYD_BIN, "--config", path], {"NOTIFY_SOCKET": systemd.path}, "stickyd")
    ready = systemd.wait_for("READY")
    h.expect(
        ready.get("STATUS", "").startswith("1 listener, 1 target, "), f"STATUS= at start: {ready}"
    )
    with open(path, "w") as f:
        f.write(h.simple_config(h.fmt_addr(lb), backends, group=group))
    proc.signal(signal.SIGHUP)
    systemd.wait_for("RELOADING")
    ready = systemd.wait_for("READY")
    h.expect(
        ready.get("STATUS", "").startswith("1 listener, 2 targets, "),
        f"STATUS= after the reload: {ready}",
    )
    proc.signal(signal.SIGTERM)
    h.expect_eq(proc.wait(10), 0, "exit status after SIGTERM")


def start_under_watchdog():
    """stickyd with a 1 s watchdog, READY=1 received: (fake systemd, process, listener)."""
    systemd = FakeSystemd()
    backend = h.start_backend("echo")
    lb = h.lb_addr()
    # WATCHDOG_PID must be stickyd's own pid: the shell execs into it.
    argv = ["sh", "-c", 'WATCHDOG_PID=$$ exec "$@"', "sh"] + stickyd_argv(lb, backend)
    proc = spawn(argv, {"NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "1000000"}, "stickyd")
    systemd.wait_for("READY")
    return systemd, proc, lb


def test_watchdog_pings_and_status_lines():
    systemd, proc, lb = start_under_watchdog()
    held = h.connect(lb, "127.0.0.3")
    h.on_cleanup(held.close)
    h.send_all(held, b"STICKYD-TEST WHOAMI\n")
    h.recv_line(held)
    # Half the 1 s watchdog: ~6 pings in 3 s; ask for 4 to allow for a loaded machine.
    start = time.monotonic()
    pings = 0
    status_with_conn = False
    while time.monotonic() - start < 3.0:
        message = systemd.next(1.0)
        h.expect(message is not None, f"nothing from stickyd for 1s; got {systemd.messages}")
        pings += message.get("WATCHDOG") == "1"
        status_with_conn |= message.get("STATUS", "").endswith(" 1 active connection")
    h.expect(pings >= 4, f"{pings} WATCHDOG=1 pings in 3s with WATCHDOG_USEC=1000000")
    h.expect(status_with_conn, f"no STATUS= showing the open connection: {systemd.messages}")
    held.close()
    proc.signal(signal.SIGTERM)
    systemd.wait_for("STOPPING")
    h.expect_eq(proc.wait(10), 0, "exit status after SIGTERM")


class FrozenThread:
    """Stops one thread of another process (not the whole process, as SIGSTOP would)
    with ptrace: PTRACE_SEIZE, then PTRACE_INTERRUPT. Detaching lets it run again."""

    PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT = 17, 0x4206, 0x4207

    def __init__(self, tid):
        import ctypes

        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        self.tid = tid
        if self.libc.ptrace(self.PTRACE_SEIZE, tid, None, None) != 0:
            h.skip(f"ptrace is not permitted here (errno {ctypes.get_errno()})")
        self.libc.ptrace(self.PTRACE_INTERRUPT, tid, None, None)
        # Reap the stop so the thread is known to be stopped before the test goes on.
        os.waitpid(tid, os.__dict__.get("__WALL", 0x40000000))

    def release(self):
        self.libc.ptrace(self.PTRACE_DETACH, self.tid, None, None)


def thread_named(pid, name):
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            if f.read().strip() == name:
                return int(tid)
    raise h.Failure(f"no thread named {name} in stickyd ({pid})")


def test_a_wedged_worker_stops_the_watchdog_pings():
    systemd, proc, _ = start_under_watchdog()
    systemd.wait_for("WATCHDOG")
    frozen = FrozenThread(thread_named(proc.pid, "worker-1"))
    try:
        # Let any ping already decided arrive, then watch 3 s: STATUS= lines keep
        # coming (the main thread is fine) but no WATCHDOG=1.
        time.sleep(0.6)
        while systemd.next(0.01) is not None:
            pass
        systemd.messages.clear()
        start = time.monotonic()
        while time.monotonic() - start < 3.0:
            systemd.next(0.5)
        pings = [m for m in systemd.messages if m.get("WATCHDOG") == "1"]
        h.expect(not pings, f"{len(pings)} watchdog pings while worker-1 was stopped")
        h.expect(
            any("STATUS" in m for m in systemd.messages),
            f"the signal loop itself stopped too: {systemd.messages}",
        )
    finally:
        frozen.release()
    systemd.wait_for("WATCHDOG", timeout=5)  # pings resume once it turns again
    proc.signal(signal.SIGTERM)
    h.expect_eq(proc.wait(10), 0, "exit status after SIGTERM")


def test_watchdog_pid_of_another_process_is_ignored():
    systemd = FakeSystemd()
    backend = h.start_backend("echo")
    lb = h.lb_addr()
    env = {"NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    proc = spawn(stickyd_argv(lb, backend), env, "stickyd")
    systemd.wait_for("READY")
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        message = systemd.next(0.2)
        h.expect(
            message is None or "WATCHDOG" not in message,
            "WATCHDOG=1 sent although WATCHDOG_PID names another process",
        )
    proc.signal(signal.SIGTERM)
    h.expect_eq(proc.wait(10), 0, "exit status after SIGTERM")


if __name__ == "__main__":
    h.main()
