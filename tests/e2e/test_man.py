#!/usr/bin/env python3
"""The man pages stickyd(8) and stickyctl(8): built by meson from docs/man, they
render with man(1), have the sections a man page needs, and name exactly the
options the programs take (every flag --help lists is documented, and the pages
document no flag the programs lack)."""
import os
import re
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

BUILD = os.path.dirname(h.STICKYD_BIN)
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
SECTIONS = ["NAME", "SYNOPSIS", "DESCRIPTION", "EXIT STATUS", "EXAMPLES", "SEE ALSO"]


def rendered(page):
    path = os.path.join(BUILD, page)
    if not os.path.exists(path):
        h.skip(f"{path} was not built (scdoc missing; scripts/setup installs it)")
    out = subprocess.run(
        ["man", "-l", "-P", "cat", path],
        capture_output=True,
        text=True,
        env=dict(os.environ, MANWIDTH="1000"),
        stdin=subprocess.DEVNULL,
        timeout=30,
    )
    h.expect_eq(out.returncode, 0, f"man -l {page} exit status ({out.stderr.strip()})")
    h.expect_eq(out.stderr.strip(), "", f"man -l {page} warnings")
    # Lines wide enough that man never hyphenates a flag; its typographic hyphens
    # fold back for matching.
    return out.stdout.replace("\u2010", "-").replace("\u2212", "-")


def help_flags(argv):
    out = subprocess.run(
        argv + ["--help"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )
    return set(FLAG.findall(out.stdout))


def check_page(page, flags):
    text = rendered(page)
    for section in SECTIONS:
        h.expect(re.search(rf"^{section}$", text, re.M), f"{page} has no {section} section")
    documented = set(FLAG.findall(text))
    missing = sorted(flags - documented)
    extra = sorted(documented - flags)
    h.expect(not missing, f"{page} does not document {missing}")
    h.expect(not extra, f"{page} documents flags the program does not take: {extra}")


def test_stickyd_page_documents_every_option():
    check_page("stickyd.8", help_flags([h.STICKYD_BIN]))


def test_stickyctl_page_documents_every_option_of_every_command():
    out = subprocess.run(
        [h.STICKYCTL_BIN, "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    ).stdout
    commands = re.findall(r"^  ([a-z]+) ", out.split("Subcommands:", 1)[1], re.M)
    h.expect(len(commands) >= 6, f"no subcommands found in:\n{out}")
    flags = help_flags([h.STICKYCTL_BIN])
    for command in commands:
        flags |= help_flags([h.STICKYCTL_BIN, command])
    check_page("stickyctl.8", flags)
    text = rendered("stickyctl.8")
    for command in commands:
        h.expect(
            re.search(rf"^ +{command}\b", text, re.M),
            f"stickyctl.8 does not describe the command {command}",
        )


if __name__ == "__main__":
    h.main()
