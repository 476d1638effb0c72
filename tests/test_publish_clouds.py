"""`imgsmith publish` to Alibaba Cloud and Tencent Cloud: the upload into moto's S3 server standing in
for OSS and COS (their S3-compatible APIs), the import against the ECS and CVM stand-ins.

The stand-ins (tests/standins/aliyun.py, tencent.py) recompute every request's signature
(ACS3-HMAC-SHA256, TC3-HMAC-SHA256) with the keys configured here, and read the bucket's region
and the object from moto, so an import of an object that was not uploaded, or of a bucket in
another region, is refused as the clouds refuse it. Nothing here leaves 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from publishing import HYBRID, IMGSMITH, UEFI, build, run, with_guest
from servers import Server, start_moto
from standins.aliyun import AliyunStandIn
from standins.tencent import TencentStandIn

ALI_REGION, TC_REGION = "cn-hangzhou", "ap-guangzhou"
ALI_KEYS = {"ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAI5tStandInKeyId",
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "ali-s3cr3t-never-shown"}
TC_KEYS = {"TENCENTCLOUD_SECRET_ID": "AKIDStandInSecretId", "TENCENTCLOUD_SECRET_KEY": "tc-s3cr3t-never-shown"}
ROLE = ("ECS service account Have no right to access your OSS.please attach a role of access your oss to ECS "
        "service account.")


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_moto(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


def s3(server: Server, region: str) -> Any:
    import boto3
    return boto3.client("s3", endpoint_url=server.url, region_name=region, aws_access_key_id="x",
                        aws_secret_access_key="y")


def store(server: Server) -> Callable[[str, str], tuple[str, int] | None]:
    """The object store as the cloud's import sees it: (the bucket's region, the object's size), or None."""
    from botocore.exceptions import ClientError

    def look(bucket: str, key: str) -> tuple[str, int] | None:
        client = s3(server, "us-east-1")
        try:
            region = client.head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPHeaders"]["x-amz-bucket-region"]
            return str(region), int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
        except ClientError:
            return None
    return look


@pytest.fixture
def ecs(moto: Server) -> Iterator[AliyunStandIn]:
    standin = AliyunStandIn(ALI_KEYS["ALIBABA_CLOUD_ACCESS_KEY_ID"], ALI_KEYS["ALIBABA_CLOUD_ACCESS_KEY_SECRET"],
                            ALI_REGION, store(moto)).start()
    yield standin
    standin.stop()


@pytest.fixture
def cvm(moto: Server) -> Iterator[TencentStandIn]:
    standin = TencentStandIn(TC_KEYS["TENCENTCLOUD_SECRET_ID"], TC_KEYS["TENCENTCLOUD_SECRET_KEY"], TC_REGION,
                             store(moto)).start()
    yield standin
    standin.stop()


def setup(moto: Server, tmp_path: Path, kind: str, api: str, bucket: str, bucket_region: str | None = None,
          table: str = UEFI) -> Path:
    region = ALI_REGION if kind == "aliyun" else TC_REGION
    where = bucket_region or region
    s3(moto, where).create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": where})
    out = build(tmp_path, f"""\
  - name: {kind}
    output: pubtest.qcow2
    to: {kind}
    endpoint: {moto.url}
    api-endpoint: {api}
    region: {region}
    bucket: {bucket}
    key: "imports/{{name}}-{{sha256:12}}.qcow2"
    image-name: "{{name}}-{{sha256:12}}"
    tags: [team=images]
""", table=table)
    with_guest(out)
    (tmp_path / "home").mkdir(exist_ok=True)
    return out


def env(home: Path, keys: dict[str, str] | None = None) -> dict[str, str]:
    """A user with no other cloud configuration: HOME is the test's, no AWS keys to fall back on."""
    blank = dict.fromkeys((*ALI_KEYS, *TC_KEYS, "ALICLOUD_ACCESS_KEY", "ALICLOUD_SECRET_KEY", "AWS_ACCESS_KEY_ID",
                           "AWS_SECRET_ACCESS_KEY"), "")
    return {**blank, "HOME": os.fspath(home), "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", **(keys or {})}


