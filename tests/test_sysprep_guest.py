"""imgsmith sysprep on real phony guests, with both backends, and against the real virt-sysprep 1.48.

Appliance launches are the cost here (12-25 s each under TCG, more under load), so the
module makes every run once, up front, in one module-scoped fixture, and the tests below
only look at the resulting trees. Each of our runs is made with both backends:

    ours      centos7+extras defaults (library), its re-run (idempotence), two --operations lists,
              debian12 (CLI: customize --ssh-inject, then sysprep --hostname --ssh-inject --json),
              ubuntu2204 and rocky9 defaults
                appliance: two at a time                                              8 launches
                chroot: one at a time, alongside the appliance's first jobs           0 launches
    theirs    virt-sysprep on centos7+extras: defaults and the same two lists         3 launches
    read      every result and the four pristine fixtures, in ONE read-only launch    1 launch

The appliance's library runs wait for the chroot ones: the launch counter is per process,
so a chroot run's ``launches`` is exact only while no appliance of this process starts. The
fixture runs once per test run, however many pytest-xdist workers get tests of this module.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from guests import Entry, detect_format, guest_image, layout, read_tree
from imgsmith.guest import appliance
from imgsmith.guest.backend import chroot_problems
from imgsmith.guest.session import SessionOptions, open_guest
from imgsmith.sysprep import OperationReport, SysprepOptions, sysprep_disk
from imgsmith.transaction import DiskResult

pytestmark = [pytest.mark.guest, pytest.mark.xdist_group("sysprep-guest")]

IMGSMITH = [sys.executable, "-m", "imgsmith.cli.main"]
KEY1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAISysprepKey1 injected-before@test"
KEY2 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAISysprepKey2 injected-during@test"
USERS = {"centos7": "centos", "debian12": "debian", "ubuntu2204": "ubuntu", "rocky9": "rocky"}

# virt-sysprep takes the same list syntax; each list is given as repeated flags.
LIST_ALL = ["all,-user-account"]
LIST_USERS = ["user-account,ssh-hostkeys,machine-id", "-machine-id,net-hwaddr"]
KEEP_USERS = ["--keep-user-accounts", "centos"]
BACKENDS = ("appliance", "chroot")
OURS = {"ours-defaults": "centos7", "ours-rerun": "centos7", "ours-all": "centos7", "ours-users": "centos7",
        "debian12": "debian12", "ubuntu2204": "ubuntu2204", "rocky9": "rocky9"}  # made with each backend
THEIRS = ("theirs-defaults", "theirs-all", "theirs-users")  # centos7 as well
CHROOT_LOCK = Path("/var/tmp/imgsmith-sysprep-test-chroot.lock")
SHARE_DIR = Path("/var/tmp/imgsmith-sysprep-test-share")


def _centos_extra() -> dict[str, str]:
    """Files for the operations the plain fixture gives nothing to do, plus a second normal user.

    Account files given here lose their original modes (extra files are 0644): harmless
    for a test fixture, and both tools start from the same image.
    """
    base = layout("centos7")

    def plus(path: str, line: str) -> str:
        return base[path].data.decode() + line

    return {
        "/etc/login.defs": "UID_MIN 1000\nUID_MAX 60000\n",
        "/etc/passwd": plus("/etc/passwd", "olduser:x:1001:1001:old:/home/olduser:/bin/bash\n"),
        "/etc/shadow": plus("/etc/shadow", "olduser:!:19700:0:99999:7:::\n"),
        "/etc/group": plus("/etc/group", "olduser:x:1001:\n"),
        "/etc/gshadow": plus("/etc/gshadow", "olduser:!::\n"),
        "/home/olduser/.profile": "# old user\n", "/var/spool/mail/olduser": "From someone\n",
        "/var/spool/abrt/ccpp-2024-01-01-00:00:00-1/coredump": "core\n",
        "/root/notes.bak": "bak\n", "/var/lib/misc/state.bak": "bak\n", "/srv/www/index.html~": "old\n",
        "/usr/share/doc/keep.bak": "outside the whitelist\n", "/home/centos/.zsh_history": ": 1:0;ls\n",
        "/etc/blkid.tab.old": "old\n", "/var/log/dump/vmcore": "dump\n",
        "/var/spool/at/.SEQ": "0000a\n", "/var/spool/at/a00001019a1b2c": "#!/bin/sh\n",
        "/var/spool/at/spool/a00001019a1b2c": "out\n",
        "/var/lib/dhcpd/dhcpd.leases": "lease 10.0.0.2 {}\n", "/var/lib/dovecot/instances": "dovecot\n",
        "/etc/sysconfig/iptables": "*filter\nCOMMIT\n", "/etc/firewalld/zones/public.xml": "<zone/>\n",
        "/etc/ipa/default.conf": "[global]\n", "/etc/ipa/ca.crt": "cert\n",
        "/var/lib/ipa-client/sysrestore/sysrestore.state": "state\n",
        "/var/kerberos/krb5kdc/principal": "db\n", "/var/kerberos/krb5kdc/kdc.conf": "[kdcdefaults]\n",
        "/etc/krb5.keytab": "keytab\n",
        "/var/log/messages-20240101": "old\n", "/var/log/cron": "cron\n", "/var/log/maillog": "mail\n",
        "/var/log/dmesg.old": "dmesg\n", "/var/log/anaconda/anaconda.log": "anaconda\n",
        "/root/anaconda-ks.cfg": "ks\n", "/var/lib/logrotate.status": "state\n", "/var/cache/man/index.db": "man\n",
        "/var/log/journal/abc/system.journal": "journal\n", "/var/log/tuned/tuned.log": "tuned\n",
        "/var/log/yum.log.1": "rotated\n", "/var/log/keep.txt": "not a log name virt-sysprep knows\n",
        "/var/lib/dbus/machine-id": "0123456789abcdef0123456789abcdef\n",
        "/etc/sysconfig/network-scripts/ifcfg-eth1":
            "DEVICE=eth1\nHOSTNAME=old.example.com\nDHCP_HOSTNAME=old\nHWADDR=52:54:00:aa:bb:cc\nONBOOT=no",
        "/run/console/root": "", "/run/faillock/root": "faillock\n",
        "/etc/subuid-": "centos:100000:65536\n", "/etc/subgid-": "centos:100000:65536\n",
        "/var/log/puppet/puppet.log": "puppet\n", "/var/lib/puppet/ssl/certs/host.pem": "pem\n",
        "/var/lib/puppet/state/last_run.yaml": "run\n", "/var/lib/rpm/__db.002": "db\n",
        "/var/lib/rpm/Packages": "rpmdb\n", "/var/log/samba/log.smbd": "smbd\n",
        "/var/lib/samba/private/secrets.tdb": "tdb\n", "/etc/sysconfig/hw-uuid": "uuid\n",
        "/etc/smolt/uuid": "uuid\n", "/var/log/sssd/sssd.log": "sssd\n", "/var/lib/sss/db/cache.ldb": "ldb\n",
        "/tmp/.hidden": "hidden\n", "/var/tmp/sub/file": "nested\n",
        "/var/lib/cloud/seed/nocloud/meta-data": "instance-id: seed\n",
        "/var/lib/cloud/scripts/per-boot/hello.sh": "#!/bin/sh\necho hi\n",
        "/var/lib/cloud/sem/config_scripts_per_once.once": "1700000000\n",
        "/var/lib/cloud/handlers/part-001": "handler\n", "/etc/cloud/cloud.cfg": "users: [default]\n",
        "/var/cache/yum/x86_64/7/timedhosts.txt": "mirror 0.1\n",
    }


CENTOS_EXTRA = _centos_extra()


# --------------------------------------------------------------------------- reading many disks at once


@dataclass(frozen=True)
class Snapshot:
    """One disk as read back: its file tree and its root filesystem's UUID."""

    tree: dict[str, Entry]
    fs_uuid: str


