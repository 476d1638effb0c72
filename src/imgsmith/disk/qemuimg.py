"""A typed wrapper over qemu-img: info, check, overlays, commit, convert with progress, resize.

Every call names the image format explicitly (``-f``/``-F``): qemu-img's probing reads
a fixed VHD back as raw, and probing an untrusted raw image lets its first bytes
claim to be qcow2 with a backing file on the host. The only place a format is ever
probed is :func:`probe_format`, for a user who gave none, and it says so in the log.
The argv builders are pure functions so tests can assert exact command lines.
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import proc
from ..errors import ImageError, ImgsmithError, ProcessError
from .formats import get_format

__all__ = [
    "Cancelled",
    "ImageCheck",
    "ImageInfo",
    "ProgressFn",
    "Snapshot",
    "check",
    "commit",
    "convert",
    "convert_argv",
    "create_overlay",
    "info",
    "measure_qcow2",
    "open_image",
    "probe_format",
    "rebase_unsafe",
    "resize",
    "version",
]

log = logging.getLogger("imgsmith.disk")

QEMU_IMG = "qemu-img"
ProgressFn = Callable[[float], None]
"""Called with the percentage done (0.0 to 100.0), from whichever thread runs the conversion."""

_PROGRESS_RE = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


class Cancelled(ImgsmithError):
    """The conversion was stopped on request (Ctrl-C, SIGTERM, a sibling failing)."""

    exit_code = 130


@dataclass(frozen=True)
class Snapshot:
    """An internal snapshot as ``qemu-img info`` lists it."""

    id: str
    name: str
    vm_state_size: int
    date_sec: int
    vm_clock_sec: int


@dataclass(frozen=True)
class ImageInfo:
    """What qemu-img knows about one image, and (``backing``) about each image below it."""

    filename: str
    format: str
    virtual_size: int
    actual_size: int
    cluster_size: int | None = None
    dirty: bool = False
    backing_filename: str | None = None
    backing_format: str | None = None
    snapshots: tuple[Snapshot, ...] = ()
    format_specific: Mapping[str, Any] = field(default_factory=dict)
    backing: ImageInfo | None = None

    @property
    def chain(self) -> tuple[ImageInfo, ...]:
        """This image followed by its backing images, top first."""
        out: list[ImageInfo] = []
        node: ImageInfo | None = self
        while node is not None:
            out.append(node)
            node = node.backing
        return tuple(out)

    @property
    def allocated_size(self) -> int:
        """Bytes the whole chain takes on the host (the upper bound for a sparse copy)."""
        return sum(i.actual_size for i in self.chain)

    def to_json(self) -> dict[str, Any]:
        """Plain data for ``--json`` and the build manifest."""
        return {
            "filename": self.filename,
            "format": self.format,
            "virtual_size": self.virtual_size,
            "actual_size": self.actual_size,
            "cluster_size": self.cluster_size,
            "dirty": self.dirty,
            "backing_filename": self.backing_filename,
            "backing_format": self.backing_format,
            "snapshots": [vars(s) for s in self.snapshots],
            "format_specific": dict(self.format_specific),
            "backing": self.backing.to_json() if self.backing else None,
        }


@dataclass(frozen=True)
class ImageCheck:
    """``qemu-img check`` verdict: ``supported`` is False for formats it cannot check (raw, vpc)."""

    supported: bool
    corruptions: int = 0
    leaks: int = 0
    check_errors: int = 0

    @property
    def ok(self) -> bool:
        return self.corruptions == 0 and self.check_errors == 0


def _qemu_message(stderr: str) -> str:
    """qemu-img's own last error line, without the program name and the repeated file name."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    text = lines[-1] if lines else "unknown error"
    text = re.sub(r"^qemu-img:\s*", "", text)
    return re.sub(r"^Could not open '[^']*':\s*", "", text)


def _snapshot(data: Mapping[str, Any]) -> Snapshot:
    return Snapshot(str(data.get("id", "")), str(data.get("name", "")), int(data.get("vm-state-size", 0)),
                    int(data.get("date-sec", 0)), int(data.get("vm-clock-sec", 0)))


def _image_info(nodes: Sequence[Mapping[str, Any]]) -> ImageInfo:
    head, rest = nodes[0], nodes[1:]
    specific = head.get("format-specific") or {}
    return ImageInfo(
        filename=str(head.get("filename", "")),
        format=str(head["format"]),
        virtual_size=int(head["virtual-size"]),
        actual_size=int(head.get("actual-size", 0)),
        cluster_size=int(head["cluster-size"]) if "cluster-size" in head else None,
        dirty=bool(head.get("dirty-flag", False)),
        backing_filename=head.get("full-backing-filename") or head.get("backing-filename"),
        backing_format=head.get("backing-filename-format"),
        snapshots=tuple(_snapshot(s) for s in head.get("snapshots", ())),
        format_specific=dict(specific.get("data", {})) if isinstance(specific, dict) else {},
        backing=_image_info(rest) if rest else None,
    )


