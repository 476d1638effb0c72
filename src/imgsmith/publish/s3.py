"""S3 and S3-compatible object stores (Alibaba OSS, Tencent COS, MinIO) through boto3.

Credentials come from boto3's standard chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, ``~/.aws/credentials``, instance roles); they are never logged, recorded or put
on a command line. A file at least one part long goes up as a multipart upload, parts in
parallel. Every part carries the CRC32 of its bytes as a flexible checksum
(``x-amz-checksum-crc32``, as the AWS CLI sends it), which the store checks on receipt and
refuses on a mismatch (BadDigest), and which it returns: a store that returns none (an older
S3-compatible one) has the part's ETag checked against the MD5 of the bytes sent instead.
CRC32 costs a fifth of MD5's CPU (docs/decisions.md has the figures). The upload id and the
parts done are kept in a small state file in the build directory (``.imgsmith-publish/``),
rewritten atomically after every part, so a run that is killed resumes where it stopped:
the parts the store already lists with the same ETag are not sent again. The object carries
``x-amz-meta-imgsmith-sha256``: a republish finds it with one HEAD and sends nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .base import Action, Destination, PublishError, Record, image_name, mask, progress_events

__all__ = ["S3Destination"]

META = "imgsmith-sha256"
MAX_PARTS = 10_000  # S3's (and OSS's, COS's) limit on the parts of one multipart upload
CHECKSUM = "CRC32"  # the flexible checksum every part carries (and the state file records)


def crc32(data: bytes) -> str:
    """The CRC32 of *data* as S3 writes it: big-endian, base64."""
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def composite_crc32(parts: list[str]) -> str:
    """A multipart object's CRC32 as S3 reports it: the CRC32 of the parts' CRC32s, then ``-N``."""
    return f"{crc32(b''.join(base64.b64decode(c) for c in parts))}-{len(parts)}"


def _ext(name: str) -> str:
    for ext in (".tar.gz", ".qcow2", ".vmdk", ".vhdx", ".vhd", ".raw", ".img", ".vdi", ".ova"):
        if name.endswith(ext):
            return ext
    return os.path.splitext(name)[1]


class S3Destination(Destination):
    kind = "s3"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client: Any = None
        self.etag = ""

    @property
    def key(self) -> str:
        e = self.entry
        if e.key:
            return image_name(e.key, self.artifact)
        return image_name(e.image_name, self.artifact) + _ext(self.artifact.name)

    @property
    def part_size(self) -> int:
        """--part-size, grown (in whole MiB) when the file would need more than S3's 10,000 parts."""
        least = -(-self.artifact.file_size // MAX_PARTS)
        return max(self.options.part_size, -(-least // (1 << 20)) << 20)

    @property
    def parts(self) -> int:
        return max(1, -(-self.artifact.file_size // self.part_size))

    @property
    def multipart(self) -> bool:
        return self.artifact.file_size > self.part_size

    def plan(self) -> list[Action]:
        e, a = self.entry, self.artifact
        where = {"Bucket": e.bucket, "Key": self.key}
        meta = {"Metadata": {META: a.sha256}}
        actions = [Action("s3:HeadBucket", {"Bucket": e.bucket, "region": e.region, "endpoint": self.store_endpoint}),
                   Action("s3:HeadObject", where)]
        if not self.multipart:
            return [*actions, Action("s3:PutObject", {**where, **meta, "file": a.name, "bytes": a.file_size,
                                                      "ChecksumCRC32": "(the file's)"})]
        return [*actions, Action("s3:CreateMultipartUpload", {**where, **meta, "ChecksumAlgorithm": CHECKSUM}),
                Action("s3:UploadPart", {**where, "parts": self.parts, "part_size": self.part_size,
                                         "parallel": self.options.jobs, "file": a.name, "bytes": a.file_size,
                                         "ChecksumCRC32": "(each part's)"}),
                Action("s3:CompleteMultipartUpload", {**where, "parts": self.parts})]

    # --- the service -------------------------------------------------------------------------------

    def connect(self) -> None:
        import boto3
        from botocore.config import Config
        e = self.entry
        session = boto3.session.Session(region_name=e.region)
        keys = self.store_keys()
        if keys is None:
            creds = session.get_credentials()
            if creds is None:
                raise PublishError(f"{self.spec.name}: no S3 credentials: set AWS_ACCESS_KEY_ID and "
                                   "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or write ~/.aws/credentials")
            self.credentials = f"{creds.method} (access key {mask(creds.access_key)})"
            given: dict[str, str] = {}
        else:
            self.credentials = keys.describe()
            given = {"aws_access_key_id": keys.key_id, "aws_secret_access_key": keys.secret}
            if keys.token:
                given["aws_session_token"] = keys.token
        # "when_required": botocore adds no checksum of its own; every part carries ours (CRC32, computed
        # once from the bytes in memory). On https that checksum lets botocore skip SigV4's SHA-256 of
        # the body (UNSIGNED-PAYLOAD, as the AWS CLI does); on plain http it signs the body as well.
        # A given endpoint (MinIO, a test server) is addressed by path; a cloud's own one by virtual host.
        config = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=10,
                        request_checksum_calculation="when_required",
                        max_pool_connections=max(10, self.options.jobs),
                        s3={"addressing_style": "path"} if e.endpoint else
                        {"addressing_style": "virtual"} if self.store_endpoint else None)
        self.client = session.client("s3", endpoint_url=self.store_endpoint, config=config, **given)
        head = self._call("HeadBucket", Bucket=e.bucket)
        region = self.bucket_region(head.get("ResponseMetadata", {}).get("HTTPHeaders", {}))
        if e.region and region and region != e.region:
            raise PublishError(f"{self.spec.name}: bucket {e.bucket} is in {region}, not {e.region}: "
                               "the bucket must be in the region the image is for")

    @property
    def store_endpoint(self) -> str | None:
        """The object store's endpoint URL: the entry's, else boto3's own (AWS S3)."""
        return str(self.entry.endpoint) if self.entry.endpoint else None

    def store_keys(self) -> Any:
        """The object store's keys when they are the cloud's own (publish/credentials.py); None: boto3's chain."""
        return None

    def bucket_region(self, headers: dict[str, str]) -> str | None:
        """The bucket's region as HeadBucket reports it."""
        return headers.get("x-amz-bucket-region")

    def _call(self, op: str, **kw: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError
        method = getattr(self.client, "".join("_" + c.lower() if c.isupper() else c for c in op).lstrip("_"))
        try:
            return method(**kw)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            raise PublishError(f"{self.spec.name}: s3 {op}: {err.get('Code', '?')}: "
                               f"{err.get('Message') or exc}") from None
        except BotoCoreError as exc:
            raise PublishError(f"{self.spec.name}: s3 {op}: {exc}") from None

    def find(self, previous: Record | None) -> Record | None:
        from botocore.exceptions import ClientError
        try:
            head = self.client.head_object(Bucket=self.entry.bucket, Key=self.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise PublishError(f"{self.spec.name}: s3 HeadObject: {exc}") from None
        if head.get("Metadata", {}).get(META) != self.artifact.sha256 or \
                head.get("ContentLength") != self.artifact.file_size:
            return None
        self.etag = str(head.get("ETag", "")).strip('"')
        return self._record()

    # --- upload ------------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        assert self.options.state_dir is not None
        return self.options.state_dir / f"{self.spec.name}.json"

    def upload(self) -> None:
        a, e = self.artifact, self.entry
        report = progress_events(self.emit, f"{self.spec.name}: upload")
        if not self.multipart:
            body = _read(a.path, 0, a.file_size)
            crc = crc32(body)
            r = self._call("PutObject", Bucket=e.bucket, Key=self.key, Body=body, Metadata={META: a.sha256},
                           ChecksumAlgorithm=CHECKSUM, ChecksumCRC32=crc)
            self.sent = len(body)
            report(self.sent, a.file_size)
            self._check_part(r, body, crc, "PutObject")
            self.etag = str(r.get("ETag", "")).strip('"')
            return
        state = self._resume_or_start()
        self._upload_parts(state, report)
        numbers = sorted(state["parts"], key=int)
        parts = [{"PartNumber": int(n), "ETag": state["parts"][n], "ChecksumCRC32": state["crc"][n]} for n in numbers]
        r = self._call("CompleteMultipartUpload", Bucket=e.bucket, Key=self.key, UploadId=state["upload_id"],
                       MultipartUpload={"Parts": parts})
        # The store's own account of what it assembled: the ETag from the parts' ETags it returned, and
        # (when it reports one) the composite CRC32 from the parts' checksums it verified.
        digest = hashlib.md5(b"".join(bytes.fromhex(p["ETag"].strip('"')) for p in parts),
                             usedforsecurity=False).hexdigest()
        self._check_etag(str(r.get("ETag", "")), f"{digest}-{len(parts)}", "CompleteMultipartUpload")
        whole = r.get("ChecksumCRC32")
        if whole and whole != composite_crc32([p["ChecksumCRC32"] for p in parts]):
            raise PublishError(f"{self.spec.name}: s3 CompleteMultipartUpload: the store's CRC32 {whole} is not "
                               "the one of the parts sent")
        self.etag = str(r.get("ETag", "")).strip('"')
        self.state_path.unlink(missing_ok=True)

    def _check_part(self, r: dict[str, Any], body: bytes, crc: str, op: str) -> None:
        """The store accepted these bytes: its CRC32 is ours, or (a store without checksums) its ETag is their MD5."""
        theirs = r.get("ChecksumCRC32")
        if theirs is not None:
            if theirs != crc:
                raise PublishError(f"{self.spec.name}: s3 {op}: the store's CRC32 {theirs} is not the CRC32 of the "
                                   f"bytes sent ({crc})")
            return
        self._check_etag(str(r.get("ETag", "")), hashlib.md5(body, usedforsecurity=False).hexdigest(), op)

    def _check_etag(self, etag: str, want: str, op: str) -> None:
        if etag.strip('"') != want:
            raise PublishError(f"{self.spec.name}: s3 {op}: the store's ETag {etag} is not the MD5 of the bytes "
                               f"sent ({want})")

    def _resume_or_start(self) -> dict[str, Any]:
        """The state of an interrupted upload of these same bytes, checked with the store, or a new upload."""
        a, e = self.artifact, self.entry
        want = {"bucket": e.bucket, "key": self.key, "sha256": a.sha256, "part_size": self.part_size,
                "checksum": CHECKSUM}
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            state = None
        if isinstance(state, dict) and all(state.get(k) == v for k, v in want.items()):
            from botocore.exceptions import ClientError
            try:
                listed = self.client.list_parts(Bucket=e.bucket, Key=self.key, UploadId=state["upload_id"],
                                                MaxParts=10000)
            except ClientError:
                listed = None  # NoSuchUpload: it was aborted or expired; start again
            if listed is not None:
                there = {str(p["PartNumber"]): str(p["ETag"]).strip('"') for p in listed.get("Parts", [])}
                state["parts"] = {n: t for n, t in state.get("parts", {}).items()
                                  if there.get(n) == t and n in state.get("crc", {})}
                from ..events import Message
                self.emit(Message(f"{self.spec.name}: resuming upload {state['upload_id'][:16]}…: "
                                  f"{len(state['parts'])} of {self.parts} part(s) already there"))
                return state
        r = self._call("CreateMultipartUpload", Bucket=e.bucket, Key=self.key, Metadata={META: a.sha256},
                       ChecksumAlgorithm=CHECKSUM)
        state = {**want, "upload_id": r["UploadId"], "parts": {}, "crc": {}}
        self._save(state)
        return state

    def _save(self, state: dict[str, Any]) -> None:
        """Written after every part: atomic (temp file + rename) but not fsync'ed.

        A killed run finds it whole (the page cache survives a kill); after a power loss it may be
        stale or missing, which only means re-sending parts (the store is asked which it has).
        Two fsyncs per part, taken under the parts' lock, held every other part up on a busy disk.
        """
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        os.replace(tmp, self.state_path)

    def _upload_parts(self, state: dict[str, Any], report: Any) -> None:
        a, e = self.artifact, self.entry
        size, part = a.file_size, self.part_size
        todo = [n for n in range(1, self.parts + 1) if str(n) not in state["parts"]]
        lock = threading.Lock()
        done = [sum(min(part, size - (int(n) - 1) * part) for n in state["parts"])]
        report(done[0], size)

        def one(n: int) -> None:
            offset = (n - 1) * part
            length = min(part, size - offset)
            # A part is read whole (botocore re-reads a stream to sign it): at most jobs x part_size in memory.
            body = _read(a.path, offset, length)
            crc = crc32(body)
            r = self._call("UploadPart", Bucket=e.bucket, Key=self.key, UploadId=state["upload_id"],
                           PartNumber=n, Body=body, ChecksumAlgorithm=CHECKSUM, ChecksumCRC32=crc)
            self._check_part(r, body, crc, f"UploadPart {n}")
            with lock:
                state["crc"][str(n)] = crc
                state["parts"][str(n)] = str(r["ETag"]).strip('"')
                self._save(state)
                self.sent += length
                done[0] += length
                report(done[0], size)

        with ThreadPoolExecutor(max_workers=max(1, self.options.jobs)) as pool:
            for f in [pool.submit(one, n) for n in todo]:
                f.result()

    def register(self) -> None:
        """An object store has nothing to register: the object is the result."""

    def wait(self, timeout: float) -> Record:
        head = self._call("HeadObject", Bucket=self.entry.bucket, Key=self.key)
        if head.get("ContentLength") != self.artifact.file_size or head.get("Metadata", {}).get(META) != \
                self.artifact.sha256:
            raise PublishError(f"{self.spec.name}: s3: the stored object is {head.get('ContentLength')} bytes with "
                               f"sha256 {head.get('Metadata', {}).get(META)}, not what was sent")
        return self._record()

    def _record(self) -> Record:
        e = self.entry
        return {"url": f"s3://{e.bucket}/{self.key}", "bucket": e.bucket, "key": self.key, "region": e.region,
                "endpoint": self.store_endpoint, "etag": self.etag, "status": "uploaded"}


def _read(path: Path, offset: int, length: int) -> bytes:
    """*length* bytes of *path* from *offset*: one allocation, read into directly (a part is sent from memory)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.pread(fd, length, offset)
        while len(data) < length:  # one read returns at most 2 GiB on Linux
            more = os.pread(fd, length - len(data), offset + len(data))
            if not more:
                raise PublishError(f"{path}: shorter than the manifest says (rebuild it)")
            data += more
    finally:
        os.close(fd)
    return data
