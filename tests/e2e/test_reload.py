#!/usr/bin/env python3
"""Reload on SIGHUP: the new config is validated first (a bad one changes nothing),
then applied as a difference: unchanged targets keep their health and connections,
removed ones are deregistered with their group's delay, listeners come and go, and
nothing in flight is dropped."""
import os
import socket
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

FAST_CHECKS = {
    "interval": "200ms",
    "timeout": "150ms",
    "healthy_threshold": 2,
    "unhealthy_threshold": 2,
}
SOURCES = h.source_ips(40)


def group(backends, **extra):
    g = {
        "name": "web",
        "connect_timeout": "1s",
        "connect_retries": 2,
        "health_check": dict(FAST_CHECKS),
        "targets": [{"id": b.name, "address": b.address} for b in backends],
    }
    for key, value in extra.items():
        g[key] = value
    return g


def config(listeners, groups, **global_):
    return h.config_text(listeners, groups, global_)


def one_listener(lb, backends, **extra):
    return config([{"bind": h.fmt_addr(lb), "target_group": "web"}], [group(backends, **extra)])


class Daemon:
    """A stickyd whose config file the test rewrites and reloads."""

    def __init__(self, text, lb):
        self.stickyd = h.start_stickyd(text, addr=lb)
        self.process = self.stickyd.process
        self.path = self.process.argv[self.process.argv.index("--config") + 1]

    def reload(self, text, outcome="reloaded"):
        """Writes the config and sends SIGHUP; returns the log line that answered."""
        before = self.count(r"reloaded |reload failed")
        tmp = self.path + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.path)  # stickyd never reads a half-written file
        self.process.signal(1)  # SIGHUP
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            lines = [
                line
                for line in self.process.log().splitlines()
                if "reloaded " in line or "reload failed" in line
            ]
            if len(lines) > before:
                line = lines[before]
                h.expect(outcome in line, f"expected a '{outcome}' line, got: {line}")
                return line
            h.expect(self.process.alive(), f"stickyd died on reload\n{self.process.describe()}")
            time.sleep(0.02)
        raise h.Failure(f"no reload outcome logged within 10s\n{self.process.describe()}")

    def count(self, pattern):
        import re

        return len(re.findall(pattern, self.process.log()))

    def wait_log(self, pattern, timeout=10.0):
        import re

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.process.log())
            if m:
                return m.group(0)
            time.sleep(0.02)
        raise h.Failure(f"log never matched {pattern!r}\n{self.process.describe()}")


def echo_connection(lb, src_ip):
    s = h.connect(lb, src_ip)
    h.on_cleanup(s.close)
    return s


def echo_ok(s, tag):
    """One request/response exchange that leaves the connection open."""
    payload = h.random_payload(4096, seed=hash(tag) & 0xFFFF)
    h.send_all(s, payload)
    h.expect_eq(h.sha256(h.recv_exact(s, len(payload))), h.sha256(payload), f"echo on {tag}")


def ip_owned_by(lb, backend_name, sources=SOURCES):
    for ip in sources:
        if h.whoami(ip, lb) == backend_name:
            return ip
    raise h.Failure(f"none of {len(sources)} source IPs maps to {backend_name}")


