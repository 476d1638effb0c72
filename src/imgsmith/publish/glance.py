"""OpenStack Glance (image API v2) through openstacksdk and the user's own cloud configuration.

The SDK gives the configuration (clouds.yaml, ``OS_CLOUD``, ``OS_*``) and the authenticated
session; the requests themselves are the documented v2 calls, sent through that session, so
``--dry-run`` shows exactly them: ``POST /v2/images`` (the record with every property),
``PUT /v2/images/{id}/file`` (the bytes), ``GET /v2/images/{id}`` (Glance's own sha512 of what
it stored, compared with the one computed while sending; a mismatch deletes the image).

Properties are Glance's "useful image properties"
(https://docs.openstack.org/glance/latest/admin/useful-image-properties.html), from the
manifest: ``os_distro`` in libosinfo's vocabulary, ``os_version``, ``architecture``,
``hw_firmware_type`` (from the partition table), ``hw_disk_bus`` (virtio: the guest is Linux),
``hw_qemu_guest_agent`` (when the guest has the agent package), ``min_disk`` (GiB).
``imgsmith_sha256`` is how a republish finds the image again without re-sending it.
"""

from __future__ import annotations

import math
import os
from typing import Any

from .base import Action, Chunks, Destination, PublishError, Reader, Record, image_name, progress_events

__all__ = ["GlanceDestination", "glance_properties"]

GiB = 1 << 30
# libguestfs inspection names -> libosinfo's distro vocabulary, where they differ.
_OS_DISTRO = {"archlinux": "arch", "redhat-based": "rhel", "alpinelinux": "alpinelinux", "oraclelinux": "ol",
              "sles": "sles", "suse-based": "opensuse", "debian": "debian", "ubuntu": "ubuntu"}
_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64", "i386": "i686",
         "i686": "i686", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}
_DISK_FORMAT = {"vpc": "vhd"}  # qemu-img's name -> Glance's disk_format


def _os_version(distro: str, version: str) -> str:
    """``12`` for Debian 12.0, ``22.04`` for Ubuntu (its minor is a month), else MAJOR.MINOR."""
    major, _, minor = version.partition(".")
    if distro == "ubuntu" and minor.isdigit():
        return f"{major}.{int(minor):02d}"
    return major if minor in ("", "0") else f"{major}.{minor}"


def glance_properties(a: Any) -> dict[str, Any]:
    """The image record's properties from the manifest's facts (user properties are merged on top)."""
    guest = a.guest or {}
    # Nova boots hw_firmware_type=bios by default: a hybrid image is published as bios (it boots either way).
    firmware = "uefi" if a.firmware == "uefi" else "bios"
    props: dict[str, Any] = {"imgsmith_sha256": a.sha256, "hw_firmware_type": firmware,
                             "min_disk": max(1, math.ceil(a.virtual_size / GiB))}
    distro = str(guest.get("distro") or "")
    if distro and distro != "unknown":
        props["os_distro"] = _OS_DISTRO.get(distro, distro)
        props["os_type"] = "linux"
        props["hw_disk_bus"] = "virtio"
        if guest.get("version"):
            props["os_version"] = _os_version(distro, str(guest["version"]))
    if guest.get("arch") in _ARCH:
        props["architecture"] = _ARCH[guest["arch"]]
    if a.has_package("qemu-guest-agent"):
        props["hw_qemu_guest_agent"] = "yes"
    return props


