"""HTTP(S) downloads that resume, retry, and say plainly why they failed.

Cloud images are hundreds of megabytes fetched over links that drop, so a download
goes to ``DEST.part`` first and a retry asks for the rest with a ``Range`` request:
a ``206`` reply is appended, a ``200`` (server ignores ranges) restarts from zero.
Connection errors, short reads (fewer bytes than ``Content-Length``), 5xx and
408/425/429 are retried with exponential backoff; an attempt that made progress
resets the count and retries at once, so a flaky but working link always finishes.
Other 4xx are final and raise :class:`DownloadError` (``HTTP 404 for URL``). Only
a complete file is renamed to DEST; checking its content is the caller's job.

URLs may carry ``user:password@``: the credentials become a Basic ``Authorization``
header that is never forwarded on a redirect, and every log line and error shows the
URL through :func:`redact_url`, which also masks signature/token query parameters.
"""

from __future__ import annotations

import base64
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

from .. import __version__
from ..errors import ImgsmithError, UsageError
from ..host.files import fsync_dir, fsync_file

__all__ = ["DownloadError", "ProgressFn", "check_url", "download", "fetch_text", "redact_url"]

log = logging.getLogger("imgsmith.source")

ProgressFn = Callable[[int, int | None], None]
"""Called with (bytes so far, total bytes or None when the server does not say)."""

_CHUNK = 1 << 20
_RETRY_STATUS = frozenset({408, 425, 429})
_MAX_TEXT = 16 << 20
_SECRET_PARAM = re.compile(r"sig|token|secret|passw|credential|key|auth", re.IGNORECASE)
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$")
_HEADERS = {"User-Agent": f"imgsmith/{__version__}", "Accept-Encoding": "identity"}


class DownloadError(ImgsmithError):
    """A download failed for good: an HTTP error status, or the retries ran out (``status`` None)."""

    def __init__(self, message: str, *, status: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class _Body(Protocol):
    def read1(self, n: int = -1, /) -> bytes: ...


class _Transient(Exception):
    """A failure worth retrying: connection trouble, a short read, a 5xx."""


def redact_url(url: str) -> str:
    """*url* fit for logs: ``user:password@`` becomes ``***@``, secret-looking query values ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"//[^/@]*@", "//***@", url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    items = []
    for item in parts.query.split("&") if parts.query else []:
        name, eq, _ = item.partition("=")
        items.append(f"{name}=***" if eq and _SECRET_PARAM.search(unquote(name)) else item)
    return urlunsplit((parts.scheme, netloc, parts.path, "&".join(items), parts.fragment))


def check_url(url: str) -> None:
    """UsageError unless *url* is http(s): the only schemes a download may use."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise UsageError(f"unsupported URL {redact_url(url)!r}: only http:// and https:// can be downloaded",
                         hint="for a local image use a file: source")


def _default_opener() -> urllib.request.OpenerDirector:
    """urllib's HTTP(S) handlers only: a redirect to ftp:// or file:// fails instead of being followed."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(),
                    urllib.request.HTTPRedirectHandler(), urllib.request.HTTPDefaultErrorHandler(),
                    urllib.request.HTTPErrorProcessor(), urllib.request.UnknownHandler()):
        opener.add_handler(handler)
    return opener


def _request(url: str, headers: dict[str, str] | None = None) -> urllib.request.Request:
    """A GET for *url* with its userinfo turned into a Basic auth header that redirects do not carry."""
    parts = urlsplit(url)
    auth = None
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode("ascii")
        auth = f"Basic {token}"
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    req = urllib.request.Request(clean, headers={**_HEADERS, **(headers or {})})  # noqa: S310 - http(s) checked
    if auth is not None:
        req.add_unredirected_header("Authorization", auth)
    return req


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        reason = exc.reason
        return str(reason.strerror if isinstance(reason, OSError) and reason.strerror else reason)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _open(opener: urllib.request.OpenerDirector, req: urllib.request.Request, timeout: float, shown: str,
          allow: frozenset[int] = frozenset()) -> http.client.HTTPResponse | urllib.error.HTTPError:
    """Open *req*; transient failures raise _Transient, other HTTP errors DownloadError.

    An HTTPError whose status is in *allow* is returned (it is a response too), so the
    caller can read its headers.
    """
    try:
        resp: http.client.HTTPResponse = opener.open(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code in allow:
            return exc
        exc.close()
        if exc.code >= 500 or exc.code in _RETRY_STATUS:
            raise _Transient(f"HTTP {exc.code}") from exc
        hint = "check the URL; old releases often move to an archive or vault mirror" if exc.code == 404 else None
        raise DownloadError(f"HTTP {exc.code} for {shown}", status=exc.code, hint=hint) from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise _Transient(_describe(exc)) from exc
    return resp


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``(first byte, total)`` from a Content-Range header; None for parts it leaves out."""
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        return None, None
    first = int(m[1]) if m[1] is not None else None
    return first, (int(m[3]) if m[3] != "*" else None)


