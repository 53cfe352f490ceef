#!/usr/bin/env python3
"""Where the admin socket goes and who may use it: an ordinary user's stickyd keeps its
admin endpoint in a place of its own that stickyctl finds without flags; a place in
/tmp made by someone else is refused; admin_socket_group and admin_socket_mode let a
group use stickyctl without root; --instance finds stickyd@NAME's socket."""
import grp
import os
import pwd
import shutil
import stat
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def nobody():
    """(uid, gid) of the unprivileged user, or SKIP."""
    if os.geteuid() != 0:
        h.skip("needs root to run stickyd as another user")
    if shutil.which("setpriv") is None:
        h.skip("setpriv is missing (Debian package: util-linux)")
    try:
        return pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    except KeyError:
        h.skip("no user nobody or group nogroup")


def public_dir():
    """A directory every user can read, with copies of the binaries: the build tree
    and the test's own temp directory may be closed to other users."""
    path = os.path.join(h.temp_dir(), "public")
    os.makedirs(path, exist_ok=True)
    os.chmod(h.temp_dir(), 0o755)
    os.chmod(path, 0o755)
    for binary in (h.STICKYD_BIN, h.STICKYCTL_BIN):
        target = os.path.join(path, os.path.basename(binary))
        if not os.path.exists(target):
            shutil.copy(binary, target)
    return path


def as_user(argv, uid, gid, xdg=None):
    """argv run as uid:gid with only PATH (and XDG_RUNTIME_DIR when given) set."""
    env = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
    if xdg is not None:
        env.append(f"XDG_RUNTIME_DIR={xdg}")
    return env + ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"] + argv


def quick_mode_as(uid, gid, xdg=None, label="stickyd"):
    backend = h.start_backend("be-1")
    lb = h.lb_addr()
    binary = os.path.join(public_dir(), "stickyd")
    argv = as_user([binary, "--listen", h.fmt_addr(lb), "--target", backend.address], uid, gid, xdg)
    proc = h.Process(argv, label)
    h.wait_accepting(lb, proc)
    return backend, proc


def remove_on_cleanup(path):
    h.on_cleanup(lambda: shutil.rmtree(path, ignore_errors=True))


def test_an_ordinary_user_gets_an_admin_socket_in_tmp_that_stickyctl_finds():
    uid, gid = nobody()
    place = f"/tmp/stickyd-{uid}"
    shutil.rmtree(place, ignore_errors=True)
    remove_on_cleanup(place)
    backend, proc = quick_mode_as(uid, gid)
    sock = f"{place}/admin.sock"
    h.wait_for(
        "the admin endpoint", lambda: f"admin endpoint on unix:{sock}" in proc.log(), process=proc
    )
    h.expect(
        f"admin socket: /run/stickyd is not writable by uid {uid}, so it goes to {sock}"
        in proc.log(),
        f"the start-up log does not say where the socket went\n{proc.describe()}",
    )
    st = os.lstat(place)
    h.expect_eq((st.st_uid, stat.S_IMODE(st.st_mode)), (uid, 0o700), f"owner and mode of {place}")
    ctl = os.path.join(public_dir(), "stickyctl")
    r = h.run(as_user([ctl, "status"], uid, gid))
    h.expect_eq(r.returncode, 0, f"stickyctl status without --admin, as the same user: {r.stderr}")
    h.expect(backend.address in r.stdout, f"stickyctl status output: {r.stdout}")


def test_xdg_runtime_dir_comes_before_tmp():
    uid, gid = nobody()
    xdg = os.path.join(h.temp_dir(), "xdg")
    os.makedirs(xdg)
    os.chown(xdg, uid, gid)
    os.chmod(xdg, 0o700)
    _, proc = quick_mode_as(uid, gid, xdg=xdg)
    sock = f"{xdg}/stickyd/admin.sock"
    h.wait_for(
        "the admin endpoint", lambda: f"admin endpoint on unix:{sock}" in proc.log(), process=proc
    )
    ctl = os.path.join(public_dir(), "stickyctl")
    r = h.run(as_user([ctl, "status", "--json"], uid, gid, xdg=xdg))
    h.expect_eq(r.returncode, 0, f"stickyctl status with XDG_RUNTIME_DIR: {r.stderr}")


def test_a_tmp_directory_made_by_someone_else_is_not_used():
    uid, gid = nobody()
    place = f"/tmp/stickyd-{uid}"
    shutil.rmtree(place, ignore_errors=True)
    remove_on_cleanup(place)
    os.mkdir(place)  # made first by root (read: another user), open to all
    os.chmod(place, 0o777)
    _, proc = quick_mode_as(uid, gid)
    h.wait_for(
        "the warning", lambda: "running without the admin endpoint" in proc.log(), process=proc
    )
    h.expect(
        f"admin socket: not using {place}: it belongs to uid 0" in proc.log(),
        f"no reason given for refusing {place}\n{proc.describe()}",
    )
    h.expect_eq(os.listdir(place), [], f"stickyd put something into {place}")
    ctl = os.path.join(public_dir(), "stickyctl")
    r = h.run(as_user([ctl, "status"], uid, gid))
    h.expect_eq(r.returncode, 1, "stickyctl status with no socket anywhere")
    h.expect_eq(
        r.stderr.strip(),
        f"stickyctl: no stickyd admin socket at /run/stickyd/admin.sock, "
        f"/tmp/stickyd-{uid}/admin.sock (is stickyd running? choose it with --admin "
        "PATH|HOST:PORT or --instance NAME)",
        "stickyctl's error",
    )


