"""Shared pytest fixtures. The phony guest images themselves are built in tests/guests.py."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from guests import DISTROS, fresh_copy, guest_image


@pytest.fixture(scope="session")
def guest_images() -> dict[str, Path]:
    """Every phony guest (distro -> cached qcow2), built or taken from the cache once per session.

    Read-only by convention: a test that modifies a guest takes a ``fresh_guest`` copy.
    """
    return {distro: guest_image(distro) for distro in DISTROS}


@pytest.fixture
def fresh_guest(tmp_path: Path) -> Callable[..., Path]:
    """Factory for private writable copies in tmp_path: ``fresh_guest("centos7", fmt="raw", extra={...})``."""

    def make(distro: str, *, fmt: str = "qcow2", extra: Mapping[str, bytes | str] | None = None) -> Path:
        return fresh_copy(distro, tmp_path, fmt=fmt, extra=extra)

    return make


@pytest.fixture(params=["appliance", "chroot"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each guest test runs on both backends: their results on the guest must be the same."""
    return str(request.param)


FIRST = ("test_arch.py::test_arm64_customized_through_chroot_boots_under_aavmf",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Start the longest test first: the cold arm64 bootstrap + boot (≈ 11 CPU-minutes under qemu-user).

    pytest-xdist hands out tests in collection order, so a long test collected last would run
    alone at the end on one core while the other idles; first, it overlaps the rest of the suite.
    (pytest-xdist may have appended "@GROUP" to a grouped test's node id: compare before it.)
    """
    items.sort(key=lambda item: not item.nodeid.partition("@")[0].endswith(FIRST))  # stable otherwise
