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
from typing import Any

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
  - format: vmdk
    options: {{subformat: streamOptimized}}
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

    def build(self, out: str, *extra: str, definition: str = "farm.yaml") -> tuple[dict[str, Any], str]:
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


def _outputs(result: dict[str, Any]) -> dict[str, str]:
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
    key = first["layers"][1]["key"]
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
    with (host.layers() / str(first["layers"][2]["key"]) / "layer.qcow2").open("r+b") as f:
        f.seek(size // 2)
        f.write(os.urandom(65536))
    r = host.run("cache", "verify")
    assert r.returncode == 1 and "is damaged: sha256" in r.stdout and "2 of 3 layer(s) intact" in r.stdout, r.stdout


# --- the farm: two hosts, one remote -------------------------------------------------------------

def _remote_url(kind: str, moto: str | None, reg: tuple[str, Path] | None, name: str) -> str:
    if kind == "s3":
        assert moto is not None
        return f"s3://{_bucket(moto, name)}/layers?endpoint={moto}"
    assert reg is not None
    return f"oci://{reg[0]}/imgsmith/{name}"


@pytest.fixture(params=["s3", "oci"])
def farm(request: pytest.FixtureRequest, project: Path, tmp_path: Path) -> tuple[Host, Host, str, str]:
    """Host A (signs and pushes) and host B (trusts A's key), both on a fresh remote of each kind."""
    kind = str(request.param)
    moto = request.getfixturevalue("moto_server") if kind == "s3" else None
    reg = request.getfixturevalue("registry") if kind == "oci" else None
    url = _remote_url(kind, moto, reg, f"farm-{tmp_path.name[-12:].lower().replace('_', '-')}")
    private, public = _keys(tmp_path, "builders")
    a = Host(tmp_path / "host-a", project, url, signing=private, trusted=[public])
    b = Host(tmp_path / "host-b", project, url, signing=private, trusted=[public])
    return a, b, url, kind


VMDK = "farm-streamOptimized.vmdk"  # the one output worth sharing (sharing.worth_sharing)


def _made(result: dict[str, Any]) -> dict[str, str]:
    """How each output came to be (the manifest's record): converted, patched or pulled."""
    return {Path(o["path"]).name: o["made"] for o in result["outputs"]}


@pytest.mark.guest
@ROOT_ONLY
def test_host_b_builds_from_host_a_s_pushes_with_no_session(farm: tuple[Host, Host, str, str],
                                                            tmp_path: Path, request: pytest.FixtureRequest) -> None:
    a, b, url, kind = farm
    cold, _ = a.build("out")
    assert cold["sessions"] == 3 and [x["share"] for x in cold["layers"]] == ["push"] * 3
    assert _made(cold) == {"farm.raw": "converted", "farm.qcow2": "converted", VMDK: "converted"}
    r = b.run("build", "farm.yaml", "-o", str(b.root / "out"), "--dry-run", "--trust-image")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("remote: will be pulled from the remote cache") == 4, r.stdout  # 3 layers, the VMDK
    assert "  base image: local\n" in r.stdout, r.stdout
    assert f"  output: {VMDK} (vmdk) — remote: will be pulled from the remote cache [" in r.stdout, r.stdout
    assert "  output: farm.raw (raw) — convert (not shared: converting it costs less than sending it)" in r.stdout
    warm, stderr = b.build("out")
    assert warm["sessions"] == 0, stderr
    assert [x["source"] for x in warm["layers"]] == ["remote"] * 3
    # byte-identical outputs; the streamOptimized VMDK (whose CID differs between any two conversions) pulled
    assert _outputs(warm) == _outputs(cold)
    assert _made(warm) == {"farm.raw": "converted", "farm.qcow2": "converted", VMDK: "pulled"}
    manifest = json.loads((b.root / "out" / "manifest.json").read_text())
    assert [o["pulled_from"] for o in manifest["outputs"]] == [None, None, url]
    assert not _warnings(stderr)
    # the output's blob poisoned: refused in one line, converted instead (same guest content)
    from imgsmith.cache.backends import open_backend
    from imgsmith.cache.config import parse_remote_url
    os.environ.update(S3_ENV)
    listed = json.loads(a.run("cache", "ls", "--remote", "--json").stdout)["layers"]
    assert len(listed) == 4 and [x["output"] for x in listed if x["kind"] == "output"] == [VMDK], listed
    vmdk = next(x for x in listed if x["kind"] == "output")
    evil = tmp_path / "evil.vmdk"
    evil.write_bytes(os.urandom(65536))
    _replace_blob(open_backend(parse_remote_url(url)), vmdk["blob"], evil,
                  request.getfixturevalue("registry")[1] if kind == "oci" else None)
    third, stderr = b.build("out3")
    assert third["sessions"] == 0 and _made(third)[VMDK] == "converted"
    assert _warnings(stderr) == [f"imgsmith: warning: output {VMDK}: the remote copy is refused: its blob's sha256 "
                                 f"is {sha256_file(evil)[:16]}… instead of {vmdk['blob'][7:23]}…; converting it"]
    assert subprocess.run(["qemu-img", "compare", "-q", "-f", "vmdk", "-F", "vmdk", str(b.root / "out3" / VMDK),
                           str(a.root / "out" / VMDK)], check=False).returncode == 0
    # B's pulled layers are verified and intact locally, with the local parent as backing file
    r = b.run("cache", "verify")
    assert r.returncode == 0 and r.stdout.startswith("3 of 3 layer(s) intact"), r.stdout
    # B changes the last step: only that layer is built, and pushed on the shared chain
    (b.project / "farm-b.yaml").write_text(DEFINITION.format(last="two"))
    changed, _ = b.build("out2", definition="farm-b.yaml")
    assert changed["sessions"] == 1
    assert [x["source"] for x in changed["layers"]] == ["local", "local", "build"]
    assert read_files(b.root / "out2" / "farm.raw", ["/etc/last-step", "/etc/motd"], fmt="raw") == {
        "/etc/last-step": b"two", "/etc/motd": b"hello from the farm"}
    assert _made(changed)[VMDK] == "converted"  # a new chain: nothing to pull, and it is pushed
    r = a.run("cache", "ls", "--remote", "--json")
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)["layers"]
    assert len(listed) == 6 and all(x["refused"] is None for x in listed)  # 4 layers, 2 VMDKs
    assert sorted(x["kind"] for x in listed) == ["layer"] * 4 + ["output"] * 2
    r = a.run("cache", "ls", "--remote")
    assert "6 entries (4 layers, 2 outputs) in" in r.stdout and f"farm  output {VMDK} (vmdk)" in r.stdout, r.stdout
    r = a.run("cache", "verify", "--remote")
    # the poisoned VMDK is caught by verify; the push after out3 found its entry there and did not replace it
    assert r.returncode == 1 and "5 of 6 remote entries verified" in r.stdout, r.stdout


