"""Incremental outputs: patch the previous build's output instead of converting the whole disk again.

A rebuild after a change to the last layer produces a final image that differs from the
one the previous outputs were made from only where the layers that differ allocated
clusters; ``qemu-img map`` of both chains says where (:func:`changed_extents`). A full
conversion costs time in proportion to the whole disk (every cluster compressed for
``qcow2 -c`` and streamOptimized VMDK, every byte hashed and written for a fixed VHD); a
patched copy of the previous output costs time in proportion to the change.

How each kind is patched (any other format, option or layout is converted in full):

* ``raw`` and ``vhd-fixed`` (raw data followed by a 512-byte footer): a sparse copy
  (``cp --reflink=auto --sparse=always``), the changed ranges written in place, all-zero
  blocks punched back into holes; the VHD footer gets a new timestamp and unique id, as a
  fresh conversion would.
* ``qcow2``, compressed or not: the copy is exported by qemu-storage-daemon (through
  qemu's compress filter when compressed), each changed cluster is discarded and, unless
  it is all zeros, written again, so it is compressed like ``qemu-img convert -c`` does;
  ``qemu-img check`` must then find the copy clean.
* ``vmdk-stream``: :func:`vmdkstream.rewrite` copies the untouched grains byte for byte and
  compresses only the touched ones.

The new content is read through a read-only FUSE export of the final layer
(:func:`imgsmith.host.fuse.fuse_view`). The result has the content a full conversion would have (the tests
compare them with ``qemu-img compare``), not necessarily the same bytes: a compressed
qcow2 written with ``-W`` is not byte-reproducible in the first place.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import os
import struct
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .. import proc
from ..errors import ImageError
from ..host.fuse import fuse_view
from . import qemuimg
from .presets import Layout

__all__ = ["Extent", "Kind", "Update", "apply", "changed_extents", "merge", "patch_kind"]

log = logging.getLogger("imgsmith.disk")

Extent = tuple[int, int]  # (offset, length) in bytes of the virtual disk
Kind = Literal["raw", "vhd-fixed", "qcow2", "qcow2-compressed", "vmdk-stream"]

BLOCK = 64 * 1024  # qcow2's default cluster and the VMDK grain: the unit of every patch
_CHUNK = 4 << 20
_ZEROS = bytes(BLOCK)
_PUNCH = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
_VHD_EPOCH = 946684800  # 2000-01-01T00:00:00Z, the VHD footer's time base


@dataclass(frozen=True)
class Update:
    """How to make one output from the previous build's: which file, which ranges, read from where."""

    previous: Path
    kind: Kind
    extents: tuple[Extent, ...]
    view: Path  # raw FUSE view of the new final image

    @property
    def changed_bytes(self) -> int:
        return sum(length for _, length in self.extents)


def patch_kind(fmt: str, options: Mapping[str, str], layout: Layout) -> Kind | None:
    """The patcher for an output, or None when only a full conversion can make it."""
    if layout is not Layout.PLAIN:
        return None
    opts = dict(options)
    if fmt == "raw" and opts.get("preallocation", "off") == "off":
        return "raw"
    if fmt == "vpc" and opts.get("subformat") == "fixed":
        return "vhd-fixed"
    if fmt == "vmdk" and opts.get("subformat") == "streamOptimized":
        return "vmdk-stream"
    if (fmt == "qcow2" and set(opts) <= {"compat", "compression", "cluster_size", "lazy_refcounts"}
            and opts.get("cluster_size", str(BLOCK)) in (str(BLOCK), "64K", "64k")):
        return "qcow2" if opts.get("compression", "off") == "off" else "qcow2-compressed"
    return None


def _map(top: Path) -> list[dict[str, object]]:
    out = proc.run([qemuimg.QEMU_IMG, "map", "--output=json", "-f", "qcow2", top]).stdout
    data = json.loads(out)
    return data if isinstance(data, list) else []


def _above(entries: Sequence[Mapping[str, object]], depth: int) -> Iterator[Extent]:
    for e in entries:
        if e.get("present") and int(str(e.get("depth", depth))) < depth:
            yield int(str(e["start"])), int(str(e["length"]))


def merge(extents: Sequence[Extent], *, align: int = BLOCK, limit: int | None = None) -> list[Extent]:
    """Sorted, widened to *align* boundaries, overlapping and touching ranges joined, cut at *limit*."""
    spans = sorted((off // align * align, -(-(off + length) // align) * align)
                   for off, length in extents if length > 0)
    out: list[list[int]] = []
    for start, stop in spans:
        end = stop if limit is None else min(stop, limit)
        if start >= end:
            continue
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(s, e - s) for s, e in out]


