"""The manifest's publish record as proof that an unchanged image is already at its destination.

A republish that asks the service costs Python, the SDK (boto3, openstacksdk: 0.3-0.5 s of
imports each) and a round trip; the issue accepts "a record in the manifest" as the proof
instead. The record of a publication carries two keys, and a republish that finds either one
matching says "already published" without importing an SDK or sending a request
(``--verify`` asks the destination anyway):

* ``fingerprint``: the destination spec as resolved (kind, output, every key of the entry:
  endpoint, region, bucket, key, image name, properties, visibility, tags...), the resolved
  names (``{date}`` included), the artifact's sha256, format, firmware and guest facts (what
  the properties come from) and the environment variables that choose the cloud, account or
  region (``OS_CLOUD``, ``AWS_PROFILE``...: their values hashed, never stored). Another
  image name, bucket or endpoint gives another fingerprint, so the record is not taken for it.
* ``quick``: the same judgement made without loading the definition (pydantic and the
  operations registry cost most of a republish's start-up): the sha256 of the definition's
  text and overrides (the manifest's "definition hash"), the destination's name, the same
  artifact and environment, today's date when a name uses ``{date}``, and imgsmith's version.
  An identical definition text read by the same imgsmith resolves to the identical entry, so a
  matching ``quick`` implies a matching ``fingerprint``; any edit of the file, or an upgrade
  (whose defaults may resolve the same text differently), falls back to the fingerprint.

This module imports nothing heavy: it runs before the definition is loaded.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..errors import UsageError
from ..manifest import MANIFEST, read_manifest

if TYPE_CHECKING:
    from .base import Action

__all__ = ["ENV_SELECTORS", "Outcome", "definition_digest", "env_digest", "locate", "quick_key", "quick_records",
           "recorded", "reported", "today"]

# The variables that choose where a destination's SDK sends (the cloud, the account, the region,
# the endpoint) without appearing in the definition. Credentials are not among them: a secret key
# does not choose a destination, and would not belong in a hash kept in a manifest anyway.
ENV_SELECTORS: dict[str, tuple[str, ...]] = {
    "glance": ("OS_CLOUD", "OS_CLIENT_CONFIG_FILE", "OS_AUTH_URL", "OS_REGION_NAME", "OS_PROJECT_NAME",
               "OS_PROJECT_ID", "OS_PROJECT_DOMAIN_NAME", "OS_PROJECT_DOMAIN_ID", "OS_INTERFACE"),
    "s3": ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
           "AWS_ENDPOINT_URL_S3"),
    "aws": ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_EC2"),
    "aliyun": ("ALIBABA_CLOUD_PROFILE", "ALICLOUD_PROFILE"),
    "tencent": ("TENCENTCLOUD_REGION",),
    "oci": (),
}
# Record keys that are bookkeeping, not what the destination reported.
BOOKKEEPING = ("kind", "output", "sha256", "published_at", "checked_at", "fingerprint", "quick", "definition_sha256",
               "destinations", "dated")


def definition_digest(text: str, chosen: Sequence[str]) -> str:
    """The manifest's "definition hash": the file's text plus the overrides that chose the variant."""
    return hashlib.sha256(text.encode() + json.dumps(list(chosen)).encode()).hexdigest()


def env_digest(kind: str, environ: dict[str, str] | None = None) -> str:
    """A digest of the variables that choose *kind*'s destination (empty ones count as unset)."""
    env = os.environ if environ is None else environ
    chosen = {k: env[k] for k in ENV_SELECTORS.get(kind, ()) if env.get(k)}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:32]


