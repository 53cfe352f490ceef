#!/usr/bin/env python3
"""Logging to systemd's journal: when JOURNAL_STREAM names stderr (sd-daemon(3)),
every line starts with its <N> syslog priority and carries no timestamp of
stickyd's own, so `journalctl -p warning` selects warnings and lines show one
timestamp. Any other JOURNAL_STREAM (a stale one inherited through a pipe) leaves
the plain format alone."""
import os
import re
import signal
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

PLAIN = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (info |warn |error|debug) ")


def run_logging(journal_stream_for):
    """Starts quick mode before one live and one refusing target with fast checks,
    its stderr in a file, JOURNAL_STREAM = journal_stream_for(stat of that file);
    returns the log once the refusing target was reported unhealthy (a warning)."""
    live = h.start_backend("live")
    dead = ("127.0.0.1", h.free_port())
    lb = h.lb_addr()
    path = os.path.join(h.temp_dir(), "stderr.log")
    log = open(path, "wb")
    h.on_cleanup(log.close)
    st = os.fstat(log.fileno())
    env = dict(os.environ, JOURNAL_STREAM=journal_stream_for(st))
    argv = [
        h.STICKYD_BIN,
        "--listen",
        h.fmt_addr(lb),
        "--target",
        live.address,
        "--target",
        h.fmt_addr(dead),
        "--health-interval",
        "200ms",
        "--admin-socket",
        os.path.join(h.temp_dir(), "admin.sock"),
    ]
    p = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True
    )
    h.on_cleanup(lambda: p.poll() is None and p.kill())

    def read():
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    h.wait_for("the refusing target's warning", lambda: "is unhealthy" in read())
    p.send_signal(signal.SIGTERM)
    h.expect_eq(p.wait(timeout=15), 0, "exit status")
    return read()


def test_journal_lines_carry_priorities_and_no_timestamp():
    text = run_logging(lambda st: f"{st.st_dev}:{st.st_ino}")
    lines = text.splitlines()
    h.expect(lines, "no log lines")
    for line in lines:
        h.expect(
            re.match(r"^<[3467]>(info |warn |error|debug) \S", line),
            f"not a journal line: {line!r}\n{text}",
        )
    h.expect(
        any(line.startswith("<4>warn ") and "is unhealthy" in line for line in lines),
        f"no <4> warning for the unhealthy target:\n{text}",
    )
    h.expect(any(line.startswith("<6>info ") for line in lines), f"no <6> info line:\n{text}")


def test_a_journal_stream_naming_another_file_changes_nothing():
    text = run_logging(lambda st: f"{st.st_dev}:{st.st_ino + 1}")
    for line in text.splitlines():
        h.expect(PLAIN.match(line), f"not a plain timestamped line: {line!r}\n{text}")


if __name__ == "__main__":
    h.main()
