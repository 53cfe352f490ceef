#!/usr/bin/env python3
"""The documentation shows only what works. In README.md, docs/*.md and
kubernetes/README.md:

- every command in a fenced block (each line of a sh block, each `$ ` line of any
  other) is one this test checks: stickyd, stickyctl, stickyd-echo and the bench
  programs take every flag and subcommand it uses (per their --help), a script of
  ours exists and knows its flags and variables, a configuration file it names
  passes --check-config, system tools know their long flags, sysctls exist and
  systemctl names our units; a program nothing checks fails the test;
- every TOML block passes `stickyd --check-config` without a warning;
- `stickyctl ring|lookup|simulate --config FILE` print exactly what the pages show;
- the sessions of docs/stickyctl.md (demo backends, traffic, status, ring, lookup,
  drain, enable, the HTTP API, Prometheus) and of docs/stickiness.md (compare)
  print what the pages show when replayed against real daemons;
- docs/stickyctl.md's metrics table names exactly the families of a live /metrics,
  and no page names a metric that does not exist;
- every relative link and anchor resolves, and every repository path in backticks
  exists;
- docs/design.md names every file under src/, include/ and tools/, and no other;
- the README stays short."""
import glob
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

ROOT = h.SOURCE_ROOT
BUILD = os.path.dirname(h.STICKYD_BIN)
README_MAX_LINES = 200

# Our programs: where the build put them.
OURS = {
    "stickyd": h.STICKYD_BIN,
    "stickyctl": h.STICKYCTL_BIN,
    "stickyd-echo": h.ECHO_BIN,
    "ring-bench": os.path.join(BUILD, "ring-bench"),
    "relay-bench": os.path.join(BUILD, "relay-bench"),
    "source-filter-bench": os.path.join(BUILD, "source-filter-bench"),
}
# System tools whose long flags are checked against their --help (when installed).
TOOLS = {
    "curl",
    "meson",
    "ninja",
    "systemctl",
    "journalctl",
    "systemd-analyze",
    "prlimit",
    "ss",
    "nstat",
    "docker",
    "podman",
    "sort",
    "uniq",
    "wc",
    "seq",
    "cat",
    "pidof",
    "kubectl",
    "python3",
    "man",
    "install",
    "ip",
    "nft",
}
# Shell builtins and keywords: nothing to check beyond what they run.
BUILTINS = {"echo", "kill", "ulimit", "cd", "export", "true", "false", "wait"}
UNITS = re.compile(r"^stickyd(\.service|\.socket|@[\w.-]+?(\.service)?)?$")
METRIC = re.compile(r"\bstickyd_[a-z0-9_]+\b(?!\.[a-z])")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


# ---------------------------------------------------------------------------------
# Reading the pages


def doc_paths():
    paths = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "kubernetes", "README.md")]
    paths += sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    return paths


def rel(path):
    return os.path.relpath(path, ROOT)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


class Block:
    def __init__(self, path, lang, first_line):
        self.path, self.lang, self.first_line, self.lines = path, lang, first_line, []

    def where(self, offset=0):
        return f"{rel(self.path)}:{self.first_line + offset}"


def blocks(path):
    out, current = [], None
    for number, line in enumerate(read(path).splitlines(), 1):
        fence = re.match(r"^\s*```(\S*)\s*$", line)
        if fence and current is None:
            current = Block(path, fence.group(1), number + 1)
        elif fence:
            out.append(current)
            current = None
        elif current is not None:
            current.lines.append(line)
    h.expect(current is None, f"{rel(path)}: a code block is not closed")
    return out


class Command:
    """One command line shown in a page, with the output shown under it (if any)."""

    def __init__(self, block, offset, text, output=None):
        self.block, self.offset, self.text, self.output = block, offset, text, output

    def where(self):
        return self.block.where(self.offset)


def commands(path):
    """Every command of a page: each line of a sh block (continuations joined,
    comments and blank lines dropped), and each `$ ` line of any other block with
    the lines under it as its output."""
    out = []
    for block in blocks(path):
        if block.lang in ("sh", "bash", "shell"):
            pending, start = "", 0
            for i, line in enumerate(block.lines):
                if not pending:
                    start = i
                pending += line
                if pending.endswith("\\"):
                    pending = pending[:-1] + " "
                    continue
                text = pending.strip()
                pending = ""
                if text and not text.startswith("#"):
                    out.append(Command(block, start, text))
        elif block.lang in ("", "console", "text"):
            current = None
            for i, line in enumerate(block.lines):
                if line.startswith("$ "):
                    current = Command(block, i, line[2:].strip(), [])
                    out.append(current)
                elif current is not None:
                    current.output.append(line)
            for c in out:
                if c.block is block and c.output is not None:
                    while c.output and not c.output[-1].strip():
                        c.output.pop()
    return out


