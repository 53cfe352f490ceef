"""Black-box end-to-end harness for stickyd (Python 3 standard library only).

A test file defines ``test_*`` functions and ends with ``harness.main()``. Each test
starts what it needs through this module (stickyd with a generated config or CLI
flags, stickyd-echo backends, Python stub backends); everything a test starts is
killed when the test ends, pass or fail, and again at exit.

Output, one line per case, then a summary line that scripts/test-summary counts:
    PASS name
    FAIL name: reason          (followed by indented detail: traceback, process logs)
    SKIP name: reason
    cases: N passed, M failed, K skipped
Exit status: 0 if nothing failed, 1 if anything failed, 77 if every case skipped.

Binaries come from $STICKYD_BIN, $STICKYD_ECHO_BIN and $STICKYCTL_BIN (meson sets them;
by hand:
    STICKYD_BIN=build-e2e/stickyd STICKYD_ECHO_BIN=build-e2e/stickyd-echo \
        python3 tests/e2e/test_stickiness.py [name-substring ...]
). Every socket operation has a timeout and every test has a deadline, so nothing
hangs. Traffic only ever goes to 127.0.0.0/8 and ::1.
"""

import array
import hashlib
import http.client
import json
import os
import queue
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

SOURCE_ROOT = os.environ.get("STICKYD_SOURCE_ROOT") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
STICKYD_BIN = os.path.abspath(
    os.environ.get("STICKYD_BIN") or os.path.join(SOURCE_ROOT, "build", "stickyd")
)
ECHO_BIN = os.path.abspath(
    os.environ.get("STICKYD_ECHO_BIN") or os.path.join(SOURCE_ROOT, "build", "stickyd-echo")
)
STICKYCTL_BIN = os.path.abspath(
    os.environ.get("STICKYCTL_BIN") or os.path.join(os.path.dirname(STICKYD_BIN), "stickyctl")
)

IO_TIMEOUT = 10.0  # any single socket operation
START_TIMEOUT = 10.0  # a process becoming ready
TEST_DEADLINE = 90  # one test, whole (seconds)
CHUNK = 64 * 1024

# stickyd and stickyd-echo keep SIGINT ignored when they start with it ignored (as
# background jobs of a script do). Tests run under a runner that may have been started
# that way, yet they send SIGINT on purpose: their children start with the default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


class Skip(Exception):
    """Raised to skip the current test (for a missing kernel or system feature)."""


class Failure(AssertionError):
    """A failed expectation."""


def skip(reason):
    raise Skip(reason)


def expect(condition, message):
    if not condition:
        raise Failure(message)


def expect_eq(actual, wanted, what):
    if actual != wanted:
        raise Failure(f"{what}: expected {wanted!r}, got {actual!r}")


# ---------------------------------------------------------------------------------
# Per-test resources: everything registered here is torn down after each test.

_cleanups = []  # callables, run last-in first-out
_processes = []  # every Process ever started (for the exit-time sweep)
_test_dir = None


def on_cleanup(fn):
    _cleanups.append(fn)
    return fn


def _run_cleanups():
    while _cleanups:
        fn = _cleanups.pop()
        try:
            fn()
        except Exception:  # cleanup must go on
            traceback.print_exc(file=sys.stdout)


def temp_dir():
    """A temporary directory for the current test (removed after it)."""
    global _test_dir
    if _test_dir is None:
        _test_dir = tempfile.mkdtemp(prefix="stickyd-e2e-")

        def remove():
            global _test_dir
            shutil.rmtree(_test_dir, ignore_errors=True)
            _test_dir = None

        on_cleanup(remove)
    return _test_dir


