#!/usr/bin/env python3
"""A thread whose io_uring loop fails mid-run (io_uring_enter out of memory, made so
by the failing-uring library preloaded into stickyd).

A worker: the daemon must not go on half working. The failed worker's clients are
reset at once, its listener leaves the SO_REUSEPORT group so that no new client waits
in a backlog nobody accepts, and stickyd stops as for SIGTERM (shutdown delay and
grace included) and exits with status 1, for its supervisor to start it whole again.

The control thread: no target's health changes any more, so stickyd stops the same
way. Until it has, the workers go on with the routing they had, and everything that
needs the control thread says it failed (503 with the reason, /ready 503, /metrics'
stickyd_control_up 0). Whether its ring then lets it cancel its I/O or not, nothing
is freed that the kernel may still write into, and nothing is reported as a leak."""
import os
import signal
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

# Enough connections that both workers get some: SO_REUSEPORT spreads them by a
# hash of their addresses and ports, so all 24 on one worker has odds of 2 in 2^24.
CONNECTIONS = 24
LINE = b"are you there?\n"


def start(thread, count=None, group=None, global_=None):
    """(listener, Stickyd, backend, trigger file) of a stickyd in front of one echo
    backend whose `thread` fails its io_uring_enter once the trigger file exists
    (`count` times, or from then on)."""
    lib = os.environ.get("FAILING_URING_LIB")
    if not lib:
        h.skip("FAILING_URING_LIB is not set (run through meson)")
    trigger = os.path.join(h.temp_dir(), f"fail-{thread}-now")
    env = {
        "LD_PRELOAD": lib,
        "FAIL_URING_THREAD": thread,
        "FAIL_URING_WHEN": trigger,
        # A build that links the ASan runtime as a shared library wants it first of
        # all; the preloaded library replaces no function ASan intercepts.
        **h.asan_options("verify_asan_link_order=0"),
    }
    if count is not None:
        env["FAIL_URING_COUNT"] = str(count)
    backend = h.start_backend("echo")
    lb = h.lb_addr()
    stickyd = h.start_stickyd(
        h.simple_config(h.fmt_addr(lb), [backend], group=group, global_=global_),
        addr=lb,
        env=env,
    )
    return lb, stickyd, backend, trigger


def start_two_workers(delay="0s"):
    lb, stickyd, _, trigger = start(
        "worker-1",
        global_={"threads": 2, "shutdown_grace": "60s", "shutdown_delay": delay},
    )
    return lb, stickyd, trigger


def expect_exit_status_1(process, after):
    status = process.wait(15)
    h.expect(status is not None, f"stickyd still running after {after}\n{process.describe()}")
    h.expect_eq(status, 1, f"exit status after {after}")


def answered(sock):
    """True if the connection echoes a line, False if it was reset. One that does
    neither within IO_TIMEOUT (nobody serves it), or ends in a FIN, fails the test."""
    try:
        h.send_all(sock, LINE)
        line = h.recv_line(sock)
    except (ConnectionResetError, BrokenPipeError):
        return False
    except TimeoutError:
        raise h.Failure("a connection was neither answered nor reset: nobody serves it")
    h.expect_eq(line, LINE.decode().rstrip("\n"), "the line echoed")
    return True


def open_clients(lb):
    clients = []
    for i in range(CONNECTIONS):
        s = h.connect(lb, f"127.0.0.{2 + i}")
        h.on_cleanup(s.close)
        h.expect(answered(s), f"connection {i} relays before the failure")
        clients.append(s)
    return clients


def fail_worker(trigger, clients):
    """Makes worker 1's next turn fail; the lines sent wake it. Returns the clients
    that worker 0 still serves; fails unless worker 1's were all reset."""
    h.write_file(os.path.basename(trigger), "")
    survivors = [s for s in clients if answered(s)]
    reset = len(clients) - len(survivors)
    h.expect(
        0 < reset < len(clients),
        f"{reset} of {len(clients)} connections reset when worker 1 failed; wanted worker "
        f"1's (some) reset and worker 0's (the others) still relaying",
    )
    return survivors