def today() -> str:
    """``{date}``'s value (YYYYMMDD, UTC), as publish/base.py's image_name() resolves it."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")


def quick_key(*, definition: str, name: str, kind: str, output: str, sha256: str, dated: bool,
              environ: dict[str, str] | None = None) -> str:
    parts = {"definition": definition, "name": name, "kind": kind, "output": output, "sha256": sha256,
             "env": env_digest(kind, environ), "date": today() if dated else "", "imgsmith": __version__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _output_unchanged(out_dir: Path, manifest: dict[str, Any], output: str, sha256: str) -> bool:
    """The output is the manifest's, with this sha256, not refused, and its file as the build left it."""
    if any(r.get("path") == output for r in manifest.get("refused") or []):
        return False
    entry = next((o for o in manifest.get("outputs") or [] if o.get("path") == output), None)
    if entry is None or entry.get("sha256") != sha256 or (entry.get("checks") or {}).get("errors"):
        return False
    try:
        st = (out_dir / output).stat()
    except OSError:
        return False
    return bool(st.st_size == entry.get("file_size") and st.st_mtime_ns == entry.get("mtime_ns"))


def _made_under(manifest: dict[str, Any], definition: Path) -> tuple[str, dict[str, dict[str, Any]]]:
    """The definition's hash now, and the manifest's records made under that same hash."""
    published = manifest.get("published")
    if not isinstance(published, dict) or not published:
        return "", {}
    try:
        text = definition.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return "", {}  # the slow path reports it
    digest = definition_digest(text, (manifest.get("definition") or {}).get("overrides") or [])
    return digest, {n: r for n, r in published.items() if isinstance(r, dict) and r.get("definition_sha256") == digest}


def quick_records(out_dir: Path, manifest: dict[str, Any], definition: Path, only: Sequence[str] | None,
                  ) -> dict[str, dict[str, Any]] | None:
    """The records proving every selected destination already has its image, or None (load the definition).

    The selection without ``--to`` is the definition's whole list of destinations, which each
    record keeps (``destinations``) with the definition hash it was made under.
    """
    digest, records = _made_under(manifest, definition)
    names = list(only) if only else list(next(iter(records.values())).get("destinations") or []) if records else []
    if not names or any(n not in records for n in names):
        return None
    for n in names:
        r = records[n]
        kind, output, sha256 = str(r.get("kind")), str(r.get("output")), str(r.get("sha256"))
        if not _output_unchanged(out_dir, manifest, output, sha256) or r.get("quick") != quick_key(
                definition=digest, name=n, kind=kind, output=output, sha256=sha256, dated=bool(r.get("dated"))):
            return None
    return {n: records[n] for n in names}


def reported(record: dict[str, Any]) -> dict[str, Any]:
    """What the destination reported (ids, URLs, status), without the record's bookkeeping."""
    return {k: v for k, v in record.items() if k not in BOOKKEEPING}


@dataclass
class Outcome:
    """What publishing one destination did (or, dry run, would do): the CLI prints it, --json gives it whole."""

    name: str
    kind: str
    output: str
    status: str  # published | unchanged | planned
    actions: list[Action] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    sent_bytes: int = 0
    found_by: str = ""  # unchanged: "record" (the manifest's, nothing asked) or "destination" (it was asked)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "output": self.output, "status": self.status,
                "actions": [a.to_json() for a in self.actions], "record": self.record,
                "seconds": round(self.seconds, 3), "sent_bytes": self.sent_bytes,
                **({"found_by": self.found_by} if self.found_by else {})}


def recorded(records: dict[str, dict[str, Any]]) -> list[Outcome]:
    """Outcomes for destinations the manifest's records prove published: nothing asked, nothing sent."""
    return [Outcome(name, str(r.get("kind")), str(r.get("output")), "unchanged", record=reported(r),
                    found_by="record") for name, r in records.items()]


def locate(target: Path) -> tuple[Path, dict[str, Any]]:
    """The build directory and its manifest, from ``DIR`` or ``DIR/manifest.json``."""
    out_dir = target.parent if target.name == MANIFEST or target.is_file() else target
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise UsageError(f"{out_dir / MANIFEST}: no build manifest here (run imgsmith build first)")
    return out_dir, manifest
