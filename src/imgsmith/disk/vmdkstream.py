"""Rewrite a qemu-made streamOptimized VMDK for new disk content, recompressing only changed grains.

Why it can be spliced: every grain (64 KiB of the disk) is stored as its own zlib stream
behind a 12-byte marker (LBA, compressed size), and only the grain tables (GTs) say where
it lies in the file. A grain's bytes depend neither on its position nor on its neighbours,
so unchanged grains are copied byte for byte and only the tables are written anew.

What qemu-img 7.2 writes (``convert -O vmdk -o subformat=streamOptimized``) is not the
footer layout of VMware's "Virtual Disk Format 5.0" but monolithicSparse plus markers:

* sector 0: header, version 3, flags NL_DETECT|RGD|COMPRESSED|MARKERS (0x30003),
  compressAlgorithm 1 (deflate), gdOffset set (never GD_AT_END);
* sectors 1-20: the descriptor. Its ``CID`` is random per run (``g_random_int()`` at
  create and again at the first write, printed with ``%x``); the extent line names the file;
* from sector 21: redundant GD, redundant GTs, GD, GTs (512 entries, 4 sectors each), all
  preallocated; ``overHead`` is their end rounded up to a grain;
* then the grains in LBA order, packed, each from a sector boundary, zero padded; all-zero
  grains are omitted; a partial last grain compresses just the bytes up to the capacity;
* no GT/GD/footer/end-of-stream markers. The file ends at the later of the last grain's
  data end and its start plus one grain (qemu zero-fills a grain before writing one).

qemu compresses with zlib ``compress()``: Z_DEFAULT_COMPRESSION, 15 window bits, memLevel 8,
which is :func:`zlib.compress` with its defaults: same system zlib, same bytes. The old
descriptor is kept, CID included (so output is deterministic), with the extent renamed.
"""

from __future__ import annotations

import os
import re
import struct
import sys
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import BinaryIO

from ..errors import ImageError

__all__ = ["rewrite"]

SECTOR = 512
_HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")
_MARKER = struct.Struct("<QI")
_FLAG_RGD = 1 << 1
_FLAG_STREAM = (1 << 16) | (1 << 17)  # compressed grains | grain markers
_GD_AT_END = 2**64 - 1
_CHUNK = 4 << 20  # bytes per read: large enough for few syscalls, small enough for a FUSE read
_compress = partial(zlib.compress, level=zlib.Z_DEFAULT_COMPRESSION)  # qemu's compress(); see above
_EXTENT = re.compile(rb'^RW (\d+) SPARSE "([^"\n]*)"$', re.MULTILINE)


