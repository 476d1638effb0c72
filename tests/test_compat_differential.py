"""Differential tests: four virt-customize 1.48 behaviours that imgsmith used to get wrong.

One virt-customize run and one imgsmith run per distro cover them all, and the two guests are
compared whole (every path, mode, owner and content), so any other difference shows up too:

- locked passwords: ``!!`` in front of the hash, ``!!*`` for ``locked`` alone, ``lock`` as a synonym;
- ``--ssh-inject USER`` / ``USER:`` with no selector: the newest ``$HOME/.ssh/id*.pub``
  (not ``*-cert.pub``) — HOME points at a directory with several keys for both tools;
- ``--selinux-relabel`` decided after every other operation: on centos7 the ops delete
  load_policy (no /.autorelabel); on debian12, given an SELinux config, they set
  ``SELINUX=disabled``, which 1.48 still relabels;
- ``--commands-from-file`` continuation lines: the backslash goes, the newline and the next
  line's leading blanks stay.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from guests import Entry, fresh_copy, tree
from imgsmith.ops.crypto import verify_password

# one group: the virt-customize reference of each distro (a module fixture) runs once, not once per worker
pytestmark = [pytest.mark.guest, pytest.mark.differential, pytest.mark.xdist_group("compat-differential")]

IMGSMITH = [sys.executable, "-m", "imgsmith.cli.main"]
SELINUX = {"/usr/sbin/load_policy": "#!/bin/sh\nexit 0\n"}
EXTRA = {
    "centos7": SELINUX,
    "debian12": {**SELINUX, "/etc/selinux/config": "SELINUX=enforcing\nSELINUXTYPE=default\n"},
}
USER = {"centos7": "centos", "debian12": "debian"}
KEYS = {  # file name -> (age in seconds, key); the newest id*.pub that is not *-cert.pub wins
    "id_ed25519.pub": (300, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOldestEd25519 ed@host"),
    "id_ecdsa.pub": (200, "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIMiddle ecdsa@host"),
    "id_rsa.pub": (100, "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQNewestRsa rsa@host"),
    "id_rsa-cert.pub": (10, "ssh-rsa-cert-v01@openssh.com AAAAHHNzaC1yc2EtY2VydCertificate cert@host"),
    "zz_other.pub": (5, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINotAnIdFile other@host"),
}
NEWEST = KEYS["id_rsa.pub"][1]
COMMANDS = (
    "write /opt/cont1:first part \\\n"  # blank before the backslash kept, newline kept
    "   second part\n"  # ... and this line's leading blanks
    "write /opt/cont2:one\\\n"
    "two \\\n"
    "\t  three\n"  # several continuation lines in a row
    "write /opt/cont3:x\\\\\n"  # two backslashes: one stays, the line still continues
    "y\n"
    "# a comment \\\n"  # a comment continues too: the next line is part of it
    "write /opt/never:commented out\n"
    "\twrite /opt/tabbed:tab trimmed  \n"  # leading tab trimmed, trailing blanks kept
    "write /opt/crlf:dos line\r\n"  # \r stays: the byte before the newline is not a backslash
    "   \n"
    "write /opt/cont4:before empty\\\n"  # continues into an empty line, which ends it
    "\n"
    "write /opt/cont5:end of file\\"  # a backslash at the very end keeps a newline
)
EXPECTED_FILES = {
    "/opt/cont1": b"first part \n   second part",
    "/opt/cont2": b"one\ntwo \n\t  three",
    "/opt/cont3": b"x\\\ny",
    "/opt/tabbed": b"tab trimmed  ",
    "/opt/crlf": b"dos line\r",
    "/opt/cont4": b"before empty\n",
    "/opt/cont5": b"end of file\n",
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A HOME with several public keys of distinct ages, a commands file and a password file."""
    d = tmp_path_factory.mktemp("compat-inputs")
    ssh = d / "home" / ".ssh"
    ssh.mkdir(parents=True)
    now = time.time()
    for name, (age, key) in KEYS.items():
        (ssh / name).write_text(key + "\n")
        os.utime(ssh / name, (now - age, now - age))
    (d / "cmds").write_bytes(COMMANDS.encode())
    (d / "pw").write_text("filepw\n")
    return {"dir": d, "home": d / "home", "cmds": d / "cmds", "pw": d / "pw"}