class GlanceDestination(Destination):
    kind = "glance"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn: Any = None
        self.image_id: str | None = None
        self.sha512: str | None = None

    # --- what is sent ------------------------------------------------------------------------------

    def body(self) -> dict[str, Any]:
        e, a = self.entry, self.artifact
        props = glance_properties(a)
        props.update({k: (str(v).lower() if isinstance(v, bool) else v) for k, v in e.properties.items()})
        body: dict[str, Any] = {"name": image_name(e.image_name, a),
                                "disk_format": _DISK_FORMAT.get(a.format, a.format), "container_format": "bare"}
        for attr in ("min_disk", "min_ram"):  # image attributes (integers), not free-form properties
            if attr in props:
                body[attr] = int(props.pop(attr))
        if e.visibility:
            body["visibility"] = e.visibility
        if e.tags:
            body["tags"] = list(e.tags)
        body.update({k: str(v) for k, v in props.items()})
        return body

    def plan(self) -> list[Action]:
        a = self.artifact
        return [
            Action("GET /v2/images", {"imgsmith_sha256": a.sha256, "status": "active"}),
            Action("POST /v2/images", self.body()),
            Action("PUT /v2/images/{id}/file", {"Content-Type": "application/octet-stream", "file": a.name,
                                                "bytes": a.file_size}),
            Action("GET /v2/images/{id}", {"compare": "os_hash_value (sha512) with the sha512 of the bytes sent"}),
        ]

    # --- the service -------------------------------------------------------------------------------

    def connect(self) -> None:
        import warnings

        import openstack
        e = self.entry
        cloud = e.cloud or os.environ.get("OS_CLOUD")
        # The SDK warns about its own deprecated internals (influxdb, statsd) on every connect: not the user's.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PendingDeprecationWarning)  # RemovedInSDK60Warning's base
            self._connect(openstack, cloud)

    def _connect(self, openstack: Any, cloud: str | None) -> None:
        e = self.entry
        if not (cloud or os.environ.get("OS_AUTH_URL") or e.endpoint):
            raise PublishError(f"{self.spec.name}: no OpenStack credentials: give cloud: (a clouds.yaml entry), "
                               "or set OS_CLOUD or OS_AUTH_URL and the other OS_* variables")
        try:
            if cloud or os.environ.get("OS_AUTH_URL"):
                self.conn = openstack.connect(cloud=cloud, image_endpoint_override=e.endpoint) if e.endpoint \
                    else openstack.connect(cloud=cloud)
            elif e.endpoint:  # a Glance without Keystone (noauth): the endpoint alone
                self.conn = openstack.connect(auth_type="none", image_endpoint_override=e.endpoint)
            else:
                self.conn = None
            if self.conn is not None:
                self._call("GET", "/images", params={"limit": 1})
        except PublishError:
            raise
        except Exception as exc:
            raise PublishError(f"{self.spec.name}: glance: {_why(exc)}") from None

    def _call(self, method: str, url: str, **kw: Any) -> Any:
        """One request through the SDK's session; an HTTP error becomes Glance's own message."""
        from keystoneauth1 import exceptions as ks
        try:
            r = self.conn.image.request(url, method, raise_exc=False, **kw)
        except ks.ClientException as exc:
            raise PublishError(f"{self.spec.name}: glance: {_why(exc)}") from None
        if r.status_code >= 400:
            raise PublishError(f"{self.spec.name}: glance: {method} {url}: {r.status_code} {_text(r)}")
        return r.json() if r.content and "json" in r.headers.get("Content-Type", "") else None

    def find(self, previous: Record | None) -> Record | None:
        a = self.artifact
        if previous and previous.get("image_id") and previous.get("sha256") == a.sha256:
            img = self._get(str(previous["image_id"]))
            if img and img.get("status") == "active" and img.get("os_hash_value") == previous.get("sha512"):
                return self._record(img, str(previous["sha512"]))
        found = self._call("GET", "/images", params={"imgsmith_sha256": a.sha256, "status": "active"}) or {}
        for img in found.get("images", []):
            if img.get("os_hash_algo") == "sha512" and img.get("os_hash_value") == self._our_sha512():
                return self._record(img, self._our_sha512())
        return None

    def _our_sha512(self) -> str:
        if self.sha512 is None:
            from ..host.files import file_digest
            self.sha512 = file_digest(self.artifact.path, "sha512")
        return self.sha512

    def _get(self, image_id: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", f"/images/{image_id}")  # type: ignore[no-any-return]
        except PublishError:
            return None

    def upload(self) -> None:
        created = self._call("POST", "/images", json=self.body())
        self.image_id = str(created["id"])
        reader = Reader(self.artifact.path, progress=progress_events(self.emit, f"{self.spec.name}: upload"),
                        background=True)
        try:
            self._call("PUT", f"/images/{self.image_id}/file", data=Chunks(reader),
                       headers={"Content-Type": "application/octet-stream"})
        except BaseException:
            self._delete()  # nothing half-registered stays behind
            raise
        finally:
            reader.close()
        self.sha512, self.sent = reader.hash.hexdigest(), reader.sent

    def register(self) -> None:
        """Glance registers on upload: the record was created first, the file makes it active."""

    def wait(self, timeout: float) -> Record:
        import time
        assert self.image_id is not None and self.sha512 is not None
        deadline = time.monotonic() + timeout
        img = self._call("GET", f"/images/{self.image_id}")
        while img.get("status") in ("queued", "saving", "importing") and time.monotonic() < deadline:
            time.sleep(1)
            img = self._call("GET", f"/images/{self.image_id}")
        if img.get("status") != "active":
            self._delete()
            raise PublishError(f"{self.spec.name}: glance: image {self.image_id} is {img.get('status')}, not active; "
                               "deleted it")
        if img.get("os_hash_algo") != "sha512" or img.get("os_hash_value") != self.sha512:
            self._delete()
            raise PublishError(f"{self.spec.name}: glance: the image's {img.get('os_hash_algo')} "
                               f"{str(img.get('os_hash_value'))[:16]}… is not the sha512 of the bytes sent "
                               f"({self.sha512[:16]}…); deleted image {self.image_id}")
        return self._record(img, self.sha512)

    def _delete(self) -> None:
        if self.image_id:
            self.conn.image.request(f"/images/{self.image_id}", "DELETE", raise_exc=False)

    def _record(self, img: dict[str, Any], sha512: str) -> Record:
        return {"image_id": img["id"], "name": img.get("name"), "endpoint": self.conn.image.get_endpoint(),
                "region": self.conn.config.region_name or None, "status": img.get("status"),
                "sha512": sha512, "disk_format": img.get("disk_format")}


def _text(r: Any) -> str:
    """Glance's error body as one line (it answers HTML or JSON)."""
    import re
    text = re.sub(r"<[^>]+>", " ", r.text or "")
    return " ".join(text.split())[:300]


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__
