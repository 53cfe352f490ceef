#!/usr/bin/env python3
"""`meson install` never overwrites an operator's edited configuration: the first
install puts the example at <sysconfdir>/stickyd/stickyd.toml, a later one leaves
that file alone and installs the new example beside it as stickyd.toml.example
(the script says so too, though Meson 1.0 shows an install script's output only
when it fails). Run against this build with --destdir, twice. The bash
completions go where bash-completion loads them: share/bash-completion/completions
under the prefix (pkg-config's completionsdir, or that default)."""
import glob
import os
import shutil
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

BUILD = os.path.dirname(h.STICKYD_BIN)
EXAMPLE = os.path.join(h.SOURCE_ROOT, "conf", "stickyd.toml")


def install(destdir):
    meson = shutil.which("meson")
    if meson is None:
        h.skip("meson is not installed")
    r = h.run([meson, "install", "-C", BUILD, "--no-rebuild", "--destdir", destdir], timeout=120)
    h.expect_eq(r.returncode, 0, f"meson install:\n{r.stdout}{r.stderr}")
    return r.stdout + r.stderr


def test_a_second_install_keeps_the_edited_configuration():
    destdir = os.path.join(h.temp_dir(), "root")
    first = install(destdir)
    configs = glob.glob(os.path.join(destdir, "**", "stickyd", "stickyd.toml"), recursive=True)
    h.expect_eq(len(configs), 1, f"installed configurations {configs}")
    config = configs[0]
    with open(config, encoding="utf-8") as f, open(EXAMPLE, encoding="utf-8") as g:
        h.expect_eq(f.read(), g.read(), "the first install's configuration")
    h.expect("kept the existing" not in first, f"first install said it kept a file:\n{first}")
    h.expect(not os.path.exists(config + ".example"), "an .example on the first install")

    edited = "# the operator's own\n"
    with open(config, "w", encoding="utf-8") as f:
        f.write(edited)
    install(destdir)
    with open(config, encoding="utf-8") as f:
        h.expect_eq(f.read(), edited, "the configuration after a second install")
    with open(config + ".example", encoding="utf-8") as f, open(EXAMPLE, encoding="utf-8") as g:
        h.expect_eq(f.read(), g.read(), "the example beside it")


def test_bash_completion_is_installed_where_bash_completion_loads_it():
    destdir = os.path.join(h.temp_dir(), "root")
    install(destdir)
    for program in ("stickyd", "stickyctl"):
        paths = glob.glob(
            os.path.join(destdir, "**", "share", "bash-completion", "completions", program),
            recursive=True,
        )
        h.expect_eq(len(paths), 1, f"installed completion files for {program}")
        with open(paths[0], encoding="utf-8") as f, open(
            os.path.join(h.SOURCE_ROOT, "completions", program), encoding="utf-8"
        ) as g:
            h.expect_eq(f.read(), g.read(), f"the installed completion for {program}")


if __name__ == "__main__":
    h.main()
