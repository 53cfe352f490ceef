#!/usr/bin/env python3
"""Connection termination is for relaying connections. A client whose connect to a
target is still in flight when that target turns unhealthy, or when its
deregistration delay ends, moves on to the next target: it never sees a reset."""
import json
import os
import socket
import sys
import threading

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

SOURCES = h.source_ips(80)
# Far longer than the test needs: a connect to the black hole can only end early
# because stickyd gave up on that target.
CONNECT_TIMEOUT = "30s"


def blackhole():
    """'ip:port' of a listener whose accept queue is full and never drained, so
    the kernel drops SYNs to it: connects hang. Skips where that does not happen."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    h.on_cleanup(listener.close)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    addr = listener.getsockname()
    for _ in range(8):
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        h.on_cleanup(filler.close)
        filler.setblocking(False)
        filler.connect_ex(addr)
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    h.on_cleanup(probe.close)
    probe.settimeout(0.5)
    try:
        probe.connect(addr)
        h.skip("this kernel completes connections to a full accept queue; no black hole")
    except socket.timeout:
        pass
    return h.fmt_addr(addr)


def echo_client(lb, ip, good):
    """One client: its bytes must come back whole from one of the `good` backends.
    Returns None, or what went wrong."""
    payload = h.random_payload(2000, seed=ip)
    try:
        with h.connect(lb, ip, timeout=h.IO_TIMEOUT * 4) as s:
            h.send_all(s, b"STICKYD-TEST WHOAMI\n" + payload)
            s.shutdown(socket.SHUT_WR)
            line = h.recv_line(s)
            rest = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                rest += chunk
    except (ConnectionResetError, BrokenPipeError) as e:
        return f"{ip}: reset ({e!r})"
    except (h.Failure, OSError) as e:
        return f"{ip}: {e!r}"
    name = line.split()[0] if line else ""
    if name not in good:
        return f"{ip}: answered by {line!r}, not one of {sorted(good)}"
    if rest != payload:
        return f"{ip}: {len(rest)} bytes echoed by {name}, {len(payload)} sent"
    return None


def clients_in_background(lb, ips, good):
    """Starts one echo_client per ip at once; returns a function that waits for
    them and returns the list of problems."""
    results = []

    def run():
        results.extend(
            h.run_parallel([lambda ip=ip: echo_client(lb, ip, good) for ip in ips], timeout=75)
        )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def finish():
        thread.join(80)
        h.expect(not thread.is_alive(), "the clients did not finish")
        h.expect_eq(len(results), len(ips), "clients that finished")
        return [r for r in results if r is not None]

    return finish


def moved_count(stickyd):
    """Connecting clients the workers moved off terminated targets, from their log."""
    total = 0
    for line in stickyd.process.log().splitlines():
        if "connecting clients off terminated targets" in line:
            total += int(line.split("moving ")[1].split()[0])
    return total


def test_targets_turning_unhealthy_reset_none_of_the_clients_connecting_to_them():
    good = h.start_backends(2)
    refusing = f"127.0.0.1:{h.free_port()}"  # nothing listens there
    hole = blackhole()
    lb = h.lb_addr()
    targets = [{"id": b.name, "address": b.address} for b in good]
    targets += [{"id": "refusing", "address": refusing}, {"id": "blackhole", "address": hole}]
    # Targets known at start take traffic until checks say otherwise: the bad ones
    # turn unhealthy 1.5-2.5 s in, while the clients below still wait on them.
    config = h.config_text(
        [{"bind": h.fmt_addr(lb), "target_group": "web", "access_log": True}],
        [
            {
                "name": "web",
                "connect_timeout": CONNECT_TIMEOUT,
                "connect_retries": 2,
                "health_check": {
                    "interval": "1s",
                    "timeout": "500ms",
                    "unhealthy_threshold": 2,
                    "healthy_threshold": 2,
                },
                "targets": targets,
            }
        ],
    )
    stickyd = h.start_stickyd(config, addr=lb)
    finish = clients_in_background(lb, SOURCES, {b.name for b in good})
    problems = finish()
    h.expect(
        not problems,
        f"{len(problems)} of {len(SOURCES)} clients failed, e.g. "
        f"{problems[:3]}\n{stickyd.describe()}",
    )
    log = stickyd.process.log()
    h.expect(
        "blackhole (" in log and "is unhealthy" in log,
        f"the black hole never turned unhealthy\n{stickyd.describe()}",
    )
    h.expect(
        moved_count(stickyd) > 0,
        "no client was connecting to a target when it turned unhealthy: the test "
        f"proves nothing\n{stickyd.describe()}",
    )


def test_deregistration_delay_ending_moves_clients_still_connecting():
    good = h.start_backends(2)
    hole = blackhole()
    lb = h.lb_addr()
    targets = [{"id": b.name, "address": b.address} for b in good]
    targets.append({"id": "blackhole", "address": hole})
    config = h.config_text(
        [{"bind": h.fmt_addr(lb), "target_group": "web", "access_log": True}],
        [
            {
                "name": "web",
                "connect_timeout": CONNECT_TIMEOUT,
                "connect_retries": 0,
                "health_check": {"enabled": False},
                "deregistration_delay": {"timeout": "1s"},
                "targets": targets,
            }
        ],
    )
    stickyd = h.start_stickyd(config, addr=lb)
    ips = SOURCES[:40]
    finish = clients_in_background(lb, ips, {b.name for b in good})
    # connect_retries = 0: the move off the drained target is each client's only
    # second chance, which it must get all the same.
    h.wait_for(
        "clients connecting to the black hole",
        lambda: "blackhole" in stickyctl_status(stickyd),
        process=stickyd.process,
    )
    drained = h.run([h.STICKYCTL_BIN, "drain", "blackhole", "--admin", stickyd.admin_socket])
    h.expect_eq(drained.returncode, 0, f"stickyctl drain: {drained.stderr}")
    problems = finish()
    h.expect(
        not problems,
        f"{len(problems)} of {len(ips)} clients failed, e.g. "
        f"{problems[:3]}\n{stickyd.describe()}",
    )
    h.expect(
        moved_count(stickyd) > 0,
        f"no client was moved off the drained target\n{stickyd.describe()}",
    )


def stickyctl_status(stickyd):
    """Ids of targets with active (here: connecting) connections, from stickyctl."""
    r = h.run([h.STICKYCTL_BIN, "status", "--json", "--admin", stickyd.admin_socket])
    if r.returncode != 0:
        return set()
    doc = json.loads(r.stdout)
    return {
        t["id"] for g in doc["groups"] for t in g["targets"] if t.get("active_connections", 0) > 0
    }


if __name__ == "__main__":
    h.main()
