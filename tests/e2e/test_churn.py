#!/usr/bin/env python3
"""Connection churn: stickyd's memory does not grow with the connections it has
served. Many short proxied connections, from several loopback sources, each
ended by the client with an RST (SO_LINGER 0) so that no TIME_WAIT piles up:
Private_Dirty after a warm-up and after many more connections differs by a fixed
slack, not by anything per connection.

STICKYD_CHURN_CONNECTIONS sets how many connections follow the warm-up (default
50000, 60k in all, to fit the e2e time budget on a shared 2-core machine;
`scripts/bench --churn 200000` runs the 200k version)."""
import multiprocessing
import os
import queue
import socket
import struct
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

# The warm-up covers the receive buffer pool (4096 buffers, two per connection).
WARM_UP = 10000
CONNECTIONS = int(os.environ.get("STICKYD_CHURN_CONNECTIONS", "50000"))
CLIENTS = 4  # processes, one source address each
# Pages touched once and kept (stack, glibc's arena top, kernel-side bookkeeping)
# may still move by a few; what finding 10 measured was ~11 bytes per connection,
# ~580 KiB over 50k.
SLACK = 128 * 1024


def churn(addr, source, count, results):
    """count connections from source, one at a time: a byte there and back, then
    an RST. Puts the number done, or what went wrong, on results."""
    abort = struct.pack("ii", 1, 0)
    done = 0
    try:
        for _ in range(count):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(h.IO_TIMEOUT)
                s.bind((source, 0))
                s.connect(addr)
                s.sendall(b"x")
                if s.recv(1) != b"x":
                    raise h.Failure("no echo")
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, abort)
            done += 1
        results.put(done)
    except Exception as e:  # reported by the parent
        results.put(f"{source} after {done} connections: {e!r}")


def run_connections(addr, count, timeout):
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    sources = h.source_ips(CLIENTS, first=40)
    procs = [
        context.Process(target=churn, args=(addr, src, count // CLIENTS, results), daemon=True)
        for src in sources
    ]
    for p in procs:
        p.start()
    h.on_cleanup(lambda: [p.kill() for p in procs if p.is_alive()])
    deadline = time.monotonic() + timeout
    outcomes = []
    try:
        for _ in procs:
            outcomes.append(results.get(timeout=max(0.1, deadline - time.monotonic())))
    except queue.Empty:
        raise h.Failure(f"{count} connections took longer than {timeout} s")
    for p in procs:
        p.join(5)
    errors = [o for o in outcomes if not isinstance(o, int)]
    h.expect(not errors, f"clients failed: {errors}")
    return sum(outcomes)


def test_private_dirty_stays_flat_over_many_short_connections():
    backend = h.start_backend("b1")
    addr = h.lb_addr()
    lb = h.start_stickyd(
        args=["--listen", h.fmt_addr(addr), "--target", backend.address, "--threads", "1"],
        addr=addr,
        env=h.measured_memory_env(),
    )
    pid = lb.process.pid
    # The warm-up touches what is touched once: every receive buffer of the pool
    # (the kernel hands them out in turn), the connection table, the arenas.
    h.expect_eq(run_connections(addr, WARM_UP, 60), WARM_UP, "warm-up connections")
    before = h.private_dirty(pid)
    h.expect_eq(run_connections(addr, CONNECTIONS, 3600), CONNECTIONS, "connections")
    after = h.private_dirty(pid)
    growth = after - before
    h.expect(
        growth < SLACK,
        f"Private_Dirty grew by {growth // 1024} KiB over {CONNECTIONS} connections "
        f"({before // 1024} -> {after // 1024} KiB; {growth / CONNECTIONS:.1f} bytes each)",
    )


if __name__ == "__main__":
    socket.setdefaulttimeout(h.IO_TIMEOUT)
    # The e2e budget for the default count; longer runs (scripts/bench --churn) get
    # time in proportion, at a rate this shared 2-core machine keeps under load.
    h.main(deadline=h.TEST_DEADLINE + max(0, CONNECTIONS - 50000) // 400)
