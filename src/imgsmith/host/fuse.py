"""A disk image as a raw file on the host: qemu-storage-daemon's FUSE export, the one way we have.

This host has no nbd module, so a FUSE export is how a qcow2 (any format, its whole backing
chain) becomes a plain file that a loop device, ``pread`` or ``fallocate`` can work on; writes
go into the image's top layer. The daemon and the mount are recorded in a rollback
:class:`~imgsmith.host.rollback.Session`, so a killed imgsmith's exports are swept by the next one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from .. import proc
from ..errors import GuestError, ProcessError
from .rollback import Session, sweep_stale

__all__ = ["fuse_export", "fuse_view"]


def _qemu_opt(value: str | os.PathLike[str]) -> str:
    return os.fspath(value).replace(",", ",,")  # qemu's option syntax doubles commas in values


def fuse_export(session: Session, image: Path, fmt: str, *, name: str = "disk.img", writable: bool = True,
                compress: bool = False, discard: bool = False) -> Path:
    """Export *image* (its whole backing chain) as a raw FUSE file in the session directory.

    *compress* puts qemu's compress filter under the export so every write becomes a
    compressed cluster (qcow2 only; writes must then be whole, aligned clusters); with
    *discard*, a hole punched in the FUSE file frees the clusters it covers (they read as zeros).
    The daemon is daemonized (it must outlive a killed imgsmith until the sweep stops it) and
    stopped by the session with :func:`imgsmith.proc.stop_pid`.
    """
    export = session.dir / name
    export.touch()
    session.push("path", str(export))
    pidfile = session.dir / f"{name}.pid"
    session.push("fuse", str(export))
    ro = "" if writable else ",read-only=on"
    unmap = ",discard=unmap" if discard else ""
    nodes = ["--blockdev", f"driver=file,filename={_qemu_opt(image.resolve())},node-name=file{ro}{unmap}",
             "--blockdev", f"driver={fmt},file=file,node-name=fmt{ro}{unmap}"]
    if compress:
        nodes += ["--blockdev", f"driver=compress,file=fmt,node-name=top{unmap}"]
    top = "top" if compress else "fmt"
    try:
        proc.run([
            "qemu-storage-daemon", *nodes,
            "--export", f"type=fuse,id=exp,node-name={top},mountpoint={_qemu_opt(export)},"
                        f"writable={'on' if writable else 'off'}",
            "--daemonize", "--pidfile", pidfile,
        ])
    except ProcessError as exc:
        raise GuestError(f"could not export {image} with qemu-storage-daemon: {exc.message}",
                         hint="FUSE exports need /dev/fuse and the fuse module; for the chroot backend, "
                              "try IMGSMITH_CHROOT_EXPOSE=raw or --backend appliance") from None
    session.push("daemon", pidfile.read_text().strip())
    pidfile.unlink(missing_ok=True)
    return export


@contextlib.contextmanager
def fuse_view(image: Path, fmt: str, *, label: str, name: str = "disk.img", writable: bool = False,
              compress: bool = False, discard: bool = False) -> Iterator[Path]:
    """A FUSE export of *image* in a session of its own, for as long as the block runs.

    First sweeps what killed sessions left behind (here, or the next chroot session, does it).
    """
    sweep_stale()
    with Session(label).held() as session:
        yield fuse_export(session, image, fmt, name=name, writable=writable, compress=compress,
                          discard=discard)
