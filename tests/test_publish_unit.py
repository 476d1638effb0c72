"""Publish pieces that need no server: the firmware read from a real partition table, refusals, names."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from imgsmith.definition.model import PublishEntry
from imgsmith.errors import UsageError
from imgsmith.publish.firmware import firmware_of
from imgsmith.publish.oci import layer_headers
from imgsmith.publish.run import artifact_for
from imgsmith.publish.spec import PublishSpec


@pytest.mark.parametrize(("table", "want"), [
    ("label: gpt\n,8M,U\n,,L\n", "uefi"),                                      # ESP only
    ("label: gpt\n,1M,21686148-6449-6E6F-744E-656564454649\n,8M,U\n,,L\n", "hybrid"),  # + bios_grub
    ("label: dos\n,,L,*\n", "bios"),
])
def test_firmware_from_the_partition_table(tmp_path: Path, table: str, want: str) -> None:
    disk = tmp_path / "d.raw"
    subprocess.run(["truncate", "-s", "20M", disk], check=True)
    subprocess.run(["sfdisk", "-q", disk], input=table.encode(), check=True)
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", disk, tmp_path / "d.qcow2"], check=True)
    assert firmware_of(tmp_path / "d.qcow2", "qcow2") == want


def test_refused_output_is_not_published(tmp_path: Path) -> None:
    manifest = {"name": "x", "outputs": [], "refused": [{"path": "x-aliyun.qcow2", "checks": {
        "cloud": "aliyun", "errors": [{"rule": "aliyun.virtio", "found": "no virtio_blk in the initramfs"}]}}]}
    spec = PublishSpec(PublishEntry(name="s", output="aliyun", to="s3", bucket="b"), "s3", "x-aliyun.qcow2")
    with pytest.raises(UsageError) as e:
        artifact_for(tmp_path, manifest, spec)
    assert e.value.message == ("s: x-aliyun.qcow2 was refused by the build's check for aliyun: aliyun.virtio: "
                               "no virtio_blk in the initramfs; nothing to publish")
    json.dumps(manifest)


def test_layer_is_a_whole_tar(tmp_path: Path) -> None:
    import io
    import tarfile
    head, tail = layer_headers("d.qcow2", 3)
    with tarfile.open(fileobj=io.BytesIO(head + b"abc" + tail)) as tar:
        m = tar.getmember("disk/d.qcow2")
        assert (m.uid, m.gid, m.size, m.mode) == (107, 107, 3, 0o444)
        f = tar.extractfile(m)
        assert f is not None and f.read() == b"abc"


def test_aliyun_keys_in_the_documented_order(tmp_path: Path) -> None:
    from imgsmith.publish.base import PublishError
    from imgsmith.publish.credentials import aliyun_keys
    home = {"HOME": str(tmp_path)}
    both = {**home, "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAIa", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "sa",
            "ALICLOUD_ACCESS_KEY": "LTAIb", "ALICLOUD_SECRET_KEY": "sb"}
    k = aliyun_keys("d", both)
    assert (k.key_id, k.secret, k.source) == ("LTAIa", "sa", "ALIBABA_CLOUD_ACCESS_KEY_ID")
    assert "sa" not in repr(k) and k.describe() == "ALIBABA_CLOUD_ACCESS_KEY_ID (key id LTAI…)"
    k = aliyun_keys("d", {**home, "ALICLOUD_ACCESS_KEY": "LTAIb", "ALICLOUD_SECRET_KEY": "sb"})
    assert (k.key_id, k.secret) == ("LTAIb", "sb")
    with pytest.raises(PublishError) as e:
        aliyun_keys("d", home)
    assert e.value.message == ("d: no Alibaba Cloud credentials: set ALIBABA_CLOUD_ACCESS_KEY_ID and "
                               f"ALIBABA_CLOUD_ACCESS_KEY_SECRET, or run `aliyun configure` ({tmp_path}/.aliyun/"
                               "config.json)")
    (tmp_path / ".aliyun").mkdir()
    conf = tmp_path / ".aliyun" / "config.json"
    conf.write_text(json.dumps({"current": "a", "profiles": [
        {"name": "a", "mode": "AK", "access_key_id": "LTAIc", "access_key_secret": "sc"},
        {"name": "sts", "mode": "StsToken", "access_key_id": "STS.d", "access_key_secret": "sd", "sts_token": "t"},
        {"name": "role", "mode": "EcsRamRole", "ram_role_name": "r"}]}))
    assert (aliyun_keys("d", home).key_id, aliyun_keys("d", home).source) == ("LTAIc", f"{conf} profile a")
    k = aliyun_keys("d", {**home, "ALIBABA_CLOUD_PROFILE": "sts"})
    assert (k.key_id, k.secret, k.token) == ("STS.d", "sd", "t")
    with pytest.raises(PublishError) as e:
        aliyun_keys("d", {**home, "ALICLOUD_PROFILE": "role"})
    assert e.value.message == (f"d: {conf}: profile 'role' is mode EcsRamRole without an access key: imgsmith reads "
                               "AK and StsToken profiles")
    with pytest.raises(PublishError) as e:
        aliyun_keys("d", {**home, "ALIBABA_CLOUD_PROFILE": "nope"})
    assert e.value.message.startswith(f"d: {conf} has no profile 'nope'")


def test_tencent_keys_in_the_documented_order(tmp_path: Path) -> None:
    from imgsmith.publish.base import PublishError
    from imgsmith.publish.credentials import tencent_keys
    home = {"HOME": str(tmp_path)}
    with pytest.raises(PublishError) as e:
        tencent_keys("t", home)
    assert e.value.message == ("t: no Tencent Cloud credentials: set TENCENTCLOUD_SECRET_ID and "
                               f"TENCENTCLOUD_SECRET_KEY, or run `tccli configure` ({tmp_path}/.tccli/"
                               "default.credential)")
    (tmp_path / ".tencentcloud").mkdir()
    (tmp_path / ".tencentcloud" / "credentials").write_text("[default]\nsecret_id = AKIDini\nsecret_key = sini\n")
    assert tencent_keys("t", home).key_id == "AKIDini"
    (tmp_path / ".tccli").mkdir()
    (tmp_path / ".tccli" / "default.credential").write_text('{"secretId": "AKIDcli", "secretKey": "scli"}')
    assert (tencent_keys("t", home).key_id, tencent_keys("t", home).secret) == ("AKIDcli", "scli")
    k = tencent_keys("t", {**home, "TENCENTCLOUD_SECRET_ID": "AKIDenv", "TENCENTCLOUD_SECRET_KEY": "senv"})
    assert (k.key_id, k.secret, k.source) == ("AKIDenv", "senv", "TENCENTCLOUD_SECRET_ID")


def test_part_size_grows_to_stay_within_ten_thousand_parts(tmp_path: Path) -> None:
    from imgsmith.publish.base import Artifact, PublishOptions
    from imgsmith.publish.s3 import S3Destination
    spec = PublishSpec(PublishEntry(name="s", output="x.raw", to="s3", bucket="b"), "s3", "x.raw")

    def dest(size: int) -> S3Destination:
        art = Artifact(tmp_path / "x.raw", "raw", "plain", None, size, size, "0" * 64, "x")
        return S3Destination(spec, art, options=PublishOptions())
    assert (dest(600 << 20).part_size, dest(600 << 20).parts) == (8 << 20, 75)
    big = dest(200 * 10**9)  # 200 GB: 8 MiB parts would be 23,842
    assert (big.part_size, big.parts) == (20 << 20, 9537)


def test_a_hybrid_image_boot_mode_per_destination(tmp_path: Path) -> None:
    """GPT with a BIOS boot partition and an ESP: each cloud gets its own word for "either way", or BIOS."""
    from publishing import HYBRID, build, run, with_guest
    out = build(tmp_path, """\
  - {name: ami, output: pubtest.raw, to: aws, region: us-east-1, bucket: b}
  - {name: ecs, output: pubtest.qcow2, to: aliyun, region: cn-hangzhou, bucket: b}
  - {name: cvm, output: pubtest.qcow2, to: tencent, region: ap-guangzhou, bucket: b-1250000000}
  - {name: glance, output: pubtest.qcow2, to: glance}
