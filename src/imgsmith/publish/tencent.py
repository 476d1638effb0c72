"""Tencent Cloud: the output into the region's COS bucket, then CVM ImportImage (API 2017-03-12).

The upload is publish/s3.py's through COS's S3-compatible API (multipart, resumable, ETag
checks) with the Tencent Cloud SecretId/SecretKey (publish/credentials.py), to
``https://cos.REGION.myqcloud.com`` unless ``endpoint:`` says otherwise. CVM reads the image
only from a bucket in the import's region (it answers ``InvalidUrl`` otherwise): a bucket in
another region is refused before anything is sent. Then ImportImage through the official SDK
(tencentcloud-sdk-python-cvm, TC3-HMAC-SHA256 signatures) with Architecture, OsType, OsVersion
and BootMode from the manifest, the object's COS URL, and the tag ``imgsmith-sha256`` = the
output's sha256, so a republish finds the image with one DescribeImages and sends nothing. The
image is polled (DescribeImages, growing interval, up to the timeout) until ``NORMAL``; an
``IMPORTFAILED`` image fails the publish.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from .base import Action, PublishError, Record, image_name
from .credentials import Keys, tencent_keys
from .imports import TAG, architecture, boot_mode, first, poll
from .s3 import S3Destination

__all__ = ["TencentDestination"]

VERSION = "2017-03-12"
_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm_64", "arm64": "arm_64", "i386": "i386",
         "i686": "i386"}
# ImportImage's BootMode has no dual value: a hybrid image is imported as Legacy BIOS, CVM's default.
_BOOT = {"bios": "Legacy BIOS", "uefi": "UEFI", "hybrid": "Legacy BIOS"}
# The manifest's distro -> the OsType vocabulary of DescribeImportImageOs.
_OS = {"debian": "Debian", "ubuntu": "Ubuntu", "centos": "CentOS", "rhel": "Red Hat", "opensuse": "OpenSUSE",
       "sles": "SUSE", "coreos": "CoreOS", "freebsd": "FreeBSD", "tencentos": "TencentOS"}
_FULL_VERSION = ("ubuntu",)  # Ubuntu's versions are YY.MM; the others' are their major number
MAX_NAME = 60  # ImageName: at most 60 characters
_FAILED = ("IMPORTFAILED", "CREATEFAILED")


class TencentDestination(S3Destination):
    kind = "tencent"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keys: Keys | None = None
        self.cvm: Any = None
        self.image_id = ""
        self.found: dict[str, Any] = {}
        self.region = ""  # the bucket's region as COS reports it

    # --- what is sent ------------------------------------------------------------------------------

    @property
    def store_endpoint(self) -> str:
        return str(self.entry.endpoint or f"https://cos.{self.entry.region}.myqcloud.com")

    def store_keys(self) -> Keys | None:
        return self.keys

    def bucket_region(self, headers: dict[str, str]) -> str | None:
        self.region = headers.get("x-amz-bucket-region") or headers.get("x-cos-bucket-region") or ""
        return self.region or None

    @property
    def image_url(self) -> str:
        """The object's COS URL, as CVM reads it (the bucket's own host in its region)."""
        e = self.entry
        return f"https://{e.bucket}.cos.{self.region or e.region}.myqcloud.com/{urllib.parse.quote(self.key)}"

    def os_type(self) -> tuple[str, str]:
        g = self.artifact.guest
        distro, version = str(g.get("distro") or ""), str(g.get("version") or "")
        if distro not in _OS or not version:
            return "Other Linux", "-"
        return _OS[distro], version if distro in _FULL_VERSION else version.split(".", 1)[0]

    def _import_params(self) -> dict[str, Any]:
        a, e = self.artifact, self.entry
        name = image_name(e.image_name, a)
        if len(name) > MAX_NAME:
            raise PublishError(f"{self.spec.name}: tencent: image name {name!r} is {len(name)} characters; CVM "
                               f"takes at most {MAX_NAME}")
        os_type, os_version = self.os_type()
        tags = [{"Key": TAG, "Value": a.sha256}, *({"Key": k, "Value": v} for k, _, v in
                                                   (t.partition("=") for t in e.tags))]
        arch = architecture(self.spec.name, "tencent", a, _ARCH)
        return {"Architecture": arch, "OsType": os_type,
                "OsVersion": os_version, "ImageUrl": self.image_url, "ImageName": name,
                "ImageDescription": f"imgsmith {a.name} sha256 {a.sha256[:32]}",
                "BootMode": boot_mode(self.spec.name, "tencent", a, arch, _BOOT),
                "TagSpecification": [{"ResourceType": "image", "Tags": tags}]}

    def _tagged(self) -> dict[str, Any]:
        return {"Filters": [{"Name": f"tag:{TAG}", "Values": [self.artifact.sha256]},
                            {"Name": "image-type", "Values": ["PRIVATE_IMAGE"]}]}

    def plan(self) -> list[Action]:
        return [Action("cvm:DescribeImages", {**self._tagged(), "region": self.entry.region}), *super().plan(),
                Action("cvm:ImportImage", self._import_params()),
                Action("cvm:DescribeImages", {"ImageIds": ["(the image id)"], "until": "NORMAL"})]

    # --- the service -------------------------------------------------------------------------------

    def connect(self) -> None:
        self._import_params()  # a guest the import cannot describe is refused before anything is sent
        self.keys = tencent_keys(self.spec.name)
        super().connect()  # the COS bucket, in the import's region
        from tencentcloud.common.credential import Credential
        from tencentcloud.common.profile.client_profile import ClientProfile
        from tencentcloud.common.profile.http_profile import HttpProfile
        from tencentcloud.cvm.v20170312.cvm_client import CvmClient
        url = urllib.parse.urlsplit(self.entry.api_endpoint or "https://cvm.tencentcloudapi.com")
        http = HttpProfile(protocol=url.scheme or "https", endpoint=url.netloc, reqTimeout=60)
        self.cvm = CvmClient(Credential(self.keys.key_id, self.keys.secret, self.keys.token or None),
                             self.entry.region, ClientProfile(httpProfile=http))
        # One signed read: wrong keys or an unreachable endpoint fail here, and it finds an earlier import.
        listed = [i for i in self._cvm("DescribeImages", **self._tagged()).get("ImageSet") or []
                  if i.get("ImageState") not in _FAILED]
        self.found = next((i for i in listed if i.get("ImageState") == "NORMAL"), first(listed))

    def _cvm(self, action: str, **params: Any) -> dict[str, Any]:
        """One CVM call through the SDK's typed request; the cloud's Code and Message on an error."""
        import json

        from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
        from tencentcloud.cvm.v20170312 import models
        request = getattr(models, f"{action}Request")()
        request.from_json_string(json.dumps(params))
        try:
            response = getattr(self.cvm, action)(request)
        except TencentCloudSDKException as exc:
            raise PublishError(f"{self.spec.name}: cvm {action}: {exc.code}: "
                               f"{' '.join(str(exc.message).split())[:300]}") from None
        doc: dict[str, Any] = json.loads(response.to_json_string())
        return doc

    def find(self, previous: Record | None) -> Record | None:
        """The image CVM lists with this sha256's tag, NORMAL: nothing to send. One still importing is waited for."""
        if self.found:
            self.image_id = str(self.found["ImageId"])
        return self._record() if self.found.get("ImageState") == "NORMAL" else None

    def upload(self) -> None:
        if self.image_id or super().find(None) is not None:  # importing already, or the object is in the bucket
            return
        super().upload()

    def register(self) -> None:
        from ..events import Message
        if self.image_id:
            self.emit(Message(f"{self.spec.name}: cvm image {self.image_id} is still importing: waiting for it"))
            return
        self.image_id = str(self._cvm("ImportImage", **self._import_params())["ImageId"])
        self.emit(Message(f"{self.spec.name}: cvm import of {self.image_id} started"))

    def wait(self, timeout: float) -> Record:
        poll(f"{self.spec.name}: tencent import of {self.image_id}", timeout, self._state)
        return self._record()

    def _state(self) -> tuple[str, str]:
        image = first(self._cvm("DescribeImages", ImageIds=[self.image_id]).get("ImageSet"))
        state = str(image.get("ImageState") or "gone")
        if state == "NORMAL":
            return "ready", ""
        if state in _FAILED or state == "gone":
            return (f"failed: {state}: CVM's import check refused the image (its console names the reason, e.g. "
                    "VirtioNotInstall or CloudInitNotInstalled; `imgsmith check --cloud tencent` runs the same "
                    "checks here)"), ""
        return state, ""

    def _record(self) -> Record:
        os_type, os_version = self.os_type()
        return {**super()._record(), "image_id": self.image_id, "image_url": self.image_url, "os_type": os_type,
                "os_version": os_version, "import_status": "NORMAL", "status": "registered"}
