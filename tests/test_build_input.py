"""Bad input to `imgsmith build`, judged at load or at the right place, and nothing lost.

Each case asserts the exact line(s) a user sees, the exit code, and that nothing
changed: the input disk's checksum, the cache, existing outputs. The unit cases run
no guest; the build cases use the chroot backend (root) so each costs a second or two.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from guests import guest_image, sha256_file

IMGSMITH = [sys.executable, "-m", "imgsmith.cli.main"]
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="the chroot backend needs root")


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IMGSMITH, *args], capture_output=True, text=True, cwd=cwd, check=False,
                          env=env or {**os.environ, "IMGSMITH_CACHE": str(cwd / "cache")})


def errors(r: subprocess.CompletedProcess[str]) -> list[str]:
    return [line.removeprefix("imgsmith: error: ") for line in r.stderr.splitlines()
            if line.startswith("imgsmith: error: ")]


BAD_VALUES = """\
version: 1
name: t
source: {file: base.img}
size: 0.3K
layers:
  - name: a
    memsize: 100
    steps:
      - timezone: UTC
sysprep:
  keep-user-accounts: [alice]
outputs:
  - preset: nosuchcloud
  - format: vmdk
    options: {subformat: bogus}
  - format: qcow2
    name: t.qcow2
  - format: qcow2
"""


def test_values_that_used_to_fail_mid_build_are_problems_at_load(tmp_path: Path) -> None:
    (tmp_path / "base.img").write_bytes(b"\0" * 65536)
    before = sha256_file(tmp_path / "base.img")
    (tmp_path / "t.yaml").write_text(BAD_VALUES)
    for extra in ([], ["--dry-run"]):
        r = run("build", "t.yaml", *extra, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert errors(r) == [
            "t.yaml:4:7: size: invalid size '0.3K': not a whole number of bytes",
            "t.yaml:7:14: layers[0].memsize: Input should be greater than or equal to 256",
            "t.yaml:11:23: sysprep.keep-user-accounts: the user-account operation is not selected "
            "(add it: operations: [defaults, user-account])",
            "t.yaml:13:13: outputs[0].preset: unknown preset 'nosuchcloud' (known: openstack, kvm, aliyun, "
            "tencent, azure, aws, gcp, vmware, virtualbox, hyperv)",
            "t.yaml:15:26: outputs[1].options.subformat: invalid value 'bogus' for vmdk option subformat "
            "(allowed: monolithicSparse, streamOptimized)",
            "t.yaml:18:13: outputs[3].format: would be written to t.qcow2, like outputs[2]: give one of them "
            "its own name:",
        ]
    assert sha256_file(tmp_path / "base.img") == before
    assert not (tmp_path / "cache").exists() and not (tmp_path / "dist").exists()


def test_sysprep_user_lists_and_layer_memsize_reach_the_plan(tmp_path: Path) -> None:
    from imgsmith.buildplan import BuildOptions
    from imgsmith.definition import load_definition
    from imgsmith.pipeline import plan
    (tmp_path / "base.img").write_bytes(b"\0" * 65536)
    text = ("version: 1\nname: t\nsource: {file: base.img}\nlayers:\n  - name: a\n    memsize: 1024\n"
            "    steps: [{timezone: UTC}]\nsysprep:\n  operations: [defaults, user-account]\n"
            "  keep-user-accounts: [alice]\n")
    (tmp_path / "t.yaml").write_text(text)
    opts = BuildOptions(cache_dir=tmp_path / "cache", output_dir=tmp_path / "out")
    first = plan(load_definition(tmp_path / "t.yaml"), opts)
    layer = first.layers[0]
    assert layer.memsize == 1024 and "user-account" in layer.sysprep
    assert layer.token["sysprep_users"] == {"keep": ["alice"], "remove": []}
    (tmp_path / "t.yaml").write_text(text.replace("keep-user-accounts: [alice]", "keep-user-accounts: [bob]"))
    second = plan(load_definition(tmp_path / "t.yaml"), opts)
    assert second.layers[0].key != layer.key  # the user lists are part of the last layer's key
    assert plan(load_definition(tmp_path / "t.yaml"), BuildOptions(cache_dir=tmp_path / "cache", memsize=2048)
                ).layers[0].memsize == 2048  # --memsize wins


@pytest.fixture
def listener() -> Iterator[tuple[int, list[str]]]:
    """A TCP port on 127.0.0.1 that records every connection made to it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    seen: list[str] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            seen.append("connection")
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], seen
    stop.set()
    thread.join()
    server.close()


