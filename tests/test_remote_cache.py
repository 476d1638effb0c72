"""The layer cache's integrity and the remote cache, with real servers on 127.0.0.1.

Each case asserts what a user sees: exit codes, the one line that says why a layer
was refused or evicted, guest sessions in ``--json``, bytes of outputs and guest files,
what the remote holds. Builds use the chroot backend on a phony fixture guest (root),
so each costs seconds. Two "hosts" are two processes with their own IMGSMITH_CACHE and
config file. The S3 server is moto, the OCI registry is Debian's docker-registry, both
started by the module's fixtures from temporary directories.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guests import guest_image, read_files, sha256_file

IMGSMITH = [sys.executable, "-m", "imgsmith.cli.main"]
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="the chroot backend needs root")

DEFINITION = """\
version: 1
name: farm
source: {{file: base.qcow2}}
backend: chroot
layers:
  - name: base-config
    steps: [{{write: '/etc/motd:hello from the farm'}}, {{hostname: farm-1}}]
  - name: app
    steps: [{{mkdir: /opt/app}}, {{write: '/opt/app/version:1'}}]
  - name: last
    steps: [{{write: '/etc/last-step:{last}'}}]
outputs:
  - format: raw
  - format: qcow2
"""


# --- servers -------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port}")


@contextlib.contextmanager
def _server(argv: list[str], cwd: Path, port: int, what: str) -> Iterator[None]:
    log = (cwd / "server.log").open("wb")
    proc = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_port(port, proc, what)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 in server mode on 127.0.0.1; yields its endpoint URL."""
    exe = Path(sys.executable).with_name("moto_server")
    if not exe.exists():
        pytest.skip("moto[server] is not installed (make setup)")
    port = _free_port()
    with _server([str(exe), "-H", "127.0.0.1", "-p", str(port)], tmp_path_factory.mktemp("moto"), port, "moto"):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """Debian's docker-registry (distribution 2.8) on 127.0.0.1; yields (host:port, storage dir)."""
    exe = shutil.which("docker-registry")
    if exe is None:
        pytest.skip("docker-registry is not installed (scripts/setup.sh)")
    work = tmp_path_factory.mktemp("registry")
    port = _free_port()
    (work / "config.yml").write_text(
        f"version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {work / 'data'}}}\n"
        f"  delete: {{enabled: true}}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    with _server([exe, "serve", str(work / "config.yml")], work, port, "docker-registry"):
        yield f"127.0.0.1:{port}", work / "data"


def _bucket(endpoint: str, name: str) -> str:
    import boto3
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=name)
    return name


# --- hosts ---------------------------------------------------------------------------------------

class Host:
    """One build machine: its own cache, run directory and config file; builds in a child process."""

    def __init__(self, root: Path, project: Path, remote: str, *, signing: Path | None,
                 trusted: list[Path]) -> None:
        self.root, self.project = root, project
        root.mkdir(parents=True, exist_ok=True)
        lines = ["[cache]", f'remote = "{remote}"']
        if signing is not None:
            lines.append(f'signing-key = "{signing}"')
        lines.append("trusted-keys = [" + ", ".join(f'"{k}"' for k in trusted) + "]")
        (root / "config.toml").write_text("\n".join(lines) + "\n")
        self.env = {**os.environ, **S3_ENV, "IMGSMITH_CACHE": str(root / "cache"),
                    "IMGSMITH_RUN_DIR": str(root / "run"), "IMGSMITH_CONFIG": str(root / "config.toml")}
        self.env.pop("IMGSMITH_CACHE_REMOTE", None)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*IMGSMITH, *args], capture_output=True, text=True, cwd=self.project, env=self.env,
                              check=False)

    def build(self, out: str, *extra: str, definition: str = "farm.yaml") -> tuple[dict[str, object], str]:
        r = self.run("build", definition, "-o", str(self.root / out), "--json", "--trust-image", *extra)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout), r.stderr

    def layers(self) -> Path:
        return self.root / "cache" / "layers"


def _keys(tmp: Path, name: str) -> tuple[Path, Path]:
    from imgsmith.cache.signing import generate_keypair
    pub, _ = generate_keypair(tmp / "keys" / name)
    return tmp / "keys" / name, pub


@pytest.fixture
def project(tmp_path: Path) -> Path:
    work = tmp_path / "project"
    work.mkdir()
    shutil.copy(guest_image("debian12"), work / "base.qcow2")
    (work / "farm.yaml").write_text(DEFINITION.format(last="one"))
    return work


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "refused" in line or "damaged" in line]


def _outputs(result: dict[str, object]) -> dict[str, str]:
    outs = result["outputs"]
    assert isinstance(outs, list)
    return {Path(o["path"]).name: sha256_file(Path(o["path"])) for o in outs}


# --- integrity, locally --------------------------------------------------------------------------

@pytest.mark.guest
@ROOT_ONLY
def test_a_damaged_layer_is_detected_evicted_and_rebuilt(project: Path, tmp_path: Path) -> None:
    host = Host(tmp_path / "a", project, "none", signing=None, trusted=[])
    first, _ = host.build("out1")
    assert first["sessions"] == 3
    key = first["layers"][1]["key"]  # type: ignore[index]
    layer = host.layers() / str(key) / "layer.qcow2"
    size = layer.stat().st_size
    with layer.open("r+b") as f:  # what a disk fault or a stray write does: 64 KiB of noise mid-file
        f.seek(size // 2)
        f.write(os.urandom(65536))
    second, stderr = host.build("out2")
    damaged = _warnings(stderr)
    assert len(damaged) == 1, stderr
    assert f"layer 2 app: layer {str(key)[:12]} is damaged: sha256 " in damaged[0]
    assert damaged[0].endswith("evicted it and 1 layer(s) built on it, rebuilding")
    assert second["sessions"] == 2  # the damaged layer and the one on it; layer 1 reused
    files = read_files(host.root / "out2" / "farm.raw", ["/etc/motd", "/opt/app/version", "/etc/last-step"],
                       fmt="raw")
    assert files == {"/etc/motd": b"hello from the farm", "/opt/app/version": b"1", "/etc/last-step": b"one"}
    r = host.run("cache", "verify")
    assert r.returncode == 0 and r.stdout.strip().startswith("3 of 3 layer(s) intact"), r.stdout
    # cache verify finds damage too, and evicts it
    with (host.layers() / str(first["layers"][2]["key"]) / "layer.qcow2").open("r+b") as f:  # type: ignore[index]
        f.seek(size // 2)
        f.write(os.urandom(65536))
    r = host.run("cache", "verify")
    assert r.returncode == 1 and "is damaged: sha256" in r.stdout and "2 of 3 layer(s) intact" in r.stdout, r.stdout
