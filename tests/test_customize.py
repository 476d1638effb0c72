"""imgsmith customize on real phony guests through real libguestfs: effects, order, transactions.

Each test makes one customize invocation (one appliance launch, asserted via --json)
and reads the result back in one more launch; many assertions share that read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from guests import Entry, fresh_copy, read_files, sha256_file, tree
from imgsmith.ops.crypto import verify_password

pytestmark = pytest.mark.guest

IMGSMITH = [sys.executable, "-m", "imgsmith.cli.main"]
KEY1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey1ForImgsmithTests key1@test"
KEY2 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey2ForImgsmithTests key2@test"
SELINUX_EXTRA = {"/usr/sbin/load_policy": "#!/bin/sh\nexit 0\n"}


def customize(disk: Path, *args: str, backend: str = "appliance", cwd: Path | None = None, check: bool = True
              ) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*IMGSMITH, "customize", "-a", str(disk), "--backend", backend, *args], capture_output=True,
                       text=True, cwd=cwd, check=False)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def shadow_hash(entries: dict[str, Entry], user: str) -> str:
    content = entries["/etc/shadow"].content
    assert content is not None
    for line in content.decode().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return fields[1]
    raise AssertionError(f"{user} not in shadow")


@pytest.fixture(scope="module")
def host_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Host-side inputs: an upload owned by 1000:1000 mode 0640, a tree to copy in, scripts, a key."""
    tmp_path = tmp_path_factory.mktemp("inputs")
    up = tmp_path / "uploaded.txt"
    up.write_text("uploaded content\n")
    os.chown(up, 1000, 1000)
    up.chmod(0o640)
    tree_dir = tmp_path / "bundle"
    (tree_dir / "sub").mkdir(parents=True)
    (tree_dir / "sub" / "inner.txt").write_text("inner\n")
    (tree_dir / "top.sh").write_text("#!/bin/sh\n")
    (tree_dir / "top.sh").chmod(0o755)
    script = tmp_path / "script.sh"
    script.write_text("echo from-run-script > /opt/app/ran-script\n")
    fb = tmp_path / "firstboot.sh"
    fb.write_text("#!/bin/sh\necho firstboot-script\n")
    key = tmp_path / "key2.pub"
    key.write_text(KEY2 + "\n")
    cmds = tmp_path / "cmds.txt"
    cmds.write_text("# comment\n\nwrite /opt/app/fromfile:from commands file\n"
                    "edit /opt/app/fromfile:\\\n   s/commands/COMMANDS/\n")
    pw = tmp_path / "pw.txt"
    pw.write_text("centospw\n")
    return {"upload": up, "bundle": tree_dir, "script": script, "firstboot": fb, "key": key, "cmds": cmds,
            "pw": pw, "dir": tmp_path}


def centos_ops(h: dict[str, Path]) -> list[str]:
    """One of every virt-customize option that works on the phony CentOS 7 guest."""
    return [
        "--mkdir", "/opt/app/conf",
        "--write", "/opt/app/conf/a.conf:key=value",
        "--append-line", "/opt/app/conf/a.conf:second=2",
        "--append-line", "/opt/app/conf/new.conf:first",
        "--chmod", "0640:/opt/app/conf/a.conf",
        "--copy", "/etc/hosts:/opt/app/hosts.copy",
        "--move", "/opt/app/hosts.copy:/opt/app/hosts.moved",
        "--link", "/opt/app/conf/a.conf:/opt/app/link1:/opt/app/link2",
        "--delete", "/tmp/junk*",
        "--touch", "/opt/app/touched",
        "--truncate", "/var/log/messages",
        "--truncate-recursive", "/var/log/audit",
        "--upload", f"{h['upload']}:/opt/app/uploaded",
        "--upload", f"{h['upload']}:/opt/app/conf",
        "--copy-in", f"{h['bundle']}:/opt/app",
        "--edit", "/etc/selinux/config:s/^SELINUX=.*/SELINUX=permissive/",
        "--edit", "/opt/app/conf/a.conf:s/(\\w+)=value/$1=edited/",
        "--run-command", "echo ran > /opt/app/ran",
        "--run", str(h["script"]),
        "--install", "foo,bar",
        "--uninstall", "baz",
        "--hostname", "golden.example.com",
        "--timezone", "Asia/Shanghai",
        "--ssh-inject", f"root:string:{KEY1}",
        "--ssh-inject", f"centos:file:{h['key']}",
        "--root-password", "password:s3cret",
        "--password", f"centos:file:{h['pw']}",
        "--firstboot-command", "echo fb-command",
        "--firstboot", str(h["firstboot"]),
        "--firstboot-install", "qemu-guest-agent",
        "--scrub", "/root/.bash_history",
        "--commands-from-file", str(h["cmds"]),
        "--selinux-relabel",
    ]


