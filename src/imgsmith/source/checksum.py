"""Checksums of base images: the inline ``sha256:…`` form, SUMS files, and hashing a file.

A downloaded image is used only once it matches a checksum the user vouched for,
either written inline in the definition or listed in the distribution's SUMS file
(CentOS ``sha256sum.txt``, Ubuntu ``SHA256SUMS``, Debian ``SHA512SUMS``, Fedora and
CentOS Stream ``CHECKSUM``). Both layouts in the wild are read:

* GNU coreutils: ``HASH  NAME`` or ``HASH *NAME`` (binary marker), optionally with a
  leading backslash when the name is escaped;
* BSD/``--tag``: ``SHA256 (NAME) = HASH``.

Anything else on a line (PGP armour around a clearsigned file, ``#`` comments, size
lines) is ignored, so a signed CHECKSUM file parses as is. The algorithm is taken
from the BSD tag, or from the length of the hex digest for GNU lines.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ChecksumError, UsageError
from ..host import files

__all__ = ["ALGORITHMS", "Checksum", "file_digest", "parse_inline", "parse_sums"]

ALGORITHMS: dict[str, int] = {"sha512": 128, "sha256": 64, "sha1": 40, "md5": 32}
"""Supported algorithms and their hex digest lengths, strongest first (the preference order)."""

_BY_LENGTH = {length: algo for algo, length in ALGORITHMS.items()}
_HEX_RE = re.compile(r"^[0-9a-fA-F]+$")
_GNU_RE = re.compile(r"^\\?(?P<hash>[0-9a-fA-F]{32,128})[ \t]+\*?(?P<name>.+)$")
_BSD_RE = re.compile(r"^\\?(?P<tag>[A-Za-z0-9-]+) ?\((?P<name>.+)\) ?= ?(?P<hash>[0-9a-fA-F]+)$")


@dataclass(frozen=True)
class Checksum:
    """An expected digest: ``algo`` is one of :data:`ALGORITHMS`, ``hexdigest`` lower-case hex."""

    algo: str
    hexdigest: str

    def __post_init__(self) -> None:
        # Normalise here so equality and cache keys never depend on how the user typed the hex.
        object.__setattr__(self, "hexdigest", self.hexdigest.lower())

    def __str__(self) -> str:
        return f"{self.algo}:{self.hexdigest}"


def parse_inline(spec: str) -> Checksum:
    """Parse ``sha256:HEX`` (also sha512, sha1, md5); UsageError naming what is wrong.

    The prefix is required: a bare digest's algorithm could only be guessed from its
    length, and a definition should say what it means.
    """
    text = spec.strip()
    algo, sep, digest = text.partition(":")
    algo = algo.strip().lower()
    digest = digest.strip()
    allowed = ", ".join(f"{a}:HEX" for a in ALGORITHMS)
    if not sep:
        raise UsageError(f"invalid checksum {spec!r}: expected ALGO:HEX ({allowed})")
    if algo not in ALGORITHMS:
        raise UsageError(f"invalid checksum {spec!r}: unknown algorithm {algo!r} (use one of {allowed})")
    if not digest or not _HEX_RE.match(digest):
        raise UsageError(f"invalid checksum {spec!r}: the digest must be hexadecimal")
    if len(digest) != ALGORITHMS[algo]:
        raise UsageError(f"invalid checksum {spec!r}: a {algo} digest has {ALGORITHMS[algo]} hex digits, "
                         f"not {len(digest)}")
    return Checksum(algo, digest)


def _unescape_gnu(name: str) -> str:
    """Undo coreutils' escaping of names holding a backslash or newline (line began with ``\\``)."""
    out: list[str] = []
    i = 0
    while i < len(name):
        if name[i] == "\\" and i + 1 < len(name):
            out.append({"n": "\n", "r": "\r", "\\": "\\"}.get(name[i + 1], name[i + 1]))
            i += 2
        else:
            out.append(name[i])
            i += 1
    return "".join(out)


def _parse_line(line: str) -> tuple[str, str, str] | None:
    """``(algo, hexdigest, name)`` for a SUMS line, or None for anything else (comments, PGP armour)."""
    if m := _BSD_RE.match(line):
        # "SHA256", and OpenSSL 3's "SHA2-256" spelling of the same thing.
        algo = m["tag"].lower().replace("sha2-", "sha").replace("-", "")
        if ALGORITHMS.get(algo) != len(m["hash"]):
            return None
        return algo, m["hash"], m["name"]
    if m := _GNU_RE.match(line):
        algo_by_len = _BY_LENGTH.get(len(m["hash"]))
        if algo_by_len is None:
            return None
        name = _unescape_gnu(m["name"]) if line.startswith("\\") else m["name"]
        return algo_by_len, m["hash"], name
    return None


def _basename(name: str) -> str:
    return name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def parse_sums(text: str, filename: str, *, source: str = "the SUMS file") -> Checksum:
    """The checksum listed for *filename* (compared by basename) in a SUMS file's *text*.

    When several algorithms are listed for the file, the strongest wins. *source* (the
    SUMS URL, already redacted) only appears in the error when the file is not listed.
    """
    want = _basename(filename)
    found: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parsed = _parse_line(line)
        if parsed is not None and _basename(parsed[2].strip()) == want:
            found.setdefault(parsed[0], parsed[1])
    for algo in ALGORITHMS:
        if algo in found:
            return Checksum(algo, found[algo])
    raise ChecksumError(f"no checksum for {want} in {source}",
                        hint="check that checksum-url: lists the file named at the end of url:")


def file_digest(path: Path, algo: str, progress: Callable[[int, int], None] | None = None) -> str:
    """Hex digest of *path* with a checksum algorithm a user named; *progress* gets (bytes done, total)."""
    if algo not in ALGORITHMS:
        raise UsageError(f"unknown checksum algorithm {algo!r} (use one of {', '.join(ALGORITHMS)})")
    total = os.stat(path).st_size
    done = [0]

    def step(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0], total)

    return files.file_digest(path, algo, step)
