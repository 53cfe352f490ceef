#!/usr/bin/env python3
"""HTTPS health checks (NLB HealthCheckProtocol = HTTPS) against backends this test
starts: `openssl s_server -www` with a self-signed certificate made for the test,
stickyd-echo and Python servers that do not speak TLS, and a listener that never
answers. Failures must name the stage that failed, in the log and in /status."""
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import sys
import threading

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

INTERVAL = 1.0  # seconds, as in the configs below
SLACK = 5.0  # generous: scheduling (and RSA) on a loaded 2-core machine


def openssl():
    path = shutil.which("openssl")
    if not path:
        h.skip("no openssl binary (scripts/setup installs it)")
    return path


def certificate():
    """(cert, key) paths of a fresh self-signed certificate for CN=localhost."""
    d = h.temp_dir()
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    if not os.path.exists(cert):
        r = h.run(
            [
                openssl(),
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-days",
                "1",
                "-keyout",
                key,
                "-out",
                cert,
            ],
            timeout=60,
        )
        h.expect(r.returncode == 0, f"openssl req failed: {r.stderr}")
    return cert, key


class TlsBackend:
    """openssl s_server -www: answers any GET with "HTTP/1.0 200 ok" over TLS."""

    def __init__(self, name):
        cert, key = certificate()
        port = h.free_port()
        self.address = f"127.0.0.1:{port}"
        self.process = h.Process(
            [openssl(), "s_server", "-www", "-accept", self.address, "-cert", cert, "-key", key],
            f"s_server-{name}",
        )
        h.wait_for(
            f"s_server {name} accepting",
            lambda: "ACCEPT" in self.process.log(),
            timeout=h.START_TIMEOUT,
            process=self.process,
        )


class PlainHttp(h.PyServer):
    """No TLS: answers whatever arrives first as a plain HTTP server would."""

    def __init__(self):
        super().__init__(self._answer)

    def _answer(self, conn):
        try:
            if conn.recv(4096):
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
        except OSError:
            pass


class Holder(h.PyServer):
    """Accepts and reads the ClientHello, then answers nothing until the client goes."""

    def __init__(self):
        self.hellos = 0
        self.open = 0
        self._lock = threading.Lock()
        super().__init__(self._hold)

    def _hold(self, conn):
        conn.settimeout(None)
        try:
            if not conn.recv(4096):
                return
            with self._lock:
                self.hellos += 1
                self.open += 1
            try:
                while conn.recv(4096):
                    pass
            finally:
                with self._lock:
                    self.open -= 1
        except OSError:
            pass


class SniRecorder(h.PyServer):
    """TLS with a self-signed certificate: records the SNI each handshake names (None
    for none) and answers every request with 200."""

    def __init__(self):
        cert, key = certificate()
        self.names = []
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.context.sni_callback = lambda _sock, name, _ctx: self.names.append(name)
        super().__init__(self._answer)

    def _answer(self, conn):
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = tls.recv(4096)
                    if not chunk:
                        return
                    request += chunk
                tls.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
        except (OSError, ssl.SSLError):
            pass