def write_file(name, text):
    path = os.path.join(temp_dir(), name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


# ---------------------------------------------------------------------------------
# Sanitizer reports. scripts/test also runs the suite against an ASan/UBSan build;
# a report printed by any process a test started fails that test, even when the
# test itself got the answers it wanted (a use-after-free often still "works").

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")
_sanitizer_reports = []  # (label, excerpt) found since the current test began


def sanitizer_report(text):
    """The first sanitizer report in text (up to 40 lines from its marker), or None."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if any(marker in line for marker in SANITIZER_MARKERS):
            return "\n".join(lines[i : i + 40])
    return None


def _note_sanitizer_report(label, text):
    report = sanitizer_report(text)
    if report is not None:
        _sanitizer_reports.append((label, report))


_sanitized = None


def sanitized():
    """Whether the binaries under test carry AddressSanitizer (scripts/test's second run)."""
    global _sanitized
    if _sanitized is None:
        try:
            with open(STICKYD_BIN, "rb") as f:
                _sanitized = b"__asan_init" in f.read()
        except OSError:
            _sanitized = False
    return _sanitized


def asan_options(*options):
    """Environment for a process under test that adds `options` ("name=value") to
    ASAN_OPTIONS in the sanitized run; nothing otherwise."""
    if not sanitized():
        return {}
    current = os.environ.get("ASAN_OPTIONS", "")
    return {"ASAN_OPTIONS": ":".join([current, *options] if current else options)}


def measured_memory_env():
    """Environment for a stickyd whose memory a test measures, so that its growth
    means what it means without ASan. ASan's quarantine keeps every freed block (up
    to 256 MiB) out of use for a while, so a process that frees all it allocates
    still grows by all it has freed: no quarantine, and freed memory is reused at
    once, as glibc's malloc would. detect_stack_use_after_return gives each thread an
    11 MiB fake stack whose frames move on with every call, touching a few more pages
    of it per thousand connections until all of it is dirty: off here."""
    return asan_options(
        "quarantine_size_mb=0",
        "thread_local_quarantine_size_kb=0",
        "detect_stack_use_after_return=0",
    )


def unreadable_vptr_env():
    """UBSan options for a process a test runs out of file descriptors. The vptr check
    probes an object's memory through a pipe (sanitizer_common's
    IsAccessibleMemoryRange); with no descriptor left the pipe fails and any object is
    called invalid ("object has invalid vptr", "memory cannot be printed"), shared_ptr
    control blocks and std::thread states alike, and halt_on_error stops the process.
    Only that check is suppressed; every other UBSan check, and ASan's reports on
    freed or overrun memory, still fail the test. It takes two lines: "vptr_check"
    matches the object's type name, which cannot be read here, so a report is also
    matched by where it happened, under the check's own name, "vptr"."""
    path = os.path.join(temp_dir(), "ubsan-out-of-fds-vptr.supp")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write("vptr_check:*\nvptr:*\n")
    options = os.environ.get("UBSAN_OPTIONS", "")
    return {"UBSAN_OPTIONS": (options + ":" if options else "") + f"suppressions={path}"}


# ---------------------------------------------------------------------------------
# Processes


class Process:
    """A child in its own process group, output to a log file, killed at cleanup."""

    def __init__(self, argv, label, env=None, out_of_fds=False):
        """env: variables to set (over this process's own) for the child. out_of_fds:
        the test runs it out of file descriptors (see unreadable_vptr_env)."""
        self.argv = [str(a) for a in argv]
        self.label = label
        self.out_of_fds = out_of_fds
        self.log_path = os.path.join(temp_dir(), f"{label}.log")
        self._log = open(self.log_path, "wb")
        if out_of_fds:
            env = dict(env or {}, **unreadable_vptr_env())
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ, **env) if env else None,
        )
        _processes.append(self)
        on_cleanup(self.kill)

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def signal(self, sig):
        if self.alive():
            os.kill(self.popen.pid, sig)

    def wait(self, timeout):
        """Exit status, or None if still running after `timeout` seconds."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        """Stops the process, through its SIGTERM path first: stickyd and stickyd-echo
        exit cleanly there, and only an exit lets LeakSanitizer report. A second
        SIGTERM makes stickyd drop connections at once instead of waiting out its
        shutdown grace; whatever is still running after that is killed."""
        for sig, wait in ((signal.SIGTERM, 1.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            if self.popen.poll() is not None:  # never signal a reaped (reusable) pid
                break
            try:
                if sig != signal.SIGKILL:
                    os.killpg(self.popen.pid, signal.SIGCONT)  # a test may have stopped it
                os.killpg(self.popen.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.popen.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
        if not self._log.closed:
            self._log.close()
            log = self.log()
            _note_sanitizer_report(self.label, log)

    def describe(self):
        status = "running" if self.alive() else f"exit status {self.popen.returncode}"
        tail = "\n".join(self.log().splitlines()[-25:])
        return f"{self.label} ({' '.join(self.argv)}), {status}; log tail:\n{tail}"


def _kill_everything():
    for p in _processes:
        if p.popen.returncode is not None:
            continue
        try:
            os.killpg(p.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def fd_count(pid):
    """How many file descriptors a process has open (from /proc)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_fd_count(pid, at_most=None, timeout=15.0):
    """A process's descriptor count once closing connections are gone: waits until it
    is at most `at_most` (or, without it, until it stops falling)."""
    deadline = time.monotonic() + timeout
    last = fd_count(pid)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = fd_count(pid)
        if (at_most is not None and now <= at_most) or (at_most is None and now >= last):
            return now
        last = now
    return last


