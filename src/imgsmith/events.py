"""What a build tells its caller while it runs: typed events, one sink.

The pipeline emits these and knows nothing of terminals; the CLI renders them (the
rich live view, or timestamped plain lines), tests record them. Structure travels
in the fields (a layer's index, count, name, whether it was cached), so no renderer
parses text back. ``str()`` of a stage event is the plain line CI logs show.

Nothing here may carry a secret, with one exception made on purpose: a
:class:`Notice` holds text the user must see exactly once (a generated root
password), which renderers print on stdout (stderr with ``--json``) and never log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Event", "Message", "Notice", "Progress", "Sink", "StageFinished", "StageKind", "StageStarted", "Warn",
           "discard"]


class StageKind(StrEnum):
    SOURCE = "source"
    PULL = "pull"
    LAYER = "layer"
    SYSPREP = "sysprep"
    OUTPUTS = "outputs"
    CHECKS = "checks"
    MANIFEST = "manifest"
    BOOT = "boot"
    PUBLISH = "publish"


_TITLES = {StageKind.SOURCE: "source", StageKind.PULL: "pull", StageKind.SYSPREP: "sysprep",
           StageKind.OUTPUTS: "outputs",
           StageKind.CHECKS: "checks", StageKind.MANIFEST: "manifest", StageKind.BOOT: "boot test",
           StageKind.PUBLISH: "publish"}


@dataclass(frozen=True)
class StageStarted:
    """A stage begins. Layers carry ``index``/``count``/``name``; ``cached`` means it is already done."""

    kind: StageKind
    detail: str = ""
    index: int | None = None
    count: int | None = None
    name: str = ""
    cached: bool = False

    @property
    def title(self) -> str:
        if self.kind is StageKind.LAYER:
            return f"layer {self.index}/{self.count} {self.name}"
        return _TITLES[self.kind]

    def __str__(self) -> str:
        return f"{self.title}: {self.detail}" if self.detail else self.title


@dataclass(frozen=True)
class StageFinished:
    """The stage that started last is over (``seconds`` of wall time); ``summary`` replaces its detail."""

    kind: StageKind
    seconds: float
    summary: str | None = None


@dataclass(frozen=True)
class Progress:
    """Progress of one piece of work: a download/verify phase of the source, or one output's conversion."""

    label: str
    pct: float
    done: int | None = None  # bytes, when counted
    total: int | None = None


@dataclass(frozen=True)
class Message:
    """News within the running stage (the step being applied, the boot stage reached); shown with -v."""

    text: str


@dataclass(frozen=True)
class Warn:
    """Something the user should know even with -q."""

    text: str


@dataclass(frozen=True)
class Notice:
    """Output the user asked for and must see once, whatever the verbosity (a generated password)."""

    text: str


Event = StageStarted | StageFinished | Progress | Message | Warn | Notice
Sink = Callable[[Event], None]


def discard(_event: Event) -> None:
    """The default sink: a library caller that does not listen."""
