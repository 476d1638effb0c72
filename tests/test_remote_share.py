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
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guests import guest_image, read_files, sha256_file
from test_remote_cache import (  # noqa: F401 - fixtures used by name
    DEFINITION,
    IMGSMITH,
    ROOT_ONLY,
    S3_ENV,
    VMDK,
    Host,
    _bucket,
    _keys,
    _made,
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
def _http(directory: Path, port: int = 0) -> Iterator[tuple[str, list[str]]]:
    """A plain HTTP server on 127.0.0.1 serving *directory*; yields (base URL, paths requested)."""
    seen: list[str] = []

    class Handler(_Counting):
        requests = seen

    def make(*args: Any) -> _Counting:
        return Handler(*args, directory=os.fspath(directory))

    http.server.ThreadingHTTPServer.allow_reuse_address = True
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), make)
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
        farm: tuple[Host, Host, str, str], tmp_path: Path, request: pytest.FixtureRequest,  # noqa: F811
) -> None:
    a, b, _, kind = farm
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
    assert len(listed) == 5 and len(bases) == 1 and bases[0]["base"] == checksum, listed  # 3 layers, the VMDK
    plan = b.run("build", "url.yaml", "-o", str(b.root / "out"), "--dry-run", "--trust-image")
    assert plan.returncode == 0 and "  base image: remote: will be pulled from the remote cache" in \
        plan.stdout.splitlines(), plan.stdout + plan.stderr
    warm, stderr = b.build("out", definition="url.yaml")
    assert warm["sessions"] == 0 and not _warnings(stderr), stderr
    assert _outputs(warm) == _outputs(cold)
    pulled = list((b.root / "cache" / "base").glob("sha256-*/debian12.qcow2"))
    assert len(pulled) == 1 and sha256_file(pulled[0]) == checksum[7:]
    r = b.run("cache", "ls", "--remote")
    assert f"base {url}/debian12.qcow2" in r.stdout, r.stdout
    # the remote's copy replaced by other bytes: refused in one line, downloaded instead
    from imgsmith.cache.backends import open_backend
    from imgsmith.cache.config import parse_remote_url
    from test_remote_cache import _replace_blob
    os.environ.update(S3_ENV)
    backend = open_backend(parse_remote_url(_remote_of(a)))
    evil = tmp_path / "evil.qcow2"
    evil.write_bytes(os.urandom(65536))
    storage = request.getfixturevalue("registry")[1] if kind == "oci" else None
    _replace_blob(backend, bases[0]["blob"], evil, storage)
    c = Host(tmp_path / "host-c", a.project, _remote_of(a), signing=None,
             trusted=list((tmp_path / "keys").glob("*.pub")))
    with _http(served, port=int(url.rsplit(":", 1)[1])) as (_, seen):
        third, stderr = c.build("out", definition="url.yaml")
        assert seen == ["/debian12.qcow2"]
    assert third["sessions"] == 0 and _outputs(third) == _outputs(cold)
    assert [line for line in stderr.splitlines() if "refused" in line] == [
        f"imgsmith: warning: base image {url}/debian12.qcow2: the remote copy is refused: its blob's sha256 is "
        f"{sha256_file(evil)[:16]}… instead of {bases[0]['blob'][7:23]}…; fetching it"], stderr


def _remote_of(host: Host) -> str:
    """The remote URL in a host's config file."""
    line = next(x for x in (host.root / "config.toml").read_text().splitlines() if x.startswith("remote = "))
    return line.split('"')[1]


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


# --- a push killed mid-upload --------------------------------------------------------------------

class _SlowBlobProxy:
    """A TCP relay to *upstream* on 127.0.0.1 that slows the Nth blob upload and says when it is under way.

    The build talks to the S3 server through it; the test kills the build (SIGKILL) while
    the relay is in the middle of passing a layer blob's bytes on.
    """

    def __init__(self, upstream: int, *, nth: int, after: int = 16384) -> None:
        import socket
        self.upstream, self.nth, self.after = upstream, nth, after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.uploading = threading.Event()
        self.blob_puts = 0
        self.sockets: list[Any] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            with self.lock:
                self.sockets += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src: Any, dst: Any, upload: bool) -> None:
        slow, sent = False, 0
        with contextlib.suppress(OSError):
            while data := src.recv(8192):
                if upload and data.startswith(b"PUT ") and b"/blobs/sha256/" in data.split(b"\r\n", 1)[0]:
                    with self.lock:
                        self.blob_puts += 1
                        slow = self.blob_puts == self.nth
                if slow:
                    time.sleep(0.05)
                    sent += len(data)
                    if sent >= self.after:
                        self.uploading.set()
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(1)

    def close(self) -> None:
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                sock.close()