# ---------------------------------------------------------------------------------
# Taking a command line apart

SEPARATORS = {"|", "||", "&&", ";", "&", ";;"}
REDIRECTS = {">", ">>", "<", "2>", "2>>", "&>", ">&"}


def split_segments(text):
    """The simple commands of a shell line, each a list of words. A command
    substitution $(...) is a command of its own and a word SUBST in its place."""
    return [words for _, words in split_with_env(text)]


def split_with_env(text):
    """As split_segments, each with the names of the variables set in front of it."""
    inner = []

    def substitute(m):
        inner.append(m.group(1))
        return " SUBST "

    text = re.sub(r"\$\(([^()]*)\)", substitute, text)
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words = list(lexer)
    segments, current, skip = [], [], False
    for word in words:
        if skip:
            skip = False
            continue
        if word in SEPARATORS:
            segments.append(current)
            current = []
        elif word in REDIRECTS:
            if current and current[-1].isdigit():
                current.pop()
            skip = True
        else:
            current.append(word)
    segments.append(current)
    out = [strip_keywords(s) for s in segments]
    for command in inner:
        out += split_with_env(command)
    return [(env, words) for env, words in out if words]


def strip_keywords(words):
    env = []
    while words:
        if words[0] in ("do", "then", "else", "if", "while", "until", "time", "exec"):
            words = words[1:]
        elif words[0] in ("done", "fi"):
            return env, []
        elif words[0] == "for":
            return env, []  # for NAME in WORDS: no command
        elif re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            env.append(words[0].split("=", 1)[0])
            words = words[1:]
        elif words[0] == "sudo":
            words = words[1:]
        else:
            break
    return env, words


_help_cache = {}


def help_text(argv):
    key = tuple(argv)
    if key not in _help_cache:
        try:
            r = subprocess.run(
                argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
            )
            _help_cache[key] = r.stdout + r.stderr
        except (OSError, subprocess.TimeoutExpired):
            _help_cache[key] = None
    return _help_cache[key]


def flags_of(argv):
    """The options one of our programs defines: those its --help lists one per line
    (not those its descriptions mention), long and short."""
    text = help_text(argv + ["--help"])
    h.expect(text, f"{' '.join(argv)} --help printed nothing")
    return set(re.findall(r"^\s+(?:-[A-Za-z],)?(--[a-z][a-z0-9-]*)", text, re.M)) | set(
        re.findall(r"^\s+(-[A-Za-z])[,\s]", text, re.M)
    )


def stickyctl_commands():
    text = help_text([h.STICKYCTL_BIN, "--help"])
    return re.findall(r"^  ([a-z]+) ", text.split("Subcommands:", 1)[1], re.M)


def used_flags(words):
    out = []
    for w in words:
        if w == "--":
            break
        if re.match(r"^--[a-z]", w):
            out.append(w.split("=", 1)[0])
        elif re.match(r"^-[A-Za-z]$", w):
            out.append(w)
    return out


def repo_file(word):
    """A configuration file of the repository that a path in a command stands for
    (/etc/stickyd/stickyd.toml is installed from conf/stickyd.toml), or None."""
    if word in ("/etc/stickyd/stickyd.toml", "/etc/stickyd/stickyd.toml.example"):
        return os.path.join(ROOT, "conf", "stickyd.toml")
    path = os.path.join(ROOT, word)
    return path if not os.path.isabs(word) and os.path.isfile(path) else None


def value_of(words, *names):
    for i, w in enumerate(words):
        for name in names:
            if w == name and i + 1 < len(words):
                return words[i + 1]
            if w.startswith(name + "="):
                return w.split("=", 1)[1]
    return None


