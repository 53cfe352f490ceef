#!/usr/bin/env python3
"""PROXY protocol.

proxy_protocol_v2 (NLB proxy_protocol_v2.enabled): every connection to a target
starts with a v2 header naming the client and the address it connected to, before
any client byte; checked byte by byte with a stub backend and end to end with
nginx's stream module.

accept_proxy_protocol: clients send a v1 or v2 header first; stickiness hashes the
address in it, the bytes after it reach the target intact, and a bad or missing
header closes the client."""
import os
import re
import shutil
import socket
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

SOURCES = h.source_ips(6)  # 127.0.0.2 ... 127.0.0.7
FAKE_CLIENTS = h.source_ips(40, first=20)  # addresses only ever written into headers


def start_lb(targets, *flags, host="127.0.0.1", threads=2):
    lb = h.lb_addr(host)
    args = ["--listen", h.fmt_addr(lb), "--threads", str(threads), *flags]
    for t in targets:
        args += ["--target", t]
    return lb, h.start_stickyd(args=args, addr=lb)


def header_then_payload(conn):
    """Stub backend: reads the v2 header and the client's line after it, answers
    'ok'. None for stickyd's readiness probe (header, then EOF)."""
    header = h.read_proxy_v2(conn)
    try:
        line = h.recv_line(conn)
    except h.Failure:
        return None
    h.send_all(conn, b"ok\n")
    return header, line


# ---------------------------------------------------------------------------------
# proxy_protocol_v2: stickyd -> target


def test_v2_header_names_client_and_listener_before_any_client_byte():
    backend = h.PyServer(header_then_payload)
    lb, _ = start_lb([backend.address], "--proxy-protocol-v2")
    for ip in SOURCES:
        with h.connect(lb, ip) as s:
            # Sent at once, before the target connection even exists: the header must
            # still come first.
            h.send_all(s, b"hello from %s\n" % ip.encode())
            h.expect_eq(h.recv_line(s), "ok", "reply")
            client_port = s.getsockname()[1]
        (command, src, dst), line = backend.result()
        h.expect_eq(command, 1, "PROXY command")
        h.expect_eq(src, (ip, client_port), "source in the header")
        h.expect_eq(dst, lb, "destination in the header")
        h.expect_eq(line, f"hello from {ip}", "client data after the header")


def test_v2_header_over_ipv6_and_dual_stack():
    if not h.ipv6_available():
        h.skip("no IPv6 on loopback")
    backend = h.PyServer(header_then_payload)
    lb6, _ = start_lb([backend.address], "--proxy-protocol-v2", host="::1")
    with h.connect(lb6) as s:
        h.send_all(s, b"six\n")
        h.expect_eq(h.recv_line(s), "ok", "reply")
        port = s.getsockname()[1]
    (command, src, dst), line = backend.result()
    h.expect_eq((command, src, dst, line), (1, ("::1", port), lb6, "six"), "IPv6 header")
    # [::] also takes IPv4 clients: their IPv4-mapped addresses go out as plain IPv4
    # (family INET), the same address stickiness hashed.
    port_any = h.free_port("::")
    h.start_stickyd(
        args=[
            "--listen",
            f"[::]:{port_any}",
            "--target",
            backend.address,
            "--proxy-protocol-v2",
            "--threads",
            "2",
        ],
        addr=("127.0.0.1", port_any),
    )
    with h.connect(("127.0.0.1", port_any), "127.0.0.5") as s:
        h.send_all(s, b"four\n")
        h.expect_eq(h.recv_line(s), "ok", "reply")
        port = s.getsockname()[1]
    (command, src, dst), line = backend.result()
    h.expect_eq(
        (src, dst),
        (("127.0.0.5", port), ("127.0.0.1", port_any)),
        "addresses for an IPv4 client of a dual-stack listener",
    )


def test_no_header_without_the_setting():
    def raw_first_line(conn):
        try:
            return h.recv_line(conn)
        except h.Failure:
            return None

    backend = h.PyServer(raw_first_line)
    lb, _ = start_lb([backend.address])
    with h.connect(lb, "127.0.0.2") as s:
        h.send_all(s, b"plain\n")
    h.expect_eq(backend.result(), "plain", "first bytes the target saw")


