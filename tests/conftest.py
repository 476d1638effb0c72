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


# Longest first (measured: docs/decisions.md, session 9), so the last minutes of the run are short
# tests on both workers rather than one long one on one worker while the other idles.
# `make test` passes --no-loadscope-reorder, so pytest-xdist hands out work in this order instead of
# sorting its groups by their number of tests.
LONGEST_FIRST = (
    "tests/test_arch.py::test_arm64_",  # cold: arm64 bootstrap under qemu-user, customize, AAVMF boot
    "tests/test_sysprep_guest.py::",    # one group: eleven appliance runs in its module fixture
    "tests/test_boot.py::",             # six TCG boots
    "tests/test_e2e.py::",              # the example built and booted under SeaBIOS and OVMF
    "tests/test_arch.py::",             # two bootstraps, one Secure Boot boot
)


def _rank(item: pytest.Item) -> int:
    nodeid = item.nodeid.partition("@")[0]  # pytest-xdist appends "@GROUP" to a grouped test's id
    return next((i for i, prefix in enumerate(LONGEST_FIRST) if nodeid.startswith(prefix)), len(LONGEST_FIRST))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Reorder the collection: :data:`LONGEST_FIRST`, then everything else as collected."""
    items.sort(key=_rank)  # stable: the order within each rank stays the collection's
