#!/usr/bin/env python3
"""Source-IP stickiness: one client address always reaches the same backend, the
mapping is spread over the backends, and it depends only on the targets' identities,
never on their order in the configuration."""
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

SOURCES = h.source_ips(60)  # 127.0.0.2 ... 127.0.0.61
REPEAT = 5


def test_each_source_ip_sticks_to_one_backend():
    backends = h.start_backends(3)
    lb = h.lb_addr()
    h.start_stickyd(h.simple_config(h.fmt_addr(lb), backends), addr=lb)
    seen = h.mapping(lb, SOURCES, repeat=REPEAT)
    used = set(seen.values())
    h.expect(used <= {b.name for b in backends}, f"unknown backend names: {used}")
    h.expect(len(used) >= 2, f"all {len(SOURCES)} sources went to {used}: no spreading")
    # Sticky across interleaved connections too, not only back to back.
    for ip in reversed(SOURCES):
        h.expect_eq(h.whoami(ip, lb), seen[ip], f"backend for {ip} on a later round")


def test_target_order_does_not_change_the_mapping():
    backends = h.start_backends(3)
    lb1, lb2 = h.lb_addr(), h.lb_addr()
    h.start_stickyd(h.simple_config(h.fmt_addr(lb1), backends, order=[0, 1, 2]), addr=lb1)
    h.start_stickyd(h.simple_config(h.fmt_addr(lb2), backends, order=[2, 0, 1]), addr=lb2)
    first = h.mapping(lb1, SOURCES)
    second = h.mapping(lb2, SOURCES)
    differ = [ip for ip in SOURCES if first[ip] != second[ip]]
    h.expect(
        not differ,
        f"{len(differ)} of {len(SOURCES)} sources map differently when the "
        f"targets are listed in another order, e.g. {differ[:3]} -> "
        f"{[(first[ip], second[ip]) for ip in differ[:3]]}",
    )
    h.expect(len(set(first.values())) >= 2, "all sources went to one backend")


def test_target_identity_is_the_id_not_the_address():
    # Same ids, addresses swapped around between two instances: a target's clients
    # follow its id. Backends a/b/c are named by id, so each instance must send a
    # source to the backend *listed under* the same id.
    backends = h.start_backends(3)
    lb1, lb2 = h.lb_addr(), h.lb_addr()
    ids = ["node-a", "node-b", "node-c"]

    def config(bind, rotation):
        targets = [
            {"id": ids[i], "address": backends[(i + rotation) % 3].address} for i in range(3)
        ]
        return h.config_text(
            [{"bind": bind, "target_group": "web"}], [{"name": "web", "targets": targets}]
        )

    h.start_stickyd(config(h.fmt_addr(lb1), 0), addr=lb1)
    h.start_stickyd(config(h.fmt_addr(lb2), 1), addr=lb2)
    names = [b.name for b in backends]
    first = h.mapping(lb1, SOURCES)
    second = h.mapping(lb2, SOURCES)
    for ip in SOURCES:
        id1 = ids[names.index(first[ip])]  # rotation 0: backend i is id i
        id2 = ids[(names.index(second[ip]) - 1) % 3]  # rotation 1: backend i is id i-1
        h.expect_eq(id2, id1, f"target id chosen for {ip} by the two instances")


def test_quick_mode_is_sticky_and_matches_a_config_without_ids():
    backends = h.start_backends(3)
    lb = h.lb_addr()
    args = ["--listen", h.fmt_addr(lb), "--threads", "2"]
    for b in backends:
        args += ["--target", b.address]
    h.start_stickyd(args=args, addr=lb)
    quick = h.mapping(lb, SOURCES, repeat=REPEAT)
    h.expect(
        len(set(quick.values())) >= 2, f"quick mode sent every source to {set(quick.values())}"
    )
    # Without ids a target's identity is its address, so a file listing the same
    # addresses (in another order) must agree with the flags.
    lb2 = h.lb_addr()
    h.start_stickyd(
        h.simple_config(h.fmt_addr(lb2), backends, with_ids=False, order=[1, 2, 0]), addr=lb2
    )
    from_file = h.mapping(lb2, SOURCES)
    differ = [ip for ip in SOURCES if quick[ip] != from_file[ip]]
    h.expect(
        not differ,
        f"{len(differ)} sources map differently in quick mode and in a config "
        f"file with the same targets, e.g. {differ[:3]}",
    )


def test_maglev_is_sticky_and_order_independent():
    backends = h.start_backends(3)
    lb1, lb2 = h.lb_addr(), h.lb_addr()
    group = {"algorithm": "maglev"}
    h.start_stickyd(h.simple_config(h.fmt_addr(lb1), backends, group=group), addr=lb1)
    h.start_stickyd(
        h.simple_config(h.fmt_addr(lb2), backends, group=group, order=[1, 2, 0]), addr=lb2
    )
    first = h.mapping(lb1, SOURCES, repeat=REPEAT)
    second = h.mapping(lb2, SOURCES)
    h.expect(len(set(first.values())) >= 2, f"maglev sent every source to {set(first.values())}")
    differ = [ip for ip in SOURCES if first[ip] != second[ip]]
    h.expect(
        not differ,
        f"{len(differ)} sources map differently with the maglev targets "
        f"in another order, e.g. {differ[:3]}",
    )


def test_prefix_v4_keeps_a_subnet_together():
    # prefix_v4 = 24: every 127.0.N.x of one /24 sticks to one backend, while
    # different /24s still spread.
    backends = h.start_backends(3)
    lb = h.lb_addr()
    h.start_stickyd(
        h.simple_config(h.fmt_addr(lb), backends, group={"stickiness": {"prefix_v4": 24}}), addr=lb
    )
    per_subnet = {}
    for n in range(1, 31):
        names = {h.whoami(f"127.0.{n}.{host}", lb) for host in (2, 77, 200)}
        h.expect(len(names) == 1, f"127.0.{n}.0/24 spread over {sorted(names)} with prefix_v4 = 24")
        per_subnet[n] = names.pop()
    h.expect(
        len(set(per_subnet.values())) >= 2,
        f"all 30 subnets went to {set(per_subnet.values())}: no spreading",
    )


def test_weight_gives_a_bigger_share():
    # Weight 1 vs weight 4 over 200 sources: the heavy target must get the larger
    # share. (A loose bound on purpose: exact shares are the unit tests' business.)
    backends = h.start_backends(2)
    lb = h.lb_addr()
    targets = [
        {"id": backends[0].name, "address": backends[0].address, "weight": 1},
        {"id": backends[1].name, "address": backends[1].address, "weight": 4},
    ]
    h.start_stickyd(
        h.config_text(
            [{"bind": h.fmt_addr(lb), "target_group": "web"}], [{"name": "web", "targets": targets}]
        ),
        addr=lb,
    )
    seen = h.mapping(lb, h.source_ips(200))
    heavy = sum(1 for name in seen.values() if name == backends[1].name)
    h.expect(heavy > 130, f"weight-4 target got {heavy} of 200 sources; expected about 160")


if __name__ == "__main__":
    h.main()
