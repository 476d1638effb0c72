"""Compute Engine's import layout: a raw disk named ``disk.raw`` inside a gzip'ed GNU tar.

Google's import documentation builds it with ``tar --format=oldgnu -Sczf``; imgsmith
runs the same GNU tar so the member is written sparse (holes cost neither time nor
space) in the oldgnu header format Compute Engine expects. pigz is used when the
host has it, as gzip is the slow, single-threaded part.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .. import proc

__all__ = ["MEMBER", "pack", "tar_argv"]

MEMBER = "disk.raw"


def tar_argv(work: Path, out: Path, compressor: str | None = None) -> list[str]:
    """The GNU tar command that packs ``work/disk.raw`` into *out* (``pigz`` if given)."""
    argv = ["tar", "--format=oldgnu", "--sparse", "--owner=0", "--group=0", "--numeric-owner"]
    argv += [f"--use-compress-program={compressor}"] if compressor else ["--gzip"]
    return [*argv, "-cf", str(out), "-C", str(work), MEMBER]


def pack(raw: Path, out: Path) -> None:
    """Pack *raw* (which must be named ``disk.raw``) into the tar.gz *out*."""
    if raw.name != MEMBER:
        raise ValueError(f"the GCE member must be named {MEMBER}, not {raw.name}")
    proc.run(tar_argv(raw.parent, out, "pigz" if shutil.which("pigz") else None))