def test_dry_run_of_a_url_source_makes_no_connection(tmp_path: Path, listener: tuple[int, list[str]]) -> None:
    port, seen = listener
    (tmp_path / "t.yaml").write_text(
        "version: 1\nname: t\nsource:\n"
        f"  url: http://127.0.0.1:{port}/images/base.qcow2\n  checksum: sha256:{'ab' * 32}\n"
        "layers:\n  - name: a\n    steps: [{timezone: UTC}]\noutputs:\n  - format: qcow2\n")
    r = run("build", "t.yaml", "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"(from http://127.0.0.1:{port}/images/base.qcow2)" in r.stdout
    assert "layer 1 a: 1 step(s) — will run: nothing is cached on this base image yet" in r.stdout
    assert "output: t.qcow2 (qcow2)" in r.stdout
    r = run("build", "t.yaml", "--dry-run", "--json", cwd=tmp_path)
    plan = json.loads(r.stdout)
    assert plan["dry_run"] is True and plan["layers"][0]["cached"] is False and plan["layers"][0]["miss"]
    assert seen == []
    assert not (tmp_path / "cache" / "base").exists()


@pytest.fixture
def chroot_project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    shutil.copy(guest_image("debian12"), tmp_path / "base.qcow2")
    env = {**os.environ, "IMGSMITH_CACHE": str(tmp_path / "cache"), "IMGSMITH_RUN_DIR": str(tmp_path / "run")}
    return tmp_path, env


@pytest.mark.guest
@ROOT_ONLY
def test_a_random_root_password_is_shown_once(chroot_project: tuple[Path, dict[str, str]]) -> None:
    work, env = chroot_project
    (work / "t.yaml").write_text("version: 1\nname: t\nsource: {file: base.qcow2}\nbackend: chroot\nlayers:\n"
                                 "  - name: a\n    steps: [{root-password: random}]\noutputs:\n  - format: qcow2\n")
    r = run("build", "t.yaml", "-o", "out", "--trust-image", cwd=work, env=env)  # not -v, not a terminal
    assert r.returncode == 0, r.stderr
    shown = [line for line in r.stdout.splitlines() if line.startswith("Setting random password of root to ")]
    assert len(shown) == 1, r.stdout
    password = shown[0].rsplit(" ", 1)[1]
    assert len(password) >= 8 and password not in r.stderr
    assert password not in (work / "out" / "manifest.json").read_text()
    # --json: stdout is one JSON document, the password goes to stderr, once.
    fresh = {**env, "IMGSMITH_CACHE": str(work / "cache2")}
    r = run("build", "t.yaml", "-o", "out2", "--json", "--trust-image", cwd=work, env=fresh)
    assert r.returncode == 0, r.stderr
    json.loads(r.stdout)
    assert len([x for x in r.stderr.splitlines() if x.startswith("Setting random password of root to ")]) == 1, r.stderr


def _small_fs(path: Path, mib: int, inodes: int | None = None) -> None:
    image = path.with_suffix(".fs")
    subprocess.run(["truncate", "-s", f"{mib}M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", *(["-N", str(inodes)] if inodes else []), str(image)], check=True)
    path.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(path)], check=True)


FULL = ("version: 1\nname: t\nsource: {file: base.qcow2}\nbackend: chroot\nlayers:\n  - name: a\n"
        "    steps: [{write: '/etc/motd:hello'}]\noutputs:\n  - format: raw\n  - format: qcow2\n")


