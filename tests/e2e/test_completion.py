#!/usr/bin/env python3
"""Bash completion (completions/stickyd, completions/stickyctl): sourced in bash,
with COMP_WORDS and COMP_CWORD set as bash sets them, the functions offer every
option `--help` lists (so a new flag without completion fails here), every
stickyctl command and each command's own options, the fixed choices --help shows
as {a,b,c}, and for drain and enable the target ids (and for --group the groups)
of the daemon the command line names. meson installs both files (test_install)."""
import os
import re
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

COMPLETIONS = os.path.join(h.SOURCE_ROOT, "completions")


def complete(program, words, line=None):
    """COMPREPLY of program's completion function for the command line `words`, the
    last of which is the word being completed."""
    script = os.path.join(COMPLETIONS, program)
    setup = [
        f"source {script}",
        "COMP_WORDS=(" + " ".join(_quote(w) for w in words) + ")",
        f"COMP_CWORD={len(words) - 1}",
    ]
    if line is not None:
        setup += [f"COMP_LINE={_quote(line)}", f"COMP_POINT={len(line)}"]
    function = "_" + program
    body = "; ".join(setup + [function, 'printf "%s\\n" "${COMPREPLY[@]}"'])
    r = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", body],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    h.expect_eq(r.returncode, 0, f"{function} for {words}: {r.stderr}")
    h.expect_eq(r.stderr, "", f"what {function} printed on stderr for {words}")
    return [w for w in r.stdout.splitlines() if w]


def _quote(word):
    return "'" + word.replace("'", "'\\''") + "'"


def help_of(argv):
    r = h.run(argv + ["--help"])
    h.expect_eq(r.returncode, 0, f"{' '.join(argv)} --help")
    return r.stdout


def long_flags(text):
    """The long options --help defines (one per option line; not those its
    descriptions mention)."""
    return set(re.findall(r"^\s+(?:-\w,)?(--[a-z][a-z0-9-]*)", text, re.M))


def choices(text):
    """{--flag: [choices]} for every option --help shows as TYPE:{a,b,c}."""
    out = {}
    for flag, values in re.findall(r"^\s+(?:-\w,)?(--[a-z0-9-]+) \w+:\{([^}]*)\}", text, re.M):
        out[flag] = values.split(",")
    return out


def test_files_parse_and_register():
    for program in ("stickyd", "stickyctl"):
        script = os.path.join(COMPLETIONS, program)
        r = h.run(
            ["bash", "--norc", "--noprofile", "-c", f"source {script}; complete -p {program}"]
        )
        h.expect_eq(r.returncode, 0, f"sourcing {script}: {r.stderr}")
        h.expect(f"-F _{program} {program}" in r.stdout, f"complete -p {program}: {r.stdout!r}")


def test_stickyd_options_are_every_flag_of_its_help():
    text = help_of([h.STICKYD_BIN])
    flags = long_flags(text)
    h.expect(len(flags) > 20, f"few flags in stickyd --help: {sorted(flags)}")
    offered = set(complete("stickyd", ["stickyd", "--"]))
    h.expect_eq(sorted(flags - offered), [], "stickyd flags the completion does not offer")
    h.expect_eq(sorted(offered - flags), [], "completions stickyd --help does not list")
    h.expect_eq(
        sorted(complete("stickyd", ["stickyd", "--acc"])),
        ["--accept-proxy-protocol", "--access-log"],
        "completing --acc",
    )


def test_stickyd_choices_are_those_of_its_help():
    found = choices(help_of([h.STICKYD_BIN]))
    h.expect("--log-level" in found, f"no choices found in stickyd --help: {found}")
    for flag, values in found.items():
        h.expect_eq(
            complete("stickyd", ["stickyd", flag, ""]), values, f"completing the value of {flag}"
        )
    h.expect_eq(
        complete("stickyd", ["stickyd", "--log-level", "=", "d"]),
        ["debug"],
        "completing --log-level=d",
    )
    h.expect_eq(
        complete("stickyd", ["stickyd", "--health-port", ""]),
        ["traffic-port"],
        "completing --health-port",
    )
    # Files for the configuration.
    conf = os.path.join(h.SOURCE_ROOT, "conf", "st")
    h.expect_eq(
        complete("stickyd", ["stickyd", "--check-config", conf]),
        [conf + "ickyd.toml"],
        "completing --check-config conf/st",
    )
    h.expect_eq(
        complete("stickyd", ["stickyd", "--listen", ""]),
        [],
        "completing an address (the user's own)",
    )


