"""Resolve a definition's ``file:`` or ``url:`` source to a verified base image on the host.

Downloads land in the base cache, keyed by checksum and shared by every definition::

    CACHE/base/<algo>-<hexdigest>/<filename>     the verified image (read-only) and meta.json
    CACHE/base/.tmp-<algo>-<hexdigest>/          a download in progress; its .part resumes
    CACHE/base/.locks/<algo>-<hexdigest>.lock    one downloader per checksum

An image enters the cache only verified, by one directory rename, so a present entry
is trusted without hashing again. A mismatch deletes the download entirely; a network
failure keeps the ``.part`` so the next build resumes it. Layers built on a cached
image name it by absolute path, so the base cache must not be moved (see cache/store.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..disk import qemuimg
from ..errors import ChecksumError, ImageError, ImgsmithError, UsageError
from ..host.files import atomic_write, file_lock, fsync_dir, fsync_file
from .checksum import Checksum, file_digest, parse_inline, parse_sums
from .fetch import check_url, download, fetch_text, redact_url

__all__ = ["BaseImage", "BaseProgress", "CachedBase", "Fill", "cached_bases", "cached_download", "expected_checksum",
           "resolve_file", "resolve_url"]

log = logging.getLogger("imgsmith.source")

BaseProgress = Callable[[str, int, int | None], None]
"""Called with (phase, bytes done, total or None); phase is ``"download"`` or ``"verify"``."""

_META = "meta.json"


@dataclass(frozen=True)
class BaseImage:
    """A base image ready to build on.

    ``checksum`` is the one verified against when ``verified``; for a local file given
    without a checksum it is the file's sha256, computed so the layer cache can key on
    the content (an edited base file must not reuse layers built on the old one).
    ``origin`` is the URL (credentials redacted) or the file's absolute path.
    """

    path: Path
    format: str
    checksum: Checksum | None
    origin: str
    verified: bool

    def to_json(self) -> dict[str, Any]:
        """Plain data for the build manifest (never a secret: the origin is redacted)."""
        return {"path": os.fspath(self.path), "format": self.format,
                "checksum": str(self.checksum) if self.checksum else None,
                "origin": self.origin, "verified": self.verified}


@dataclass(frozen=True)
class CachedBase:
    """One entry of the base cache, for ``imgsmith cache ls``."""

    path: Path
    checksum: str
    origin: str
    size: int
    fetched: float


def _as_checksum(value: Checksum | str | None) -> Checksum | None:
    return parse_inline(value) if isinstance(value, str) else value


def _phase(progress: BaseProgress | None, phase: str) -> Callable[[int, int | None], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(phase, done, total)


def _image_format(path: Path, fmt: str | None, *, trusted_backing: bool) -> str:
    """*fmt* checked against the file (or probed); a downloaded image may not name a backing file.

    A qcow2 from the network with a backing file would make qemu read a host path of
    the publisher's choosing into our image.
    """
    info = qemuimg.open_image(path, fmt)
    fmt = info.format
    if info.backing_filename and not trusted_backing:
        raise ImageError(f"{path}: the downloaded image has a backing file ({info.backing_filename}); "
                         "refusing to use it")
    return fmt


def resolve_file(path: Path, checksum: Checksum | str | None, *, fmt: str | None = None,
                 progress: BaseProgress | None = None) -> BaseImage:
    """A local base image, verified when *checksum* is given (ChecksumError on a mismatch).

    The file is used in place, never copied: layers reference it by absolute path.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ImageError(f"{p}: no such disk image" if not p.exists() else f"{p}: not a regular file")
    p = p.resolve()
    expected = _as_checksum(checksum)
    algo = expected.algo if expected else "sha256"
    actual = file_digest(p, algo, _phase(progress, "verify"))
    if expected is not None and actual != expected.hexdigest:
        raise ChecksumError(f"checksum mismatch for {p}: expected {expected}, got {algo}:{actual}",
                            hint="the file changed, or the checksum in the definition is wrong")
    image_fmt = _image_format(p, fmt, trusted_backing=True)
    return BaseImage(p, image_fmt, expected or Checksum(algo, actual), os.fspath(p), expected is not None)


def _url_filename(url: str) -> str:
    """The file name at the end of the URL's path (decoded), which also names the cached file."""
    name = unquote(urlsplit(url).path).rsplit("/", 1)[-1]
    if not name or name in (".", "..") or "\0" in name:
        raise UsageError(f"URL {redact_url(url)!r} does not end in a file name")
    return name


def _expected_checksum(url: str, name: str, checksum: Checksum | str | None, checksum_url: str | None,
                       opener: urllib.request.OpenerDirector | None) -> Checksum:
    """The checksum the download must match: inline, or looked up in a freshly fetched SUMS file."""
    if checksum is not None and checksum_url:
        raise UsageError("a URL source takes checksum: or checksum-url:, not both")
    inline = _as_checksum(checksum)
    if inline is not None:
        return inline
    if not checksum_url:
        raise UsageError(f"a URL source needs checksum: or checksum-url: ({redact_url(url)})",
                         hint="an unverified download could be anything; copy the checksum from the "
                              "distribution's SUMS file, or point checksum-url: at it")
    check_url(checksum_url)
    return parse_sums(fetch_text(checksum_url, opener=opener), name, source=redact_url(checksum_url))


def expected_checksum(url: str, checksum: Checksum | str | None, checksum_url: str | None) -> Checksum:
    """The checksum a URL source's image must match, without fetching the image (a build's plan keys on it).

    With ``checksum-url`` this reads the SUMS file, which is small; with an inline
    checksum it makes no connection at all.
    """
    check_url(url)
    return _expected_checksum(url, _url_filename(url), checksum, checksum_url, None)