@pytest.mark.guest
@ROOT_ONLY
def test_a_full_output_disk_is_one_line_and_loses_nothing(chroot_project: tuple[Path, dict[str, str]]) -> None:
    """Too little space is refused before writing (exit 2); a disk that fills anyway is one line (exit 1).

    The second case has space by statvfs but no free inodes left, so the write really fails
    with ENOSPC where the space check cannot see it coming.
    """
    work, env = chroot_project
    (work / "t.yaml").write_text(FULL)
    base_sum = sha256_file(work / "base.qcow2")
    small, full = work / "small", work / "full"
    _small_fs(small, 4)
    _small_fs(full, 64, inodes=64)
    try:
        previous = b"the previous build's output\n"
        (small / "t.qcow2").write_bytes(previous)
        r = run("build", "t.yaml", "-o", str(small), "--trust-image", cwd=work, env=env)
        assert r.returncode == 2, r.stderr
        lines = errors(r)
        wanted = (rf"not enough free space in {re.escape(str(small))} for t\.raw, t\.qcow2: "
                  r"need about \S+ MiB \(\d+ bytes\), \S+ MiB \(\d+ bytes\) free")
        assert len(lines) == 1 and re.fullmatch(wanted, lines[0]), r.stderr
        assert sorted(p.name for p in small.iterdir()) == ["lost+found", "t.qcow2"]
        assert (small / "t.qcow2").read_bytes() == previous
        (full / "t.qcow2").write_bytes(previous)
        n = 0
        with contextlib.suppress(OSError):  # use up every inode
            while True:
                (full / f"filler{n}").touch()
                n += 1
        before = sorted(p.name for p in full.iterdir())
        (work / "q.yaml").write_text(FULL.replace("  - format: raw\n", "").replace("name: t\n", "name: t\n"))
        r = run("build", "q.yaml", "-o", str(full), "--trust-image", cwd=work, env=env)
        assert r.returncode == 1, r.stderr
        lines = errors(r)
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert lines[0].startswith(f"writing outputs into {full}: {full}/") and \
            lines[0].endswith(": No space left on device"), lines
        assert sorted(p.name for p in full.iterdir()) == before  # no half-written file left
        assert (full / "t.qcow2").read_bytes() == previous
        assert sha256_file(work / "base.qcow2") == base_sum
        # The layer it built is in the cache, whole: the same build into a roomy directory reuses it.
        r = run("build", "q.yaml", "-o", str(work / "roomy"), "--json", "--trust-image", cwd=work, env=env)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["sessions"] == 0
    finally:
        subprocess.run(["umount", str(small)], check=False)
        subprocess.run(["umount", str(full)], check=False)


@ROOT_ONLY
def test_a_read_only_output_directory_is_one_line(chroot_project: tuple[Path, dict[str, str]]) -> None:
    work, env = chroot_project
    out = work / "ro"
    out.mkdir()
    subprocess.run(["mount", "--bind", str(out), str(out)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(out)], check=True)
        r = run("convert", "base.qcow2", "--format", "raw", "-o", str(out), cwd=work, env=env)
        assert r.returncode != 0
        lines = errors(r)
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert str(out) in lines[0] and ("Read-only file system" in lines[0] or "not writable" in lines[0]), lines
        assert list(out.iterdir()) == []
    finally:
        subprocess.run(["umount", str(out)], check=False)