def digest(out: Path) -> tuple[bytes, str]:
    data = (out / "pubtest.qcow2").read_bytes()
    return data, hashlib.sha256(data).hexdigest()


# --- Alibaba Cloud ------------------------------------------------------------------------------------

def test_aliyun_upload_import_record_and_republish(moto: Server, ecs: AliyunStandIn, tmp_path: Path) -> None:
    out = setup(moto, tmp_path, "aliyun", ecs.url, "oss-images")
    data, sha = digest(out)
    key = f"imports/pubtest-{sha[:12]}.qcow2"
    r = run("publish", "out", "--part-size", "5M", cwd=tmp_path, env=env(tmp_path / "home", ALI_KEYS))
    assert r.returncode == 0, r.stderr
    assert ecs.actions() == ["DescribeImages", "ImportImage", "DescribeImages", "DescribeImages"]
    assert s3(moto, ALI_REGION).get_object(Bucket="oss-images", Key=key)["Body"].read() == data
    imp = ecs.requests[1][1]
    assert {k: v for k, v in imp.items() if k != "Description"} == {
        "RegionId": ALI_REGION, "ImageName": f"pubtest-{sha[:12]}", "Architecture": "x86_64", "OSType": "linux",
        "Platform": "Debian", "BootMode": "UEFI", "LicenseType": "Auto", "ClientToken": f"imgsmith-{sha[:54]}",
        "DiskDeviceMapping.1.OSSBucket": "oss-images", "DiskDeviceMapping.1.OSSObject": key,
        "DiskDeviceMapping.1.Format": "QCOW2", "DiskDeviceMapping.1.DiskImageSize": "1",
        "Tag.1.Key": "imgsmith-sha256", "Tag.1.Value": sha, "Tag.2.Key": "team", "Tag.2.Value": "images"}
    image = next(iter(ecs.images.values()))
    rec = json.loads((out / "manifest.json").read_text())["published"]["aliyun"]
    assert (rec["image_id"], rec["import_task_id"], rec["region"], rec["status"], rec["import_status"],
            rec["url"], rec["platform"]) == (image.image_id, image.task_id, ALI_REGION, "registered", "Available",
                                             f"s3://oss-images/{key}", "Debian")
    assert r.stdout.startswith(f"aliyun: published pubtest.qcow2 -> {image.image_id} ({len(data):,} bytes, ")
    # Republished: one signed DescribeImages finds the tagged image; nothing uploaded, nothing imported.
    before = len(ecs.requests)
    r = run("publish", "out", "--json", cwd=tmp_path, env=env(tmp_path / "home", ALI_KEYS))
    doc = json.loads(r.stdout)["destinations"][0]
    assert (doc["status"], doc["sent_bytes"], doc["record"]["image_id"]) == ("unchanged", 0, image.image_id)
    assert ecs.actions()[before:] == [] and doc["found_by"] == "record"  # the manifest's record: nothing asked
    start = time.monotonic()
    r = run("publish", "out", "--json", "--verify", cwd=tmp_path, env=env(tmp_path / "home", ALI_KEYS))
    doc = json.loads(r.stdout)["destinations"][0]
    assert (doc["status"], doc["sent_bytes"], doc["found_by"]) == ("unchanged", 0, "destination")
    assert ecs.actions()[before:] == ["DescribeImages"] and time.monotonic() - start < 15


