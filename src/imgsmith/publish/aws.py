"""AWS: the output into the region's S3 bucket, then EC2 ImportSnapshot + RegisterImage (boto3).

The upload is publish/s3.py's (multipart, resumable, ETag-checked); the object that is already
there with this sha256 is not sent again, so a run interrupted during the import picks up at
the import. ImportSnapshot (rather than ImportImage) because it takes the disk as it is:
ImportImage rewrites the guest and refuses distributions it does not know, while the snapshot
plus RegisterImage keeps what imgsmith built and lets us say the architecture and boot mode
from the manifest. The task is polled with a growing interval up to the timeout; a task that
ends ``deleted`` fails with EC2's own ``StatusMessage``.

Credentials come from boto3's standard chain and never enter an Action, a record or a log. The
EC2 endpoint is boto3's own (``AWS_ENDPOINT_URL_EC2`` or ``AWS_ENDPOINT_URL`` override it, as
for any boto3 program); ``endpoint:`` is the S3 endpoint only.
"""

from __future__ import annotations

import time
from typing import Any

from .base import Action, PublishError, Record, image_name
from .imports import boot_mode
from .s3 import S3Destination

__all__ = ["AwsDestination"]

_FORMAT = {"raw": "RAW", "vmdk": "VMDK", "vpc": "VHD"}
_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
# RegisterImage's BootMode; uefi-preferred: UEFI on instance types that have it, else Legacy BIOS.
_BOOT = {"bios": "legacy-bios", "uefi": "uefi", "hybrid": "uefi-preferred"}
ROOT_DEVICE = "/dev/xvda"


class AwsDestination(S3Destination):
    kind = "aws"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ec2: Any = None
        self.task_id = ""
        self.snapshot_id = ""
        self.image_id = ""
        self.uploaded = False

    @property
    def architecture(self) -> str:
        arch = str(self.artifact.guest.get("arch") or "")
        if arch not in _ARCH:
            raise PublishError(f"{self.spec.name}: aws: the manifest's guest architecture {arch or '(none)'!r} is "
                               f"not one EC2 registers (x86_64, arm64): build with layers so the guest is inspected")
        return _ARCH[arch]

    def _import_params(self) -> dict[str, Any]:
        a, e = self.artifact, self.entry
        return {"Description": f"imgsmith {a.name} sha256 {a.sha256}",
                "DiskContainer": {"Description": a.name, "Format": _FORMAT[a.format],
                                  "UserBucket": {"S3Bucket": e.bucket, "S3Key": self.key}},
                "ClientToken": f"imgsmith-{a.sha256[:48]}"}

    def _register_params(self, snapshot_id: str) -> dict[str, Any]:
        a = self.artifact
        size = max(1, -(-a.virtual_size // (1 << 30)))
        return {"Name": image_name(self.entry.image_name, a), "Description": f"imgsmith {a.name} sha256 {a.sha256}",
                "Architecture": self.architecture,
                "BootMode": boot_mode(self.spec.name, "aws", a, self.architecture, _BOOT),
                "RootDeviceName": ROOT_DEVICE,
                "VirtualizationType": "hvm", "EnaSupport": True,
                "BlockDeviceMappings": [{"DeviceName": ROOT_DEVICE,
                                         "Ebs": {"SnapshotId": snapshot_id, "VolumeSize": size,
                                                 "VolumeType": "gp3", "DeleteOnTermination": True}}]}

    def plan(self) -> list[Action]:
        return [*super().plan(), Action("ec2:ImportSnapshot", {**self._import_params(), "region": self.entry.region}),
                Action("ec2:DescribeImportSnapshotTasks", {"ImportTaskIds": ["(the task id)"],
                                                           "until": "completed"}),
                Action("ec2:RegisterImage", self._register_params("(the snapshot id)"))]

    def connect(self) -> None:
        from botocore.config import Config
        self.architecture  # noqa: B018 -- refused before anything is sent
        super().connect()
        import boto3
        session = boto3.session.Session(region_name=self.entry.region)
        self.ec2 = session.client("ec2", config=Config(retries={"max_attempts": 2, "mode": "standard"},
                                                       connect_timeout=10))
        # One signed read: wrong keys or an unreachable EC2 endpoint fail here, before any upload.
        self._ec2("DescribeImportSnapshotTasks", MaxResults=5)

    def _ec2(self, op: str, **kw: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError
        method = getattr(self.ec2, "".join("_" + c.lower() if c.isupper() else c for c in op).lstrip("_"))
        try:
            return method(**kw)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            raise PublishError(f"{self.spec.name}: ec2 {op}: {err.get('Code', '?')}: "
                               f"{' '.join(str(err.get('Message') or exc).split())}") from None
        except BotoCoreError as exc:
            raise PublishError(f"{self.spec.name}: ec2 {op}: {exc}") from None

    def find(self, previous: Record | None) -> Record | None:
        """The manifest's record of an image registered from these bytes: nothing to send."""
        if previous and previous.get("kind") == self.kind and previous.get("sha256") == self.artifact.sha256 \
                and previous.get("image_id") and previous.get("region") == self.entry.region:
            from .record import reported
            return reported(previous)
        return None

    def upload(self) -> None:
        if super().find(None) is not None:  # the object is already in the bucket (an earlier, interrupted run)
            return
        super().upload()

    def register(self) -> None:
        r = self._ec2("ImportSnapshot", **self._import_params())
        self.task_id = str(r["ImportTaskId"])
        from ..events import Message
        self.emit(Message(f"{self.spec.name}: ec2 import task {self.task_id} started"))

    def wait(self, timeout: float) -> Record:
        deadline = time.monotonic() + timeout
        pause = 1.0
        while True:
            r = self._ec2("DescribeImportSnapshotTasks", ImportTaskIds=[self.task_id])
            tasks = r.get("ImportSnapshotTasks") or []
            detail = (tasks[0].get("SnapshotTaskDetail") or {}) if tasks else {}
            status = str(detail.get("Status", ""))
            if status == "completed" and detail.get("SnapshotId"):
                self.snapshot_id = str(detail["SnapshotId"])
                break
            if status in ("deleted", "deleting") or not tasks:
                why = " ".join(str(detail.get("StatusMessage") or "the task is gone").split())
                raise PublishError(f"{self.spec.name}: ec2 import task {self.task_id} {status or 'missing'}: {why}")
            if time.monotonic() + pause > deadline:
                raise PublishError(f"{self.spec.name}: ec2 import task {self.task_id} still {status} "
                                   f"({detail.get('Progress', '?')}%) after {timeout:.0f} s")
            time.sleep(pause)
            pause = min(pause * 2, 30.0)
        r = self._ec2("RegisterImage", **self._register_params(self.snapshot_id))
        self.image_id = str(r["ImageId"])
        return self._record()

    def _record(self) -> Record:
        base = super()._record()
        if not self.image_id:
            return base
        return {**base, "image_id": self.image_id, "snapshot_id": self.snapshot_id, "import_task_id": self.task_id,
                "import_status": "completed", "status": "registered"}
