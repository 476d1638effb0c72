"""A local stand-in of the CVM API actions a Tencent Cloud image import uses, on 127.0.0.1.

CVM cannot be reached from the test machine, so this answers what Tencent Cloud documents and
checks what it checks:

- API 3.0 as the official SDK (tencentcloud-sdk-python-cvm) sends it: a JSON POST with the
  action, version and region in ``X-TC-Action``/``X-TC-Version``/``X-TC-Region``
  (https://www.tencentcloud.com/document/api/213/15692);
- the TC3-HMAC-SHA256 signature of every request, recomputed here from Tencent Cloud's
  description (canonical request with the signed ``content-type`` and ``host`` headers and the
  body's SHA-256; string to sign with the timestamp and ``DATE/cvm/tc3_request``; the key
  derived from ``"TC3" + SecretKey`` through the date, the service and ``tc3_request``) —
  written from that description, not with the SDK's signer; the credential's date must be the
  timestamp's, the timestamp within 5 minutes, the service ``cvm``;
- the parameters ImportImage requires (``MissingParameter``), its enumerations
  (``InvalidParameterValue``), the 60-character name (``InvalidParameterValue.TooLong``) and the
  COS rule: the ImageUrl must be an object of a bucket in the import's region
  (``https://BUCKET.cos.REGION.myqcloud.com/KEY``), checked through ``cos`` (the test's view of
  its object store) — ``InvalidUrl`` otherwise;
- the documented responses: ImportImage -> ImageId; DescribeImages (ImageIds or Filters
  ``tag:KEY``) -> the image ``IMPORTING``, then ``NORMAL``, or ``IMPORTFAILED`` when the test
  set ``fail`` (as CVM's image check ends for a guest without virtio drivers, the reason
  Tencent calls VirtioNotInstall, which DescribeImages does not carry); errors in API 3.0's
  ``{"Response": {"Error": {"Code", "Message"}, "RequestId"}}`` with HTTP 200.

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
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VERSION = "2017-03-12"
SERVICE = "cvm"
REQUIRED = {"ImportImage": ("Architecture", "OsType", "OsVersion", "ImageUrl", "ImageName"), "DescribeImages": ()}
_ENUMS = {"Architecture": ("x86_64", "i386", "arm_64"), "BootMode": ("Legacy BIOS", "UEFI")}
_COS = re.compile(r"^(?P<bucket>[a-z0-9-]+)\.cos\.(?P<region>[a-z0-9-]+)\.myqcloud\.com$")


class Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class Image:
    params: dict[str, Any]
    image_id: str
    polls: int = 0
    state: str = "IMPORTING"


@dataclass
class TencentStandIn:
    secret_id: str
    secret_key: str
    region: str
    cos: Callable[[str, str], tuple[str, int] | None]  # (bucket, key) -> (the bucket's region, size) or None
    fail: bool = False  # the import ends IMPORTFAILED
    importing_polls: int = 1  # how many DescribeImages of a new image answer IMPORTING before it is done
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    images: dict[str, Image] = field(default_factory=dict)
    _ids: Any = field(default_factory=lambda: itertools.count(0x7C000))
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> TencentStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request_id = f"329ccbf5-be3c-4df4-9f17-{next(standin._ids):012x}"
                try:
                    doc = {**standin.answer(self.command, self.path, dict(self.headers.items()), body),
                           "RequestId": request_id}
                except Refused as exc:
                    doc = {"Error": {"Code": exc.code, "Message": exc.message}, "RequestId": request_id}
                data = json.dumps({"Response": doc}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

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
        action = lower.get("x-tc-action", "")
        if action not in REQUIRED:
            raise Refused("InvalidAction", f"The requested action `{action}` is not supported.")
        if lower.get("x-tc-version") != VERSION:
            raise Refused("NoSuchVersion", f"The requested version `{lower.get('x-tc-version')}` of API "
                                           f"`{action}` does not exist.")
        if not lower.get("x-tc-region"):
            raise Refused("MissingParameter", "The request is missing a required parameter `Region`.")
        if lower["x-tc-region"] != self.region:
            raise Refused("UnsupportedRegion", f"The region `{lower['x-tc-region']}` is not supported.")
        params: dict[str, Any] = json.loads(body or b"{}")
        for name in REQUIRED[action]:
            if not params.get(name):
                raise Refused("MissingParameter", f"The request is missing a required parameter `{name}`.")
        self.requests.append((action, params))
        handler: Any = getattr(self, "_" + action)
        return dict(handler(params))

    def verify(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        """TC3-HMAC-SHA256: canonical request, string to sign, derived key, as Tencent Cloud documents."""
        auth = headers.get("authorization", "")
        if not auth.startswith("TC3-HMAC-SHA256 "):
            raise Refused("AuthFailure.SignatureFailure", "The provided credentials could not be validated. "
                                                          "Please check your signature is correct.")
        fields = dict(p.strip().split("=", 1) for p in auth[len("TC3-HMAC-SHA256 "):].split(","))
        secret_id, date, service, term = fields["Credential"].split("/")
        if secret_id != self.secret_id:
            raise Refused("AuthFailure.SecretIdNotFound", "The SecretId is not found, please ensure that your "
                                                          "SecretId is correct.")
        stamp = int(headers.get("x-tc-timestamp") or 0)
        if abs(time.time() - stamp) > 300:
            raise Refused("AuthFailure.SignatureExpire", f"Signature expire. Timestamp is {stamp}.")
        day = datetime.datetime.fromtimestamp(stamp, datetime.UTC).strftime("%Y-%m-%d")
        signed = fields["SignedHeaders"].split(";")
        if (date, service, term) != (day, SERVICE, "tc3_request") or not {"content-type", "host"} <= set(signed):
            raise Refused("AuthFailure.SignatureFailure", "The provided credentials could not be validated. "
                                                          "Please check your signature is correct.")
        split = urllib.parse.urlsplit(path)
        canonical_headers = "".join(f"{h}:{headers.get(h, '').strip().lower()}\n" for h in signed)
        canonical = "\n".join([method, split.path or "/", split.query if method == "GET" else "", canonical_headers,
                               ";".join(signed), hashlib.sha256(b"" if method == "GET" else body).hexdigest()])
        scope = f"{date}/{service}/tc3_request"
        to_sign = "\n".join(["TC3-HMAC-SHA256", str(stamp), scope, hashlib.sha256(canonical.encode()).hexdigest()])
        k = ("TC3" + self.secret_key).encode()
        for part in (date, service, "tc3_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        want = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, fields.get("Signature", "")):
            raise Refused("AuthFailure.SignatureFailure", "The provided credentials could not be validated. "
                                                          "Please check your signature is correct.")

    # --- the actions ----------------------------------------------------------------------------------

    def _ImportImage(self, p: dict[str, Any]) -> dict[str, Any]:
        for name, allowed in _ENUMS.items():
            if name in p and p[name] not in allowed:
                raise Refused("InvalidParameterValue", f"The value `{p[name]}` of parameter `{name}` is invalid.")
        if len(p["ImageName"]) > 60:
            raise Refused("InvalidParameterValue.TooLong", "The length of `ImageName` exceeds the limit of 60.")
        url = urllib.parse.urlsplit(p["ImageUrl"])
        m = _COS.match(url.hostname or "")
        there = self.cos(m["bucket"], urllib.parse.unquote(url.path.lstrip("/"))) if m else None
        if m is None or m["region"] != self.region or there is None or there[0] != self.region:
            raise Refused("InvalidUrl", "The image URL is invalid: it must be an object of a COS bucket in the "
                                        "region of the import.")
        image = Image(p, f"img-{next(self._ids):08x}")
        self.images[image.image_id] = image
        return {"ImageId": image.image_id}

    def _DescribeImages(self, p: dict[str, Any]) -> dict[str, Any]:
        ids = p.get("ImageIds") or []
        filters = {f["Name"]: f["Values"] for f in p.get("Filters") or []}
        found = []
        for image in self.images.values():
            if ids and image.image_id not in ids:
                continue
            tags = {(t["Key"], t["Value"]) for spec in image.params.get("TagSpecification") or []
                    for t in spec.get("Tags") or []}
            if any(name.startswith("tag:") and not any((name[4:], v) in tags for v in values)
                   for name, values in filters.items()):
                continue
            if ids and image.state == "IMPORTING":  # a poll of this image moves it on
                image.polls += 1
                if image.polls > self.importing_polls:
                    image.state = "IMPORTFAILED" if self.fail else "NORMAL"
            found.append(self._image(image))
        return {"TotalCount": len(found), "ImageSet": found}

    def _image(self, image: Image) -> dict[str, Any]:
        p = image.params
        return {"ImageId": image.image_id, "OsName": f"{p['OsType']} {p['OsVersion']}", "ImageType": "PRIVATE_IMAGE",
                "CreatedTime": "2026-12-02T01:00:00Z", "ImageName": p["ImageName"],
                "ImageDescription": p.get("ImageDescription", ""), "ImageSize": 20,
                "Architecture": p["Architecture"], "ImageState": image.state, "Platform": p["OsType"],
                "ImageCreator": "100000000001", "ImageSource": "IMPORT", "SyncPercent": None,
                "IsSupportCloudinit": True, "SnapshotSet": [], "LicenseType": "TencentCloud",
                "Tags": [t for spec in p.get("TagSpecification") or [] for t in spec.get("Tags") or []]}
