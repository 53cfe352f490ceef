#!/usr/bin/env python3
"""Adversarial reloads (issue #10): 50 SIGHUPs 0.4 s apart that add and remove a
target and a listener, 5 of them with an invalid file, while short connections keep
arriving and long ones stream throughout.

What counts as a failure: any short connection to the listener that stays ("main")
that is refused, reset, times out, ends early, or echoes other bytes than it sent.
All four targets stay running as processes (one is only added to and removed from
the file, and its connections drain for 60 s), so no connection through "main" has
an excuse. Connections to the listener that comes and goes ("extra") may be refused
or reset while it is being removed; only wrong bytes count there."""
import hashlib
import os
import random
import socket
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

KIB = 1024
FAST_CHECKS = {
    "interval": "200ms",
    "timeout": "150ms",
    "healthy_threshold": 2,
    "unhealthy_threshold": 2,
}
SOURCES = h.source_ips(40, first=2)
RELOADS = 50
INVALID_AT = (6, 15, 23, 34, 41)  # reload numbers (1-based) whose file is invalid
POOL = random.Random(5150).randbytes(4 * 1024 * KIB)


def config(lb, extra, backends, with_d, with_extra, error=None):
    listeners = [{"name": "main", "bind": h.fmt_addr(lb), "target_group": "web"}]
    if with_extra:
        listeners.append({"name": "extra", "bind": h.fmt_addr(extra), "target_group": "web"})
    members = backends if with_d else backends[:3]
    group = {
        "name": "web",
        "connect_timeout": "2s",
        "connect_retries": 2,
        "health_check": dict(FAST_CHECKS),
        "deregistration_delay": {"timeout": "60s"},
        "targets": [{"id": b.name, "address": b.address} for b in members],
    }
    text = h.config_text(listeners, [group], {"admin_socket": ADMIN[0]})
    if error == "unknown key":
        text = text.replace('id = "backend-2"', 'id = "backend-2"\nwieght = 2')
    elif error == "zero weight":
        text = text.replace('id = "backend-1"', 'id = "backend-1"\nweight = 0')
    elif error == "syntax":
        text = text.replace('name = "web"', 'name = "web', 1)
    elif error == "unknown group":
        text = text.replace('target_group = "web"', 'target_group = "nope"', 1)
    elif error == "bad port":
        text = text.replace(f'"{backends[2].address}"', '"127.0.0.1:99999"')
    if error is not None:
        h.expect(
            text != h.config_text(listeners, [group], {"admin_socket": ADMIN[0]}),
            f"the '{error}' edit changed nothing",
        )
    return text


ADMIN = [None]  # one admin socket path for every version of the file


class Daemon:
    def __init__(self, text, lb):
        self.stickyd = h.start_stickyd(text, addr=lb)
        self.process = self.stickyd.process
        self.path = self.process.argv[self.process.argv.index("--config") + 1]

    def outcomes(self):
        return [
            line
            for line in self.process.log().splitlines()
            if "reloaded " in line or "reload failed" in line
        ]

    def reload(self, text):
        """Writes the file, sends SIGHUP, returns the outcome line it produced."""
        before = len(self.outcomes())
        tmp = self.path + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.path)
        self.process.signal(1)
        lines = h.wait_for(
            "a reload outcome line",
            lambda: self.outcomes()[before:],
            timeout=10,
            process=self.process,
        )
        return lines[0]


def accepts(addr):
    try:
        with h.connect(addr, timeout=2.0):
            return True
    except (ConnectionRefusedError, ConnectionResetError):
        return False


def short_exchange(lb, ip, n):
    """One short connection: WHOAMI, a few KiB echoed, both FINs. Returns the name
    of the backend that answered."""
    off = random.randrange(0, len(POOL) - 8 * KIB)
    payload = POOL[off : off + 512 + n % (7 * KIB)]
    with h.connect(lb, ip, timeout=h.IO_TIMEOUT) as s:
        h.send_all(s, b"STICKYD-TEST WHOAMI\n" + payload)
        s.shutdown(socket.SHUT_WR)
        line = h.recv_line(s)
        got = hashlib.sha256()
        count = h.recv_until_eof(s, got)
    h.expect(
        (count, got.hexdigest()) == (len(payload), h.sha256(payload)),
        f"echo of {len(payload)} bytes came back as {count} bytes, other content",
    )
    return line.split()[0]


class LongStream:
    """Streams random chunks through the echo backend and checks every byte, from
    before the first reload until after the last."""

    def __init__(self, lb, ip):
        self.ip = ip
        self.sock = h.connect(lb, ip, timeout=30)
        h.on_cleanup(self.sock.close)
        h.send_all(self.sock, b"STICKYD-TEST WHOAMI\n")
        self.backend = h.recv_line(self.sock).split()[0]
        self.sent, self.got = hashlib.sha256(), hashlib.sha256()
        self.count = 0
        self.error = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        rng = random.Random(self.ip)
        try:
            while not self.stop.is_set():
                n = rng.randrange(1, 48 * KIB)
                off = rng.randrange(0, len(POOL) - n)
                chunk = POOL[off : off + n]
                self.sent.update(chunk)
                h.send_all(self.sock, chunk)
                self.got.update(h.recv_exact(self.sock, n))
                self.count += n
                time.sleep(0.005)
            self.sock.shutdown(socket.SHUT_WR)
            trailing = h.recv_until_eof(self.sock)
            if trailing:
                raise h.Failure(f"{trailing} bytes after the echo ended")
        except BaseException as e:  # reported by finish()
            self.error = e

    def finish(self):
        self.stop.set()
        self.thread.join(30)
        h.expect(not self.thread.is_alive(), f"long stream from {self.ip} hung")
        h.expect(
            self.error is None,
            f"long stream from {self.ip} to {self.backend} failed "
            f"after {self.count} bytes: {self.error!r}",
        )
        h.expect_eq(
            self.got.hexdigest(),
            self.sent.hexdigest(),
            f"SHA-256 of {self.count} bytes streamed from {self.ip} to {self.backend}",
        )
        return self.count