def mute_listener():
    """A port whose kernel accepts connections that nobody ever reads."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    h.on_cleanup(s.close)
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return h.fmt_addr(s.getsockname())


def config(lb, targets, health):
    """targets: [(id, 'ip:port')]; health: the [target_group.health_check] body."""
    out = [
        "[global]",
        "threads = 1",
        'log_level = "debug"',
        'shutdown_grace = "2s"',
        "",
        "[[listener]]",
        f'bind = "{h.fmt_addr(lb)}"',
        'target_group = "web"',
        "",
        "[[target_group]]",
        'name = "web"',
        "",
        "[target_group.health_check]",
        'protocol = "https"',
        health,
        "",
    ]
    for target_id, address in targets:
        out += ["[[target_group.target]]", f'id = "{target_id}"', f'address = "{address}"', ""]
    return "\n".join(out)


FAST = (
    'interval = "1s"\ntimeout = "800ms"\nhealthy_threshold = 2\nunhealthy_threshold = 2\n'
    "passive = false"
)


def wait_log(stickyd, pattern, timeout, after=0):
    regex = re.compile(pattern)
    found = []

    def seen():
        m = regex.search(stickyd.process.log(), after)
        if m:
            found.append(m)
        return m is not None

    h.wait_for(f"a log line matching {pattern!r}", seen, timeout=timeout, process=stickyd.process)
    return found[0]


def healthy_line(name):
    return rf"target {re.escape(name)} \(\S+\) is healthy: ([^\n]*)"


def unhealthy_line(name):
    return rf"target {re.escape(name)} \(\S+\) is unhealthy: ([^\n]*)"


def last_check(stickyd, target_id):
    """The target's last_check object from GET /status on the admin socket."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(h.IO_TIMEOUT)
    s.connect(stickyd.admin_socket)
    conn = http.client.HTTPConnection("stickyd", timeout=h.IO_TIMEOUT)
    conn.sock = s
    try:
        conn.request("GET", "/status")
        status = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    for group in status["groups"]:
        for t in group["targets"]:
            if t["id"] == target_id:
                return t.get("last_check")
    raise h.Failure(f"/status has no target {target_id}")


def test_https_check_passes_against_a_tls_backend_with_a_self_signed_certificate():
    backend = TlsBackend("web-1")
    lb = h.lb_addr()
    stickyd = h.start_stickyd(
        config(lb, [("web-1", backend.address)], FAST + '\npath = "/health"'), addr=lb
    )
    m = wait_log(stickyd, healthy_line("web-1"), INTERVAL + SLACK)
    h.expect(m.group(1).startswith("first check passed (HTTP 200)"), f"reason: {m.group(1)}")
    last = last_check(stickyd, "web-1")
    h.expect(
        last and last["passed"] and last["reason"] == "HTTP 200", f"/status last_check: {last}"
    )


def test_https_check_of_plain_tcp_backends_fails_in_the_handshake():
    echo = h.start_backend("echo")
    plain = PlainHttp()
    lb = h.lb_addr()
    stickyd = h.start_stickyd(
        config(lb, [("echo", echo.address), ("plain", plain.address)], FAST), addr=lb
    )
    m = wait_log(stickyd, unhealthy_line("plain"), INTERVAL * 3 + SLACK)
    h.expect(
        m.group(1).startswith("TLS handshake failed: wrong version number"), f"reason: {m.group(1)}"
    )
    # stickyd-echo sends the ClientHello back: TLS, but not what a server says.
    m = wait_log(stickyd, unhealthy_line("echo"), INTERVAL * 3 + SLACK)
    h.expect(m.group(1).startswith("TLS handshake failed: "), f"reason: {m.group(1)}")
    for target_id in ("plain", "echo"):
        last = last_check(stickyd, target_id)
        h.expect(
            last and not last["passed"] and last["reason"].startswith("TLS handshake failed: "),
            f"/status last_check of {target_id}: {last}",
        )


def test_https_check_that_never_gets_a_server_hello_times_out_in_the_handshake():
    lb = h.lb_addr()
    health = 'interval = "1s"\ntimeout = "300ms"\nhealthy_threshold = 2\n' "unhealthy_threshold = 2"
    stickyd = h.start_stickyd(config(lb, [("mute", mute_listener())], health), addr=lb)
    m = wait_log(stickyd, unhealthy_line("mute"), INTERVAL * 3 + SLACK)
    h.expect(
        m.group(1).startswith("timed out after 300 ms (TLS handshake)"), f"reason: {m.group(1)}"
    )


