"""Boot loaders of a bootstrapped image: GRUB for BIOS, GRUB (or shim + signed GRUB) for UEFI, and the ESP.

BIOS: ``grub-install --target=i386-pc`` on the loop device, as before.

UEFI: ``grub-install`` refuses an EFI directory that is not a mounted FAT filesystem, and
this host's kernel has no vfat, so the ESP is assembled as a plain directory tree and
turned into a FAT image by ``mkfs.fat`` + ``mcopy`` (never mounted), which
:func:`imgsmith.source.partition.write_at` then writes into the ESP partition. The
tree is what ``grub-install --removable --no-nvram`` would write: the fallback path
``EFI/BOOT/BOOT{X64,AA64}.EFI`` every UEFI firmware boots without NVRAM entries (a
cloud instance starts with empty NVRAM), holding a GRUB core made by ``grub-mkimage``
with a small embedded config that finds the root filesystem by UUID and loads
``/boot/grub/grub.cfg`` from it; the modules go to ``/boot/grub/<target>/`` as
grub-install puts them.

Secure Boot: Debian's Microsoft-signed shim as ``BOOTX64.EFI``, Debian's signed GRUB
as ``grubx64.efi`` beside it (shim loads it from its own directory), and the same
root-finding config as ``EFI/debian/grub.cfg``, where the signed GRUB's built-in
prefix points. No ``fbx64.efi``: shim's fallback would write NVRAM entries and reset
the machine on first boot.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import proc
from ..errors import ImgsmithError

__all__ = ["EfiTarget", "build_esp_image", "efi_target", "esp_tree", "install_bios", "volume_id"]

log = logging.getLogger("imgsmith.source")


@dataclass(frozen=True)
class EfiTarget:
    """GRUB's platform name and the removable-media file name UEFI looks for, per architecture."""

    grub: str
    removable: str
    shim_arch: str


_TARGETS = {
    "amd64": EfiTarget("x86_64-efi", "BOOTX64.EFI", "x64"),
    "arm64": EfiTarget("arm64-efi", "BOOTAA64.EFI", "aa64"),
}

# What the core image needs before it can read /boot/grub/grub.cfg; the rest load from
# /boot/grub/<target>/ (grub.cfg's own insmod lines). Missing ones are skipped per target.
_CORE_MODULES = ("part_gpt", "part_msdos", "fat", "ext2", "search", "search_fs_uuid", "normal", "configfile",
                 "linux", "boot", "echo", "test", "gzio", "efi_gop", "all_video", "serial", "terminal",
                 "efinet", "reboot", "halt")


def efi_target(arch: str) -> EfiTarget:
    return _TARGETS[arch]


def volume_id(fs_uuid: str) -> str:
    """A FAT volume id (8 hex digits) derived from the root UUID: stable per build, distinct per build."""
    return fs_uuid.replace("-", "")[:8].upper()


def install_bios(root: Path, loop: str) -> None:
    """GRUB's core image into the MBR gap or the BIOS boot partition of the loop device."""
    proc.run(["chroot", root, "grub-install", "--target=i386-pc", "--no-floppy", loop])


def _early_config(fs_uuid: str, *, chain: bool) -> str:
    """Point GRUB at the root filesystem's /boot/grub.

    In a core image (``chain=False``) setting the prefix is enough: GRUB then starts normal
    mode there, reading the module lists (command.lst: ``load_env`` and friends) and grub.cfg
    from it. The signed GRUB sources this file from its built-in config instead, so it must
    load grub.cfg itself (``chain=True``), as Debian's grub-install writes it.
    """
    text = f"search --no-floppy --fs-uuid --set=root {fs_uuid}\nset prefix=($root)/boot/grub\n"
    return text + "configfile $prefix/grub.cfg\n" if chain else text


def _copy_modules(root: Path, grub_target: str) -> None:
    """/usr/lib/grub/<target> -> /boot/grub/<target>, as grub-install does (grub.cfg's insmod reads there)."""
    src = root / "usr/lib/grub" / grub_target
    dest = root / "boot/grub" / grub_target
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix in (".mod", ".lst"):
            shutil.copy2(f, dest / f.name)


def _grub_image(root: Path, target: EfiTarget, fs_uuid: str, out_in_root: str) -> None:
    """``grub-mkimage`` in the chroot (the guest's own GRUB, under qemu-user for a foreign arch)."""
    lib = root / "usr/lib/grub" / target.grub
    if not lib.is_dir():
        raise ImgsmithError(f"no GRUB for {target.grub} in the tree (/usr/lib/grub/{target.grub})",
                            hint=f"is grub-efi-{target.grub.split('-')[0]}-bin installed?")
    modules = [m for m in _CORE_MODULES if (lib / f"{m}.mod").exists()]
    (root / "tmp/imgsmith-early.cfg").write_text(_early_config(fs_uuid, chain=False), encoding="utf-8")
    proc.run(["chroot", root, "grub-mkimage", "-O", target.grub, "-o", out_in_root, "-p", "/boot/grub",
              "-c", "/tmp/imgsmith-early.cfg", *modules])
    (root / "tmp/imgsmith-early.cfg").unlink()


def esp_tree(root: Path, tree: Path, *, arch: str, fs_uuid: str, secure_boot: bool) -> None:
    """Write the ESP's files into *tree* (a host directory), using the boot loaders installed in *root*."""
    target = efi_target(arch)
    boot = tree / "EFI/BOOT"
    boot.mkdir(parents=True, exist_ok=True)
    _copy_modules(root, target.grub)
    if secure_boot:
        shim = root / f"usr/lib/shim/shim{target.shim_arch}.efi.signed"
        grub = root / f"usr/lib/grub/{target.grub}-signed/grub{target.shim_arch}.efi.signed"
        mok = root / f"usr/lib/shim/mm{target.shim_arch}.efi.signed"
        for needed in (shim, grub):
            if not needed.is_file():
                raise ImgsmithError(f"Secure Boot needs {needed.relative_to(root)} in the tree",
                                    hint="are shim-signed and grub-efi-amd64-signed installed?")
        shutil.copyfile(shim, boot / target.removable)
        shutil.copyfile(grub, boot / f"grub{target.shim_arch}.efi")
        if mok.is_file():
            shutil.copyfile(mok, boot / f"mm{target.shim_arch}.efi")
        vendor = tree / "EFI/debian"
        vendor.mkdir(parents=True, exist_ok=True)
        (vendor / "grub.cfg").write_text(_early_config(fs_uuid, chain=True), encoding="utf-8")
        return
    _grub_image(root, target, fs_uuid, f"/tmp/{target.removable}")
    shutil.move(root / "tmp" / target.removable, boot / target.removable)


def build_esp_image(tree: Path, image: Path, *, size_bytes: int, volid: str) -> None:
    """A FAT32 image of *tree*, made without mounting: mkfs.fat on a file, then mcopy the tree in."""
    image.unlink(missing_ok=True)
    proc.run(["mkfs.fat", "-F", "32", "-n", "EFI", "-i", volid, "-C", image, str(size_bytes // 1024)])
    env = {"MTOOLS_SKIP_CHECK": "1"}
    entries = sorted(tree.iterdir())
    if entries:
        proc.run(["mcopy", "-s", "-Q", "-i", image, *entries, "::/"], env=env)
    listing = proc.run(["mdir", "-/", "-b", "-i", image, "::/"], env=env).stdout
    log.debug("ESP contents:\n%s", listing)
