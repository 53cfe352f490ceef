#!/usr/bin/env python3
"""TCP_NODELAY on both sides of a proxied connection, seen from outside the daemon.

A peer cannot see the other end's socket options, and neither `ss -i` nor
/proc/PID/fdinfo shows TCP_NODELAY. So the test borrows stickyd's own sockets with
pidfd_getfd(2) (Linux 5.6; allowed for a parent on its child) and asks them: the
listener, the client socket it accepted and the socket it connected to the target.
No latency is measured."""
import ctypes
import errno
import os
import platform
import socket
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

# pidfd_getfd has the same number on every architecture (the unified syscall table).
SYS_PIDFD_GETFD = 438


def borrowed_sockets(pid):
    """[(fd number in pid, socket)] for every TCP socket of pid: duplicates in this
    process (closed at cleanup). SKIP when the kernel does not allow it."""
    if not hasattr(os, "pidfd_open"):
        h.skip("needs os.pidfd_open (Python 3.9)")
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    h.on_cleanup(lambda: os.close(pidfd))
    found = []
    for name in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
            continue
        fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
        if fd < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOSYS, errno.EPERM):
                h.skip(
                    f"pidfd_getfd on stickyd: {os.strerror(err)} (kernel "
                    f"{platform.release()}; needs 5.6 and ptrace access to a child)"
                )
            if err == errno.EBADF:  # closed meanwhile
                continue
            raise h.Failure(f"pidfd_getfd(stickyd fd {name}): {os.strerror(err)}")
        sock = socket.socket(fileno=fd)
        h.on_cleanup(sock.close)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
            found.append((int(name), sock))
    return found


def no_delay(sock):
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def peer_or_none(sock):
    try:
        return sock.getpeername()[:2]
    except OSError:  # a listener
        return None


def test_nodelay_on_the_listener_the_client_side_and_the_target_side():
    def handler(conn):
        try:
            h.recv_line(conn)
        except h.Failure:
            return None  # the readiness probe
        # stickyd's address on this connection: which of its sockets faces the target.
        conn.sendall(("%s %d\n" % conn.getpeername()[:2]).encode())
        h.wait_closed(conn)
        return True

    server = h.PyServer(handler)
    lb = h.lb_addr()
    stickyd = h.start_stickyd(h.simple_config(h.fmt_addr(lb), [server.address]), addr=lb)
    with h.connect(lb, "127.0.0.2") as client:
        h.send_all(client, b"hello\n")
        ip, port = h.recv_line(client).split()
        toward_target = (ip, int(port))
        accepted_from = client.getsockname()[:2]
        # The test's own socket has the default, so the check below can tell.
        h.expect_eq(no_delay(client), 0, "TCP_NODELAY on the test's client socket")

        sockets = borrowed_sockets(stickyd.process.pid)
        listeners = [
            (fd, s)
            for fd, s in sockets
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) and s.getsockname()[:2] == lb
        ]
        client_side = [(fd, s) for fd, s in sockets if peer_or_none(s) == accepted_from]
        target_side = [
            (fd, s)
            for fd, s in sockets
            if s.getsockname()[:2] == toward_target and peer_or_none(s) == server.addr
        ]
        h.expect_eq(
            len(listeners),
            2,
            f"stickyd's listening sockets on {h.fmt_addr(lb)} " "(one per worker)",
        )
        h.expect_eq(len(client_side), 1, f"stickyd's sockets accepted from {accepted_from}")
        h.expect_eq(len(target_side), 1, f"stickyd's sockets from {toward_target} to the target")
        for what, found in (
            ("listener", listeners),
            ("accepted client socket", client_side),
            ("socket toward the target", target_side),
        ):
            for fd, sock in found:
                h.expect_eq(no_delay(sock), 1, f"TCP_NODELAY on stickyd's {what} (fd {fd})")


if __name__ == "__main__":
    h.main()