def _require_file(path: Path) -> None:
    if not path.exists():
        raise ImageError(f"{path}: no such disk image")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not a disk image")
    if not os.access(path, os.R_OK):
        raise ImageError(f"{path}: not readable")


def info(path: str | os.PathLike[str], fmt: str | None = None) -> ImageInfo:
    """``qemu-img info --output=json --backing-chain``; ImageError with qemu's reason if unreadable."""
    p = Path(path)
    _require_file(p)
    argv: list[str | os.PathLike[str]] = [QEMU_IMG, "info", "--output=json", "--backing-chain"]
    if fmt:
        argv += ["-f", fmt]
    argv.append(p)
    try:
        out = proc.run(argv).stdout
    except ProcessError as exc:
        what = f"a readable {fmt} image" if fmt else "a readable disk image"
        raise ImageError(f"{p}: not {what}: {_qemu_message(exc.stderr)}") from exc
    data = json.loads(out)
    nodes = data if isinstance(data, list) else [data]
    return _image_info(nodes)


def _has_vhd_footer(path: Path) -> bool:
    """A fixed VHD is raw data plus a 512-byte footer starting with the cookie ``conectix``."""
    try:
        size = path.stat().st_size
        if size < 512 or size % 512:
            return False
        with path.open("rb") as f:
            f.seek(size - 512)
            return f.read(8) == b"conectix"
    except OSError:
        return False


def probe_format(path: str | os.PathLike[str]) -> str:
    """Guess the format of an image the user named no format for.

    qemu-img reports a fixed VHD as raw; the VHD footer cookie tells them apart.
    """
    p = Path(path)
    fmt = info(p).format
    if fmt == "raw" and _has_vhd_footer(p):
        fmt = "vpc"
    log.info("%s: no format given, probed %s (pass the format explicitly for untrusted images)", p, fmt)
    return fmt


def check(path: str | os.PathLike[str], fmt: str) -> ImageCheck:
    """``qemu-img check``: exit 0 clean, 2 corrupt, 3 leaks only, 63 format not checkable."""
    p = Path(path)
    res = proc.run([QEMU_IMG, "check", "--output=json", "-f", fmt, p], check=False)
    if res.returncode == 63:
        return ImageCheck(supported=False)
    try:
        data = json.loads(res.stdout) if res.stdout.strip() else {}
    except ValueError:
        data = {}
    if res.returncode == 1 or (res.returncode not in (0, 2, 3)) or not data:
        raise ImageError(f"{p}: not a readable {fmt} image: {_qemu_message(res.stderr)}")
    return ImageCheck(True, int(data.get("corruptions", 0)), int(data.get("leaks", 0)),
                       int(data.get("check-errors", 0)))


def open_image(path: str | os.PathLike[str], fmt: str | None = None) -> ImageInfo:
    """The one way a disk image the user named is opened: it exists and is readable, its format
    is the one given (or probed, and logged as such), ``qemu-img info`` reads it and ``qemu-img
    check`` finds no corruption. Every problem is an :class:`ImageError` (exit 2) in one line.

    An explicit ``raw`` for a file that probes as another format is refused: working on a
    qcow2 container as if it were the disk would corrupt it or produce garbage.
    """
    p = Path(path)
    _require_file(p)
    name = get_format(fmt).name if fmt else probe_format(p)
    image = info(p, name)
    if fmt and name == "raw" and (probed := info(p).format) != "raw":
        raise ImageError(f"{p}: is {probed}, not raw (drop --format or give --format {probed})")
    verdict = check(p, name)
    if verdict.supported and not verdict.ok:
        raise ImageError(f"{p}: corrupt {name} image: qemu-img check found {verdict.corruptions} "
                         f"corruption(s) and {verdict.check_errors} error(s)",
                         hint=f"inspect it with: qemu-img check -f {name} {p} (-r all can try to repair it)")
    if verdict.leaks:
        log.warning("%s: %d leaked cluster(s) (wasted space, no data at risk)", p, verdict.leaks)
    return image
