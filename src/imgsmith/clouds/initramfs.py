"""Listing an initramfs in Python: the kernel modules it carries, whatever tool made it.

An initramfs is a sequence of cpio archives ("newc" format), each possibly compressed:
dracut and initramfs-tools both prepend an uncompressed early cpio (CPU microcode) to the
compressed main one. The kernel reads them one after the other, and so does this module:
an uncompressed cpio is walked entry by entry (only the names are kept, the data is
skipped), zero padding between archives is skipped, and a compressed remainder (gzip, xz,
lzma, bzip2 from the standard library; zstd through the ``zstandard`` library, the
default of Ubuntu, Fedora and RHEL 9) is decompressed and walked in turn. Reading the
image in imgsmith's own process runs none of the image's code, which is what a
read-only check of an untrusted image wants; lz4 (rare) is reported as unreadable.
"""

from __future__ import annotations

import bz2
import lzma
import re
import zlib
from collections.abc import Iterator

__all__ = ["UnreadableInitramfs", "list_files", "modules_in"]

_NEWC = (b"070701", b"070702")
_HEADER = 110
_TRAILER = "TRAILER!!!"
_MAGICS = {
    b"\x1f\x8b": "gzip",
    b"\xfd7zXZ\x00": "xz",
    b"\x5d\x00\x00": "lzma",
    b"BZh": "bzip2",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\x02\x21\x4c\x18": "lz4",
    b"\x04\x22\x4d\x18": "lz4",
}
_MODULE = re.compile(r"/([^/]+?)\.ko(?:\.(?:xz|gz|zst))?$")


class UnreadableInitramfs(ValueError):
    """The initramfs is not a cpio sequence this module can read (a compression it lacks, corruption)."""


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _walk_cpio(data: bytes | memoryview, pos: int) -> tuple[list[str], int]:
    """Names in the cpio archive starting at *pos*; returns them and the offset after its trailer."""
    names: list[str] = []
    view = memoryview(data)
    while True:
        header = bytes(view[pos:pos + _HEADER])
        if len(header) < _HEADER or header[:6] not in _NEWC:
            raise UnreadableInitramfs(f"cpio header expected at offset {pos}")
        try:
            filesize = int(header[54:62], 16)
            namesize = int(header[94:102], 16)
        except ValueError:
            raise UnreadableInitramfs(f"corrupt cpio header at offset {pos}") from None
        name = bytes(view[pos + _HEADER:pos + _HEADER + namesize - 1]).decode("utf-8", "surrogateescape")
        pos = _align4(pos + _HEADER + namesize)
        pos = _align4(pos + filesize)
        if name == _TRAILER:
            return names, pos
        names.append(name)


def _decompress(kind: str, data: bytes | memoryview) -> bytes:
    """Decompress one stream (trailing bytes after it are ignored, as the kernel ignores them)."""
    raw = bytes(data)
    try:
        if kind == "gzip":
            return zlib.decompressobj(wbits=31).decompress(raw)
        if kind in ("xz", "lzma"):
            return lzma.LZMADecompressor().decompress(raw)
        if kind == "bzip2":
            return bz2.BZ2Decompressor().decompress(raw)
        if kind == "zstd":
            import zstandard
            return zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    except (zlib.error, lzma.LZMAError, OSError, ValueError) as exc:
        raise UnreadableInitramfs(f"corrupt {kind} data: {exc}") from None
    except ImportError:  # pragma: no cover - zstandard is a declared dependency
        raise UnreadableInitramfs("zstd initramfs, and the zstandard library is not installed") from None
    raise UnreadableInitramfs(f"{kind}-compressed initramfs (no {kind} decompressor in imgsmith)")


def _segments(data: bytes | memoryview, depth: int = 0) -> Iterator[str]:
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        if view[pos] == 0:  # padding between archives
            pos += 1
            continue
        head = bytes(view[pos:pos + 6])
        if head in _NEWC:
            names, pos = _walk_cpio(view, pos)
            yield from names
            continue
        kind = next((k for magic, k in _MAGICS.items() if head.startswith(magic)), None)
        if kind is None:
            raise UnreadableInitramfs(f"neither cpio nor a known compression at offset {pos}")
        if depth > 2:
            raise UnreadableInitramfs("compressed data nested too deep")
        yield from _segments(_decompress(kind, view[pos:]), depth + 1)
        return  # the compressed part runs to the end of the file


def list_files(data: bytes) -> list[str]:
    """Every path in the initramfs (early and main archives), as stored (no leading slash)."""
    return list(_segments(data))


def modules_in(names: list[str]) -> set[str]:
    """Kernel module names (``virtio_blk``; dashes as underscores) among initramfs paths."""
    found = set()
    for name in names:
        m = _MODULE.search("/" + name)
        if m:
            found.add(m.group(1).replace("-", "_"))
    return found
