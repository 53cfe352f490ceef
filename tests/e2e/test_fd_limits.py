#!/usr/bin/env python3
"""Open-file limits: stickyd raises its soft RLIMIT_NOFILE to the hard limit at
start, and when file descriptors run out it neither spins nor throws away clients:
it stops accepting (the kernel keeps the rest queued), logs the pause once, and
serves every waiting client once connections close and fds are free again."""
import os
import socket
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

PAYLOAD = b"are you there?\n"


def start_limited(soft, hard, backend):
    """stickyd quick mode, one worker, under prlimit (which execs: same pid)."""
    addr = h.lb_addr()
    admin = os.path.join(h.temp_dir(), f"limited-{soft}-admin.sock")
    process = h.Process(
        ["prlimit", f"--nofile={soft}:{hard}", "--", h.STICKYD_BIN, "--listen", h.fmt_addr(addr),
         "--target", backend.address, "--threads", "1", "--health-check", "off",
         "--admin-socket", admin], f"stickyd-nofile-{soft}")
    h.wait_accepting(addr, process)
    return process, addr


def soft_nofile(pid):
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise h.Failure("no 'Max open files' line in /proc/PID/limits")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_soft_limit_is_raised_to_the_hard_limit():
    backend = h.start_backend("b1")
    process, _ = start_limited(256, 4096, backend)
    h.expect_eq(soft_nofile(process.pid), 4096, "soft RLIMIT_NOFILE of the running stickyd")


def resting_fds(backend):
    """How many fds an idle stickyd of this shape holds."""
    process, _ = start_limited(64, 64, backend)
    count = h.fd_count(process.pid)
    process.kill()
    return count


def test_out_of_fds_pauses_once_and_serves_every_waiting_client():
    backend = h.start_backend("b1")
    base = resting_fds(backend)
    # With no fd left, accept itself fails (EMFILE). With exactly one left, accept
    # succeeds and the socket for the target fails: the client must then wait too.
    for spare in (0, 1):
        capacity = 8
        out_of_fds_round(backend, base + 2 * capacity + spare, capacity)


def out_of_fds_round(backend, limit, capacity):
    process, addr = start_limited(limit, limit, backend)
    served = []
    for _ in range(capacity):
        s = h.connect(addr)
        h.send_all(s, PAYLOAD)
        h.expect_eq(h.recv_exact(s, len(PAYLOAD)), PAYLOAD, "echo through stickyd")
        served.append(s)

    # More clients than fds: they connect (the kernel's backlog) and send, and wait.
    # Fewer than `capacity`, so that all of them fit once the first ones leave.
    waiting = []
    for _ in range(capacity - 2):
        s = h.connect(addr)
        h.send_all(s, PAYLOAD)
        waiting.append(s)
    before = cpu_ticks(process.pid)
    time.sleep(3)
    spent = cpu_ticks(process.pid) - before
    log = process.log()
    pauses = log.count("pausing accepts")
    resumes = log.count("accepting again")
    # A spin would burn close to 300 ticks in 3 s; pausing and retrying with a
    # back-off costs a handful.
    h.expect(spent < 100, f"stickyd used {spent} CPU ticks in 3 s while out of fds")
    h.expect(pauses <= 1, f"{pauses} 'pausing accepts' lines in 3 s:\n{log}")
    h.expect(resumes == 0, f"{resumes} 'accepting again' lines while still out of fds:\n{log}")

    # Free fds: every waiting client is served, none was closed or reset meanwhile.
    for s in served:
        s.close()
    for i, s in enumerate(waiting):
        s.settimeout(h.IO_TIMEOUT)
        try:
            got = h.recv_exact(s, len(PAYLOAD))
        except (OSError, EOFError, h.Failure) as e:
            raise h.Failure(f"waiting client {i} was not served: {e!r}\n{process.log()}")
        h.expect_eq(got, PAYLOAD, f"echo to waiting client {i}")
    log = process.log()
    h.expect_eq(log.count("accepting again"), 1, "'accepting again' lines after recovery")
    for s in waiting:
        s.close()
    # And new clients are accepted again (the accept was re-armed).
    fresh = h.connect(addr)
    h.send_all(fresh, PAYLOAD)
    h.expect_eq(h.recv_exact(fresh, len(PAYLOAD)), PAYLOAD, "echo to a new client")
    fresh.close()
    process.kill()


if __name__ == "__main__":
    socket.setdefaulttimeout(h.IO_TIMEOUT)
    h.main()
