"""A ``publish:`` entry resolved: its kind, the output it takes, and the keys that kind reads.

Everything here is judged at load, before any build work, with the (path, message) problems
of definition/resolve.py, so a wrong destination is a ``FILE:LINE:COL`` error and not a
failure after an hour of building. It imports nothing heavy: the SDKs load only to publish.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..definition.model import PublishEntry

__all__ = ["ACCEPTS", "KINDS", "OciRef", "PublishSpec", "check_format", "parse_oci", "resolve_entries"]

# What each kind takes (qemu-img format names, plain layout). Glance's disk_format vocabulary:
# https://docs.openstack.org/glance/latest/user/formats.html ("vpc" is Glance's "vhd").
# An OCI containerDisk holds a qcow2 or raw disk (KubeVirt docs, "containerDisk").
# An object store takes any file. EC2 ImportSnapshot's DiskContainer.Format is VHD, VMDK or RAW
# (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_SnapshotDiskContainer.html).
ACCEPTS: dict[str, tuple[str, ...]] = {
    "glance": ("qcow2", "raw", "vmdk", "vpc", "vhdx", "vdi"),
    "aws": ("raw", "vmdk", "vpc"),
    # ECS ImportImage DiskDeviceMapping.N.Format: RAW, VHD, QCOW2 (VMDK is an invitational preview, left out).
    "aliyun": ("qcow2", "raw", "vpc"),
    # CVM ImportImage: "RAW, VHD, QCOW2 and VMDK" (https://www.tencentcloud.com/document/product/213/33270).
    "tencent": ("qcow2", "raw", "vpc", "vmdk"),
    "oci": ("qcow2", "raw"),
    "s3": (),
}
KINDS = ("glance", "s3", "aws", "aliyun", "tencent")  # plus oci://REGISTRY/REPO:TAG
# The optional keys each kind reads; any other optional key set on an entry is refused.
_KEYS: dict[str, frozenset[str]] = {
    "glance": frozenset({"cloud", "endpoint", "image_name", "properties", "visibility", "tags"}),
    "s3": frozenset({"endpoint", "region", "bucket", "key", "image_name", "tags"}),
    "oci": frozenset({"insecure"}),
    "aws": frozenset({"endpoint", "region", "bucket", "key", "image_name", "tags"}),
    "aliyun": frozenset({"endpoint", "api_endpoint", "region", "bucket", "key", "image_name", "tags"}),
    "tencent": frozenset({"endpoint", "api_endpoint", "region", "bucket", "key", "image_name", "tags"}),
}
_OPTIONAL = ("cloud", "endpoint", "api_endpoint", "region", "bucket", "key", "image_name", "properties", "visibility",
             "tags",
             "insecure")
_OCI = re.compile(r"^oci://(?P<registry>[A-Za-z0-9.-]+(?::\d+)?)/(?P<repo>[a-z0-9]+(?:[._/-][a-z0-9]+)*)"
                  r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?$")


@dataclass(frozen=True)
class OciRef:
    registry: str
    repository: str
    tag: str

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}:{self.tag}"


@dataclass(frozen=True)
class PublishSpec:
    """One destination: the entry as written, its kind, and the output (file name) it publishes."""

    entry: PublishEntry
    kind: str
    output: str  # the output's file name in the build directory
    oci: OciRef | None = None

    @property
    def name(self) -> str:
        return self.entry.name


def parse_oci(url: str) -> OciRef | None:
    m = _OCI.match(url)
    if m is None:
        return None
    return OciRef(m["registry"], m["repo"], m["tag"] or "latest")


def check_format(kind: str, fmt: str, layout: str) -> str | None:
    """Why *kind* cannot take an output of *fmt*/*layout*, or None when it can."""
    accepted = ACCEPTS[kind]
    if not accepted:
        return None
    if fmt not in accepted or layout != "plain":
        what = f"{fmt} ({layout})" if layout != "plain" else fmt
        return f"{kind} does not take a {what} image (it takes {', '.join(accepted)})"
    return None


def _kind(entry: PublishEntry) -> tuple[str | None, OciRef | None, str | None]:
    if entry.to.startswith("oci://"):
        ref = parse_oci(entry.to)
        if ref is None:
            return None, None, f"{entry.to!r} is not oci://REGISTRY[:PORT]/REPO[:TAG]"
        return "oci", ref, None
    if entry.to not in KINDS:
        return None, None, f"unknown destination kind {entry.to!r} (known: {', '.join(KINDS)}, oci://REGISTRY/REPO:TAG)"
    return entry.to, None, None


def resolve_entries(entries: Sequence[PublishEntry], outputs: Sequence[tuple[str, str | None, str, str]],
                    found: list[tuple[tuple[str | int, ...], str]]) -> tuple[PublishSpec, ...]:
    """Check every entry against the build's *outputs* (file name, preset, format, layout)."""
    specs: list[PublishSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where: tuple[str | int, ...] = ("publish", i)
        if entry.name in seen:
            found.append(((*where, "name"), f"destination name {entry.name!r} is used twice"))
            continue
        seen.add(entry.name)
        kind, ref, why = _kind(entry)
        if kind is None:
            found.append(((*where, "to"), str(why)))
            continue
        stray = [k for k in _OPTIONAL if k not in _KEYS[kind] and k in entry.model_fields_set]
        if stray:
            found.append(((*where, stray[0].replace("_", "-")), f"{kind} does not use {stray[0].replace('_', '-')}"))
            continue
        if kind == "s3" and not entry.bucket:
            found.append((where, "an s3 destination needs bucket:"))
            continue
        if kind in ("aws", "aliyun", "tencent") and not (entry.bucket and entry.region):
            article = "an" if kind[0] in "aeiou" else "a"
            found.append((where, f"{article} {kind} destination needs region: and bucket: (the import reads the "
                                 "bucket of its own region)"))
            continue
        match = [o for o in outputs if entry.output in (o[0], o[1])]
        if not match:
            known = ", ".join(sorted({o[0] for o in outputs} | {str(o[1]) for o in outputs if o[1]})) or "none"
            found.append(((*where, "output"), f"no output named {entry.output!r} (outputs: {known})"))
            continue
        if len(match) > 1:
            found.append(((*where, "output"), f"{entry.output!r} names {len(match)} outputs: give the file name"))
            continue
        name, _preset, fmt, layout = match[0]
        refusal = check_format(kind, fmt, layout)
        if refusal:
            found.append(((*where, "output"), f"{name}: {refusal}"))
            continue
        specs.append(PublishSpec(entry, kind, name, ref))
    return tuple(specs)


def to_json(spec: PublishSpec) -> dict[str, Any]:
    return {"name": spec.name, "kind": spec.kind, "output": spec.output}
