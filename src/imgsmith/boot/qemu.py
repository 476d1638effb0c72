"""Starting, watching and stopping the boot test's qemu.

The machine is what a cloud gives: q35, virtio disks and network, a serial console,
no display. Both the disk overlay and the seed are virtio disks: cloud kernels such
as linux-image-cloud-amd64 carry no AHCI driver, so an IDE/SATA ``-cdrom`` seed
would go unseen. SSH is forwarded from 127.0.0.1 only: a throw-away guest with a
known test key must not be reachable from the network. QMP on a unix socket is
the way to ask for an ACPI power-off when SSH is not available.
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

__all__ = ["QemuConfig", "QemuProcess", "free_port", "qemu_argv", "qmp_command"]

log = logging.getLogger("imgsmith.boot")

QEMU = "qemu-system-x86_64"
TCG_CPU = "Nehalem"


@dataclass(frozen=True)
class QemuConfig:
    """One boot-test machine. ``accel`` is ``kvm`` or ``tcg`` (from :func:`imgsmith.host.accel.detect`)."""

    disk: Path
    seed: Path
    accel: str
    ssh_port: int
    serial_log: Path
    qmp_socket: Path
    disk_format: str = "qcow2"
    memory_mib: int = 2048
    cpus: int = 2
    binary: str = QEMU


def _opt(value: str | os.PathLike[str]) -> str:
    """qemu option values escape a literal comma by doubling it."""
    return os.fspath(value).replace(",", ",,")


def qemu_argv(cfg: QemuConfig) -> list[str]:
    """The full command line; tests assert on it, so it is built without side effects.

    KVM gets ``-cpu host`` (the probe proved it works). TCG gets ``Nehalem``, an
    x86-64-v2 model: guests that require v2 (EL 9) boot, and without AVX glibc does
    not pick code paths TCG emulates slowly (``-cpu max`` booted ~10% slower here).
    ``-no-reboot`` turns a guest reboot or panic-reboot into a qemu exit the test
    notices at once.
    """
    cpu = "host" if cfg.accel == "kvm" else TCG_CPU
    return [
        cfg.binary,
        "-name", "imgsmith-boot-test",
        "-machine", f"q35,accel={cfg.accel}",
        "-cpu", cpu,
        "-m", str(cfg.memory_mib),
        "-smp", str(cfg.cpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-chardev", f"file,id=console,path={_opt(cfg.serial_log)}",
        "-serial", "chardev:console",
        "-chardev", f"socket,id=qmp,path={_opt(cfg.qmp_socket)},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-drive", f"file={_opt(cfg.disk)},format={cfg.disk_format},if=virtio,cache=unsafe,discard=unmap",
        "-drive", f"file={_opt(cfg.seed)},format=raw,if=virtio,readonly=on",
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{cfg.ssh_port}-:22",
        "-device", "virtio-net-pci,netdev=net0",
        "-device", "virtio-rng-pci",
    ]


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
