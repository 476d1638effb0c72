"""The one interface every destination implements: plan -> find -> upload -> register -> wait.

A destination is built from the resolved ``publish:`` entry (spec.py) and the build's
:class:`Artifact` (one output, with the manifest's facts about the guest). ``plan()`` lists
every request it would send — API action, parameters, object names — and is what
``--dry-run`` prints; it needs no credentials and sends nothing. ``find()`` asks the
destination whether an image with this output's digest is already there, so a republish
sends nothing. Secrets never enter an :class:`Action`, an event or a record.
"""

from __future__ import annotations

import datetime
import queue
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ImgsmithError
from ..events import Progress, Sink, discard

if TYPE_CHECKING:  # spec.py loads the definition model (pydantic): not needed to judge a record
    from .spec import PublishSpec

__all__ = ["Action", "Artifact", "Chunks", "Destination", "PublishError", "PublishOptions", "Reader", "Record",
           "image_name", "mask"]


class PublishError(ImgsmithError):
    """A destination refused or failed: names the destination and the service's own words."""


@dataclass(frozen=True)
class Artifact:
    """One build output and what the manifest knows of it and of its guest."""

    path: Path
    format: str
    layout: str
    preset: str | None
    virtual_size: int
    file_size: int
    sha256: str
    definition: str  # the definition's name
    guest: dict[str, Any] = field(default_factory=dict)  # distro, version, arch, kernels, packages
    checks: dict[str, Any] | None = None  # the build's cloud check of this output, when it had one
    firmware: str = "bios"  # bios | uefi | hybrid (publish/firmware.py)

    @property
    def name(self) -> str:
        return self.path.name

    def has_package(self, name: str) -> bool:
        for p in self.guest.get("packages") or ():
            pname = p.get("name") if isinstance(p, dict) else str(p).split("=")[0].split(" ")[0]
            if pname == name:
                return True
        return False


@dataclass(frozen=True)
class Action:
    """One request: the API action as the service names it, and exactly what goes with it (no secret)."""

    api: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"api": self.api, "params": self.params}


@dataclass(frozen=True)
class PublishOptions:
    """How uploads run: object-store part size and parallel parts, and where resumable state is kept."""

    part_size: int = 8 << 20  # the AWS CLI's and boto3's defaults: bench/publish measured them fastest
    jobs: int = 10
    state_dir: Path | None = None  # default: .imgsmith-publish/ in the build directory


Record = dict[str, Any]  # what the manifest records of a publication (ids, URLs, status): never a secret


class Reader:
    """A file read in chunks for an upload: reports progress and hashes what it sends on the way.

    The digest is of the bytes actually sent, which is what the destination's own checksum
    is compared with. ``__len__`` lets HTTP clients send a Content-Length.
    """

    def __init__(self, path: Path, *, algo: str = "sha512", progress: Callable[[int, int], None] | None = None,
                 offset: int = 0, length: int | None = None, background: bool = False) -> None:
        import hashlib
        self._f = path.open("rb")
        self._f.seek(offset)
        self.total = (path.stat().st_size - offset) if length is None else length
        self.sent = 0
        self.hash = hashlib.new(algo)
        self._progress = progress
        # background: the digest is computed by a second thread while the first one sends (hashlib
        # releases the GIL on large buffers), so a single-stream upload is not held up by sha512.
        self._queue: queue.Queue[bytes | None] | None = queue.Queue(16) if background else None
        self._worker: threading.Thread | None = None
        if self._queue is not None:
            self._worker = threading.Thread(target=self._digest, args=(self._queue,), daemon=True)
            self._worker.start()

    def _digest(self, chunks: queue.Queue[bytes | None]) -> None:
        while (chunk := chunks.get()) is not None:
            self.hash.update(chunk)

    def __len__(self) -> int:
        return self.total

    def read(self, size: int = -1) -> bytes:
        left = self.total - self.sent
        want = left if size is None or size < 0 else min(size, left)
        data = self._f.read(want) if want > 0 else b""
        self.sent += len(data)
        if self._queue is not None and data:
            self._queue.put(data)
        else:
            self.hash.update(data)
        if self._progress is not None and data:
            self._progress(self.sent, self.total)
        return data

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(1 << 20):
            yield chunk

    def close(self) -> None:
        """Closes the file; with a background digest, waits for it (``hash`` is complete after this)."""
        self._f.close()
        if self._queue is not None and self._worker is not None:
            self._queue.put(None)
            self._worker.join()
            self._queue = None


