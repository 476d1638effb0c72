"""A bootable cloud-style disk image made from distribution packages, cached by its inputs.

The recipe, in order (each step below is one function):

1. choose the mirror (the host's apt sources unless given) and read the ``Date:``
   of each suite's Release file: together with the spec and the builder version
   this is the cache key, so an unchanged archive gives a cache hit;
2. partition a sparse raw disk (MBR with root at 1 MiB, or GPT with a BIOS boot
   partition), attach it with ``losetup`` + ``partx -a`` and make ext4 with its
   inode tables initialised (no lazy init: a small, stable image);
3. ``mmdebstrap`` the release with a kernel, GRUB, cloud-init and openssh straight
   into the mounted filesystem;
4. write fstab by UUID, the serial console, cloud-init settings; ``grub-install``
   to the loop device with ``root=UUID=`` on the kernel line;
5. remove per-instance identity, ``sync``, ``fstrim``, tear everything down and
   ``qemu-img convert`` to qcow2 under a temporary name, renamed into the cache
   when complete (a killed build leaves no entry; the next one reaps its mounts).

Builds of one key are serialised with ``flock``; different keys build in parallel.
Root is required (loop devices, mounts, chroot).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from .. import __version__, proc
from ..disk.sizes import MiB, parse_size
from ..errors import UsageError
from ..host.binfmt import binfmt_problem, host_arch
from ..host.files import atomic_write, file_lock, fsync_dir, fsync_file
from ..paths import cache_root
from . import bootloader, partition, rootfs
from . import mirror as mirror_mod
from .partition import Partitioning

__all__ = [
    "ARCHES",
    "BUILDER_VERSION",
    "BootstrapSpec",
    "DistroProfile",
    "Sources",
    "boot_packages",
    "bootstrap_image",
    "cache_key",
    "image_name",
    "mmdebstrap_argv",
    "planned_name",
    "profile_for",
    "resolve_sources",
]

log = logging.getLogger("imgsmith.source")

# Bump the revision whenever the recipe changes what ends up in the image.
# bootstrap.3: update-initramfs deferred during the install and run once at the end.
BUILDER_VERSION = f"{__version__}+bootstrap.3"

Progress = Callable[[str], None]

ARCHES = ("amd64", "arm64")
FIRMWARES = ("bios", "uefi", "hybrid")

EL_DISTROS = frozenset({"centos", "rocky", "almalinux", "alma", "rhel", "fedora", "oraclelinux", "el"})


def _size(value: object) -> object:
    """Sizes are written like qemu-img's (``3G``, ``512M``) or given as a byte count."""
    if isinstance(value, str):
        try:
            spec = parse_size(value)
        except UsageError as exc:
            raise ValueError(exc.message) from exc
        if spec.relative:
            raise ValueError("a bootstrap size is absolute; '+N' only makes sense when growing a disk")
        return spec.amount
    return value