""", table=HYBRID)
    with_guest(out)
    r = run("publish", "out", "--dry-run", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    calls = {d["name"]: {a["api"]: a["params"] for a in d["actions"]} for d in json.loads(r.stdout)["destinations"]}
    assert calls["ami"]["ec2:RegisterImage"]["BootMode"] == "uefi-preferred"
    # ImportImage documents BIOS and UEFI only; ModifyImageAttribute then sets the dual mode.
    assert calls["ecs"]["ecs:ImportImage"]["BootMode"] == "BIOS"
    assert calls["ecs"]["ecs:ModifyImageAttribute"] == {"RegionId": "cn-hangzhou", "ImageId": "(the image id)",
                                                        "BootMode": "UEFI-Preferred"}
    assert calls["cvm"]["cvm:ImportImage"]["BootMode"] == "Legacy BIOS"
    assert calls["glance"]["POST /v2/images"]["hw_firmware_type"] == "bios"  # nova's default; it boots either way
    # An arm64 guest on such a disk is imported as UEFI: arm64 instances have no BIOS.
    with_guest(out, arch="aarch64")
    r = run("publish", "out", "--dry-run", "--json", "--to", "ecs", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (ecs,) = json.loads(r.stdout)["destinations"]
    params = {a["api"]: a["params"] for a in ecs["actions"]}
    assert params["ecs:ImportImage"]["BootMode"] == "UEFI" and "ecs:ModifyImageAttribute" not in params


def _dest(tmp_path: Path, **entry: object) -> object:
    from imgsmith.publish.base import Artifact
    from imgsmith.publish.run import DESTINATIONS
    fields = {"name": "d", "output": "x.qcow2", "to": "s3", "bucket": "b", **entry}
    e = PublishEntry.model_validate(fields)
    kind = "oci" if str(e.to).startswith("oci://") else e.to
    spec = PublishSpec(e, kind, "x.qcow2")
    art = Artifact(tmp_path / "x.qcow2", "qcow2", "plain", None, 1 << 30, 1 << 20, "a" * 64, "x", firmware="bios")
    return DESTINATIONS[kind](spec, art)


def test_the_fingerprint_changes_with_every_key_of_the_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    base = {"to": "s3", "bucket": "b", "region": "eu-west-1", "endpoint": "http://127.0.0.1:9000",
            "key": "k/{sha256:12}", "tags": ["a=b"]}
    fp = _dest(tmp_path, **base).fingerprint()  # type: ignore[attr-defined]
    assert _dest(tmp_path, **base).fingerprint() == fp  # type: ignore[attr-defined]
    for change in ({"bucket": "c"}, {"region": "eu-west-2"}, {"endpoint": "http://127.0.0.1:9001"},
                   {"key": "other/{sha256:12}"}, {"tags": ["a=c"]}, {"output": "y.qcow2"}):
        assert _dest(tmp_path, **{**base, **change}).fingerprint() != fp, change  # type: ignore[attr-defined]
    monkeypatch.setenv("AWS_PROFILE", "another-account")
    assert _dest(tmp_path, **base).fingerprint() != fp  # type: ignore[attr-defined]
    glance: dict[str, object] = {"to": "glance", "image_name": "x", "properties": {"hw_vif_model": "virtio"}}
    gp = _dest(tmp_path, **glance).fingerprint()  # type: ignore[attr-defined]
    changes: list[dict[str, object]] = [{"image_name": "y"}, {"properties": {"hw_vif_model": "e1000"}},
                                        {"visibility": "public"}, {"cloud": "other"}]
    for edit in changes:
        assert _dest(tmp_path, **{**glance, **edit}).fingerprint() != gp, edit  # type: ignore[attr-defined]
    monkeypatch.setenv("OS_CLOUD", "elsewhere")
    assert _dest(tmp_path, **glance).fingerprint() != gp  # type: ignore[attr-defined]


def test_quick_records_only_for_the_same_definition_output_and_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check made before the definition is loaded: any doubt means 'load it and judge the spec'."""
    from imgsmith.publish.record import definition_digest, quick_key, quick_records
    monkeypatch.delenv("OS_CLOUD", raising=False)
    (tmp_path / "x.qcow2").write_bytes(b"q" * 100)
    st = (tmp_path / "x.qcow2").stat()
    definition = tmp_path / "image.yaml"
    definition.write_text("name: x\n")
    digest = definition_digest("name: x\n", [])

    def record(name: str, dated: bool = False) -> dict[str, object]:
        return {"kind": "glance", "output": "x.qcow2", "sha256": "a" * 64, "image_id": "i-" + name,
                "definition_sha256": digest, "destinations": ["g", "h"], "dated": dated,
                "quick": quick_key(definition=digest, name=name, kind="glance", output="x.qcow2", sha256="a" * 64,
                                   dated=dated)}
    manifest: dict[str, object] = {
        "definition": {"file": "image.yaml", "overrides": []},
        "outputs": [{"path": "x.qcow2", "sha256": "a" * 64, "file_size": 100, "mtime_ns": st.st_mtime_ns}],
        "published": {"g": record("g"), "h": record("h", dated=True)}}
    found = quick_records(tmp_path, manifest, definition, None)
    assert found is not None and sorted(found) == ["g", "h"]
    assert quick_records(tmp_path, manifest, definition, ["g"]) is not None
    assert quick_records(tmp_path, manifest, definition, ["nope"]) is None  # the slow path says "unknown"
    monkeypatch.setenv("OS_CLOUD", "elsewhere")  # chooses another cloud
    assert quick_records(tmp_path, manifest, definition, ["g"]) is None
    monkeypatch.delenv("OS_CLOUD")
    definition.write_text("name: x\n# edited\n")
    assert quick_records(tmp_path, manifest, definition, None) is None
    definition.write_text("name: x\n")
    (tmp_path / "x.qcow2").write_bytes(b"r" * 100)  # rewritten since the build (another mtime)
    assert quick_records(tmp_path, manifest, definition, None) is None
    import os
    os.utime(tmp_path / "x.qcow2", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert quick_records(tmp_path, manifest, definition, None) is not None
    import imgsmith.publish.record as rec
    monkeypatch.setattr(rec, "today", lambda: "20991231")  # a name with {date}: the record holds for its day
    assert quick_records(tmp_path, manifest, definition, ["g"]) is not None
    assert quick_records(tmp_path, manifest, definition, ["h"]) is None
    monkeypatch.setattr(rec, "__version__", "99.0")  # an upgrade may resolve the same text differently
    assert quick_records(tmp_path, manifest, definition, ["g"]) is None


def test_crc32_as_s3_writes_it() -> None:
    """Big-endian, base64; a multipart object's is the CRC32 of the parts' CRC32s (S3's "composite" type)."""
    import base64
    import zlib

    from imgsmith.publish.s3 import composite_crc32, crc32
    assert crc32(b"") == "AAAAAA=="
    assert crc32(b"123456789") == base64.b64encode(bytes.fromhex("cbf43926")).decode()  # the CRC-32 check value
    parts = [crc32(b"a" * 10), crc32(b"b" * 10)]
    joined = base64.b64decode(parts[0]) + base64.b64decode(parts[1])
    assert composite_crc32(parts) == base64.b64encode(zlib.crc32(joined).to_bytes(4, "big")).decode() + "-2"
