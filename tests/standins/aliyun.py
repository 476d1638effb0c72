"""A local stand-in of the ECS API actions an Alibaba Cloud image import uses, on 127.0.0.1.

ECS cannot be reached from the test machine, so this answers what Alibaba Cloud documents and
checks what it checks:

- the RPC-style API 2014-05-26 as the official SDK (alibabacloud_ecs20140526) sends it: the
  action and version in ``x-acs-action``/``x-acs-version``, parameters in the query string
  (``DiskDeviceMapping.1.OSSBucket``, ``Tag.1.Key``...);
- the V3 signature ``ACS3-HMAC-SHA256`` of every request, recomputed here from Alibaba Cloud's
  description of the canonical request (method, URI, sorted RFC 3986-encoded query, the signed
  ``host``/``x-acs-*``/``content-type`` headers, the body's SHA-256), the string to sign and the
  HMAC-SHA256 with the secret — written from that description, not with the SDK's signer; the
  signed-header set must cover ``host`` and every ``x-acs-*`` header, the body hash must be the
  body's, the date within 15 minutes, and a nonce is used once;
- the parameters each action requires (``MissingParameter``), ImportImage's enumerations and
  ranges (``InvalidArchitecture.Malformed``, ``InvalidBootMode.NotSupport``, ``InvalidImageSize``...),
  and the same-region rule: the OSS bucket must be in the import's region and hold the
  object (``InvalidOSSBucket.NotFound``, ``InvalidOSSObject.NotFound``), looked up through
  ``oss`` (the test's view of its object store);
- the documented responses: ImportImage -> ImageId and TaskId; DescribeImages -> the image
  ``Creating`` with a Progress, then ``Available``, or ``CreateFailed`` when the test set
  ``fail``; DescribeTaskAttribute -> the task with its OperationProgress ErrorCode/ErrorMsg.
- ModifyImageAttribute of an Available image, whose BootMode (unlike ImportImage's) documents
  ``UEFI-Preferred``; an arm64 image stays UEFI.

Every accepted request is kept in ``requests`` (action and parameters) for the tests to read.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import itertools
import json
import re
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VERSION = "2014-05-26"
ALGORITHM = "ACS3-HMAC-SHA256"
REQUIRED = {
    "ImportImage": ("RegionId", "DiskDeviceMapping.1.OSSBucket", "DiskDeviceMapping.1.OSSObject"),
    "DescribeImages": ("RegionId",),
    "DescribeTaskAttribute": ("RegionId", "TaskId"),
    "ModifyImageAttribute": ("RegionId", "ImageId"),
}
PLATFORMS = ("Aliyun", "Anolis", "CentOS", "Ubuntu", "CoreOS", "SUSE", "Debian", "OpenSUSE", "FreeBSD", "RedHat",
             "Kylin", "UOS", "Fedora", "Fedora CoreOS", "CentOS Stream", "AlmaLinux", "Rocky Linux", "Gentoo",
             "Customized Linux", "Others Linux")
_ENUMS = {"Architecture": (("i386", "x86_64", "arm64"), "InvalidArchitecture.Malformed",
                           "The specified Architecture is wrongly formed."),
          "OSType": (("windows", "linux"), "InvalidOSType.Malformed", "The specified OSType is wrongly formed."),
          "Platform": (PLATFORMS, "InvalidPlatform.Malformed", "The specified Platform is wrongly formed."),
          "BootMode": (("BIOS", "UEFI"), "InvalidBootMode.Malformed",
                       'The specified parameter "BootMode" is malformed.'),
          "DiskDeviceMapping.1.Format": (("RAW", "VHD", "QCOW2", "VMDK"), "InvalidImageFormat.Malformed",
                                         "The specified Image Format is wrongly formed.")}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9.:_-]{1,127}$")


# ModifyImageAttribute's BootMode, which (unlike ImportImage's) documents the dual mode.
_MODIFY_BOOT = ("BIOS", "UEFI", "UEFI-Preferred")


def _rfc3986(text: str) -> str:
    """Percent-encoding with only RFC 3986's unreserved characters left as they are (space is %20)."""
    return urllib.parse.quote(text, safe="-_.~")


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Image:
    params: dict[str, str]
    image_id: str
    task_id: str
    polls: int = 0
    status: str = "Creating"