@pytest.mark.parametrize("source", ["ALICLOUD", "config.json"])
def test_aliyun_credentials_from_their_other_places(moto: Server, ecs: AliyunStandIn, tmp_path: Path,
                                                    source: str) -> None:
    setup(moto, tmp_path, "aliyun", ecs.url, f"oss-{source.lower().replace('.', '-')}")
    kid, secret = ALI_KEYS["ALIBABA_CLOUD_ACCESS_KEY_ID"], ALI_KEYS["ALIBABA_CLOUD_ACCESS_KEY_SECRET"]
    keys = {"ALICLOUD_ACCESS_KEY": kid, "ALICLOUD_SECRET_KEY": secret} if source == "ALICLOUD" else {}
    if source == "config.json":
        (tmp_path / "home" / ".aliyun").mkdir()
        (tmp_path / "home" / ".aliyun" / "config.json").write_text(json.dumps({"current": "work", "profiles": [
            {"name": "default", "mode": "AK", "access_key_id": "LTAIother", "access_key_secret": "other"},
            {"name": "work", "mode": "AK", "access_key_id": kid, "access_key_secret": secret,
             "region_id": ALI_REGION}]}))
    r = run("publish", "out", "-q", cwd=tmp_path, env=env(tmp_path / "home", keys))
    assert (r.returncode, r.stderr) == (0, "")
    assert "ImportImage" in ecs.actions()  # every request's signature checked with these keys


def test_aliyun_missing_credentials_nothing_sent(moto: Server, ecs: AliyunStandIn, tmp_path: Path) -> None:
    setup(moto, tmp_path, "aliyun", ecs.url, "oss-nokeys")
    r = run("publish", "out", cwd=tmp_path, env=env(tmp_path / "home"))
    home = tmp_path / "home"
    assert (r.returncode, r.stderr) == (1, "imgsmith: error: aliyun: no Alibaba Cloud credentials: set "
                                           "ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET, or run "
                                           f"`aliyun configure` ({home}/.aliyun/config.json)\n")
    assert ecs.requests == [] and s3(moto, ALI_REGION).list_objects_v2(Bucket="oss-nokeys").get("KeyCount", 0) == 0


def test_aliyun_bucket_in_another_region_refused_before_sending(moto: Server, ecs: AliyunStandIn,
                                                                tmp_path: Path) -> None:
    setup(moto, tmp_path, "aliyun", ecs.url, "oss-shanghai", bucket_region="cn-shanghai")
    r = run("publish", "out", "-q", cwd=tmp_path, env=env(tmp_path / "home", ALI_KEYS))
    assert (r.returncode, r.stderr) == (1, "imgsmith: error: aliyun: bucket oss-shanghai is in cn-shanghai, not "
                                           "cn-hangzhou: the bucket must be in the region the image is for\n")
    assert ecs.requests == []
    assert s3(moto, "cn-shanghai").list_objects_v2(Bucket="oss-shanghai").get("KeyCount", 0) == 0


def test_aliyun_failed_import_reports_the_task_error(moto: Server, ecs: AliyunStandIn, tmp_path: Path) -> None:
    setup(moto, tmp_path, "aliyun", ecs.url, "oss-failing")
    ecs.fail = ("InvalidImageFormat.Malformed", "The specified Image Format is wrongly formed.")
    r = run("publish", "out", "-q", cwd=tmp_path, env=env(tmp_path / "home", ALI_KEYS))
    image = next(iter(ecs.images.values()))
    assert (r.returncode, r.stderr) == (1, f"imgsmith: error: aliyun: aliyun import of {image.image_id} (task "
                                           f"{image.task_id}) failed: CreateFailed: InvalidImageFormat.Malformed: "
                                           "The specified Image Format is wrongly formed.\n")
    assert ecs.actions()[-1] == "DescribeTaskAttribute"
    assert "published" not in json.loads((tmp_path / "out" / "manifest.json").read_text())


