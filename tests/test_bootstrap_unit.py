"""Unit tests for the bootstrap source and the boot test's pure parts (no root, no qemu, no network)."""

from __future__ import annotations

import datetime as dt
import io
import json
import subprocess
from pathlib import Path

import pycdlib
import pytest
import yaml

from imgsmith.boot.console import ConsoleParser, Stage, clean_line
from imgsmith.boot.qemu import QemuConfig, qemu_argv
from imgsmith.boot.seed import SeedConfig, write_seed
from imgsmith.boot.ssh import CommandResult, ThrowawayKey
from imgsmith.boot.test import Check, Timeouts, choose_accelerator, evaluate, machine_config
from imgsmith.errors import UsageError
from imgsmith.host import accel
from imgsmith.source import mirror
from imgsmith.source.bootstrap import (
    BootstrapSpec,
    Sources,
    cache_key,
    mmdebstrap_argv,
    profile_for,
    resolve_sources,
)
from imgsmith.source.partition import Partitioning, layout_for, sfdisk_script

# --- seed --------------------------------------------------------------------------------------


def _read_iso_file(iso: pycdlib.PyCdlib, **path: str) -> str:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, **path)
    return out.getvalue().decode()


def test_seed_iso_reads_back_with_label_names_and_key(tmp_path: Path) -> None:
    key = ThrowawayKey.generate()
    cfg = SeedConfig(instance_id="imgsmith-0123456789ab", public_key=key.public)
    path = write_seed(tmp_path / "seed.iso", cfg)

    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "cidata"
        user = _read_iso_file(iso, rr_path="/user-data")
        meta = _read_iso_file(iso, joliet_path="/meta-data")
    finally:
        iso.close()

    assert user.startswith("#cloud-config\n")
    doc = yaml.safe_load(user)
    default, account = doc["users"]
    assert default == "default"  # the image's default user gets the datasource's keys
    assert account["name"] == "imgsmith"
    assert account["ssh_authorized_keys"] == [key.public]
    assert account["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    assert doc["final_message"].startswith("IMGSMITH-BOOT-OK imgsmith-0123456789ab ")
    assert doc["runcmd"] == [["sh", "-c", "mkdir -p /var/lib/imgsmith-boot && "
                                          "echo imgsmith-0123456789ab > /var/lib/imgsmith-boot/user-data"]]
    assert yaml.safe_load(meta) == {"instance-id": "imgsmith-0123456789ab", "local-hostname": "imgsmith-boot-test"}
    raw = path.read_bytes()
    assert b"PRIVATE KEY" not in raw and b"openssh-key-v1" not in raw


def test_throwaway_key_is_fresh_and_never_printed() -> None:
    a, b = ThrowawayKey.generate(), ThrowawayKey.generate()
    assert a.public != b.public
    assert a.public.startswith("ssh-ed25519 AAAA")
    assert "PRIVATE" not in repr(a) and a.pkey.get_base64() in a.public


# --- mirror detection and snapshot dates -------------------------------------------------------

INDEXTARGETS = (
    "http://deb.debian.org/debian-security/\tbookworm-security\tdeb\tDebian\n"
    "http://deb.debian.org/debian/\tbookworm-updates\tdeb\tDebian\n"
    "http://deb.debian.org/debian/\tbookworm\tdeb\tDebian\n"
    "http://deb.debian.org/debian/\tbookworm\tdeb-src\tDebian\n"
    "http://apt.example.com/node/\tnodistro\tdeb\tNodesource\n"
    "http://mirror.example.org/ubuntu/\tjammy\tdeb\t\n"
)


def test_indextargets_picks_archive_and_security_per_distro() -> None:
    debian = mirror.parse_indextargets(INDEXTARGETS, "debian")
    assert debian == mirror.HostMirrors("http://deb.debian.org/debian", "http://deb.debian.org/debian-security")
    # No Origin (Release file not fetched yet): fall back to the URL.
    assert mirror.parse_indextargets(INDEXTARGETS, "ubuntu").archive == "http://mirror.example.org/ubuntu"
    assert mirror.parse_indextargets("", "debian") == mirror.HostMirrors()


def test_detect_host_mirrors_uses_injected_runner() -> None:
    seen: list[list[str]] = []

    def runner(argv: object) -> str:
        seen.append(list(argv))  # type: ignore[call-overload]
        return INDEXTARGETS

    found = mirror.detect_host_mirrors("debian", runner=runner)
    assert found.archive == "http://deb.debian.org/debian"
    assert seen[0][:2] == ["apt-get", "indextargets"]


def test_release_date_parsed_and_falls_back_to_today(tmp_path: Path) -> None:
    release = tmp_path / "dists" / "bookworm" / "Release"
    release.parent.mkdir(parents=True)
    release.write_text("Origin: Debian\nSuite: oldstable\nDate: Sat, 10 May 2025 08:13:42 UTC\n\nMD5Sum:\n")
    assert mirror.release_date(f"file://{tmp_path}", "bookworm") == "2025-05-10T08:13:42+00:00"
    assert mirror.release_date(f"file://{tmp_path}", "trixie", today=lambda: dt.date(2026, 1, 2)) == "2026-01-02"
    assert mirror.parse_release_date(b"Origin: X\n\nDate: late\n") is None


# --- spec, sources, cache key --------------------------------------------------------------------


def _sources(date: str = "2025-05-10T08:13:42+00:00") -> Sources:
    spec = BootstrapSpec()
    return resolve_sources(spec, profile_for(spec),
                           host=lambda _d: mirror.HostMirrors("http://m/debian", "http://m/debian-security"),
                           date_of=lambda _m, _s: date)


def test_resolve_sources_uses_host_mirrors_and_pockets() -> None:
    src = _sources()
    assert [s[:2] for s in src.suites] == [("http://m/debian", "bookworm"), ("http://m/debian", "bookworm-updates"),
                                          ("http://m/debian-security", "bookworm-security")]
    assert src.apt_lines()[0] == "deb http://m/debian bookworm main"


def test_cache_key_is_stable_and_tracks_every_input() -> None:
    base = BootstrapSpec(packages=("vim", "curl"))
    key = cache_key(base, _sources())
    assert key == cache_key(BootstrapSpec(packages=("curl", "vim", "curl")), _sources())
    assert key == cache_key(BootstrapSpec.model_validate({"packages": ["curl", "vim"], "size": "3G"}), _sources())
    changed = [
        cache_key(base, _sources("2025-06-01T00:00:00+00:00")),
        cache_key(base.model_copy(update={"release": "trixie"}), _sources()),
        cache_key(BootstrapSpec(packages=("vim",)), _sources()),
        cache_key(BootstrapSpec(packages=("vim", "curl"), partitioning=Partitioning.GPT), _sources()),
        cache_key(BootstrapSpec.model_validate({"packages": ["vim", "curl"], "size": "4G"}), _sources()),
        cache_key(base, _sources(), builder="0.0.0+bootstrap.0"),
    ]
    assert key not in changed and len(set(changed)) == len(changed)


def test_spec_validation_and_unsupported_distros() -> None:
    assert BootstrapSpec.model_validate({"size": "512M"}).size == 512 << 20
    with pytest.raises(ValueError, match="package name"):
        BootstrapSpec(packages=("ok", "rm -rf /"))
    with pytest.raises(ValueError, match="size"):
        BootstrapSpec.model_validate({"size": "+1G"})
    with pytest.raises(ValueError, match="URL"):
        BootstrapSpec(mirror="ftp://old")
    with pytest.raises(UsageError, match="dnf repository mirror"):
        profile_for(BootstrapSpec(distro="rocky"))
    with pytest.raises(UsageError, match="unknown distro"):
        profile_for(BootstrapSpec(distro="gentoo"))


def test_mmdebstrap_argv_for_debian_and_ubuntu(tmp_path: Path) -> None:
    spec = BootstrapSpec(packages=("vim",))
    argv = mmdebstrap_argv(spec, profile_for(spec), _sources(), tmp_path / "root", tmp_path / "p",
                           initramfs_stub=tmp_path / "s")
    include = next(a for a in argv if a.startswith("--include="))
    for pkg in ("linux-image-cloud-amd64", "grub-efi-amd64", "grub-pc-bin", "cloud-init", "openssh-server", "sudo",
                "vim", "initramfs-tools"):
        assert pkg in include.split("=", 1)[1].split(",")
    # update-initramfs is diverted to the stub before the --include set is installed (run once afterwards)
    hooks = [a.removeprefix("--essential-hook=") for a in argv if a.startswith("--essential-hook=")]
    assert any("dpkg-divert" in h and "--rename" in h and "/usr/sbin/update-initramfs" in h for h in hooks)
    assert any(h.startswith("install -m 0755 ") and str(tmp_path / "s") in h for h in hooks)
    assert argv[-4:-3] == [str(tmp_path / "root")] and argv[-3] == "deb http://m/debian bookworm main"
    assert not any(a.startswith("--keyring") for a in argv)

    ubuntu = BootstrapSpec(distro="ubuntu", release="jammy", mirror="http://ports.example/ubuntu-ports")
    src = resolve_sources(ubuntu, profile_for(ubuntu), host=lambda _d: mirror.HostMirrors(),
                          date_of=lambda _m, _s: "d")
    uargv = mmdebstrap_argv(ubuntu, profile_for(ubuntu), src, tmp_path, tmp_path / "p", initramfs_stub=tmp_path / "s")
    assert "--keyring=/usr/share/keyrings/ubuntu-archive-keyring.gpg" in uargv
    assert "deb http://ports.example/ubuntu-ports jammy-security main universe" in uargv
    assert "linux-image-virtual" in next(a for a in uargv if a.startswith("--include="))


def _deferred_tree(root: Path, kernels: tuple[str, ...] = ("6.1.0-9-cloud-amd64",)) -> None:
    """What mmdebstrap leaves with update-initramfs diverted: the real one renamed, the stub in its place."""
    from imgsmith.source import rootfs
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/sbin/update-initramfs").write_text(rootfs.INITRAMFS_STUB)
    (root / "usr/sbin/update-initramfs.imgsmith").write_text("#!/bin/sh\n# the package's\n")
    (root / "boot").mkdir()
    for k in kernels:
        (root / f"usr/lib/modules/{k}").mkdir(parents=True)
        (root / f"boot/vmlinuz-{k}").write_bytes(b"")


def test_initramfs_is_built_once_after_the_diversion_is_undone(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from imgsmith import proc
    from imgsmith.errors import ImgsmithError
    from imgsmith.source import rootfs
    calls: list[list[str]] = []

    def run(argv: list[object], **_kw: object) -> None:
        args = [str(a) for a in argv]
        calls.append(args[2:])
        if args[2:4] == ["dpkg-divert", "--quiet"] and "--rename" in args:  # what dpkg-divert --rename does
            (tmp_path / "usr/sbin/update-initramfs.imgsmith").rename(tmp_path / "usr/sbin/update-initramfs")
        if args[2] == "/usr/sbin/update-initramfs":
            (tmp_path / f"boot/initrd.img-{args[-1]}").write_bytes(b"\x1f\x8b")

    monkeypatch.setattr(proc, "run", run)
    _deferred_tree(tmp_path, ("6.1.0-9-cloud-amd64", "6.1.0-10-cloud-amd64"))
    (tmp_path / "usr/lib/modules/6.1.0-8-cloud-amd64").mkdir()  # modules left by a removed kernel: no vmlinuz
    rootfs.build_initramfs(tmp_path)
    assert calls == [
        ["dpkg-divert", "--quiet", "--local", "--rename", "--remove", "/usr/sbin/update-initramfs"],
        ["/usr/sbin/update-initramfs", "-c", "-k", "6.1.0-10-cloud-amd64"],
        ["/usr/sbin/update-initramfs", "-c", "-k", "6.1.0-9-cloud-amd64"],
    ]
    assert (tmp_path / "usr/sbin/update-initramfs").read_text() == "#!/bin/sh\n# the package's\n"

    # update-initramfs that leaves no initramfs: an error, not an image that cannot boot
    other = tmp_path / "other"
    _deferred_tree(other)
    monkeypatch.setattr(proc, "run", lambda argv, **_kw: None)
    with pytest.raises(ImgsmithError, match=r"left no /boot/initrd\.img-6\.1\.0-9-cloud-amd64"):
        rootfs.build_initramfs(other)
    # the stub there but initramfs-tools never unpacked: no initramfs would exist
    bare = tmp_path / "bare"
    _deferred_tree(bare)
    (bare / "usr/sbin/update-initramfs.imgsmith").unlink()
    with pytest.raises(ImgsmithError, match="initramfs-tools is not installed"):
        rootfs.build_initramfs(bare)
    assert not (bare / "usr/sbin/update-initramfs").exists()


def test_partition_layouts() -> None:
    assert layout_for(Partitioning.MBR).root_partition == 1
    assert layout_for(Partitioning.GPT).root_partition == 2
    assert "start=2048, type=83, bootable" in sfdisk_script(Partitioning.MBR)
    gpt = sfdisk_script(Partitioning.GPT)
    assert "label: gpt" in gpt and "21686148-6449-6E6F-744E-656564454649" in gpt


# --- qemu command line and accelerator -----------------------------------------------------------


def _config(tmp_path: Path, accel_name: str = "tcg") -> QemuConfig:
    return QemuConfig(disk=tmp_path / "o,verlay.qcow2", seed=tmp_path / "seed.iso", accel=accel_name, ssh_port=40022,
                      serial_log=tmp_path / "console.log", qmp_socket=tmp_path / "qmp.sock")


def test_qemu_argv_is_local_virtio_and_uses_the_accelerator(tmp_path: Path) -> None:
    argv = qemu_argv(_config(tmp_path))
    joined = " ".join(argv)
    assert argv[argv.index("-machine") + 1] == "q35,accel=tcg"
    assert argv[argv.index("-cpu") + 1] == "Nehalem"  # x86-64-v2, no AVX
    assert "hostfwd=tcp:127.0.0.1:40022-:22" in joined
    netdev = argv[argv.index("-netdev") + 1]
    assert netdev.startswith("user,id=net0,restrict=on,"), netdev  # no packet leaves the machine
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert len(drives) == 2 and all("if=virtio" in d for d in drives)
    assert "o,,verlay.qcow2" in drives[0] and "format=qcow2" in drives[0]
    assert "readonly=on" in drives[1] and "format=raw" in drives[1]
    assert "-cdrom" not in argv and "virtio-rng-pci" in argv and "-nodefaults" in argv
    assert qemu_argv(_config(tmp_path, "kvm"))[argv.index("-cpu") + 1] == "host"


def test_accelerator_falls_back_to_tcg_when_the_kvm_probe_fails(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMGSMITH_ACCEL", raising=False)
    monkeypatch.setenv("IMGSMITH_CACHE", str(tmp_path / "cache"))  # no cached verdict
    monkeypatch.setattr(accel, "probe_kvm", lambda: accel.Accelerator("tcg", "fake: KVM asserted"))
    verdict = choose_accelerator()
    assert verdict.name == "tcg"
    cfg = machine_config(tmp_path / "o.qcow2", tmp_path / "s.iso", tmp_path, verdict, 40022)
    argv = qemu_argv(cfg)
    assert "q35,accel=tcg" in argv and "host" not in argv

    monkeypatch.setattr(accel, "probe_kvm", lambda: accel.Accelerator("kvm", "fake: booted"))
    fast = choose_accelerator(lambda: accel.detect(refresh=True))
    assert "q35,accel=kvm" in qemu_argv(machine_config(tmp_path / "o", tmp_path / "s", tmp_path, fast, 1))


def test_timeouts_scale_with_the_accelerator() -> None:
    kvm, tcg = Timeouts.for_accelerator("kvm"), Timeouts.for_accelerator("tcg")
    assert tcg.deadlines[Stage.MARKER] == 5 * kvm.deadlines[Stage.MARKER]
    assert tcg.deadlines[Stage.MARKER] >= 300  # a loaded TCG host needs minutes
    assert Timeouts.for_accelerator("tcg", 2.0).deadlines[Stage.KERNEL] == 2 * tcg.deadlines[Stage.KERNEL]
    assert Timeouts.for_total("tcg", 1800).deadlines[Stage.MARKER] == pytest.approx(1800)
    assert Timeouts.for_total("kvm", 90).deadlines[Stage.KERNEL] == pytest.approx(kvm.deadlines[Stage.KERNEL] / 2)
    with pytest.raises(UsageError):
        Timeouts.for_total("tcg", 0)


# --- checks --------------------------------------------------------------------------------------


def test_check_parsing_and_evaluation() -> None:
    assert Check.parse("timedatectl show -p Timezone --value=Asia/Shanghai") == Check(
        "timedatectl show -p Timezone --value", "Asia/Shanghai")
    assert Check.parse("test -e /etc/fstab") == Check("test -e /etc/fstab")
    assert Check.parse("grep -c x=1 /f=2") == Check("grep -c x=1 /f", "2")
    with pytest.raises(UsageError):
        Check.parse("  ")
    assert evaluate(Check("uname -s", "Linux"), CommandResult(0, "Linux\n", "", 0.1)).passed
    assert "expected 'Linux'" in evaluate(Check("uname -s", "Linux"), CommandResult(0, "BSD\n", "", 0.1)).reason
    assert "exit status 1" in evaluate(Check("false"), CommandResult(1, "", "", 0.1)).reason
    assert evaluate(Check("false", expect_rc=1), CommandResult(1, "", "", 0.1)).passed
    assert not evaluate(Check("sleep 99"), CommandResult(None, "", "no result within 60 s", 60)).passed


# --- console stages ------------------------------------------------------------------------------

# Trimmed from a real boot of the bootstrapped Debian 12 image under TCG.
CONSOLE = (
    "\x1b[H\x1b[J\x1b[1;1H\x1b[2;24HGNU GRUB  version 2.06-13+deb12u2\r\n"
    "\x1b[?25h\x1b[H\x1b[J\x1b[1;1H  Booting `Debian GNU/Linux'\r\n\r\nLoading Linux 6.1.0-57-cloud-amd64 ...\r\n",
    "[    0.000000] Linux version 6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org) (gcc-12) #1 SMP\r\n"
    "[    0.000000] Command line: BOOT_IMAGE=/boot/vmlinuz-6.1.0-57-cloud-amd64 root=UUID=5c63 ro\r\n",
    "\r\nWelcome to \x1b[1mDebian GNU/Linux 12 (bookworm)\x1b[0m!\r\n\r\n"
    "[  123.878180] cloud-init[254]: Cloud-init v. 22.4.2 running 'init-local' at Mon. Up 121.28 seconds.\r\n",
    "\r\nDebian GNU/Linux 12 imgsmith-test ttyS0\r\n\r\nimgsmith-test login: ",
    "[  316.773457] cloud-init[423]: Cloud-init v. 22.4.2 running 'modules:final' at Mon. Up 314.63 seconds.\r\n"
    "-----BEGIN SSH HOST KEY KEYS-----\r\n"
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMOGJ3fo/SNvoaE7BdpZqclx root@imgsmith-test\r\n"
    "-----END SSH HOST KEY KEYS-----\r\n"
    "[  334.609051] cloud-init[423]: IMGSMITH-BOOT-OK iid-123 up 334.59 s\r\n",
)


def test_console_parser_recognises_stages_in_order() -> None:
    parser = ConsoleParser("IMGSMITH-BOOT-OK iid-123")
    seen = [parser.feed(chunk, float(t)) for t, chunk in enumerate(CONSOLE)]
    assert seen == [[Stage.FIRST_OUTPUT], [Stage.KERNEL], [Stage.INIT], [Stage.LOGIN_PROMPT],
                    [Stage.CLOUD_INIT_FINAL, Stage.MARKER]]
    state = parser.state
    assert state.fatal is None and state.first_missing() == Stage.SSH_LOGIN
    assert state.host_keys == {"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMOGJ3fo/SNvoaE7BdpZqclx"}
    assert parser.tail(1) == ["[  334.609051] cloud-init[423]: IMGSMITH-BOOT-OK iid-123 up 334.59 s"]
    assert clean_line("\x1b[0;32m  OK  \x1b[0m] Started\r") == "  OK  ] Started"


def test_console_marker_of_another_instance_does_not_count() -> None:
    parser = ConsoleParser("IMGSMITH-BOOT-OK iid-2")
    parser.feed("IMGSMITH-BOOT-OK iid-1 up 3 s\nIMGSMITH-BOOT-OK iid-23 up 3 s\n", 1.0)
    assert Stage.MARKER not in parser.state.reached


@pytest.mark.parametrize(("text", "stage", "reason"), [
    ("Loading Linux ...\r\nerror: file `/boot/vmlinuz-6.1.0-57-cloud-amd64' not found.\r\n", Stage.KERNEL, "GRUB"),
    ("Linux version 6.1\nGave up waiting for root file system device.\n"
     "ALERT!  UUID=0000 does not exist.  Dropping to a shell!\n", Stage.INIT, "root filesystem"),
    ("Linux version 6.1\nWelcome to Debian!\nYou are in emergency mode. After logging in\n",
     Stage.LOGIN_PROMPT, "emergency"),
    ("Linux version 6.1\n[ 2.1] Kernel panic - not syncing: VFS: Unable to mount root fs\n", Stage.INIT, "panic"),
])
def test_console_fatal_lines_name_the_stage(text: str, stage: Stage, reason: str) -> None:
    parser = ConsoleParser("IMGSMITH-BOOT-OK x")
    parser.feed(text, 2.0)
    assert parser.state.fatal is not None and reason in parser.state.fatal[0]
    assert parser.state.first_missing() == stage


def test_an_image_bootstrapped_elsewhere_is_adopted_and_nothing_is_built(tmp_path: Path) -> None:
    """The remote cache's fill: published under the recipe's name with its metadata, no mmdebstrap run."""
    from imgsmith.source.bootstrap import bootstrap_image, image_name
    spec = BootstrapSpec()
    calls: list[Path] = []

    def fill(dest: Path) -> bool:
        calls.append(dest)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(dest), "64M"], check=True)
        return True

    path = bootstrap_image(spec, cache_dir=tmp_path, fill=fill, sources_for=lambda s, p: _sources())
    assert path == tmp_path / "bootstrap" / f"{image_name(spec, cache_key(spec, _sources()))}.qcow2"
    assert path.is_file() and len(calls) == 1 and not calls[0].exists()  # the partial name is gone
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["pulled"] is True and meta["key"] == cache_key(spec, _sources())
    assert bootstrap_image(spec, cache_dir=tmp_path, fill=fill, sources_for=lambda s, p: _sources()) == path
    assert len(calls) == 1  # cached now: not asked again
