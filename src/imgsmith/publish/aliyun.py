"""Alibaba Cloud: the output into the region's OSS bucket, then ECS ImportImage (API 2014-05-26).

The upload is publish/s3.py's through OSS's S3-compatible API (multipart, resumable, ETag
checks) with the Alibaba Cloud AccessKey (publish/credentials.py), to
``https://oss-REGION.aliyuncs.com`` unless ``endpoint:`` says otherwise. ECS reads the object
only from a bucket in the import's own region: a bucket elsewhere is refused before anything
is sent. Then ImportImage through the official SDK (alibabacloud_ecs20140526, V3
ACS3-HMAC-SHA256 signatures) with Architecture, Platform, OSType and BootMode from the manifest,
the system disk's size from the virtual size, and the tag ``imgsmith-sha256`` = the output's
sha256, so a republish finds the image with one DescribeImages and sends nothing. The image is
polled (DescribeImages, growing interval, up to the timeout); a failed import reports the
task's own ErrorCode and ErrorMsg (DescribeTaskAttribute).
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from .base import Action, PublishError, Record, image_name
from .credentials import Keys, aliyun_keys
from .imports import TAG, architecture, boot_mode, first, gib, poll
from .s3 import S3Destination

__all__ = ["AliyunDestination"]

VERSION = "2014-05-26"
_FORMAT = {"qcow2": "QCOW2", "raw": "RAW", "vpc": "VHD"}
_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64", "i386": "i386",
         "i686": "i386"}
# ImportImage's BootMode takes BIOS or UEFI; a hybrid image is imported as BIOS and then set to
# UEFI-Preferred (ModifyImageAttribute, which documents that value): UEFI where the instance type has it.
_BOOT = {"bios": "BIOS", "uefi": "UEFI", "hybrid": "BIOS"}
DUAL = "UEFI-Preferred"
# The manifest's distro (libguestfs inspection names) -> ImportImage's Platform vocabulary.
_PLATFORM = {"debian": "Debian", "ubuntu": "Ubuntu", "centos": "CentOS", "rhel": "RedHat", "redhat-based": "RedHat",
             "fedora": "Fedora", "opensuse": "OpenSUSE", "sles": "SUSE", "suse-based": "SUSE",
             "almalinux": "AlmaLinux", "rocky": "Rocky Linux", "alinux": "Aliyun", "anolis": "Anolis",
             "coreos": "CoreOS", "freebsd": "FreeBSD", "gentoo": "Gentoo", "kylin": "Kylin", "uos": "UOS"}
# Image states ECS reports; DescribeImages lists only Available ones unless asked for the others.
_STATES = "Creating,Waiting,Available,UnAvailable,CreateFailed"
MAX_DISK_GIB = 2048  # DiskDeviceMapping.1.DiskImageSize: 1 to 2048


class AliyunDestination(S3Destination):
    kind = "aliyun"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keys: Keys | None = None
        self.ecs: Any = None
        self.image_id = ""
        self.task_id = ""
        self.found: dict[str, Any] = {}  # an image tagged with this sha256, from the connection's read

    # --- what is sent ------------------------------------------------------------------------------

    @property
    def store_endpoint(self) -> str:
        return str(self.entry.endpoint or f"https://oss-{self.entry.region}.aliyuncs.com")

    def store_keys(self) -> Keys | None:
        return self.keys

    def bucket_region(self, headers: dict[str, str]) -> str | None:
        region = headers.get("x-amz-bucket-region") or headers.get("x-oss-bucket-region")
        return region.removeprefix("oss-") if region else None

    @property
    def platform(self) -> str:
        return _PLATFORM.get(str(self.artifact.guest.get("distro") or ""), "Others Linux")

    def _import_params(self) -> dict[str, Any]:
        a, e = self.artifact, self.entry
        arch = architecture(self.spec.name, "aliyun", a, _ARCH)
        size = gib(a.virtual_size)
        if size > MAX_DISK_GIB:
            raise PublishError(f"{self.spec.name}: aliyun: the virtual size is {size} GiB; an imported system "
                               f"disk is at most {MAX_DISK_GIB} GiB")
        mode = boot_mode(self.spec.name, "aliyun", a, arch, _BOOT)
        tags = [{"Key": TAG, "Value": a.sha256}, *({"Key": k, "Value": v} for k, _, v in
                                                   (t.partition("=") for t in e.tags))]
        return {"RegionId": e.region, "ImageName": image_name(e.image_name, a),
                "Description": f"imgsmith {a.name} sha256 {a.sha256}", "Architecture": arch, "OSType": "linux",
                "Platform": self.platform, "BootMode": mode, "LicenseType": "Auto",
                "DiskDeviceMapping": [{"OSSBucket": e.bucket, "OSSObject": self.key, "Format": _FORMAT[a.format],
                                       "DiskImageSize": size}],
                "Tag": tags, "ClientToken": f"imgsmith-{a.sha256[:54]}"}

    def plan(self) -> list[Action]:
        e = self.entry
        tag = [{"Key": TAG, "Value": self.artifact.sha256}]
        return [Action("ecs:DescribeImages", {"RegionId": e.region, "Tag": tag, "Status": _STATES}),
                *super().plan(), Action("ecs:ImportImage", self._import_params()),
                Action("ecs:DescribeImages", {"RegionId": e.region, "ImageId": "(the image id)", "Status": _STATES,
                                              "until": "Available"}),
                *([Action("ecs:ModifyImageAttribute", self._dual_params("(the image id)"))] if self.dual else [])]

    @property
    def dual(self) -> bool:
        """A hybrid x86 image: set to UEFI-Preferred once imported (arm64 is UEFI anyway)."""
        return self.artifact.firmware == "hybrid" and self._import_params()["Architecture"] != "arm64"

    def _dual_params(self, image_id: str) -> dict[str, Any]:
        return {"RegionId": self.entry.region, "ImageId": image_id, "BootMode": DUAL}

    # --- the service -------------------------------------------------------------------------------

    def connect(self) -> None:
        self._import_params()  # a guest the import cannot describe is refused before anything is sent
        self.keys = aliyun_keys(self.spec.name)
        super().connect()  # the OSS bucket, in the import's region
        from alibabacloud_ecs20140526.client import Client
        from alibabacloud_tea_openapi.utils_models import Config
        url = urllib.parse.urlsplit(self.entry.api_endpoint or f"https://ecs.{self.entry.region}.aliyuncs.com")
        self.ecs = Client(Config(access_key_id=self.keys.key_id, access_key_secret=self.keys.secret,
                                 security_token=self.keys.token or None, region_id=self.entry.region,
                                 endpoint=url.netloc, protocol=url.scheme or "https",
                                 connect_timeout=10000, read_timeout=60000))
        # One signed read: wrong keys or an unreachable endpoint fail here, and it finds an earlier import.
        images = self._ecs("DescribeImages", RegionId=self.entry.region, Status=_STATES, PageSize=10,
                           Tag=[{"Key": TAG, "Value": self.artifact.sha256}])
        listed = [i for i in (images.get("Images") or {}).get("Image") or []
                  if i.get("Status") in ("Creating", "Waiting", "Available")]
        self.found = next((i for i in listed if i.get("Status") == "Available"), first(listed))

    def _ecs(self, action: str, **params: Any) -> dict[str, Any]:
        """One ECS call through the SDK's typed request; the cloud's Code and Message on an error."""
        from alibabacloud_ecs20140526 import models
        from alibabacloud_tea_openapi.exceptions import AlibabaCloudException
        from darabonba.exceptions import DaraException, UnretryableException
        from darabonba.runtime import RuntimeOptions
        request = getattr(models, f"{action}Request")().from_map(params)
        method = getattr(self.ecs, "".join("_" + c.lower() if c.isupper() else c for c in action).lstrip("_") +
                         "_with_options")
        try:
            body: dict[str, Any] = method(request, RuntimeOptions(autoretry=False)).body.to_map()
        except AlibabaCloudException as exc:
            data = exc.data if isinstance(exc.data, dict) else {}
            text = " ".join(str(data.get("Message") or exc.message).split())
            raise PublishError(f"{self.spec.name}: ecs {action}: {exc.code}: {text}") from None
        except (UnretryableException, DaraException, OSError) as exc:
            raise PublishError(f"{self.spec.name}: ecs {action}: {' '.join(str(exc).split())[:300]}") from None
        return body

    def find(self, previous: Record | None) -> Record | None:
        """The image ECS lists with this sha256's tag, Available: nothing to send. One still importing is waited for."""
        if self.found.get("Status") == "Available" and (not self.dual or self.found.get("BootMode") == DUAL):
            self.image_id = str(self.found["ImageId"])
            return self._record()
        if self.found:
            self.image_id = str(self.found["ImageId"])
            if previous and previous.get("image_id") == self.image_id:
                self.task_id = str(previous.get("import_task_id") or "")
        return None

    def upload(self) -> None:
        if self.image_id or super().find(None) is not None:  # importing already, or the object is in the bucket
            return
        super().upload()

    def register(self) -> None:
        if self.image_id:
            from ..events import Message
            self.emit(Message(f"{self.spec.name}: ecs image {self.image_id} is already imported: setting its boot "
                              f"mode to {DUAL}" if self.found.get("Status") == "Available" else
                              f"{self.spec.name}: ecs image {self.image_id} is still importing: waiting for it"))
            return
        r = self._ecs("ImportImage", **self._import_params())
        self.image_id, self.task_id = str(r["ImageId"]), str(r.get("TaskId") or "")
        from ..events import Message
        self.emit(Message(f"{self.spec.name}: ecs import task {self.task_id} started (image {self.image_id})"))

    def wait(self, timeout: float) -> Record:
        poll(f"{self.spec.name}: aliyun import of {self.image_id} (task {self.task_id or '?'})", timeout, self._state)
        if self.dual:  # also when an earlier run imported it and stopped before this call
            self._ecs("ModifyImageAttribute", **self._dual_params(self.image_id))
        return self._record()

    def _state(self) -> tuple[str, str]:
        r = self._ecs("DescribeImages", RegionId=self.entry.region, ImageId=self.image_id, Status=_STATES)
        image = first((r.get("Images") or {}).get("Image"))
        status = str(image.get("Status") or "gone")
        if status == "Available":
            return "ready", ""
        if status in ("Creating", "Waiting"):
            return status, str(image.get("Progress") or "")
        return f"failed: {status}: {self._why()}", ""

    def _why(self) -> str:
        """The import task's own error text (DescribeTaskAttribute), or what is known without it."""
        if not self.task_id:
            return "ECS gives no task id for this import"
        r = self._ecs("DescribeTaskAttribute", RegionId=self.entry.region, TaskId=self.task_id)
        ops = (r.get("OperationProgressSet") or {}).get("OperationProgress") or []
        failed = next((o for o in ops if o.get("OperationStatus") == "Failed"), first(ops))
        if failed.get("ErrorCode") or failed.get("ErrorMsg"):
            return f"{failed.get('ErrorCode', '?')}: {' '.join(str(failed.get('ErrorMsg', '')).split())}"
        return f"task {r.get('TaskStatus', '?')}"

    def _record(self) -> Record:
        return {**super()._record(), "image_id": self.image_id, "import_task_id": self.task_id,
                "platform": self.platform, "boot_mode": DUAL if self.dual else self._import_params()["BootMode"],
                "import_status": "Available", "status": "registered"}