def test_aliyun_refusal_in_its_own_words_then_retry_sends_no_bytes(moto: Server, ecs: AliyunStandIn,
                                                                   tmp_path: Path) -> None:
    setup(moto, tmp_path, "aliyun", ecs.url, "oss-norole")
    ecs.refuse = {"ImportImage": (403, "NoSetRoletoECSServiceAcount", ROLE)}
    r = run("publish", "out", "-q", cwd=tmp_path, env=env(tmp_path / "home", ALI_KEYS))
    assert (r.returncode, r.stderr) == (1, f"imgsmith: error: aliyun: ecs ImportImage: NoSetRoletoECSServiceAcount: "
                                           f"{ROLE}\n")
    ecs.refuse = {}  # the user authorized AliyunECSImageImportDefaultRole
    r = run("publish", "out", "--json", cwd=tmp_path, env=env(tmp_path / "home", ALI_KEYS))
    doc = json.loads(r.stdout)["destinations"][0]
    assert (r.returncode, doc["status"], doc["sent_bytes"]) == (0, "published", 0)  # the object was there


def test_aliyun_import_still_running_at_the_timeout(moto: Server, ecs: AliyunStandIn, tmp_path: Path) -> None:
    setup(moto, tmp_path, "aliyun", ecs.url, "oss-slow")
    ecs.creating_polls = 1000
    r = run("publish", "out", "-q", "--timeout", "2", cwd=tmp_path, env=env(tmp_path / "home", ALI_KEYS))
    image = next(iter(ecs.images.values()))
    assert (r.returncode, r.stderr) == (1, f"imgsmith: error: aliyun: aliyun import of {image.image_id} (task "
                                           f"{image.task_id}) still Creating (27%) after 2 s\n")
    # The next run finds the image importing (by its tag) and waits for it: no second upload or import.
    ecs.creating_polls = 0
    r = run("publish", "out", "--json", cwd=tmp_path, env=env(tmp_path / "home", ALI_KEYS))
    doc = json.loads(r.stdout)["destinations"][0]
    assert (doc["status"], doc["sent_bytes"], doc["record"]["image_id"]) == ("published", 0, image.image_id)
    assert ecs.actions().count("ImportImage") == 1


def test_aliyun_standin_checks_signature_ranges_and_boot_mode(ecs: AliyunStandIn) -> None:
    """The stand-in itself, through the SDK: the documented refusals, and unsigned or wrongly signed requests."""
    import urllib.request

    from alibabacloud_ecs20140526 import models
    from alibabacloud_ecs20140526.client import Client
    from alibabacloud_tea_openapi.exceptions import ClientException
    from alibabacloud_tea_openapi.utils_models import Config
    from darabonba.runtime import RuntimeOptions

    def call(secret: str, **params: Any) -> str:
        client = Client(Config(access_key_id=ALI_KEYS["ALIBABA_CLOUD_ACCESS_KEY_ID"], access_key_secret=secret,
                               region_id=ALI_REGION, endpoint=ecs.url.removeprefix("http://"), protocol="http"))
        with pytest.raises(ClientException) as exc:
            client.import_image_with_options(models.ImportImageRequest().from_map(
                {"RegionId": ALI_REGION, **params}), RuntimeOptions(autoretry=False))
        return f"{exc.value.code}: {exc.value.data['Message']}"

    mapping = {"OSSBucket": "none", "OSSObject": "x.qcow2", "Format": "QCOW2"}
    secret = ALI_KEYS["ALIBABA_CLOUD_ACCESS_KEY_SECRET"]
    assert call("wrong", DiskDeviceMapping=[mapping]) == \
        "SignatureDoesNotMatch: Specified signature is not matched with our calculation."
    assert call(secret) == ('MissingParameter: An input parameter "DiskDeviceMapping.1.OSSBucket" that is mandatory '
                            "for processing the request is not supplied.")
    assert call(secret, Architecture="arm64", BootMode="BIOS", DiskDeviceMapping=[mapping]) == \
        "InvalidBootMode.NotSupport: The specified parameter BootMode is not supported for current image architecture."
    assert call(secret, DiskDeviceMapping=[mapping]) == \
        "InvalidOSSObject.NotFound: The specified OSS object does not exist in this region."
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(urllib.request.Request(ecs.url + "/?RegionId=cn-hangzhou", method="POST",
                                                      headers={"x-acs-action": "ImportImage"}), timeout=5)
    assert http.value.code == 400 and json.loads(http.value.read())["Code"] == "MissingAuthorization"
    assert ecs.actions() == ["ImportImage", "ImportImage"] and ecs.images == {}  # the two judged, none imported