def wait_closed_by_peer(s, timeout):
    """True once the connection ends (EOF or reset) within timeout seconds."""
    s.settimeout(timeout)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def test_twenty_reloads_under_load_lose_nothing():
    b = h.start_backends(4)
    lb = h.lb_addr()
    three = one_listener(lb, b[:3], deregistration_delay={"timeout": "60s"})
    four = one_listener(lb, b, deregistration_delay={"timeout": "60s"})
    d = Daemon(three, lb)
    owner = h.mapping(lb, SOURCES)
    # Long-lived connections that must carry data across every reload.
    held = [echo_connection(lb, ip) for ip in SOURCES[:6]]

    stop = threading.Event()
    errors, seen, done = [], [], [0]
    lock = threading.Lock()

    def hammer(offset):
        i = offset
        while not stop.is_set():
            ip = SOURCES[i % len(SOURCES)]
            i += 3
            try:
                name = h.whoami(ip, lb)
                with lock:
                    done[0] += 1
                    seen.append((ip, name))
            except Exception as e:  # noqa: BLE001 - every failure counts
                with lock:
                    errors.append(f"{ip}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=hammer, args=(k,), daemon=True) for k in range(3)]
    for t in threads:
        t.start()
    try:
        for n in range(20):
            d.reload(four if n % 2 == 0 else three)
            for k, s in enumerate(held):
                echo_ok(s, f"held connection {k} after reload {n + 1}")
            time.sleep(0.15)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=20)
    h.expect(
        not errors,
        f"{len(errors)} of {done[0] + len(errors)} requests failed during "
        f"reloads, first: {errors[:3]}",
    )
    h.expect(done[0] >= 100, f"only {done[0]} requests completed during 20 reloads")
    # Unchanged targets kept serving their own clients throughout: an IP only ever
    # left its owner for the target that was being added.
    moved = [(ip, name) for ip, name in seen if name not in (owner[ip], "backend-4")]
    h.expect(not moved, f"clients moved between unchanged targets: {moved[:5]}")
    h.expect_eq(d.count(r"reloaded "), 20, "reloads logged")


def test_invalid_reload_keeps_the_old_config_serving():
    b = h.start_backends(3)
    lb = h.lb_addr()
    good = one_listener(lb, b)
    d = Daemon(good, lb)
    before = h.mapping(lb, SOURCES[:20])
    held = echo_connection(lb, SOURCES[0])

    bad = good.replace('id = "backend-2"', 'id = "backend-2"\nwieght = 2')
    line = d.reload(bad, outcome="reload failed")
    h.expect(
        f"{d.path}:" in line and "wieght: unknown key" in line,
        f"the reload error names the file, line and key: {line}",
    )
    h.expect("previous configuration" in line, f"the error says what still runs: {line}")
    h.expect_eq(h.mapping(lb, SOURCES[:20]), before, "mapping after a failed reload")
    echo_ok(held, "connection opened before the failed reload")

    # A listener whose port is taken by someone else also fails the whole reload.
    squatter = socket.socket()
    h.on_cleanup(squatter.close)
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()
    with_taken = config(
        [
            {"bind": h.fmt_addr(lb), "target_group": "web"},
            {"bind": h.fmt_addr(taken), "target_group": "web"},
        ],
        [group(b)],
    )
    line = d.reload(with_taken, outcome="reload failed")
    h.expect(h.fmt_addr(taken) in line, f"the error names the address in use: {line}")
    h.expect_eq(h.mapping(lb, SOURCES[:20]), before, "mapping after a second failed reload")

    # Fixing the file and reloading again applies it, and the log counts in words.
    line = d.reload(one_listener(lb, b[:2]))
    h.expect(
        line.endswith(
            f"reloaded {d.path}: 1 listener (0 added, 0 removed), 1 target group, "
            "2 static targets"
        ),
        f"the reload line: {line}",
    )
    after = h.mapping(lb, SOURCES[:20])
    h.expect("backend-3" not in after.values(), f"backend-3 still gets clients: {after}")
    for ip, name in before.items():
        if name != "backend-3":
            h.expect_eq(after[ip], name, f"owner of {ip} after removing backend-3")
    echo_ok(held, "connection opened before both reloads")


def test_deeply_nested_reload_keeps_the_old_config_serving():
    # Regression: a SIGHUP with one of these files overflowed the stack inside the
    # TOML parser and killed the daemon.
    b = h.start_backends(3)
    lb = h.lb_addr()
    good = one_listener(lb, b)
    d = Daemon(good, lb)
    before = h.mapping(lb, SOURCES[:20])
    held = echo_connection(lb, SOURCES[0])
    deep = {
        "dotted key": ("a." * 50_000 + "a = 1\n", 65),
        "table header": ("[" + "a." * 50_000 + "a]\n", 66),
        "inline tables": ("a = {" * 50_000 + "}" * 50_000 + "\n", 81),
        "arrays": ("a = " + "[" * 50_000 + "]" * 50_000 + "\n", 36),
    }
    for case, (text, column) in deep.items():
        # Above a valid config, so nothing else in the file is wrong.
        line = d.reload(text + "\n" + good, outcome="reload failed")
        wanted = f"{d.path}:1:{column}: nesting deeper than 32"
        h.expect(line.endswith(wanted), f"{case}: the reload error is not {wanted!r}: {line}")
        h.expect(d.process.alive(), f"{case}: stickyd died\n{d.process.describe()}")
        h.expect_eq(h.mapping(lb, SOURCES[:20]), before, f"{case}: mapping after the reload")
        echo_ok(held, f"{case}: connection opened before the failed reload")
    d.reload(one_listener(lb, b[:2]))
    h.expect(
        "backend-3" not in h.mapping(lb, SOURCES[:20]).values(),
        "a valid reload after the failed ones was not applied",
    )


