"""Which package mirror a bootstrap uses, and how old its contents are.

The host's own apt configuration is the best default: it is the mirror (or proxy,
or internal snapshot) this machine is known to reach. ``apt-get indextargets``
reports it for both ``sources.list`` and deb822 ``.sources`` files, so nothing
here parses apt's configuration formats itself.

The ``Date:`` of a suite's ``Release`` file says when the mirror's contents last
changed; it goes into the bootstrap cache key so a cached image is rebuilt when
the archive moves on, and reused while it has not.
"""

from __future__ import annotations

import datetime as dt
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO

from .. import proc
from ..errors import ProcessError

__all__ = [
    "HostMirrors",
    "detect_host_mirrors",
    "parse_indextargets",
    "parse_release_date",
    "release_date",
]

log = logging.getLogger("imgsmith.source")

INDEXTARGETS_FORMAT = "$(REPO_URI)\t$(RELEASE)\t$(TARGET_OF)\t$(ORIGIN)"
# Suites that ride along a release but are not the release itself.
_POCKETS = ("-security", "-updates", "-backports", "-proposed")

Runner = Callable[[Sequence[str]], str]
Opener = Callable[[str, float], IO[bytes]]


@dataclass(frozen=True)
class HostMirrors:
    """Base URLs (no trailing slash) of the host's archive and security mirror for one distribution."""

    archive: str | None = None
    security: str | None = None


def _belongs_to(distro: str, uri: str, origin: str) -> bool:
    """Does a source line serve *distro*? Trust the Release file's Origin, else the URL."""
    if origin:
        return origin.strip().lower() == distro
    return distro in uri.lower()


def parse_indextargets(text: str, distro: str) -> HostMirrors:
    """Pick *distro*'s archive and security mirror from ``apt-get indextargets`` lines.

    Lines are ``REPO_URI<TAB>RELEASE<TAB>TARGET_OF<TAB>ORIGIN`` (see
    :data:`INDEXTARGETS_FORMAT`); only binary (``deb``) targets count. The first
    plain suite gives the archive, the first ``-security`` suite the security mirror.
    """
    archive: str | None = None
    security: str | None = None
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) < 3:
            continue
        uri, release, target = fields[0].strip(), fields[1].strip(), fields[2].strip()
        origin = fields[3] if len(fields) > 3 else ""
        if target != "deb" or not uri.startswith(("http://", "https://", "file:/")):
            continue
        if not _belongs_to(distro, uri, origin):
            continue
        if release.endswith("-security"):
            security = security or uri.rstrip("/")
        elif not release.endswith(_POCKETS) and "/" not in release:
            archive = archive or uri.rstrip("/")
    return HostMirrors(archive, security)


def _run_text(argv: Sequence[str]) -> str:
    return proc.run(argv).stdout


def detect_host_mirrors(distro: str, runner: Runner = _run_text) -> HostMirrors:
    """The host's mirrors for *distro*, or empty when apt is absent or has none for it."""
    try:
        text = runner(["apt-get", "indextargets", "--format", INDEXTARGETS_FORMAT])
    except ProcessError as exc:
        log.info("cannot read the host's apt sources (%s); using the distribution's default mirror", exc)
        return HostMirrors()
    found = parse_indextargets(text, distro)
    log.debug("host mirrors for %s: %s", distro, found)
    return found


def parse_release_date(head: bytes) -> str | None:
    """The ``Date:`` field of a Release file, normalised to ISO 8601 UTC, or None."""
    for raw in head.decode("utf-8", "replace").splitlines():
        if raw.startswith("Date:"):
            value = raw.partition(":")[2].strip()
            try:
                stamp = dt.datetime.strptime(value, "%a, %d %b %Y %H:%M:%S %Z")
            except ValueError:
                return value or None
            return stamp.replace(tzinfo=dt.UTC).isoformat()
        if not raw.strip():  # the Release header paragraph ended without a Date
            return None
    return None


def _urlopen(url: str, timeout: float) -> IO[bytes]:
    if not url.startswith(("http://", "https://", "file:/")):
        raise ValueError(f"unsupported mirror URL scheme: {url}")
    response: IO[bytes] = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - scheme checked above
    return response


def release_date(mirror: str, suite: str, *, opener: Opener = _urlopen, timeout: float = 15.0,
                 today: Callable[[], dt.date] = dt.date.today) -> str:
    """When *suite* on *mirror* last changed; today's date when the Release file is unreachable.

    Only the head of the file is read: ``Date:`` is in its first lines, while the
    whole file (the checksum list) runs to hundreds of kilobytes.
    """
    url = f"{mirror.rstrip('/')}/dists/{suite}/Release"
    try:
        with opener(url, timeout) as response:
            head = response.read(8192)
    except (OSError, ValueError, urllib.error.URLError) as exc:
        fallback = today().isoformat()
        log.warning("cannot read %s (%s); keying the bootstrap cache on today's date %s", url, exc, fallback)
        return fallback
    date = parse_release_date(head)
    if date is None:
        fallback = today().isoformat()
        log.warning("%s has no Date field; keying the bootstrap cache on today's date %s", url, fallback)
        return fallback
    return date