class BootstrapSpec(BaseModel):
    """What to bootstrap. Every field takes part in the cache key (with the mirror's snapshot date)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    distro: str = Field("debian", pattern=r"^[a-z][a-z0-9]*$", description="debian or ubuntu")
    release: str = Field("bookworm", pattern=r"^[a-z][a-z0-9.-]*$", description="codename: bookworm, jammy, ...")
    packages: tuple[str, ...] = Field((), description="extra packages on top of the cloud base set")
    mirror: str | None = Field(None, description="archive URL; default: the host's apt source for the distro")
    security_mirror: str | None = Field(None, description="security archive URL; default: host's, else official")
    size: Annotated[int, BeforeValidator(_size)] = Field(3 << 30, ge=512 * MiB, description="virtual disk size")
    partitioning: Partitioning | None = Field(
        None, description="a BIOS layout: mbr (one root partition at 1 MiB) or gpt (BIOS boot partition + "
                          "root); given without a firmware it means firmware bios")
    variant: Literal["minbase", "apt"] = "minbase"
    arch: str = Field("amd64", description="amd64 or arm64 (arm64 is built on amd64 through qemu-user/binfmt)")
    firmware: Literal["bios", "uefi", "hybrid"] | None = Field(
        None, description="bios (MBR, or GPT with a BIOS boot partition), uefi (GPT + ESP) or hybrid (GPT with "
                          "both, boots either way); default: hybrid on amd64 (bios when partitioning is "
                          "given), uefi on arm64")
    secure_boot: bool = Field(False, alias="secure-boot",
                              description="Debian's signed shim, GRUB and kernel on the ESP (amd64, uefi or hybrid)")

    @field_validator("arch")
    @classmethod
    def _arch(cls, value: str) -> str:
        if value not in ARCHES:
            raise ValueError(f"unsupported architecture {value!r} (supported: {', '.join(ARCHES)})")
        return value

    @model_validator(mode="after")
    def _boot_mode(self) -> BootstrapSpec:
        fw = self.boot_firmware
        if self.arch == "arm64" and fw != "uefi":
            raise ValueError(f"arm64 boots with UEFI only: firmware {fw!r} is not possible (use uefi)")
        if self.secure_boot and fw == "bios":
            raise ValueError("secure-boot: true needs firmware uefi or hybrid (BIOS has no Secure Boot)")
        if self.secure_boot and self.arch != "amd64":
            raise ValueError(f"secure-boot is supported on amd64 only, not {self.arch}")
        if fw != "bios" and self.partitioning is Partitioning.MBR:
            raise ValueError(f"firmware {fw} needs a GPT disk: drop 'partitioning: mbr'")
        return self

    @property
    def boot_firmware(self) -> str:
        """The firmware the image boots with: as given; else uefi on arm64, and on amd64 hybrid.

        amd64's default is hybrid like Debian's cloud images (docs/decisions.md); a spec that
        names ``partitioning`` (a choice among BIOS layouts, the only ones before hybrid
        existed) without a firmware keeps meaning what it did: bios.
        """
        if self.firmware is not None:
            return self.firmware
        if self.arch == "arm64":
            return "uefi"
        return "hybrid" if self.partitioning is None else "bios"

    def describe(self) -> str:
        """``debian bookworm``, plus the architecture and firmware when not the default (amd64 hybrid)."""
        extra = "" if (self.arch, self.boot_firmware, self.secure_boot) == ("amd64", "hybrid", False) else (
            f" {self.arch} {self.boot_firmware}" + (" secure-boot" if self.secure_boot else ""))
        return f"{self.distro} {self.release}{extra}"

    @property
    def table(self) -> Partitioning:
        """The partitioning as the recipe had it before it became optional (the cache key's value): mbr unless gpt."""
        return self.partitioning or Partitioning.MBR

    @property
    def layout(self) -> partition.Layout:
        return partition.layout_for(self.table, self.boot_firmware)

    @field_validator("packages")
    @classmethod
    def _package_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [p for p in value if not re.fullmatch(r"[a-z0-9][a-z0-9+.\-]+(:[a-z0-9]+)?(=[A-Za-z0-9.+~:\-]+)?", p)]
        if bad:
            raise ValueError(f"not a package name: {', '.join(bad)}")
        return value

    @field_validator("mirror", "security_mirror")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://", "file:/")):
            raise ValueError("a mirror is an http://, https:// or file:/ URL")
        return value.rstrip("/") if value else value


@dataclass(frozen=True)
class DistroProfile:
    """How one distribution family is bootstrapped: where from, with which keys, which base packages."""

    name: str
    default_mirror: str
    default_security_mirror: str
    keyring: str | None
    keyring_package: str
    components: tuple[str, ...]
    packages: tuple[str, ...]
    kernel: str
    """The kernel package, ``{arch}`` replaced by the Debian architecture."""
    security_suffix: str = "-security"

    def suites(self, release: str) -> tuple[str, ...]:
        """The release and its update pockets; unstable has none."""
        if release in ("sid", "unstable"):
            return (release,)
        return (release, f"{release}-updates", f"{release}{self.security_suffix}")


_CLOUD_BASE = ("cloud-init", "openssh-server", "sudo", "systemd-sysv", "udev", "dbus",
               "e2fsprogs", "iproute2", "netbase", "cloud-guest-utils", "initramfs-tools")

PROFILES: dict[str, DistroProfile] = {
    "debian": DistroProfile(
        name="debian",
        default_mirror="http://deb.debian.org/debian",
        default_security_mirror="http://deb.debian.org/debian-security",
        keyring=None,  # mmdebstrap finds debian-archive-keyring itself
        keyring_package="debian-archive-keyring",
        components=("main",),
        # ifupdown + a DHCP client: cloud-init renders Debian's network config for ifupdown
        packages=(*_CLOUD_BASE, "ifupdown", "isc-dhcp-client"),
        kernel="linux-image-cloud-{arch}",
    ),
    "ubuntu": DistroProfile(
        name="ubuntu",
        default_mirror="http://archive.ubuntu.com/ubuntu",
        default_security_mirror="http://archive.ubuntu.com/ubuntu",
        keyring="/usr/share/keyrings/ubuntu-archive-keyring.gpg",
        keyring_package="ubuntu-keyring",
        components=("main", "universe"),
        packages=(*_CLOUD_BASE, "netplan.io"),
        kernel="linux-image-virtual",
    ),
}


def boot_packages(spec: BootstrapSpec) -> tuple[str, ...]:
    """The boot loader packages for the image's firmware.

    grub-pc and grub-efi-amd64 conflict (each owns GRUB's configuration), so a hybrid image
    takes grub-efi-amd64 and only the BIOS binaries (grub-pc-bin), as Debian's cloud images do.
    """
    fw = spec.boot_firmware
    if spec.arch == "arm64":
        return ("grub-efi-arm64",)
    if fw == "bios":
        return ("grub-pc",)
    loaders = ("grub-efi-amd64", "grub-pc-bin") if fw == "hybrid" else ("grub-efi-amd64",)
    return (*loaders, "shim-signed", "grub-efi-amd64-signed") if spec.secure_boot else loaders


def profile_for(spec: BootstrapSpec) -> DistroProfile:
    """The profile for ``spec.distro``; a UsageError that says what is missing otherwise."""
    if spec.distro in EL_DISTROS:
        raise UsageError(
            f"bootstrapping {spec.distro} from packages needs a dnf repository mirror, which is not configured",
            hint="an EL bootstrap (dnf --installroot) needs: dnf on the host, a reachable BaseOS/AppStream "
                 "mirror and its GPG key; meanwhile use a vendor cloud image as a url source (docs/boot.md)",
        )
    profile = PROFILES.get(spec.distro)
    if profile is None:
        raise UsageError(f"unknown distro {spec.distro!r} for a bootstrap (supported: {', '.join(PROFILES)})")
    return profile


@dataclass(frozen=True)
class Sources:
    """The resolved apt sources of a build and each suite's snapshot date (part of the cache key)."""

    archive: str
    security: str
    components: tuple[str, ...]
    suites: tuple[tuple[str, str, str], ...]  # (mirror, suite, Release Date)

    def apt_lines(self) -> list[str]:
        comps = " ".join(self.components)
        return [f"deb {m} {suite} {comps}" for m, suite, _ in self.suites]


def resolve_sources(spec: BootstrapSpec, profile: DistroProfile, *,
                    host: Callable[[str], mirror_mod.HostMirrors] = mirror_mod.detect_host_mirrors,
                    date_of: Callable[[str, str], str] = mirror_mod.release_date) -> Sources:
    """Pick the mirrors (spec, else the host's apt sources, else the distro's) and date each suite."""
    found = host(profile.name) if spec.mirror is None or spec.security_mirror is None else mirror_mod.HostMirrors()
    archive = spec.mirror or found.archive or profile.default_mirror
    security = spec.security_mirror or found.security or (
        archive if profile.default_security_mirror == profile.default_mirror else profile.default_security_mirror)
    suites = []
    for suite in profile.suites(spec.release):
        base = security if suite.endswith(profile.security_suffix) else archive
        suites.append((base, suite, date_of(base, suite)))
    return Sources(archive, security, profile.components, tuple(suites))


def cache_key(spec: BootstrapSpec, sources: Sources, builder: str = BUILDER_VERSION) -> str:
    """Hash of everything that decides the image's content; stable across runs and package order."""
    canonical: dict[str, Any] = {
        "builder": builder,
        "distro": spec.distro,
        "release": spec.release,
        "packages": sorted(set(spec.packages)),
        "partitioning": spec.table.value,
        "size": spec.size,
        "variant": spec.variant,
        "sources": [list(s) for s in sources.suites],
        "components": list(sources.components),
    }
    # Added with arm64/UEFI: present only when not amd64/bios/no Secure Boot (the only recipe
    # before them), so a spec pinned to `firmware: bios` keys exactly as that recipe did.
    if (spec.arch, spec.boot_firmware, spec.secure_boot) != ("amd64", "bios", False):
        canonical.update(arch=spec.arch, firmware=spec.boot_firmware, secure_boot=spec.secure_boot)
    blob = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def image_name(spec: BootstrapSpec, key: str) -> str:
    """Cache file stem: readable prefix, then enough of the key to be unique."""
    if (spec.arch, spec.boot_firmware, spec.secure_boot) == ("amd64", "bios", False):
        return f"{spec.distro}-{spec.release}-{spec.table.value}-{key[:16]}"
    boot = "secureboot" if spec.secure_boot else spec.boot_firmware
    return f"{spec.distro}-{spec.release}-{spec.arch}-{boot}-{key[:16]}"


def mmdebstrap_argv(spec: BootstrapSpec, profile: DistroProfile, sources: Sources, target: Path,
                    preseed: Path, *, initramfs_stub: Path) -> list[str]:
    """The mmdebstrap command: no Recommends (a lean, predictable package set), unsafe-io (we sync once).

    update-initramfs is diverted to *initramfs_stub* before the packages are installed
    (:func:`rootfs.defer_initramfs_hooks`): the kernel's postinst and initramfs-tools'
    trigger would otherwise build the initramfs twice, each minutes long under qemu-user;
    :func:`rootfs.build_initramfs` restores it and builds it once.
    """
    kernel = profile.kernel.format(arch=spec.arch)
    packages = list(dict.fromkeys([kernel, *boot_packages(spec), *profile.packages, *spec.packages]))
    argv = [
        "mmdebstrap", f"--variant={spec.variant}", "--mode=root", "--format=directory",
        f"--components={','.join(sources.components)}",
        '--aptopt=APT::Install-Recommends "false"', "--dpkgopt=force-unsafe-io",
        f"--include={','.join(packages)}",
        f'--essential-hook=chroot "$1" debconf-set-selections < {shlex.quote(os.fspath(preseed))}',
        *(f"--essential-hook={hook}" for hook in rootfs.defer_initramfs_hooks(initramfs_stub)),
    ]
    if spec.arch != host_arch():
        argv.append(f"--architectures={spec.arch}")  # its programs run under qemu-user (binfmt_misc)
    if profile.keyring:
        argv.append(f"--keyring={profile.keyring}")
    return [*argv, spec.release, os.fspath(target), *sources.apt_lines()]


def _check_host(profile: DistroProfile, spec: BootstrapSpec) -> None:
    """Fail before any work when this host cannot build: not root, tools or keyring missing."""
    if os.geteuid() != 0:
        raise UsageError("bootstrap needs root (loop devices, mounts and chroot)", hint="run it with sudo")
    tools = {"mmdebstrap": "mmdebstrap", "sfdisk": "fdisk", "losetup": "mount", "partx": "util-linux",
             "mkfs.ext4": "e2fsprogs", "fstrim": "util-linux", "qemu-img": "qemu-utils"}
    if spec.boot_firmware != "bios":
        tools |= {"mkfs.fat": "dosfstools", "mcopy": "mtools"}
    missing = sorted({pkg for tool, pkg in tools.items() if shutil.which(tool) is None})
    if missing:
        raise UsageError(f"bootstrap needs host tools that are missing: {', '.join(missing)}",
                         hint=f"apt-get install {' '.join(missing)}")
    problem = binfmt_problem(spec.arch)
    if problem is not None:
        raise UsageError(f"bootstrapping {spec.arch} on this {host_arch()} host needs qemu-user: {problem}",
                         hint="scripts/setup.sh installs qemu-user-static and binfmt-support")
    if profile.keyring and not Path(profile.keyring).exists():
        raise UsageError(f"{profile.keyring}: archive keyring for {profile.name} not found",
                         hint=f"apt-get install {profile.keyring_package}")


MMDEBSTRAP_GRACE = 60.0
"""Seconds an interrupted mmdebstrap gets for its own cleanup (it unmounts what it mounted)."""


def _run_mmdebstrap(argv: list[str], progress: Progress) -> None:
    """Stream mmdebstrap's "I:" lines to *progress*; a failure carries the last lines of its output."""
    with proc.spawn(argv, merge_stderr=True, grace=MMDEBSTRAP_GRACE) as p:
        assert p.stdout is not None
        for raw in p.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            p.tail.append(line)
            log.debug("mmdebstrap: %s", line)
            if line.startswith(("I: ", "E: ", "W: ")):
                progress(f"mmdebstrap: {line[3:]}")
        p.wait()


def _build(spec: BootstrapSpec, profile: DistroProfile, sources: Sources, work: Path, progress: Progress) -> Path:
    """Steps 2-5 of the module docstring inside *work*; returns the finished qcow2 in *work*."""
    layout = spec.layout
    raw, root, preseed, stub = work / "disk.raw", work / "root", work / "debconf.preseed", work / "initramfs-stub"
    preseed.write_text(rootfs.DEBCONF_PRESEED, encoding="utf-8")
    stub.write_text(rootfs.INITRAMFS_STUB, encoding="utf-8")
    with raw.open("wb") as f:
        f.truncate(spec.size)
    proc.run(["sfdisk", "--quiet", "--wipe", "always", raw], input=partition.sfdisk_script(layout).encode())
    fs_uuid = str(uuid.uuid4())
    esp_id = bootloader.volume_id(fs_uuid) if layout.esp is not None else None
    with partition.attach(raw, layout.root_partition) as (loop, node):
        progress(f"making ext4 on {node}")
        proc.run(["mkfs.ext4", "-q", "-F", "-L", "root", "-U", fs_uuid,
                  "-E", "lazy_itable_init=0,lazy_journal_init=0", node])
        with partition.mount(node, root):
            progress(f"installing {spec.distro} {spec.release} {spec.arch} with mmdebstrap")
            _run_mmdebstrap(mmdebstrap_argv(spec, profile, sources, root, preseed, initramfs_stub=stub), progress)
            progress(f"configuring: fstab, serial console, cloud-init, GRUB ({spec.boot_firmware})")
            rootfs.configure_tree(root, fs_uuid=fs_uuid, esp_id=esp_id, arch=spec.arch)
            with partition.bind_mounts(root):
                progress("making the initramfs (once, now that every package is installed)")
                started = time.monotonic()
                rootfs.build_initramfs(root)
                log.info("initramfs built in %.1f s", time.monotonic() - started)
                bios_loop = loop if spec.boot_firmware != "uefi" else None
                rootfs.install_grub(root, loop=bios_loop, root_node=node, fs_uuid=fs_uuid)
                if esp_id is not None:
                    bootloader.esp_tree(root, work / "esp", arch=spec.arch, fs_uuid=fs_uuid,
                                        secure_boot=spec.secure_boot)
            rootfs.remove_instance_identity(root)
            rootfs.remove_build_leftovers(root)
            progress("trimming the filesystem")
            proc.run(["sync", "-f", root])
            proc.run(["fstrim", root])
    if esp_id is not None:
        progress("writing the EFI system partition (mkfs.fat + mcopy, not mounted)")
        bootloader.build_esp_image(work / "esp", work / "esp.img", size_bytes=partition.ESP_SECTORS * 512,
                                   volid=esp_id)
        partition.write_at(raw, layout.esp_offset, work / "esp.img")
    progress("converting to qcow2")
    out = work / "disk.qcow2"
    proc.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, out])
    return out


