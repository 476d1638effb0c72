"""A local stand-in of the three EC2 Query API actions an AWS import uses, on 127.0.0.1.

AWS's EC2 API cannot be reached from the test machine and moto has no ImportSnapshot, so this
answers what AWS documents and checks what AWS checks:

- the Query API: a form-encoded POST with ``Action`` and ``Version=2016-11-15``
  (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/Query-Requests.html);
- the Signature Version 4 of every request, recomputed here from the canonical request as
  AWS documents it (https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html),
  with the access key and secret key the test configured; written from the documentation,
  not with botocore's signer, so it checks the SDK rather than agreeing with itself;
- the parameters each action requires (``MissingParameter``), and the documented responses:
  ImportSnapshot -> ``importTaskId``; DescribeImportSnapshotTasks -> ``active`` then
  ``completed`` with a ``snapshotId``, or ``deleted`` with a ``statusMessage`` when the test
  set ``fail``; RegisterImage -> ``imageId``; errors in EC2's XML error format.

Every accepted request is kept in ``requests`` (action and parameters) for the tests to read.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import itertools
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.sax.saxutils import escape

VERSION = "2016-11-15"
NS = f"http://ec2.amazonaws.com/doc/{VERSION}/"
REQUIRED = {
    "ImportSnapshot": ("DiskContainer.Format", "DiskContainer.UserBucket.S3Bucket", "DiskContainer.UserBucket.S3Key"),
    "DescribeImportSnapshotTasks": (),
    "RegisterImage": ("Name",),
}
_ENUMS = {"Architecture": ("i386", "x86_64", "arm64", "x86_64_mac", "arm64_mac"),
          "BootMode": ("legacy-bios", "uefi", "uefi-preferred"),
          "DiskContainer.Format": ("VHD", "VMDK", "RAW", "vhd", "vmdk", "raw")}


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Task:
    params: dict[str, str]
    polls: int = 0


@dataclass
class Ec2StandIn:
    access_key: str
    secret_key: str
    region: str
    fail: str | None = None  # the StatusMessage a failing import ends with
    active_polls: int = 1  # how many DescribeImportSnapshotTasks answer "active" before "completed"
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    tasks: dict[str, Task] = field(default_factory=dict)
    snapshots: set[str] = field(default_factory=set)
    _ids: Any = field(default_factory=lambda: itertools.count(0x1000))
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Ec2StandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    status, xml = 200, standin.answer("POST", self.path, dict(self.headers.items()), body)
                except Refused as exc:
                    status, xml = exc.status, error_xml(exc.code, exc.message)
                data = xml.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/xml;charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                data = error_xml("InvalidAction", "GET is not accepted by this stand-in").encode()
                self.send_response(400)
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

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> str:
        lower = {k.lower(): v for k, v in headers.items()}
        if not lower.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            raise Refused(400, "InvalidParameterValue", "the Query API takes a form-encoded POST body")
        params = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
        self.verify(method, path, lower, body)
        action = params.get("Action", "")
        if action not in REQUIRED:
            raise Refused(400, "InvalidAction", f"The action {action or '(none)'} is not valid for this web service.")
        if params.get("Version") != VERSION:
            raise Refused(400, "InvalidParameterValue", f"Version {params.get('Version')!r} is not {VERSION}")
        for name in REQUIRED[action]:
            if not params.get(name):
                raise Refused(400, "MissingParameter", f"The request must contain the parameter {name}")
        for name, allowed in _ENUMS.items():
            if name in params and params[name] not in allowed:
                raise Refused(400, "InvalidParameterValue", f"Value ({params[name]}) for parameter {name} is invalid.")
        self.requests.append((action, params))
        handler: Any = getattr(self, "_" + action)
        return str(handler(params))

    def verify(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        """Signature Version 4: the canonical request, the string to sign, the derived key, as documented."""
        auth = headers.get("authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            raise Refused(401, "AuthFailure", "AWS was not able to validate the provided access credentials")
        fields = dict(p.strip().split("=", 1) for p in auth[len("AWS4-HMAC-SHA256 "):].split(","))
        key_id, date, region, service, term = fields["Credential"].split("/")
        if key_id != self.access_key:
            raise Refused(401, "AuthFailure", "AWS was not able to validate the provided access credentials")
        if (region, service, term) != (self.region, "ec2", "aws4_request"):
            raise Refused(401, "AuthFailure", f"Credential should be scoped to a valid region, not '{region}'.")
        amz_date = headers.get("x-amz-date", "")
        when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
        if abs((datetime.datetime.now(datetime.UTC) - when).total_seconds()) > 900 or not amz_date.startswith(date):
            raise Refused(400, "RequestExpired", f"Request has expired. Timestamp date is {amz_date}")
        signed = fields["SignedHeaders"].split(";")
        if "host" not in signed or "x-amz-date" not in signed:
            raise Refused(403, "SignatureDoesNotMatch", "host and x-amz-date must be signed")
        canonical_headers = "".join(f"{h}:{' '.join(headers.get(h, '').split())}\n" for h in signed)
        uri = urllib.parse.quote(urllib.parse.urlsplit(path).path or "/", safe="/~")
        query = urllib.parse.urlsplit(path).query
        canonical_query = "&".join(sorted(
            f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
            for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True)))
        canonical = "\n".join([method, uri, canonical_query, canonical_headers, ";".join(signed),
                               hashlib.sha256(body).hexdigest()])
        scope = f"{date}/{region}/{service}/{term}"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        k = ("AWS4" + self.secret_key).encode()
        for part in (date, region, service, term):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        want = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, fields.get("Signature", "")):
            raise Refused(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the "
                          "signature you provided. Check your AWS Secret Access Key and signing method. Consult the "
                          "service documentation for details.")

    # --- the actions --------------------------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids):017x}"

    def _ImportSnapshot(self, p: dict[str, str]) -> str:
        task = self._id("import-snap")
        self.tasks[task] = Task(p)
        return response("ImportSnapshot", f"<importTaskId>{task}</importTaskId>"
                        f"<description>{escape(p.get('Description', ''))}</description>"
                        f"<snapshotTaskDetail>{_detail(p, 'active', 'pending', '0')}</snapshotTaskDetail>")

    def _DescribeImportSnapshotTasks(self, p: dict[str, str]) -> str:
        ids = [v for k, v in sorted(p.items()) if k.startswith("ImportTaskId.")]
        items = []
        for tid in ids or list(self.tasks)[-5:]:
            task = self.tasks.get(tid)
            if task is None:
                raise Refused(400, "InvalidConversionTaskId.Malformed", f"The import task ID '{tid}' is malformed")
            items.append(f"<item><importTaskId>{tid}</importTaskId>{self._state(task)}</item>")
        return response("DescribeImportSnapshotTasks",
                        f"<importSnapshotTaskSet>{''.join(items)}</importSnapshotTaskSet>")

    def _state(self, task: Task) -> str:
        task.polls += 1
        p = task.params
        if task.polls <= self.active_polls:
            detail = _detail(p, "active", "converting", "27")
        elif self.fail:
            detail = _detail(p, "deleted", self.fail, None)
        else:
            snap = f"snap-{hashlib.sha256(repr(sorted(p.items())).encode()).hexdigest()[:17]}"
            self.snapshots.add(snap)
            detail = _detail(p, "completed", None, None) + f"<snapshotId>{snap}</snapshotId>"
        return f"<snapshotTaskDetail>{detail}</snapshotTaskDetail>"

    def _RegisterImage(self, p: dict[str, str]) -> str:
        snap = p.get("BlockDeviceMapping.1.Ebs.SnapshotId", "")
        if snap not in self.snapshots:
            raise Refused(400, "InvalidSnapshot.NotFound", f"The snapshot '{snap}' does not exist.")
        return response("RegisterImage", f"<imageId>{self._id('ami')}</imageId>")


def _detail(p: dict[str, str], status: str, message: str | None, progress: str | None) -> str:
    out = [f"<format>{escape(p.get('DiskContainer.Format', ''))}</format>",
           f"<status>{status}</status>",
           "<userBucket>"
           f"<s3Bucket>{escape(p.get('DiskContainer.UserBucket.S3Bucket', ''))}</s3Bucket>"
           f"<s3Key>{escape(p.get('DiskContainer.UserBucket.S3Key', ''))}</s3Key></userBucket>"]
    if message is not None:
        out.append(f"<statusMessage>{escape(message)}</statusMessage>")
    if progress is not None:
        out.append(f"<progress>{progress}</progress>")
    return "".join(out)


def response(action: str, inner: str) -> str:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<{action}Response xmlns="{NS}">'
            f"<requestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</requestId>{inner}</{action}Response>")


def error_xml(code: str, message: str) -> str:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
            f"<Message>{escape(message)}</Message></Error></Errors>"
            "<RequestID>ea966190-f9aa-478e-9ede-example</RequestID></Response>")