def read_snapshots(disks: Sequence[Path]) -> list[Snapshot]:
    """Every disk's tree in ONE read-only appliance launch (the phony guests have one filesystem each).

    guests.tree costs a launch per disk; the budget of this module does not allow that.
    Same-UUID XFS filesystems are mounted one after another with ``nouuid``.
    """
    import guestfs

    g = guestfs.GuestFS(python_return_dict=True)
    try:
        for disk in disks:
            g.add_drive_opts(os.fspath(disk), format=detect_format(disk), readonly=True)
        g.launch()
        snaps: dict[int, Snapshot] = {}
        for device in g.list_devices():  # /dev/sdz, /dev/sdaa...: matched to the disk by index, not by name
            part = next(p for p in g.list_partitions() if p.startswith(device) and p[len(device):] == "1")
            fstype = g.vfs_type(part)
            g.mount_options("ro,nouuid" if fstype == "xfs" else "ro", part, "/")
            snaps[g.device_index(device)] = Snapshot(read_tree(g), g.vfs_uuid(part))
            g.umount_all()
        return [snaps[i] for i in range(len(disks))]
    finally:
        g.close()


# --------------------------------------------------------------------------- the runs


def key(backend: str, name: str) -> str:
    """The name of one of our runs made with *backend*: ``chroot-ours-defaults``."""
    return f"{backend}-{name}"


@dataclass
class Runs:
    """Every result of the module, by name, with what the runs reported."""

    snap: dict[str, Snapshot] = field(default_factory=dict)
    results: dict[str, DiskResult[OperationReport]] = field(default_factory=dict)
    cli: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    theirs: bool = False
    backends: tuple[str, ...] = BACKENDS
    chroot_problem: str = ""  # why the chroot backend cannot run on this host
    chroot_error: str = ""  # how its runs failed (only its tests fail then)
    launches: dict[str, int] = field(default_factory=dict)  # appliance launches of this process, per backend


