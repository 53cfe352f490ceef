#!/usr/bin/env python3
"""The admin endpoint under a slowloris: 500 connections that trickle their request
head at one byte a second hold one of the daemon's admin addresses (TCP or the unix
socket), and the other still answers stickyctl and plain HTTP promptly. The clients
that lose their place are told so with an HTTP 503 and a JSON error, never a reset."""
import http.client
import json
import os
import socket
import sys
import threading

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

SLOW = 500
HEAD = b"GET /status HTTP/1.1\r\nHost: stickyd\r\nX-Slow: "
# A generous bound on one prompt request while the slow ones are held; a request
# the endpoint cannot answer waits forever, so this separates pass from fail.
ANSWER_WITHIN = 5.0


class Slowloris:
    """SLOW connections, each sending HEAD one byte a second and never finishing."""

    def __init__(self, connect):
        self.socks = []
        self.replies = {}  # socket -> "503", "reset" or "other: ..."
        self.buffers = {}
        for _ in range(SLOW):
            s = connect()
            s.setblocking(False)
            try:
                s.send(HEAD[:1])
            except OSError:
                pass  # already told to go away: outcome() reads what it was told
            self.socks.append(s)
        self.sent = 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()
        h.on_cleanup(self.close)

    def _trickle(self):
        while not self._stop.wait(1.0):
            byte = HEAD[self.sent : self.sent + 1] or b"x"
            self.sent += 1
            for s in list(self.socks):
                if s.fileno() >= 0 and s not in self.replies:
                    try:
                        s.send(byte)
                    except OSError:
                        pass  # told to go away: outcome() reads what it was told

    def outcome(self):
        """(busy, waiting, other): a complete 503 with a JSON error and EOF; no answer
        yet; anything else (a reset, a wrong answer). A 408 with a JSON error (still in
        the budget when the head's deadline passed) counts as neither."""
        busy = waiting = other = 0
        for s in self.socks:
            done = self.replies.get(s)
            if done is None:
                done = self._read(s)
            if done is None:
                waiting += 1
            elif done == "503":
                busy += 1
            elif done != "408":
                other += 1
        return busy, waiting, other

    def _read(self, s):
        """What s was told, once it has all arrived (EOF or a reset); else None."""
        while True:
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                return None
            except ConnectionResetError:
                self.replies[s] = "reset"
                return "reset"
            if not chunk:
                break
            self.buffers[s] = self.buffers.get(s, b"") + chunk
        text = self.buffers.pop(s, b"").decode("utf-8", "replace")
        status = json_error_status(text)
        self.replies[s] = status if status in ("503", "408") else f"other: {text[:200]!r}"
        return self.replies[s]

    def close(self):
        self._stop.set()
        self._thread.join(2)
        for s in self.socks:
            s.close()


def json_error_status(text):
    """The status of a complete answer with a JSON error body, else None."""
    head, _, body = text.partition("\r\n\r\n")
    if not head.startswith("HTTP/1.1 "):
        return None
    try:
        return head[9:12] if isinstance(json.loads(body)["error"], str) else None
    except (ValueError, KeyError, TypeError):
        return None


def start_with_tcp_admin():
    h.need_open_files(4096)
    backends = h.start_backends(1)
    lb = h.lb_addr()
    port = h.free_port()
    config = h.simple_config(
        h.fmt_addr(lb), backends, global_={"admin_address": f"127.0.0.1:{port}"}
    )
    stickyd = h.start_stickyd(config, addr=lb)
    return stickyd, ("127.0.0.1", port)


def tcp_connect(address):
    return lambda: socket.create_connection(address, timeout=h.IO_TIMEOUT)


def unix_connect(path):
    def connect():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Blocking: with a timeout a unix connect fails at once (EAGAIN) while the
        # backlog is full instead of waiting its turn as TCP's does.
        s.connect(path)
        s.settimeout(h.IO_TIMEOUT)
        return s

    return connect


def stickyctl_status(where):
    result = h.run([h.STICKYCTL_BIN, "status", "--json", "--admin", where], timeout=ANSWER_WITHIN)
    h.expect(
        result.returncode == 0,
        f"stickyctl status --admin {where} exited {result.returncode}: {result.stderr}",
    )
    return json.loads(result.stdout)


def http_status(address):
    conn = http.client.HTTPConnection(address[0], address[1], timeout=ANSWER_WITHIN)
    try:
        conn.request("GET", "/status")
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8")
    finally:
        conn.close()


def expect_told_not_reset(slow, budget, stickyd):
    """Every connection beyond the budget is answered 503 with JSON; none is reset.
    (One that timed out first is answered 408, which is fine too.)"""
    seen = {}

    def settled():
        seen["outcome"] = slow.outcome()
        busy, waiting, other = seen["outcome"]
        return other > 0 or waiting <= budget

    h.wait_for(
        "the slow clients beyond the budget to be answered", settled, process=stickyd.process
    )
    busy, waiting, other = seen["outcome"]
    h.expect(busy > 0, "no slow client was answered 503")
    problems = [r for r in slow.replies.values() if r not in ("503", "408")]
    h.expect(other == 0, f"{other} slow clients got something else than a 503: {problems[:3]}")


def test_500_slow_tcp_clients_leave_the_unix_socket_and_a_prompt_client_served():
    stickyd, admin_tcp = start_with_tcp_admin()
    slow = Slowloris(tcp_connect(admin_tcp))
    status = stickyctl_status(stickyd.admin_socket)
    h.expect_eq(status["groups"][0]["name"], "web", "stickyctl status over the unix socket")
    # Prompt clients from the same address as the slow ones take the oldest's place.
    for _ in range(3):
        code, body = http_status(admin_tcp)
        h.expect_eq(code, 200, f"GET /status over TCP: {body}")
    expect_told_not_reset(slow, 8, stickyd)


def test_500_slow_unix_clients_leave_tcp_and_a_prompt_client_served():
    stickyd, admin_tcp = start_with_tcp_admin()
    slow = Slowloris(unix_connect(stickyd.admin_socket))
    code, body = http_status(admin_tcp)
    h.expect_eq(code, 200, f"GET /status over TCP: {body}")
    status = stickyctl_status(stickyd.admin_socket)
    h.expect_eq(status["groups"][0]["name"], "web", "stickyctl status over the unix socket")
    expect_told_not_reset(slow, 64, stickyd)


if __name__ == "__main__":
    h.main()
