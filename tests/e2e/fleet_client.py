#!/usr/bin/env python3
"""Clients of the fleet test, run inside the client network namespace.

Usage: fleet_client.py VIP PORT CONTROL_DIR SOURCE...

Prints one JSON line per phase on stdout:
  {"spread": {src: [[backend, instance], ...]}}    SPREAD connections per source
  {"held": {src: [backend, instance]}}             one held connection per HELD source
  {"streaming": true}                              the continuous stream has started
  {"progress": n}                                  every 100 connects
  {"done": {...}}                                  after CONTROL_DIR/stop appears
Every connection sends "STICKYD-TEST WHOAMI" to stickyd-echo, which answers with its
name and the address it saw (the instance that relayed the connection).
"""
import json
import os
import socket
import sys
import time

SPREAD = 8
HELD = 30
TIMEOUT = 5.0


def say(doc):
    print(json.dumps(doc), flush=True)


def whoami(vip, src):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    try:
        s.bind((src, 0))
        s.connect(vip)
        s.sendall(b"STICKYD-TEST WHOAMI\n")
        line = b""
        while not line.endswith(b"\n"):
            chunk = s.recv(256)
            if not chunk:
                raise ConnectionError(f"EOF after {line!r}")
            line += chunk
    except BaseException:
        s.close()
        raise
    name, peer = line.decode().split()
    return s, name, peer


def echo_ok(s, payload):
    try:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(4096)
            if not chunk:
                return f"EOF after {len(got)} bytes"
            got += chunk
        return "ok" if got == payload else "corrupt"
    except OSError as e:
        return f"{type(e).__name__}: {e}"


def main():
    vip = (sys.argv[1], int(sys.argv[2]))
    control = sys.argv[3]
    sources = sys.argv[4:]

    spread = {}
    for src in sources:
        spread[src] = []
        for _ in range(SPREAD):
            s, name, peer = whoami(vip, src)
            s.close()
            spread[src].append([name, peer])
    say({"spread": spread})

    held, held_info = {}, {}
    for src in sources[:HELD]:
        s, name, peer = whoami(vip, src)
        held[src] = s
        held_info[src] = [name, peer]
    say({"held": held_info})

    say({"streaming": True})
    backends = {src: set() for src in sources}
    instances = {src: set() for src in sources}
    failures = []
    connects = 0
    i = 0
    while not os.path.exists(os.path.join(control, "stop")):
        src = sources[i % len(sources)]
        i += 1
        try:
            s, name, peer = whoami(vip, src)
            s.close()
            backends[src].add(name)
            instances[src].add(peer)
        except OSError as e:
            failures.append([src, time.time(), f"{type(e).__name__}: {e}"])
        connects += 1
        if connects % 100 == 0:
            say({"progress": connects})

    held_result = {src: echo_ok(s, f"still here {src}\n".encode() * 20) for src, s in held.items()}
    say(
        {
            "done": {
                "connects": connects,
                "failures": failures,
                "backends": {k: sorted(v) for k, v in backends.items()},
                "instances": {k: sorted(v) for k, v in instances.items()},
                "held": held_result,
            }
        }
    )


if __name__ == "__main__":
    main()