def _copy(source: Path, dest: Path) -> Path:
    subprocess.run(["cp", "--reflink=auto", source, dest], check=True)
    dest.chmod(0o644)
    return dest


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*IMGSMITH, *args], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    return r


def _virt_sysprep(disk: Path, flags: Sequence[str]) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["virt-sysprep", "-q", "--format", "qcow2", "-a", os.fspath(disk), *flags],
                       capture_output=True, text=True, check=False,
                       env={**os.environ, "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"})
    assert r.returncode == 0, r.stderr
    return r


def _ops_flags(lists: Iterable[str]) -> list[str]:
    return [arg for item in lists for arg in ("--operations", item)]


def _debian_cli(backend: str, disk: Path, runs: Runs) -> None:
    """customize --ssh-inject, then a default sysprep that also customizes: the interplay, end to end."""
    name, b = key(backend, "debian12"), ("--backend", backend)
    runs.cli[f"{name}-customize"] = _cli("customize", "-a", os.fspath(disk), *b, "--ssh-inject", f"root:string:{KEY1}")
    runs.cli[name] = _cli("sysprep", "-a", os.fspath(disk), *b, "--json", "--hostname", "clone.example.com",
                          "--ssh-inject", f"root:string:{KEY2}")


Jobs = list[Callable[[], None]]


def _our_jobs(backend: str, disks: dict[str, Path], runs: Runs) -> tuple[Jobs, Jobs]:
    """(jobs in their own processes, library jobs) of one backend, the longest first."""
    session = SessionOptions(backend=backend)

    def library(name: str, selection: list[str] | None, **kw: Any) -> Callable[[], None]:
        def job() -> None:
            runs.results[key(backend, name)] = sysprep_disk(disks[key(backend, name)], selection, session=session,
                                                            **kw)
        return job

    def defaults_then_rerun() -> None:
        library("ours-defaults", None)()
        _copy(disks[key(backend, "ours-defaults")], disks[key(backend, "ours-rerun")])
        library("ours-rerun", None)()

    keep = SysprepOptions(keep_users=frozenset({"centos"}))
    return ([lambda: _debian_cli(backend, disks[key(backend, "debian12")], runs)],
            [defaults_then_rerun, library("ours-all", LIST_ALL), library("ours-users", LIST_USERS, options=keep),
             library("ubuntu2204", None), library("rocky9", None)])


@contextlib.contextmanager
def chroot_turn() -> Iterator[None]:
    """This module's chroot sessions, one process at a time (the lock is released when the file closes)."""
    with CHROOT_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _make_runs(work: Path, *, with_theirs: bool, backends: tuple[str, ...]) -> Runs:
    runs = Runs(theirs=with_theirs, backends=backends)
    # The cached images are resolved once: every copy and the "pristine" reads use the same files
    # even if tests/guests.py (part of their cache key) changes while this module runs.
    pristine = {f"pristine-{d}": guest_image(d, extra=CENTOS_EXTRA if d == "centos7" else None)
                for d in ("centos7", "debian12", "ubuntu2204", "rocky9")}
    sources = {key(b, name): distro for b in backends for name, distro in OURS.items()}
    sources |= dict.fromkeys(THEIRS if with_theirs else (), "centos7")
    disks = {name: work / f"{name}.qcow2" for name in sources}
    for name, distro in sources.items():
        if not name.endswith("-ours-rerun"):  # that one is a copy of ours-defaults' result
            _copy(pristine[f"pristine-{distro}"], disks[name])

    def theirs(name: str, flags: Sequence[str]) -> Callable[[], None]:
        return lambda: runs.cli.__setitem__(name, _virt_sysprep(disks[name], flags))

    processes, library = _our_jobs("appliance", disks, runs)
    if with_theirs:
        processes += [theirs("theirs-defaults", []), theirs("theirs-all", _ops_flags(LIST_ALL)),
                      theirs("theirs-users", [*_ops_flags(LIST_USERS), *KEEP_USERS])]
    chroot = [job for jobs in _our_jobs("chroot", disks, runs) for job in jobs] if "chroot" in backends else []

    def chroot_lane() -> None:
        """One session at a time, here and in any other process running this module's chroot sessions:
        clones of one XFS guest share its UUID (see test_chroot_two_clones_at_once)."""
        before = appliance.launch_count()
        try:
            with chroot_turn():
                for job in chroot:
                    job()
        except Exception as exc:  # the chroot tests report it; the appliance's runs go on
            runs.chroot_error = f"{type(exc).__name__}: {exc}"
        runs.launches["chroot"] = appliance.launch_count() - before

    def after(gate: Future[None], job: Callable[[], None]) -> Callable[[], None]:
        def gated() -> None:
            gate.result()
            job()
        return gated

    start = appliance.launch_count()
    with ThreadPoolExecutor(max_workers=2) as pool, ThreadPoolExecutor(max_workers=1) as lane:
        gate = lane.submit(chroot_lane)
        futures = [pool.submit(job) for job in processes]  # theirs and the CLI: no launch in this process
        futures += [pool.submit(after(gate, job)) for job in library]
        for future in [gate, *futures]:
            future.result()
    runs.launches["appliance"] = appliance.launch_count() - start - runs.launches.get("chroot", 0)
    order = [*disks, *pristine]
    everything = {**disks, **pristine}
    runs.snap = dict(zip(order, read_snapshots([everything[n] for n in order]), strict=True))
    return runs