@dataclass
class AliyunStandIn:
    access_key: str
    secret_key: str
    region: str
    oss: Callable[[str, str], tuple[str, int] | None]  # (bucket, key) -> (the bucket's region, object size) or None
    fail: tuple[str, str] | None = None  # the ErrorCode and ErrorMsg a failing import task ends with
    refuse: dict[str, tuple[int, str, str]] = field(default_factory=dict)  # action -> (status, Code, Message)
    creating_polls: int = 1  # how many DescribeImages of a new image answer Creating before it is done
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    images: dict[str, Image] = field(default_factory=dict)
    nonces: set[str] = field(default_factory=set)
    _ids: Any = field(default_factory=lambda: itertools.count(0x5A000))
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> AliyunStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    status, doc = 200, standin.answer(self.command, self.path, dict(self.headers.items()), body)
                except Refused as exc:
                    status, doc = exc.status, {"RequestId": "C8B26B44-0189-443E-9816-STANDIN", "HostId": "standin",
                                               "Code": exc.code, "Message": exc.message}
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json;charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _any

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def actions(self) -> list[str]:
        return [a for a, _ in self.requests]

    # --- the checks ---------------------------------------------------------------------------------

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        lower = {k.lower(): v for k, v in headers.items()}
        self.verify(method, path, lower, body)
        params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(path).query, keep_blank_values=True))
        if lower.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            params.update(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
        action = lower.get("x-acs-action", "")
        if action not in REQUIRED:
            raise Refused(404, "InvalidAction.NotFound",
                          "Specified api is not found, please check your url and method.")
        if lower.get("x-acs-version") != VERSION:
            raise Refused(400, "InvalidVersion", "Specified parameter Version is not valid.")
        for name in REQUIRED[action]:
            if not params.get(name):
                raise Refused(400, "MissingParameter", f'An input parameter "{name}" that is mandatory for '
                                                       "processing the request is not supplied.")
        if params["RegionId"] != self.region:
            raise Refused(400, "InvalidRegionId.NotFound", "The specified RegionId does not exist.")
        if action in self.refuse:
            raise Refused(*self.refuse[action])
        self.requests.append((action, params))
        handler: Any = getattr(self, "_" + action)
        return dict(handler(params))

    def verify(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        """ACS3-HMAC-SHA256: the canonical request, the string to sign, the HMAC, as Alibaba Cloud documents."""
        auth = headers.get("authorization", "")
        if not auth.startswith(ALGORITHM + " "):
            raise Refused(400, "MissingAuthorization", "Authorization is mandatory for this action.")
        fields = dict(p.strip().split("=", 1) for p in auth[len(ALGORITHM) + 1:].split(","))
        if fields.get("Credential") != self.access_key:
            raise Refused(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
        try:
            when = datetime.datetime.strptime(headers.get("x-acs-date", ""), "%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            raise Refused(400, "InvalidTimeStamp.Format", "Specified time stamp or date value is not well "
                                                          "formatted.") from None
        if abs((datetime.datetime.now(datetime.UTC) - when.replace(tzinfo=datetime.UTC)).total_seconds()) > 900:
            raise Refused(400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.")
        signed = fields.get("SignedHeaders", "").split(";")
        unsigned = [h for h in headers if (h.startswith("x-acs-") or h == "host") and h not in signed]
        if unsigned or signed != sorted(signed):
            raise Refused(400, "IncompleteSignature", f"The request signature does not conform to Aliyun standards "
                                                      f"(unsigned: {', '.join(unsigned) or 'none'}).")
        payload = hashlib.sha256(body).hexdigest()
        if headers.get("x-acs-content-sha256") != payload:
            raise Refused(400, "InvalidContentSha256", "x-acs-content-sha256 is not the SHA-256 of the body.")
        split = urllib.parse.urlsplit(path)
        query = "&".join(f"{_rfc3986(k)}={_rfc3986(v)}" for k, v in
                         sorted(urllib.parse.parse_qsl(split.query, keep_blank_values=True)))
        canonical_headers = "".join(f"{h}:{headers.get(h, '').strip()}\n" for h in signed)
        canonical = "\n".join([method, urllib.parse.quote(split.path or "/", safe="/~"), query, canonical_headers,
                               ";".join(signed), payload])
        to_sign = f"{ALGORITHM}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        want = hmac.new(self.secret_key.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, fields.get("Signature", "")):
            raise Refused(400, "SignatureDoesNotMatch", "Specified signature is not matched with our calculation.")
        nonce = headers.get("x-acs-signature-nonce", "")
        if not nonce or nonce in self.nonces:
            raise Refused(400, "SignatureNonceUsed", "Specified signature nonce was used already.")
        self.nonces.add(nonce)

    # --- the actions ----------------------------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        return f"{prefix}-bp{next(self._ids):x}standin"

    def _ImportImage(self, p: dict[str, str]) -> dict[str, Any]:
        for name, (allowed, code, message) in _ENUMS.items():
            if name in p and p[name] not in allowed:
                raise Refused(400, code, message)
        if p.get("Architecture") == "arm64" and p.get("BootMode", "BIOS") != "UEFI":
            raise Refused(400, "InvalidBootMode.NotSupport", "The specified parameter BootMode is not supported "
                                                             "for current image architecture.")
        if "ImageName" in p and (not _NAME.match(p["ImageName"]) or p["ImageName"].startswith(("acs:", "aliyun"))):
            raise Refused(400, "InvalidImageName.Malformed", "The specified Image name is wrongly formed.")
        token = p.get("ClientToken")
        for image in self.images.values():
            if token and image.params.get("ClientToken") == token:
                return self._import_answer(image)
            if "ImageName" in p and image.params.get("ImageName") == p["ImageName"]:
                raise Refused(400, "InvalidImageName.Duplicated", "The destination image is exist.")
        bucket, key = p["DiskDeviceMapping.1.OSSBucket"], p["DiskDeviceMapping.1.OSSObject"]
        there = self.oss(bucket, key)
        if there is None:
            raise Refused(400, "InvalidOSSObject.NotFound", "The specified OSS object does not exist in this region.")
        region, size = there
        if region != self.region:
            raise Refused(400, "InvalidOSSBucket.NotFound", "The specified OSS bucket does not exist in this region.")
        if size == 0:
            raise Refused(400, "InvalidOSSObject.Size", "The specified OSS object size is zero.")
        disk = int(p.get("DiskDeviceMapping.1.DiskImageSize") or 0) or -(-size // (1 << 30))
        if not 1 <= disk <= 2048 or disk << 30 < size:
            raise Refused(400, "InvalidImageSize", f"The specified DiskImageSize {disk} GiB is out of range or "
                                                   f"smaller than the image file ({size} bytes).")
        image = Image(dict(p), self._id("m"), self._id("t"))  # its own copy: requests keep what was sent
        self.images[image.image_id] = image
        return self._import_answer(image)

    def _import_answer(self, image: Image) -> dict[str, Any]:
        return {"RequestId": "473469C7-AA6F-4DC5-B3DB-STANDIN", "ImageId": image.image_id, "TaskId": image.task_id,
                "RegionId": self.region}

    def _DescribeImages(self, p: dict[str, str]) -> dict[str, Any]:
        states = (p.get("Status") or "Available").split(",")
        tags = [(p[f"Tag.{n}.Key"], p.get(f"Tag.{n}.Value")) for n in range(1, 21) if f"Tag.{n}.Key" in p]
        found = []
        for image in self.images.values():
            if p.get("ImageId") and image.image_id != p["ImageId"]:
                continue
            mine = {(image.params[f"Tag.{n}.Key"], image.params.get(f"Tag.{n}.Value")) for n in range(1, 21)
                    if f"Tag.{n}.Key" in image.params}
            if any((k, v) not in mine for k, v in tags):
                continue
            if p.get("ImageId") and image.status == "Creating":  # a poll of this image moves it on
                image.polls += 1
                if image.polls > self.creating_polls:
                    image.status = "CreateFailed" if self.fail else "Available"
            if image.status in states:
                found.append(self._image(image))
        return {"RequestId": "1CB4D6D8-0A35-4A5B-STANDIN", "RegionId": self.region, "TotalCount": len(found),
                "PageNumber": 1, "PageSize": int(p.get("PageSize") or 10), "Images": {"Image": found}}

    def _image(self, image: Image) -> dict[str, Any]:
        p = image.params
        tags = [{"TagKey": p[f"Tag.{n}.Key"], "TagValue": p.get(f"Tag.{n}.Value", "")} for n in range(1, 21)
                if f"Tag.{n}.Key" in p]
        return {"ImageId": image.image_id, "ImageName": p.get("ImageName", image.image_id), "Status": image.status,
                "Progress": "100%" if image.status == "Available" else "27%",
                "Architecture": p.get("Architecture", "x86_64"), "Platform": p.get("Platform", "Others Linux"),
                "OSType": p.get("OSType", "linux"), "BootMode": p.get("BootMode", "BIOS"),
                "Size": int(p.get("DiskDeviceMapping.1.DiskImageSize") or 0), "ImageOwnerAlias": "self",
                "CreationTime": "2026-12-02T01:00:00Z", "Tags": {"Tag": tags}}

    def _ModifyImageAttribute(self, p: dict[str, str]) -> dict[str, Any]:
        image = self.images.get(p["ImageId"])
        if image is None:
            raise Refused(404, "InvalidImageId.NotFound", "The specified ImageId does not exist.")
        if "BootMode" in p and p["BootMode"] not in _MODIFY_BOOT:
            raise Refused(400, "InvalidBootMode.Malformed", 'The specified parameter "BootMode" is malformed.')
        if image.status != "Available":
            raise Refused(403, "IncorrectImageStatus", "The current status of the resource does not support this "
                                                       "operation.")
        if image.params.get("Architecture") == "arm64" and p.get("BootMode", "UEFI") != "UEFI":
            raise Refused(400, "InvalidBootMode.NotSupport", "The specified parameter BootMode is not supported "
                                                             "for current image architecture.")
        image.params.update({k: v for k, v in p.items() if k in ("BootMode", "ImageName", "Description")})
        return {"RequestId": "6EF60BEC-0242-43AF-STANDIN"}

    def _DescribeTaskAttribute(self, p: dict[str, str]) -> dict[str, Any]:
        image = next((i for i in self.images.values() if i.task_id == p["TaskId"]), None)
        if image is None:
            raise Refused(404, "InvalidTaskId.NotFound", "The specified taskId does not exist.")
        failed = image.status == "CreateFailed"
        status = "Failed" if failed else "Finished" if image.status == "Available" else "Processing"
        op: dict[str, Any] = {"OperationStatus": "Failed" if failed else "Success", "RelatedItemSet": {
            "RelatedItem": [{"Name": "ImageId", "Value": image.image_id}]}}
        if failed and self.fail:
            op.update(ErrorCode=self.fail[0], ErrorMsg=self.fail[1])
        return {"RequestId": "D0B9D2A5-STANDIN", "TaskId": image.task_id, "RegionId": self.region,
                "TaskAction": "ImportImage", "TaskStatus": status, "TaskProcess": "100%", "SupportCancel": "false",
                "TotalCount": 1, "SuccessCount": 0 if failed else 1, "FailedCount": 1 if failed else 0,
                "CreationTime": "2026-12-02T01:00Z", "FinishedTime": "2026-12-02T01:05Z",
                "OperationProgressSet": {"OperationProgress": [op]}}
