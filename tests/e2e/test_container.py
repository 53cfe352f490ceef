#!/usr/bin/env python3
"""kubernetes/Containerfile, which nothing here can build (no container engine): the
build context it copies is enough for its `meson setup`, it takes from the install
exactly the files `meson install` puts there, its runtime stage installs the package
of every shared library those programs need, and it agrees with stickyd's defaults,
kubernetes/stickyd.yaml and the build command in kubernetes/README.md."""
import json
import os
import re
import shlex
import shutil
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

KUBERNETES = os.path.join(h.SOURCE_ROOT, "kubernetes")
CONTAINERFILE = os.path.join(KUBERNETES, "Containerfile")
BINARIES = {  # what the dev build made of each installed program
    "stickyd": h.STICKYD_BIN,
    "stickyctl": h.STICKYCTL_BIN,
    "stickyd-echo": h.ECHO_BIN,
}


class Stage:
    def __init__(self, image, name):
        self.image = image
        self.name = name
        self.steps = []  # (KEYWORD, arguments)

    def args_of(self, keyword):
        return [args for k, args in self.steps if k == keyword]

    def copies(self, from_stage=None):
        """(sources, destination) of each COPY taking from from_stage (None: the
        build context)."""
        out = []
        for args in self.args_of("COPY"):
            words = shlex.split(args)
            flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
            paths = [w for w in words if not w.startswith("--")]
            if flags.get("from") == from_stage:
                out.append((paths[:-1], paths[-1]))
        return out

    def exec_form(self, keyword):
        args = self.args_of(keyword)
        h.expect_eq(len(args), 1, f"{keyword} instructions in the stage from {self.image}")
        return json.loads(args[0])


def stages():
    """The Containerfile's stages, each with its instructions (continuations joined,
    comments dropped, as the builders read it)."""
    with open(CONTAINERFILE, encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if not line.lstrip().startswith("#")]
    out = []
    for line in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines():
        keyword, _, args = line.strip().partition(" ")
        if not keyword:
            continue
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.IGNORECASE)
            out.append(Stage(m.group(1), m.group(2)))
        else:
            h.expect(out, f"{keyword} before the first FROM")
            out[-1].steps.append((keyword, args.strip()))
    h.expect_eq(len(out), 2, "stages (build, runtime)")
    return out


def commands(stage, program):
    """The `program ...` commands the stage's RUN lines run, as argument lists."""
    found = []
    for run in stage.args_of("RUN"):
        for part in re.split(r"&&|;", run):
            words = shlex.split(part)
            if words and words[0] == program:
                found.append(words)
    return found


def option(words, name):
    for i, w in enumerate(words):
        if w == name:
            return words[i + 1]
        if w.startswith(name + "="):
            return w.split("=", 1)[1]
    raise h.Failure(f"{name} missing from {' '.join(words)}")