def assert_centos_effects(t: dict[str, Entry]) -> None:
    """What every option above must have done to the guest, as the user would check it."""
    a = t["/opt/app/conf/a.conf"]
    assert a.content == b"key=edited\nsecond=2\n" and a.mode == 0o640
    assert t["/opt/app/conf/new.conf"].content == b"first\n"
    assert t["/opt/app/hosts.moved"].content == t["/etc/hosts"].content and "/opt/app/hosts.copy" not in t
    assert t["/opt/app/link1"].type == "l" and t["/opt/app/link1"].target == "/opt/app/conf/a.conf"
    assert t["/opt/app/link2"].target == "/opt/app/conf/a.conf"
    assert not [p for p in t if p.startswith("/tmp/junk")]
    assert t["/opt/app/touched"].type == "f" and t["/opt/app/touched"].size == 0
    assert t["/var/log/messages"].size == 0
    assert all(e.size == 0 for p, e in t.items() if p.startswith("/var/log/audit/") and e.type == "f")
    for up in ("/opt/app/uploaded", "/opt/app/conf/uploaded.txt"):
        e = t[up]
        assert (e.content, e.mode, e.uid, e.gid) == (b"uploaded content\n", 0o640, 1000, 1000)
    assert t["/opt/app/bundle/sub/inner.txt"].content == b"inner\n"
    assert t["/opt/app/bundle/top.sh"].mode == 0o755
    assert b"SELINUX=permissive\n" in (t["/etc/selinux/config"].content or b"")
    assert t["/opt/app/ran"].content == b"ran\n"
    assert t["/opt/app/ran-script"].content == b"from-run-script\n"
    assert t["/etc/hostname"].content == b"golden.example.com\n"
    assert t["/etc/localtime"].target == "/usr/share/zoneinfo/Asia/Shanghai"
    root_keys = t["/root/.ssh/authorized_keys"]
    assert (root_keys.content or b"").endswith(KEY1.encode() + b"\n") and root_keys.mode == 0o600
    user_keys = t["/home/centos/.ssh/authorized_keys"]
    assert (user_keys.content or b"").endswith(KEY2.encode() + b"\n") and user_keys.uid == 1000
    assert "/root/.bash_history" not in t
    assert t["/opt/app/fromfile"].content == b"from COMMANDS file"
    assert t["/.autorelabel"].type == "f"
    scripts = {e.content for p, e in t.items() if p.startswith("/usr/lib/virt-sysprep/scripts/")}
    assert b"echo fb-command" in scripts and b"#!/bin/sh\necho firstboot-script\n" in scripts
    assert b"yum -y install 'qemu-guest-agent'" in scripts
    wants = t["/etc/systemd/system/multi-user.target.wants/guestfs-firstboot.service"]
    assert wants.target == "/usr/lib/systemd/system/guestfs-firstboot.service"
    assert t["/usr/lib/virt-sysprep/firstboot.sh"].mode == 0o755