def stickyctl_commands():
    text = help_of([h.STICKYCTL_BIN])
    commands = re.findall(r"^  ([a-z]+) ", text.split("Subcommands:", 1)[1], re.M)
    h.expect(len(commands) >= 6, f"no commands found in stickyctl --help:\n{text}")
    return commands


def test_stickyctl_commands_and_their_options():
    commands = stickyctl_commands()
    h.expect_eq(
        sorted(complete("stickyctl", ["stickyctl", ""])),
        sorted(commands),
        "stickyctl commands offered",
    )
    h.expect_eq(complete("stickyctl", ["stickyctl", "si"]), ["simulate"], "completing si")
    top = long_flags(help_of([h.STICKYCTL_BIN]))
    h.expect_eq(set(complete("stickyctl", ["stickyctl", "--"])), top, "stickyctl's own options")
    for command in commands:
        flags = long_flags(help_of([h.STICKYCTL_BIN, command]))
        offered = set(complete("stickyctl", ["stickyctl", command, "--"]))
        h.expect_eq(
            sorted(flags - offered), [], f"stickyctl {command} flags the completion does not offer"
        )
        h.expect_eq(
            sorted(offered - flags), [], f"stickyctl {command} completions its --help does not list"
        )


def test_stickyctl_ids_and_groups_from_a_config_file():
    conf = os.path.join(h.SOURCE_ROOT, "conf", "stickyd.toml")
    h.expect_eq(
        complete("stickyctl", ["stickyctl", "simulate", "--config", conf, "--remove", "web-"]),
        ["web-1", "web-2", "web-3"],
        "target ids for --remove from the configuration",
    )
    h.expect_eq(
        complete("stickyctl", ["stickyctl", "simulate", "-c", conf, "--group", ""]),
        ["web", "sockjs"],
        "groups for --group from the configuration",
    )


def test_stickyctl_target_ids_from_the_running_daemon():
    backends = h.start_backends(2)
    lb = h.lb_addr()
    d = h.start_stickyd(
        args=["--listen", h.fmt_addr(lb)] + [a for b in backends for a in ("--target", b.address)],
        addr=lb,
    )
    ids = sorted(b.address for b in backends)
    # The completion asks the stickyctl the line runs (here: this build's).
    for command in ("drain", "enable"):
        h.expect_eq(
            sorted(
                complete("stickyctl", [h.STICKYCTL_BIN, command, "--admin", d.admin_socket, ""])
            ),
            ids,
            f"target ids for stickyctl {command}",
        )
    h.expect_eq(
        complete(
            "stickyctl", [h.STICKYCTL_BIN, "status", "--admin", d.admin_socket, "--group", ""]
        ),
        ["default"],
        "groups for --group from the daemon",
    )
    # Bash splits an id at its colon: only what follows the colon is offered.
    first = ids[0]
    host, port = first.rsplit(":", 1)
    line = f"{h.STICKYCTL_BIN} drain --admin {d.admin_socket} {host}:{port[:2]}"
    offered = complete(
        "stickyctl",
        [h.STICKYCTL_BIN, "drain", "--admin", d.admin_socket, host, ":", port[:2]],
        line=line,
    )
    h.expect(port in offered, f"completing {host}:{port[:2]} offered {offered}")
    # No daemon there: nothing offered, nothing printed, no wait.
    missing = os.path.join(h.temp_dir(), "none.sock")
    h.expect_eq(
        complete("stickyctl", [h.STICKYCTL_BIN, "drain", "--admin", missing, ""]),
        [],
        "target ids without a daemon",
    )


if __name__ == "__main__":
    h.main()