def test_fifty_sighups_under_load_with_five_invalid_files():
    backends = h.start_backends(4)  # backend-4 comes and goes
    lb, extra = h.lb_addr(), h.lb_addr()
    ADMIN[0] = os.path.join(h.temp_dir(), "admin.sock")
    d = Daemon(config(lb, extra, backends, False, False), lb)
    owner = {ip: short_exchange(lb, ip, 0) for ip in SOURCES}
    h.expect(len(set(owner.values())) == 3, f"the 40 sources do not reach all three: {owner}")
    streams = [LongStream(lb, ip) for ip in SOURCES[:8]]

    stop = threading.Event()
    lock = threading.Lock()
    main_ok, main_errors, moved, to_d = [0], [], [], [0]
    extra_ok, extra_refused, extra_errors = [0], [0], []

    def hammer_main(k):
        i = k
        while not stop.is_set():
            ip = SOURCES[i % len(SOURCES)]
            i += 3
            try:
                name = short_exchange(lb, ip, i)
                with lock:
                    main_ok[0] += 1
                    to_d[0] += name == "backend-4"
                    if name not in (owner[ip], "backend-4"):
                        moved.append((ip, owner[ip], name))
            except Exception as e:  # noqa: BLE001 - every failure counts
                with lock:
                    main_errors.append(f"{ip}: {type(e).__name__}: {e}")

    def hammer_extra():
        i = 0
        while not stop.is_set():
            ip = SOURCES[i % len(SOURCES)]
            i += 1
            try:
                short_exchange(extra, ip, i)
                with lock:
                    extra_ok[0] += 1
            except OSError:  # refused, reset, timed out
                with lock:
                    extra_refused[0] += 1
                time.sleep(0.01)
            except h.Failure as e:
                if "echo of" in str(e):
                    with lock:
                        extra_errors.append(f"{ip}: {e}")
                else:  # closed before the line: reset or refused in all but name
                    with lock:
                        extra_refused[0] += 1

    threads = [threading.Thread(target=hammer_main, args=(k,), daemon=True) for k in range(3)]
    threads.append(threading.Thread(target=hammer_extra, daemon=True))
    for t in threads:
        t.start()

    errors_kinds = ["unknown key", "zero weight", "syntax", "unknown group", "bad port"]
    state = (False, False)  # (with backend-4, with "extra") now running
    failed_lines = []
    try:
        for n in range(1, RELOADS + 1):
            started = time.monotonic()
            want = ((n // 4) % 2 == 1, (n // 6) % 2 == 1)
            if n in INVALID_AT:
                # The opposite of what runs, so that applying it would show.
                bad = (not state[0], not state[1])
                kind = errors_kinds[INVALID_AT.index(n)]
                line = d.reload(config(lb, extra, backends, *bad, error=kind))
                h.expect(
                    "reload failed, still serving the previous configuration" in line,
                    f"reload {n} ({kind}) answered: {line}",
                )
                failed_lines.append(line)
                h.expect(d.process.alive(), f"stickyd died on invalid reload {n}")
                h.expect_eq(
                    accepts(extra), state[1], f"'extra' accepting after invalid reload {n} ({kind})"
                )
            else:
                line = d.reload(config(lb, extra, backends, *want))
                h.expect("reloaded " in line, f"reload {n} answered: {line}")
                state = want
                h.wait_for(
                    f"'extra' {'accepting' if state[1] else 'refusing'} after reload {n}",
                    lambda: accepts(extra) == state[1],
                    timeout=10,
                    process=d.process,
                )
            time.sleep(max(0.0, 0.4 - (time.monotonic() - started)))
        in_flight = main_ok[0]
        h.wait_for(
            "short connections after the last reload",
            lambda: main_ok[0] >= in_flight + 20,
            timeout=20,
        )
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    streamed = [s.finish() for s in streams]

    h.expect(
        not main_errors,
        f"{len(main_errors)} of {main_ok[0] + len(main_errors)} short "
        f"connections to 'main' failed, first: {main_errors[:3]}",
    )
    h.expect(main_ok[0] >= 200, f"only {main_ok[0]} short connections during {RELOADS} reloads")
    h.expect(not extra_errors, f"wrong bytes through 'extra': {extra_errors[:3]}")
    h.expect(
        extra_ok[0] > 0,
        f"no connection through 'extra' completed " f"({extra_refused[0]} refused or reset)",
    )
    h.expect(to_d[0] > 0, "no short connection reached backend-4 while it was configured")
    h.expect(not moved, f"clients moved between targets that stayed: {moved[:5]}")
    h.expect(min(streamed) > 0, f"a long stream moved nothing: {streamed}")
    h.expect_eq(len(d.outcomes()), RELOADS, "reload outcome lines")
    h.expect_eq(len(failed_lines), len(INVALID_AT), "failed reloads")
    h.expect(d.process.alive(), "stickyd exited")


if __name__ == "__main__":
    h.main(deadline=110)
