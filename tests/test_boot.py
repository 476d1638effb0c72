"""Boot tests on real qemu: the bootstrapped Debian image boots and passes checks; a broken one fails
at the right stage. Slow (minutes under TCG): run this tier alone with ``-m boot``.

The image is bootstrapped once per machine into ``$IMGSMITH_CACHE`` (default
/var/tmp/imgsmith-test-cache) and reused until the mirror moves on.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from imgsmith import proc
from imgsmith.boot.console import Stage
from imgsmith.boot.test import BootTestError, Check, Timeouts, boot_test, choose_accelerator
from imgsmith.source import partition
from imgsmith.source.bootstrap import BootstrapSpec, bootstrap_image

pytestmark = pytest.mark.boot

CACHE = Path(os.environ.get("IMGSMITH_CACHE") or "/var/tmp/imgsmith-test-cache")


@pytest.fixture(scope="session")
def debian_image() -> Path:
    if os.geteuid() != 0:
        pytest.skip("bootstrapping an image needs root (loop devices, mounts, chroot)")
    return bootstrap_image(BootstrapSpec(distro="debian", release="bookworm"), cache_dir=CACHE)


def test_bootstrapped_image_boots_and_passes_checks(debian_image: Path, tmp_path: Path) -> None:
    before = debian_image.stat()
    stages: list[str] = []
    result = boot_test(debian_image, "qcow2", workdir=tmp_path, progress=stages.append, checks=[
        Check("uname -s", "Linux"),
        Check("cloud-init status --wait >/dev/null; cloud-init status", "status: done"),
        Check("sudo -n id -u", "0"),
        Check("findmnt -no SOURCE /", expect_rc=0),
    ])
    assert result.passed, [c.reason for c in result.checks if not c.passed]
    for stage in ("first output", "kernel", "init", "cloud-init final", "marker", "ssh login"):
        assert result.stages[stage] is not None, stage
    assert result.stages["kernel"] <= result.stages["marker"] <= result.stages["ssh login"]  # type: ignore[operator]
    assert result.host_key_verified and result.clean_shutdown
    after = debian_image.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns), "the image was modified"
    assert list(tmp_path.iterdir()) == [], "overlay and seed must be removed"


def _without_kernel(image: Path, dest: Path) -> Path:
    """A raw copy of *image* whose /boot holds no kernel: GRUB finds nothing to boot."""
    proc.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", image, dest])
    with partition.attach(dest, 1) as (_loop, node), partition.mount(node, dest.parent / "mnt") as root:
        kernels = list((root / "boot").glob("vmlinuz-*"))
        assert kernels
        for k in kernels:
            k.unlink()
    return dest


def test_image_without_kernel_fails_at_kernel_stage(debian_image: Path, tmp_path: Path) -> None:
    broken = _without_kernel(debian_image, tmp_path / "broken.raw")
    limits = Timeouts.for_accelerator(choose_accelerator().name)
    start = time.monotonic()
    with pytest.raises(BootTestError) as info:
        boot_test(broken, "raw", checks=[Check("true")], timeouts=limits)
    took = time.monotonic() - start
    assert info.value.stage == Stage.KERNEL
    assert "GRUB could not load the kernel" in info.value.reason
    assert any("vmlinuz" in line for line in info.value.console_tail)
    assert took < limits.deadlines[Stage.KERNEL] + 30
    assert "boot test failed at stage 'kernel'" in str(info.value)