def check_ours(name, words, where):
    binary = OURS[name]
    h.expect(os.access(binary, os.X_OK), f"{where}: {binary} was not built")
    flags = flags_of([binary])
    if name == "stickyctl":
        positional = [w for w in words[1:] if not w.startswith("-")]
        h.expect(positional, f"{where}: stickyctl without a command: {' '.join(words)}")
        command = positional[0]
        h.expect(
            command in stickyctl_commands(),
            f"{where}: stickyctl has no command {command!r}: {' '.join(words)}",
        )
        flags |= flags_of([binary, command])
    for flag in used_flags(words[1:]):
        h.expect(flag in flags, f"{where}: {name} does not take {flag}: {' '.join(words)}")
    if name == "stickyd":
        config = value_of(words, "--check-config", "--config", "-c")
        if config and repo_file(config):
            r = h.run([binary, "--check-config", repo_file(config)])
            h.expect_eq(
                r.returncode,
                0,
                f"{where}: stickyd --check-config {config} " f"({r.stdout}{r.stderr})",
            )


def check_command(words, where, env=()):
    program = words[0]
    name = os.path.basename(program)
    args = words[1:]
    if name in OURS and (program == name or program.startswith(("build/", "/usr/bin/"))):
        return check_ours(name, words, where)
    if program.startswith("scripts/"):
        path = os.path.join(ROOT, program)
        h.expect(
            os.path.isfile(path) and os.access(path, os.X_OK),
            f"{where}: {program} is not a script of this repository",
        )
        text = read(path)
        for flag in used_flags(args):
            h.expect(flag in text, f"{where}: {program} knows no {flag}")
        for var in env:
            h.expect(var in text, f"{where}: {program} does not read {var}")
        return
    if name in BUILTINS:
        return
    if name in ("source", "."):
        h.expect(
            args and os.path.isfile(os.path.join(ROOT, args[0])),
            f"{where}: sources {args[:1]}, which is not in the repository",
        )
        return
    if name == "sysctl":
        for w in args:
            if w.startswith("-"):
                continue
            key = w.split("=", 1)[0]
            path = os.path.join("/proc/sys", *key.split("."))
            h.expect(os.path.exists(path), f"{where}: no sysctl {key} ({path})")
        return
    h.expect(
        name in TOOLS,
        f"{where}: nothing checks the program {program!r}; "
        f"teach tests/e2e/test_docs.py how (command: {' '.join(words)})",
    )
    if name in ("systemctl", "journalctl"):
        for w in args:
            if w.startswith("stickyd"):
                h.expect(UNITS.match(w), f"{where}: {w} is not one of stickyd's units")
    if name == "python3":
        for w in args:
            if "/" in w and not w.startswith("-"):
                h.expect(os.path.exists(os.path.join(ROOT, w)), f"{where}: no {w}")
    path = shutil.which(name)
    if path is None:
        return  # not installed here: its flags cannot be checked
    if name == "curl":
        known = set(FLAG.findall(help_text([path, "--help", "all"]) or ""))
    elif (
        name in ("meson", "docker", "podman", "systemctl", "systemd-analyze")
        and args
        and not args[0].startswith("-")
    ):
        top = help_text([path, "--help"]) or ""
        if name in ("systemctl", "systemd-analyze"):
            h.expect(
                re.search(rf"^\s+{re.escape(args[0])}\b", top, re.M),
                f"{where}: {name} has no command {args[0]!r}",
            )
            known = set(FLAG.findall(top))
        else:
            known = set(FLAG.findall(top)) | set(
                FLAG.findall(help_text([path, args[0], "--help"]) or "")
            )
    else:
        known = set(FLAG.findall(help_text([path, "--help"]) or ""))
    for flag in used_flags(args):
        if flag.startswith("--"):
            h.expect(flag in known, f"{where}: {name} does not take {flag}: {' '.join(words)}")


def test_every_command_parses():
    checked = 0
    for path in doc_paths():
        for command in commands(path):
            for env, words in split_with_env(command.text):
                check_command(words, command.where(), env)
                checked += 1
    h.expect(checked > 50, f"only {checked} commands found in the pages")


# ---------------------------------------------------------------------------------
# Configuration snippets


def test_every_toml_block_passes_check_config():
    count = 0
    for path in doc_paths():
        for i, block in enumerate(b for b in blocks(path) if b.lang == "toml"):
            config = h.write_file(f"snippet-{count}.toml", "\n".join(block.lines) + "\n")
            r = h.run([h.STICKYD_BIN, "--check-config", config])
            h.expect(
                r.returncode == 0 and "warning" not in r.stdout + r.stderr,
                f"{block.where()}: stickyd --check-config exited {r.returncode}:\n"
                f"{r.stdout}{r.stderr}",
            )
            count += 1
    h.expect(count >= 4, f"only {count} TOML blocks in the pages")


# ---------------------------------------------------------------------------------
# Output shown under commands


