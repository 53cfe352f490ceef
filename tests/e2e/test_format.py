#!/usr/bin/env python3
"""The tree is as scripts/format leaves it: C++ as clang-format writes it with the
repository's .clang-format, Python as black writes it (pyproject.toml), and flake8
(.flake8) finds nothing. Each failure names the files, and scripts/format fixes
all but flake8's findings."""
import os
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

ROOT = os.environ.get("STICKYD_SOURCE_ROOT") or os.path.join(os.path.dirname(__file__), "..", "..")


def tracked(*patterns):
    """Files git knows (or would add) matching patterns, relative to the root."""
    if not os.path.exists(os.path.join(ROOT, ".git")):  # a directory, or a worktree's file
        h.skip("not a git checkout: nothing says which files are the project's")
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "--", *patterns],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [f for f in out.stdout.split() if os.path.exists(os.path.join(ROOT, f))]


def python_files():
    # scripts/bench and scripts/test-summary are Python without the suffix.
    return tracked("*.py") + ["scripts/bench", "scripts/test-summary"]


def tool(name):
    # scripts/setup installs all three; a test that cannot run its tool fails.
    h.expect(
        subprocess.run(["sh", "-c", f"command -v {name}"], capture_output=True).returncode == 0,
        f"{name} is not installed (scripts/setup installs it)",
    )
    return name


def run(argv):
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cpp_is_clang_formatted():
    files = tracked("*.cpp", "*.hpp", "*.h")
    h.expect(len(files) > 50, f"C++ files found: {len(files)}")
    result = run([tool("clang-format"), "--dry-run", "-Werror", *files])
    bad = sorted({line.split(":")[0] for line in result.stderr.splitlines() if ": error:" in line})
    h.expect_eq(bad, [], "files clang-format would change (run scripts/format)")
    h.expect_eq(result.returncode, 0, f"clang-format: {result.stderr[-2000:]}")


def test_python_is_black_formatted():
    result = run([tool("black"), "--check", "--quiet", *python_files()])
    h.expect_eq(
        result.returncode,
        0,
        f"files black would reformat (run scripts/format): " f"{result.stderr.strip()}",
    )


def test_python_passes_flake8():
    result = run([tool("flake8"), *python_files()])
    h.expect_eq(result.stdout.strip(), "", "flake8 findings")
    h.expect_eq(result.returncode, 0, f"flake8: {result.stderr.strip()}")


if __name__ == "__main__":
    h.main()