def k8s_container():
    try:
        import yaml
    except ImportError:
        h.skip("python3-yaml is not installed")
    with open(os.path.join(KUBERNETES, "stickyd.yaml"), encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    pod = [d for d in docs if d["kind"] == "Deployment"][0]["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def context_copy(build, root):
    """Lays out under root what the build stage's COPY instructions from the build
    context put in the image, and returns root + WORKDIR."""
    workdir = build.args_of("WORKDIR")
    h.expect_eq(len(workdir), 1, "WORKDIR in the build stage")
    cwd = os.path.join(root, workdir[0].lstrip("/"))
    os.makedirs(cwd)
    for sources, destination in build.copies():
        target = os.path.join(cwd, destination)
        for source in sources:
            path = os.path.join(h.SOURCE_ROOT, source)
            h.expect(os.path.exists(path), f"COPY {source}: not in the repository")
            if os.path.isdir(path):  # COPY puts a directory's contents at the target
                shutil.copytree(path, target, dirs_exist_ok=True)
            else:
                os.makedirs(
                    target if destination.endswith("/") else os.path.dirname(target), exist_ok=True
                )
                shutil.copy(path, target)
    return cwd


def installed_files(build):
    """{path in the build stage: path it is installed at} for the build stage's own
    `meson setup` and `meson install --destdir`, configured from only what it copies."""
    meson = shutil.which("meson")
    if meson is None:
        h.skip("meson is not installed")
    h.expect(commands(build, "scripts/setup"), "the build stage does not run scripts/setup")
    meson_runs = {words[1]: words for words in commands(build, "meson")}
    h.expect(
        "setup" in meson_runs and "install" in meson_runs,
        "the build stage lacks `meson setup` or `meson install`",
    )
    setup, install = meson_runs["setup"], meson_runs["install"]
    cwd = context_copy(build, os.path.join(h.temp_dir(), "image"))
    r = h.run([meson] + setup[1:], timeout=120, cwd=cwd)
    h.expect_eq(
        r.returncode, 0, f"`{' '.join(setup)}` on the copied context:\n{r.stdout}" f"{r.stderr}"
    )
    builddir = os.path.join(cwd, setup[2])
    r = h.run([meson, "introspect", builddir, "--installed"], timeout=60)
    h.expect_eq(r.returncode, 0, f"meson introspect --installed: {r.stderr}")
    paths = list(json.loads(r.stdout).values())
    # The example configuration is installed by an install script (never over an
    # edited one), which introspection does not list: first install, so it is there.
    with open(os.path.join(cwd, "meson.build"), encoding="utf-8") as f:
        if "scripts/install-config" in f.read():
            r = h.run([meson, "introspect", builddir, "--buildoptions"], timeout=60)
            options = {o["name"]: o["value"] for o in json.loads(r.stdout)}
            sysconfdir = os.path.join(options["prefix"], options["sysconfdir"])
            paths.append(os.path.join(sysconfdir, "stickyd", "stickyd.toml"))
    destdir = option(install, "--destdir")
    return {destdir.rstrip("/") + path: path for path in paths}


def test_it_copies_what_meson_installs_from_a_context_that_builds():
    build, runtime = stages()
    h.expect_eq((build.image, runtime.image), ("debian:12", "debian:12-slim"), "base images")
    installed = installed_files(build)
    copied = runtime.copies(from_stage=build.name)
    h.expect(copied, "the runtime stage copies nothing from the build stage")
    for sources, destination in copied:
        for source in sources:
            h.expect(
                source in installed,
                f"COPY --from={build.name} {source}: not installed by the build "
                f"(it installs {sorted(installed)})",
            )
            h.expect_eq(destination, installed[source], f"where the image puts {source}")


def test_runtime_stage_installs_every_library_the_programs_need():
    if shutil.which("dpkg-query") is None or shutil.which("readelf") is None:
        h.skip("dpkg-query or readelf is missing (a Debian system with binutils is needed)")
    build, runtime = stages()
    installs = [words for words in commands(runtime, "apt-get") if "install" in words]
    h.expect_eq(len(installs), 1, "apt-get install lines in the runtime stage")
    packages = {w for w in installs[0][installs[0].index("install") + 1 :] if not w.startswith("-")}
    for _, destination in runtime.copies(from_stage=build.name):
        name = os.path.basename(destination)
        if not destination.startswith("/usr/bin/"):
            continue
        h.expect(name in BINARIES, f"the image ships {name}, which this test does not know")
        needed = re.findall(
            r"\(NEEDED\)\s+Shared library: \[(\S+)\]",
            h.run(["readelf", "-d", BINARIES[name]]).stdout,
        )
        h.expect(needed, f"readelf found no shared libraries in {BINARIES[name]}")
        resolved = dict(
            re.findall(r"^\s*(\S+) => (\S+)", h.run(["ldd", BINARIES[name]]).stdout, re.M)
        )
        for soname in needed:
            # The sanitized run's binaries link the sanitizer runtimes; the image's
            # build stage builds without them.
            if h.sanitized() and re.match(r"lib(asan|ubsan)\.so", soname):
                continue
            # By its directory's last part: ldd says /lib/x86_64-linux-gnu where dpkg
            # may have recorded /usr/lib/x86_64-linux-gnu (the same on Debian 12).
            directory = os.path.basename(os.path.dirname(resolved.get(soname, "")))
            pattern = f"*/{directory}/{soname}" if directory else f"*/{soname}"
            found = h.run(["dpkg-query", "-S", pattern]).stdout
            owners = {line.split(":")[0] for line in found.splitlines() if line}
            h.expect(owners, f"{name} needs {soname}, which no installed package provides")
            h.expect(
                owners & packages,
                f"{name} needs {soname} from {sorted(owners)}; the runtime stage installs "
                f"{sorted(packages)}",
            )


def test_it_agrees_with_stickyd_and_the_kubernetes_manifest():
    build, runtime = stages()
    pod, container = k8s_container()
    shipped = {destination for _, destination in runtime.copies(from_stage=build.name)}

    # Runs as the non-root user the manifest names, numerically (runAsNonRoot).
    user = runtime.args_of("USER")
    h.expect_eq(len(user), 1, "USER in the runtime stage")
    security = pod["securityContext"]
    h.expect_eq(user[0], f'{security["runAsUser"]}:{security["runAsGroup"]}', "USER")
    h.expect(security["runAsUser"] != 0, "the image runs as root")

    # The program and its config where the manifest expects them.
    entrypoint, cmd = runtime.exec_form("ENTRYPOINT"), runtime.exec_form("CMD")
    h.expect(
        entrypoint[0] in shipped and os.path.basename(entrypoint[0]) == "stickyd",
        f"ENTRYPOINT {entrypoint} is not the stickyd the image ships",
    )
    config = option(cmd, "--config")
    h.expect(config in shipped, f"CMD's --config {config} is not a file the image ships")
    h.expect_eq(option(container["args"], "--config"), config, "stickyd.yaml's --config")
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    h.expect(
        os.path.dirname(config) in mounts,
        f"stickyd.yaml mounts nothing at " f"{os.path.dirname(config)}",
    )

    # The admin socket: stickyd's default, in a directory the user owns, where the
    # manifest mounts a writable volume, and what the HEALTHCHECK asks.
    m = re.search(
        r"--admin-socket TEXT\s+.*\(default (\S+?);", h.run([h.STICKYD_BIN, "--help"]).stdout
    )
    h.expect(m, "stickyd --help does not state the default admin socket")
    socket_path = m.group(1)
    run_dir = os.path.dirname(socket_path)
    uid, gid = user[0].split(":")
    made = [w for w in commands(runtime, "install") if run_dir in w]
    h.expect(
        made and option(made[0], "-o") == uid and option(made[0], "-g") == gid,
        f"the runtime stage does not create {run_dir} owned by {user[0]}",
    )
    h.expect(run_dir in mounts, f"stickyd.yaml mounts nothing at {run_dir}")
    check = runtime.args_of("HEALTHCHECK")
    h.expect(
        check and socket_path in check[0] and "stickyctl" in check[0],
        f"HEALTHCHECK does not ask stickyctl at {socket_path}: {check}",
    )

    # The README's build command makes the image the manifest runs.
    with open(os.path.join(KUBERNETES, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    builds = re.findall(r"^\s*(?:podman|docker) build .*$", readme, re.M)
    h.expect(builds, "kubernetes/README.md has no build command")
    for line in builds:
        words = shlex.split(line)
        h.expect_eq(option(words, "-f"), "kubernetes/Containerfile", f"-f in {line!r}")
        h.expect_eq(option(words, "-t"), container["image"], f"the tag in {line!r}")
        h.expect_eq(words[-1], ".", f"the build context in {line!r} (the repository root)")


if __name__ == "__main__":
    h.main()