@pytest.mark.guest
@ROOT_ONLY
def test_a_push_killed_mid_upload_leaves_no_entry_and_the_next_push_completes(
        moto_server: str, project: Path, tmp_path: Path) -> None:  # noqa: F811
    bucket = _bucket(moto_server, "killed")
    url = f"s3://{bucket}/layers?endpoint={moto_server}"
    private, public = _keys(tmp_path, "builders")
    a = Host(tmp_path / "host-a", project, url, signing=private, trusted=[public])
    b = Host(tmp_path / "host-b", project, url, signing=None, trusted=[public])
    proxy = _SlowBlobProxy(int(moto_server.rsplit(":", 1)[1]), nth=2)  # layer 2's blob
    slow = f"s3://{bucket}/layers?endpoint=http://127.0.0.1:{proxy.port}"
    build = subprocess.Popen([*IMGSMITH, "build", "farm.yaml", "-o", str(a.root / "out"), "--trust-image",
                              "--cache-remote", slow], cwd=project, env=a.env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert proxy.uploading.wait(300), "the second blob upload never started"
        build.kill()  # SIGKILL, in the middle of layer 2's blob
        build.wait(30)
    finally:
        if build.poll() is None:
            build.kill()
        proxy.close()
    assert build.returncode == -signal.SIGKILL
    cold = json.loads(a.run("build", "farm.yaml", "-o", str(a.root / "dry"), "--dry-run", "--json",
                            "--trust-image").stdout)
    keys = [str(x["key"]) for x in cold["layers"]]
    # a reader sees layer 1's entry only: no entry names a blob that is not all there
    listed = json.loads(b.run("cache", "ls", "--remote", "--json").stdout)["layers"]
    assert [x["key"] for x in listed] == [keys[0]], listed
    import boto3
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    blobs = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="layers/blobs/").get("Contents", [])]
    assert blobs == [f"layers/blobs/sha256/{listed[0]['blob'][7:]}"], blobs  # the half-sent blob is not there
    r = b.run("build", "farm.yaml", "-o", str(b.root / "dry"), "--dry-run", "--json", "--trust-image")
    assert [x["source"] for x in json.loads(r.stdout)["layers"]] == ["remote", "build", "build"], r.stdout
    # the next push (host A again, whose layers are all here) completes, and host B builds nothing
    again, _ = a.build("out")
    assert again["sessions"] == 0
    assert not list(a.layers().glob(".push-*"))  # the killed push's copy is swept
    assert len(json.loads(b.run("cache", "ls", "--remote", "--json").stdout)["layers"]) == 4  # and the VMDK
    r = b.run("cache", "verify", "--remote")
    assert r.returncode == 0 and "4 of 4 remote entries verified" in r.stdout, r.stdout
    warm, _ = b.build("out")
    assert warm["sessions"] == 0


def test_an_entry_is_written_once(moto_server: str, registry: tuple[str, Path], tmp_path: Path) -> None:  # noqa: F811
    from imgsmith.cache.backends import open_backend
    from imgsmith.cache.config import parse_remote_url
    os.environ.update(S3_ENV)
    data = tmp_path / "blob"
    data.write_bytes(b"layer bytes")
    blob = "sha256:" + sha256_file(data)
    for url in (f"s3://{_bucket(moto_server, 'once')}/p?endpoint={moto_server}", f"oci://{registry[0]}/once/x"):
        backend = open_backend(parse_remote_url(url))
        key = "a" * 64
        backend.put_blob(blob, data)
        assert backend.put_entry(key, b'{"first": 1}', blob, 1) is True
        assert backend.put_entry(key, b'{"second": 2}', blob, 1) is False
        assert backend.get_entry(key) == b'{"first": 1}', url


# --- pushing without a signing key ---------------------------------------------------------------