@pytest.mark.guest
@ROOT_ONLY
def test_sysprep_user_lists_are_honoured_by_the_build(chroot_project: tuple[Path, dict[str, str]]) -> None:
    """``keep-user-accounts`` used to be accepted and ignored: the user-account operation removed everyone."""
    from guests import read_files
    work, env = chroot_project
    text = ("version: 1\nname: t\nsource: {file: base.qcow2}\nbackend: chroot\nlayers:\n  - name: a\n"
            "    steps: [{timezone: UTC}]\nsysprep:\n  operations: [user-account]\n{extra}"
            "outputs:\n  - format: qcow2\n")
    passwd: dict[str, bytes] = {}
    for label, extra in (("keep", "  keep-user-accounts: [debian]\n"), ("all", "")):
        (work / "t.yaml").write_text(text.replace("{extra}", extra))
        r = run("build", "t.yaml", "-o", label, "--trust-image", cwd=work, env=env)
        assert r.returncode == 0, r.stderr
        passwd[label] = read_files(work / label / "t.qcow2", ["/etc/passwd"])["/etc/passwd"] or b""
        manifest = json.loads((work / label / "manifest.json").read_text())
        assert manifest["sysprep"]["keep_user_accounts"] == (["debian"] if label == "keep" else [])
    assert b"\ndebian:x:1000:" in passwd["keep"]
    assert b"debian:" not in passwd["all"] and passwd["all"].startswith(b"root:x:0:0:")


def _without_privileges(argv: list[str]) -> list[str]:
    """*argv* run in a new user namespace: the same uid, but without root's power to override file
    permissions, so a root-owned directory of mode 0555 refuses writes with EACCES, as for any user."""
    return ["unshare", "--user", *argv]


@pytest.mark.guest
@ROOT_ONLY
def test_permission_denied_is_one_line_and_touches_nothing(chroot_project: tuple[Path, dict[str, str]]) -> None:
    work, env = chroot_project
    probe = subprocess.run(_without_privileges(["true"]), capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"no user namespaces here: {probe.stderr.decode().strip()}")
    (work / "t.yaml").write_text("version: 1\nname: t\nsource: {file: base.qcow2}\nbackend: chroot\nlayers:\n"
                                 "  - name: a\n    steps: [{timezone: UTC}]\noutputs:\n  - format: qcow2\n")
    r = run("build", "t.yaml", "-o", "first", "--trust-image", cwd=work, env=env)  # caches the layer, as root
    assert r.returncode == 0, r.stderr
    locked = work / "locked"
    locked.mkdir()
    (locked / "t.qcow2").write_bytes(b"an existing output\n")
    locked.chmod(0o555)
    secret = work / "secret.yaml"
    secret.write_text((work / "t.yaml").read_text())
    secret.chmod(0)
    try:
        for argv, expected in [
            (["build", "t.yaml", "-o", str(locked), "--trust-image"],
             f"destination directory {locked} is not writable"),
            (["convert", "base.qcow2", "--format", "raw", "-o", str(locked)],
             f"destination directory {locked} is not writable"),
            (["build", str(secret), "--dry-run"], f"{secret}: Permission denied"),
        ]:
            r = subprocess.run(_without_privileges([*IMGSMITH, *argv]), capture_output=True, text=True, cwd=work,
                               env=env, check=False)
            assert r.returncode == 2, r.stderr
            assert errors(r) == [expected], r.stderr
            assert "Traceback" not in r.stderr
        assert sorted(p.name for p in locked.iterdir()) == ["t.qcow2"]
        assert (locked / "t.qcow2").read_bytes() == b"an existing output\n"
    finally:
        locked.chmod(0o755)


def test_the_boot_tests_datasource_is_checked_at_load(tmp_path: Path) -> None:
    from imgsmith.definition import load_definition
    (tmp_path / "base.img").write_bytes(b"\0" * 65536)
    (tmp_path / "t.yaml").write_text("version: 1\nname: t\nsource: {file: base.img}\ntest: {cloud: AWS}\n")
    test = load_definition(tmp_path / "t.yaml").definition.test
    assert test is not None and test.cloud == "aws"
    (tmp_path / "t.yaml").write_text("version: 1\nname: t\nsource: {file: base.img}\ntest: {cloud: azure}\n")
    r = run("build", "t.yaml", "--dry-run", cwd=tmp_path)
    assert r.returncode == 2
    assert errors(r) == ["t.yaml:4:15: test.cloud: no azure datasource emulation: cloud-init's speaks the Wire "
                         "Server protocol (and reads an OVF provisioning ISO), which the boot test does not "
                         "emulate (available: nocloud, openstack, tencent, aws, aliyun, gcp)"]