# --- Tencent Cloud ------------------------------------------------------------------------------------

def test_tencent_upload_import_record_and_republish(moto: Server, cvm: TencentStandIn, tmp_path: Path) -> None:
    out = setup(moto, tmp_path, "tencent", cvm.url, "cos-images-1250000000")
    data, sha = digest(out)
    key = f"imports/pubtest-{sha[:12]}.qcow2"
    r = run("publish", "out", "--part-size", "5M", cwd=tmp_path, env=env(tmp_path / "home", TC_KEYS))
    assert r.returncode == 0, r.stderr
    assert cvm.actions() == ["DescribeImages", "ImportImage", "DescribeImages", "DescribeImages"]
    assert s3(moto, TC_REGION).get_object(Bucket="cos-images-1250000000", Key=key)["Body"].read() == data
    imp = cvm.requests[1][1]
    url = f"https://cos-images-1250000000.cos.{TC_REGION}.myqcloud.com/{key}"
    assert {k: v for k, v in imp.items() if k != "ImageDescription"} == {
        "Architecture": "x86_64", "OsType": "Debian", "OsVersion": "12", "ImageUrl": url,
        "ImageName": f"pubtest-{sha[:12]}", "BootMode": "UEFI", "TagSpecification": [{"ResourceType": "image", "Tags": [
            {"Key": "imgsmith-sha256", "Value": sha}, {"Key": "team", "Value": "images"}]}]}
    image_id = next(iter(cvm.images))
    rec = json.loads((out / "manifest.json").read_text())["published"]["tencent"]
    assert (rec["image_id"], rec["image_url"], rec["region"], rec["status"], rec["import_status"]) == \
        (image_id, url, TC_REGION, "registered", "NORMAL")
    assert r.stdout.startswith(f"tencent: published pubtest.qcow2 -> {image_id} ({len(data):,} bytes, ")
    before = len(cvm.requests)
    r = run("publish", "out", "--json", cwd=tmp_path, env=env(tmp_path / "home", TC_KEYS))
    doc = json.loads(r.stdout)["destinations"][0]
    assert (doc["status"], doc["sent_bytes"], doc["record"]["image_id"]) == ("unchanged", 0, image_id)
    assert cvm.actions()[before:] == [] and doc["found_by"] == "record"
    r = run("publish", "out", "--json", "--verify", cwd=tmp_path, env=env(tmp_path / "home", TC_KEYS))
    doc = json.loads(r.stdout)["destinations"][0]
    assert (doc["status"], doc["found_by"]) == ("unchanged", "destination")
    assert cvm.actions()[before:] == ["DescribeImages"]


def test_tencent_credentials_from_tccli(moto: Server, cvm: TencentStandIn, tmp_path: Path) -> None:
    setup(moto, tmp_path, "tencent", cvm.url, "cos-tccli-1250000000")
    (tmp_path / "home" / ".tccli").mkdir()
    (tmp_path / "home" / ".tccli" / "default.credential").write_text(json.dumps(
        {"secretId": TC_KEYS["TENCENTCLOUD_SECRET_ID"], "secretKey": TC_KEYS["TENCENTCLOUD_SECRET_KEY"]}))
    r = run("publish", "out", "-q", cwd=tmp_path, env=env(tmp_path / "home"))
    assert (r.returncode, r.stderr) == (0, "")
    assert "ImportImage" in cvm.actions()


