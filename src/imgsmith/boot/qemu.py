"""Starting, watching and stopping the boot test's qemu.

The machine is what a cloud gives: q35, virtio disks and network, a serial console,
no display. Both the disk overlay and the seed are virtio disks: cloud kernels such
as linux-image-cloud-amd64 carry no AHCI driver, so an IDE/SATA ``-cdrom`` seed
would go unseen. SSH is forwarded from 127.0.0.1 only: a throw-away guest with a
known test key must not be reachable from the network. QMP on a unix socket is
the way to ask for an ACPI power-off when SSH is not available.

The user network always runs with ``restrict=on``: the guest can open no
connection to the host or beyond, so no packet of a boot test leaves the machine.
What it can reach is what the test forwards: ``hostfwd`` (SSH in, from 127.0.0.1)
and ``guestfwd`` (a metadata address such as 169.254.169.254:80, answered inside
qemu by a process it spawns per connection; qemu only accepts a ``guestfwd``
address inside the user network, hence :class:`UserNetwork`'s ``net``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import proc
from .firmware import UefiFirmware

__all__ = ["GUEST_MAC", "QEMU_AARCH64", "GuestForward", "QemuConfig", "QemuProcess", "UserNetwork", "free_port",
           "machine_args", "netdev_arg", "qemu_argv", "qmp_command"]

log = logging.getLogger("imgsmith.boot")

QEMU = "qemu-system-x86_64"
QEMU_AARCH64 = "qemu-system-aarch64"
TCG_CPU = "Nehalem"
TCG_CPU_AARCH64 = "max,pauth-impdef=on"
"""``max`` with an implementation-defined pointer-authentication hash: the architected QARMA
hash is what makes ``-cpu max`` slow under TCG."""
GUEST_MAC = "52:54:00:12:34:56"
"""The NIC's MAC, fixed because datasources describe the NIC by it (network_data.json, EC2's ``macs/``)."""


@dataclass(frozen=True)
class GuestForward:
    """Guest connections to ``address:port`` run ``command`` (its stdin/stdout are the connection)."""

    address: str
    port: int
    command: str


@dataclass(frozen=True)
class UserNetwork:
    """qemu's user network; ``net=None`` is qemu's default 10.0.2.0/24 (host .2, DHCP from .15)."""

    net: str | None = None
    host: str | None = None
    dhcpstart: str | None = None
    guestfwd: tuple[GuestForward, ...] = ()


@dataclass(frozen=True)
class QemuConfig:
    """One boot-test machine. ``accel`` is ``kvm`` or ``tcg`` (from :func:`imgsmith.host.accel.detect`)."""

    disk: Path
    seed: Path | None
    """The NoCloud seed or config drive (a virtio disk); None when the datasource is a metadata service."""
    accel: str
    ssh_port: int
    serial_log: Path
    qmp_socket: Path
    disk_format: str = "qcow2"
    memory_mib: int = 2048
    cpus: int = 2
    binary: str = QEMU
    network: UserNetwork = UserNetwork()
    smbios: tuple[str, ...] = ()
    """``-smbios`` values (``type=1,manufacturer=...``): what the guest's DMI says the platform is."""
    arch: str = "x86_64"
    """qemu's name of the guest architecture: x86_64 (q35) or aarch64 (virt)."""
    uefi: UefiFirmware | None = None
    """UEFI firmware on pflash (None: SeaBIOS, x86_64 only); Secure Boot when the firmware enforces it."""
    uefi_vars: Path | None = None
    """This boot's own copy of the variable store (never the firmware's template)."""


def _opt(value: str | os.PathLike[str]) -> str:
    """qemu option values escape a literal comma by doubling it."""
    return os.fspath(value).replace(",", ",,")


def netdev_arg(cfg: QemuConfig) -> str:
    """``-netdev user,...``: always ``restrict=on``; SSH from 127.0.0.1; the datasource's forwards."""
    net = cfg.network
    parts = ["user", "id=net0", "restrict=on"]
    parts += [f"{name}={value}" for name, value in (("net", net.net), ("host", net.host),
                                                    ("dhcpstart", net.dhcpstart)) if value]
    parts.append(f"hostfwd=tcp:127.0.0.1:{cfg.ssh_port}-:22")
    parts += [f"guestfwd=tcp:{g.address}:{g.port}-cmd:{_opt(g.command)}" for g in net.guestfwd]
    return ",".join(parts)