def measure_qcow2(path: str | os.PathLike[str], fmt: str) -> int:
    """Bytes *path* would take converted to (uncompressed) qcow2: ``qemu-img measure``, nothing written."""
    out = proc.run([QEMU_IMG, "measure", "--output=json", "-U", "-f", fmt, "-O", "qcow2", Path(path)]).stdout
    return int(json.loads(out)["required"])


_VERSION: list[str] = []


def version() -> str:
    """``qemu-img --version``'s first line, read once per process.

    Part of a shared output's remote key (sharing.py): another qemu-img may write other
    bytes for the same conversion, so outputs are shared only between equal versions.
    """
    if not _VERSION:
        _VERSION.append(proc.run([QEMU_IMG, "--version"]).stdout.splitlines()[0].strip())
    return _VERSION[0]


def create_overlay(base: str | os.PathLike[str], base_fmt: str, dest: str | os.PathLike[str],
                   size: int | None = None) -> None:
    """A qcow2 overlay over *base* (absolute backing path, format stated); larger than *base* if *size*."""
    argv: list[str | os.PathLike[str]] = [QEMU_IMG, "create", "-q", "-f", "qcow2",
                                          "-b", Path(base).resolve(), "-F", base_fmt, dest]
    if size is not None:
        argv.append(str(size))
    proc.run(argv)


def rebase_unsafe(overlay: str | os.PathLike[str], backing: str | os.PathLike[str], backing_fmt: str) -> None:
    """Point *overlay* at *backing* without reading either (``rebase -u``): the caller knows the
    new backing file has the same bytes as the old one (a layer pulled from a remote cache)."""
    proc.run([QEMU_IMG, "rebase", "-q", "-u", "-f", "qcow2", "-b", backing, "-F", backing_fmt, overlay])


def commit(overlay: str | os.PathLike[str]) -> None:
    """Write the overlay's clusters into its backing file (growing the backing file if needed)."""
    proc.run([QEMU_IMG, "commit", "-q", "-f", "qcow2", overlay])


def resize(path: str | os.PathLike[str], fmt: str, size: int) -> None:
    """Set the virtual size (grow only; callers refuse shrinking before they get here)."""
    proc.run([QEMU_IMG, "resize", "-q", "-f", fmt, path, str(size)])


def convert_argv(src: str | os.PathLike[str], src_fmt: str, dst: str | os.PathLike[str], fmt: str,
                 options: Mapping[str, str]) -> list[str]:
    """The ``qemu-img convert`` command line for already validated *options*.

    ``compression`` becomes ``-c`` (plus ``compression_type`` when not zlib, so
    compat 0.10 images never see the option); compressed qcow2 also gets ``-m 4 -W``,
    which overlaps the CPU-bound compression of several clusters (NOTES: 14.8 s ->
    9.2 s). streamOptimized vmdk gains nothing from them: its writer is sequential.
    """
    argv = [QEMU_IMG, "convert", "-p", "-f", src_fmt, "-O", fmt]
    opts = dict(options)
    compression = opts.pop("compression", "off")
    if compression != "off":
        argv += ["-c", "-m", "4", "-W"]
        if compression != "zlib":
            opts["compression_type"] = compression
    if opts:
        argv += ["-o", ",".join(f"{k}={v}" for k, v in opts.items())]
    return [*argv, os.fspath(src), os.fspath(dst)]


def _pump(p: proc.Spawned, progress: ProgressFn | None, cancel: threading.Event | None) -> None:
    """Read ``-p`` output until qemu-img exits, reporting each new percentage; stop on *cancel*."""
    assert p.stdout is not None
    fd = p.stdout.fileno()
    buf = b""
    last = -1.0
    while True:
        if cancel is not None and cancel.is_set():
            raise Cancelled("conversion cancelled")
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return
        buf = (buf + chunk)[-256:]
        found = _PROGRESS_RE.findall(buf)
        if found and progress is not None:
            pct = float(found[-1])
            if pct != last:
                last = pct
                progress(pct)


def convert(src: str | os.PathLike[str], src_fmt: str, dst: str | os.PathLike[str], fmt: str,
            options: Mapping[str, str], *, progress: ProgressFn | None = None,
            cancel: threading.Event | None = None) -> None:
    """Run ``qemu-img convert -p`` and turn its ``(NN.NN/100%)`` output into *progress* calls.

    The child is stopped (SIGTERM, then SIGKILL) if the caller is interrupted or
    *cancel* is set; the caller owns cleaning up *dst*.
    """
    argv = convert_argv(src, src_fmt, dst, fmt, options)
    with proc.spawn(argv) as p:
        _pump(p, progress, cancel)
        p.wait()
    if progress is not None:
        progress(100.0)