def test_tencent_missing_credentials_nothing_sent(moto: Server, cvm: TencentStandIn, tmp_path: Path) -> None:
    setup(moto, tmp_path, "tencent", cvm.url, "cos-nokeys-1250000000")
    r = run("publish", "out", cwd=tmp_path, env=env(tmp_path / "home"))
    assert (r.returncode, r.stderr) == (1, "imgsmith: error: tencent: no Tencent Cloud credentials: set "
                                           "TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY, or run `tccli "
                                           f"configure` ({tmp_path}/home/.tccli/default.credential)\n")
    assert cvm.requests == []


def test_tencent_failed_import_and_bucket_elsewhere(moto: Server, cvm: TencentStandIn, tmp_path: Path) -> None:
    setup(moto, tmp_path / "a", "tencent", cvm.url, "cos-failing-1250000000")
    cvm.fail = True
    r = run("publish", "out", "-q", cwd=tmp_path / "a", env=env(tmp_path / "a" / "home", TC_KEYS))
    image_id = next(iter(cvm.images))
    assert (r.returncode, r.stderr) == (1, f"imgsmith: error: tencent: tencent import of {image_id} failed: "
                                           "IMPORTFAILED: CVM's import check refused the image (its console names "
                                           "the reason, e.g. VirtioNotInstall or CloudInitNotInstalled; `imgsmith "
                                           "check --cloud tencent` runs the same checks here)\n")
    setup(moto, tmp_path / "b", "tencent", cvm.url, "cos-shanghai-1250000000", bucket_region="ap-shanghai")
    before = len(cvm.requests)
    r = run("publish", "out", "-q", cwd=tmp_path / "b", env=env(tmp_path / "b" / "home", TC_KEYS))
    assert (r.returncode, r.stderr) == (1, "imgsmith: error: tencent: bucket cos-shanghai-1250000000 is in "
                                           "ap-shanghai, not ap-guangzhou: the bucket must be in the region the "
                                           "image is for\n")
    assert len(cvm.requests) == before


def test_tencent_standin_answers_invalid_url_and_checks_the_signature(moto: Server, cvm: TencentStandIn) -> None:
    """The stand-in itself, through the SDK: InvalidUrl for a bucket in another region, TC3 failures."""
    from tencentcloud.common.credential import Credential
    from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
    from tencentcloud.common.profile.client_profile import ClientProfile
    from tencentcloud.common.profile.http_profile import HttpProfile
    from tencentcloud.cvm.v20170312 import cvm_client, models

    s3(moto, "ap-shanghai").create_bucket(Bucket="other-1250000000",
                                          CreateBucketConfiguration={"LocationConstraint": "ap-shanghai"})
    s3(moto, "ap-shanghai").put_object(Bucket="other-1250000000", Key="d.qcow2", Body=b"x" * 512)

    def call(secret: str, **params: Any) -> str:
        client = cvm_client.CvmClient(Credential(TC_KEYS["TENCENTCLOUD_SECRET_ID"], secret), TC_REGION,
                                      ClientProfile(httpProfile=HttpProfile(protocol="http",
                                                                            endpoint=cvm.url.removeprefix("http://"))))
        request = models.ImportImageRequest()
        request.from_json_string(json.dumps(params))
        with pytest.raises(TencentCloudSDKException) as exc:
            client.ImportImage(request)
        return f"{exc.value.code}: {exc.value.message}"

    good = {"Architecture": "x86_64", "OsType": "Debian", "OsVersion": "12", "ImageName": "d"}
    secret = TC_KEYS["TENCENTCLOUD_SECRET_KEY"]
    assert call(secret, **good, ImageUrl="https://other-1250000000.cos.ap-shanghai.myqcloud.com/d.qcow2") == \
        "InvalidUrl: The image URL is invalid: it must be an object of a COS bucket in the region of the import."
    assert call("wrong", **good, ImageUrl="https://x.cos.ap-guangzhou.myqcloud.com/d") == \
        "AuthFailure.SignatureFailure: The provided credentials could not be validated. Please check your signature " \
        "is correct."
    assert call(secret, **good) == "MissingParameter: The request is missing a required parameter `ImageUrl`."
    assert call(secret, **{**good, "Architecture": "arm64"}, ImageUrl="https://x.cos.ap-guangzhou.myqcloud.com/d") \
        == "InvalidParameterValue: The value `arm64` of parameter `Architecture` is invalid."
    assert [a for a in cvm.actions() if a == "ImportImage"] == ["ImportImage", "ImportImage"]  # the two judged