def offline(command):
    """`stickyctl ring|lookup|simulate --config FILE ...` on a file of the repository."""
    words = split_segments(command.text)
    if len(words) != 1 or os.path.basename(words[0][0]) != "stickyctl":
        return None
    config = value_of(words[0], "--config", "-c")
    if config is None or repo_file(config) is None or "--admin" in words[0]:
        return None
    return [h.STICKYCTL_BIN] + words[0][1:]


def test_offline_stickyctl_output_is_exactly_what_the_pages_show():
    count = 0
    for path in doc_paths():
        for command in commands(path):
            argv = offline(command)
            if argv is None:
                continue
            r = h.run(argv, cwd=ROOT)
            h.expect_eq(r.returncode, 0, f"{command.where()}: {command.text} ({r.stderr})")
            if command.output is not None:
                h.expect_eq(
                    r.stdout.rstrip("\n").splitlines(),
                    command.output,
                    f"{command.where()}: the output of {command.text}",
                )
                count += 1
    h.expect(count >= 2, f"only {count} offline outputs shown in the pages")


def tokens(lines):
    return [line.split() for line in lines if line.strip()]


def masked(lines):
    """For outputs with counters and timings: numbers (and the unit after a byte
    count) do not matter, the shape does."""
    out = []
    for line in lines:
        line = re.sub(r"\b[0-9a-f]{16}\b", "H", line)  # fingerprints
        line = re.sub(r"\d+(\.\d+)?", "N", line)
        out.append(re.sub(r"N (B|KiB|MiB|GiB)\b", "N U", line))
    return out


def compare_output(command, expected, actual):
    where = f"{command.where()}: {command.text}"
    exp_text = "\n".join(expected).strip()
    if exp_text.startswith("{"):
        try:
            wanted = json.loads(exp_text)
        except ValueError:
            wanted = None
        if wanted is not None:
            try:
                got = json.loads(actual)
            except ValueError:
                raise h.Failure(f"{where}: not JSON:\n{actual}")
            h.expect_eq(got, wanted, where)
            return
    if any(line.strip() == "..." for line in expected):
        # An excerpt: each line shown is in the output; a sample's value may differ.
        got = actual.splitlines()
        samples = {line.rsplit(" ", 1)[0] for line in got if not line.startswith("#")}
        for line in expected:
            if line.strip() == "...":
                continue
            if line.startswith("#"):
                h.expect(line in got, f"{where}: the output has no line {line!r}")
            else:
                h.expect(
                    line.rsplit(" ", 1)[0] in samples,
                    f"{where}: the output has no sample {line.rsplit(' ', 1)[0]!r}",
                )
        return
    got = actual.splitlines()
    if " status" in command.text and "--json" not in command.text:
        expected, got = masked(expected), masked(got)
    h.expect_eq(tokens(got), tokens(expected), where)


class Session:
    """A page's session replayed: the daemons its first block of stickyd and
    stickyd-echo lines starts, then every `$ ` command, with the page's ports and
    sockets replaced by the test's own."""

    def __init__(self, page, keep=()):
        self.page = os.path.join(ROOT, "docs", page)
        self.subst = {}
        self.keep = set(keep)  # addresses used as they are (nothing listens there)
        self.dir = h.temp_dir()

    def replace(self, text):
        for old, new in self.subst.items():
            text = text.replace(old, new)
        return text

    def plan(self, texts):
        """Fresh ports for every 127.0.0.1:PORT the page uses, own paths for its
        /tmp sockets."""
        joined = "\n".join(texts)
        for address in sorted(set(re.findall(r"127\.0\.0\.1:\d+", joined))):
            if address not in self.keep and address not in self.subst:
                self.subst[address] = f"127.0.0.1:{h.free_port()}"
        for path in sorted(set(re.findall(r"/tmp/[\w./-]+\.sock", joined))):
            self.subst[path] = os.path.join(self.dir, path[len("/tmp/") :].replace("/", "-"))

    def argv(self, words):
        name = os.path.basename(words[0])
        out = [OURS.get(name, words[0])]
        for w in words[1:]:
            if w == "conf/demo.toml":
                w = h.write_file("demo.toml", self.replace(read(os.path.join(ROOT, w))))
            out.append(self.replace(w))
        return out

    def start(self):
        setup = None
        for block in blocks(self.page):
            if block.lang == "sh" and any(
                os.path.basename(line.split()[0]) in ("stickyd", "stickyd-echo")
                for line in block.lines
                if line.strip()
            ):
                setup = block
                break
        h.expect(setup is not None, f"{rel(self.page)} has no block that starts daemons")
        shown = [c for c in commands(self.page) if c.output is not None]
        self.plan(
            [line for line in setup.lines] + [c.text + "\n" + "\n".join(c.output) for c in shown]
        )
        daemons = []
        for line in setup.lines:
            for words in split_segments(line):
                h.expect(
                    os.path.basename(words[0]) in ("stickyd", "stickyd-echo"),
                    f"{setup.where()}: the session starts {words[0]}",
                )
                argv = self.argv(words)
                label = f"{os.path.basename(words[0])}-{len(daemons)}"
                daemons.append(h.Process(argv, label))
        for process in daemons:
            listen = value_of(process.argv, "--listen")
            if listen is None:  # a configuration file: its first listener
                listen = re.search(
                    r'bind = "([\d.]+:\d+)"', read(value_of(process.argv, "--config"))
                ).group(1)
            host, port = listen.rsplit(":", 1)
            h.wait_accepting((host, int(port)), process)
            socket_path = value_of(process.argv, "--admin-socket")
            if socket_path:
                h.wait_for("the admin socket", lambda: os.path.exists(socket_path), process=process)
        return daemons, shown

    def run(self, command):
        text = command.text
        for name, path in OURS.items():
            text = re.sub(rf"(?<![\w/-])(build/)?{re.escape(name)}(?=\s)", path, text)
        text = self.replace(text)
        r = h.run(["bash", "-c", text], cwd=ROOT, timeout=30)
        return r.stdout + r.stderr