def test_a_failed_worker_resets_its_clients_and_stickyd_exits_1():
    lb, stickyd, trigger = start_two_workers()
    process = stickyd.process
    survivors = fail_worker(trigger, open_clients(lb))
    h.wait_for(
        "the failure's log lines",
        lambda: "worker 1 failed: io_uring_enter failed: Cannot allocate memory" in process.log()
        and "a worker failed (exit status 1): stopped accepting" in process.log(),
        process=process,
    )
    # With no shutdown delay the listeners close at once, as after SIGTERM...
    h.wait_for("the listeners to close", lambda: refused(lb), process=process)
    # ... while worker 0's connections go on for their grace.
    for s in survivors:
        h.expect(answered(s), "worker 0's connection relays while stickyd drains")
    for s in survivors:
        s.close()
    expect_exit_status_1(process, "a worker failed and its last connection closed")


def refused(addr):
    try:
        with h.connect(addr, timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def test_during_the_shutdown_delay_no_new_client_waits_on_the_failed_worker():
    lb, stickyd, trigger = start_two_workers(delay="600s")
    process = stickyd.process
    survivors = fail_worker(trigger, open_clients(lb))
    h.wait_for(
        "the withdraw after the failure",
        lambda: "a worker failed (exit status 1): not ready" in process.log(),
        process=process,
    )
    status, _, _ = h.admin_request(stickyd.admin_socket, "GET", "/ready")
    h.expect_eq(status, 503, "GET /ready once a worker failed")
    # Still accepting for the delay, and only on worker 0: every new client is
    # served, none is left in the failed worker's backlog.
    for i in range(CONNECTIONS):
        with h.connect(lb, f"127.0.1.{2 + i}") as s:
            h.expect(answered(s), f"new connection {i} during the shutdown delay relays")
    for s in survivors:
        h.expect(answered(s), "worker 0's connection relays during the shutdown delay")
    # A signal during the delay stops at once; the status still says a worker failed.
    process.signal(signal.SIGTERM)
    expect_exit_status_1(process, "a worker failed and then SIGTERM")


CONTROL_FAILED = "control thread failed: io_uring_enter failed: Cannot allocate memory"


def control_thread_fails(count):
    # Checks every 200 ms keep the control loop turning: the trigger takes at once.
    # The shutdown delay keeps stickyd serving while the test looks.
    lb, stickyd, backend, trigger = start(
        "control",
        count,
        group={"health_check": {"interval": "200ms"}},
        global_={"shutdown_delay": "600s"},
    )
    process = stickyd.process
    h.expect_eq(h.whoami("127.0.0.2", lb), backend.name, "a request before the failure")
    h.write_file(os.path.basename(trigger), "")
    h.wait_for(
        "the stop after the control thread's failure",
        lambda: CONTROL_FAILED in process.log()
        and "the control thread failed (exit status 1): not ready" in process.log(),
        process=process,
    )

    status, doc = h.admin_document(stickyd.admin_socket, "/status")
    h.expect_eq(status, 503, "GET /status once the control thread failed")
    h.expect(CONTROL_FAILED in doc.get("error", ""), f"the error names the failure: {doc}")
    status, _ = h.admin_document(stickyd.admin_socket, "/ready")
    h.expect_eq(status, 503, "GET /ready once the control thread failed")
    metrics = h.admin_get(stickyd.admin_socket, "/metrics")
    h.expect("\nstickyd_control_up 0\n" in metrics, "stickyd_control_up 0 in /metrics")
    # The workers still relay, with the routing they had, for the shutdown delay.
    h.expect_eq(h.whoami("127.0.0.3", lb), backend.name, "a request after the failure")
    # A signal during the delay stops at once; the status still says what failed.
    process.signal(signal.SIGTERM)
    expect_exit_status_1(process, "the control thread failed and then SIGTERM")
    return process.log()


def test_a_failed_control_thread_stops_stickyd_and_says_so_meanwhile():
    # Once: its ring then cancels and waits out the checks in flight, and frees all.
    log = control_thread_fails(count=1)
    h.expect("its memory is never freed" not in log, "the control thread's I/O was waited out")


def test_a_control_thread_whose_ring_stays_broken_keeps_what_the_kernel_may_write():
    # Every time: nothing can be cancelled, so its memory is kept, and said so (under
    # ASan, the harness fails the test on any leak report at exit).
    log = control_thread_fails(count=None)
    h.expect(
        "control thread: cannot wait for its I/O to end" in log or "still in flight" in log,
        "the log says the control thread's memory is kept",
    )


if __name__ == "__main__":
    h.main()