@pytest.mark.guest
@ROOT_ONLY
def test_a_poisoned_blob_and_a_foreign_signature_are_refused(farm: tuple[Host, Host, str, str],
                                                            tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from imgsmith.cache.backends import open_backend
    from imgsmith.cache.config import parse_remote_url
    from imgsmith.cache.signing import Signer
    a, b, url, kind = farm
    storage = request.getfixturevalue("registry")[1] if kind == "oci" else None
    cold, _ = a.build("out")
    keys = [str(x["key"]) for x in cold["layers"]]
    os.environ.update(S3_ENV)
    backend = open_backend(parse_remote_url(url))
    # layer 3's blob replaced by other bytes (same name)
    entry3 = json.loads(backend.get_entry(keys[2]) or b"{}")
    evil = tmp_path / "evil.qcow2"
    evil.write_bytes(os.urandom(65536))
    _replace_blob(backend, entry3["blob"], evil, storage)
    # layer 2's entry re-signed by a key host B does not trust
    entry2 = json.loads(backend.get_entry(keys[1]) or b"{}")
    other, _ = _keys(tmp_path, "intruder")
    forged = Signer.load(other).sign(entry2)
    backend.delete_entry(keys[1])
    backend.put_entry(keys[1], json.dumps(forged).encode(), entry2["blob"], entry2["size"])
    warm, stderr = b.build("out")
    refused = _warnings(stderr)
    assert len(refused) == 1, stderr  # layer 2 refused at plan time; layer 3 then cannot stand on it
    kid = forged["signer"]
    assert refused == [f"imgsmith: warning: layer 2 app: remote layer {keys[1][:12]} refused: the entry is signed by "
                       f"key {kid}, which this host does not trust (trusted-keys in the config; "
                       "--cache-trust-unsigned accepts it anyway); building it"]
    assert warm["sessions"] == 2 and [x["source"] for x in warm["layers"]] == [
        "remote", "build", "build"]
    # the blob check on its own: host C trusts the intruder too, so layer 2 passes and layer 3's blob is caught
    c = Host(tmp_path / "host-c", b.project, url, signing=None, trusted=[*_pubs(tmp_path)])
    third, stderr = c.build("out")
    refused = _warnings(stderr)
    assert len(refused) == 1, stderr
    assert refused[0].startswith(f"imgsmith: warning: layer 3 last: remote layer {keys[2][:12]} refused: its blob's "
                                 "sha256 is "), refused
    assert refused[0].endswith(f" instead of {entry3['blob'][7:23]}…; building it"), refused
    assert third["sessions"] == 1
    assert read_files(c.root / "out" / "farm.raw", ["/etc/last-step"], fmt="raw") == {"/etc/last-step": b"one"}


def _pubs(tmp: Path) -> list[Path]:
    return sorted((tmp / "keys").glob("*.pub"))


def _replace_blob(backend: object, digest: str, data: Path, storage: Path | None) -> None:
    """Overwrite a stored blob's bytes behind the server's back (the poisoning of a shared store)."""
    from imgsmith.cache.backends import OciBackend, S3Backend
    if isinstance(backend, S3Backend):
        backend.client.upload_file(str(data), backend.bucket, backend._blob(digest))
        return
    assert isinstance(backend, OciBackend)
    assert storage is not None  # the registry fixture's storage directory (under xdist, a worker's basetemp)
    assert (storage / "docker/registry/v2/blobs/sha256" / digest[7:9] / digest[7:] / "data").is_file()
    shutil.copyfile(data, storage / "docker/registry/v2/blobs/sha256" / digest[7:9] / digest[7:] / "data")


@pytest.mark.guest
@ROOT_ONLY
def test_a_secret_bearing_layer_and_those_on_it_are_never_pushed(farm: tuple[Host, Host, str, str]) -> None:
    a = farm[0]
    text = DEFINITION.format(last="one").replace(
        "{write: '/opt/app/version:1'}]", "{write: '/opt/app/version:1'}, {root-password: 'password:s3cret'}]")
    (a.project / "secret.yaml").write_text(text)
    r = a.run("build", "secret.yaml", "-o", str(a.root / "s"), "--dry-run", "--trust-image")
    assert "(not pushed: it carries a secret (put secrets in the last layer))" in r.stdout, r.stdout
    assert "(not pushed: it is built on a layer that carries a secret)" in r.stdout, r.stdout
    assert f"  output: {VMDK} (vmdk) — convert (not pushed: it is built on a layer that carries a secret)" in r.stdout
    result, _ = a.build("s", definition="secret.yaml")
    keys = [str(x["key"]) for x in result["layers"]]
    r = a.run("cache", "ls", "--remote", "--json")
    listed = json.loads(r.stdout)["layers"]
    on_remote = {x["key"] for x in listed}
    assert keys[0] in on_remote and keys[1] not in on_remote and keys[2] not in on_remote, (keys, on_remote)
    assert [x["kind"] for x in listed] == ["layer"], listed  # nor the outputs made on the secret


@pytest.mark.guest
@ROOT_ONLY
def test_two_hosts_building_one_key_at_once_both_succeed(farm: tuple[Host, Host, str, str]) -> None:
    a, b, _, _ = farm
    argv = ["build", "farm.yaml", "--json", "--trust-image"]
    procs = [subprocess.Popen([*IMGSMITH, *argv, "-o", str(h.root / "out")], cwd=h.project, env=h.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for h in (a, b)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        assert json.loads(out)["outputs"]
    r = a.run("cache", "verify", "--remote")
    assert r.returncode == 0 and "remote entries verified" in r.stdout, r.stdout
    r = a.run("cache", "prune", "--remote", "--all")
    assert r.returncode == 0 and r.stdout.splitlines()[-1].startswith("removed "), r.stdout
    assert json.loads(a.run("cache", "ls", "--remote", "--json").stdout)["layers"] == []


# --- settings and signatures (no server) ---------------------------------------------------------

def test_settings_come_from_the_command_line_then_the_environment_then_the_config(tmp_path: Path) -> None:
    from imgsmith.cache.config import load_settings
    from imgsmith.errors import UsageError
    cfg = tmp_path / "config.toml"
    cfg.write_text('[cache]\nremote = "oci://127.0.0.1:5000/team/layers"\nsigning-key = "k"\n'
                   'trusted-keys = ["k.pub"]\n')
    env = {"IMGSMITH_CONFIG": str(cfg)}
    s = load_settings(env=env)
    assert s is not None and s.url.scheme == "oci" and s.url.path == "team/layers" and s.push
    assert s.signing_key == tmp_path / "k" and s.trusted_keys == (tmp_path / "k.pub",)
    s = load_settings(env={**env, "IMGSMITH_CACHE_REMOTE": "s3://b/p?endpoint=http://127.0.0.1:9"})
    assert s is not None and s.url.host == "b" and s.url.params == {"endpoint": "http://127.0.0.1:9"}
    s = load_settings(remote="s3://c", pull_only=True, env=env)
    assert s is not None and s.url.host == "c" and not s.push
    assert load_settings(remote="none", env=env) is None
    assert load_settings(env={"IMGSMITH_CONFIG": str(tmp_path / "absent.toml")}) is None
    with pytest.raises(UsageError, match=r"cache remote 'http://x': give s3://BUCKET/PREFIX\?endpoint=URL or oci://"):
        load_settings(remote="http://x", env=env)
    cfg.write_text('[cache]\nremote = "s3://b"\npush = "yes"\n')
    with pytest.raises(UsageError, match=r"push must be true or false"):
        load_settings(env=env)
    cfg.write_text('[cache]\nremotes = "s3://b"\n')
    with pytest.raises(UsageError, match=r"\[cache\] has no setting 'remotes'"):
        load_settings(env=env)


def test_a_signature_covers_every_field_and_names_its_key(tmp_path: Path) -> None:
    from imgsmith.cache.signing import Signer, TrustedKeys
    private, public = _keys(tmp_path, "a")
    other, _ = _keys(tmp_path, "b")
    trusted = TrustedKeys.load([public])
    doc = Signer.load(private).sign({"v": 1, "key": "k", "blob": "sha256:" + "0" * 64})
    assert trusted.problem(doc) is None
    assert trusted.problem({**doc, "blob": "sha256:" + "1" * 64}) == (
        f"the entry's signature by key {doc['signer']} does not match its content")
    foreign = Signer.load(other).sign(doc)
    assert trusted.problem(foreign) == f"the entry is signed by key {foreign['signer']}, which this host does not trust"
    assert trusted.problem({"v": 1}) == "the entry is not signed"
    assert (private.stat().st_mode & 0o777) == 0o600


def test_an_output_is_shared_when_converting_it_compresses_and_keyed_by_every_input_of_its_bytes(
        tmp_path: Path) -> None:
    from imgsmith.disk.convert import make_target
    from imgsmith.sharing import output_entry_key, worth_sharing
    shared = {"openstack": True, "aws": True, "vmware": True, "gcp": True, "azure": False, "kvm": False,
              "hyperv": False, "virtualbox": False}
    assert {p: worth_sharing(make_target(tmp_path / "x", preset=p)) for p in shared} == shared
    assert not worth_sharing(make_target(tmp_path / "x.raw", fmt="raw"))
    assert not worth_sharing(make_target(tmp_path / "x.vmdk", fmt="vmdk"))  # monolithicSparse: no compression
    assert worth_sharing(make_target(tmp_path / "x.qcow2", fmt="qcow2", options={"compression": "zstd"}))
    chain, tools = ["sha256:" + "1" * 64, "sha256:" + "2" * 64], {"converter": 1, "qemu-img": "qemu-img 7.2"}
    aws = make_target(tmp_path / "a" / "x.vmdk", preset="aws")
    key = output_entry_key(chain, aws, tools)
    assert key == output_entry_key(chain, make_target(tmp_path / "b" / "x.vmdk", preset="aws"), tools)  # not the dir
    others = [output_entry_key(chain[:1], aws, tools), output_entry_key(chain[::-1], aws, tools),
              output_entry_key(chain, aws, {**tools, "qemu-img": "qemu-img 8.0"}),
              output_entry_key(chain, aws, {**tools, "converter": 2}),
              output_entry_key(chain, make_target(tmp_path / "x.vmdk", fmt="vmdk",
                                                  options={"subformat": "streamOptimized"}), tools),
              output_entry_key(chain, make_target(tmp_path / "x.vmdk", preset="aws", options={"hwversion": "13"}),
                               tools),
              output_entry_key(chain, make_target(tmp_path / "x.ova", preset="vmware"), tools),
              output_entry_key(chain, make_target(tmp_path / "y.ova", preset="vmware"), tools)]  # the OVF names it
    assert len({key, *others}) == len(others) + 1