def _pad(n: int) -> int:
    return -(-n // SECTOR) * SECTOR


def _le32(data: bytes) -> array[int]:
    """A little-endian uint32 table as an array (VMDK tables are little-endian on every host)."""
    table = array("I", data)
    if sys.byteorder == "big":
        table.byteswap()
    return table


@dataclass(frozen=True)
class _Header:
    """The header fields the rewrite depends on, in sectors."""

    grain: int
    gtes: int  # entries per grain table
    ngrains: int
    ngts: int  # grain tables
    dirs: tuple[int, ...]  # the GD, then the redundant GD if there is one
    descriptor: tuple[int, int]  # offset, size
    overhead: int  # header, descriptor and tables: the grains start here


@dataclass(frozen=True)
class _Stream:
    """What the rewrite needs from the old file, all validated by :func:`_scan`."""

    path: Path
    head: _Header
    tables: tuple[int, ...]  # sector of every GT, then of every redundant GT
    index: array[int]  # grain number of every allocated grain, ascending
    start: array[int]  # its marker's byte offset in the file, ascending
    end: int  # byte offset just after the last grain's padded data

    def limit(self, k: int) -> int:
        """End of allocated grain k in the file: the next grain starts right there (qemu packs them)."""
        return self.start[k + 1] if k + 1 < len(self.start) else self.end


def _error(path: Path, why: str) -> ImageError:
    return ImageError(f"{path}: {why}", hint="rebuild it with a full qemu-img conversion")


def _header(path: Path, fd: int, size: int, virtual_size: int) -> _Header:
    """Check that sector 0 describes a qemu-style streamOptimized extent of the expected capacity."""
    head = os.pread(fd, SECTOR, 0)
    if head[:4] != b"KDMV":
        raise _error(path, f"not a VMDK (magic {head[:4]!r}, expected b'KDMV')")
    if len(head) < SECTOR:
        raise _error(path, f"truncated: {size} bytes, shorter than its header")
    (_, version, flags, capacity, grain, doff, dsize, gtes, rgd, gd, overhead,
     _, newlines, algorithm) = _HEADER.unpack_from(head)
    checks = [  # (failed, why): the first failed check is reported
        (flags & _FLAG_STREAM != _FLAG_STREAM or version != 3,
         f"not streamOptimized: version {version}, flags {flags:#x} lack compressed grains and markers"),
        (algorithm != 1, f"unknown compressAlgorithm {algorithm} (only 1, deflate, is known)"),
        (newlines != b"\n \r\n", "corrupt header: newline check bytes altered (copied in text mode?)"),
        (capacity * SECTOR != virtual_size, f"capacity is {capacity * SECTOR} bytes, expected {virtual_size}"),
        (gd == _GD_AT_END, "grain directory not found: it is in a footer (VMware's layout), not where qemu puts it"),
        (grain <= 0 or grain & (grain - 1) or gtes <= 0 or not 0 < doff < doff + dsize <= overhead,
         f"implausible header: grain {grain}, {gtes} entries per table, overHead {overhead}"),
        (overhead * SECTOR > size, f"truncated: {size} bytes, shorter than its {overhead * SECTOR}-byte header"),
    ]
    for failed, why in checks:
        if failed:
            raise _error(path, why)
    dirs = (gd, rgd) if flags & _FLAG_RGD and rgd else (gd,)
    ngrains = -(-capacity // grain)
    return _Header(grain, gtes, ngrains, -(-ngrains // gtes), dirs, (doff, dsize), overhead)


def _scan(path: Path, fd: int, virtual_size: int) -> _Stream:
    """Parse and check header and tables and find every grain; raise ImageError unless all is understood."""
    size = os.fstat(fd).st_size
    h = _header(path, fd, size, virtual_size)
    ngrains, ngts, limit = h.ngrains, h.ngts, h.overhead * SECTOR
    tables: list[int] = []
    for where in h.dirs:
        if where <= 0 or where * SECTOR + 4 * ngts > limit:
            raise _error(path, f"grain directory not found at sector {where}")
        tables += _le32(os.pread(fd, 4 * ngts, where * SECTOR))
    if any(t <= 0 or t * SECTOR + 4 * h.gtes > limit for t in tables):
        raise _error(path, "grain directory points outside the header area")
    index, start = array("Q"), array("Q")
    for t, sector in enumerate(tables[:ngts]):
        for i, entry in enumerate(_le32(os.pread(fd, 4 * h.gtes, sector * SECTOR))):
            if entry and t * h.gtes + i < ngrains:
                index.append(t * h.gtes + i)
                start.append(entry * SECTOR)
    if any(b <= a for a, b in pairwise(start)) or (start and start[0] < limit):
        raise _error(path, "grains are not stored in disk order after the tables, as qemu-img writes them")
    end = limit
    if start:
        lba, length = _MARKER.unpack(os.pread(fd, _MARKER.size, start[-1]).ljust(_MARKER.size, b"\0"))
        end = start[-1] + _pad(_MARKER.size + length)
        if lba != index[-1] * h.grain or end > size:
            raise _error(path, f"truncated or corrupt: last grain at byte {start[-1]} ends past the end of the file")
    return _Stream(path, h, tuple(tables), index, start, end)


def _descriptor(s: _Stream, fd: int, name: str) -> bytes:
    """Old's descriptor area with the extent renamed to *name*, as qemu would have named it."""
    offset, size = s.head.descriptor
    area = os.pread(fd, size * SECTOR, offset * SECTOR)
    text = area.split(b"\0", 1)[0]
    if b'createType="streamOptimized"' not in text or len(_EXTENT.findall(text)) != 1:
        raise _error(s.path, "descriptor is not that of a single-extent streamOptimized disk")
    new = _EXTENT.sub(lambda m: b'RW %s SPARSE "%s"' % (m[1], os.fsencode(name)), text)
    if '"' in name or "\n" in name or len(new) >= len(area):
        raise _error(s.path, f"cannot name the extent {name!r} in its descriptor")
    return area if new == text else new.ljust(len(area), b"\0")


class _Splice:
    """The destination as qemu writes it: header area, grains in disk order, then the tables filled in."""

    def __init__(self, s: _Stream, src: int, out: BinaryIO, *, read: Callable[[int, int], bytes],
                 virtual_size: int) -> None:
        self.s, self.src, self.out, self.read, self.virtual_size = s, src, out, read, virtual_size
        self.table = array("I", bytes(4 * s.head.ngts * s.head.gtes))
        self.pos = 0  # bytes written so far, always whole sectors
        self.tail = s.head.overhead  # sectors the file must reach, as qemu's zero-filled grains make it

    def run(self, spans: list[tuple[int, int]], descriptor: bytes) -> None:
        s, out = self.s, self.out
        for offset in range(0, s.head.overhead * SECTOR, _CHUNK):  # header and tables, patched below
            out.write(os.pread(self.src, min(_CHUNK, s.head.overhead * SECTOR - offset), offset))
        self.pos = s.head.overhead * SECTOR
        done = 0
        with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
            for lo, hi in spans:
                self.old_grains(done, lo)
                self.new_grains(lo, hi, pool)
                done = hi
        self.old_grains(done, s.head.ngrains)
        out.flush()
        os.ftruncate(out.fileno(), max(self.tail * SECTOR, self.pos))
        if sys.byteorder == "big":
            self.table.byteswap()
        ngts, gtes = s.head.ngts, s.head.gtes
        for t, sector in enumerate(s.tables):  # every GT, then the same again as the redundant GTs
            out.seek(sector * SECTOR)
            out.write(self.table[t % ngts * gtes:(t % ngts + 1) * gtes].tobytes())
        out.seek(s.head.descriptor[0] * SECTOR)
        out.write(descriptor)

    def place(self, g: int, at: int) -> None:
        self.table[g] = at // SECTOR
        self.tail = max(self.tail, at // SECTOR + self.s.head.grain)

    def old_grains(self, lo: int, hi: int) -> None:
        """Copy old's grains lo..hi-1 unchanged: a few large reads and writes, markers checked in memory."""
        s = self.s
        k, stop = bisect_left(s.index, lo), bisect_left(s.index, hi)
        while k < stop:
            base, j = s.start[k], k + 1
            while j < stop and s.limit(j) - base <= _CHUNK:
                j += 1
            data = os.pread(self.src, s.limit(j - 1) - base, base)
            if len(data) != s.limit(j - 1) - base:
                raise _error(s.path, f"truncated: grains at byte {base} run past the end of the file")
            for i in range(k, j):
                rel = s.start[i] - base
                lba, length = _MARKER.unpack_from(data, rel)
                if lba != s.index[i] * s.head.grain or length <= 0 or _pad(12 + length) != s.limit(i) - s.start[i]:
                    raise _error(s.path, f"corrupt grain marker at byte {s.start[i]} (grain {s.index[i]})")
                self.place(s.index[i], self.pos + rel)
            self.out.write(data)
            self.pos += len(data)
            k = j

    def new_grains(self, lo: int, hi: int, pool: ThreadPoolExecutor) -> None:
        """Read grains lo..hi-1 of the new content; compress (in parallel) and append those not all zero."""
        size = self.s.head.grain * SECTOR
        zero = bytes(size)
        step = max(1, _CHUNK // size)
        for g in range(lo, hi, step):
            offset = g * size
            length = min(min(hi, g + step) * size, self.virtual_size) - offset
            data = self.read(offset, length)
            if len(data) != length:
                raise ImageError(f"new disk content: read({offset}, {length}) returned {len(data)} bytes")
            grains = [(g + i // size, data[i:i + size]) for i in range(0, length, size)]
            grains = [(n, d) for n, d in grains if d != zero[:len(d)]]
            for (n, _), packed in zip(grains, pool.map(_compress, [d for _, d in grains]), strict=True):
                blob = _MARKER.pack(n * self.s.head.grain, len(packed)) + packed
                self.place(n, self.pos)
                self.out.write(blob.ljust(_pad(len(blob)), b"\0"))
                self.pos += _pad(len(blob))


def _grain_spans(changed: Sequence[tuple[int, int]], grain_bytes: int) -> list[tuple[int, int]]:
    """Sorted, merged [lo, hi) grain numbers touched by the byte ranges."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted((off // grain_bytes, -(-(off + n) // grain_bytes)) for off, n in changed if n):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def rewrite(old: Path, dest: Path, *, changed: Sequence[tuple[int, int]],
            read: Callable[[int, int], bytes], virtual_size: int) -> None:
    """Write *dest*, a streamOptimized VMDK of new content that equals old's outside *changed*.

    Unchanged grains are copied from *old* without recompression, so an incremental build
    costs what it changed, not the size of the disk. ``read(offset, length)`` returns new
    content; it is called only for grains touched by *changed*, grain-aligned (the last range
    may end at *virtual_size*), at most 4 MiB at once. Raises ImageError, leaving no *dest*,
    if *old* is not a qemu-img streamOptimized VMDK of *virtual_size* bytes (the caller then
    converts in full); ValueError for a range outside the disk; FileExistsError if *dest* exists.
    """
    for off, n in changed:
        if off < 0 or n < 0 or off + n > virtual_size:
            raise ValueError(f"changed range ({off}, {n}) is outside the {virtual_size}-byte disk")
    try:
        src = old.open("rb")
    except OSError as exc:
        raise _error(old, f"cannot read: {exc.strerror}") from exc
    with src:
        s = _scan(old, src.fileno(), virtual_size)
        descriptor = _descriptor(s, src.fileno(), dest.name)
        spans = _grain_spans(changed, s.head.grain * SECTOR)
        with dest.open("xb") as out:
            try:
                _Splice(s, src.fileno(), out, read=read, virtual_size=virtual_size).run(spans, descriptor)
            except BaseException:
                dest.unlink(missing_ok=True)
                raise