def once_per_test_run(make: Callable[[], Runs]) -> Runs:
    """The runs, made by the first pytest-xdist worker that needs them and loaded by the others.

    ``--dist loadgroup`` would keep this module on one worker, but pytest 9.2 silently defeats
    it (pytest-dev/pytest-xdist#1386): without this, every worker would make every launch.
    """
    testrun = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if testrun is None:
        return make()
    SHARE_DIR.mkdir(exist_ok=True)
    for old in SHARE_DIR.iterdir():  # left by earlier test runs
        if time.time() - old.stat().st_mtime > 86400:
            old.unlink(missing_ok=True)
    shared = SHARE_DIR / f"{testrun}.pickle"
    with (SHARE_DIR / f"{testrun}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if shared.exists():
            outcome = pickle.loads(shared.read_bytes())
        else:
            try:
                outcome = make()
            except BaseException as exc:
                shared.write_bytes(pickle.dumps(f"{type(exc).__name__}: {exc}"))
                raise
            shared.write_bytes(pickle.dumps(outcome))
    if isinstance(outcome, str):
        raise RuntimeError(f"the runs failed in another pytest-xdist worker: {outcome}")
    assert isinstance(outcome, Runs)
    return outcome


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest) -> Runs:
    """All launches of the module; virt-sysprep's only when a selected test here is ``differential``.

    The work directory is private (not pytest's basetemp, which a concurrent pytest session
    may prune while this long fixture runs); the disks go once their trees are read.
    """
    wanted = any(getattr(item, "module", None) is request.module and item.get_closest_marker("differential")
                 for item in request.session.items)
    problems = chroot_problems()

    def make() -> Runs:
        with tempfile.TemporaryDirectory(prefix="imgsmith-sysprep-test-", dir="/var/tmp") as work:
            made = _make_runs(Path(work), with_theirs=wanted and shutil.which("virt-sysprep") is not None,
                              backends=BACKENDS if not problems else ("appliance",))
        made.chroot_problem = problems[0] if problems else ""
        return made

    return once_per_test_run(make)


def usable(runs: Runs, backend: str) -> str:
    if backend not in runs.backends:
        pytest.skip(f"the chroot backend cannot run here: {runs.chroot_problem}")
    if backend == "chroot" and runs.chroot_error:
        pytest.fail(f"the chroot runs failed: {runs.chroot_error}", pytrace=False)
    return backend


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, runs: Runs) -> str:
    """Each test that looks at our results runs once per backend."""
    return usable(runs, str(request.param))


def theirs_or_skip(runs: Runs) -> None:
    if not runs.theirs:
        pytest.skip("virt-sysprep is not installed")


def pristine(runs: Runs, distro: str) -> dict[str, Entry]:
    return runs.snap[f"pristine-{distro}"].tree


def result(runs: Runs, name: str) -> dict[str, Entry]:
    return runs.snap[name].tree


# --------------------------------------------------------------------------- expectations