def test_formats_the_imports_take_are_checked_at_load(tmp_path: Path) -> None:
    from publishing import DEFINITION, make_disk
    make_disk(tmp_path / "disk.raw", 12)
    (tmp_path / "image.yaml").write_text(DEFINITION.format(publish="""\
  - {name: a, output: pubtest.vmdk, to: aliyun, bucket: b, region: cn-hangzhou}
  - {name: t, output: pubtest.raw, to: tencent, bucket: b}
  - {name: u, output: pubtest.raw, to: tencent, bucket: b, region: ap-guangzhou, cloud: x}
"""))
    r = run("build", "image.yaml", "--dry-run", cwd=tmp_path)
    assert (r.returncode, r.stderr.splitlines()) == (2, [
        "imgsmith: error: image.yaml:9:23: publish[0].output: pubtest.vmdk: aliyun does not take a vmdk image (it "
        "takes qcow2, raw, vpc)",
        "imgsmith: error: image.yaml:10:5: publish[1]: a tencent destination needs region: and bucket: (the import "
        "reads the bucket of its own region)",
        "imgsmith: error: image.yaml:11:89: publish[2].cloud: tencent does not use cloud"])


# --- secrets: never on a command line, in a log, the manifest or the JSON ------------------------------

def _watch(pid: int, seen: dict[int, set[bytes]], stop: threading.Event) -> None:
    """Every process descended from *pid*, with its command line, sampled until *stop*."""
    while not stop.is_set():
        tree = {pid}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid in tree or int(entry) in tree:
                    tree.add(int(entry))
                    seen.setdefault(int(entry), set()).add(Path(f"/proc/{entry}/cmdline").read_bytes())
            except (OSError, ValueError, IndexError):
                continue
        time.sleep(0.005)


