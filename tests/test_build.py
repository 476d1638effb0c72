"""imgsmith build on fixture guests: layers, cache hits and misses, kills, outputs, manifest, secrets."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guests import guest_image, read_files

pytestmark = pytest.mark.guest

IMGSMITH = [sys.executable, "-m", "imgsmith.cli.main"]
SECRET = "Sup3r-S3cret-Root-PW"
REPO = Path(__file__).parent.parent

DEFINITION = """\
version: 1
name: fixture
source:
  file: base.qcow2
layers:
  - name: base-config
    steps:
      - mkdir: /opt/app
      - upload: files/app.conf:/opt/app/app.conf
      - install: [tmux]
{slow}  - name: final
    steps:
      - root-password: {{env: BUILD_TEST_PW}}
      - ssh-inject: root:string:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBuildTestKey build@test
      - write: /etc/build-id:{build_id}
sysprep: {{operations: "defaults,-logfiles"}}   # keep pkgstub.log, the install evidence
outputs:
  - format: qcow2
  - format: vmdk
    options: {{subformat: streamOptimized}}
"""


def run_build(workdir: Path, *args: str, env: dict[str, str], backend: str | None = None
              ) -> subprocess.CompletedProcess[str]:
    flag = ["--backend", backend] if backend else []
    return subprocess.run([*IMGSMITH, "build", str(workdir / "image.yaml"), "-o", str(workdir / "out"), "--json",
                           *flag, *args], capture_output=True, text=True, env=env, cwd=workdir, check=False)


def write_definition(workdir: Path, build_id: str, *, slow: bool = False) -> None:
    """*slow*: a first layer that takes long enough to be killed in the middle (chroot steps take ms)."""
    (workdir / "image.yaml").write_text(DEFINITION.format(build_id=build_id,
                                                          slow="      - run-command: sleep 20\n" if slow else ""))


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    shutil.copy(guest_image("debian12"), tmp_path / "base.qcow2")
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "app.conf").write_text("answer=42\n")
    write_definition(tmp_path, "one")
    # Session records of its own: another test's imgsmith must not sweep this one's killed build first.
    env = {**os.environ, "IMGSMITH_CACHE": str(tmp_path / "cache"), "BUILD_TEST_PW": SECRET,
           "IMGSMITH_RUN_DIR": str(tmp_path / "run")}
    return tmp_path, env


def _wait_for(proc: subprocess.Popen[str], needle: str, timeout: float) -> str:
    """Read stderr until *needle* shows up (then the caller kills the build)."""
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} never appeared:\n{seen}")


def _cache_layers(cache: Path) -> list[str]:
    layers = cache / "layers"
    return sorted(p.name for p in layers.iterdir() if not p.name.startswith(".")) if layers.exists() else []


def test_build_cache_kills_and_secrets(project: tuple[Path, dict[str, str]], backend: str) -> None:
    workdir, env = project
    chroot = backend == "chroot"
    write_definition(workdir, "one", slow=chroot)
    # 1. kill -9 in the middle of the first layer: no cache entry, no output.
    proc = subprocess.Popen([*IMGSMITH, "build", str(workdir / "image.yaml"), "-o", str(workdir / "out"),
                             "--backend", backend],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, cwd=workdir)
    _wait_for(proc, "layer 1/2", 600)
    time.sleep(3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.stderr is not None
    proc.stderr.close()
    assert _cache_layers(workdir / "cache") == []
    assert not (workdir / "out").exists() or not [p for p in (workdir / "out").iterdir()
                                                   if not p.name.startswith(".")]

    # 2. cold build: one guest session per layer (sysprep shares the last layer's session).
    r = run_build(workdir, env=env, backend=backend)
    assert r.returncode == 0, r.stderr
    if chroot:  # the killed build's mounts, loop device and storage daemon were released first
        assert f"(pid {proc.pid}) that did not exit cleanly" in r.stderr
        assert not list(Path(env["IMGSMITH_RUN_DIR"]).glob(f"{proc.pid}-*"))
    cold = json.loads(r.stdout)
    assert cold["sessions"] == 2 and [x["cached"] for x in cold["layers"]] == [False, False]
    assert (cold["backend"], cold["launches"]) == (backend, 0 if chroot else 2)
    assert cold["dropped_sysprep"] == ["ssh-userdir"]  # it would undo the ssh-inject step
    out = workdir / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    names = sorted(p.name for p in out.iterdir() if not p.name.endswith(".sha256"))
    assert names == ["SHA256SUMS", "fixture-streamOptimized.vmdk", "fixture.qcow2", "manifest.json"]
    for o in manifest["outputs"]:
        data = (out / o["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == o["sha256"] and len(data) == o["file_size"]
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-f", "vmdk",
                                      out / "fixture-streamOptimized.vmdk"], capture_output=True, text=True,
                                     check=True).stdout)
    assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
    assert manifest["guest"]["distro"] == "debian" and manifest["guest"]["packages"]
    assert manifest["source"]["checksum"].startswith("sha256:")
    assert manifest["backend"]["used"] == backend
    assert [x["key"] for x in manifest["layers"]] == [x["key"] for x in cold["layers"]]
    files = read_files(out / "fixture.qcow2", ["/opt/app/app.conf", "/etc/build-id", "/root/.ssh/authorized_keys",
                                                "/var/log/pkgstub.log", "/etc/machine-id", "/etc/shadow"])
    assert files["/opt/app/app.conf"] == b"answer=42\n" and files["/etc/build-id"] == b"one"
    assert b"BuildTestKey" in (files["/root/.ssh/authorized_keys"] or b"")
    assert b"install tmux" in (files["/var/log/pkgstub.log"] or b"")
    assert files["/etc/machine-id"] == b""  # sysprep's machine-id, not refilled
    # Secrets: nowhere in output, manifest or cache metadata.
    blobs = [r.stdout, r.stderr, (out / "manifest.json").read_text()]
    blobs += [p.read_text(errors="replace") for p in (workdir / "cache").rglob("*.json")]
    assert not [b for b in blobs if SECRET in b]

    # 3. unchanged rebuild: nothing to do, no launch.
    r = run_build(workdir, env=env, backend=backend)
    assert r.returncode == 0 and json.loads(r.stdout)["nothing_to_do"] is True

    # 4. change the last layer's last step: only that layer runs.
    write_definition(workdir, "two", slow=chroot)
    r = run_build(workdir, env=env, backend=backend)
    assert r.returncode == 0, r.stderr
    warm = json.loads(r.stdout)
    assert warm["sessions"] == 1 and [x["cached"] for x in warm["layers"]] == [True, False]
    assert warm["layers"][0]["key"] == cold["layers"][0]["key"]
    # ... and both outputs are patched copies of the previous ones, with exactly the new content.
    manifest = json.loads((out / "manifest.json").read_text())
    assert all(o["patched_bytes"] for o in manifest["outputs"]), manifest["outputs"]
    assert [bool(o["patched_bytes"]) for o in warm["outputs"]] == [True, True]
    final = workdir / "cache" / "layers" / warm["layers"][-1]["key"] / "layer.qcow2"
    for o in manifest["outputs"]:
        subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", o["format"], final, out / o["path"]],
                       check=True, capture_output=True)
        assert hashlib.sha256((out / o["path"]).read_bytes()).hexdigest() == o["sha256"]
    assert read_files(out / "fixture.qcow2", ["/etc/build-id"])["/etc/build-id"] == b"two"

    # 5. kill -9 during the conversions: no partial file at any destination; the rebuild completes.
    for p in out.iterdir():
        p.unlink()
    proc = subprocess.Popen([*IMGSMITH, "build", str(workdir / "image.yaml"), "-o", str(out), "--backend", backend],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, cwd=workdir)
    _wait_for(proc, "outputs:", 300)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.stderr is not None
    proc.stderr.close()
    assert not [p for p in out.iterdir() if not p.name.startswith(".")]
    r = run_build(workdir, env=env, backend=backend)
    assert r.returncode == 0 and json.loads(r.stdout)["sessions"] == 0
    assert (out / "fixture.qcow2").exists() and (out / "manifest.json").exists()


def test_checksum_mismatch_caches_nothing(project: tuple[Path, dict[str, str]]) -> None:
    workdir, env = project
    text = (workdir / "image.yaml").read_text().replace("  file: base.qcow2\n",
                                                        "  file: base.qcow2\n  checksum: sha256:" + "0" * 64 + "\n")
    (workdir / "image.yaml").write_text(text)
    before = hashlib.sha256((workdir / "base.qcow2").read_bytes()).hexdigest()
    r = run_build(workdir, env=env)
    assert r.returncode == 2
    assert "checksum mismatch" in r.stderr and r.stderr.count("imgsmith: error:") == 1
    assert _cache_layers(workdir / "cache") == [] and not (workdir / "out").exists()
    assert hashlib.sha256((workdir / "base.qcow2").read_bytes()).hexdigest() == before


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def centos_mirror(tmp_path: Path) -> Iterator[str]:
    """The CentOS 7 fixture and its sha256sum.txt, under the official file names, on 127.0.0.1."""
    root = tmp_path / "mirror" / "centos" / "7" / "images"
    root.mkdir(parents=True)
    repo = ("[base]\nname=CentOS-$releasever - Base\nmirrorlist=http://mirrorlist.centos.org/?release="
            "$releasever&arch=$basearch&repo=os\n#baseurl=http://mirror.centos.org/centos/$releasever/os/$basearch/\n")
    image = root / "CentOS-7-x86_64-GenericCloud-2009.qcow2"
    shutil.copy(guest_image("centos7", extra={"/etc/yum.repos.d/CentOS-Base.repo": repo}), image)
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    (root / "sha256sum.txt").write_text(f"{'1' * 64}  CentOS-7-x86_64-GenericCloud-1503.qcow2\n"
                                        f"{digest}  {image.name}\n")
    handler = lambda *a: _Quiet(*a, directory=str(tmp_path / "mirror"))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/centos/7/images/{image.name}"
    server.shutdown()
    server.server_close()


def test_centos7_example_from_a_local_mirror(centos_mirror: str, tmp_path: Path) -> None:
    """The classic job on a phony CentOS 7: the clouds refuse it (no kernel, no cloud-init, MAC-bound
    network), so the build removes those outputs and fails, one line per finding; --no-check keeps them."""
    env = {**os.environ, "IMGSMITH_CACHE": str(tmp_path / "cache"), "ROOT_PASSWORD": SECRET}
    out = tmp_path / "out"
    argv = [*IMGSMITH, "build", str(REPO / "examples" / "centos7.yaml"), "--set", f"source.url={centos_mirror}",
            "-o", str(out)]
    r = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert r.returncode == 1, r.stderr
    refused = [x.removeprefix("imgsmith: error: ") for x in r.stderr.splitlines() if x.startswith("imgsmith: error: ")]
    assert "centos7-golden-tencent.qcow2: tencent.cloud-init (CloudInitNotInstalled): cloud-init is not installed " \
           "— fix: install cloud-init (imgsmith customize --install cloud-init, or --cloud-ready tencent)" in refused
    assert {x.split(":")[0] for x in refused} == {"centos7-golden-aliyun.qcow2", "centos7-golden-openstack.qcow2",
                                                  "centos7-golden-tencent.qcow2"}
    assert sorted(p.name for p in out.iterdir()) == ["SHA256SUMS", "manifest.json"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"] == [] and len(manifest["refused"]) == 3
    assert {e["rule"] for e in manifest["refused"][0]["checks"]["errors"]} >= {"openstack.cloud-init",
                                                                               "openstack.virtio"}

    r = subprocess.run([*argv, "--no-check", "--json"], capture_output=True, text=True, env=env, check=False)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert (result["sessions"], result["launches"]) == (0, 0)  # the layers were cached by the refused build
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".sha256")) == [
        "SHA256SUMS", "centos7-golden-aliyun.qcow2", "centos7-golden-openstack.qcow2",
        "centos7-golden-tencent.qcow2", "manifest.json"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [o["checks"] for o in manifest["outputs"]] == [{"cloud": c, "skipped": "--no-check"}
                                                         for c in ("openstack", "aliyun", "tencent")]
    # A verified source (the official sha256sum.txt matched) and root: auto picked the chroot backend.
    assert manifest["backend"]["used"] == "chroot"
    assert manifest["source"]["origin"] == centos_mirror
    assert manifest["guest"]["distro"] == "centos" and manifest["guest"]["version"] == "7.9"
    files = read_files(out / "centos7-golden-openstack.qcow2",
                       ["/etc/yum.repos.d/CentOS-Base.repo", "/var/log/pkgstub.log", "/etc/localtime", "/etc/motd"])
    assert b"baseurl=http://vault.centos.org/7.9.2009/os/$basearch/" in (files["/etc/yum.repos.d/CentOS-Base.repo"]
                                                                        or b"")
    # (the stand-in yum's log is gone: the default sysprep's logfiles operation cleans /var/log)
    assert files["/var/log/pkgstub.log"] is None
    assert files["/etc/localtime"] == (Path("/usr/share/zoneinfo/Asia/Shanghai")).read_bytes()
    assert files["/etc/motd"] == (REPO / "examples" / "files" / "motd").read_bytes()
    assert SECRET not in r.stdout + r.stderr + (out / "manifest.json").read_text()


def test_layer_keys_do_not_depend_on_the_backend(project: tuple[Path, dict[str, str]]) -> None:
    """The same definition plans the same layers whichever backend will run them (dry run: no guest)."""
    workdir, env = project
    plans = {}
    for backend in ("appliance", "chroot", "auto"):
        r = run_build(workdir, "--dry-run", env=env, backend=backend)
        assert r.returncode == 0, r.stderr
        plans[backend] = [x["key"] for x in json.loads(r.stdout)["layers"]]
    assert plans["appliance"] == plans["chroot"] == plans["auto"] and len(plans["auto"]) == 2
    r = subprocess.run([*IMGSMITH, "build", str(workdir / "image.yaml"), "--dry-run", "--backend", "auto"],
                       capture_output=True, text=True, env=env, cwd=workdir, check=False)
    assert r.returncode == 0, r.stderr
    # a file source without a checksum is not verified: auto keeps the appliance and says why
    assert ("  backend: appliance (the image's origin is not verified (--trust-image allows the faster chroot "
            "backend))") in r.stdout
