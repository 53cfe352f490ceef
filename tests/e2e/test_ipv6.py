#!/usr/bin/env python3
"""IPv6: an [::1] listener in front of backends on [::1] and on 127.0.0.1."""
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

SOURCES = h.source_ips(60)


def need_ipv6():
    if not h.ipv6_available():
        h.skip("::1 is not available on this machine")


def start_mixed():
    """Backends v6-1, v6-2 on [::1] and v4-1 on 127.0.0.1; listeners on [::1] and
    127.0.0.1, both for the same group."""
    backends = [
        h.start_backend("v6-1", "::1"),
        h.start_backend("v6-2", "::1"),
        h.start_backend("v4-1", "127.0.0.1"),
    ]
    lb6, lb4 = h.lb_addr("::1"), h.lb_addr("127.0.0.1")
    config = h.config_text(
        [
            {"bind": h.fmt_addr(lb6), "target_group": "web"},
            {"bind": h.fmt_addr(lb4), "target_group": "web"},
        ],
        [{"name": "web", "targets": [{"id": b.name, "address": b.address} for b in backends]}],
    )
    h.start_stickyd(config, addr=lb6)
    h.wait_accepting(lb4)
    return backends, lb6, lb4


def test_ipv6_listener_is_sticky():
    need_ipv6()
    backends, lb6, _ = start_mixed()
    names = {h.whoami("::1", lb6) for _ in range(10)}
    h.expect_eq(len(names), 1, f"connections from ::1 reached {sorted(names)}: not sticky")
    h.expect(names <= {b.name for b in backends}, f"unknown backend {names}")
    # The backend sees the connection as coming from stickyd, over its own family.
    with h.connect(lb6, "::1") as s:
        h.send_all(s, b"STICKYD-TEST WHOAMI\n")
        name, peer = h.recv_line(s).split()
    h.expect_eq(name, names.pop(), "WHOAMI through the IPv6 listener")
    h.expect_eq(
        peer, "::1" if name.startswith("v6") else "127.0.0.1", "the source address the backend saw"
    )


def test_both_backend_families_carry_traffic():
    need_ipv6()
    backends, _, lb4 = start_mixed()
    seen = h.mapping(lb4, SOURCES, repeat=3)
    used = set(seen.values())
    h.expect(
        "v4-1" in used and used & {"v6-1", "v6-2"},
        f"{len(SOURCES)} IPv4 sources reached only {sorted(used)}; need an IPv4 and an "
        "IPv6 backend",
    )
    # Bulk data through a v4 client -> v6 backend path and the other way round.
    for ip in SOURCES:
        if seen[ip].startswith("v6"):
            break
    payload = h.random_payload(512 * 1024, seed=6)
    with h.connect(lb4, ip) as s:
        count, digest = h.echo_roundtrip(s, payload)
    h.expect_eq((count, digest), (len(payload), h.sha256(payload)), f"echo via {seen[ip]}")


def test_ipv4_mapped_clients_hash_as_ipv4():
    # An IPv6 listener on ::ffff:127.0.0.1 sees IPv4 clients as ::ffff:a.b.c.d, as a
    # dual-stack [::] listener does. They must hash as plain IPv4: the same sources
    # reach the same backends through it as through a 127.0.0.1 listener.
    need_ipv6()
    backends = h.start_backends(3)
    lb4 = h.lb_addr("127.0.0.1")
    mapped_port = h.free_port("127.0.0.1")
    config = h.config_text(
        [
            {"bind": h.fmt_addr(lb4), "target_group": "web"},
            {"bind": f"[::ffff:127.0.0.1]:{mapped_port}", "target_group": "web"},
        ],
        [{"name": "web", "targets": [{"id": b.name, "address": b.address} for b in backends]}],
    )
    h.start_stickyd(config, addr=lb4)
    mapped = ("127.0.0.1", mapped_port)
    h.wait_accepting(mapped)
    plain = h.mapping(lb4, SOURCES)
    via_mapped = h.mapping(mapped, SOURCES, repeat=2)
    differ = [ip for ip in SOURCES if plain[ip] != via_mapped[ip]]
    h.expect(
        not differ,
        f"{len(differ)} of {len(SOURCES)} sources reach another backend through "
        f"the v4-mapped listener, e.g. {differ[:3]}",
    )
    h.expect(len(set(plain.values())) >= 2, "all sources went to one backend")


if __name__ == "__main__":
    h.main()