@pytest.mark.parametrize("kind", ["aliyun", "tencent"])
def test_secret_never_on_argv_logs_manifest_or_json(moto: Server, ecs: AliyunStandIn, cvm: TencentStandIn,
                                                    tmp_path: Path, kind: str) -> None:
    standin_url = ecs.url if kind == "aliyun" else cvm.url
    out = setup(moto, tmp_path, kind, standin_url, f"{kind}-secrets-1250000000")
    keys = ALI_KEYS if kind == "aliyun" else TC_KEYS
    secret = next(v for k, v in keys.items() if "SECRET" in k and "ID" not in k)
    dry = run("publish", "out", "--dry-run", "--json", cwd=tmp_path, env=env(tmp_path / "home", keys))
    assert dry.returncode == 0 and secret not in dry.stdout + dry.stderr
    proc = subprocess.Popen([*IMGSMITH, "publish", "out", "-v", "--json", "--part-size", "5M"], cwd=tmp_path,
                            env={**os.environ, "IMGSMITH_CACHE": os.fspath(tmp_path / "cache"),
                                 **env(tmp_path / "home", keys)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[int, set[bytes]] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(proc.pid, seen, stop))
    watcher.start()
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        stop.set()
        watcher.join()
    assert proc.returncode == 0, stderr
    lines = [c for cmdlines in seen.values() for c in cmdlines]
    assert any(b"publish" in c for c in seen[proc.pid])  # the watcher did see the process tree
    # Any descendant would be in `lines` too (the watcher follows parent pids in /proc); with the firmware
    # read from the manifest's boot record, publish spawns none today.
    assert [c for c in lines if secret.encode() in c] == []
    texts = [stdout, stderr, (out / "manifest.json").read_text(),
             *(p.read_text() for p in (out / ".imgsmith-publish").glob("*") if p.is_file())]
    assert [t for t in texts if secret in t] == []
    assert json.loads(stdout)["destinations"][0]["status"] == "published"


# --- the build's cloud check ---------------------------------------------------------------------------

def test_an_output_its_cloud_check_refuses_is_not_published(moto: Server, ecs: AliyunStandIn, cvm: TencentStandIn,
                                                            tmp_path: Path) -> None:
    """Errors of the check for that cloud (in the output's entry), or an output the build removed for them."""
    out = setup(moto, tmp_path / "a", "aliyun", ecs.url, "oss-checked")
    manifest = json.loads((out / "manifest.json").read_text())
    entry = next(o for o in manifest["outputs"] if o["path"] == "pubtest.qcow2")
    entry["checks"] = {"cloud": "aliyun", "errors": [{"rule": "aliyun.virtio", "found": "no virtio_blk in the "
                                                                                        "initramfs"}]}
    (out / "manifest.json").write_text(json.dumps(manifest))
    r = run("publish", "out", cwd=tmp_path / "a", env=env(tmp_path / "a" / "home", ALI_KEYS))
    assert (r.returncode, r.stderr) == (2, "imgsmith: error: aliyun: pubtest.qcow2 fails the aliyun check: "
                                           "aliyun.virtio: no virtio_blk in the initramfs\n")
    out = setup(moto, tmp_path / "t", "tencent", cvm.url, "cos-checked-1250000000")
    manifest = json.loads((out / "manifest.json").read_text())
    entry = next(o for o in manifest["outputs"] if o["path"] == "pubtest.qcow2")
    manifest["outputs"].remove(entry)  # as the build does: the output is deleted and listed as refused
    manifest["refused"] = [{"path": "pubtest.qcow2", "checks": {"cloud": "tencent", "errors": [
        {"rule": "tencent.virtio", "found": "no virtio_blk in the initramfs", "error_name": "VirtioNotInstall"}]}}]
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "pubtest.qcow2").unlink()
    r = run("publish", "out", cwd=tmp_path / "t", env=env(tmp_path / "t" / "home", TC_KEYS))
    assert (r.returncode, r.stderr) == (2, "imgsmith: error: tencent: pubtest.qcow2 was refused by the build's check "
                                           "for tencent: tencent.virtio: no virtio_blk in the initramfs; nothing to "
                                           "publish\n")
    assert ecs.requests == [] and cvm.requests == []
    for b, region in (("oss-checked", ALI_REGION), ("cos-checked-1250000000", TC_REGION)):
        assert s3(moto, region).list_objects_v2(Bucket=b).get("KeyCount", 0) == 0


def test_aliyun_hybrid_image_is_set_to_uefi_preferred(moto: Server, ecs: AliyunStandIn, tmp_path: Path) -> None:
    """ImportImage takes BIOS or UEFI; a disk that boots both ways is then set to UEFI-Preferred (signed, checked)."""
    out = setup(moto, tmp_path, "aliyun", ecs.url, "oss-hybrid", table=HYBRID)
    r = run("publish", "out", "--part-size", "5M", cwd=tmp_path, env=env(tmp_path / "home", ALI_KEYS))
    assert r.returncode == 0, r.stderr
    assert ecs.actions() == ["DescribeImages", "ImportImage", "DescribeImages", "DescribeImages",
                             "ModifyImageAttribute"]
    image = next(iter(ecs.images.values()))
    assert ecs.requests[1][1]["BootMode"] == "BIOS"
    assert ecs.requests[-1][1] == {"RegionId": ALI_REGION, "ImageId": image.image_id, "BootMode": "UEFI-Preferred"}
    assert image.params["BootMode"] == "UEFI-Preferred"
    rec = json.loads((out / "manifest.json").read_text())["published"]["aliyun"]
    assert (rec["image_id"], rec["boot_mode"]) == (image.image_id, "UEFI-Preferred")
