"""Base-image sources: checksum specs and SUMS files, resumable downloads, the verified base cache.

HTTP is exercised against a real server on 127.0.0.1 (http.server in a thread) that
supports Range requests and can drop a connection mid-transfer, ignore ranges, fail
with a status, or redirect; no network and no appliance are needed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from imgsmith.errors import ChecksumError, ImageError, UsageError
from imgsmith.source.base import cached_bases, resolve_file, resolve_url
from imgsmith.source.checksum import Checksum, file_digest, parse_inline, parse_sums
from imgsmith.source.fetch import DownloadError, download, fetch_text, redact_url

MAX_REQUESTS = 200  # bound: a retry loop gone wrong gets 500s, not an endless test


# --- a small HTTP server -------------------------------------------------------------------------

@dataclass
class Served:
    """What the test server serves and what it saw. Mutate between requests to change behaviour."""

    files: dict[str, bytes] = field(default_factory=dict)
    drop_once: set[str] = field(default_factory=set)       # send half the body, then cut the connection
    ignore_range: set[str] = field(default_factory=set)    # answer 200 with the whole body
    statuses: dict[str, list[int]] = field(default_factory=dict)  # reply these statuses first, in order
    redirects: dict[str, str] = field(default_factory=dict)
    slow: bool = False                                     # trickle bodies so concurrent clients overlap
    requests: list[tuple[str, str | None, str | None]] = field(default_factory=list)  # path, Range, Authorization
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gets(self, path: str) -> list[tuple[str, str | None, str | None]]:
        return [r for r in self.requests if r[0] == path]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        state = self.server.state
        path = urlsplit(self.path).path
        with state.lock:
            state.requests.append((path, self.headers.get("Range"), self.headers.get("Authorization")))
            too_many = len(state.requests) > MAX_REQUESTS
            pending = state.statuses.get(path)
            status = pending.pop(0) if pending else None
        if too_many or status is not None:
            self._reply_empty(500 if too_many else status or 500)
            return
        if path in state.redirects:
            self._reply_empty(302, {"Location": state.redirects[path]})
            return
        data = state.files.get(path)
        if data is None:
            self._reply_empty(404)
            return
        self._send_body(state, path, data)

    def _reply_empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send_body(self, state: Served, path: str, data: bytes) -> None:
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m and path not in state.ignore_range:
            start = int(m[1])
            if start >= len(data):
                self._reply_empty(416, {"Content-Range": f"bytes */{len(data)}"})
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with state.lock:
            drop = path in state.drop_once
            state.drop_once.discard(path)
        if drop:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        step = 64 * 1024 if state.slow else len(body) or 1
        for i in range(0, len(body), step):
            self.wfile.write(body[i:i + step])
            if state.slow:
                time.sleep(0.01)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: Served


@pytest.fixture
def http() -> Iterator[tuple[str, Served]]:
    """(base URL, state) of a server on 127.0.0.1 for this test only."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.state = Served()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def no_sleep(_: float) -> None:
    pass