def _cached_file(entry: Path) -> Path | None:
    """The verified image in a published base-cache *entry*, whatever URL name it was fetched under."""
    try:
        meta = json.loads((entry / _META).read_text(encoding="utf-8"))
        found = entry / str(meta["filename"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found if found.is_file() else None


def cached_download(cache_dir: Path, checksum: str) -> Path | None:
    """The verified download cached under *cache_dir* for *checksum* (``ALGO:HEX``), or None; reads nothing else."""
    algo, _, hexdigest = checksum.partition(":")
    return _cached_file(cache_dir / "base" / f"{algo}-{hexdigest}") if hexdigest else None


Fill = Callable[[Path, Checksum], bool]
"""Puts a copy of the image, already checked against the checksum, at the path (True), or does nothing (False).

How a build farm's remote cache stands in for the download (sharing.py)."""


def _fetch_into_cache(url: str, expected: Checksum, name: str, entry: Path, *,
                      progress: BaseProgress | None, opener: urllib.request.OpenerDirector | None,
                      sleep: Callable[[float], None], fill: Fill | None = None) -> Path:
    """Download to ``.tmp-<entry>``, verify, then publish by renaming the directory to *entry*.

    Called with the entry's lock held. Network failures keep the part for resuming;
    a mismatch removes everything. *fill*, when it places the image, replaces the
    download (and its verification: fill checks against *expected* itself).
    """
    shown = redact_url(url)
    tmp = entry.with_name(f".tmp-{entry.name}")
    tmp.mkdir(parents=True, exist_ok=True)
    target = tmp / name
    if not target.is_file() and fill is not None and fill(target, expected):
        return _publish_entry(tmp, target, entry, {"origin": shown, "filename": name, "checksum": str(expected),
                                                   "fetched": time.time(), "size": target.stat().st_size})
    if not target.is_file():
        try:
            download(url, target, progress=_phase(progress, "download"), opener=opener, sleep=sleep)
        except ImgsmithError:
            if not any(tmp.iterdir()):
                tmp.rmdir()
            raise
    actual = file_digest(target, expected.algo, _phase(progress, "verify"))
    if actual != expected.hexdigest:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ChecksumError(f"checksum mismatch for {shown}: expected {expected}, got {expected.algo}:{actual}",
                            hint="the download was discarded; if the image was updated upstream, update the "
                                 "checksum (or use checksum-url:)")
    return _publish_entry(tmp, target, entry, {"origin": shown, "filename": name, "checksum": str(expected),
                                               "fetched": time.time(), "size": target.stat().st_size})


def _publish_entry(tmp: Path, target: Path, entry: Path, meta: dict[str, Any]) -> Path:
    """Make *tmp* (holding the verified *target*) the base-cache *entry*: read-only image, meta.json, one rename."""
    for leftover in tmp.iterdir():
        if leftover != target:
            leftover.unlink()
    if entry.exists():  # an entry without a usable meta.json (damaged by hand): we hold its lock
        shutil.rmtree(entry)
    os.chmod(target, 0o444)  # layers back onto it: guard against accidental writes
    fsync_file(target)
    atomic_write(tmp / _META, json.dumps(meta, indent=2) + "\n")  # fsyncs tmp's entries too
    os.rename(tmp, entry)
    fsync_dir(entry.parent)
    log.info("cached %s as %s", meta["origin"], entry / target.name)
    return entry / target.name


def resolve_url(url: str, checksum: Checksum | str | None, *, checksum_url: str | None, cache_dir: Path,
                progress: BaseProgress | None = None, fmt: str | None = None,
                opener: urllib.request.OpenerDirector | None = None,
                sleep: Callable[[float], None] = time.sleep, fill: Fill | None = None) -> BaseImage:
    """A downloaded base image from the base cache under *cache_dir*, fetching it if absent.

    The SUMS file (*checksum_url*) is fetched on every call, so a re-published image is
    noticed; the image itself only when no verified copy with that checksum is cached
    (and *fill*, a remote cache, does not have it). A lock per checksum makes concurrent
    builds download it once.
    """
    check_url(url)
    name = _url_filename(url)
    expected = _expected_checksum(url, name, checksum, checksum_url, opener)
    base_dir = cache_dir / "base"
    entry = base_dir / f"{expected.algo}-{expected.hexdigest}"
    path = _cached_file(entry)
    if path is None:
        with file_lock(base_dir / ".locks" / f"{entry.name}.lock"):
            path = _cached_file(entry)
            if path is None:
                path = _fetch_into_cache(url, expected, name, entry, progress=progress, opener=opener,
                                         sleep=sleep, fill=fill)
    else:
        log.info("%s: using the cached copy %s", redact_url(url), path)
    image_fmt = _image_format(path, fmt, trusted_backing=False)
    return BaseImage(path, image_fmt, expected, redact_url(url), True)


def cached_bases(cache_dir: Path) -> list[CachedBase]:
    """The verified images in the base cache under *cache_dir*, oldest first."""
    base_dir = cache_dir / "base"
    out: list[CachedBase] = []
    if not base_dir.is_dir():
        return out
    for entry in base_dir.iterdir():
        path = None if entry.name.startswith(".") else _cached_file(entry)
        if path is None:
            continue
        try:
            meta = json.loads((entry / _META).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        out.append(CachedBase(path, str(meta.get("checksum", "")), str(meta.get("origin", "")),
                              path.stat().st_blocks * 512, float(meta.get("fetched", 0.0))))
    out.sort(key=lambda b: b.fetched)
    return out
