"""`imgsmith publish` to AWS: the upload into moto's S3 server, the import against the EC2 stand-in.

The EC2 stand-in (tests/standins/ec2.py) recomputes every request's SigV4 signature with the
keys configured here and answers EC2's documented XML; boto3 reaches it through its own
``AWS_ENDPOINT_URL_EC2``. Nothing here leaves 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from publishing import build, run, with_guest
from servers import Server, start_moto
from standins.ec2 import Ec2StandIn

REGION = "eu-west-1"
KEYS = {"AWS_ACCESS_KEY_ID": "AKIDAWSIMPORTTEST", "AWS_SECRET_ACCESS_KEY": "aws-s3cr3t-never-shown",
        "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
FAILED = "ClientError: Disk validation failed [Unsupported specified file format]"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_moto(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture
def ec2() -> Iterator[Ec2StandIn]:
    standin = Ec2StandIn(KEYS["AWS_ACCESS_KEY_ID"], KEYS["AWS_SECRET_ACCESS_KEY"], REGION).start()
    yield standin
    standin.stop()


def s3(server: Server) -> Any:
    import boto3
    return boto3.client("s3", endpoint_url=server.url, region_name=REGION, aws_access_key_id="x",
                        aws_secret_access_key="y")


def setup(moto: Server, tmp_path: Path, bucket: str) -> Path:
    s3(moto).create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    out = build(tmp_path, f"""\
  - name: ami
    output: pubtest.raw
    to: aws
    endpoint: {moto.url}
    region: {REGION}
    bucket: {bucket}
    key: "imports/{{name}}-{{sha256:12}}.raw"
    image-name: "{{name}}-{{sha256:12}}"