@pytest.mark.guest
@ROOT_ONLY
def test_without_a_signing_key_entries_go_up_unsigned_and_readers_refuse_them_unless_told(
        moto_server: str, project: Path, tmp_path: Path) -> None:  # noqa: F811
    url = f"s3://{_bucket(moto_server, 'unsigned')}/layers?endpoint={moto_server}"
    _, public = _keys(tmp_path, "builders")
    u = Host(tmp_path / "host-u", project, url, signing=None, trusted=[])
    r = u.run("build", "farm.yaml", "-o", str(u.root / "out"), "--dry-run", "--trust-image")
    assert r.returncode == 0 and r.stdout.count(
        "(pushed unsigned: no signing-key is configured (readers need --cache-trust-unsigned))") == 0, r.stdout
    r = u.run("build", "farm.yaml", "-o", str(u.root / "out"), "--dry-run", "--trust-image", "--cache-push")
    assert r.stdout.count("(pushed unsigned: no signing-key is configured (readers need --cache-trust-unsigned))"
                          ) == 4, r.stdout  # 3 layers and the VMDK
    cold, stderr = u.build("out", "--cache-push")
    assert [line for line in stderr.splitlines() if "unsigned" in line] == [
        f"imgsmith: warning: pushing unsigned entries to {url}: no signing-key is configured; other hosts use them "
        "only with --cache-trust-unsigned"]
    listed = json.loads(u.run("cache", "ls", "--remote", "--json", "--cache-trust-unsigned").stdout)["layers"]
    assert len(listed) == 4 and all(x["signer"] is None for x in listed), listed
    # a host that trusts the team's key refuses them, in one line, and builds
    b = Host(tmp_path / "host-b", project, url, signing=None, trusted=[public])
    warm, stderr = b.build("out")
    assert _warnings(stderr) == [
        f"imgsmith: warning: layer 1 base-config: remote layer {cold['layers'][0]['key'][:12]} refused: the entry is "
        "not signed (trusted-keys in the config; --cache-trust-unsigned accepts it anyway); building it"], stderr
    assert warm["sessions"] == 3
    # told to, a host uses them
    c = Host(tmp_path / "host-c", project, url, signing=None, trusted=[public])
    trusting, stderr = c.build("out", "--cache-trust-unsigned")
    assert trusting["sessions"] == 0 and not _warnings(stderr)
    assert _outputs(trusting) == _outputs(cold) and _made(trusting)[VMDK] == "pulled"


# --- pull-only against no-push; pruning the remote -----------------------------------------------

def _objects(s3: Any, bucket: str) -> dict[str, tuple[str, float]]:
    """Every object in the bucket: name, then (ETag, LastModified): any write shows up here."""
    found = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: (o["ETag"], o["LastModified"].timestamp()) for o in found}


@pytest.mark.guest
@ROOT_ONLY
def test_pull_only_writes_nothing_no_push_records_use_and_prune_goes_by_use_and_removes_orphan_blobs(
        moto_server: str, project: Path, tmp_path: Path) -> None:  # noqa: F811
    import boto3

    from imgsmith.cache.signing import Signer
    bucket = _bucket(moto_server, "pullonly")
    url = f"s3://{bucket}/layers?endpoint={moto_server}"
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    private, public = _keys(tmp_path, "builders")
    a = Host(tmp_path / "host-a", project, url, signing=private, trusted=[public])
    cold, _ = a.build("out")
    keys = [str(x["key"]) for x in cold["layers"]]
    before = _objects(s3, bucket)
    (project / "farm-two.yaml").write_text(DEFINITION.format(last="two"))
    # pull-only, though this host holds the signing key: it pulls two layers, builds one, writes nothing
    p = Host(tmp_path / "host-p", project, url, signing=private, trusted=[public])
    r = p.run("build", "farm-two.yaml", "-o", str(p.root / "out"), "--cache-pull-only", "--cache-push")
    assert r.returncode == 2 and "--cache-push: this host is pull-only" in r.stderr, r.stderr
    pulled, _ = p.build("out", "--cache-pull-only", definition="farm-two.yaml")
    assert [x["source"] for x in pulled["layers"]] == ["remote", "remote", "build"]
    assert _objects(s3, bucket) == before  # not one object written or rewritten
    # in the config, pull-only makes the host read-only for every command
    (p.root / "config.toml").write_text((p.root / "config.toml").read_text() + "pull-only = true\n")
    r = p.run("cache", "prune", "--remote", "--all")
    assert r.returncode == 2 and "this host is pull-only" in r.stderr, r.stderr
    assert _objects(s3, bucket) == before
    # no push: nothing goes up, but the pulls are recorded as uses
    n = Host(tmp_path / "host-n", project, url, signing=private, trusted=[public])
    built, _ = n.build("out", "--no-cache-push", definition="farm-two.yaml")
    assert [x["source"] for x in built["layers"]] == ["remote", "remote", "build"]
    after = _objects(s3, bucket)
    assert sorted(set(after) - set(before)) == sorted(f"layers/used/{k}" for k in keys[:2])
    # prune by use: layers 1 and 3 made three days ago, layer 1 used just now
    signer = Signer.load(private)
    for key in (keys[0], keys[2]):
        doc = json.loads(s3.get_object(Bucket=bucket, Key=f"layers/entries/{key}.json")["Body"].read())
        doc["created"] -= 3 * 86400
        s3.put_object(Bucket=bucket, Key=f"layers/entries/{key}.json", Body=json.dumps(signer.sign(doc)).encode())
    stray = tmp_path / "stray"
    stray.write_bytes(b"a blob whose entry never came")
    s3.upload_file(str(stray), bucket, f"layers/blobs/sha256/{sha256_file(stray)}")
    r = a.run("cache", "prune", "--remote", "--older-than", "1d", "--json")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    third = json.loads(s3.get_object(Bucket=bucket, Key=f"layers/entries/{keys[0]}.json")["Body"].read())
    assert [e["key"] for e in done["removed"]] == [keys[2]]
    left = _objects(s3, bucket)
    assert f"layers/entries/{keys[2]}.json" not in left and f"layers/entries/{keys[0]}.json" in left
    assert len(done["blobs"]) == 1 and f"layers/blobs/sha256/{done['blobs'][0][7:]}" not in left  # layer 3's
    assert f"layers/blobs/sha256/{sha256_file(stray)}" in left  # unreferenced but new: maybe a push under way
    assert f"layers/blobs/sha256/{third['blob'][7:]}" in left
    r = a.run("cache", "prune", "--remote", "--all")
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == (
        f"removed 3 remote entries and 4 unreferenced blobs from {url}"), r.stdout  # layers 1-2, the VMDK
    assert _objects(s3, bucket) == {}


