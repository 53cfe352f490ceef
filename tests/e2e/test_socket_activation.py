"""Socket activation: systemd/stickyd.socket, and stickyd adopting passed listeners.

The unit file is checked with systemd-analyze verify and against the example
config it documents. Adoption runs stickyd under systemd-socket-activate, which
binds the sockets, waits for the first client, then execs stickyd with LISTEN_FDS,
LISTEN_PID and LISTEN_FDNAMES set, as systemd does for stickyd.socket.
"""

import os
import re
import shutil
import socket
import tomllib

import harness as h

SOCKET_UNIT = os.path.join(h.SOURCE_ROOT, "systemd", "stickyd.socket")


def test_socket_unit_verifies():
    service_path = h.service_unit_for_this_build()
    with open(SOCKET_UNIT, encoding="utf-8") as f:
        socket_path = h.write_file("stickyd.socket", f.read())
    result = h.systemd_verify([socket_path, service_path])
    # verify exits 0 on unknown keys; any line naming our units is a finding.
    ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "stickyd.socket" in line or "stickyd.service" in line
    ]
    h.expect(
        result.returncode == 0 and not ours,
        f"systemd-analyze verify exited {result.returncode}:\n" f"{result.stdout}{result.stderr}",
    )


def test_socket_unit_listens_where_the_example_config_binds():
    with open(SOCKET_UNIT, encoding="utf-8") as f:
        unit = f.read()
    streams = re.findall(r"^ListenStream=(\S+)$", unit, re.MULTILINE)
    h.expect("Service=stickyd.service" in unit.splitlines(), "Service=stickyd.service")
    with open(os.path.join(h.SOURCE_ROOT, "conf", "stickyd.toml"), "rb") as f:
        config = tomllib.load(f)
    binds = [listener["bind"] for listener in config["listener"]]
    h.expect_eq(sorted(streams), sorted(binds), "ListenStream= lines vs conf/stickyd.toml binds")


# ---------------------------------------------------------------------------------
# Adoption by the daemon


def need_adoption():
    if shutil.which("systemd-socket-activate") is None:
        h.skip("systemd-socket-activate is not installed")
    # Static libraries link only what is referenced: the adoption module's log text
    # is in the binary exactly when main.cpp calls it.
    with open(h.STICKYD_BIN, "rb") as f:
        if b"adopted socket-activation fd" not in f.read():
            h.skip("this stickyd does not call activation::adopt_listeners yet")


def activated_stickyd(config, passed, label="stickyd"):
    """stickyd under systemd-socket-activate, which binds `passed` (host, port) list."""
    path = h.write_file(f"{label}.toml", config)
    argv = ["systemd-socket-activate"]
    for addr in passed:
        argv += ["-l", h.fmt_addr(addr)]
    argv += ["--fdname=" + ":".join(f"fd{i}" for i in range(len(passed)))]
    argv += [h.STICKYD_BIN, "--config", path]
    return h.Process(argv, label)


def test_stickyd_serves_on_the_passed_listener():
    need_adoption()
    backends = h.start_backends(2)
    lb = h.lb_addr()
    stickyd = activated_stickyd(h.simple_config(h.fmt_addr(lb), backends), [lb])
    # The first client is what makes systemd-socket-activate exec stickyd.
    h.wait_accepting(lb, stickyd)
    h.expect(h.whoami("127.0.0.2", lb) in {"backend-1", "backend-2"}, "a backend answers")
    names = set(h.mapping(lb, h.source_ips(20), repeat=2).values())
    h.expect(names <= {"backend-1", "backend-2"}, f"backends reached: {names}")
    log = stickyd.log()
    h.expect("adopted socket-activation fd 3 for listener" in log, f"adoption logged:\n{log}")
    h.expect("Address already in use" not in log, f"stickyd bound the port itself:\n{log}")


def test_stickyd_closes_a_passed_socket_no_listener_wants():
    need_adoption()
    backends = h.start_backends(1)
    lb = h.lb_addr()
    stray = h.lb_addr()
    stickyd = activated_stickyd(h.simple_config(h.fmt_addr(lb), backends), [lb, stray])
    h.wait_accepting(lb, stickyd)
    h.expect_eq(h.whoami("127.0.0.2", lb), "backend-1", "the matched listener serves")
    log = stickyd.log()
    h.expect(
        f"socket-activation fd 4 (fd1): {h.fmt_addr(stray)} matches no [[listener]]" in log,
        f"warning about the stray socket:\n{log}",
    )
    # Closed by stickyd, and systemd-socket-activate is stickyd now: nothing listens.
    try:
        with h.connect(stray, timeout=2.0):
            raise h.Failure(f"{h.fmt_addr(stray)} still accepts connections")
    except (ConnectionRefusedError, socket.timeout):
        pass


if __name__ == "__main__":
    h.main()