def all_healthy(admin):
    r = h.run([h.STICKYCTL_BIN, "status", "--json", "--admin", admin])
    if r.returncode != 0:
        return False
    return all(
        t["state"] == "healthy" for g in json.loads(r.stdout)["groups"] for t in g["targets"]
    )


def test_stickyctl_session_replays_as_shown():
    session = Session("stickyctl.md")
    daemons, shown = session.start()
    admin = session.replace("/tmp/stickyd-demo/admin.sock")
    h.wait_for("every demo target healthy", lambda: all_healthy(admin), process=daemons[-1])
    replayed = 0
    for command in shown:
        if offline(command) is not None:
            continue  # compared exactly by the offline test
        compare_output(
            command, [session.replace(line) for line in command.output], session.run(command)
        )
        replayed += 1
    h.expect(replayed >= 10, f"only {replayed} commands of the session replayed")

    # The JSON section's field names are fields of /status.
    r = h.run([h.STICKYCTL_BIN, "status", "--json", "--admin", admin])
    keys = set()

    def collect(value):
        if isinstance(value, dict):
            for k, v in value.items():
                keys.add(k)
                collect(v)
        elif isinstance(value, list):
            for v in value:
                collect(v)

    collect(json.loads(r.stdout))
    section = read(session.page).split("## JSON for scripts", 1)[1].split("\n## ", 1)[0]
    prose = section.split("```", 1)[0]
    named = set(re.findall(r"`([a-z_]+)`", prose))
    h.expect(len(named) > 20, f"few field names in the JSON section: {sorted(named)}")
    h.expect(
        named <= keys, f"the JSON section names fields /status lacks: " f"{sorted(named - keys)}"
    )


def test_compare_session_replays_as_shown():
    # The targets only name the mapping (compare reads fingerprints, not health):
    # their addresses stay as the page has them, so the fingerprints are the page's.
    page = read(os.path.join(ROOT, "docs", "stickiness.md"))
    targets = set(re.findall(r"--target (127\.0\.0\.1:\d+)", page))
    session = Session("stickiness.md", keep=targets)
    _, shown = session.start()
    replayed = 0
    for command in shown:
        compare_output(
            command, [session.replace(line) for line in command.output], session.run(command)
        )
        replayed += 1
    h.expect(replayed >= 2, f"only {replayed} compare commands replayed")


# ---------------------------------------------------------------------------------
# Metrics


def metric_families():
    backend = h.start_backend("b1")
    lb = h.lb_addr()
    d = h.start_stickyd(
        args=[
            "--listen",
            h.fmt_addr(lb),
            "--target",
            backend.address,
            "--health-interval",
            "200ms",
        ],
        addr=lb,
    )
    h.http_get(lb)

    def scrape():
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(h.IO_TIMEOUT)
            s.connect(d.admin_socket)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return data.decode().split("\r\n\r\n", 1)[1]

    h.wait_for(
        "a health check in the histogram",
        lambda: "stickyd_health_check_duration_seconds_count" in scrape(),
    )
    text = scrape()
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def library_names():
    return set(re.findall(r"static_library\('([\w]+)'", read(os.path.join(ROOT, "meson.build"))))