def changed_extents(new_top: Path, new_depth: int, old_top: Path, old_depth: int,
                    virtual_size: int) -> list[Extent]:
    """Where two layer chains that share their lower layers can differ.

    *new_depth* and *old_depth* count the layers on top of each chain that are not shared.
    Anywhere neither chain's own layers allocated anything, both read through to the same
    shared layers, so the content is equal; everywhere else it may not be.
    """
    ranges = [*_above(_map(new_top), new_depth), *_above(_map(old_top), old_depth)]
    return merge(ranges, limit=virtual_size)


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return libc


def _fallocate_punch(fd: int, offset: int, length: int) -> None:
    if _libc().fallocate(fd, _PUNCH, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fallocate(PUNCH_HOLE): {os.strerror(err)}")


def _blocks(data: bytes, offset: int) -> Iterator[tuple[int, memoryview, bool]]:
    """(offset, bytes, all_zero) runs of whole blocks; consecutive blocks of one kind are joined."""
    view = memoryview(data)
    start, kind = 0, None
    for pos in range(0, len(data), BLOCK):
        zero = view[pos:pos + BLOCK] == _ZEROS[:len(view[pos:pos + BLOCK])]
        if kind is not None and zero != kind:
            yield offset + start, view[start:pos], kind
            start = pos
        kind = zero
    if kind is not None:
        yield offset + start, view[start:], kind


def _read(src: int, offset: int, length: int) -> bytes:
    data = os.pread(src, length, offset)
    if len(data) != length:
        raise ImageError(f"short read from the new image at offset {offset} ({len(data)} of {length} bytes)")
    return data


def _patch_file(dest: Path, update: Update, *, per_block: bool = False) -> None:
    """Write the changed ranges into *dest* (a raw view: a plain file, or a FUSE export)."""
    src = os.open(update.view, os.O_RDONLY)
    fd = os.open(dest, os.O_RDWR)
    try:
        for start, length in update.extents:
            for off in range(start, start + length, _CHUNK):
                n = min(_CHUNK, start + length - off)
                data = _read(src, off, n)
                if per_block:  # compressed qcow2: every write one whole cluster, after a discard
                    _fallocate_punch(fd, off, n)
                for at, run, zero in _blocks(data, off):
                    if zero:
                        if not per_block:
                            _fallocate_punch(fd, at, len(run))
                        continue
                    step = BLOCK if per_block else len(run)
                    for i in range(0, len(run), step):
                        os.pwrite(fd, run[i:i + step], at + i)
        os.fsync(fd)
    finally:
        os.close(fd)
        os.close(src)


def _renew_vhd_footer(path: Path, virtual_size: int) -> None:
    """A fresh timestamp and unique id in a fixed VHD's footer, and its checksum again."""
    with path.open("r+b") as f:
        f.seek(virtual_size)
        footer = bytearray(f.read(512))
        if len(footer) != 512 or footer[:8] != b"conectix":
            raise ImageError(f"{path}: no VHD footer at offset {virtual_size}")
        struct.pack_into(">I", footer, 24, max(0, int(time.time()) - _VHD_EPOCH))
        footer[68:84] = uuid.uuid4().bytes
        struct.pack_into(">I", footer, 64, 0)
        struct.pack_into(">I", footer, 64, ~sum(footer) & 0xFFFFFFFF)
        f.seek(virtual_size)
        f.write(footer)


def _patch_qcow2(dest: Path, update: Update, *, compressed: bool) -> None:
    with fuse_view(dest, "qcow2", label="output-patch", name="target.img", writable=True,
                   compress=compressed, discard=True) as export:
        _patch_file(export, update, per_block=compressed)
    check = qemuimg.check(dest, "qcow2")
    if not check.ok:
        raise ImageError(f"{dest}: the patched qcow2 does not check clean ({check.corruptions} corruptions, "
                         f"{check.check_errors} errors)")


def apply(update: Update, dest: Path, virtual_size: int) -> None:
    """Write *dest* from *update*: a patched copy of the previous output (see the module docstring)."""
    if update.kind == "vmdk-stream":
        from . import vmdkstream
        src = os.open(update.view, os.O_RDONLY)
        try:
            vmdkstream.rewrite(update.previous, dest, changed=update.extents,
                               read=lambda off, n: _read(src, off, n), virtual_size=virtual_size)
        finally:
            os.close(src)
        return
    proc.run(["cp", "--reflink=auto", "--sparse=always", update.previous, dest])
    if update.kind in ("raw", "vhd-fixed"):
        _patch_file(dest, update)
        if update.kind == "vhd-fixed":
            _renew_vhd_footer(dest, virtual_size)
    elif update.kind in ("qcow2", "qcow2-compressed"):
        _patch_qcow2(dest, update, compressed=update.kind == "qcow2-compressed")
    else:  # pragma: no cover - patch_kind names every kind
        raise ImageError(f"no patcher for {update.kind}")