def start_nginx():
    """nginx with only the stream module, answering each connection with the client
    address from its PROXY header. Its own prefix, config, pid and logs in the
    test's temp dir; nothing system-wide."""
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )
    module = "/usr/lib/nginx/modules/ngx_stream_module.so"
    if nginx is None or not os.path.exists(module):
        h.skip("nginx with the stream module is not installed (scripts/setup installs it)")
    prefix = os.path.join(h.temp_dir(), "nginx")
    os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
    port = h.free_port()
    conf = h.write_file(
        "nginx.conf",
        f"""
load_module {module};
daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log info;
events {{ worker_connections 128; }}
stream {{
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        return "$proxy_protocol_addr\\n";
    }}
}}
""",
    )
    process = h.Process(
        [nginx, "-p", prefix, "-e", f"{prefix}/logs/error.log", "-c", conf], "nginx"
    )
    h.wait_accepting(("127.0.0.1", port), process)
    return f"127.0.0.1:{port}"


def test_nginx_sees_each_client_address():
    nginx = start_nginx()
    lb, _ = start_lb([nginx], "--proxy-protocol-v2")
    for ip in SOURCES:
        with h.connect(lb, ip) as s:
            h.expect_eq(h.recv_line(s), ip, f"client address nginx saw for {ip}")
    if h.ipv6_available():
        lb6, _ = start_lb([nginx], "--proxy-protocol-v2", host="::1")
        with h.connect(lb6) as s:
            h.expect_eq(h.recv_line(s), "::1", "client address nginx saw over IPv6")


def test_nginx_sees_the_original_client_through_two_proxy_hops():
    # A client behind another balancer: its header names 198.51.100.7 (never
    # contacted); stickyd forwards that, not the balancer's own address.
    nginx = start_nginx()
    lb, _ = start_lb([nginx], "--proxy-protocol-v2", "--accept-proxy-protocol")
    for header in (
        h.proxy_v1_header(("198.51.100.7", 40000), lb),
        h.proxy_v2_header(("198.51.100.7", 40000), lb),
    ):
        with h.connect(lb, "127.0.0.2") as s:
            h.send_all(s, header)
            h.expect_eq(h.recv_line(s), "198.51.100.7", "client address nginx saw")
    with h.connect(lb, "127.0.0.3") as s:
        # LOCAL: the connection's own peer is the client.
        h.send_all(s, h.proxy_v2_header(None, None, command=0))
        h.expect_eq(h.recv_line(s), "127.0.0.3", "client address nginx saw after LOCAL")


# ---------------------------------------------------------------------------------
# accept_proxy_protocol: client -> stickyd


def sticky_pair(*extra):
    """Three echo backends behind two instances with the same targets: `direct`
    routes by the socket's peer, `proxied` by the client's PROXY header."""
    backends = h.start_backends(3)
    targets = [b.address for b in backends]
    direct, _ = start_lb(targets)
    proxied, process = start_lb(targets, "--accept-proxy-protocol", *extra)
    return backends, direct, proxied, process


def test_header_address_decides_stickiness_v1_and_v2():
    backends, direct, proxied, _ = sticky_pair()
    expected = h.mapping(direct, FAKE_CLIENTS)
    h.expect(len(set(expected.values())) >= 2, "all fake clients map to one backend")
    for make in (h.proxy_v1_header, h.proxy_v2_header):
        for ip in FAKE_CLIENTS:
            # Always from 127.0.0.1: only the header differs.
            status, name = h.http_get(
                proxied, src_ip="127.0.0.1", preamble=make((ip, 5555), proxied)
            )
            h.expect_eq(status, 200, "status")
            h.expect_eq(name, expected[ip], f"backend for {ip} in a {make.__name__}")


def test_payload_after_the_header_arrives_intact():
    backends, _, proxied, _ = sticky_pair()
    payload = h.random_payload(300 * 1024, seed=7)
    for header in (
        h.proxy_v1_header(("127.0.0.9", 1), proxied),
        h.proxy_v2_header(("127.0.0.9", 1), proxied),
    ):
        with h.connect(proxied, "127.0.0.2") as s:
            count, digest = h.echo_roundtrip(s, header + payload)
        # The header is stickyd's; only the payload comes back.
        h.expect_eq(count, len(payload), "bytes echoed")
        h.expect_eq(digest, h.sha256(payload), "SHA-256 of the echo")