def test_metrics_table_matches_a_live_daemon():
    families = metric_families()
    h.expect(len(families) > 10, f"few families in /metrics: {families}")
    page = read(os.path.join(ROOT, "docs", "stickyctl.md"))
    section = page.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    table = set(re.findall(r"^\| `(stickyd_[a-z0-9_]+)` \|", section, re.M))
    h.expect_eq(
        sorted(table - set(families)),
        [],
        "families in docs/stickyctl.md's metrics table that /metrics lacks",
    )
    h.expect_eq(
        sorted(set(families) - table),
        [],
        "families of /metrics missing from docs/stickyctl.md's metrics table",
    )

    histograms = {f for f, kind in families.items() if kind == "histogram"}
    libraries = library_names()
    for path in doc_paths():
        for name in set(METRIC.findall(read(path))):
            if name in libraries:
                continue
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            h.expect(
                name in families or base in histograms,
                f"{rel(path)} names a metric /metrics lacks: {name}",
            )


# ---------------------------------------------------------------------------------
# Links, paths, design.md, size


def slug(heading):
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    found, seen = set(), {}
    in_code = False
    for line in read(path).splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        m = re.match(r"^#{1,6} (.+)$", line)
        if m and not in_code:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def test_every_link_resolves():
    count = 0
    for path in doc_paths():
        text = re.sub(r"```.*?```", "", read(path), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue
            file_part, _, anchor = target.partition("#")
            resolved = (
                os.path.normpath(os.path.join(os.path.dirname(path), file_part))
                if file_part
                else path
            )
            h.expect(os.path.exists(resolved), f"{rel(path)}: link to {target}: no such file")
            if anchor:
                h.expect(resolved.endswith(".md"), f"{rel(path)}: anchor into {target}")
                h.expect(
                    anchor in anchors(resolved),
                    f"{rel(path)}: link to {target}: {rel(resolved)} has no heading "
                    f"#{anchor} (it has {sorted(anchors(resolved))})",
                )
            count += 1
    h.expect(count > 30, f"only {count} links in the pages")


TOP_DIRS = (
    "src",
    "include",
    "tools",
    "tests",
    "scripts",
    "conf",
    "docs",
    "systemd",
    "kubernetes",
    "completions",
)
REPO_PATH = re.compile(rf"(?<![\w/.-])((?:{'|'.join(TOP_DIRS)})/[\w./@-]*)")


def test_every_repository_path_named_exists():
    for path in doc_paths():
        text = read(path)
        prose = re.sub(r"```.*?```", "", text, flags=re.S)  # outputs hold examples
        named = set(REPO_PATH.findall(" ".join(re.findall(r"`([^`]+)`", prose))))
        if path.endswith(os.path.join("docs", "design.md")):
            named |= set(REPO_PATH.findall(text))
        for name in named:
            name = name.rstrip(".")
            h.expect(
                os.path.exists(os.path.join(ROOT, name)),
                f"{rel(path)} names {name}, which does not exist",
            )


def test_design_names_every_source_file_and_no_other():
    text = read(os.path.join(ROOT, "docs", "design.md"))
    named = {
        n
        for n in REPO_PATH.findall(text)
        if n.startswith(("src/", "include/", "tools/")) and not n.endswith("/")
    }
    files = set()
    for top in ("src", "include", "tools"):
        for directory, _, names in os.walk(os.path.join(ROOT, top)):
            files |= {rel(os.path.join(directory, n)) for n in names}
    h.expect(len(files) > 50, f"few source files found: {len(files)}")
    h.expect_eq(sorted(files - named), [], "source files docs/design.md does not name")
    h.expect_eq(sorted(named - files), [], "files docs/design.md names that do not exist")
    # One line each, with its responsibility.
    for name in files:
        rows = re.findall(rf"^\| `{re.escape(name)}` \| (.+) \|$", text, re.M)
        h.expect(
            len(rows) == 1 and rows[0].strip(),
            f"docs/design.md: {name} needs exactly one table row with its responsibility",
        )


def test_readme_stays_short():
    lines = read(os.path.join(ROOT, "README.md")).count("\n")
    h.expect(
        lines <= README_MAX_LINES,
        f"README.md has {lines} lines; keep it under {README_MAX_LINES} and move detail "
        f"to docs/",
    )


if __name__ == "__main__":
    h.main()