@pytest.fixture(scope="module")
def virt_customize_tree(host_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Entry]:
    """The reference: the same option lines through the real virt-customize, run once for both backends."""
    theirs = fresh_copy("centos7", tmp_path_factory.mktemp("reference"), extra=SELINUX_EXTRA)
    env = {**os.environ, "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}
    ref_run = subprocess.run(["virt-customize", "--format", "qcow2", "-a", theirs, *centos_ops(host_files)],
                             check=False, env=env, cwd=host_files["dir"], capture_output=True, text=True)
    assert ref_run.returncode == 0, ref_run.stdout + ref_run.stderr
    return tree(theirs)


@pytest.mark.differential
@pytest.mark.xdist_group("customize-reference")  # both backends on one worker: one virt-customize run
def test_every_option_on_centos7_and_same_tree_as_virt_customize(
        fresh_guest: Callable[..., Path], host_files: dict[str, Path], backend: str,
        virt_customize_tree: dict[str, Entry]) -> None:
    """The differential test: identical option lines through virt-customize and imgsmith (each backend)."""
    ours = fresh_guest("centos7", extra=SELINUX_EXTRA)
    ops = centos_ops(host_files)
    r = customize(ours, "--json", *ops, backend=backend, cwd=host_files["dir"])
    result = json.loads(r.stdout)
    assert result["backend"] == backend and result["committed"] is True
    assert result["launches"] == (1 if backend == "appliance" else 0)
    assert result["os"]["distro"] == "centos" and result["os"]["selinux"] is True
    assert "s3cret" not in r.stdout + r.stderr and "centospw" not in r.stdout + r.stderr

    mine, ref = tree(ours), virt_customize_tree
    assert_centos_effects(mine)
    # Passwords: both hashes are fresh-salted SHA-512 ($6$, CentOS 7) that verify.
    for user, pw in (("root", "s3cret"), ("centos", "centospw")):
        for entries in (mine, ref):
            h = shadow_hash(entries, user)
            assert h.startswith("$6$") and verify_password(pw, h)
    assert set(mine) == set(ref), (set(mine) ^ set(ref))
    ignore_content = {
        "/etc/shadow",  # compared by verification above
        "/var/lib/systemd/random-seed",  # random by design
        "/usr/lib/virt-sysprep/firstboot.sh",  # our own runner script, same contract
    }
    diffs = []
    for path, ours_e in sorted(mine.items()):
        a, b = ours_e, ref[path]
        if path in ignore_content:
            a, b = Entry(a.type, a.mode, a.uid, a.gid, 0), Entry(b.type, b.mode, b.uid, b.gid, 0)
        if a != b:
            diffs.append((path, a, b))
    assert not diffs, "\n".join(f"{p}: ours={a} theirs={b}" for p, a, b in diffs)


def test_debian_accounts_hostname_timezone_and_apt(fresh_guest: Callable[..., Path], tmp_path: Path,
                                                   backend: str) -> None:
    hosts = "127.0.0.1\tlocalhost\n127.0.1.1\tdebian12.example.com debian12\n"
    disk = fresh_guest("debian12", extra={"/etc/hosts": hosts})
    host_script = tmp_path / "host-script.sh"  # virt-sysprep's --script: runs on the host, cwd = guest's /
    host_script.write_text('#!/bin/sh\necho "host script ran" > ./from-host-script\n')
    host_script.chmod(0o755)
    r = customize(disk, "--json", "--script", str(host_script), "--hostname", "web1.example.org",
                  "--timezone", "Europe/Paris",
                  "--root-password", "password:rootpw", "--password", "debian:random",
                  "--password", "nobody:locked:password:x", "--ssh-inject", f"debian:string:{KEY1}",
                  "--install", "nginx,curl", "--update", "--uninstall", "vim",
                  "--chmod", "700:/etc/hostname", backend=backend)
    out = json.loads(r.stdout)
    assert (out["backend"], out["launches"]) == (backend, 1 if backend == "appliance" else 0)
    # The random password goes to the user once (stderr in --json mode), never into the result.
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith("Setting random password of debian to "))
    random_pw = line.rsplit(" ", 1)[1]
    assert random_pw not in r.stdout
    assert "700 is read as DECIMAL" in r.stderr  # the --chmod 700 surprise is pointed out
    t = tree(disk)
    assert t["/from-host-script"].content == b"host script ran\n"
    assert t["/etc/hostname"].content == b"web1.example.org\n"
    assert t["/etc/hosts"].content == b"127.0.0.1\tlocalhost\n127.0.1.1\tweb1.example.org web1\n"
    assert t["/etc/localtime"].target == "/usr/share/zoneinfo/Europe/Paris"
    root_hash = shadow_hash(t, "root")
    assert root_hash.startswith("$y$") and verify_password("rootpw", root_hash)
    assert verify_password(random_pw, shadow_hash(t, "debian"))
    assert shadow_hash(t, "nobody").startswith("!!$y$")  # virt-customize locks with "!!"
    ssh_dir, keys = t["/home/debian/.ssh"], t["/home/debian/.ssh/authorized_keys"]
    assert (ssh_dir.mode, ssh_dir.uid) == (0o700, 1000)
    assert (keys.mode, keys.uid) == (0o600, 1000)
    lines = (keys.content or b"").splitlines()
    assert lines[-1] == KEY1.encode() and b"old@example" in lines[0]  # appended after the existing key
    log = (t["/var/log/pkgstub.log"].content or b"").decode()
    assert "apt-get -q -y -o Dpkg::Options::=--force-confnew install nginx curl" in log
    assert "apt-get -q -y -o Dpkg::Options::=--force-confnew upgrade" in log
    assert "apt-get -q -y -o Dpkg::Options::=--force-confnew remove vim" in log
    assert t["/etc/hostname"].mode == 700 & 0o7777  # decimal 700, exactly as virt-customize