def _with_descendants(tree: Mapping[str, Entry], roots: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for root in roots:
        assert root in tree, f"expectation table names {root}, which the pristine guest does not have"
        out |= {p for p in tree if p == root or p.startswith(root.rstrip("/") + "/")}
    return out


def _common_removed(user: str) -> list[str]:
    """Paths every phony guest has that the default set removes (family-specific ones below)."""
    return [
        # ssh-hostkeys, ssh-userdir, bash-history, zsh-history
        "/etc/ssh/ssh_host_rsa_key", "/etc/ssh/ssh_host_rsa_key.pub", "/etc/ssh/ssh_host_ed25519_key",
        "/etc/ssh/ssh_host_ed25519_key.pub", f"/home/{user}/.ssh", "/root/.bash_history",
        f"/home/{user}/.bash_history", "/root/.zsh_history",
        # logfiles, cloud-init, utmp
        "/var/log/wtmp", "/var/log/btmp", "/var/log/lastlog", "/var/log/cloud-init.log",
        "/var/log/cloud-init-output.log", "/var/lib/cloud/instance", "/var/lib/cloud/instances",
        "/var/lib/cloud/data", "/run/utmp",
        # udev-persistent-net, tmp-files, mail-spool, blkid-tab, crash-data, backup-files
        "/etc/udev/rules.d/70-persistent-net.rules", "/tmp/junk", "/var/tmp/junk", "/var/spool/mail/root",
        "/etc/blkid/blkid.tab", "/var/crash/vmcore", "/etc/bar~",
        # lvm-system-devices, passwd-backups
        "/etc/lvm/devices/system.devices", "/etc/passwd-", "/etc/shadow-", "/etc/group-", "/etc/gshadow-",
    ]


REDHAT_REMOVED = ["/var/log/messages", "/var/log/secure", "/var/log/audit/audit.log",
                  "/var/lib/dhclient/dhclient-eth0.leases", "/var/lib/rpm/__db.001", "/var/spool/cron/root"]
DEBIAN_REMOVED = ["/var/log/syslog", "/var/log/auth.log", "/var/lib/dhcp/dhclient.eth0.leases",
                  "/var/cache/apt/archives/foo.deb", "/var/spool/cron/crontabs/root"]
CENTOS_EXTRA_REMOVED = [
    "/var/spool/abrt/ccpp-2024-01-01-00:00:00-1", "/root/notes.bak", "/var/lib/misc/state.bak",
    "/srv/www/index.html~", "/home/centos/.zsh_history", "/etc/blkid.tab.old", "/var/log/dump/vmcore",
    "/var/spool/at/a00001019a1b2c", "/var/spool/at/spool/a00001019a1b2c", "/var/lib/dhcpd/dhcpd.leases",
    "/var/lib/dovecot/instances", "/etc/ipa/default.conf", "/etc/ipa/ca.crt",
    "/var/lib/ipa-client/sysrestore/sysrestore.state", "/etc/krb5.keytab", "/var/log/messages-20240101",
    "/var/log/cron", "/var/log/maillog", "/var/log/dmesg.old", "/var/log/anaconda/anaconda.log",
    "/root/anaconda-ks.cfg", "/var/lib/logrotate.status", "/var/cache/man/index.db", "/var/log/journal/abc",
    "/var/log/tuned/tuned.log", "/var/log/yum.log.1", "/run/console/root", "/run/faillock/root", "/etc/subuid-",
    "/etc/subgid-", "/var/log/puppet/puppet.log", "/var/lib/puppet/ssl/certs/host.pem",
    "/var/lib/puppet/state/last_run.yaml", "/var/lib/rpm/__db.002", "/var/log/samba/log.smbd",
    "/var/lib/samba/private/secrets.tdb", "/etc/sysconfig/hw-uuid", "/etc/smolt/uuid", "/var/log/sssd/sssd.log",
    "/var/lib/sss/db/cache.ldb", "/tmp/.hidden", "/var/tmp/sub", "/var/lib/cloud/sem", "/var/lib/cloud/handlers",
    "/var/cache/yum/x86_64/7/timedhosts.txt", "/var/spool/mail/olduser", "/var/lib/yum/uuid",
    "/var/cache/yum/x86_64/7/base/packages/foo.rpm",
]
REMOVED: dict[str, list[str]] = {
    "centos7": _common_removed("centos") + REDHAT_REMOVED + CENTOS_EXTRA_REMOVED,
    "rocky9": _common_removed("rocky") + REDHAT_REMOVED + [
        "/var/cache/dnf/foo.solv", "/etc/NetworkManager/system-connections/eth0.nmconnection"],
    "debian12": _common_removed("debian") + DEBIAN_REMOVED,  # /root/.ssh: removed, then made anew
    "ubuntu2204": _common_removed("ubuntu") + DEBIAN_REMOVED,
}
for _distro in ("centos7", "rocky9", "ubuntu2204"):
    REMOVED[_distro].append("/root/.ssh")
CHANGED: dict[str, set[str]] = {
    "centos7": {"/etc/machine-id", "/var/lib/dbus/machine-id", "/var/lib/systemd/random-seed",
                "/etc/sysconfig/network-scripts/ifcfg-eth0", "/etc/sysconfig/network-scripts/ifcfg-eth1",
                "/var/account/pacct", "/var/spool/at/.SEQ"},
    "rocky9": {"/etc/machine-id", "/var/lib/systemd/random-seed", "/var/account/pacct",
               "/etc/sysconfig/network-scripts/ifcfg-eth0"},
    "debian12": {"/etc/machine-id", "/var/lib/systemd/random-seed", "/etc/hostname", "/root/.ssh",
                 "/root/.ssh/authorized_keys"},
    "ubuntu2204": {"/etc/machine-id", "/var/lib/systemd/random-seed"},
}
RESULT = {"centos7": "ours-defaults", "rocky9": "rocky9", "debian12": "debian12", "ubuntu2204": "ubuntu2204"}
DISTROS = tuple(RESULT)


def changed_paths(before: Mapping[str, Entry], after: Mapping[str, Entry]) -> set[str]:
    return {p for p in before.keys() & after.keys() if before[p] != after[p]}


# --------------------------------------------------------------------------- per-distro effects


@pytest.mark.parametrize("distro", DISTROS)
def test_defaults_remove_exactly_the_expected_paths(runs: Runs, backend: str, distro: str) -> None:
    before, after = pristine(runs, distro), result(runs, key(backend, RESULT[distro]))
    expected = _with_descendants(before, REMOVED[distro])
    removed = before.keys() - after.keys()
    assert sorted(removed - expected) == [], "removed but not expected"
    assert sorted(expected - removed) == [], "expected gone but still there"
    assert sorted(changed_paths(before, after) - CHANGED[distro]) == [], "changed but not expected"


@pytest.mark.parametrize("distro", DISTROS)
def test_defaults_reset_identity_and_keep_the_rest(runs: Runs, backend: str, distro: str) -> None:
    before, after = pristine(runs, distro), result(runs, key(backend, RESULT[distro]))
    user = USERS[distro]
    mid = after["/etc/machine-id"]
    assert (mid.type, mid.size, mid.mode) == ("f", 0, before["/etc/machine-id"].mode)  # emptied in place
    seed, old_seed = after["/var/lib/systemd/random-seed"], before["/var/lib/systemd/random-seed"]
    assert seed.sha256 != old_seed.sha256 and (seed.size, seed.mode) == (old_seed.size, old_seed.mode)
    for kept in ("/etc/passwd", "/etc/shadow", "/etc/fstab", "/etc/resolv.conf", "/etc/foo.conf.orig",
                 f"/home/{user}/.bashrc", "/etc/ssh/sshd_config", "/var/lib/cloud", "/var/log", "/var/spool/cron"):
        assert after[kept] == before[kept], kept
    assert (after["/tmp"].mode, after["/var/tmp"].mode) == (0o1777, 0o1777)
    leases = [p for p in before if p.startswith("/var/lib/NetworkManager/") and p.endswith(".lease")]
    assert leases and all(after[p] == before[p] for p in leases)  # virt-sysprep 1.48 leaves NM leases
    if distro != "debian12":  # debian12's sysprep also ran --hostname
        assert after["/etc/hostname"] == before["/etc/hostname"]


def test_redhat_family_specifics(runs: Runs, backend: str) -> None:
    c7, c7_before = result(runs, key(backend, "ours-defaults")), pristine(runs, "centos7")
    assert c7["/etc/sysconfig/network-scripts/ifcfg-eth0"].content == (
        b'DEVICE="eth0"\nBOOTPROTO="dhcp"\nONBOOT="yes"\nTYPE="Ethernet"\n'
        b"UUID=5fb06bd0-0bb0-7ffb-45f1-d6edd65f3e03\n")
    assert c7["/etc/sysconfig/network-scripts/ifcfg-eth1"].content == b"DEVICE=eth1\nONBOOT=no\n"
    pacct = c7["/var/account/pacct"]
    assert (pacct.size, pacct.mode) == (0, 0o600)  # emptied in place: not world-readable afterwards
    assert c7["/var/spool/at/.SEQ"].content == b"00000\n"
    assert c7["/var/lib/dbus/machine-id"].size == 0
    for kept in ("/usr/share/doc/keep.bak", "/var/log/keep.txt", "/var/lib/cloud/seed/nocloud/meta-data",
                 "/var/lib/cloud/scripts/per-boot/hello.sh", "/etc/cloud/cloud.cfg", "/var/lib/rpm/Packages",
                 "/var/kerberos/krb5kdc/principal", "/etc/sysconfig/iptables", "/home/olduser/.profile",
                 "/var/cache/yum/x86_64/7/base/packages", "/var/lib/puppet/ssl/certs", "/var/log/audit"):
        assert c7[kept] == c7_before[kept], kept
    assert "/.autorelabel" not in c7  # no customize operations: no relabel of the SELinux guest
    r9 = result(runs, key(backend, "rocky9"))  # the whole Red Hat family, unlike virt-sysprep 1.48's distro names
    assert r9["/etc/NetworkManager/system-connections"].type == "d"
    assert b"HWADDR=" not in (r9["/etc/sysconfig/network-scripts/ifcfg-eth0"].content or b"HWADDR=")
    assert r9["/var/account/pacct"].size == 0


def test_debian_family_specifics(runs: Runs, backend: str) -> None:
    for distro in ("debian12", "ubuntu2204"):
        before, after = pristine(runs, distro), result(runs, key(backend, RESULT[distro]))
        for kept in ("/var/cache/apt/archives/partial", "/var/spool/cron/crontabs", "/var/lib/dpkg/status"):
            assert after[kept] == before[kept], (distro, kept)
    u22 = pristine(runs, "ubuntu2204")
    after = result(runs, key(backend, "ubuntu2204"))
    assert after["/etc/netplan/50-cloud-init.yaml"] == u22["/etc/netplan/50-cloud-init.yaml"]


def test_second_run_is_harmless(runs: Runs, backend: str) -> None:
    first, second = result(runs, key(backend, "ours-defaults")), result(runs, key(backend, "ours-rerun"))
    assert sorted(changed_paths(first, second)) == ["/var/lib/systemd/random-seed"]
    assert first.keys() == second.keys()
    rerun = runs.results[key(backend, "ours-rerun")]
    assert rerun.committed
    assert [op.name for op in rerun.operations if op.changed and op.name not in (
        "machine-id", "pacct-log", "cron-spool")] == []


def test_every_library_run_is_committed_by_its_backend(runs: Runs, backend: str) -> None:
    """Six library runs each: six launches with the appliance (per-run counts overlap: two runs share
    the process at a time), none with chroot (its runs have the process to themselves)."""
    mine = {name: res for name, res in runs.results.items() if name.startswith(f"{backend}-")}
    assert sorted(mine) == [key(backend, name) for name in
                            ("ours-all", "ours-defaults", "ours-rerun", "ours-users", "rocky9", "ubuntu2204")]
    assert runs.launches[backend] == (len(mine) if backend == "appliance" else 0)
    for name, res in mine.items():
        assert (res.committed, res.backend, res.os is not None) == (True, backend, True), name
        assert res.launches >= 1 if backend == "appliance" else res.launches == 0, name


def test_injected_key_removed_with_warning_and_machine_id_stays_empty(runs: Runs, backend: str) -> None:
    """customize --ssh-inject, then sysprep: ssh-userdir removes the key and says so; --ssh-inject given
    to sysprep itself survives (customize runs last); --hostname's customize run leaves machine-id empty."""
    customized = runs.cli[f"{key(backend, 'debian12')}-customize"].stderr.splitlines()[-1]
    assert customized.startswith("[") and "] Finished: 1 operation(s) changed " in customized
    assert customized.endswith(", backend chroot") if backend == "chroot" else ", accelerator " in customized
    run = runs.cli[key(backend, "debian12")]
    warning = ("imgsmith: warning: ssh-userdir removed /root/.ssh (holding 2 authorized key(s)); "
               "use --operations defaults,-ssh-userdir to keep injected keys")
    assert warning in run.stderr.splitlines()
    after = result(runs, key(backend, "debian12"))
    assert after["/root/.ssh/authorized_keys"].content == (KEY2 + "\n").encode()
    assert (after["/root/.ssh"].mode, after["/root/.ssh/authorized_keys"].mode) == (0o700, 0o600)
    assert after["/etc/hostname"].content == b"clone.example.com\n"
    assert after["/etc/machine-id"].size == 0
    report = json.loads(run.stdout)
    assert (report["backend"], report["launches"], report["committed"]) == (
        backend, 1 if backend == "appliance" else 0, True)
    ops = {op["name"]: op["changed"] for op in report["operations"]}
    assert ops["ssh-userdir"] == ["/home/debian/.ssh", "/root/.ssh"]
    assert ops["customize"] == ["--hostname clone.example.com", f"--ssh-inject root:string:{KEY2}"]
    assert list(ops)[-2:] == ["customize", "lvm-uuids"]  # customize ends the filesystem phase
    assert any(w.startswith("ssh-userdir removed /root/.ssh") for w in report["warnings"])


@pytest.mark.parametrize("name", list(OURS))
def test_both_backends_leave_the_same_guest(runs: Runs, name: str) -> None:
    """Path by path (type, mode, owner, size, content, link target): only what is random on every run differs."""
    usable(runs, "chroot")
    diff = differences(result(runs, key("appliance", name)), result(runs, key("chroot", name)))
    assert diff == ({} if name == "ours-users" else {"/var/lib/systemd/random-seed": "sha256"})
    old = runs.snap[f"pristine-{OURS[name]}"].fs_uuid
    new = {runs.snap[key(b, name)].fs_uuid for b in BACKENDS}
    assert (old not in new and len(new) == 2) if name == "ours-all" else new == {old}  # fs-uuids only in "all"


# --------------------------------------------------------------------------- against virt-sysprep 1.48

ONLY_OURS_REMOVES = [  # the three operations virt-sysprep 1.48 does not have
    "/var/lib/cloud/instance", "/var/lib/cloud/instances", "/var/lib/cloud/data", "/var/lib/cloud/sem",
    "/var/lib/cloud/handlers", "/etc/lvm/devices/system.devices", "/root/.zsh_history", "/home/centos/.zsh_history",
]


def differences(ours: Mapping[str, Entry], theirs: Mapping[str, Entry]) -> dict[str, str]:
    """path -> what differs (presence, type, mode, owner, size, content, link target)."""
    out: dict[str, str] = {}
    for path in sorted(ours.keys() | theirs.keys()):
        a, b = ours.get(path), theirs.get(path)
        if a is None or b is None:
            out[path] = "only ours" if b is None else "only theirs"
        elif a != b:
            fields = ("type", "mode", "uid", "gid", "size", "sha256", "target")
            out[path] = ",".join(f for f in fields if getattr(a, f) != getattr(b, f))
    return out


def check_documented_deviations(diff: dict[str, str], runs: Runs, ours: str, theirs: str) -> None:
    """Remove from *diff* every difference docs/sysprep.md documents, asserting each is as documented."""
    a, b, before = result(runs, ours), result(runs, theirs), pristine(runs, "centos7")
    if diff.pop("/etc/machine-id", None) is not None:  # the trap: theirs filled by its customize step
        assert a["/etc/machine-id"].size == 0
        content = b["/etc/machine-id"].content or b""
        assert len(content) == 33 and int(content, 16) and content != before["/etc/machine-id"].content
    if diff.pop("/var/lib/systemd/random-seed", None) is not None:  # random on both sides
        seeds = {a["/var/lib/systemd/random-seed"].sha256, b["/var/lib/systemd/random-seed"].sha256,
                 before["/var/lib/systemd/random-seed"].sha256}
        assert len(seeds) == 3
    if diff.get("/var/account/pacct") == "mode":  # ours emptied in place; theirs rm + touch
        del diff["/var/account/pacct"]
        assert (a["/var/account/pacct"].mode, b["/var/account/pacct"].mode) == (0o600, 0o644)
    if "/var/lib/cloud/instance" in diff:
        for path in _with_descendants(b, ONLY_OURS_REMOVES):
            assert diff.pop(path) == "only theirs", path


@pytest.mark.differential
def test_differential_defaults(runs: Runs, backend: str) -> None:
    theirs_or_skip(runs)
    ours = key(backend, "ours-defaults")
    diff = differences(result(runs, ours), result(runs, "theirs-defaults"))
    check_documented_deviations(diff, runs, ours, "theirs-defaults")
    assert diff == {}


@pytest.mark.differential
def test_differential_all_but_user_account(runs: Runs, backend: str) -> None:
    theirs_or_skip(runs)
    ours = key(backend, "ours-all")
    diff = differences(result(runs, ours), result(runs, "theirs-all"))
    check_documented_deviations(diff, runs, ours, "theirs-all")
    assert diff == {}
    old = runs.snap["pristine-centos7"].fs_uuid
    new = {runs.snap[ours].fs_uuid, runs.snap["theirs-all"].fs_uuid}
    assert old not in new and len(new) == 2  # fs-uuids: a fresh random UUID each
    assert result(runs, ours)["/.unconfigured"].size == 0  # flag-reconfiguration


@pytest.mark.differential
def test_differential_user_account_list(runs: Runs, backend: str) -> None:
    """Repeated --operations (user-account,ssh-hostkeys,machine-id then -machine-id,net-hwaddr), keeping centos."""
    theirs_or_skip(runs)
    ours, theirs = result(runs, key(backend, "ours-users")), result(runs, "theirs-users")
    diff = differences(ours, theirs)
    assert diff.pop("/etc/gshadow") == "size,sha256"  # ours also drops the removed group's gshadow line
    assert diff == {}
    assert b"olduser" not in (ours["/etc/gshadow"].content or b"")
    for path in ("/etc/passwd", "/etc/shadow", "/etc/group"):
        assert b"olduser" not in (ours[path].content or b"") and b"centos" in (ours[path].content or b"")
    assert "/home/olduser" not in ours and "/var/spool/mail/olduser" not in ours and "/home/centos" in ours
    before = pristine(runs, "centos7")
    assert ours["/etc/machine-id"] == before["/etc/machine-id"]  # -machine-id took it out again
    assert ours["/var/lib/systemd/random-seed"] == before["/var/lib/systemd/random-seed"]  # no customize


# --------------------------------------------------------------------------- the chroot backend alone


def test_chroot_two_clones_at_once(tmp_path: Path) -> None:
    """Clones share their filesystem's UUID until fs-uuids runs: sysprep one while another is open
    (another sysprep or build of the same golden image), as the appliance allows."""
    if problems := chroot_problems():
        pytest.skip(f"the chroot backend cannot run here: {problems[0]}")
    image = guest_image("rocky9")  # XFS
    first, second = _copy(image, tmp_path / "first.qcow2"), _copy(image, tmp_path / "second.qcow2")
    chroot = SessionOptions(backend="chroot")
    with chroot_turn(), open_guest(first, "qcow2", chroot) as guest:
        assert guest.backend == "chroot"
        done = sysprep_disk(second, "machine-id", session=chroot)
    assert (done.committed, done.backend, done.launches) == (True, "chroot", 0)