""")
    with_guest(out)
    return out


def env(ec2: Ec2StandIn, **extra: str) -> dict[str, str]:
    return {**KEYS, "AWS_ENDPOINT_URL_EC2": ec2.url, **extra}


def test_import_register_record_and_republish(moto: Server, ec2: Ec2StandIn, tmp_path: Path) -> None:
    out = setup(moto, tmp_path, "amis")
    data = (out / "pubtest.raw").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    key = f"imports/pubtest-{sha[:12]}.raw"
    r = run("publish", "out", "--part-size", "5M", cwd=tmp_path, env=env(ec2))
    assert r.returncode == 0, r.stderr
    assert ec2.actions() == ["DescribeImportSnapshotTasks", "ImportSnapshot", "DescribeImportSnapshotTasks",
                             "DescribeImportSnapshotTasks", "RegisterImage"]
    imp = ec2.requests[1][1]
    assert (imp["DiskContainer.Format"], imp["DiskContainer.UserBucket.S3Bucket"],
            imp["DiskContainer.UserBucket.S3Key"]) == ("RAW", "amis", key)
    assert s3(moto).get_object(Bucket="amis", Key=key)["Body"].read() == data
    reg = ec2.requests[4][1]
    snap = next(iter(ec2.snapshots))
    assert {k: reg[k] for k in ("Name", "Architecture", "BootMode", "RootDeviceName", "VirtualizationType",
                                "EnaSupport", "BlockDeviceMapping.1.DeviceName",
                                "BlockDeviceMapping.1.Ebs.SnapshotId")} == {
        "Name": f"pubtest-{sha[:12]}", "Architecture": "x86_64", "BootMode": "uefi", "RootDeviceName": "/dev/xvda",
        "VirtualizationType": "hvm", "EnaSupport": "true", "BlockDeviceMapping.1.DeviceName": "/dev/xvda",
        "BlockDeviceMapping.1.Ebs.SnapshotId": snap}
    rec = json.loads((out / "manifest.json").read_text())["published"]["ami"]
    task = next(iter(ec2.tasks))
    assert rec["image_id"].startswith("ami-")
    assert r.stdout.startswith(f"ami: published pubtest.raw -> {rec['image_id']} ({len(data):,} bytes, ")
    assert (rec["snapshot_id"], rec["import_task_id"], rec["region"], rec["status"], rec["import_status"]) == \
        (snap, task, REGION, "registered", "completed")
    before = len(ec2.requests)
    r = run("publish", "out", "--json", cwd=tmp_path, env=env(ec2))
    doc = json.loads(r.stdout)["destinations"][0]
    assert (doc["status"], doc["sent_bytes"], doc["record"]["image_id"], doc["found_by"]) == (
        "unchanged", 0, rec["image_id"], "record")
    assert ec2.actions()[before:] == []  # the manifest's record: EC2 is not even asked
    r = run("publish", "out", "--json", "--verify", cwd=tmp_path, env=env(ec2))
    doc = json.loads(r.stdout)["destinations"][0]
    assert (doc["status"], doc["sent_bytes"], doc["found_by"]) == ("unchanged", 0, "destination")
    assert ec2.actions()[before:] == ["DescribeImportSnapshotTasks"]  # the connection check only: no import
    for text in (r.stderr, r.stdout, (out / "manifest.json").read_text()):
        assert KEYS["AWS_SECRET_ACCESS_KEY"] not in text


def test_failed_import_reports_the_status_message(moto: Server, ec2: Ec2StandIn, tmp_path: Path) -> None:
    setup(moto, tmp_path, "failing")
    ec2.fail = FAILED
    r = run("publish", "out", "-q", cwd=tmp_path, env=env(ec2))
    task = next(iter(ec2.tasks))
    assert (r.returncode, r.stderr) == (1, f"imgsmith: error: ami: ec2 import task {task} deleted: {FAILED}\n")
    assert "RegisterImage" not in ec2.actions()
    assert "published" not in json.loads((tmp_path / "out" / "manifest.json").read_text())


def test_wrong_secret_refused_by_signature_nothing_uploaded(moto: Server, ec2: Ec2StandIn, tmp_path: Path) -> None:
    setup(moto, tmp_path, "badsig")
    r = run("publish", "out", "-q", cwd=tmp_path, env=env(ec2, AWS_SECRET_ACCESS_KEY="not-the-secret"))
    assert (r.returncode, r.stderr) == (
        1, "imgsmith: error: ami: ec2 DescribeImportSnapshotTasks: SignatureDoesNotMatch: The request signature we "
           "calculated does not match the signature you provided. Check your AWS Secret Access Key and signing "
           "method. Consult the service documentation for details.\n")
    assert ec2.requests == []
    assert s3(moto).list_objects_v2(Bucket="badsig").get("KeyCount", 0) == 0


def test_dry_run_shows_the_calls_and_sends_nothing(moto: Server, ec2: Ec2StandIn, tmp_path: Path) -> None:
    setup(moto, tmp_path, "dry")
    r = run("publish", "out", "--dry-run", "--json", cwd=tmp_path, env=env(ec2))
    assert r.returncode == 0, r.stderr
    actions = json.loads(r.stdout)["destinations"][0]["actions"]
    assert [a["api"] for a in actions][-3:] == ["ec2:ImportSnapshot", "ec2:DescribeImportSnapshotTasks",
                                                "ec2:RegisterImage"]
    assert actions[-3]["params"]["DiskContainer"]["Format"] == "RAW"
    assert (actions[-1]["params"]["Architecture"], actions[-1]["params"]["BootMode"]) == ("x86_64", "uefi")
    assert ec2.requests == [] and KEYS["AWS_SECRET_ACCESS_KEY"] not in r.stdout


def test_no_guest_arch_is_refused_before_sending(moto: Server, ec2: Ec2StandIn, tmp_path: Path) -> None:
    out = setup(moto, tmp_path, "noarch")
    with_guest(out, arch="riscv64")
    r = run("publish", "out", "-q", cwd=tmp_path, env=env(ec2))
    assert (r.returncode, r.stderr) == (1, "imgsmith: error: ami: aws: the manifest's guest architecture 'riscv64' "
                                           "is not one EC2 registers (x86_64, arm64): build with layers so the "
                                           "guest is inspected\n")
    assert ec2.requests == []


def test_standin_refuses_missing_parameters_and_unsigned_requests(ec2: Ec2StandIn) -> None:
    """The stand-in itself: MissingParameter and AuthFailure in EC2's XML error format."""
    import urllib.error
    import urllib.request

    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError
    client = boto3.client("ec2", endpoint_url=ec2.url, region_name=REGION, aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"],
                          config=Config(parameter_validation=False))
    with pytest.raises(ClientError) as exc:
        client.register_image()
    assert exc.value.response["Error"] == {"Code": "MissingParameter",
                                           "Message": "The request must contain the parameter Name"}
    req = urllib.request.Request(ec2.url + "/", data=b"Action=RegisterImage&Version=2016-11-15&Name=x",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(req, timeout=5)
    assert http.value.code == 401 and b"<Code>AuthFailure</Code>" in http.value.read()
    assert ec2.requests == []


def test_after_a_failed_import_the_rerun_imports_without_uploading(moto: Server, ec2: Ec2StandIn,
                                                                    tmp_path: Path) -> None:
    setup(moto, tmp_path, "retry")
    ec2.fail = FAILED
    assert run("publish", "out", "-q", cwd=tmp_path, env=env(ec2)).returncode == 1
    ec2.fail = None
    r = run("publish", "out", "--json", cwd=tmp_path, env=env(ec2))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)["destinations"][0]
    assert (doc["status"], doc["sent_bytes"]) == ("published", 0)  # the object was already in the bucket
    assert doc["record"]["image_id"].startswith("ami-") and ec2.actions().count("ImportSnapshot") == 2