def group_config(lb, backend, extra):
    sock = os.path.join(public_dir(), "admin.sock")
    return sock, (
        f'[global]\nadmin_socket = "{sock}"\n{extra}\n'
        f'[[listener]]\nbind = "{h.fmt_addr(lb)}"\ntarget_group = "web"\n'
        f'[[target_group]]\nname = "web"\n'
        f'[[target_group.target]]\nid = "be-1"\naddress = "{backend.address}"\n'
    )


def test_admin_socket_group_and_mode_let_a_group_use_stickyctl():
    uid, nogroup = nobody()
    try:
        daemon_gid = grp.getgrnam("daemon").gr_gid
    except KeyError:
        h.skip("no group daemon")
    backend = h.start_backend("be-1")
    lb = h.lb_addr()
    sock, text = group_config(
        lb, backend, 'admin_socket_group = "daemon"\n' 'admin_socket_mode = "0660"'
    )
    h.start_stickyd(text, addr=lb)
    st = os.stat(sock)
    h.expect_eq((st.st_gid, stat.S_IMODE(st.st_mode)), (daemon_gid, 0o660), "socket group, mode")
    ctl = os.path.join(public_dir(), "stickyctl")
    member = h.run(as_user([ctl, "status", "--admin", sock], uid, daemon_gid))
    h.expect_eq(member.returncode, 0, f"stickyctl as a member of the group: {member.stderr}")
    other = h.run(as_user([ctl, "status", "--admin", sock], uid, nogroup))
    h.expect_eq(other.returncode, 1, "stickyctl as a user outside the group")
    h.expect("Permission denied" in other.stderr, f"its error: {other.stderr}")


def test_an_unknown_admin_socket_group_stops_the_start():
    backend = h.start_backend("be-1")
    lb = h.lb_addr()
    _, text = group_config(lb, backend, 'admin_socket_group = "no-such-group-here"')
    path = h.write_file("unknown-group.toml", text)
    r = h.run([h.STICKYD_BIN, "--config", path])
    h.expect_eq(r.returncode, 1, "exit status")
    h.expect_eq(
        r.stderr.strip().splitlines()[-1],
        'stickyd: global.admin_socket_group: no group "no-such-group-here" on this host',
        "the error line",
    )


def test_admin_socket_mode_errors_and_warning():
    backend = h.start_backend("be-1")
    lb = h.lb_addr()
    for mode, error in [
        ("rw", 'must be an octal mode such as "0660", got "rw"'),
        ("0460", "must let the owner read and write (0600 at least), got 0460"),
    ]:
        _, text = group_config(lb, backend, f'admin_socket_mode = "{mode}"')
        path = h.write_file("mode.toml", text)
        r = h.run([h.STICKYD_BIN, "--check-config", path])
        h.expect_eq(r.returncode, 1, f"--check-config exit status for mode {mode}")
        h.expect(f"global.admin_socket_mode: {error}" in r.stderr, f"error for {mode}: {r.stderr}")
    _, text = group_config(lb, backend, 'admin_socket_mode = "0666"')
    path = h.write_file("mode.toml", text)
    r = h.run([h.STICKYD_BIN, "--check-config", path])
    h.expect_eq(r.returncode, 0, f"--check-config exit status for 0666: {r.stderr}")
    h.expect(
        "admin_socket_mode 0666 lets every local user drain targets and change the "
        "balancer; use a group (admin_socket_group) and 0660" in r.stdout + r.stderr,
        f"no warning for 0666: {r.stdout} {r.stderr}",
    )


def test_instance_finds_the_instance_socket():
    if os.geteuid() != 0:
        h.skip("needs root to write /run/stickyd")
    name = f"e2e-{os.getpid()}"
    remove_on_cleanup(f"/run/stickyd/{name}")
    backend = h.start_backend("be-1")
    lb = h.lb_addr()
    h.start_stickyd(
        args=[
            "--listen",
            h.fmt_addr(lb),
            "--target",
            backend.address,
            "--admin-socket",
            f"/run/stickyd/{name}/admin.sock",
        ],
        addr=lb,
    )
    r = h.run([h.STICKYCTL_BIN, "status", "--instance", name])
    h.expect_eq(r.returncode, 0, f"stickyctl status --instance {name}: {r.stderr}")
    bad = h.run([h.STICKYCTL_BIN, "status", "--instance", "../x"])
    h.expect_eq(
        (bad.returncode, bad.stderr.strip()),
        (
            2,
            'stickyctl: --instance "../x": not an instance name (letters, digits, '
            "'.', '_', '-')",
        ),
        "a bad instance name",
    )
    both = h.run([h.STICKYCTL_BIN, "status", "--instance", name, "--admin", "/x"])
    h.expect_eq(both.returncode, 2, f"--instance with --admin: {both.stderr}")


if __name__ == "__main__":
    h.main()