def test_header_in_small_pieces():
    backends, direct, proxied, _ = sticky_pair()
    ip = FAKE_CLIENTS[3]
    want = h.whoami(ip, direct)
    header = h.proxy_v2_header((ip, 1234), proxied)
    with h.connect(proxied, "127.0.0.2") as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(header), 5):
            h.send_all(s, header[i : i + 5])
            time.sleep(0.02)
        h.send_all(s, b"GET /hostname HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    h.expect(data.startswith(b"HTTP/1.1 200"), f"response {data[:60]!r}")
    h.expect_eq(data.partition(b"\r\n\r\n")[2].decode(), want + "\n", "backend")


def test_garbage_header_closes_the_client_and_is_logged():
    backends, _, proxied, process = sticky_pair()
    with h.connect(proxied, "127.0.0.2") as s:
        h.send_all(s, b"GET /hostname HTTP/1.1\r\nHost: x\r\n\r\n")
        h.expect(h.wait_closed(s) in ("eof", "reset"), "closed")
    deadline = time.monotonic() + h.IO_TIMEOUT
    while "invalid PROXY header" not in process.process.log():
        h.expect(
            time.monotonic() < deadline,
            "no 'invalid PROXY header' warning logged:\n" + process.describe(),
        )
        time.sleep(0.05)
    h.expect("closing client 127.0.0.2:" in process.process.log(), "the log names the client")


def test_missing_header_closes_the_client_after_the_timeout():
    backends, _, proxied, process = sticky_pair("--proxy-protocol-timeout", "1s")
    with h.connect(proxied, "127.0.0.3") as s:
        h.expect(h.wait_closed(s, timeout=h.IO_TIMEOUT * 2) in ("eof", "reset"), "closed")
    # A client that starts a header but never finishes it goes the same way.
    with h.connect(proxied, "127.0.0.4") as s:
        h.send_all(s, b"PROXY TCP4 127.0.0.9 ")
        h.expect(h.wait_closed(s, timeout=h.IO_TIMEOUT * 2) in ("eof", "reset"), "closed")
    deadline = time.monotonic() + h.IO_TIMEOUT
    while "no complete PROXY header within 1000 ms" not in process.process.log():
        h.expect(time.monotonic() < deadline, "timeout warnings not logged:\n" + process.describe())
        time.sleep(0.05)


def test_connect_and_close_is_not_a_header_error():
    # Port probes and TCP health checks of a balancer in front send nothing at all.
    backends, direct, proxied, process = sticky_pair()
    for _ in range(3):
        with h.connect(proxied, "127.0.0.2"):
            pass
    # Then one broken header: the only warning, whichever worker takes it.
    with h.connect(proxied, "127.0.0.2") as s:
        h.send_all(s, b"PROXY TCP4 127.0.0.9")
        s.shutdown(socket.SHUT_WR)
        h.wait_closed(s)
    deadline = time.monotonic() + h.IO_TIMEOUT
    while "closed before sending a complete PROXY header" not in process.process.log():
        h.expect(
            time.monotonic() < deadline, "no warning for the broken header:\n" + process.describe()
        )
        time.sleep(0.05)
    warnings = [line for line in process.process.log().splitlines() if " warn " in line]
    h.expect_eq(len(warnings), 1, f"warning lines ({warnings})")


def test_a_flood_of_bad_headers_does_not_flood_the_log():
    backends, _, proxied, process = sticky_pair()
    clients = 60
    for i in range(clients):
        with h.connect(proxied, "127.0.0.2") as s:
            h.send_all(s, b"BOGUS %d\r\n" % i)
            h.wait_closed(s)
    lines = [ln for ln in process.process.log().splitlines() if "invalid PROXY header" in ln]
    h.expect(
        1 <= len(lines) < clients // 2, f"{len(lines)} warning lines for {clients} bad headers"
    )
    # Whatever was left out is counted in a later line.
    with h.connect(proxied, "127.0.0.2") as s:
        time.sleep(1.1)  # past the one-line-per-second limit
        h.send_all(s, b"BOGUS again\r\n")
        h.wait_closed(s)
    deadline = time.monotonic() + h.IO_TIMEOUT
    while not re.search(r"\(\d+ similar lines suppressed\)", process.process.log()):
        h.expect(
            time.monotonic() < deadline, "no suppressed-lines count logged:\n" + process.describe()
        )
        time.sleep(0.05)


if __name__ == "__main__":
    h.main()
