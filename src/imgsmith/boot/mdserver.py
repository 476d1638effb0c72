"""A cloud metadata service for one guest connection: HTTP request on stdin, response on stdout.

qemu's user network runs this file once per connection the guest opens to the
metadata address (``guestfwd=tcp:169.254.169.254:80-cmd:python3 mdserver.py DATA``),
with the connection as stdin and stdout. So it answers exactly one request and
exits: no listening socket, no port on the host, nothing a process other than
this guest could reach. It is a local stand-in for EC2's IMDS, Alibaba Cloud's
metadata service or GCE's metadata server, answering from the JSON file *DATA*
the boot test wrote:

``routes``
    path → body, directory listings included (the test builds the tree, see
    :mod:`imgsmith.boot.datasource`); a path with a trailing ``/`` and without
    are the same. A route ``PATH?recursive=true`` answers a recursive request
    (GCE's ``?recursive=True``, any case) of PATH; other query strings are ignored.
``token``
    IMDSv2: ``{"value": T, "ttl_header": ..., "header": ...}``. ``PUT
    /latest/api/token`` with the TTL header answers *T*; every other request
    must carry ``header: T`` or gets 401, like IMDS with ``HttpTokens=required``.
``require_header``
    ``[name, value]`` every request must carry, else 403 (GCE's
    ``Metadata-Flavor: Google``).
``log``
    a file that gets one JSON line per request (method, path, status, whether a
    token came with it): the boot test's proof of what the guest asked.

Standard library only, and run by path (``python3 -I``), so each connection costs
one interpreter start and no import of imgsmith.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any, BinaryIO

__all__ = ["Request", "Response", "answer", "main", "read_request"]

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed"}


class Request:
    """One parsed HTTP request line with its headers (names lower-cased)."""

    def __init__(self, method: str, path: str, headers: Mapping[str, str], query: str = "") -> None:
        self.method = method
        self.path = path
        self.headers = dict(headers)
        self.query = query

    @property
    def recursive(self) -> bool:
        """GCE's ``?recursive=true``: the whole directory as one JSON document."""
        return any(part.lower() == "recursive=true" for part in self.query.split("&"))


class Response:
    def __init__(self, status: int, body: str = "", content_type: str = "text/plain") -> None:
        self.status = status
        self.body = body
        self.content_type = content_type

    def encode(self) -> bytes:
        body = self.body.encode()
        head = (f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Error')}\r\n"
                f"Content-Type: {self.content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\nServer: imgsmith-metadata\r\n\r\n")
        return head.encode() + body


def read_request(stream: BinaryIO) -> Request | None:
    """The request on *stream*, or None when the peer sent nothing parseable (a port probe)."""
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        line = stream.readline(MAX_HEADER_BYTES)
        if not line:
            break
        head += line
        if len(head) > MAX_HEADER_BYTES or line in (b"\r\n", b"\n"):
            break
    lines = head.decode("latin-1").splitlines()
    if not lines or len(lines[0].split()) != 3:
        return None
    method, target, _version = lines[0].split()
    headers: dict[str, str] = {}
    for text in lines[1:]:
        name, sep, value = text.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    if 0 < length <= MAX_BODY_BYTES:
        stream.read(length)
    path, _, query = target.partition("?")
    if path.startswith("http://"):  # absolute form
        path = "/" + path.split("/", 3)[-1] if path.count("/") >= 3 else "/"
    return Request(method.upper(), path, headers, query)


def _route(routes: Mapping[str, str], path: str) -> str | None:
    for candidate in (path, path.rstrip("/"), path.rstrip("/") + "/"):
        if candidate in routes:
            return routes[candidate]
    return None


def _token_gate(token: Mapping[str, str], req: Request) -> Response | None:
    """IMDSv2: the token PUT's answer, a 401 for a request without the token, None to go on."""
    if req.method == "PUT" and req.path.rstrip("/") == token["path"]:
        ttl = req.headers.get(token["ttl_header"].lower(), "")
        if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            return Response(400, f"{token['ttl_header']} must be 1-21600\n")
        if "x-forwarded-for" in req.headers:  # IMDS refuses tokens to proxied requests
            return Response(403, "forwarded requests get no token\n")
        return Response(200, token["value"])
    if req.headers.get(token["header"].lower()) != token["value"]:
        return Response(401, "")
    return None


def answer(data: Mapping[str, Any], req: Request) -> Response:
    """The response the service gives *req* (pure: the unit tests call it directly)."""
    required = data.get("require_header")
    if required and req.headers.get(str(required[0]).lower()) != required[1]:
        return Response(403, f"missing header {required[0]}: {required[1]}\n")
    gate = _token_gate(data["token"], req) if data.get("token") else None
    if gate is not None:
        return gate
    if req.method not in ("GET", "HEAD"):
        return Response(405, "")
    routes = data.get("routes", {})
    body = _route(routes, req.path.rstrip("/") + "?recursive=true") if req.recursive else None
    body = body if body is not None else _route(routes, req.path)
    if body is None:
        return Response(404, "")
    content_type = "application/json" if body.lstrip().startswith("{") else "text/plain"
    return Response(200, "" if req.method == "HEAD" else body, content_type)


def _log(data: Mapping[str, Any], req: Request | None, resp: Response) -> None:
    path = data.get("log")
    if not path:
        return
    token = data.get("token")
    entry = {"method": req.method if req else None, "path": req.path if req else None, "status": resp.status,
             "token": bool(token and req and token["header"].lower() in req.headers)}
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    with open(argv[1], encoding="utf-8") as f:
        data = json.load(f)
    req = read_request(sys.stdin.buffer)
    resp = answer(data, req) if req is not None else Response(400, "")
    sys.stdout.buffer.write(resp.encode())
    sys.stdout.buffer.flush()
    _log(data, req, resp)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
