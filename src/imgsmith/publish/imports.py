"""What the Alibaba Cloud and Tencent Cloud imports share: the guest facts they need, and the poll.

Both upload to the region's object store with publish/s3.py (multipart, resumable, ETag
checks), tag the imported image with the output's sha256 so a republish finds it with one
signed read, and poll the image until the cloud says it is ready, failed, or the timeout
passed. Kept as functions, not a base class: the destinations stay one level below
S3Destination, as the AWS one is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .base import Artifact, PublishError

__all__ = ["TAG", "architecture", "boot_mode", "gib", "poll"]

TAG = "imgsmith-sha256"  # the image tag (key) whose value is the output's sha256


def architecture(name: str, cloud: str, artifact: Artifact, table: dict[str, str]) -> str:
    """The cloud's name for the manifest's guest architecture; refused (before anything is sent) if it has none."""
    arch = str(artifact.guest.get("arch") or "")
    if arch not in table:
        known = ", ".join(sorted(set(table.values())))
        raise PublishError(f"{name}: {cloud}: the manifest's guest architecture {arch or '(none)'!r} is not one "
                           f"{cloud} imports ({known}): build with layers so the guest is inspected")
    return table[arch]


def boot_mode(name: str, cloud: str, artifact: Artifact, arch: str, table: dict[str, str]) -> str:
    """The cloud's boot-mode value for the output's firmware (bios | uefi | hybrid, publish/firmware.py).

    Every cloud boots arm64 with UEFI only: an arm64 output without an ESP is refused before
    anything is sent, and an arm64 one is always imported as UEFI.
    """
    if arch in ("arm64", "arm_64", "aarch64"):
        if artifact.firmware == "bios":
            raise PublishError(f"{name}: {cloud}: an arm64 image boots with UEFI only, and this output's "
                               "partition table has no EFI system partition")
        return table["uefi"]
    return table[artifact.firmware]


def gib(size: int) -> int:
    """Bytes as whole GiB, rounded up (the import's disk size: never smaller than the image)."""
    return max(1, -(-size // (1 << 30)))


def poll(what: str, timeout: float, check: Callable[[], tuple[str, str]],
         sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
    """Call *check* (-> ("ready" | "running" | "failed: WHY", progress)) with a growing pause until ready.

    A failure raises with the cloud's own words; still running at *timeout* raises with the
    last progress the cloud gave.
    """
    deadline = clock() + timeout
    pause = 1.0
    while True:
        state, progress = check()
        if state == "ready":
            return
        if state.startswith("failed"):
            raise PublishError(f"{what} {state}")
        if clock() + pause > deadline:
            raise PublishError(f"{what} still {state}{f' ({progress})' if progress else ''} after {timeout:.0f} s")
        sleep(pause)
        pause = min(pause * 2, 30.0)


def first(items: Any) -> dict[str, Any]:
    """The first element of a list the API returns, or {}."""
    return dict(items[0]) if isinstance(items, list) and items else {}
