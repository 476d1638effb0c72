"""`imgsmith publish` to S3 (moto's server on 127.0.0.1, path-style), and to an OCI registry (Debian's
docker-registry), each started once per module. Bytes are read back from the store and compared."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from publishing import IMGSMITH, build, run
from servers import Relay, Server, closed_port, registry_available, start_moto, start_registry

KEYS = {"AWS_ACCESS_KEY_ID": "AKIDPUBLISHTEST", "AWS_SECRET_ACCESS_KEY": "s3cr3t-never-shown-anywhere",
        "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_moto(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


def s3(server: Server, region: str = "eu-west-1") -> Any:
    import boto3
    return boto3.client("s3", endpoint_url=server.url, region_name=region, aws_access_key_id="x",
                        aws_secret_access_key="y")


def entry(url: str, bucket: str, region: str = "eu-west-1") -> str:
    return f"""\
  - name: store
    output: pubtest.raw
    to: s3
    endpoint: {url}
    region: {region}
    bucket: {bucket}
    key: "images/{{name}}-{{sha256:12}}.raw"
"""


def bucket(server: Server, name: str, region: str = "eu-west-1") -> str:
    s3(server, region).create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})
    return name


def test_multipart_etag_metadata_bytes_back_and_republish(moto: Server, tmp_path: Path) -> None:
    b = bucket(moto, "multi")
    out = build(tmp_path, entry(moto.url, b))
    r = run("publish", "out", "--part-size", "5M", "--jobs", "3", "-v", cwd=tmp_path, env=KEYS)
    assert r.returncode == 0, r.stderr
    data = (out / "pubtest.raw").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    key = f"images/pubtest-{sha[:12]}.raw"
    assert r.stdout == f"store: published pubtest.raw -> s3://{b}/{key} ({len(data):,} bytes, " + \
        r.stdout.split(" bytes, ")[1]
    obj = s3(moto).get_object(Bucket=b, Key=key)
    assert obj["Body"].read() == data
    assert obj["Metadata"] == {"imgsmith-sha256": sha}
    parts = -(-len(data) // (5 << 20))
    md5s = b"".join(hashlib.md5(data[i:i + (5 << 20)]).digest() for i in range(0, len(data), 5 << 20))
    assert obj["ETag"].strip('"') == f"{hashlib.md5(md5s).hexdigest()}-{parts}"
    rec = json.loads((out / "manifest.json").read_text())["published"]["store"]
    assert (rec["url"], rec["status"], rec["region"]) == (f"s3://{b}/{key}", "uploaded", "eu-west-1")
    assert not (out / ".imgsmith-publish" / "store.json").exists()
    start = time.monotonic()
    r = run("publish", "out", "--json", cwd=tmp_path, env=KEYS)
    doc = json.loads(r.stdout)["destinations"][0]
    assert (doc["status"], doc["sent_bytes"]) == ("unchanged", 0)
    assert time.monotonic() - start < 10
    # No secret in argv, logs, the manifest or the state directory.
    for text in (r.stderr, r.stdout, (out / "manifest.json").read_text()):
        assert KEYS["AWS_SECRET_ACCESS_KEY"] not in text


def test_build_publish_end_to_end_then_already_published(moto: Server, tmp_path: Path) -> None:
    """`imgsmith build --publish`: the build, then the upload; the manifest records it; a second run sends nothing."""
    from publishing import DEFINITION, make_disk
    b = bucket(moto, "built")
    make_disk(tmp_path / "disk.raw", 24)
    (tmp_path / "image.yaml").write_text(DEFINITION.format(publish=entry(moto.url, b)))
    r = run("build", "image.yaml", "-o", "out", "--publish", "--part-size", "5M", "--publish-jobs", "2",
            cwd=tmp_path, env=KEYS)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    data = (out / "pubtest.raw").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    key = f"images/pubtest-{sha[:12]}.raw"
    lines = r.stdout.splitlines()
    assert lines[0].startswith("out/pubtest.qcow2  qcow2  ") and lines[3].startswith("manifest: out/manifest.json")
    assert lines[4].startswith(f"store: published pubtest.raw -> s3://{b}/{key} ({len(data):,} bytes, ")
    assert s3(moto).get_object(Bucket=b, Key=key)["Body"].read() == data
    rec = json.loads((out / "manifest.json").read_text())["published"]["store"]
    assert (rec["kind"], rec["output"], rec["sha256"], rec["url"], rec["status"]) == (
        "s3", "pubtest.raw", sha, f"s3://{b}/{key}", "uploaded")
    r = run("build", "image.yaml", "-o", "out", "--publish", cwd=tmp_path, env=KEYS)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["pubtest: up to date (out)", f"store: already published: pubtest.raw is at "
                                                                  f"s3://{b}/{key} (the manifest's record; --verify "
                                                                  "asks the destination); nothing sent"]
    r = run("build", "image.yaml", "-o", "out", "--publish", "--verify", cwd=tmp_path, env=KEYS)
    assert r.stdout.splitlines()[1] == f"store: unchanged: pubtest.raw is already there (s3://{b}/{key}); nothing sent"
    doc = json.loads(run("build", "image.yaml", "-o", "out", "--publish", "--json", cwd=tmp_path, env=KEYS).stdout)
    assert [(p["status"], p["sent_bytes"]) for p in doc["published"]] == [("unchanged", 0)]
    assert json.loads((out / "manifest.json").read_text())["published"]["store"]["published_at"] == \
        rec["published_at"]


def test_the_record_is_proof_verify_asks_and_another_spec_is_not_taken_for_it(moto: Server, tmp_path: Path) -> None:
    """A republish with the manifest's record sends not one request (counted by a relay in front of moto);
    --verify asks; another bucket, or an edit elsewhere in the definition, is judged by what it changes."""
    relay = Relay(moto.url)
    try:
        b, other = bucket(moto, "recorded"), bucket(moto, "other")
        out = build(tmp_path, entry(relay.url, b))
        assert run("publish", "out", cwd=tmp_path, env=KEYS).returncode == 0
        data = (out / "pubtest.raw").read_bytes()
        assert relay.take()[1] > len(data)

        def publish(*args: str) -> dict[str, Any]:
            r = run("publish", "out", "--json", *args, cwd=tmp_path, env=KEYS)
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout)["destinations"][0]  # type: ignore[no-any-return]
        doc = publish()
        assert (doc["status"], doc["found_by"], doc["sent_bytes"]) == ("unchanged", "record", 0)
        assert relay.take() == (0, 0)
        dry = publish("--dry-run")
        assert (dry["status"], dry["actions"]) == ("unchanged", [])  # exactly what a run would send: nothing
        assert relay.take() == (0, 0)
        doc = publish("--verify")
        assert (doc["status"], doc["found_by"], doc["sent_bytes"]) == ("unchanged", "destination", 0)
        connections, sent = relay.take()
        assert connections >= 1 and 0 < sent < 10_000  # HeadBucket and HeadObject: no image byte
        # An edit elsewhere in the definition: the quick check misses, the spec's fingerprint still matches.
        image = tmp_path / "image.yaml"
        image.write_text(image.read_text() + "# a comment\n")
        doc = publish()
        assert (doc["status"], doc["found_by"]) == ("unchanged", "record") and relay.take() == (0, 0)
        # Another bucket: the record is not for it; the image goes up again.
        image.write_text(image.read_text().replace(f"bucket: {b}", f"bucket: {other}"))
        doc = publish()
        assert (doc["status"], doc["record"]["bucket"]) == ("published", other)
        assert relay.take()[1] > len(data)
        key = doc["record"]["key"]
        assert s3(moto).get_object(Bucket=other, Key=key)["Body"].read() == data
        doc = publish()
        assert (doc["status"], doc["found_by"]) == ("unchanged", "record") and relay.take() == (0, 0)
    finally:
        relay.stop()


def test_killed_upload_resumes(moto: Server, tmp_path: Path) -> None:
    b = bucket(moto, "resume")
    out = build(tmp_path, entry(moto.url, b), mib=64)
    state = out / ".imgsmith-publish" / "store.json"
    env = {**os.environ, "IMGSMITH_CACHE": os.fspath(tmp_path / "cache"), **KEYS}
    p = subprocess.Popen([*IMGSMITH, "publish", "out", "--part-size", "5M", "--jobs", "1"], cwd=tmp_path, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if len(json.loads(state.read_text())["parts"]) >= 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = json.loads(state.read_text())
    total = -(-(out / "pubtest.raw").stat().st_size // (5 << 20))
    assert 2 <= len(done["parts"]) < total, "the upload finished before it could be killed"
    listed = s3(moto).list_objects_v2(Bucket=b).get("KeyCount", 0)
    assert listed == 0  # nothing registered: the object exists only once completed
    r = run("publish", "out", "--part-size", "5M", "-v", cwd=tmp_path, env=KEYS)
    assert r.returncode == 0, r.stderr
    assert f"of {total} part(s) already there" in r.stderr
    sent = json.loads(run("publish", "out", "--json", cwd=tmp_path, env=KEYS).stdout)["destinations"][0]
    assert sent["status"] == "unchanged"
    key = json.loads((out / "manifest.json").read_text())["published"]["store"]["key"]
    assert s3(moto).get_object(Bucket=b, Key=key)["Body"].read() == (out / "pubtest.raw").read_bytes()


def test_bad_input_one_line_nothing_sent(moto: Server, tmp_path: Path) -> None:
    b = bucket(moto, "elsewhere", "ap-southeast-1")
    build(tmp_path, entry(moto.url, b, region="eu-west-1"))
    r = run("publish", "out", cwd=tmp_path, env=KEYS)
    assert (r.returncode, r.stderr) == (1, "imgsmith: error: store: bucket elsewhere is in ap-southeast-1, not "
                                           "eu-west-1: the bucket must be in the region the image is for\n")
    r = run("publish", "out", cwd=tmp_path, env={**KEYS, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""})
    assert (r.returncode, r.stderr) == (1, "imgsmith: error: store: no S3 credentials: set AWS_ACCESS_KEY_ID and "
                                           "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or write ~/.aws/credentials\n")
    r = run("publish", "out", "--to", "nope", cwd=tmp_path, env=KEYS)
    assert (r.returncode, r.stderr) == (2, "imgsmith: error: unknown destination 'nope' (the definition's: store)\n")
    (tmp_path / "image.yaml").write_text((tmp_path / "image.yaml").read_text().replace(
        moto.url, f"http://127.0.0.1:{closed_port()}"))
    r = run("publish", "out", cwd=tmp_path, env=KEYS)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith("imgsmith: error: store: s3 HeadBucket: Could not connect to the endpoint URL")
    assert s3(moto).list_objects_v2(Bucket=b).get("KeyCount", 0) == 0


def test_definition_errors_at_load(tmp_path: Path) -> None:
    from publishing import DEFINITION, make_disk
    make_disk(tmp_path / "disk.raw", 12)
    (tmp_path / "image.yaml").write_text(DEFINITION.format(publish="""\
  - {name: a, output: pubtest.vmdk, to: oci://127.0.0.1:5000/x/y:1}
  - {name: a, output: pubtest.raw, to: s3, bucket: b}
  - {name: c, output: nothing, to: glance}
  - {name: d, output: pubtest.raw, to: ftp}
  - {name: e, output: pubtest.raw, to: glance, bucket: b}
"""))
    r = run("build", "image.yaml", "--dry-run", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "imgsmith: error: image.yaml:9:23: publish[0].output: pubtest.vmdk: oci does not take a vmdk image (it "
        "takes qcow2, raw)",
        "imgsmith: error: image.yaml:10:12: publish[1].name: destination name 'a' is used twice",
        "imgsmith: error: image.yaml:11:23: publish[2].output: no output named 'nothing' (outputs: pubtest.qcow2, "
        "pubtest.raw, pubtest.vmdk)",
        "imgsmith: error: image.yaml:12:40: publish[3].to: unknown destination kind 'ftp' (known: glance, s3, aws, "
        "aliyun, tencent, oci://REGISTRY/REPO:TAG)",
        "imgsmith: error: image.yaml:13:56: publish[4].bucket: glance does not use bucket",
    ]


# --- OCI -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    why = registry_available()
    if why:
        pytest.skip(why)
    server = start_registry(tmp_path_factory.mktemp("registry"))
    yield server
    server.stop()


def test_containerdisk_push_inspect_pull_back(registry: Server, tmp_path: Path) -> None:
    host = registry.url.removeprefix("http://")
    out = build(tmp_path, f"  - {{name: kv, output: pubtest.qcow2, to: 'oci://{host}/images/pubtest:v1', "
                          "insecure: true}\n")
    r = run("publish", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    sha = hashlib.sha256((out / "pubtest.qcow2").read_bytes()).hexdigest()
    inspect = json.loads(subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw",
                                         f"docker://{host}/images/pubtest:v1"], capture_output=True, text=True,
                                        check=True).stdout)
    assert inspect["annotations"]["org.imgsmith.sha256"] == sha
    assert inspect["annotations"]["org.imgsmith.firmware"] == "uefi"
    dest = tmp_path / "pulled"
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{host}/images/pubtest:v1",
                    f"dir:{dest}"], check=True, capture_output=True)
    layer = dest / inspect["layers"][0]["digest"].removeprefix("sha256:")
    import tarfile
    with tarfile.open(layer) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert sorted(members) == ["disk", "disk/pubtest.qcow2"]
        m = members["disk/pubtest.qcow2"]
        assert (m.uid, m.gid) == (107, 107)
        f = tar.extractfile(m)
        assert f is not None and f.read() == (out / "pubtest.qcow2").read_bytes()
    r = run("publish", "out", cwd=tmp_path)
    assert r.stdout.startswith("kv: already published: pubtest.qcow2 is at ")
    r = run("publish", "out", "--verify", cwd=tmp_path)
    assert r.stdout.startswith("kv: unchanged: pubtest.qcow2 is already there")
