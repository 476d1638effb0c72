"""Publishing a build: every destination checked and connected first, then each one sent.

Order, for each selected ``publish:`` entry: the output is in the manifest, unchanged since the
build, not refused by its cloud's check, of a format the destination takes (all entries
judged before anything is sent) -> the manifest's record of this same publication
(publish/record.py: same spec fingerprint; then nothing is imported or sent, unless
``verify``) -> credentials read and the service reached (all remaining entries, again before
anything is sent) -> ``find`` (already there: nothing is sent) -> upload -> register -> wait
-> the manifest records it (atomic rewrite).
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..events import Message, Sink, StageFinished, StageKind, StageStarted, discard
from ..manifest import MANIFEST, read_manifest, write_manifest
from .aliyun import AliyunDestination
from .aws import AwsDestination
from .base import Artifact, Destination, PublishError, PublishOptions, Record
from .glance import GlanceDestination
from .oci import OciDestination
from .record import Outcome, locate, recorded
from .s3 import S3Destination
from .spec import PublishSpec, check_format
from .tencent import TencentDestination

__all__ = ["DESTINATIONS", "Outcome", "Provenance", "artifact_for", "locate", "publish", "recorded"]

DESTINATIONS: dict[str, type[Destination]] = {"glance": GlanceDestination, "s3": S3Destination,
                                              "oci": OciDestination, "aws": AwsDestination,
                                              "aliyun": AliyunDestination, "tencent": TencentDestination}
# Which cloud's `imgsmith check` judges an output for a destination kind.
_CHECKED_AS = {"glance": "openstack", "aws": "aws", "aliyun": "aliyun", "tencent": "tencent"}


def artifact_for(out_dir: Path, manifest: dict[str, Any], spec: PublishSpec) -> Artifact:
    """The output *spec* takes, checked against the manifest and the file on disk; UsageError says why not."""
    refused = {r.get("path"): r for r in manifest.get("refused") or []}
    if spec.output in refused:
        checks = refused[spec.output].get("checks") or {}
        first = (checks.get("errors") or [{}])[0]
        raise UsageError(f"{spec.name}: {spec.output} was refused by the build's check for {checks.get('cloud')}: "
                         f"{first.get('rule')}: {first.get('found')}; nothing to publish")
    entry = next((o for o in manifest.get("outputs") or [] if o.get("path") == spec.output), None)
    if entry is None:
        raise UsageError(f"{spec.name}: {spec.output} is not in {out_dir / MANIFEST} (build it first)")
    checks = entry.get("checks") or {}
    cloud = _CHECKED_AS.get(spec.kind)
    if cloud and checks.get("cloud") == cloud and checks.get("errors"):
        e = checks["errors"][0]
        raise UsageError(f"{spec.name}: {spec.output} fails the {cloud} check: {e.get('rule')}: {e.get('found')}")
    refusal = check_format(spec.kind, str(entry.get("format")), str(entry.get("layout", "plain")))
    if refusal:
        raise UsageError(f"{spec.name}: {spec.output}: {refusal}")
    sub = (entry.get("options") or {}).get("subformat", "monolithicSparse")
    if spec.kind == "aws" and entry.get("format") == "vmdk" and sub != "streamOptimized":
        # VM Import reads only stream-optimized VMDKs (the "aws" preset's): refused here, not after the upload.
        raise UsageError(f"{spec.name}: {spec.output}: AWS imports a streamOptimized VMDK, not {sub} "
                         "(use the aws preset, or a raw output)")
    path = out_dir / spec.output
    try:
        st = path.stat()
    except OSError:
        raise UsageError(f"{spec.name}: {path}: missing (rebuild it)") from None
    if st.st_size != entry.get("file_size") or ("mtime_ns" in entry and st.st_mtime_ns != entry["mtime_ns"]):
        raise UsageError(f"{spec.name}: {path} changed since the build (its size or time is not the manifest's): "
                         "rebuild it")
    from .firmware import firmware_for
    return Artifact(path, str(entry["format"]), str(entry.get("layout", "plain")), entry.get("preset"),
                    int(entry["virtual_size"]), int(entry["file_size"]), str(entry["sha256"]),
                    str(manifest.get("name", "image")), manifest.get("guest") or {}, checks or None,
                    firmware_for(manifest, path, str(entry["format"])))


@dataclass(frozen=True)
class Provenance:
    """What a record is made under, for publish/record.py's quick check: the definition hash, all its names."""

    definition_sha256: str = ""
    destinations: tuple[str, ...] = ()


