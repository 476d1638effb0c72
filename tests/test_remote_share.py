"""The remote cache beyond layers: base images, parallel pulls, killed pushes, unsigned entries,
pull-only hosts, remote pruning and a team's shared secret key.

Same servers and "hosts" as tests/test_remote_cache.py (two processes with their own
IMGSMITH_CACHE and config file, moto's S3 and Debian's docker-registry on 127.0.0.1),
same phony fixture guest and chroot backend, so each build costs seconds.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guests import guest_image, read_files, sha256_file  # noqa: F401 - read_files: later tests
from test_remote_cache import (  # noqa: F401 - fixtures used by name
    DEFINITION,
    ROOT_ONLY,
    S3_ENV,
    Host,
    _bucket,
    _keys,
    _outputs,
    _warnings,
    farm,
    moto_server,
    project,
    registry,
)

# --- a base image served over HTTP -----------------------------------------------------------------


class _Counting(http.server.SimpleHTTPRequestHandler):
    """Serves the directory it is given and records each path asked for (the test reads the list)."""

    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _http(directory: Path) -> Iterator[tuple[str, list[str]]]:
    """A plain HTTP server on 127.0.0.1 serving *directory*; yields (base URL, paths requested)."""
    seen: list[str] = []

    class Handler(_Counting):
        requests = seen

    def make(*args: Any) -> _Counting:
        return Handler(*args, directory=os.fspath(directory))

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.guest
@ROOT_ONLY
def test_a_downloaded_base_image_is_shared_so_host_b_does_not_download_it(
        farm: tuple[Host, Host, str, str], tmp_path: Path) -> None:  # noqa: F811 - the imported fixture
    a, b, _, _ = farm
    served = tmp_path / "www"
    served.mkdir()
    shutil.copy(guest_image("debian12"), served / "debian12.qcow2")
    checksum = "sha256:" + sha256_file(served / "debian12.qcow2")
    with _http(served) as (url, seen):
        text = DEFINITION.format(last="one").replace(
            "source: {file: base.qcow2}", f"source: {{url: '{url}/debian12.qcow2', checksum: '{checksum}'}}")
        (a.project / "url.yaml").write_text(text)
        cold, _ = a.build("out", definition="url.yaml")
        assert seen == ["/debian12.qcow2"] and cold["sessions"] == 3
    # the server is gone: host B can only have the base image from the remote
    r = a.run("cache", "ls", "--remote", "--json")
    listed = json.loads(r.stdout)["layers"]
    bases = [x for x in listed if x["kind"] == "base"]
    assert len(listed) == 4 and len(bases) == 1 and bases[0]["base"] == checksum, listed
    warm, stderr = b.build("out", definition="url.yaml")
    assert warm["sessions"] == 0 and not _warnings(stderr), stderr
    assert _outputs(warm) == _outputs(cold)
    pulled = list((b.root / "cache" / "base").glob("sha256-*/debian12.qcow2"))
    assert len(pulled) == 1 and sha256_file(pulled[0]) == checksum[7:]
    r = b.run("cache", "ls", "--remote")
    assert f"base {url}/debian12.qcow2" in r.stdout, r.stdout
