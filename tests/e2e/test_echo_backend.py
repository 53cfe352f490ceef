#!/usr/bin/env python3
"""stickyd-echo on its own (no stickyd): the backend every other e2e test and the
benchmarks rely on does what its --help promises."""
import os
import socket
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def read_response(sock, buffered=b"", head_request=False):
    """Reads one HTTP response. Returns (status, headers dict, body, leftover bytes)."""
    data = h.recv_head(sock, buffered)
    if b"\r\n\r\n" not in data:
        raise h.Failure(f"connection closed inside a response head: {data!r}")
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head_request else int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise h.Failure("connection closed inside a response body")
        rest += chunk
    return status, headers, rest[:length].decode(), rest[length:]


def request(path, method="GET", version="HTTP/1.1", extra=""):
    return f"{method} {path} {version}\r\nHost: t\r\n{extra}\r\n".encode()


def test_http_paths_and_statuses():
    b = h.start_backend("alpha")
    with h.connect(b.addr) as s:
        h.send_all(
            s,
            request("/hostname")
            + request("/")
            + request("/status/503")
            + request("/status/204")
            + request("/nope")
            + request("/hostname", "HEAD"),
        )
        rest = b""
        got = []
        for i in range(6):
            status, headers, body, rest = read_response(s, rest, head_request=(i == 5))
            got.append((status, body))
        h.expect_eq(headers.get("content-length"), "6", "Content-Length of the HEAD response")
    h.expect_eq(
        got,
        [
            (200, "alpha\n"),
            (200, "alpha\n"),
            (503, "alpha\n"),
            (204, ""),
            (404, "alpha\n"),
            (200, ""),
        ],
        "pipelined responses on one keep-alive connection",
    )


def test_http_request_body_is_skipped():
    b = h.start_backend("alpha")
    with h.connect(b.addr) as s:
        body = b"x" * 100000
        h.send_all(
            s,
            request("/hostname", "POST", extra=f"Content-Length: {len(body)}\r\n")
            + body
            + request("/hostname"),
        )
        status1, _, _, rest = read_response(s)
        status2, _, body2, _ = read_response(s, rest)
    h.expect_eq((status1, status2, body2), (405, 200, "alpha\n"), "POST with a body, then GET")


def test_http_connection_close_and_http10_end_the_connection():
    b = h.start_backend("alpha")
    for what, req in [
        ("Connection: close", request("/hostname", extra="Connection: close\r\n")),
        ("HTTP/1.0", request("/hostname", version="HTTP/1.0")),
    ]:
        with h.connect(b.addr) as s:
            h.send_all(s, req)
            status, headers, body, rest = read_response(s)
            h.expect_eq((status, body, rest), (200, "alpha\n", b""), what)
            h.expect_eq(headers.get("connection"), "close", f"{what}: Connection header")
            h.expect_eq(h.wait_closed(s), "eof", f"{what}: end of connection")
    with h.connect(b.addr) as s:  # HTTP/1.0 keep-alive, as ab -k sends it
        req = request("/hostname", version="HTTP/1.0", extra="Connection: keep-alive\r\n")
        h.send_all(s, req + req)
        _, _, _, rest = read_response(s)
        status, _, body, _ = read_response(s, rest)
        h.expect_eq((status, body), (200, "alpha\n"), "second HTTP/1.0 keep-alive request")


def test_raw_echo_and_half_close():
    b = h.start_backend("alpha")
    payload = h.random_payload(5 * 1024 * 1024, seed=9)
    with h.connect(b.addr) as s:
        count, digest = h.echo_roundtrip(s, payload)
    h.expect_eq((count, digest), (len(payload), h.sha256(payload)), "5 MiB echo")
    with h.connect(b.addr) as s:  # a lone "G" could become "GET ": echoed after a pause
        h.send_all(s, b"G")
        h.expect_eq(h.recv_exact(s, 1), b"G", "echo of a lone G")
        h.send_all(s, b"ET / HTTP/1.1\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        rest = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            rest += chunk
        h.expect_eq(rest, b"ET / HTTP/1.1\r\n\r\n", "the rest, echoed as raw data")


def test_control_commands():
    b = h.start_backend("alpha")
    with h.connect(b.addr, "127.0.0.9") as s:
        h.send_all(s, b"STICKYD-TEST WHOAMI\nafter")
        h.expect_eq(h.recv_line(s), "alpha 127.0.0.9", "WHOAMI")
        h.expect_eq(h.recv_exact(s, 5), b"after", "echo after WHOAMI")
    with h.connect(b.addr) as s:
        h.send_all(s, b"STICKYD-TEST SINK-THEN-REPLY 100003\n" + b"y" * 50000)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        h.expect_eq(data, h.pattern(100003), "SINK-THEN-REPLY data")
    with h.connect(b.addr) as s:
        h.send_all(s, b"STICKYD-TEST HOLD\n" + b"z" * 100000)
        s.shutdown(socket.SHUT_WR)
        h.expect_eq(h.recv_until_eof(s), 0, "bytes sent back by HOLD")
    with h.connect(b.addr) as s:
        h.send_all(s, b"STICKYD-TEST NONSENSE\n")
        h.expect(h.recv_line(s).startswith("ERR "), "reply to an unknown command")
        h.expect_eq(h.wait_closed(s), "eof", "end after ERR")


def test_many_idle_connections():
    b = h.start_backend("alpha")
    socks = []
    try:
        for i in range(1000):
            socks.append(h.connect(b.addr, f"127.0.{1 + i // 250}.{1 + i % 250}"))
        for s in socks:
            h.send_all(s, request("/hostname"))
        for s in socks:
            status, _, body, _ = read_response(s)
            h.expect_eq((status, body), (200, "alpha\n"), "response on one of 1000 connections")
    finally:
        for s in socks:
            s.close()


if __name__ == "__main__":
    h.main()