def publish(out_dir: Path, manifest: dict[str, Any], specs: tuple[PublishSpec, ...], *, only: list[str] | None = None,
            dry_run: bool = False, verify: bool = False, timeout: float = 3600, emit: Sink = discard,
            options: PublishOptions | None = None, provenance: Provenance = Provenance()) -> list[Outcome]:
    """Publish the selected destinations (see the module docstring); the manifest is updated after each."""
    chosen = _select(specs, only)
    opts = options or PublishOptions(state_dir=out_dir / ".imgsmith-publish")
    if opts.state_dir is None:
        import dataclasses
        opts = dataclasses.replace(opts, state_dir=out_dir / ".imgsmith-publish")
    dests = [DESTINATIONS[s.kind](s, artifact_for(out_dir, manifest, s), emit, opts) for s in chosen]
    published = manifest.get("published") or {}
    known: dict[str, Outcome] = {}
    if not verify:
        for d in dests:
            prev = published.get(d.spec.name)
            if isinstance(prev, dict) and prev.get("sha256") == d.artifact.sha256 and \
                    prev.get("fingerprint") == d.fingerprint():
                known[d.spec.name] = recorded({d.spec.name: prev})[0]
    if dry_run:
        return [known.get(d.spec.name) or Outcome(d.spec.name, d.kind, d.spec.output, "planned", d.plan())
                for d in dests]
    for d in dests:
        if d.spec.name not in known:
            d.connect()
    outcomes = []
    for d in dests:
        if d.spec.name in known:
            outcomes.append(known[d.spec.name])
            emit(Message(f"{d.spec.name}: already published ({_where(outcomes[-1].record)}, the manifest's record):"
                         " nothing sent"))
        else:
            outcomes.append(_one(d, manifest, timeout, emit))
        _record(out_dir, outcomes[-1], d, provenance)
    return outcomes


def _select(specs: tuple[PublishSpec, ...], only: list[str] | None) -> list[PublishSpec]:
    if not specs:
        raise UsageError("the definition has no publish: section (see docs/publish.md)")
    if not only:
        return list(specs)
    names = {s.name: s for s in specs}
    unknown = [n for n in only if n not in names]
    if unknown:
        raise UsageError(f"unknown destination {unknown[0]!r} (the definition's: {', '.join(names)})")
    return [names[n] for n in only]


def _one(d: Destination, manifest: dict[str, Any], timeout: float, emit: Sink) -> Outcome:
    start = time.monotonic()
    name = d.spec.name
    emit(StageStarted(StageKind.PUBLISH, f"{name}: {d.spec.output} -> {d.kind}"))
    previous = (manifest.get("published") or {}).get(name)
    found = d.find(previous if isinstance(previous, dict) else None)
    if found is not None:
        emit(Message(f"{name}: already there ({_where(found)}): nothing sent"))
        emit(StageFinished(StageKind.PUBLISH, time.monotonic() - start, "unchanged"))
        return Outcome(name, d.kind, d.spec.output, "unchanged", record=found, seconds=time.monotonic() - start,
                       found_by="destination")
    d.upload()
    d.register()
    record = d.wait(timeout)
    emit(StageFinished(StageKind.PUBLISH, time.monotonic() - start, _where(record)))
    return Outcome(name, d.kind, d.spec.output, "published", record=record, seconds=time.monotonic() - start,
                   sent_bytes=d.sent)


def _where(record: Record) -> str:
    for key in ("image_id", "url", "reference"):
        if record.get(key):
            return f"{key.replace('_', ' ')} {record[key]}"
    return "done"


def _record(out_dir: Path, outcome: Outcome, d: Destination, provenance: Provenance) -> None:
    """The manifest's ``published.NAME``: re-read and rewritten atomically (another publish may have run).

    ``checked_at`` is when the destination was last asked: a record taken as proof keeps it,
    and is rewritten only when its keys for the quick check are not the current ones.
    """
    from .record import quick_key
    data = read_manifest(out_dir)
    if data is None:
        raise PublishError(f"{out_dir / MANIFEST}: vanished while publishing")
    published = data.setdefault("published", {})
    at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    old = published.get(outcome.name) or {}
    a = d.artifact
    keys: dict[str, Any] = {"fingerprint": d.fingerprint(), "dated": d.dated}
    if provenance.definition_sha256:
        keys.update(quick=quick_key(definition=provenance.definition_sha256, name=outcome.name, kind=d.kind,
                                    output=outcome.output, sha256=a.sha256, dated=d.dated),
                    definition_sha256=provenance.definition_sha256, destinations=list(provenance.destinations))
    if outcome.found_by == "record":
        if all(old.get(k) == v for k, v in keys.items()):
            return
        published[outcome.name] = {**old, **keys}
    else:
        published[outcome.name] = {"kind": outcome.kind, "output": outcome.output, "sha256": a.sha256,
                                   **outcome.record, "status": outcome.record.get("status", outcome.status),
                                   "published_at": old.get("published_at", at) if outcome.status == "unchanged"
                                   else at, "checked_at": at, **keys}
    write_manifest(out_dir, data)
