"""What a bootstrapped tree needs, beyond its packages, to boot as a cloud image.

Each function writes one concern into the mounted root and says why it is needed;
the values are the ones measured to work (docs/boot.md, NOTES.md): a serial
console on the kernel line, ``root=UUID=`` written explicitly, cloud-init that
finds a NoCloud seed, and no per-instance identity (host keys, machine-id) baked
into the image.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
from pathlib import Path

from .. import proc
from ..errors import ImgsmithError

__all__ = [
    "DEBCONF_PRESEED",
    "INITRAMFS_STUB",
    "build_initramfs",
    "configure_tree",
    "defer_initramfs_hooks",
    "install_grub",
    "remove_build_leftovers",
    "remove_instance_identity",
]

log = logging.getLogger("imgsmith.source")

# grub-pc's postinst asks which disks to install to; at build time the answer is
# "none" (grub-install runs explicitly against the loop device afterwards), and the
# image keeps that answer so a later grub-pc upgrade never stops at a prompt.
DEBCONF_PRESEED = (
    "grub-pc grub-pc/install_devices multiselect\n"
    "grub-pc grub-pc/install_devices_empty boolean true\n"
)

UPDATE_INITRAMFS = "/usr/sbin/update-initramfs"
UPDATE_INITRAMFS_REAL = f"{UPDATE_INITRAMFS}.imgsmith"

INITRAMFS_STUB = """\
#!/bin/sh
# imgsmith bootstrap: update-initramfs is deferred while the packages are installed (the
# real one is diverted to update-initramfs.imgsmith) and run once afterwards. Not in the image.
exit 0
"""

GRUB_DROPIN = """\
# Written by imgsmith bootstrap: a serial console for cloud consoles and boot tests.
# console=ttyS0 comes last so it is /dev/console (where cloud-init writes its messages).
GRUB_TIMEOUT=1
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200 --unit=0 --word=8 --parity=no --stop=1"
GRUB_DISABLE_OS_PROBER=true
"""

# arm64 (qemu's virt machine, Graviton, Ampere): the PL011 UART is ttyAMA0, and the UEFI
# console already is that serial port, so GRUB uses the firmware's console only.
GRUB_DROPIN_ARM64 = """\
# Written by imgsmith bootstrap: a serial console for cloud consoles and boot tests.
# console=ttyAMA0 comes last so it is /dev/console (where cloud-init writes its messages).
GRUB_TIMEOUT=1
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyAMA0,115200n8"
GRUB_TERMINAL=console
GRUB_DISABLE_OS_PROBER=true
"""

CLOUD_CFG = """\
# Written by imgsmith bootstrap.
# manage_etc_hosts: the instance's hostname resolves, so sudo does not stall or warn.
manage_etc_hosts: true
# C.UTF-8 needs no locale generation (the image carries no 'locales' package).
locale: C.UTF-8
"""

HOSTS = """\
127.0.0.1\tlocalhost
::1\t\tlocalhost ip6-localhost ip6-loopback
ff02::1\t\tip6-allnodes
ff02::2\t\tip6-allrouters
"""


def _write(root: Path, guest_path: str, text: str, mode: int = 0o644) -> None:
    target = root / guest_path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    target.chmod(mode)


def configure_tree(root: Path, *, fs_uuid: str, esp_id: str | None = None, arch: str = "amd64") -> None:
    """fstab by UUID, hostname, hosts, locale, GRUB's serial console and cloud-init settings.

    *esp_id* is the ESP's FAT volume id (``ABCD1234``) when the disk has one: mounted on
    /boot/efi like Debian's cloud images (``nofail``: a kernel without vfat still boots).
    """
    esp = (f"UUID={esp_id[:4]}-{esp_id[4:]}\t/boot/efi\tvfat\tumask=0077,nofail\t0\t1\n" if esp_id else "")
    _write(root, "/etc/fstab",
           "# <file system> <mount point> <type> <options> <dump> <pass>\n"
           f"UUID={fs_uuid}\t/\text4\trw,discard,errors=remount-ro\t0\t1\n" + esp)
    if esp_id:
        (root / "boot/efi").mkdir(parents=True, exist_ok=True)
    _write(root, "/etc/hostname", "localhost\n")
    _write(root, "/etc/hosts", HOSTS)
    _write(root, "/etc/default/locale", "LANG=C.UTF-8\n")
    _write(root, "/etc/default/grub.d/10-imgsmith.cfg", GRUB_DROPIN_ARM64 if arch == "arm64" else GRUB_DROPIN)
    _write(root, "/etc/cloud/cloud.cfg.d/90-imgsmith.cfg", CLOUD_CFG)


def defer_initramfs_hooks(stub: Path) -> list[str]:
    """mmdebstrap ``--essential-hook`` commands that turn update-initramfs into *stub* for the install.

    The kernel's postinst (``/etc/kernel/postinst.d/initramfs-tools``) builds the initramfs,
    then initramfs-tools' trigger, activated by every later package with an initramfs hook,
    builds it again: two runs of mkinitramfs, each minutes of CPU under qemu-user for arm64.
    A ``dpkg-divert --rename`` before initramfs-tools is unpacked makes dpkg install the real
    program under another name, so both calls reach the no-op stub. Essential hooks run after
    the essential packages (dpkg is there) and before the ``--include`` set.
    """
    return [
        f'chroot "$1" dpkg-divert --quiet --local --rename --divert {UPDATE_INITRAMFS_REAL} --add {UPDATE_INITRAMFS}',
        f'install -m 0755 {shlex.quote(str(stub))} "$1{UPDATE_INITRAMFS}"',
    ]


def build_initramfs(root: Path) -> None:
    """Undo :func:`defer_initramfs_hooks` and build the initramfs of each installed kernel, once.

    Runs after every package is installed, so the initramfs holds every package's hooks
    (what the trigger's last run would have made), and after /etc/fstab is written, so
    initramfs-tools' fsck hook adds e2fsck for the root filesystem as on an installed
    system (built during the install it had no fstab to read). The diversion and the stub are removed
    first: the image's update-initramfs is the package's own, and a later kernel or
    package upgrade in the guest rebuilds the initramfs as usual.
    """
    stub, real = root / UPDATE_INITRAMFS.lstrip("/"), root / UPDATE_INITRAMFS_REAL.lstrip("/")
    is_stub = stub.is_file() and stub.read_text(encoding="utf-8") == INITRAMFS_STUB
    if is_stub:
        stub.unlink()
        if not real.is_file():
            raise ImgsmithError("initramfs-tools is not installed: the image would have no initramfs")
    else:  # the package put its program at another path (an unmerged /sbin): it ran during the install
        log.warning("update-initramfs was not deferred (%s missing); the install built the initramfs", real)
    proc.run(["chroot", root, "dpkg-divert", "--quiet", "--local", *(["--rename"] if is_stub else []),
              "--remove", UPDATE_INITRAMFS])
    if not is_stub:
        return
    modules = root / "usr/lib/modules"
    versions = sorted(p.name for p in modules.iterdir() if (root / f"boot/vmlinuz-{p.name}").exists())
    if not versions:
        raise ImgsmithError("no kernel in /boot to make an initramfs for", hint="was the kernel package installed?")
    for version in versions:
        # -c: the stub made none (a later `update-initramfs -u` in the guest finds this one)
        proc.run(["chroot", root, UPDATE_INITRAMFS, "-c", "-k", version])
        if not (root / f"boot/initrd.img-{version}").is_file():
            raise ImgsmithError(f"update-initramfs -c -k {version} left no /boot/initrd.img-{version}")
    # The fsck hook's blkid cache: /run is a tmpfs in the guest, the image keeps it empty.
    shutil.rmtree(root / "run/blkid", ignore_errors=True)


def install_grub(root: Path, *, loop: str | None, root_node: Path, fs_uuid: str) -> None:
    """Install GRUB for BIOS boot on the loop device (None: UEFI only) and write grub.cfg with ``root=UUID=``.

    Without udev in the build there is no /dev/disk/by-uuid, so grub-mkconfig falls
    back to the device it sees (``root=/dev/loopNp1``), which does not exist in the
    guest; that one token is replaced and the result verified.
    """
    if loop is not None:
        proc.run(["chroot", root, "grub-install", "--target=i386-pc", "--no-floppy", loop])
    proc.run(["chroot", root, "grub-mkconfig", "-o", "/boot/grub/grub.cfg"])
    cfg = root / "boot/grub/grub.cfg"
    text = cfg.read_text(encoding="utf-8")
    fixed, count = re.subn(rf"root={re.escape(str(root_node))}(?=\s)", f"root=UUID={fs_uuid}", text)
    kernel_lines = [ln for ln in fixed.splitlines() if ln.strip().startswith("linux")]
    if not kernel_lines or any(f"root=UUID={fs_uuid}" not in ln for ln in kernel_lines):
        raise ImgsmithError("grub.cfg has no kernel line with root=UUID= after grub-mkconfig",
                            hint=f"check {cfg} in the build tree; was the kernel package installed?")
    cfg.write_text(fixed, encoding="utf-8")
    log.debug("grub.cfg: %d root= tokens rewritten to UUID=%s", count, fs_uuid)


def remove_instance_identity(root: Path) -> None:
    """Every instance must get its own SSH host keys and machine-id on first boot.

    cloud-init regenerates host keys; systemd creates a machine-id when the file is
    empty (an absent file would make systemd treat the boot as "first boot" differently).
    """
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("", encoding="utf-8")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.is_file() or dbus_id.is_symlink():
        dbus_id.unlink()
    for leftover in ("var/cache/apt/pkgcache.bin", "var/cache/apt/srcpkgcache.bin"):
        (root / leftover).unlink(missing_ok=True)


def remove_build_leftovers(root: Path) -> None:
    """Undo what the build needed but the image must not keep.

    mmdebstrap leaves its --aptopt/--dpkgopt files behind (``force-unsafe-io`` must
    not outlive the build; Recommends are off only for the build) and the host's
    resolv.conf (the guest's DHCP client writes its own; the host's resolver is not
    the guest's business).
    """
    for leftover in ("etc/apt/apt.conf.d/99mmdebstrap", "etc/dpkg/dpkg.cfg.d/99mmdebstrap", "etc/resolv.conf"):
        path = root / leftover
        if path.is_file() or path.is_symlink():
            path.unlink()