class Chunks:
    """A Reader as an iterable of 1 MiB chunks with a length: HTTP clients send it with a Content-Length
    in 1 MiB writes, where a file-like body is read in their small block size (8-16 KiB)."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.reader)


def progress_events(emit: Sink, label: str) -> Callable[[int, int], None]:
    """Upload progress as Progress events, at most one per percent (a 10 GB upload is not 10k events)."""
    last = [-1]

    def report(done: int, total: int) -> None:
        pct = 100.0 * done / total if total else 100.0
        if int(pct) != last[0]:
            last[0] = int(pct)
            emit(Progress(label, pct, done, total))
    return report


def image_name(template: str, artifact: Artifact, today: datetime.date | None = None) -> str:
    """``{name}``, ``{date}`` (YYYYMMDD, UTC) and ``{sha256:N}`` in *template*; anything else is refused."""
    day = today or datetime.datetime.now(datetime.UTC).date()

    def sub(m: re.Match[str]) -> str:
        key, _, arg = m[1].partition(":")
        if key == "name" and not arg:
            return artifact.definition
        if key == "date" and not arg:
            return day.strftime("%Y%m%d")
        if key == "sha256":
            return artifact.sha256[: int(arg or 64)]
        raise PublishError(f"image-name {template!r}: unknown field {{{m[1]}}} (use {{name}}, {{date}}, {{sha256:12}})")
    return re.sub(r"\{([^{}]*)\}", sub, template)


def mask(value: str) -> str:
    """An identifier shown only by its first four characters (an access key id; never a secret key)."""
    return value[:4] + "…" if value else ""


class Destination(ABC):
    """One kind of destination; subclasses are registered by ``kind`` (publish/__init__.py)."""

    kind: ClassVar[str]

    def __init__(self, spec: PublishSpec, artifact: Artifact, emit: Sink = discard,
                 options: PublishOptions = PublishOptions()) -> None:
        self.spec = spec
        self.artifact = artifact
        self.emit = emit
        self.options = options
        self.sent = 0  # bytes this run sent

    @property
    def entry(self) -> Any:
        return self.spec.entry

    @property
    def dated(self) -> bool:
        """Whether a name this destination sends uses ``{date}`` (a record holds only for its day)."""
        return any("{date}" in (t or "") for t in (self.entry.image_name, self.entry.key))

    def fingerprint(self) -> str:
        """The destination spec as resolved, and what it sends: equal fingerprints, the same publication.

        publish/record.py says what a matching record proves; the entry is taken whole (every key
        the definition model has), so a new key is in the fingerprint without anyone adding it here.
        """
        import hashlib
        import json

        from .record import env_digest
        a, e = self.artifact, self.entry
        doc = {"kind": self.kind, "output": self.spec.output, "entry": e.model_dump(mode="json", by_alias=True),
               "oci": str(self.spec.oci) if self.spec.oci else None,
               "names": [image_name(e.image_name, a), image_name(e.key, a) if e.key else None],
               "sha256": a.sha256, "format": a.format, "layout": a.layout, "virtual_size": a.virtual_size,
               "firmware": a.firmware, "guest": a.guest, "env": env_digest(self.kind)}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()

    @abstractmethod
    def plan(self) -> list[Action]:
        """Every request a publish sends, in order, without sending any (no credentials needed)."""

    @abstractmethod
    def connect(self) -> None:
        """Read the credentials and reach the service: missing credentials or a closed port fail here."""

    @abstractmethod
    def find(self, previous: Record | None) -> Record | None:
        """The image already at the destination with this output's digest, or None (*previous*: the manifest's)."""

    @abstractmethod
    def upload(self) -> None:
        """Send the bytes (resuming what an interrupted run left, where the service allows)."""

    @abstractmethod
    def register(self) -> None:
        """Make the uploaded bytes an image (a no-op where the upload already is one)."""

    @abstractmethod
    def wait(self, timeout: float) -> Record:
        """Until the destination says the image is ready; the record the manifest keeps."""