def _copy(resp: _Body, part: Path, offset: int, total: int | None,
          progress: ProgressFn | None) -> None:
    """Append the body to *part* (truncating first when *offset* is 0); short read → _Transient."""
    done = offset
    with open(part, "ab" if offset else "wb") as f:
        while True:
            try:
                chunk = resp.read1(_CHUNK)
            except (http.client.HTTPException, OSError) as exc:
                raise _Transient(f"connection lost after {done} bytes: {_describe(exc)}") from exc
            if not chunk:
                break
            try:
                f.write(chunk)
            except OSError as exc:
                raise DownloadError(f"cannot write {part}: {exc.strerror or exc}") from exc
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    if total is not None and done < total:
        raise _Transient(f"connection closed after {done} of {total} bytes")
    if total is not None and done > total:
        part.unlink()
        raise _Transient(f"server sent {done} bytes, more than the {total} it announced")


def _total(resp: http.client.HTTPResponse | urllib.error.HTTPError, offset: int) -> int | None:
    length = resp.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def _attempt(opener: urllib.request.OpenerDirector, url: str, part: Path, *, shown: str, timeout: float,
             progress: ProgressFn | None) -> None:
    """One GET, resuming *part* if it holds bytes already; returns when *part* is complete."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    resp = _open(opener, _request(url, headers), timeout, shown, allow=frozenset({416}) if offset else frozenset())
    with resp:
        status = resp.status
        if status == 416:
            # Nothing left to send: the part is complete if the server's size matches it.
            _, size = _content_range(resp.headers.get("Content-Range"))
            if size == offset:
                return
            part.unlink()
            raise _Transient("the server refused to resume; starting over")
        if status == 206:
            first, size = _content_range(resp.headers.get("Content-Range"))
            if first != offset:
                part.unlink()
                raise _Transient(f"the server resumed at byte {first}, not {offset}; starting over")
            log.info("%s: resuming at byte %d", shown, offset)
            _copy(resp, part, offset, size if size is not None else _total(resp, offset), progress)
        elif status == 200:
            if offset:
                log.info("%s: the server ignored the range request; starting over", shown)
            _copy(resp, part, 0, _total(resp, 0), progress)
        else:
            raise DownloadError(f"unexpected HTTP {status} for {shown}", status=status)


def _retrying(what: str, attempt: Callable[[], None], progressed: Callable[[], bool], *, retries: int,
              sleep: Callable[[float], None]) -> None:
    """Run *attempt* until it succeeds, backing off 1, 2, 4… s (max 30) between failed tries.

    An attempt after which *progressed* is true does not count against *retries* and is
    retried at once: the link works, it merely dropped.
    """
    failures = 0
    while True:
        try:
            attempt()
        except _Transient as exc:
            if progressed():
                failures = 0
                log.warning("%s: %s; resuming", what, exc)
                continue
            failures += 1
            if failures > retries:
                raise DownloadError(f"downloading {what} failed after {failures} attempts: {exc}") from exc
            delay = min(2.0 ** (failures - 1), 30.0)
            log.warning("%s: %s; retrying in %.0f s (%d of %d)", what, exc, delay, failures, retries)
            sleep(delay)
        else:
            return


def download(url: str, dest: Path, *, progress: ProgressFn | None = None, timeout: float = 30,
             retries: int = 4, opener: urllib.request.OpenerDirector | None = None,
             sleep: Callable[[float], None] = time.sleep) -> Path:
    """Download *url* to *dest* via ``dest.part``, resuming a part left by an earlier attempt.

    *timeout* bounds each socket operation, not the whole transfer. On failure the
    part is kept so the next call resumes it; the caller deletes it if it must not be.
    """
    check_url(url)
    shown = redact_url(url)
    opener = opener or _default_opener()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    before = [0]

    def attempt() -> None:
        before[0] = part.stat().st_size if part.exists() else 0
        _attempt(opener, url, part, shown=shown, timeout=timeout, progress=progress)

    def progressed() -> bool:
        return part.exists() and part.stat().st_size > before[0]

    log.info("downloading %s", shown)
    _retrying(shown, attempt, progressed, retries=retries, sleep=sleep)
    fsync_file(part)
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return dest


def fetch_text(url: str, *, timeout: float = 30, retries: int = 3,
               opener: urllib.request.OpenerDirector | None = None,
               sleep: Callable[[float], None] = time.sleep) -> str:
    """The body of a small text resource (a SUMS file) as str; at most 16 MiB, retried like a download."""
    check_url(url)
    shown = redact_url(url)
    opener = opener or _default_opener()
    body: list[bytes] = []

    def attempt() -> None:
        with _open(opener, _request(url), timeout, shown) as resp:
            length = resp.headers.get("Content-Length")
            try:
                # With a length, read() raises IncompleteRead on a short body instead of truncating.
                data = resp.read() if length and int(length) <= _MAX_TEXT else resp.read(_MAX_TEXT + 1)
            except (http.client.HTTPException, OSError, ValueError) as exc:
                raise _Transient(_describe(exc)) from exc
        if len(data) > _MAX_TEXT:
            raise DownloadError(f"{shown} is larger than {_MAX_TEXT >> 20} MiB; not a checksum file")
        body[:] = [data]

    log.info("fetching %s", shown)
    _retrying(shown, attempt, lambda: False, retries=retries, sleep=sleep)
    return body[0].decode("utf-8", "replace")