@pytest.mark.parametrize(("distro", "hash_prefix", "install_line", "hostname_file"), [
    ("rocky9", "$y$", "dnf -y install tmux", "/etc/hostname"),
    ("opensuse", "$6$", "zypper -n in -l tmux", "/etc/HOSTNAME"),
    ("ubuntu2204", "$y$", "apt-get -q -y -o Dpkg::Options::=--force-confnew install tmux", "/etc/hostname"),
])
def test_package_managers_and_hashes_per_distro(fresh_guest: Callable[..., Path], distro: str, backend: str,
                                                hash_prefix: str, install_line: str, hostname_file: str) -> None:
    disk = fresh_guest(distro)
    customize(disk, "--install", "tmux", "--root-password", "password:pw", "--hostname", "h1", backend=backend)
    files = read_files(disk, ["/var/log/pkgstub.log", "/etc/shadow", hostname_file])
    assert install_line in (files["/var/log/pkgstub.log"] or b"").decode()
    root = next(ln for ln in (files["/etc/shadow"] or b"").decode().splitlines() if ln.startswith("root:"))
    assert root.split(":")[1].startswith(hash_prefix) and verify_password("pw", root.split(":")[1])
    assert (files[hostname_file] or b"").strip() == b"h1"


def test_failure_leaves_disk_byte_for_byte(fresh_guest: Callable[..., Path], backend: str) -> None:
    disk = fresh_guest("debian12")
    before = sha256_file(disk)
    r = customize(disk, "--write", "/etc/motd:changed", "--delete", "/etc/hostname",
                  "--timezone", "Mars/Olympus_Mons", "--touch", "/never", backend=backend, check=False)
    assert r.returncode == 1
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("imgsmith: error:")]
    assert err == ["imgsmith: error: step 3 --timezone Mars/Olympus_Mons: timezone 'Mars/Olympus_Mons' "
                   "does not exist in the guest (use a location like Europe/London)"]
    assert sha256_file(disk) == before


def test_dry_run_and_no_os(fresh_guest: Callable[..., Path], tmp_path: Path, backend: str) -> None:
    disk = fresh_guest("centos7", fmt="raw")
    before = sha256_file(disk)
    r = customize(disk, "-n", "--write", "/etc/motd:x", "--json", backend=backend)
    assert json.loads(r.stdout)["committed"] is False
    assert sha256_file(disk) == before
    blank = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", blank, "64M"], check=True)
    r = customize(blank, "--touch", "/x", backend=backend, check=False)
    assert r.returncode == 1 and "imgsmith: error: no operating system was found on the disk" in r.stderr