def _publish(built: Path, dest: Path, metadata: dict[str, Any]) -> None:
    """Metadata first, image last: the image's presence is what marks a complete entry."""
    meta = dest.with_suffix(".json")
    atomic_write(meta, json.dumps(metadata, indent=2, sort_keys=True))
    fsync_file(built)
    built.replace(dest)
    fsync_dir(dest.parent)


def planned_name(spec: BootstrapSpec) -> str:
    """The cache name :func:`bootstrap_image` gives *spec*'s image, without building it (a build's plan keys on it).

    The recipe key includes each suite's snapshot date, read from the head of the
    mirror's Release file (a few KB); nothing is downloaded or built.
    """
    return image_name(spec, cache_key(spec, resolve_sources(spec, profile_for(spec))))


def _metadata(spec: BootstrapSpec, key: str, sources: Sources, **more: Any) -> dict[str, Any]:
    return {"key": key, "builder": BUILDER_VERSION, "spec": spec.model_dump(mode="json"),
            "sources": [{"mirror": m, "suite": s, "date": d} for m, s, d in sources.suites],
            "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **more}


def _adopt(store: Path, name: str, fill: Callable[[Path], bool], metadata: dict[str, Any]) -> bool:
    """The image made elsewhere (a remote cache: *fill* writes it, checked) published as *name*; False if not."""
    dest = store / f"{name}.qcow2"
    with file_lock(store / f".{name}.lock"):
        if dest.exists():
            return True
        part = store / f".{name}.pull-{os.getpid()}"
        try:
            if not fill(part):
                return False
            _publish(part, dest, metadata)
        finally:
            part.unlink(missing_ok=True)
    return True


def bootstrap_image(spec: BootstrapSpec, *, cache_dir: Path | None = None,
                    progress: Progress | None = None, fill: Callable[[Path], bool] | None = None,
                    sources_for: Callable[[BootstrapSpec, DistroProfile], Sources] = resolve_sources) -> Path:
    """Return a cached qcow2 of a bootable cloud image built from *spec*, building it if needed.

    *fill* (a build farm's remote cache, sharing.py) is asked first when the image is
    not here: it writes the image made by another host from the same recipe key.
    *sources_for* resolves the mirrors and their snapshot dates (tests pass fixed ones).
    """
    say: Progress = progress or (lambda _msg: None)
    profile = profile_for(spec)
    say("checking the mirror's snapshot date")
    sources = sources_for(spec, profile)
    key = cache_key(spec, sources)
    store = (cache_dir or cache_root()) / "bootstrap"
    store.mkdir(parents=True, exist_ok=True)
    name = image_name(spec, key)
    dest = store / f"{name}.qcow2"
    if dest.exists():
        say(f"cached: {dest}")
        return dest
    if fill is not None and _adopt(store, name, fill, _metadata(spec, key, sources, pulled=True)):
        say(f"pulled from the remote cache: {dest}")
        return dest
    _check_host(profile, spec)  # only a build needs root and the tools; a cached image does not
    waiting = "waiting for another build of the same image to finish"
    with file_lock(store / f".{name}.lock", on_wait=lambda: say(waiting)):
        if dest.exists():
            say(f"built meanwhile by another process: {dest}")
            return dest
        for stale in store.glob(f".{name}.build-*"):
            partition.reap(stale)
        work = store / f".{name}.build-{os.getpid()}"
        work.mkdir()
        start = time.monotonic()
        try:
            built = _build(spec, profile, sources, work, say)
            _publish(built, dest, _metadata(spec, key, sources, build_seconds=round(time.monotonic() - start, 1)))
        finally:
            partition.reap(work, quiet=True)
    say(f"built in {time.monotonic() - start:.0f} s: {dest}")
    return dest