@pytest.fixture(scope="module")
def qcow2_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A small real qcow2 image, so format probing has something true to find."""
    path = tmp_path_factory.mktemp("img") / "tiny.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    return path.read_bytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- checksums -----------------------------------------------------------------------------------

def test_parse_inline_accepts_every_algorithm_and_normalises_case() -> None:
    digest = "AB" * 32
    assert parse_inline(f"sha256:{digest}") == Checksum("sha256", "ab" * 32)
    assert parse_inline(f"SHA512:{'0' * 128}").algo == "sha512"
    assert parse_inline(f"sha1:{'1' * 40}").algo == "sha1"
    assert parse_inline(f" md5:{'f' * 32} ") == Checksum("md5", "f" * 32)
    assert str(parse_inline(f"sha256:{digest}")) == f"sha256:{'ab' * 32}"


@pytest.mark.parametrize(("spec", "problem"), [
    ("ab" * 32, "expected ALGO:HEX"),
    (f"sha384:{'a' * 96}", "unknown algorithm 'sha384'"),
    (f"sha256:{'z' * 64}", "must be hexadecimal"),
    ("sha256:", "must be hexadecimal"),
    (f"sha256:{'a' * 63}", "64 hex digits, not 63"),
])
def test_parse_inline_names_the_problem(spec: str, problem: str) -> None:
    with pytest.raises(UsageError, match=re.escape(problem)):
        parse_inline(spec)


GNU_SUMS = (
    f"{'1' * 64}  CentOS-7-x86_64-GenericCloud-2003.qcow2\r\n"
    f"{'2' * 64} *CentOS-7-x86_64-GenericCloud-2009.qcow2\r\n"
    f"{'3' * 64}  CentOS-7-x86_64-GenericCloud-2009.qcow2.xz\r\n"
    "\r\n"
)


def test_parse_sums_gnu_with_binary_marker_crlf_and_other_files() -> None:
    cs = parse_sums(GNU_SUMS, "CentOS-7-x86_64-GenericCloud-2009.qcow2")
    assert cs == Checksum("sha256", "2" * 64)
    assert parse_sums(GNU_SUMS, "CentOS-7-x86_64-GenericCloud-2003.qcow2").hexdigest == "1" * 64


def test_parse_sums_matches_basenames_and_infers_algorithm_from_length() -> None:
    text = f"{'a' * 128}  ./images/debian-12-genericcloud-amd64.qcow2\n{'b' * 32}  other.img\n"
    assert parse_sums(text, "debian-12-genericcloud-amd64.qcow2") == Checksum("sha512", "a" * 128)
    assert parse_sums(text, "https://x/y/other.img") == Checksum("md5", "b" * 32)


def test_parse_sums_bsd_tags_clearsigned_and_openssl_spelling() -> None:
    text = (
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n"
        "# Fedora-Cloud-Base-39.x86_64.qcow2: 123 bytes\n"
        f"SHA256 (Fedora-Cloud-Base-39.x86_64.qcow2) = {'C' * 64}\n"
        f"SHA2-256(odd (name).img)= {'d' * 64}\n"
        "-----BEGIN PGP SIGNATURE-----\nabcdef\n-----END PGP SIGNATURE-----\n"
    )
    assert parse_sums(text, "Fedora-Cloud-Base-39.x86_64.qcow2") == Checksum("sha256", "c" * 64)
    assert parse_sums(text, "odd (name).img") == Checksum("sha256", "d" * 64)


def test_parse_sums_prefers_the_strongest_listed_algorithm() -> None:
    text = f"MD5 (img.qcow2) = {'e' * 32}\nSHA512 (img.qcow2) = {'f' * 128}\nSHA1 (img.qcow2) = {'0' * 40}\n"
    assert parse_sums(text, "img.qcow2").algo == "sha512"


def test_parse_sums_missing_entry_names_file_and_source() -> None:
    with pytest.raises(ChecksumError, match=r"^no checksum for missing\.qcow2 in https://h/SUMS$"):
        parse_sums(GNU_SUMS, "missing.qcow2", source="https://h/SUMS")


def test_parse_sums_escaped_gnu_name() -> None:
    # coreutils escapes a newline in a name as \n and marks the line with a leading backslash
    text = f"\\{'4' * 64}  two\\nlines.img\n{'5' * 64}  two\n"
    assert parse_sums(text, "two\nlines.img").hexdigest == "4" * 64


def test_file_digest_reports_progress(tmp_path: Path) -> None:
    data = os.urandom(9 * 1024 * 1024 + 5)
    (tmp_path / "f").write_bytes(data)
    seen: list[tuple[int, int]] = []
    assert file_digest(tmp_path / "f", "sha256", lambda d, t: seen.append((d, t))) == sha256(data)
    assert seen[-1] == (len(data), len(data)) and len(seen) == 10  # 1 MiB chunks
    assert file_digest(tmp_path / "f", "md5") == hashlib.md5(data).hexdigest()


# --- downloads -----------------------------------------------------------------------------------

def test_redact_url_hides_userinfo_and_signatures() -> None:
    url = "https://bob:s3cret@example.com/a/img.qcow2?X-Amz-Signature=abc&v=2&token=t0k"
    shown = redact_url(url)
    assert "s3cret" not in shown and "bob" not in shown and "abc" not in shown and "t0k" not in shown
    assert shown == "https://***@example.com/a/img.qcow2?X-Amz-Signature=***&v=2&token=***"
    assert redact_url("http://h/x") == "http://h/x"


def test_download_plain_with_progress(http: tuple[str, Served], tmp_path: Path) -> None:
    base, state = http
    data = os.urandom(2_500_000)
    state.files["/img"] = data
    seen: list[tuple[int, int | None]] = []
    out = download(f"{base}/img", tmp_path / "img", progress=lambda d, t: seen.append((d, t)))
    assert out.read_bytes() == data
    assert not (tmp_path / "img.part").exists()
    assert seen[-1] == (len(data), len(data))


def test_download_resumes_after_dropped_connection(http: tuple[str, Served], tmp_path: Path) -> None:
    base, state = http
    data = os.urandom(3_000_000)
    state.files["/img"] = data
    state.drop_once.add("/img")
    download(f"{base}/img", tmp_path / "img", sleep=no_sleep)
    assert (tmp_path / "img").read_bytes() == data
    gets = state.gets("/img")
    assert len(gets) == 2
    assert gets[0][1] is None
    assert gets[1][1] == f"bytes={len(data) // 2}-"  # continued from the partial


def test_download_restarts_when_server_ignores_range(http: tuple[str, Served], tmp_path: Path) -> None:
    base, state = http
    data = os.urandom(100_000)
    state.files["/img"] = data
    state.ignore_range.add("/img")
    (tmp_path / "img.part").write_bytes(b"stale garbage")
    download(f"{base}/img", tmp_path / "img", sleep=no_sleep)
    assert (tmp_path / "img").read_bytes() == data
    assert state.gets("/img")[0][1] == "bytes=13-"


def test_download_of_a_complete_part_accepts_416(http: tuple[str, Served], tmp_path: Path) -> None:
    base, state = http
    state.files["/img"] = b"0123456789"
    (tmp_path / "img.part").write_bytes(b"0123456789")
    download(f"{base}/img", tmp_path / "img", sleep=no_sleep)
    assert (tmp_path / "img").read_bytes() == b"0123456789"


def test_download_404_is_final_and_clear(http: tuple[str, Served], tmp_path: Path) -> None:
    base, state = http
    with pytest.raises(DownloadError, match=rf"^HTTP 404 for {re.escape(base)}/nope\.qcow2$") as exc:
        download(f"{base}/nope.qcow2", tmp_path / "x", sleep=no_sleep)
    assert exc.value.status == 404
    assert len(state.requests) == 1


def test_download_retries_5xx_with_backoff(http: tuple[str, Served], tmp_path: Path) -> None:
    base, state = http
    state.files["/img"] = b"payload"
    state.statuses["/img"] = [503, 502]
    delays: list[float] = []
    download(f"{base}/img", tmp_path / "img", sleep=delays.append)
    assert (tmp_path / "img").read_bytes() == b"payload"
    assert delays == [1.0, 2.0]


def test_download_gives_up_after_retries(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    delays: list[float] = []
    with pytest.raises(DownloadError, match=r"failed after 3 attempts"):
        download(f"http://127.0.0.1:{port}/img", tmp_path / "img", retries=2, sleep=delays.append)
    assert delays == [1.0, 2.0]


def test_download_sends_credentials_but_never_shows_them(http: tuple[str, Served], tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    base, state = http
    state.files["/img"] = b"x"
    host = base.removeprefix("http://")
    caplog.set_level(logging.DEBUG, logger="imgsmith")
    download(f"http://bob:s3cret@{host}/img", tmp_path / "img")
    assert state.requests[0][2] == "Basic Ym9iOnMzY3JldA=="
    with pytest.raises(DownloadError) as exc:
        download(f"http://bob:s3cret@{host}/missing", tmp_path / "m")
    assert "s3cret" not in str(exc.value) and "s3cret" not in caplog.text
    assert "***@" in str(exc.value)


def test_credentials_do_not_follow_a_redirect(http: tuple[str, Served], tmp_path: Path) -> None:
    base, state = http
    state.files["/real"] = b"data"
    state.redirects["/img"] = f"{base}/real"
    host = base.removeprefix("http://")
    download(f"http://bob:pw@{host}/img", tmp_path / "img")
    assert (tmp_path / "img").read_bytes() == b"data"
    assert state.gets("/img")[0][2] is not None
    assert state.gets("/real")[0][2] is None


def test_download_refuses_other_schemes(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="only http:// and https://"):
        download("file:///etc/passwd", tmp_path / "x")


def test_fetch_text(http: tuple[str, Served]) -> None:
    base, state = http
    state.files["/SUMS"] = GNU_SUMS.encode()
    state.statuses["/SUMS"] = [500]
    assert fetch_text(f"{base}/SUMS", sleep=no_sleep) == GNU_SUMS


# --- resolving sources ---------------------------------------------------------------------------

IMG = "CentOS-7-x86_64-GenericCloud-2009.qcow2"


def test_resolve_url_downloads_verifies_and_caches(http: tuple[str, Served], tmp_path: Path,
                                                  qcow2_bytes: bytes) -> None:
    base, state = http
    state.files[f"/c7/{IMG}"] = qcow2_bytes
    digest = sha256(qcow2_bytes)
    phases: set[str] = set()
    img = resolve_url(f"{base}/c7/{IMG}", f"sha256:{digest}", checksum_url=None, cache_dir=tmp_path,
                      progress=lambda phase, d, t: phases.add(phase))
    assert img.path == tmp_path / "base" / f"sha256-{digest}" / IMG
    assert img.path.read_bytes() == qcow2_bytes
    assert (img.format, img.verified, img.origin) == ("qcow2", True, f"{base}/c7/{IMG}")
    assert img.checksum == Checksum("sha256", digest)
    assert phases == {"download", "verify"}
    assert [p.name for p in (tmp_path / "base").iterdir() if p.name != ".locks"] == [f"sha256-{digest}"]
    # A second resolve (another definition, another mirror name) makes no request at all.
    n = len(state.requests)
    again = resolve_url(f"{base}/mirror/{IMG}", Checksum("sha256", digest), checksum_url=None,
                        cache_dir=tmp_path)
    assert again.path == img.path and len(state.requests) == n
    assert [b.checksum for b in cached_bases(tmp_path)] == [f"sha256:{digest}"]


def test_resolve_url_with_sums_fetches_sums_each_time_image_once(http: tuple[str, Served], tmp_path: Path,
                                                                  qcow2_bytes: bytes) -> None:
    base, state = http
    state.files[f"/c7/{IMG}"] = qcow2_bytes
    state.files["/c7/sha256sum.txt"] = (f"{'0' * 64}  other.qcow2\n{sha256(qcow2_bytes)} *{IMG}\n").encode()
    for _ in range(2):
        img = resolve_url(f"{base}/c7/{IMG}", None, checksum_url=f"{base}/c7/sha256sum.txt", cache_dir=tmp_path)
        assert img.verified and img.checksum == Checksum("sha256", sha256(qcow2_bytes))
    assert len(state.gets("/c7/sha256sum.txt")) == 2
    assert len(state.gets(f"/c7/{IMG}")) == 1


def test_resolve_url_mismatch_leaves_nothing_cached(http: tuple[str, Served], tmp_path: Path,
                                                    qcow2_bytes: bytes) -> None:
    base, state = http
    state.files[f"/{IMG}"] = qcow2_bytes
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as exc:
        resolve_url(f"{base}/{IMG}", f"sha256:{wrong}", checksum_url=None, cache_dir=tmp_path)
    assert exc.value.message == (f"checksum mismatch for {base}/{IMG}: expected sha256:{wrong}, "
                                 f"got sha256:{sha256(qcow2_bytes)}")
    assert exc.value.exit_code == 2
    leftovers = [p for p in (tmp_path / "base").rglob("*") if ".locks" not in p.parts]
    assert leftovers == []
    assert cached_bases(tmp_path) == []


def test_resolve_url_resumes_a_part_left_by_a_failed_build(http: tuple[str, Served], tmp_path: Path,
                                                           qcow2_bytes: bytes) -> None:
    base, state = http
    state.files[f"/{IMG}"] = qcow2_bytes
    digest = sha256(qcow2_bytes)
    state.statuses[f"/{IMG}"] = [503] * 10  # the network is down: the build fails, nothing is cached
    with pytest.raises(DownloadError):
        resolve_url(f"{base}/{IMG}", f"sha256:{digest}", checksum_url=None, cache_dir=tmp_path, sleep=no_sleep)
    assert cached_bases(tmp_path) == []
    tmp = tmp_path / "base" / f".tmp-sha256-{digest}"
    assert not tmp.exists()  # nothing was received, so no empty temp directory stays behind
    tmp.mkdir(parents=True)
    (tmp / f"{IMG}.part").write_bytes(qcow2_bytes[:70_000])  # as a dropped transfer leaves it
    state.statuses.clear()
    img = resolve_url(f"{base}/{IMG}", f"sha256:{digest}", checksum_url=None, cache_dir=tmp_path)
    assert img.path.read_bytes() == qcow2_bytes
    assert state.gets(f"/{IMG}")[-1][1] == "bytes=70000-"
    assert not tmp.exists()


def test_resolve_url_replaces_a_damaged_cache_entry(http: tuple[str, Served], tmp_path: Path,
                                                    qcow2_bytes: bytes) -> None:
    base, state = http
    state.files[f"/{IMG}"] = qcow2_bytes
    digest = sha256(qcow2_bytes)
    entry = tmp_path / "base" / f"sha256-{digest}"
    entry.mkdir(parents=True)
    (entry / IMG).write_bytes(b"truncated by hand, meta.json lost")
    img = resolve_url(f"{base}/{IMG}", f"sha256:{digest}", checksum_url=None, cache_dir=tmp_path)
    assert img.path == entry / IMG and img.path.read_bytes() == qcow2_bytes
    assert len(state.gets(f"/{IMG}")) == 1


def test_concurrent_resolves_download_once(http: tuple[str, Served], tmp_path: Path) -> None:
    base, state = http
    data = os.urandom(1_500_000)  # raw, trickled out slowly so the resolves overlap
    state.files["/big.img"] = data
    state.slow = True
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(resolve_url(f"{base}/big.img", f"sha256:{sha256(data)}", checksum_url=None,
                                       cache_dir=tmp_path, fmt="raw").path)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(set(results)) == 1 and len(results) == 4
    assert len(state.gets("/big.img")) == 1


def test_resolve_url_needs_a_checksum(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^a URL source needs checksum: or checksum-url:"):
        resolve_url("https://h/img.qcow2", None, checksum_url=None, cache_dir=tmp_path)
    with pytest.raises(UsageError, match="not both"):
        resolve_url("https://h/img.qcow2", f"sha256:{'a' * 64}", checksum_url="https://h/SUMS", cache_dir=tmp_path)
    with pytest.raises(UsageError, match="does not end in a file name"):
        resolve_url("https://h/dir/", f"sha256:{'a' * 64}", checksum_url=None, cache_dir=tmp_path)


def test_resolve_url_missing_from_sums(http: tuple[str, Served], tmp_path: Path) -> None:
    base, state = http
    state.files["/SUMS"] = GNU_SUMS.encode()
    with pytest.raises(ChecksumError, match=rf"^no checksum for {IMG}\.raw in {re.escape(base)}/SUMS$"):
        resolve_url(f"{base}/{IMG}.raw", None, checksum_url=f"{base}/SUMS", cache_dir=tmp_path)


def test_resolve_url_refuses_a_downloaded_image_with_a_backing_file(http: tuple[str, Served],
                                                                     tmp_path: Path) -> None:
    base, state = http
    evil = tmp_path / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", str(evil)],
                   check=True)
    state.files["/evil.qcow2"] = evil.read_bytes()
    with pytest.raises(ImageError, match="has a backing file"):
        resolve_url(f"{base}/evil.qcow2", f"sha256:{sha256(evil.read_bytes())}", checksum_url=None,
                    cache_dir=tmp_path / "cache", fmt="qcow2")


def test_resolve_file(tmp_path: Path, qcow2_bytes: bytes) -> None:
    path = tmp_path / "base.qcow2"
    path.write_bytes(qcow2_bytes)
    digest = sha256(qcow2_bytes)
    img = resolve_file(path, Checksum("sha256", digest))
    assert (img.path, img.format, img.verified, img.origin) == (path.resolve(), "qcow2", True, os.fspath(path))
    unverified = resolve_file(path, None)
    assert not unverified.verified and unverified.checksum == Checksum("sha256", digest)
    with pytest.raises(ChecksumError, match=rf"checksum mismatch for {re.escape(str(path))}: expected sha256:0+, "
                                            rf"got sha256:{digest}$"):
        resolve_file(path, f"sha256:{'0' * 64}")
    with pytest.raises(ImageError, match="no such disk image"):
        resolve_file(tmp_path / "missing.qcow2", None)