def test_import_still_running_at_the_timeout(moto: Server, ec2: Ec2StandIn, tmp_path: Path) -> None:
    setup(moto, tmp_path, "slow")
    ec2.active_polls = 1000
    r = run("publish", "out", "-q", "--timeout", "2", cwd=tmp_path, env=env(ec2))
    task = next(iter(ec2.tasks))
    assert (r.returncode, r.stderr) == (1, f"imgsmith: error: ami: ec2 import task {task} still active (27%) "
                                           "after 2 s\n")
    assert "RegisterImage" not in ec2.actions()


def test_aws_needs_region_and_bucket_at_load(tmp_path: Path) -> None:
    from publishing import DEFINITION, make_disk
    make_disk(tmp_path / "disk.raw", 12)
    (tmp_path / "image.yaml").write_text(DEFINITION.format(publish="""\
  - {name: a, output: pubtest.raw, to: aws, bucket: b}
  - {name: b, output: pubtest.qcow2, to: aws, bucket: b, region: eu-west-1}
"""))
    r = run("build", "image.yaml", "--dry-run", cwd=tmp_path)
    assert (r.returncode, r.stderr.splitlines()) == (2, [
        "imgsmith: error: image.yaml:9:5: publish[0]: an aws destination needs region: and bucket: (the import "
        "reads the bucket of its own region)",
        "imgsmith: error: image.yaml:10:23: publish[1].output: pubtest.qcow2: aws does not take a qcow2 image (it "
        "takes raw, vmdk, vpc)"])


def test_a_vmdk_that_is_not_stream_optimized_is_refused(moto: Server, ec2: Ec2StandIn, tmp_path: Path) -> None:
    out = setup(moto, tmp_path, "sparse")
    (tmp_path / "image.yaml").write_text((tmp_path / "image.yaml").read_text().replace(
        "output: pubtest.raw\n    to: aws", "output: pubtest.vmdk\n    to: aws"))
    r = run("publish", "out", "-q", cwd=tmp_path, env=env(ec2))
    assert (r.returncode, r.stderr) == (2, "imgsmith: error: ami: pubtest.vmdk: AWS imports a streamOptimized VMDK, "
                                           "not monolithicSparse (use the aws preset, or a raw output)\n")
    assert ec2.requests == [] and out.exists()
    assert s3(moto).list_objects_v2(Bucket="sparse").get("KeyCount", 0) == 0
