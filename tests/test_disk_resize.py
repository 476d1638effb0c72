"""`imgsmith resize` (and `info --inspect`) on tiny partitioned disks built without the appliance.

The disks are made with sfdisk on a sparse file and a filesystem made in a separate
image (mkfs.ext4 -d fills it from a directory) copied in at the 1 MiB offset - the
host kernel parses no partition tables here, and needs none of this.
"""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Iterator
from contextlib import closing, redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from imgsmith.cli.main import main
from imgsmith.guest.appliance import Drive, open_handle
from test_disk_support import MiB, qemu_info, sha256

pytestmark = pytest.mark.xdist_group("disk-resize")


def _os_tree(root: Path) -> Path:
    """Just enough of a Debian root for libguestfs inspection to recognise it."""
    for d in ("bin", "usr/bin", "usr/lib", "var/lib/dpkg", "boot", "tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    etc = root / "etc"
    etc.mkdir()
    (etc / "fstab").write_text("/dev/sda1 / ext4 defaults 0 1\n")
    (etc / "hostname").write_text("smith-test\n")
    (etc / "debian_version").write_text("12.5\n")
    (etc / "os-release").write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
                                    'VERSION_ID="12"\nID=debian\n')
    (root / "var/lib/dpkg/status").write_text("")
    return root


def build_disk(path: Path, table: str, fs: str | None, disk_mib: int, part_mib: int,
               tree: Path | None = None) -> Path:
    """A raw disk with one partition at 1 MiB holding *fs* (or nothing)."""
    with path.open("wb") as f:
        f.truncate(disk_mib * MiB)
    script = f"label: {table}\nstart=2048, size={part_mib * 2048}\n"
    subprocess.run(["sfdisk", "-q", str(path)], input=script.encode(), check=True)
    if fs is None:
        return path
    fs_img = path.with_suffix(".fs")
    with fs_img.open("wb") as f:
        f.truncate(part_mib * MiB)
    if fs == "ext4":
        subprocess.run(["mkfs.ext4", "-q", "-F", *(["-d", str(tree)] if tree else []), str(fs_img)], check=True)
    else:
        subprocess.run(["mkfs.xfs", "-q", "-f", str(fs_img)], check=True)
    subprocess.run(["dd", f"if={fs_img}", f"of={path}", "bs=1M", "seek=1", "conv=notrunc,sparse",
                    "status=none"], check=True)
    fs_img.unlink()
    return path


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("resize")
    ext = build_disk(d / "ext4-mbr.raw", "dos", "ext4", 64, 40, _os_tree(d / "root"))
    xfs_raw = build_disk(d / "xfs-gpt.raw", "gpt", "xfs", 340, 310)
    xfs = d / "xfs-gpt.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(xfs_raw), str(xfs)], check=True)
    xfs_raw.unlink()
    return {"ext4": ext, "xfs": xfs}


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


# --- refusals: no appliance, nothing changed --------------------------------------------------

