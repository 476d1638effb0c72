"""The chroot backend's own guarantees: same inspection as the appliance, guest paths never escape to the
host, teardown on SIGTERM and after kill -9, backend selection and its fallback. (Operation results on both
backends are compared in test_customize.py and test_sysprep_guest.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from guests import DISTROS, read_files, sha256_file, tree
from imgsmith import proc as proc_mod
from imgsmith.errors import GuestError, UsageError
from imgsmith.guest import backend as backend_mod
from imgsmith.guest.chroot import resolve_in_root
from imgsmith.host.rollback import RUN_DIR

IMGSMITH = [sys.executable, "-m", "imgsmith.cli.main"]
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="the chroot backend needs root")


# --------------------------------------------------------------------------- unit: no images


def test_resolve_in_root_follows_guest_symlinks_inside_the_guest(tmp_path: Path) -> None:
    root = tmp_path / "guest"
    (root / "etc").mkdir(parents=True)
    (root / "usr/share/zoneinfo").mkdir(parents=True)
    (root / "etc/localtime").symlink_to("/usr/share/zoneinfo/UTC")  # absolute: the guest's /, not the host's
    (root / "etc/up").symlink_to("../../../../../../etc")  # climbing above / stays at /
    (root / "loop").symlink_to("loop")
    r = os.fspath(root)
    assert resolve_in_root(r, "/etc/localtime", follow=True) == f"{r}/usr/share/zoneinfo/UTC"
    assert resolve_in_root(r, "/etc/localtime", follow=False) == f"{r}/etc/localtime"
    assert resolve_in_root(r, "/etc/up/passwd", follow=True) == f"{r}/etc/passwd"
    assert resolve_in_root(r, "/../../etc/shadow", follow=True) == f"{r}/etc/shadow"
    with pytest.raises(GuestError, match="too many levels of symbolic links"):
        resolve_in_root(r, "/loop/x", follow=True)


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend_mod, "chroot_problems", lambda expose="fuse": [])
    assert backend_mod.choose("auto", trusted=True).name == "chroot"
    untrusted = backend_mod.choose("auto", trusted=False)
    assert untrusted.name == "appliance" and "--trust-image" in untrusted.reason
    assert backend_mod.choose("chroot", trusted=False).name == "chroot"  # asking for it is trusting it
    assert backend_mod.choose("appliance", trusted=True).name == "appliance"
    monkeypatch.setattr(backend_mod, "chroot_problems", lambda expose="fuse": ["it needs root (it mounts ...)"])
    assert backend_mod.choose("auto", trusted=True).name == "appliance"
    with pytest.raises(UsageError, match="--backend chroot: it needs root"):
        backend_mod.choose("chroot", trusted=True)
    with pytest.raises(UsageError, match="unknown backend 'vm'"):
        backend_mod.choose("vm", trusted=True)


def test_chroot_without_root_is_one_clear_error(tmp_path: Path) -> None:
    disk = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "16M"], check=True)
    before = sha256_file(disk)
    # The CLI as a non-root user would see it (euid faked in the child: CI's checkout may not be
    # readable by an unprivileged user).
    as_user = ("import os, sys; os.geteuid = lambda: 65534; from imgsmith.cli.main import main; "
               "sys.exit(main(sys.argv[1:]))")
    argv = [sys.executable, "-c", as_user, "customize", "-a", str(disk), "--backend", "chroot", "--touch", "/x"]
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("imgsmith: error:")]
    assert r.returncode == 2 and errors == ["imgsmith: error: --backend chroot: it needs root (it mounts the "
                                            "image's filesystems)"], r.stderr
    assert sha256_file(disk) == before


# --------------------------------------------------------------------------- on phony guests

@pytest.mark.guest
@ROOT_ONLY
def test_inspection_matches_the_appliance(guest_images: dict[str, Path]) -> None:
    """One appliance launch: libguestfs's own inspect_os and imgsmith's inspection over the same handle
    must agree on all five guests (facts and mountpoints); then the chroot backend must report the same."""
    import guestfs

    from imgsmith.guest.api import OSInfo
    from imgsmith.guest.libguestfs import inspect_roots
    from imgsmith.guest.session import SessionOptions, open_guest

    def facts(o: OSInfo) -> dict[str, object]:
        return {"type": o.type, "distro": o.distro, "major_version": o.major, "minor_version": o.minor,
                "arch": o.arch, "product_name": o.product_name, "package_format": o.package_format,
                "package_management": o.package_management, "hostname": o.hostname,
                "mountpoints": dict(o.mountpoints)}

    g = guestfs.GuestFS(python_return_dict=True)
    for distro in DISTROS:
        g.add_drive_opts(os.fspath(guest_images[distro]), format="qcow2", readonly=1)
    g.launch()
    fields = ("type", "distro", "major_version", "minor_version", "arch", "product_name", "package_format",
              "package_management", "hostname")
    theirs, by_root = {}, {}
    for root in g.inspect_os():
        theirs[g.inspect_get_hostname(root)] = by_root[root] = {
            **{f: getattr(g, f"inspect_get_{f}")(root) for f in fields},
            "mountpoints": g.inspect_get_mountpoints(root)}
    g.umount_all()
    appliance = {o.root: facts(o) for o in inspect_roots(g)}
    g.close()
    assert appliance == by_root
    assert sorted(appliance) == [f"/dev/sd{c}1" for c in "abcde"]
    for distro in DISTROS:
        with open_guest(guest_images[distro], "qcow2", SessionOptions(backend="chroot")) as guest:
            ours = facts(guest.os)
            assert guest.os.root == "/dev/sda1"
        want = dict(theirs[f"{distro}.example.com"])
        want["mountpoints"] = {"/": "/dev/sda1"}  # its own disk is the chroot backend's /dev/sda
        assert ours == want, distro
    assert sha256_file(guest_images["debian12"])  # still readable; opened read-only by convention


@pytest.mark.guest
@ROOT_ONLY
def test_guest_symlinks_never_reach_the_host(fresh_guest: Callable[..., Path]) -> None:
    disk = fresh_guest("debian12")
    name = f"imgsmith-escape-{uuid.uuid4().hex[:8]}"
    host_victim = Path("/tmp") / name
    r = subprocess.run([*IMGSMITH, "customize", "-a", str(disk), "--backend", "chroot",
                        "--link", f"/tmp/{name}:/etc/evil",  # absolute symlink: the guest's /tmp
                        "--write", "/etc/evil:written through a symlink",
                        "--run-command", "hostname sandboxed && echo $$ > /pid-in-sandbox"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert not host_victim.exists()
    assert os.uname().nodename != "sandboxed"  # the command's hostname change stayed in its namespace
    files = read_files(disk, [f"/tmp/{name}", "/pid-in-sandbox", "/usr/sbin/policy-rc.d", "/etc/resolv.conf"])
    assert files[f"/tmp/{name}"] == b"written through a symlink"
    assert (files["/pid-in-sandbox"] or b"").strip() != b""  # the shell's pid in its own namespace
    assert files["/usr/sbin/policy-rc.d"] is None  # the no-daemons guard is removed after each command
    assert files["/etc/resolv.conf"] == b"nameserver 10.0.2.3\nsearch example.com\n"  # the guest's own again


# The kill tests keep their session records apart: every imgsmith session sweeps the stale records
# it finds, and one started by a test on the other xdist worker must not sweep this test's first.
PRIVATE_RUN_DIR = RUN_DIR.parent / f"test-{os.getpid()}"
PRIVATE_ENV = {**os.environ, "IMGSMITH_RUN_DIR": str(PRIVATE_RUN_DIR)}


def _sessions_of(pid: int) -> list[Path]:
    return sorted(PRIVATE_RUN_DIR.glob(f"{pid}-*")) if PRIVATE_RUN_DIR.is_dir() else []


def _loops_backed_by(path_part: str) -> list[str]:
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    return [ln for ln in out.splitlines() if path_part in ln]


def _start_slow_customize(disk: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen([*IMGSMITH, "customize", "-a", str(disk), "--backend", "chroot",
                             "--write", "/etc/motd:changed", "--run-command", "sleep 120"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "Running: sleep 120" in line:
            time.sleep(1)
            return proc
        if not line:
            break
    proc.kill()
    raise AssertionError("the slow customize never reached its command")


@pytest.mark.guest
@ROOT_ONLY
def test_sigterm_unwinds_and_kill9_is_swept_by_the_next_run(fresh_guest: Callable[..., Path],
                                                            tmp_path: Path) -> None:
    disk = fresh_guest("debian12")
    before = sha256_file(disk)
    scratch = tmp_path / "scratch"  # where the disk's overlay lives
    scratch.mkdir()
    env = {**PRIVATE_ENV, "IMGSMITH_TMPDIR": str(scratch)}

    # SIGTERM: exit 130, nothing committed, every mount/loop/daemon released on the way out.
    proc = _start_slow_customize(disk, env)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted; nothing was committed" in err
    assert _sessions_of(proc.pid) == [] and _loops_backed_by(f"/{proc.pid}-") == []
    assert sha256_file(disk) == before
    assert list(scratch.iterdir()) == []

    # kill -9: the session's record, its mounts and the overlay survive imgsmith...
    proc = _start_slow_customize(disk, env)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.stderr is not None
    proc.stderr.close()
    stale = _sessions_of(proc.pid)
    assert len(stale) == 1
    state = json.loads((stale[0] / "state.json").read_text())
    kinds = [k for k, _ in state["resources"]]
    assert {"loop", "mount", "daemon"} <= set(kinds)
    loop = next(w for k, w in state["resources"] if k == "loop")
    daemon_pid = int(next(w for k, w in state["resources"] if k == "daemon"))
    assert sha256_file(disk) == before  # the overlay was never committed
    [left] = scratch.iterdir()
    assert (left / "overlay.qcow2").is_file()

    # ...and the next chroot run, any run, releases them before it starts.
    r = subprocess.run([*IMGSMITH, "customize", "-a", str(disk), "--backend", "chroot", "--touch", "/after"],
                       capture_output=True, text=True, check=False, env=env)
    assert r.returncode == 0, r.stderr
    assert f"cleaning up after an imgsmith (pid {proc.pid}) that did not exit cleanly" in r.stderr
    assert f"removed {left} (" in r.stderr and f"(pid {proc.pid}) that did not exit cleanly" in r.stderr
    assert list(scratch.iterdir()) == []
    assert _sessions_of(proc.pid) == []
    assert not [ln for ln in _loops_backed_by(loop) if ln.startswith(f"{loop}:")]
    # Gone, or exited and waiting for PID 1 to reap it (a zombie holds nothing), or the pid reused.
    assert not proc_mod.pid_alive(daemon_pid) or "qemu-storage" not in Path(f"/proc/{daemon_pid}/comm").read_text()
    files = read_files(disk, ["/after", "/etc/motd"])
    assert files["/after"] == b"" and files["/etc/motd"] != b"changed"


def _fake_arch_guest(fresh_guest: Callable[..., Path], machine: int) -> Path:
    """A debian12 fixture whose bash is an ELF header of another machine (inspection reads the arch from it)."""
    elf = bytearray(64)
    elf[:7] = b"\x7fELF\x02\x01\x01"
    elf[18:20] = machine.to_bytes(2, "little")
    return fresh_guest("debian12", extra={"/usr/bin/bash": bytes(elf)})  # /bin is a link to usr/bin


@pytest.mark.guest
@ROOT_ONLY
def test_foreign_architecture_errors_or_falls_back(fresh_guest: Callable[..., Path]) -> None:
    """A riscv64 guest has no qemu-user handler here: chroot says so; auto falls back to the appliance.
    An aarch64 guest does (qemu-aarch64 through binfmt_misc): the chroot backend takes it."""
    disk = _fake_arch_guest(fresh_guest, 0xF3)  # EM_RISCV
    before = sha256_file(disk)
    r = subprocess.run([*IMGSMITH, "customize", "-a", str(disk), "--backend", "chroot", "--touch", "/x"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 1 and sha256_file(disk) == before
    assert ("imgsmith: error: the guest is riscv64 and this host is x86_64: no qemu-user handler known for "
            "riscv64") in r.stderr
    r = subprocess.run([*IMGSMITH, "customize", "-a", str(disk), "--trust-image", "--touch", "/x", "--json"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["backend"], out["launches"]) == ("appliance", 1)
    assert "/x" in tree(disk)

    from imgsmith.host.binfmt import binfmt_problem
    if binfmt_problem("arm64") is not None:
        pytest.skip(f"arm64 through qemu-user: {binfmt_problem('arm64')}")
    arm = _fake_arch_guest(fresh_guest, 0xB7)  # EM_AARCH64: file operations need no program of the guest
    r = subprocess.run([*IMGSMITH, "customize", "-a", str(arm), "--backend", "chroot", "--touch", "/y", "--json"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["backend"] == "chroot"
    assert "/y" in tree(arm)


def _two_os_disk(tmp: Path) -> Path:
    """A raw disk with two Linux roots (ext4 on partitions 1 and 2), made without the appliance."""
    disk = tmp / "two.raw"
    with disk.open("wb") as f:
        f.truncate(80 << 20)
    subprocess.run(["sfdisk", "-q", disk], input=b"label: dos\nstart=2048, size=65536\nstart=67584, size=65536\n",
                   check=True)
    releases = {1: ("debian", 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n', "12.5\n"),
                2: ("rocky", 'PRETTY_NAME="Rocky Linux 9.3 (Blue Onyx)"\nID="rocky"\nVERSION_ID="9.3"\n', None)}
    for n, (name, os_release, debian_version) in releases.items():
        root = tmp / f"root{n}"
        for d in ("etc", "bin", "usr/bin", "tmp"):
            (root / d).mkdir(parents=True)
        (root / "etc/os-release").write_text(os_release)
        (root / "etc/hostname").write_text(f"{name}-host\n")
        (root / "etc/fstab").write_text(f"/dev/vda{n} / ext4 defaults 0 1\n")
        if debian_version:
            (root / "etc/debian_version").write_text(debian_version)
        fs = tmp / f"fs{n}.img"
        with fs.open("wb") as f:
            f.truncate(32 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-d", root, fs], check=True)
        subprocess.run(["dd", f"if={fs}", f"of={disk}", "bs=512", f"seek={2048 + (n - 1) * 65536}",
                        "conv=notrunc,sparse", "status=none"], check=True)
    return disk


@pytest.mark.guest
@ROOT_ONLY
def test_several_roots_info_and_root_choice(tmp_path: Path) -> None:
    """Two roots: `info --inspect` lists both (appliance), a session without --root refuses naming both,
    --root picks one (chroot; the appliance applies the same choose_root to the same facts)."""
    disk = _two_os_disk(tmp_path)
    r = subprocess.run([*IMGSMITH, "info", str(disk), "--format", "raw", "--inspect", "--json"], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stderr
    guests = {g["root"]: (g["distro"], g["version"], g["product_name"], g["hostname"], g["mountpoints"])
              for g in json.loads(r.stdout)["guests"]}
    assert guests == {"/dev/sda1": ("debian", "12.5", "12.5", "debian-host", {"/": "/dev/sda1"}),
                      "/dev/sda2": ("rocky", "9.3", "Rocky Linux 9.3 (Blue Onyx)", "rocky-host",
                                    {"/": "/dev/sda2"})}
    argv = [*IMGSMITH, "customize", "-a", str(disk), "--format", "raw", "--backend", "chroot", "--touch", "/picked"]
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert r.returncode == 1
    assert "imgsmith: error: the disk holds several operating systems: /dev/sda1 (12.5), /dev/sda2 (Rocky Linux " \
           "9.3 (Blue Onyx))" in r.stderr
    r = subprocess.run([*argv, "--root", "/dev/sda2", "--json"], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["os"]["distro"] == "rocky"