def connection_sockets(pid):
    """pid's TCP sockets that are not listening (their inodes), closed ones it still
    holds too: those are in no table, so this counts every socket of pid that is not a
    TCP listener and not of another kind (unix, netlink, UDP)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    other = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # 0A: LISTEN
                    other.add(fields[9])
    for table, column in (
        ("/proc/net/unix", 6),
        ("/proc/net/netlink", 9),
        ("/proc/net/udp", 9),
        ("/proc/net/udp6", 9),
    ):
        try:
            with open(table) as f:
                for line in f.readlines()[1:]:
                    fields = line.split()
                    if len(fields) > column:
                        other.add(fields[column])
        except FileNotFoundError:
            pass
    return inodes - other


def resting_fd_count(process, timeout=START_TIMEOUT):
    """How many fds a stickyd holds at rest, the baseline to compare with after a test's
    load: counted once it has said it is ready (its listeners accept before every thread
    has its ring and eventfds, so a count taken earlier is too low) and holds no
    connection (wait_accepting's probe gone from both legs, so it is not too high)."""
    wait_for(
        "stickyd ready with no connection open",
        lambda: "ready" in process.log() and not connection_sockets(process.pid),
        process=process,
        timeout=timeout,
    )
    return fd_count(process.pid)


def private_dirty(pid):
    """A process's Private_Dirty memory in bytes (smaps_rollup)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1]) * 1024
    raise Failure("no Private_Dirty in smaps_rollup")


def need_open_files(count):
    """Raises our soft RLIMIT_NOFILE to at least count (children inherit it), or skips."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= count:
        return
    if hard != resource.RLIM_INFINITY and hard < count:
        skip(f"needs {count} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))


def run(argv, timeout=15, stdin_text=None, cwd=None, env=None):
    """Runs a short command; returns CompletedProcess (text). Fails if it hangs.

    Like CI: no terminal (a new session) and stdin /dev/null unless stdin_text."""
    stdin = {"input": stdin_text} if stdin_text is not None else {"stdin": subprocess.DEVNULL}
    try:
        result = subprocess.run(
            [str(a) for a in argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
            cwd=cwd,
            env=env,
            **stdin,
        )
    except subprocess.TimeoutExpired as e:
        _note_sanitizer_report(
            os.path.basename(str(argv[0])), _text(e.stdout) + "\n" + _text(e.stderr)
        )
        raise Failure(f"{' '.join(map(str, argv))} did not finish within {timeout}s")
    _note_sanitizer_report(os.path.basename(str(argv[0])), result.stdout + "\n" + result.stderr)
    return result


def _text(output):
    if output is None:
        return ""
    return output.decode("utf-8", "replace") if isinstance(output, bytes) else output


# ---------------------------------------------------------------------------------
# Addresses


def fmt_addr(addr):
    """('127.0.0.1', 80) -> '127.0.0.1:80'; ('::1', 80) -> '[::1]:80'."""
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def ipv6_available():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


_picked_ports = set()


def free_port(host="127.0.0.1"):
    """A port that is free now, for daemons that cannot report the one they bound.

    Drawn outside the kernel's ephemeral range when there is room, so that our own
    outgoing connections (which take ephemeral ports) never collide with it.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split()[:2])
    except (OSError, ValueError):
        low, high = 32768, 60999
    gaps = [(10000, low), (high + 1, 65536)]
    start, stop = max(gaps, key=lambda g: g[1] - g[0])
    rng = random.Random()
    for _ in range(200):
        if stop - start >= 1000:
            port = rng.randrange(start, stop)
        else:  # no room outside the ephemeral range: let the kernel choose
            with socket.socket(family_of(host), socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        if port in _picked_ports:
            continue
        try:
            with socket.socket(family_of(host), socket.SOCK_STREAM) as s:
                s.bind((host, port))
        except OSError:
            continue
        _picked_ports.add(port)
        return port
    raise Failure("no free port found")


def source_ips(count, first=2):
    """count distinct loopback source addresses: 127.0.0.2, 127.0.0.3, ..."""
    ips = []
    n = first
    while len(ips) < count:
        ips.append(f"127.0.{n // 256}.{n % 256}")
        n += 1
        if n % 256 in (0, 255):
            n += 1
    return ips


# ---------------------------------------------------------------------------------
# Sockets


def connect(dst, src_ip=None, timeout=IO_TIMEOUT):
    """A connected TCP socket to dst (host, port), from src_ip if given."""
    s = socket.socket(family_of(dst[0]), socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        if src_ip is not None:
            s.bind((src_ip, 0))
        s.connect((dst[0], dst[1]))
    except BaseException:
        s.close()
        raise
    return s


def send_all(sock, data):
    """sendall with the timeout per send() rather than for the whole payload."""
    view = memoryview(data)
    while view:
        n = sock.send(view[: CHUNK * 4])
        view = view[n:]


def recv_exact(sock, n):
    parts = []
    while n > 0:
        chunk = sock.recv(min(n, CHUNK * 4))
        if not chunk:
            raise Failure(f"connection closed with {n} bytes still expected")
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def recv_line(sock, limit=4096):
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise Failure(f"connection closed before the end of a line (got {data!r})")
        data += chunk
        if len(data) > limit:
            raise Failure("line too long")
    return data.decode("utf-8", "replace").rstrip("\n")


def recv_until_eof(sock, hasher=None, limit=None):
    """Reads to EOF. Returns the byte count (and feeds hasher); raises on reset."""
    total = 0
    while True:
        chunk = sock.recv(CHUNK * 4)
        if not chunk:
            return total
        total += len(chunk)
        if hasher is not None:
            hasher.update(chunk)
        if limit is not None and total > limit:
            raise Failure(f"more than {limit} bytes received")


def wait_closed(sock, timeout=IO_TIMEOUT):
    """Waits for the peer to end the connection: returns 'eof' or 'reset'."""
    sock.settimeout(timeout)
    try:
        while sock.recv(CHUNK):
            pass
        return "eof"
    except ConnectionResetError:
        return "reset"


def set_linger_zero(sock):
    """Makes close() send an RST."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def recv_head(sock, data=b""):
    """Reads until the blank line that ends an HTTP head. Returns all bytes read; if
    the peer closed first they lack b"\r\n\r\n", which the caller checks."""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(CHUNK)
        if not chunk:
            break
        data += chunk
    return data


def http_get(dst, path="/hostname", src_ip=None, timeout=IO_TIMEOUT, preamble=b""):
    """One HTTP/1.1 request on its own connection. Returns (status, body), the body
    without its final newline (stickyd-echo ends its one-line bodies with one).

    preamble (e.g. a PROXY header) goes out in the same send as the request."""
    with connect(dst, src_ip, timeout) as s:
        host = fmt_addr(dst)
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        send_all(s, preamble + request.encode())
        data = recv_head(s)
        if b"\r\n\r\n" not in data:
            raise Failure(
                f"{host}: connection closed before a complete response "
                f"(from {src_ip or 'default source'}; got {data!r})"
            )
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length is None:
            raise Failure(f"{host}: response without Content-Length: {head!r}")
        if len(body) < length:
            body += recv_exact(s, length - len(body))
        return status, body[:length].decode("utf-8", "replace").removesuffix("\n")


# ---------------------------------------------------------------------------------
# PROXY protocol (haproxy proxy-protocol.txt), written and read independently of
# stickyd's own code.

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v1_header(src, dst):
    """'PROXY TCP4|TCP6 src dst sport dport\\r\\n' for (host, port) pairs."""
    proto = "TCP6" if ":" in src[0] else "TCP4"
    return f"PROXY {proto} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode()


def proxy_v2_header(src, dst, command=1):
    """A v2 header (command 1 = PROXY, 0 = LOCAL) for (host, port) pairs, no TLVs."""
    if command == 0:
        return PROXY_V2_SIGNATURE + bytes([0x20, 0x00, 0, 0])
    fam = family_of(src[0])
    block = (
        socket.inet_pton(fam, src[0])
        + socket.inet_pton(fam, dst[0])
        + src[1].to_bytes(2, "big")
        + dst[1].to_bytes(2, "big")
    )
    family_proto = 0x11 if fam == socket.AF_INET else 0x21
    return PROXY_V2_SIGNATURE + bytes([0x21, family_proto]) + len(block).to_bytes(2, "big") + block


def read_proxy_v2(sock):
    """Reads one v2 header from sock. Returns (command, src, dst) where src and dst
    are (ip, port) or None when the header carries no addresses."""
    fixed = recv_exact(sock, 16)
    expect_eq(fixed[:12], PROXY_V2_SIGNATURE, "PROXY v2 signature")
    expect_eq(fixed[12] >> 4, 2, "PROXY header version")
    command = fixed[12] & 0x0F
    family_proto = fixed[13]
    length = int.from_bytes(fixed[14:16], "big")
    block = recv_exact(sock, length) if length else b""
    if family_proto == 0x11:
        expect(length >= 12, f"INET block of {length} bytes")
        src = (socket.inet_ntop(socket.AF_INET, block[0:4]), int.from_bytes(block[8:10], "big"))
        dst = (socket.inet_ntop(socket.AF_INET, block[4:8]), int.from_bytes(block[10:12], "big"))
        return command, src, dst
    if family_proto == 0x21:
        expect(length >= 36, f"INET6 block of {length} bytes")
        src = (socket.inet_ntop(socket.AF_INET6, block[0:16]), int.from_bytes(block[32:34], "big"))
        dst = (socket.inet_ntop(socket.AF_INET6, block[16:32]), int.from_bytes(block[34:36], "big"))
        return command, src, dst
    return command, None, None


def whoami(src_ip, lb_addr):
    """The name of the backend that answers GET /hostname for this source address."""
    status, body = http_get(lb_addr, "/hostname", src_ip)
    expect_eq(status, 200, f"GET /hostname status from {src_ip}")
    return body


def mapping(lb_addr, ips, repeat=1):
    """{ip: backend name}; with repeat > 1, fails unless each IP always gets the same."""
    result = {}
    for ip in ips:
        names = {whoami(ip, lb_addr) for _ in range(repeat)}
        expect(
            len(names) == 1,
            f"source {ip} reached several backends over {repeat} " f"connections: {sorted(names)}",
        )
        result[ip] = names.pop()
    return result


def wait_for(what, condition, timeout=20.0, process=None):
    """condition()'s first true value within timeout seconds; fails early if
    process (a Process) exits meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and not process.alive():
            raise Failure(
                f"{process.label} exited while waiting for {what}\n" f"{process.describe()}"
            )
        time.sleep(0.05)
    raise Failure(
        f"timed out after {timeout}s waiting for {what}"
        + (f"\n{process.describe()}" if process else "")
    )


def wait_accepting(addr, process=None, timeout=START_TIMEOUT):
    """Waits until addr accepts TCP connections (and process, if given, is alive)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise Failure(f"{process.label} exited during start-up\n{process.describe()}")
        try:
            with connect(addr, timeout=1.0):
                return
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise Failure(
        f"{fmt_addr(addr)} did not accept within {timeout}s ({last})"
        + (f"\n{process.describe()}" if process else "")
    )


# ---------------------------------------------------------------------------------
# Payloads

PATTERN_MULTIPLIER = 0x9E3779B97F4A7C15


def pattern(n):
    """stickyd-echo's SINK-THEN-REPLY data: LE uint64 words i * 0x9E3779B97F4A7C15."""
    words = (n + 7) // 8
    mask = (1 << 64) - 1
    a = array.array("Q", ((i * PATTERN_MULTIPLIER) & mask for i in range(words)))
    if sys.byteorder == "big":
        a.byteswap()
    return a.tobytes()[:n]


def random_payload(size, seed):
    return random.Random(seed).randbytes(size)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def echo_roundtrip(sock, payload):
    """Sends payload (from a thread), then EOF; reads the reply to EOF.

    Returns (bytes received, sha256 of them). Errors on either side are raised.
    """
    errors = []

    def sender():
        try:
            send_all(sock, payload)
            sock.shutdown(socket.SHUT_WR)
        except BaseException as e:  # reported by the reader
            errors.append(e)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    h = hashlib.sha256()
    try:
        count = recv_until_eof(sock, h)
    finally:
        t.join(IO_TIMEOUT * 2)
    if errors:
        raise Failure(f"sending failed: {errors[0]!r}")
    return count, h.hexdigest()


def run_parallel(fns, timeout=60):
    """Runs callables in threads; returns their results; re-raises the first error."""
    results = [None] * len(fns)
    errors = []

    def wrap(i, fn):
        try:
            results[i] = fn()
        except BaseException as e:
            errors.append((i, e, traceback.format_exc()))

    threads = [threading.Thread(target=wrap, args=(i, fn), daemon=True) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise Failure(
            f"{sum(t.is_alive() for t in threads)} of {len(fns)} parallel jobs "
            f"still running after {timeout}s"
        )
    if errors:
        i, e, tb = sorted(errors, key=lambda x: x[0])[0]
        raise Failure(f"job {i} of {len(fns)} failed ({len(errors)} failed in all): {e!r}\n{tb}")
    return results


# ---------------------------------------------------------------------------------
# Backends


class Backend:
    """A stickyd-echo process. name, addr (host, port), address ('ip:port')."""

    def __init__(self, name, listen):
        self.name = name
        self.process = Process([ECHO_BIN, "--listen", listen, "--name", name], f"echo-{name}")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            m = re.search(r"listening on (\S+)", self.process.log())
            if m:
                break
            if not self.process.alive() or time.monotonic() > deadline:
                raise Failure(f"backend {name} did not start\n{self.process.describe()}")
            time.sleep(0.02)
        self.address = m.group(1)
        host, _, port = self.address.rpartition(":")
        self.addr = (host.strip("[]"), int(port))

    def stop(self):
        self.process.kill()


def start_backend(name, host="127.0.0.1"):
    return Backend(name, fmt_addr((host, 0)))


def start_backends(count, host="127.0.0.1", prefix="backend-"):
    return [start_backend(f"{prefix}{i}", host) for i in range(1, count + 1)]


class PyServer:
    """A Python stub backend: handler(conn) runs in a thread per accepted connection.

    Whatever the handler returns (or raises) is queued; take it with result().
    A handler returns None for a connection that should not count, such as the
    readiness probe wait_accepting() makes through stickyd (connect, then close).
    """

    def __init__(self, handler, host="127.0.0.1", port=0):
        self.handler = handler
        self.sock = socket.socket(family_of(host), socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(512)
        self.sock.settimeout(0.2)
        self.addr = self.sock.getsockname()[:2]
        self.address = fmt_addr(self.addr)
        self.results = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()
        on_cleanup(self.close)

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        conn.settimeout(IO_TIMEOUT)
        try:
            self.results.put(("ok", self.handler(conn)))
        except BaseException as e:
            self.results.put(("error", e))
        finally:
            conn.close()

    def result(self, timeout=IO_TIMEOUT * 2):
        """The next handler result other than None; re-raises a handler exception."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                kind, value = self.results.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise Failure(
                    f"stub backend {self.address}: no connection finished " f"within {timeout}s"
                )
            if kind == "error":
                raise Failure(f"stub backend {self.address}: handler failed: {value!r}")
            if value is not None:
                return value

    def close(self):
        self._stop.set()
        self.sock.close()
        self._thread.join(2)


# ---------------------------------------------------------------------------------
# stickyd


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(v)


_admin_count = 0


def admin_socket_args():
    """Quick-mode flags that give a daemon started by hand its own admin socket."""
    global _admin_count
    _admin_count += 1
    return ["--admin-socket", os.path.join(temp_dir(), f"admin-{_admin_count}.sock")]


def config_text(listeners, groups, global_=None):
    """TOML for stickyd.

    listeners: [{"bind": "127.0.0.1:8000", "target_group": "web"}, ...]
    groups:    [{"name": "web", "connect_timeout": "1s", ...,
                 "stickiness": {"prefix_v4": 24},          (optional; any dict value
                 "health_check": {"interval": "200ms"},     becomes a subtable)
                 "targets": [{"id": "backend-1", "address": "...", "weight": 1}, ...]}]
    global_:   {"threads": 2, ...} (defaults below)
    """
    global _admin_count
    _admin_count += 1
    # Its own admin socket: tests never touch /run/stickyd, and daemons never collide.
    g = {
        "threads": 2,
        "log_level": "info",
        "shutdown_grace": "5s",
        "admin_socket": os.path.join(temp_dir(), f"admin-{_admin_count}.sock"),
    }
    g.update(global_ or {})
    out = ["[global]"] + [f"{k} = {toml_value(v)}" for k, v in g.items()]
    for listener in listeners:
        out += ["", "[[listener]]"] + [f"{k} = {toml_value(v)}" for k, v in listener.items()]
    for group in groups:
        out += ["", "[[target_group]]"]
        out += [
            f"{k} = {toml_value(v)}"
            for k, v in group.items()
            if k != "targets" and not isinstance(v, dict)
        ]
        # Subtables: "stickiness", "health_check", "deregistration_delay", ...
        for key, table in group.items():
            if isinstance(table, dict):
                out += ["", f"[target_group.{key}]"]
                out += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        for target in group.get("targets", []):
            out += ["", "[[target_group.target]]"]
            out += [f"{k} = {toml_value(v)}" for k, v in target.items()]
    return "\n".join(out) + "\n"


def simple_config(bind, backends, with_ids=True, order=None, group=None, global_=None):
    """One listener, one group "web" of the given Backends (or 'ip:port' strings)."""
    targets = []
    for b in backends:
        if isinstance(b, str):
            targets.append({"address": b})
        else:
            t = {"id": b.name} if with_ids else {}
            t.update({"address": b.address, "weight": 1})
            targets.append(t)
    if order is not None:
        targets = [targets[i] for i in order]
    g = {"name": "web", "connect_timeout": "1s", "connect_retries": 2}
    g.update(group or {})
    g["targets"] = targets
    return config_text([{"bind": bind, "target_group": "web"}], [g], global_)


def unix_accepts(path):
    """True when something listens on the unix socket at path."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
            return True
        except OSError:
            return False


class Stickyd:
    """A running stickyd. addr is its (first) listener; admin_socket its admin endpoint."""

    def __init__(self, args, addr, label="stickyd", admin_socket=None, env=None):
        self.addr = addr
        self.admin_socket = admin_socket
        self.process = Process([STICKYD_BIN] + list(args), label, env)
        wait_accepting(addr, self.process)
        # The listeners accept (into their backlog) before the admin endpoint is up:
        # a test that asks it next must not find its socket missing.
        if admin_socket:
            # Logged at info; below that level, a connect says the same. The socket file
            # alone does not: it appears at bind(), before listen().
            wait_for(
                "the admin endpoint",
                lambda: "admin endpoint on unix:" in self.process.log()
                or "running without the admin endpoint" in self.process.log()
                or unix_accepts(admin_socket),
                timeout=START_TIMEOUT,
                process=self.process,
            )

    def describe(self):
        return self.process.describe()


_stickyd_count = 0


def start_stickyd(config=None, args=None, addr=None, label=None, env=None):
    """Starts stickyd with config (TOML text, written to a file) or with args.

    addr: the listener to wait for; defaults to a fresh 127.0.0.1 port that the
    caller must have put in the config/args. Use lb_port() to get one first.
    env: variables to set for it (see measured_memory_env).
    """
    global _stickyd_count
    _stickyd_count += 1
    label = label or f"stickyd-{_stickyd_count}"
    argv = list(args or [])
    # Every daemon gets its own admin socket in the test's temp dir: tests never
    # touch /run/stickyd, and two daemons of one test never collide.
    admin_socket = None
    if "--admin-socket" in argv:
        admin_socket = argv[argv.index("--admin-socket") + 1]
    elif config is not None:
        m = re.search(r'^admin_socket = "(.*)"$', config, re.M)
        admin_socket = m.group(1) if m else None
    if admin_socket is None:
        admin_socket = os.path.join(temp_dir(), f"{label}-admin.sock")
        argv += ["--admin-socket", admin_socket]
    if config is not None:
        path = write_file(f"{label}.toml", config)
        argv = ["--config", path] + argv
    return Stickyd(argv, addr, label, admin_socket or None, env)


def lb_addr(host="127.0.0.1"):
    """A fresh (host, port) for a stickyd listener."""
    return (host, free_port(host))


def missing_binaries():
    """A reason string if stickyd or stickyd-echo cannot be run, else None."""
    for path in (STICKYD_BIN, ECHO_BIN):
        if not os.access(path, os.X_OK):
            return f"{path} is not an executable (set STICKYD_BIN / STICKYD_ECHO_BIN)"
    return None


# ---------------------------------------------------------------------------------
# The admin endpoint and stickyctl


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over the admin endpoint's unix socket."""

    def __init__(self, path, timeout=IO_TIMEOUT):
        super().__init__("stickyd", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


def admin_request(where, method, target, body=None, headers=None):
    """(status, headers, body text) of one request to the admin endpoint at a unix
    socket path or a (host, port)."""
    if isinstance(where, str):
        conn = UnixHTTPConnection(where)
    else:
        conn = http.client.HTTPConnection(where[0], where[1], timeout=IO_TIMEOUT)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read().decode("utf-8")
    finally:
        conn.close()


def admin_get(where, target):
    """The body text of GET target, which must answer 200."""
    status, _, body = admin_request(where, "GET", target)
    expect_eq(status, 200, f"GET {target}")
    return body


def admin_document(where, target):
    """(status, JSON document) of GET target; the text where the answer is not JSON."""
    status, headers, body = admin_request(where, "GET", target)
    if headers.get("Content-Type", "").startswith("application/json"):
        return status, json.loads(body)
    return status, body


def admin_exchange(path, data):
    """Raw bytes to the admin socket at path; (status, JSON body) of the answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(IO_TIMEOUT)
        s.connect(path)
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered before reading it all: the answer is still there to read
        reply = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    expect(head.startswith(b"HTTP/1.1 "), f"not an HTTP answer: {reply[:200]!r}")
    return int(head.split()[1]), json.loads(body)


def stickyctl(*args, ok=True):
    """stickyctl's CompletedProcess; with ok, it must have exited 0."""
    result = run([STICKYCTL_BIN] + [str(a) for a in args])
    if ok:
        expect(
            result.returncode == 0,
            f"stickyctl {' '.join(map(str, args))} exited {result.returncode}: {result.stderr}",
        )
    return result


def stickyctl_json(*args):
    """The JSON document `stickyctl ARGS --json` prints."""
    return json.loads(stickyctl(*args, "--json").stdout)


# ---------------------------------------------------------------------------------
# systemd units


def systemd_analyze():
    """The systemd-analyze binary, or SKIP when it is missing."""
    path = shutil.which("systemd-analyze")
    if path is None:
        skip("systemd-analyze is not installed (Debian package: systemd)")
    return path


def systemd_verify(unit_paths):
    """`systemd-analyze verify` of the units, with this build's man pages on MANPATH:
    verify runs man(1) for each Documentation=man:... page, as an installed system
    would have them."""
    build = os.path.dirname(STICKYD_BIN)
    man8 = os.path.join(temp_dir(), "man", "man8")
    os.makedirs(man8, exist_ok=True)
    for page in ("stickyd.8", "stickyctl.8"):
        if os.path.exists(os.path.join(build, page)):
            shutil.copy(os.path.join(build, page), man8)
    env = dict(os.environ, MANPATH=os.path.dirname(man8))
    return run([systemd_analyze(), "verify"] + list(unit_paths), timeout=60, env=env)


def service_unit_for_this_build(instance=None):
    """systemd/stickyd.service.in with its paths pointing at this build and conf/, so
    that verify finds the binary it names. Written as installed: stickyd.service, or
    for an instance name the template stickyd@.service (its path is returned as the
    instance's, stickyd@NAME.service, which is how verify takes an instance)."""
    with open(os.path.join(SOURCE_ROOT, "systemd", "stickyd.service.in"), encoding="utf-8") as f:
        text = f.read()
    conf = os.path.join(SOURCE_ROOT, "conf")
    fill = {
        "@DESCRIPTION@": "",
        "@CONFIG@": os.path.join(conf, "stickyd.toml"),
        "@ADMIN_SOCKET@": "",
        "@RUNTIME_DIRECTORY@": "stickyd",
    }
    if instance is not None:
        fill = {
            "@DESCRIPTION@": " (instance %i)",
            "@CONFIG@": os.path.join(conf, "%i.toml"),
            "@ADMIN_SOCKET@": " --admin-socket /run/stickyd/%i/admin.sock",
            "@RUNTIME_DIRECTORY@": "stickyd/%i",
        }
    fill["@BINDIR@"] = os.path.dirname(STICKYD_BIN)
    fill["@SYSCONFDIR@"] = "/etc"
    for placeholder, value in fill.items():
        text = text.replace(placeholder, value)
    left = re.findall(r"@[A-Z_]+@", text)
    expect(not left, f"placeholders the test does not fill: {left}")
    if instance is None:
        return write_file("stickyd.service", text)
    template = write_file("stickyd@.service", text)
    return os.path.join(os.path.dirname(template), f"stickyd@{instance}.service")


# ---------------------------------------------------------------------------------
# Runner


class _Deadline(BaseException):
    pass


def _on_alarm(signum, frame):
    raise _Deadline()


def _on_term(signum, frame):
    _kill_everything()
    print(f"interrupted by signal {signum}", flush=True)
    os._exit(1)


def main(deadline=TEST_DEADLINE):
    """Runs the calling module's test_* functions (filtered by argv substrings)."""
    module = sys.modules["__main__"]
    tests = [
        (name, fn) for name, fn in vars(module).items() if name.startswith("test_") and callable(fn)
    ]
    wanted = sys.argv[1:]
    if wanted:
        tests = [(n, f) for n, f in tests if any(w in n for w in wanted)]
    if sanitized():
        # Instrumented binaries run slower; meson doubles the files' timeouts for them too.
        deadline *= 2
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGHUP, _on_term)
    passed = failed = skipped = 0
    try:
        for name, fn in tests:
            detail = ""
            _sanitizer_reports.clear()
            try:
                if missing_binaries():
                    raise Failure(missing_binaries())
                signal.alarm(deadline)
                try:
                    fn()
                finally:
                    signal.alarm(0)
                outcome, reason = "PASS", ""
            except Skip as e:
                outcome, reason = "SKIP", str(e)
            except _Deadline:
                outcome, reason = "FAIL", f"did not finish within {deadline}s"
                detail = traceback.format_exc()
            except Exception as e:
                # An expectation's message as it is; anything else with its type, since
                # "timed out" alone does not say which operation.
                text = str(e) if isinstance(e, Failure) else f"{type(e).__name__}: {e}"
                lines = text.splitlines() or ["failed"]
                outcome, reason, detail = "FAIL", lines[0], "\n".join(lines[1:])
                if not missing_binaries():
                    detail += "\n" + traceback.format_exc()
            if outcome == "FAIL" and _test_dir is not None:
                detail += "".join(
                    "\n" + p.describe() for p in _processes if p.log_path.startswith(_test_dir)
                )
            _run_cleanups()  # stops this test's processes: their exit reports count too
            if _sanitizer_reports:
                label, report = _sanitizer_reports[0]
                if outcome != "FAIL":
                    outcome, reason = "FAIL", f"sanitizer report from {label}"
                else:
                    reason += f" (and a sanitizer report from {label})"
                detail += f"\nsanitizer report from {label} ({len(_sanitizer_reports)} in all):\n"
                detail += report
                _sanitizer_reports.clear()
            if outcome == "PASS":
                passed += 1
                print(f"PASS {name}", flush=True)
            elif outcome == "SKIP":
                skipped += 1
                print(f"SKIP {name}: {reason}", flush=True)
            else:
                failed += 1
                print(f"FAIL {name}: {reason}", flush=True)
                for line in detail.strip().splitlines():
                    print(f"    {line}", flush=True)
    finally:
        _run_cleanups()
        _kill_everything()
    print(f"cases: {passed} passed, {failed} failed, {skipped} skipped", flush=True)
    if failed:
        sys.exit(1)
    if skipped and not passed:
        sys.exit(77)
    sys.exit(0)