def test_shrink_is_refused(disks: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    before = sha256(disks["ext4"])
    rc, _, err = _run(["resize", str(disks["ext4"]), "32M", "--format", "raw"], capsys)
    assert rc == 2
    assert err.splitlines()[-1] == (f"imgsmith: error: refusing to shrink {disks['ext4']} from 64 MiB "
                                    "(67108864 bytes) to 32 MiB (33554432 bytes): shrinking is not supported")
    assert sha256(disks["ext4"]) == before


def test_other_formats_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vmdk = tmp_path / "d.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(vmdk), "64M"], check=True)
    rc, _, err = _run(["resize", str(vmdk), "+1G", "--format", "vmdk"], capsys)
    assert rc == 2
    assert err.splitlines()[-1] == ("imgsmith: error: cannot resize a vmdk image (only qcow2, raw); "
                                    "convert it to qcow2 first")


def test_bad_size_is_refused(disks: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(["resize", str(disks["ext4"]), "lots"], capsys)
    assert rc == 2
    assert err == "imgsmith: error: invalid size 'lots' (examples: 20G, 512M, +2G, 10737418240)\n"


# --- the real thing ---------------------------------------------------------------------------

@pytest.mark.guest
def test_failure_inside_the_guest_leaves_the_disk_untouched(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    bare = build_disk(tmp_path / "nofs.raw", "gpt", None, 32, 16)   # a partition with no filesystem
    before = sha256(bare)
    rc, _, err = _run(["resize", str(bare), "64M", "--format", "raw"], capsys)
    assert rc == 1
    assert "imgsmith: error: cannot grow a unrecognised filesystem on /dev/sda1" in err
    assert bare.stat().st_size == 32 * MiB and sha256(bare) == before
    assert [p.name for p in tmp_path.iterdir()] == ["nofs.raw"]      # the overlay is gone too


@pytest.fixture(scope="module")
def resized(disks: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Grow both disks through the CLI, one appliance launch each."""
    results: dict[str, dict[str, Any]] = {}
    for key, argv in (("ext4", ["128M", "--format", "raw"]), ("xfs", ["+200M", "--format", "qcow2"])):
        buf = io.StringIO()
        with redirect_stdout(buf):
            assert main(["resize", str(disks[key]), *argv, "--json"]) == 0
        results[key] = json.loads(buf.getvalue())
    return results


@pytest.mark.guest
def test_ext4_on_mbr_grew(disks: dict[str, Path], resized: dict[str, dict[str, Any]]) -> None:
    r = resized["ext4"]
    assert (r["size_before"], r["size_after"]) == (64 * MiB, 128 * MiB)
    assert r["partition_table"] == "msdos" and r["partition"] == 1 and r["filesystem"] == "ext4"
    assert r["partition_size_before"] == 40 * MiB
    assert r["partition_size_after"] == 127 * MiB            # to the last whole MiB of the disk
    assert r["filesystem_size_after"] > r["filesystem_size_before"] + 80 * MiB
    assert disks["ext4"].stat().st_size == 128 * MiB


@pytest.mark.guest
def test_xfs_on_gpt_qcow2_grew(disks: dict[str, Path], resized: dict[str, dict[str, Any]]) -> None:
    r = resized["xfs"]
    assert (r["size_before"], r["size_after"]) == (340 * MiB, 540 * MiB)
    assert r["partition_table"] == "gpt" and r["filesystem"] == "xfs"
    assert r["partition_size_after"] >= 538 * MiB
    assert r["filesystem_size_after"] > r["filesystem_size_before"] + 190 * MiB
    assert qemu_info(disks["xfs"], "qcow2")["virtual-size"] == 540 * MiB
    assert not [p for p in disks["xfs"].parent.iterdir() if ".partial-" in p.name]


@pytest.fixture
def handle(disks: dict[str, Path], resized: dict[str, dict[str, Any]]) -> Iterator[Any]:
    with closing(open_handle([Drive(disks["ext4"], "raw", readonly=True),
                              Drive(disks["xfs"], "qcow2", readonly=True)])) as g:
        yield g


@pytest.mark.guest
def test_sizes_seen_from_the_appliance(handle: Any) -> None:
    """One independent launch reads both grown disks back: partition tables, filesystem sizes."""
    g = handle
    assert g.blockdev_getsize64("/dev/sda") == 128 * MiB
    assert g.blockdev_getsize64("/dev/sdb") == 540 * MiB
    ext_part = g.part_list("/dev/sda")[0]
    assert ext_part["part_size"] == 127 * MiB
    xfs_part = g.part_list("/dev/sdb")[0]
    assert xfs_part["part_size"] >= 538 * MiB
    for dev, minimum in (("/dev/sda1", 110 * MiB), ("/dev/sdb1", 450 * MiB)):
        g.mount_ro(dev, "/")
        st = g.statvfs("/")
        assert st["blocks"] * st["frsize"] > minimum, dev
        g.umount_all()
    assert g.vfs_type("/dev/sda1") == "ext4"
    assert g.vfs_type("/dev/sdb1") == "xfs"


@pytest.mark.guest
def test_info_inspect_after_resize(disks: dict[str, Path], resized: dict[str, dict[str, Any]],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(["info", str(disks["ext4"]), "--format", "raw", "--inspect", "--json"], capsys)
    assert rc == 0
    data = json.loads(out)
    assert data["format"] == "raw" and data["virtual_size"] == 128 * MiB
    [guest] = data["guests"]
    assert guest["root"] == "/dev/sda1"
    assert guest["type"] == "linux" and guest["distro"] == "debian"
    assert guest["hostname"] == "smith-test"
    assert guest["mountpoints"] == {"/": "/dev/sda1"}