def ops(distro: str, i: dict[str, Path]) -> list[str]:
    selinux = (["--delete", "/usr/sbin/load_policy"] if distro == "centos7"
               else ["--edit", "/etc/selinux/config:s/^SELINUX=.*/SELINUX=disabled/"])
    return [
        "--mkdir", "/opt",
        "--commands-from-file", str(i["cmds"]),
        "--root-password", "locked:password:rootpw",
        "--password", f"{USER[distro]}:locked",
        "--password", "daemon:lock:disabled",
        "--password", f"bin:locked:file:{i['pw']}",
        "--ssh-inject", "root",
        "--ssh-inject", f"{USER[distro]}:",
        *selinux,
        "--selinux-relabel",
    ]


def env_for(i: dict[str, Path]) -> dict[str, str]:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return {**os.environ, "HOME": os.fspath(i["home"]), "XDG_CACHE_HOME": cache,
            "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}


@pytest.fixture(scope="module", params=["centos7", "debian12"])
def reference(request: pytest.FixtureRequest, inputs: dict[str, Path],
              tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Entry]]:
    """The real virt-customize's result, once per distro for both imgsmith backends."""
    distro = str(request.param)
    disk = fresh_copy(distro, tmp_path_factory.mktemp(f"ref-{distro}"), extra=EXTRA[distro])
    r = subprocess.run(["virt-customize", "--format", "qcow2", "-a", disk, *ops(distro, inputs)],
                       env=env_for(inputs), cwd=inputs["dir"], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    return distro, tree(disk)


def shadow(entries: dict[str, Entry]) -> dict[str, list[str]]:
    content = entries["/etc/shadow"].content
    assert content is not None
    return {line.split(":")[0]: line.split(":") for line in content.decode().splitlines() if line}


def assert_same_shadow(mine: dict[str, Entry], ref: dict[str, Entry], user: str) -> None:
    """Same lines, field for field; fresh-salted hashes compared by prefix and verification."""
    ours, theirs = shadow(mine), shadow(ref)
    assert set(ours) == set(theirs)
    for name in ours:
        a, b = ours[name], theirs[name]
        assert a[:1] + a[2:] == b[:1] + b[2:], name
        if "$" not in b[1]:
            assert a[1] == b[1], name
            continue
        lock_a, _, hash_a = a[1].partition("$")
        lock_b, _, hash_b = b[1].partition("$")
        assert lock_a == lock_b == "!!", name
        assert hash_a.split("$")[0] == hash_b.split("$")[0], name  # same algorithm
        pw = {"root": "rootpw", "bin": "filepw"}[name]
        assert verify_password(pw, "$" + hash_a) and verify_password(pw, "$" + hash_b)
    assert theirs[user][1] == theirs["daemon"][1] == "!!*"


def test_locked_passwords_default_key_late_selinux_and_continuations(
        fresh_guest: Callable[..., Path], backend: str, inputs: dict[str, Path],
        reference: tuple[str, dict[str, Entry]]) -> None:
    distro, ref = reference
    disk = fresh_guest(distro, extra=EXTRA[distro])
    r = subprocess.run([*IMGSMITH, "customize", "-a", os.fspath(disk), "--backend", backend, "--json",
                        *ops(distro, inputs)], env=env_for(inputs), cwd=inputs["dir"], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    mine = tree(disk)

    # What the user checks, on both results.
    for entries in (mine, ref):
        for path, content in EXPECTED_FILES.items():
            assert entries[path].content == content, path
        assert "/opt/never" not in entries
        for keys in ("/root/.ssh/authorized_keys", f"/home/{USER[distro]}/.ssh/authorized_keys"):
            assert (entries[keys].content or b"").splitlines()[-1] == NEWEST.encode()
    if distro == "centos7":  # load_policy is gone by the time virt-customize decides: no relabel
        assert "/.autorelabel" not in mine and "/.autorelabel" not in ref
        assert result["relabel"] is None
    else:  # SELINUX=disabled with load_policy present still counts as an SELinux guest in 1.48
        assert mine["/.autorelabel"].type == ref["/.autorelabel"].type == "f"
        assert result["relabel"] == "autorelabel"
    assert_same_shadow(mine, ref, USER[distro])

    # And the rest of the two guests is the same.
    assert set(mine) == set(ref), set(mine) ^ set(ref)
    ignore_content = {"/etc/shadow", "/var/lib/systemd/random-seed"}
    diffs = []
    for path in sorted(mine):
        a, b = mine[path], ref[path]
        if path in ignore_content:
            a, b = Entry(a.type, a.mode, a.uid, a.gid, 0), Entry(b.type, b.mode, b.uid, b.gid, 0)
        if a != b:
            diffs.append(f"{path}: ours={a} theirs={b}")
    assert not diffs, "\n".join(diffs)