def test_https_check_whose_status_the_matcher_refuses_fails_with_the_status():
    backend = TlsBackend("picky")
    lb = h.lb_addr()
    stickyd = h.start_stickyd(
        config(lb, [("picky", backend.address)], FAST + '\nmatcher = "204"'), addr=lb
    )
    m = wait_log(stickyd, unhealthy_line("picky"), INTERVAL * 3 + SLACK)
    h.expect(m.group(1).startswith("HTTP 200 (matcher 204)"), f"reason: {m.group(1)}")


def test_quick_mode_takes_https_checks():
    backend = TlsBackend("quick")
    lb = h.lb_addr()
    stickyd = h.start_stickyd(
        args=[
            "--listen",
            h.fmt_addr(lb),
            "--target",
            backend.address,
            "--health-check",
            "https",
            "--health-path",
            "/ok",
            "--log-level",
            "debug",
        ],
        addr=lb,
    )
    m = wait_log(
        stickyd,
        rf"health check of {re.escape(backend.address)}: passed \(([^)]*)\)",
        INTERVAL + SLACK,
    )
    h.expect_eq(m.group(1), "HTTP 200", "quick mode's https check")


def test_reload_and_stop_in_the_middle_of_handshakes():
    # Checks held in their handshake by a backend that never answers: a reload
    # removes one target, a stop ends the other's. Neither may crash or leak (the
    # sanitized run checks the exit), and the stop is as clean as ever.
    held = [Holder(), Holder()]
    lb = h.lb_addr()
    health = 'interval = "5s"\ntimeout = "4s"\nhealthy_threshold = 2\nunhealthy_threshold = 2'
    text = config(lb, [("held-1", held[0].address), ("held-2", held[1].address)], health)
    stickyd = h.start_stickyd(text, addr=lb)
    path = stickyd.process.argv[stickyd.process.argv.index("--config") + 1]
    h.wait_for(
        "both targets holding a handshake",
        lambda: all(s.open for s in held),
        timeout=5 + SLACK,
        process=stickyd.process,
    )

    with open(path + ".new", "w") as f:
        f.write(config(lb, [("held-2", held[1].address)], health))
    os.replace(path + ".new", path)
    stickyd.process.signal(1)  # SIGHUP
    wait_log(stickyd, r"reloaded ", SLACK)
    # The removed target's check is abandoned (or had just timed out): its
    # connection closes.
    h.wait_for(
        "the removed target's check to end",
        lambda: held[0].open == 0,
        timeout=SLACK,
        process=stickyd.process,
    )

    h.wait_for(
        "held-2 holding a handshake",
        lambda: held[1].open > 0,
        timeout=5 + SLACK,
        process=stickyd.process,
    )
    stickyd.process.signal(15)  # SIGTERM
    h.expect_eq(stickyd.process.wait(10), 0, "exit status after a stop mid-handshake")
    h.wait_for("held-2's check to end", lambda: held[1].open == 0, timeout=SLACK)


def test_https_check_of_a_target_found_by_dns_name_sends_that_name_as_sni():
    # A target found by "localhost:PORT" is checked with SNI "localhost", as a TLS
    # server that picks its certificate by name (an ingress, a service mesh) needs;
    # a target given by address gets none.
    by_name, by_ip = SniRecorder(), SniRecorder()
    lb = h.lb_addr()
    text = config(lb, [("by-ip", by_ip.address)], FAST).replace(
        'name = "web"\n', f'name = "web"\ndns = "localhost:{by_name.addr[1]}"\n', 1
    )
    stickyd = h.start_stickyd(text, addr=lb)
    h.wait_for(
        "a check of each target",
        lambda: "localhost" in by_name.names and None in by_ip.names,
        timeout=INTERVAL + SLACK,
        process=stickyd.process,
    )
    h.expect(set(by_ip.names) == {None}, f"SNI of checks by address: {by_ip.names}")
    h.expect(set(by_name.names) == {"localhost"}, f"SNI of checks by name: {by_name.names}")


if __name__ == "__main__":
    h.main()