def removed_target_case(delay):
    b = h.start_backends(2)
    lb = h.lb_addr()
    d = Daemon(one_listener(lb, b, deregistration_delay=delay), lb)
    ip = ip_owned_by(lb, "backend-2")
    held = echo_connection(lb, ip)
    echo_ok(held, "connection to backend-2")
    d.reload(one_listener(lb, b[:1], deregistration_delay=delay))
    d.wait_log(r"target backend-2 \(127\.0\.0\.1:\d+\) is (deregistering|draining)")
    # New connections from the same client go elsewhere at once.
    h.expect_eq(h.whoami(ip, lb), "backend-1", f"new connection from {ip} after removal")
    return d, held


def test_removed_target_keeps_connections_until_the_delay():
    d, held = removed_target_case({"timeout": "3s"})
    # Well inside the delay the old connection still works...
    echo_ok(held, "connection to the removed target, inside the delay")
    # ...and once the delay is over it is closed.
    h.expect(wait_closed_by_peer(held, 15), "the connection outlived the deregistration delay")
    d.wait_log(r"deregistration delay .*ended|reset \d+ connections")


def test_connection_termination_closes_at_once():
    d, held = removed_target_case({"timeout": "300s", "connection_termination": True})
    h.expect(
        wait_closed_by_peer(held, 10), "connection_termination = true left the connection open"
    )


def test_listeners_are_added_and_removed():
    b = h.start_backends(2)
    lb = h.lb_addr()
    second = h.lb_addr()
    d = Daemon(one_listener(lb, b), lb)
    both = config(
        [
            {"name": "one", "bind": h.fmt_addr(lb), "target_group": "web"},
            {"name": "two", "bind": h.fmt_addr(second), "target_group": "web"},
        ],
        [group(b)],
    )
    d.reload(both)
    h.wait_accepting(second, d.process)
    h.expect_eq(
        h.whoami(SOURCES[0], second),
        h.whoami(SOURCES[0], lb),
        "both listeners route a client alike",
    )
    held = echo_connection(second, SOURCES[1])
    echo_ok(held, "connection through the added listener")

    only_first = config(
        [{"name": "one", "bind": h.fmt_addr(lb), "target_group": "web"}], [group(b)]
    )
    d.reload(only_first)
    deadline = time.monotonic() + 10
    while True:
        try:
            with h.connect(second, timeout=1.0):
                pass
        except ConnectionRefusedError:
            break
        except ConnectionResetError:
            pass
        h.expect(time.monotonic() < deadline, "the removed listener still accepts")
        time.sleep(0.05)
    echo_ok(held, "connection through the removed listener")
    h.whoami(SOURCES[0], lb)


def test_unchanged_targets_keep_their_health():
    b = h.start_backends(3)
    lb = h.lb_addr()
    d = Daemon(one_listener(lb, b), lb)
    b[2].stop()
    d.wait_log(r"target backend-3 \(127\.0\.0\.1:\d+\) is unhealthy")
    # The reload changes nothing about backend-3: it stays unhealthy, so there is no
    # second "unhealthy" transition (which a reset to `initial` would produce) and no
    # client is sent to it.
    d.reload(one_listener(lb, b, connect_retries=1))
    time.sleep(1.0)  # five check intervals
    h.expect_eq(
        d.count(r"target backend-3 \(127\.0\.0\.1:\d+\) is unhealthy"),
        1,
        "unhealthy transitions of backend-3",
    )
    names = set(h.mapping(lb, SOURCES[:20]).values())
    h.expect("backend-3" not in names, f"clients reached the stopped backend: {names}")


if __name__ == "__main__":
    h.main()
