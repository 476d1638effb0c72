"""arm64 and UEFI on real images (issue 16): bootstrapped, customized and booted under qemu.

Three images, each bootstrapped once per machine into ``$IMGSMITH_CACHE`` (cached by recipe):

* amd64 hybrid (GPT, BIOS boot partition, ESP, root last): its layout and files checked offline;
  test_e2e boots the same bootstrap under SeaBIOS and under OVMF (``imgsmith build``'s default of
  every firmware the layout supports);
* amd64 UEFI with Secure Boot (Debian's signed shim, GRUB, kernel): boots under OVMF with
  Microsoft's keys enrolled, and the guest itself says Secure Boot is on;
* arm64 UEFI, built on this amd64 host through qemu-user: customized with install, run-command
  and timezone through the chroot backend (qemu-user again), then booted once under AAVMF
  (qemu-system-aarch64 -M virt, TCG) where SSH, ``uname -m`` and the customizations are checked.

Each module-scoped group boots as few times as it can. The arm64 test is the suite's longest
(≈ 13 CPU-minutes cold), so tests/conftest.py moves it to the front of the run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guests import host_mounted
from imgsmith.boot.firmware import Firmware
from imgsmith.boot.machines import machines_for
from imgsmith.boot.test import BootMachine, Check, boot_test
from imgsmith.disk.layout import read_layout
from imgsmith.source.bootstrap import (
    BootstrapSpec,
    bootstrap_image,
)

pytestmark = pytest.mark.boot

CACHE = Path(os.environ.get("IMGSMITH_CACHE") or "/var/tmp/imgsmith-test-cache")
IMGSMITH = [sys.executable, "-m", "imgsmith.cli.main"]


def _bootstrap(spec: BootstrapSpec) -> Path:
    if os.geteuid() != 0:
        pytest.skip("bootstrapping an image needs root (loop devices, mounts, chroot)")
    start = time.monotonic()
    image = bootstrap_image(spec, cache_dir=CACHE)
    print(f"bootstrap {spec.arch} {spec.boot_firmware}: {time.monotonic() - start:.0f} s")
    return image


def _dpkg_installed(status: str) -> set[str]:
    """Package names whose dpkg status stanza says ``install ok installed``."""
    names: set[str] = set()
    for stanza in status.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line[0].isspace())
        if fields.get("Status") == "install ok installed":
            names.add(fields["Package"])
    return names


@pytest.mark.xdist_group("arch-amd64")
def test_amd64_hybrid_layout_and_guest_offline() -> None:
    """The hybrid bootstrap's layout, `imgsmith info` and its files, read without booting it.

    test_e2e boots this same bootstrap (examples/debian12.yaml, same recipe, same cache) under
    SeaBIOS and under OVMF with `findmnt /boot/efi` among its checks; booting it twice more here
    cost ≈ 5 CPU-minutes of the suite's budget for nothing test_e2e does not already prove.
    """
    image = _bootstrap(BootstrapSpec())  # amd64's default: hybrid
    layout = read_layout(image, "qcow2")
    assert layout.table == "gpt" and layout.boot_mode == "hybrid"
    assert [p.type_name for p in layout.partitions] == ["BIOS boot", "EFI System", "Linux filesystem"]
    assert layout.partitions[-1].name == "root" and layout.efi_arch == "amd64" and not layout.shim
    assert layout.esp_files == ("BOOTX64.EFI",)
    assert [m.firmware for m in machines_for(image, "qcow2")] == [Firmware.BIOS, Firmware.UEFI]
    info = subprocess.run([*IMGSMITH, "info", str(image)], check=True, capture_output=True, text=True).stdout
    rows = [line.strip() for line in info.splitlines()]
    assert "boot mode:        hybrid (boots with bios, uefi)" in rows
    assert "partition 2:    126 MiB at 2 MiB, EFI System 'esp'" in rows
    assert "EFI boot loader:  amd64, EFI/BOOT: BOOTX64.EFI" in rows

    with host_mounted(image, "qcow2") as root:
        fstab = [line.split() for line in (root / "etc/fstab").read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
        assert {(f[1], f[2]) for f in fstab} >= {("/", "ext4"), ("/boot/efi", "vfat")}, fstab
        assert {"grub-efi-amd64", "grub-pc-bin"} <= _dpkg_installed((root / "var/lib/dpkg/status").read_text())
        # the initramfs was made once after the install: the diversion and its stub are gone
        assert "update-initramfs" not in (root / "var/lib/dpkg/diversions").read_text()
        assert not (root / "usr/sbin/update-initramfs.imgsmith").exists()
        assert b"imgsmith" not in (root / "usr/sbin/update-initramfs").read_bytes()
        assert len(list((root / "boot").glob("initrd.img-*"))) == 1


def _esp_tree(disk: Path, tmp: Path) -> dict[str, bytes | None]:
    """Every path in *disk*'s ESP (``None`` for a directory, else the file's bytes), read with mtools."""
    esp = read_layout(disk, "qcow2").esp
    assert esp is not None
    image = tmp / "esp.img"
    subprocess.run(["qemu-img", "dd", "-f", "qcow2", "-O", "raw", "bs=512", f"skip={esp.start // 512}",
                    f"count={esp.size // 512}", f"if={disk}", f"of={image}"], check=True, capture_output=True)
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    listing = subprocess.run(["mdir", "-/", "-a", "-b", "-i", image, "::/"], check=True, capture_output=True,
                             text=True, env=env).stdout.split()
    tree: dict[str, bytes | None] = {}
    for entry in listing:
        path = entry.removeprefix("::")
        tree[path.rstrip("/")] = None if path.endswith("/") else subprocess.run(
            ["mtype", "-i", image, f"::{path}"], check=True, capture_output=True, env=env).stdout
    image.unlink()
    return tree


@pytest.mark.xdist_group("arch-amd64")
def test_chroot_backend_reads_and_writes_the_esp_without_vfat(tmp_path: Path) -> None:
    """This host's kernel has no vfat: the chroot backend mirrors /boot/efi with mtools and writes the
    steps' changes back into the ESP itself, not into the root filesystem under it (guest/vfat.py)."""
    image = _bootstrap(BootstrapSpec())
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", image, disk], check=True)
    before = _esp_tree(disk, tmp_path)
    assert before["/EFI/BOOT/BOOTX64.EFI"], before

    def customize(*ops: str, command: str = "customize") -> subprocess.CompletedProcess[str]:
        r = subprocess.run([*IMGSMITH, command, "-v", "-a", str(disk), "--backend", "chroot", *ops],
                           check=False, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        return r

    r = customize("--mkdir", "/boot/efi/EFI/imgsmith/sub",
                  "--write", "/boot/efi/EFI/imgsmith/note.txt:from the first session",
                  "--write", "/boot/efi/EFI/imgsmith/sub/gone.txt:removed by the second",
                  "--run-command", "ls /boot/efi/EFI/BOOT > /root/esp-seen; ln -s note.txt /boot/efi/EFI/link")
    assert "this host's kernel cannot mount vfat, so its files are copied into a tmpfs with mtools" in r.stderr
    assert "/boot/efi: wrote 4 change(s) back into /dev/sda2 (vfat) with mtools" in r.stderr, r.stderr
    assert "/boot/efi/EFI/link: not a regular file or directory, which FAT cannot hold" in r.stderr
    # the second session sees what the first wrote, removes a tree and rewrites a file
    customize("--run-command", "cat /boot/efi/EFI/imgsmith/note.txt > /root/note-seen",
              "--delete", "/boot/efi/EFI/imgsmith/sub",
              "--write", "/boot/efi/EFI/imgsmith/note.txt:rewritten")
    # sysprep unmounts everything before its device operations: the mirror is written back then,
    # and the ESP must not look emptied to it (it once did: the whole ESP was deleted)
    r = customize("--write", "/boot/efi/EFI/imgsmith/sysprep.txt:written by sysprep", command="sysprep")
    assert "/boot/efi: wrote 1 change(s) back into /dev/sda2 (vfat) with mtools" in r.stderr, r.stderr

    after = _esp_tree(disk, tmp_path)
    assert after == {**before, "/EFI/imgsmith": None, "/EFI/imgsmith/note.txt": b"rewritten",
                     "/EFI/imgsmith/sysprep.txt": b"written by sysprep"}
    with host_mounted(disk, "qcow2") as root:
        assert list((root / "boot/efi").iterdir()) == []  # nothing landed under the mountpoint
        assert (root / "root/esp-seen").read_text() == "BOOTX64.EFI\n"
        assert (root / "root/note-seen").read_text() == "from the first session"


@pytest.mark.xdist_group("arch-amd64")
def test_amd64_secure_boot_boots_with_secure_boot_on(tmp_path: Path) -> None:
    image = _bootstrap(BootstrapSpec(firmware="uefi", secure_boot=True))
    layout = read_layout(image, "qcow2")
    assert layout.boot_mode == "uefi" and layout.shim
    assert {"BOOTX64.EFI", "GRUBX64.EFI", "MMX64.EFI"} <= {f.upper() for f in layout.esp_files}
    assert [m.firmware for m in machines_for(image, "qcow2")] == [Firmware.UEFI, Firmware.SECURE_BOOT]
    with pytest.raises(Exception, match="cannot boot with bios"):
        machines_for(image, "qcow2", ["bios"])
    result = boot_test(image, "qcow2", workdir=tmp_path, machine=BootMachine("amd64", Firmware.SECURE_BOOT),
                       checks=[Check("sudo -n dmesg | grep -c 'Secure boot enabled'", "1")])
    assert result.boot is not None
    assert (result.boot.guest_uefi, result.boot.guest_secure_boot) == (True, True), result.boot
    assert result.passed, (result.boot, [c.reason for c in result.checks if not c.passed])
    assert list(tmp_path.iterdir()) == [], "the overlay and the variable store copy must be removed"
    print(f"secure boot: ssh login at {result.stages['ssh login']} s, total {result.total_seconds} s")


@pytest.fixture(scope="module")
def arm64_image() -> Path:
    """The arm64 image, bootstrapped under qemu-user when it is not cached.

    Cold, that is ≈ 10 min of one core here (mmdebstrap ≈ 376 s, the one initramfs ≈ 197 s on a
    quiet machine: docs/decisions.md): tests/conftest.py schedules this test first, so it runs
    beside the rest of the suite instead of after it.
    """
    return _bootstrap(BootstrapSpec(arch="arm64"))


@pytest.mark.xdist_group("arch-arm64")
@pytest.mark.timeout(3600)  # cold: 1 114 s of bootstrap alone beside the suite (load ≈ 3); 1800 is too tight
def test_arm64_customized_through_chroot_boots_under_aavmf(arm64_image: Path, tmp_path: Path) -> None:
    layout = read_layout(arm64_image, "qcow2")
    assert (layout.boot_mode, layout.efi_arch, layout.esp_files) == ("uefi", "arm64", ("BOOTAA64.EFI",))
    disk = tmp_path / "arm64.qcow2"
    shutil.copyfile(arm64_image, disk)

    # --backend appliance with a command operation: refused in one line, the disk unchanged
    before = disk.read_bytes()[:1 << 20], disk.stat().st_size
    r = subprocess.run([*IMGSMITH, "customize", "-a", str(disk), "--backend", "appliance",
                        "--run-command", "true"], check=False, capture_output=True, text=True, timeout=900)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("imgsmith: error:")]
    assert lines == ["imgsmith: error: step 1 --run-command true: the appliance cannot run arm64 programs (this "
                     "guest's), so operations that run commands in it need the chroot backend"], r.stderr
    assert (disk.read_bytes()[:1 << 20], disk.stat().st_size) == before

    start = time.monotonic()
    r = subprocess.run([*IMGSMITH, "customize", "-a", str(disk), "--json",  # auto: chroot, for a foreign arch
                        "--install", "less", "--run-command", "uname -m > /etc/imgsmith-built-on",
                        "--timezone", "Asia/Shanghai"], check=False, capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert report["backend"] == "chroot", report
    print(f"customize arm64 through chroot + qemu-user: {time.monotonic() - start:.0f} s")

    result = boot_test(disk, "qcow2", workdir=tmp_path, machine=BootMachine("arm64", Firmware.UEFI), checks=[
        Check("uname -m", "aarch64"),
        Check("cat /etc/imgsmith-built-on", "aarch64"),  # run-command ran arm64 code, under qemu-user
        Check("dpkg-query -W -f '${Status}' less", "install ok installed"),
        Check("less --version | head -1 | cut -d' ' -f1", "less"),
        Check("timedatectl show -p Timezone --value", "Asia/Shanghai"),
        Check("findmnt -no FSTYPE /boot/efi", "vfat"),
        Check("dpkg-divert --list /usr/sbin/update-initramfs | wc -l", "0"),  # made once, then restored
    ])
    assert result.boot is not None and result.boot.guest_arch == "aarch64" and result.boot.guest_uefi
    assert result.passed, (result.boot, [(c.check.run, c.reason) for c in result.checks if not c.passed])
    assert result.accelerator == "tcg" and result.host_key_verified
    print(f"arm64 boot (TCG): kernel {result.stages['kernel']} s, ssh login {result.stages['ssh login']} s, "
          f"total {result.total_seconds} s")