# --- a team's shared key for secret-bearing layers -----------------------------------------------

@pytest.mark.guest
@ROOT_ONLY
def test_hosts_with_the_team_s_shared_key_share_a_secret_layer_and_others_do_not(
        moto_server: str, project: Path, tmp_path: Path) -> None:  # noqa: F811
    import boto3
    bucket = _bucket(moto_server, "shared-secret")
    url = f"s3://{bucket}/layers?endpoint={moto_server}"
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    text = DEFINITION.format(last="one").replace(
        "{write: '/opt/app/version:1'}]", "{write: '/opt/app/version:1'}, {root-password: 'password:s3cret'}]")
    (project / "secret.yaml").write_text(text)
    team = tmp_path / "team-secret"
    team.write_bytes(os.urandom(32))
    private, public = _keys(tmp_path, "builders")
    hosts = [Host(tmp_path / f"host-{n}", project, url, signing=private, trusted=[public]) for n in "abc"]
    for h in hosts[:2]:
        (h.root / "config.toml").write_text((h.root / "config.toml").read_text() + f'shared-secret-key = "{team}"\n')
    a, b, c = hosts
    r = a.run("build", "secret.yaml", "-o", str(a.root / "s"), "--dry-run", "--trust-image", "--json")
    assert [x["share"] for x in json.loads(r.stdout)["layers"]] == ["push"] * 3, r.stdout
    cold, _ = a.build("s", definition="secret.yaml")
    keys = [str(x["key"]) for x in cold["layers"]]
    entries = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="layers/entries/")["Contents"]}
    assert len(entries) == 4 and entries > {f"layers/entries/{k}.json" for k in keys}  # and the VMDK on them
    for key in keys:  # the secret is in no entry in the clear (its token holds the keyed hash only)
        doc = s3.get_object(Bucket=bucket, Key=f"layers/entries/{key}.json")["Body"].read()
        assert b"s3cret" not in doc
    assert "shared-secret:" in json.dumps(json.loads(
        s3.get_object(Bucket=bucket, Key=f"layers/entries/{keys[1]}.json")["Body"].read())["meta"]["token"])
    # host B holds the same key: same layer keys, all pulled, the same bytes, the password set
    warm, _ = b.build("s", definition="secret.yaml")
    assert warm["sessions"] == 0 and [str(x["key"]) for x in warm["layers"]] == keys
    assert _outputs(warm) == _outputs(cold) and _made(warm)[VMDK] == "pulled"
    shadow = read_files(b.root / "s" / "farm.raw", ["/etc/shadow"], fmt="raw")["/etc/shadow"] or b""
    assert shadow.startswith(b"root:$"), shadow[:20]
    # host C has no key: its secret layer has a key of its own, is built here, and is not pushed
    other, _ = c.build("s", definition="secret.yaml")
    assert str(other["layers"][0]["key"]) == keys[0]
    assert [x["source"] for x in other["layers"]] == ["remote", "build", "build"]
    assert [x["share"] for x in other["layers"]][1:] == [
        "not pushed: it carries a secret (put secrets in the last layer)",
        "not pushed: it is built on a layer that carries a secret"]
    after = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="layers/entries/")["Contents"]}
    assert after == entries
    # a key too short is refused in one line, before anything runs
    short = tmp_path / "short"
    short.write_bytes(b"12345")
    r = c.run("build", "secret.yaml", "-o", str(c.root / "x"), "--dry-run", "--trust-image")
    assert r.returncode == 0
    c.env["IMGSMITH_CACHE_SHARED_KEY_FILE"] = str(short)
    r = c.run("build", "secret.yaml", "-o", str(c.root / "x"), "--dry-run", "--trust-image")
    assert r.returncode == 2 and f"shared secret key {short} (IMGSMITH_CACHE_SHARED_KEY_FILE): 5 bytes; give 32 " \
        "or more" in r.stderr, r.stderr