def qemu_argv(cfg: QemuConfig) -> list[str]:
    """The full command line; tests assert on it, so it is built without side effects.

    KVM gets ``-cpu host`` (the probe proved it works). TCG gets ``Nehalem``, an
    x86-64-v2 model: guests that require v2 (EL 9) boot, and without AVX glibc does
    not pick code paths TCG emulates slowly (``-cpu max`` booted ~10% slower here).
    ``-no-reboot`` turns a guest reboot or panic-reboot into a qemu exit the test
    notices at once.
    """
    return [
        cfg.binary,
        "-name", "imgsmith-boot-test",
        *machine_args(cfg),
        "-m", str(cfg.memory_mib),
        "-smp", str(cfg.cpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-chardev", f"file,id=console,path={_opt(cfg.serial_log)}",
        "-serial", "chardev:console",
        "-chardev", f"socket,id=qmp,path={_opt(cfg.qmp_socket)},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-drive", f"file={_opt(cfg.disk)},format={cfg.disk_format},if=virtio,cache=unsafe,discard=unmap",
        *(["-drive", f"file={_opt(cfg.seed)},format=raw,if=virtio,readonly=on"] if cfg.seed else []),
        "-netdev", netdev_arg(cfg),
        "-device", f"virtio-net-pci,netdev=net0,mac={GUEST_MAC}",
        "-device", "virtio-rng-pci",
        *(arg for value in cfg.smbios for arg in ("-smbios", value)),
    ]


def machine_args(cfg: QemuConfig) -> list[str]:
    """Machine, CPU and firmware: q35 (SeaBIOS or OVMF) or virt (AAVMF); Secure Boot needs SMM.

    OVMF's Secure Boot build keeps its variable store safe from the OS only with SMM on and
    the pflash marked secure; without both it refuses to start.
    """
    if cfg.arch == "aarch64":
        machine, cpu = f"virt,accel={cfg.accel}", "host" if cfg.accel == "kvm" else TCG_CPU_AARCH64
    else:
        smm = ",smm=on" if cfg.uefi is not None and cfg.uefi.requires_smm else ""
        machine, cpu = f"q35{smm},accel={cfg.accel}", "host" if cfg.accel == "kvm" else TCG_CPU
    args = ["-machine", machine, "-cpu", cpu]
    if cfg.uefi is not None:
        if cfg.uefi_vars is None:
            raise ValueError("a UEFI boot needs its own copy of the variable store")
        if cfg.uefi.requires_smm:
            args += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
        args += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={_opt(cfg.uefi.code)}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={_opt(cfg.uefi_vars)}"]
    return args


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (qemu binds it a moment later; start() retries a clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _qmp_read(stream: Any) -> dict[str, Any]:
    """The next reply, skipping asynchronous events."""
    while True:
        line = stream.readline()
        if not line:
            raise ConnectionError("QMP connection closed")
        msg: dict[str, Any] = json.loads(line)
        if "event" not in msg:
            return msg


def qmp_command(socket_path: Path, command: str, timeout: float = 5.0) -> dict[str, Any]:
    """Run one QMP command (after the capabilities handshake) and return its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(os.fspath(socket_path))
        with s.makefile("rwb") as stream:
            _qmp_read(stream)  # greeting
            for name in ("qmp_capabilities", command):
                stream.write(json.dumps({"execute": name}).encode() + b"\n")
                stream.flush()
                reply = _qmp_read(stream)
        return reply


QEMU_GRACE = 3.0
"""Seconds qemu gets after QMP ``quit`` (and again after SIGTERM) before it is killed."""


class QemuProcess:
    """A running boot-test qemu whose output goes to a log file (for error messages).

    Made by :func:`running_qemu`, which owns its lifetime through :func:`imgsmith.proc.spawn`.
    """

    def __init__(self, cfg: QemuConfig, child: proc.Spawned) -> None:
        self.cfg = cfg
        self.argv = child.argv
        self._p = child
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self._p.pid

    def poll(self) -> int | None:
        return self._p.poll()

    def output_tail(self, lines: int = 5) -> str:
        """qemu's own messages (not the guest's console): why it refused to start or died."""
        return self._p.output_tail(lines).replace("\n", " | ")

    def exit_message(self) -> str:
        return self._p.failure().message

    def wait(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for qemu to exit; True when it did."""
        return self._p.wait(timeout)

    def powerdown(self) -> bool:
        """Ask the guest for an ACPI shutdown over QMP; False when qemu cannot be reached."""
        try:
            reply = qmp_command(self.cfg.qmp_socket, "system_powerdown")
        except (OSError, ValueError, ConnectionError) as exc:
            log.debug("QMP system_powerdown failed: %s", exc)
            return False
        return "return" in reply

    def kill(self) -> None:
        """Stop qemu for sure: QMP quit first (flushes cleanly), then the stop policy of proc."""
        if self._p.poll() is not None:
            return
        with contextlib.suppress(OSError, ValueError, ConnectionError):
            qmp_command(self.cfg.qmp_socket, "quit", timeout=2.0)
        if not self.wait(QEMU_GRACE):
            self._p.stop(QEMU_GRACE)

    def check_started(self, grace: float = 1.0) -> None:
        """Raise ProcessError if qemu exits within *grace* seconds (bad option, port taken, no KVM)."""
        if self.wait(grace):
            raise self._p.failure()


@contextlib.contextmanager
def running_qemu(cfg: QemuConfig, log_path: Path) -> Iterator[QemuProcess]:
    """Start qemu for *cfg* with its messages in *log_path*; stopped (:meth:`QemuProcess.kill`) on exit."""
    with proc.spawn(qemu_argv(cfg), log_file=log_path, grace=QEMU_GRACE, check=False) as child:
        qemu = QemuProcess(cfg, child)
        try:
            yield qemu
        finally:
            qemu.kill()
