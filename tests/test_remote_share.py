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


# --- missing ancestors: pulled in parallel, with progress, each blob checked -----------------------

@pytest.mark.guest
@ROOT_ONLY
def test_missing_layers_are_downloaded_in_parallel_with_progress_before_the_layers_run(
        farm: tuple[Host, Host, str, str], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from imgsmith.cache.config import load_settings
    from imgsmith.definition import load_definition
    from imgsmith.events import Event, Progress, StageStarted
    from imgsmith.pipeline import BuildOptions, build
    a, b, _, _ = farm
    cold, _ = a.build("out")
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("IMGSMITH_CACHE", b.env["IMGSMITH_CACHE"])
    threads: dict[str, set[str]] = {}
    events: list[Event] = []

    def sink(event: Event) -> None:
        events.append(event)
        if isinstance(event, Progress) and event.label.startswith("layer"):
            threads.setdefault(event.label, set()).add(threading.current_thread().name)

    settings = load_settings(env=b.env)
    assert settings is not None
    options = BuildOptions(output_dir=b.root / "out", cache_dir=b.root / "cache", remote=settings, trust_image=True)
    result = build(load_definition(b.project / "farm.yaml"), options, sink)
    assert result.sessions == 0
    stages = [str(e) for e in events if isinstance(e, StageStarted)]
    assert stages[0] == f"pull: 3 layer(s) in parallel from {settings.url}", stages  # a file: source has no stage
    assert [s.split(":")[0] for s in stages if s.startswith("layer")] == ["layer 1/3 base-config", "layer 2/3 app",
                                                                         "layer 3/3 last"]
    assert all(s.endswith(f"pulled from {settings.url}") for s in stages if s.startswith("layer")), stages
    # one progress row per layer, each counted in bytes up to the entry's size, off the main thread
    last = {e.label: e for e in events if isinstance(e, Progress) and e.label.startswith("layer")}
    assert sorted(last) == ["layer 1 base-config", "layer 2 app", "layer 3 last"]
    assert all(p.done == p.total and p.total and p.pct == 100.0 for p in last.values()), last
    assert "MainThread" not in set().union(*threads.values()), threads  # the downloads run in the pool
    assert _outputs({"outputs": [{"path": os.fspath(r.path)} for r in result.outputs]}) == _outputs(cold)
    assert not list((b.root / "cache" / "layers").glob(".pull-*"))  # every prefetched blob was adopted
