#!/usr/bin/env python3
"""Open-file limits: stickyd raises its soft RLIMIT_NOFILE to the hard limit at
start, and when file descriptors run out it neither spins nor throws away clients:
it stops accepting (the kernel keeps the rest queued), logs the pause once, and
serves every waiting client once connections close and fds are free again."""
import errno
import os
import selectors
import signal
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
        [
            "prlimit",
            f"--nofile={soft}:{hard}",
            "--",
            h.STICKYD_BIN,
            "--listen",
            h.fmt_addr(addr),
            "--target",
            backend.address,
            "--threads",
            "1",
            "--health-check",
            "off",
            "--admin-socket",
            admin,
        ],
        f"stickyd-nofile-{soft}",
        out_of_fds=True,
    )
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
    """How many fds an idle stickyd of this shape holds: counted once it says it is
    ready (the listener accepts before every thread has its ring and eventfds) and
    wait_accepting's probe connection is gone from it (both legs)."""
    process, _ = start_limited(64, 64, backend)
    count = h.resting_fd_count(process)
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


def open_clients(addr, count):
    """count clients connected at once, nothing sent yet. Their handshakes complete
    in the kernel whether or not stickyd accepts them (the backlog holds 4096)."""
    clients = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS):
            raise h.Failure(f"connect to stickyd failed: {os.strerror(err)}")
        clients.append(s)
    with selectors.DefaultSelector() as sel:
        for s in clients:
            sel.register(s, selectors.EVENT_WRITE)
        pending = len(clients)
        deadline = time.monotonic() + h.IO_TIMEOUT
        while pending:
            if time.monotonic() > deadline:
                raise h.Failure(f"{pending} of {count} clients still connecting")
            for key, _ in sel.select(timeout=1.0):
                s = key.fileobj
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise h.Failure(f"a client could not connect: {os.strerror(err)}")
                sel.unregister(s)
                pending -= 1
    return clients


def serve_all(clients, timeout=40.0):
    """Each client sends PAYLOAD and reads it back, then closes. Returns how many
    got their echo, and what became of the others (reset, EOF, or still waiting
    at the deadline)."""
    replies = {}
    failures = []
    with selectors.DefaultSelector() as sel:
        for s in clients:
            s.send(PAYLOAD)  # a few bytes always fit in an empty send buffer
            sel.register(s, selectors.EVENT_READ)
            replies[s] = b""
        served = 0
        deadline = time.monotonic() + timeout
        while replies and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1.0):
                s = key.fileobj
                try:
                    data = s.recv(len(PAYLOAD))
                except OSError as e:
                    data, failure = b"", repr(e)
                else:
                    failure = "EOF before the echo"
                if data:
                    replies[s] += data
                    if len(replies[s]) < len(PAYLOAD):
                        continue
                    if replies[s] == PAYLOAD:
                        served += 1
                    else:
                        failures.append(f"wrong echo {replies[s]!r}")
                else:
                    failures.append(failure)
                sel.unregister(s)
                del replies[s]
                s.close()
        failures += ["no echo within the deadline"] * len(replies)
    for s in replies:
        s.close()
    return served, failures


def summary(failures):
    counts = {}
    for f in failures:
        counts[f] = counts.get(f, 0) + 1
    return ", ".join(f"{n} x {what}" for what, n in sorted(counts.items()))


def test_out_of_fds_every_one_of_many_concurrent_clients_is_served():
    """Finding 5: with the fds all taken by clients waiting for a target socket,
    stickyd used to reset waiting clients one after another to free an fd, but each
    reset's fd went to a close queued in io_uring, still taken when the next
    socket() ran: about half of 100 clients were reset under --nofile=64."""
    h.need_open_files(1024)
    backend = h.start_backend("b1")
    process, addr = start_limited(64, 64, backend)
    # Frozen while they connect, stickyd finds all 100 in its backlog: its accept
    # takes them until no fd is left, and none has a target socket yet.
    process.signal(signal.SIGSTOP)
    try:
        clients = open_clients(addr, 100)
    finally:
        process.signal(signal.SIGCONT)
    served, failures = serve_all(clients)
    h.expect(
        not failures,
        f"{len(failures)} of 100 clients not served ({summary(failures)})" f"\n{process.log()}",
    )
    h.expect_eq(served, 100, "clients served")
    h.expect(
        process.log().count("pausing accepts") >= 1,
        f"100 clients at --nofile=64 never paused accepts:\n{process.log()}",
    )


def test_storm_at_256_fds_serves_every_client_logs_one_pause_and_idles_meanwhile():
    """700 clients at once against --nofile=256: each is served (some later), the
    pause and the resumption are a line each, and while clients wait for fds that
    nothing frees, stickyd sleeps."""
    clients_wanted = 700
    h.need_open_files(2048)
    backend = h.start_backend("b1")
    process, addr = start_limited(256, 256, backend)
    clients = open_clients(addr, clients_wanted)
    # Nobody has sent anything, so the clients that reached the backend stay open
    # and stickyd holds every fd it can: it is paused until they close.
    h.wait_for("the pause", lambda: "pausing accepts" in process.log(), process=process)
    # Generous against a loaded machine (a descheduled stickyd uses less CPU, not
    # more); a loop retrying accept or socket() without a pause would use ~100%.
    start_cpu, start_wall = cpu_ticks(process.pid), time.monotonic()
    time.sleep(2.0)
    cpu = (cpu_ticks(process.pid) - start_cpu) / os.sysconf("SC_CLK_TCK")
    wall = time.monotonic() - start_wall
    h.expect(
        cpu < 0.2 * wall,
        f"stickyd used {cpu:.2f} s of CPU in {wall:.2f} s while " f"paused with clients waiting",
    )
    h.expect(
        "accepting again" not in process.log(),
        f"stickyd resumed while every fd was still taken:\n{process.log()}",
    )

    served, failures = serve_all(clients)
    log = process.log()
    h.expect(
        not failures,
        f"{len(failures)} of {clients_wanted} clients not served " f"({summary(failures)})\n{log}",
    )
    h.expect_eq(served, clients_wanted, "clients served")
    h.wait_for("the resumption", lambda: "accepting again" in process.log(), process=process)
    log = process.log()
    h.expect_eq(log.count("pausing accepts"), 1, f"'pausing accepts' lines:\n{log}")
    h.expect_eq(log.count("accepting again"), 1, f"'accepting again' lines:\n{log}")
    h.expect(len(log.splitlines()) < 20, f"{len(log.splitlines())} log lines for one storm:\n{log}")
    # New clients are accepted again (the multishot accept was re-armed).
    fresh = h.connect(addr)
    h.send_all(fresh, PAYLOAD)
    h.expect_eq(h.recv_exact(fresh, len(PAYLOAD)), PAYLOAD, "echo to a new client")
    fresh.close()


if __name__ == "__main__":
    socket.setdefaulttimeout(h.IO_TIMEOUT)
    h.main()
