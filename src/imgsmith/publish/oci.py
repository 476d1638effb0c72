"""A KubeVirt containerDisk pushed to an OCI registry through the distribution HTTP API.

The image has one layer: an uncompressed tar holding ``disk/`` and the disk file in it, owned
by 107:107 (the qemu user of KubeVirt's launcher; its containerDisk docs ``ADD --chown=107:107
IMAGE /disk/``), with fixed times so the same disk always makes the same layer digest. The
layer is streamed in one pass (``POST`` an upload, ``PATCH`` the tar as it is produced and
hashed, ``PUT ?digest=``); a blob the registry already has is not sent again. The manifest
carries the build's facts as annotations (``org.imgsmith.*``, ``org.opencontainers.image.*``).

Registries that need a login are not supported yet: this speaks to anonymous registries only.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import tarfile
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from .base import Action, Destination, PublishError, Reader, Record, progress_events

__all__ = ["OciDestination", "layer_headers"]

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x"}
QEMU_UID = 107


def layer_headers(name: str, size: int) -> tuple[bytes, bytes]:
    """The tar bytes before the disk (``disk/`` and the file's header) and after it (padding, end)."""
    def info(path: str, kind: bytes, mode: int, length: int = 0) -> bytes:
        t = tarfile.TarInfo(path)
        t.type, t.mode, t.size, t.mtime = kind, mode, length, 0
        t.uid = t.gid = QEMU_UID
        t.uname = t.gname = ""
        return t.tobuf(format=tarfile.GNU_FORMAT)
    head = info("disk/", tarfile.DIRTYPE, 0o555) + info(f"disk/{name}", tarfile.REGTYPE, 0o444, size)
    tail = b"\0" * (-size % 512) + b"\0" * 1024
    return head, tail


class OciDestination(Destination):
    kind = "oci"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.spec.oci is not None
        self.ref = self.spec.oci
        self.layer_digest = ""
        self.manifest_digest = ""

    @property
    def base(self) -> str:
        return f"{'http' if self.entry.insecure else 'https'}://{self.ref.registry}"

    def annotations(self) -> dict[str, str]:
        a, g = self.artifact, self.artifact.guest
        notes = {"org.opencontainers.image.title": a.name, "org.imgsmith.sha256": a.sha256,
                 "org.imgsmith.format": a.format, "org.imgsmith.virtual-size": str(a.virtual_size),
                 "org.imgsmith.firmware": a.firmware, "org.imgsmith.definition": a.definition}
        for key in ("distro", "version", "arch"):
            if g.get(key):
                notes[f"org.imgsmith.guest.{key}"] = str(g[key])
        return notes

    def plan(self) -> list[Action]:
        repo, a = self.ref.repository, self.artifact
        return [Action(f"GET /v2/{repo}/manifests/{self.ref.tag}", {"Accept": MANIFEST_TYPE}),
                Action(f"POST /v2/{repo}/blobs/uploads/", {}),
                Action("PATCH {upload}", {"layer": LAYER_TYPE, "tar": [f"disk/ (uid {QEMU_UID})",
                                                                       f"disk/{a.name} ({a.file_size} bytes)"]}),
                Action("PUT {upload}?digest=sha256:…", {}),
                Action(f"PUT /v2/{repo}/blobs/uploads/ (config)", {"mediaType": CONFIG_TYPE,
                                                                    "architecture": self._arch()}),
                Action(f"PUT /v2/{repo}/manifests/{self.ref.tag}", {"Content-Type": MANIFEST_TYPE,
                                                                     "annotations": self.annotations()})]

    def _arch(self) -> str:
        return _ARCH.get(str(self.artifact.guest.get("arch") or "x86_64"), "amd64")

    # --- HTTP --------------------------------------------------------------------------------------

    def _conn(self) -> http.client.HTTPConnection:
        host = self.ref.registry
        return http.client.HTTPConnection(host, timeout=60) if self.entry.insecure else \
            http.client.HTTPSConnection(host, timeout=60)

    def _request(self, method: str, url: str, body: bytes | Iterator[bytes] | None = None,
                 headers: dict[str, str] | None = None, ok: tuple[int, ...] = (200, 201, 202, 204)) -> Any:
        """One request; the response (status, headers, body). A refusal names the registry's own error."""
        c = self._conn()
        try:
            if isinstance(body, Iterator):
                c.putrequest(method, url)
                for k, v in {**(headers or {}), "Transfer-Encoding": "chunked"}.items():
                    c.putheader(k, v)
                c.endheaders()
                for chunk in body:
                    c.send(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                c.send(b"0\r\n\r\n")
            else:
                c.request(method, url, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
        except OSError as exc:
            raise PublishError(f"{self.spec.name}: registry {self.ref.registry}: {exc.strerror or exc}") from None
        finally:
            c.close()
        if r.status not in ok:
            raise PublishError(f"{self.spec.name}: registry {method} {url}: {r.status} {_registry_error(data)}")
        return r.status, r.headers, data

    def connect(self) -> None:
        status, _h, _d = self._request("GET", "/v2/", ok=(200, 401))
        if status == 401:
            raise PublishError(f"{self.spec.name}: registry {self.ref.registry} wants a login, which imgsmith "
                               "does not do yet (push to an anonymous registry, or use skopeo)")

    def find(self, previous: Record | None) -> Record | None:
        status, headers, data = self._request("GET", f"/v2/{self.ref.repository}/manifests/{self.ref.tag}",
                                              headers={"Accept": MANIFEST_TYPE}, ok=(200, 404))
        if status == 404:
            return None
        doc = json.loads(data)
        if doc.get("annotations", {}).get("org.imgsmith.sha256") != self.artifact.sha256:
            return None
        self.manifest_digest = headers.get("Docker-Content-Digest") or \
            "sha256:" + hashlib.sha256(data).hexdigest()
        self.layer_digest = doc["layers"][0]["digest"]
        return self._record()

    def _blob_there(self, digest: str) -> bool:
        status, _h, _d = self._request("HEAD", f"/v2/{self.ref.repository}/blobs/{digest}", ok=(200, 404))
        return bool(status == 200)

    def _push_blob(self, chunks: Iterator[bytes], digest_of: Any, media: str) -> None:
        repo = self.ref.repository
        _s, h, _d = self._request("POST", f"/v2/{repo}/blobs/uploads/")
        location = str(h["Location"])
        _s, h, _d = self._request("PATCH", _path(location), body=chunks,
                                  headers={"Content-Type": "application/octet-stream"})
        location = str(h.get("Location") or location)
        sep = "&" if "?" in location else "?"
        self._request("PUT", f"{_path(location)}{sep}digest={digest_of()}", body=b"",
                      headers={"Content-Length": "0", "Content-Type": media})

    def upload(self) -> None:
        a = self.artifact
        head, tail = layer_headers(a.name, a.file_size)
        digest = hashlib.sha256()
        reader = Reader(a.path, algo="sha256", progress=progress_events(self.emit, f"{self.spec.name}: push"))

        def stream() -> Iterator[bytes]:
            for chunk in (head, *reader, tail):
                digest.update(chunk)
                yield chunk
        try:
            self._push_blob(stream(), lambda: "sha256:" + digest.hexdigest(), LAYER_TYPE)
        finally:
            reader.close()
        if reader.hash.hexdigest() != a.sha256:
            raise PublishError(f"{self.spec.name}: {a.name} changed while it was sent (its sha256 is not the "
                               "manifest's): rebuild it")
        self.layer_digest = "sha256:" + digest.hexdigest()
        self.sent = reader.sent + len(head) + len(tail)

    def register(self) -> None:
        """The manifest names the config and the layer: pushing it makes the tag."""
        a = self.artifact
        head, tail = layer_headers(a.name, a.file_size)
        layer_size = len(head) + a.file_size + len(tail)
        config = json.dumps({"architecture": self._arch(), "os": "linux", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": [self.layer_digest]}},
                            sort_keys=True).encode()
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        if not self._blob_there(config_digest):
            self._push_blob(iter([config]), lambda: config_digest, CONFIG_TYPE)
        manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
                               "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": len(config)},
                               "layers": [{"mediaType": LAYER_TYPE, "digest": self.layer_digest,
                                           "size": layer_size}],
                               "annotations": self.annotations()}, sort_keys=True).encode()
        _s, h, _d = self._request("PUT", f"/v2/{self.ref.repository}/manifests/{self.ref.tag}", body=manifest,
                                  headers={"Content-Type": MANIFEST_TYPE})
        self.manifest_digest = h.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(manifest).hexdigest()

    def wait(self, timeout: float) -> Record:
        """A registry has nothing to wait for: the pushed manifest is served at once."""
        return self._record()

    def _record(self) -> Record:
        return {"reference": f"{self.ref}", "digest": self.manifest_digest, "layer": self.layer_digest,
                "status": "pushed"}


def _path(location: str) -> str:
    """A registry's Location (absolute or relative) as the path and query for the same host."""
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _registry_error(data: bytes) -> str:
    try:
        errors = json.loads(data).get("errors") or []
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors) or data[:200].decode(errors="replace")
    except (ValueError, AttributeError):
        return io.BytesIO(data).read(200).decode(errors="replace")
