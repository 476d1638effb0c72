"""Convert with the real qemu-img: every format and preset round-trips, layouts, bad input, interrupts."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import struct
import subprocess
import tarfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgsmith.cli.main import main
from imgsmith.disk import convert as conv
from imgsmith.disk import qemuimg
from imgsmith.errors import UsageError
from test_disk_support import (
    IMGSMITH,
    SOURCE_SIZE,
    MiB,
    assert_same_data,
    make_source,
    qemu_info,
    sha256,
    to_raw,
)

OVF = "{http://schemas.dmtf.org/ovf/envelope/1}"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_source(tmp_path_factory.mktemp("src") / "disk.raw")


def _convert(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(["convert", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("imgsmith: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _vhd_footer(path: Path) -> tuple[bytes, int, int, int]:
    """(cookie, original size, current size, disk type) from the VHD footer (last 512 bytes)."""
    with path.open("rb") as f:
        f.seek(-512, os.SEEK_END)
        footer = f.read(512)
    original, current = struct.unpack(">QQ", footer[0x28:0x38])
    (disk_type,) = struct.unpack(">I", footer[0x3C:0x40])
    return footer[:8], original, current, disk_type


def _check_sha_file(dest: Path) -> None:
    line = dest.with_name(dest.name + ".sha256").read_text()
    assert line == f"{sha256(dest)}  {dest.name}\n"


def _no_partials(directory: Path) -> None:
    assert not [p for p in directory.iterdir() if ".partial-" in p.name]


# --- formats -------------------------------------------------------------------------------------

FORMAT_CASES = [
    ("qcow2", ["compat=1.1"], ".qcow2"),
    ("qcow2", ["compat=0.10", "cluster_size=128K"], ".qcow2"),
    ("qcow2", ["compression=zstd"], ".qcow2"),
    ("raw", [], ".raw"),
    ("vpc", ["subformat=fixed"], ".vhd"),
    ("vpc", ["subformat=dynamic"], ".vhd"),
    ("vhdx", ["subformat=dynamic"], ".vhdx"),
    ("vmdk", ["subformat=streamOptimized", "adapter_type=lsilogic", "hwversion=6"], ".vmdk"),
    ("vmdk", ["subformat=monolithicSparse"], ".vmdk"),
    ("vdi", ["static=on"], ".vdi"),
    ("vdi", ["static=off"], ".vdi"),
]


def _assert_format_fields(fmt: str, opts: dict[str, str], dest: Path) -> None:
    info = qemu_info(dest, fmt)
    assert info["format"] == fmt
    assert info["virtual-size"] == SOURCE_SIZE
    data = dict(info.get("format-specific", {}).get("data", {}))  # type: ignore[attr-defined]
    if fmt == "qcow2":
        assert data["compat"] == opts.get("compat", "1.1")
        assert info["cluster-size"] == {"128K": 128 * 1024}.get(opts.get("cluster_size", ""), 65536)
        if "compression" in opts:
            assert data["compression-type"] == opts["compression"]
            check = json.loads(subprocess.run(["qemu-img", "check", "--output=json", "-f", "qcow2", str(dest)],
                                              capture_output=True, text=True, check=True).stdout)
            assert check["compressed-clusters"] > 0
    elif fmt == "vpc":
        cookie, original, current, disk_type = _vhd_footer(dest)
        assert cookie == b"conectix"
        assert original == current == SOURCE_SIZE
        assert disk_type == (2 if opts["subformat"] == "fixed" else 3)
        if opts["subformat"] == "fixed":
            assert dest.stat().st_size == SOURCE_SIZE + 512
    elif fmt == "vmdk":
        assert data["create-type"] == opts["subformat"]
        head = dest.read_bytes()[:64 * 1024]
        if "adapter_type" in opts:
            assert b'ddb.adapterType = "lsilogic"' in head
            assert b'ddb.virtualHWVersion = "6"' in head
    elif fmt == "vhdx":
        assert dest.read_bytes()[:8] == b"vhdxfile"
    elif fmt == "vdi":
        header = dest.read_bytes()[:0x50]
        (signature, _version, _size, image_type) = struct.unpack("<IIII", header[0x40:0x50])
        assert signature == 0xBEDA107F
        assert image_type == (2 if opts["static"] == "on" else 1)
    elif fmt == "raw":
        assert dest.stat().st_size == SOURCE_SIZE


@pytest.mark.parametrize(("fmt", "options", "ext"), FORMAT_CASES,
                         ids=[f"{f}-{'-'.join(o) or 'default'}" for f, o, _ in FORMAT_CASES])
def test_format_round_trip(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str,
                           options: list[str], ext: str) -> None:
    dest = tmp_path / f"out{ext}"
    argv = [str(source), str(dest), "--format", fmt, "-f", "raw"]
    for o in options:
        argv += ["-o", o]
    rc, out, _ = _convert(argv, capsys)
    assert rc == 0
    assert str(dest) in out
    _assert_format_fields(fmt, dict(o.split("=") for o in options), dest)
    _check_sha_file(dest)
    _no_partials(tmp_path)
    assert_same_data(to_raw(dest, fmt, tmp_path / "back.raw"), source)


# --- presets -------------------------------------------------------------------------------------

def _extract(tar_path: Path, member: str, out: Path) -> Path:
    with tarfile.open(tar_path) as tar:
        src = tar.extractfile(member)
        assert src is not None
        with src, out.open("wb") as f:
            while chunk := src.read(4 * MiB):
                f.write(chunk)
    return out


def _check_ova(dest: Path, tmp_path: Path) -> Path:
    with tarfile.open(dest) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == ["disk-vmware.ovf", "disk-vmware-disk1.vmdk", "disk-vmware.mf"]
        assert dest.read_bytes()[257:263] == b"ustar\0"      # POSIX USTAR header magic
        files = {m.name: tar.extractfile(m) for m in members}
        blobs = {name: f.read() for name, f in files.items() if f is not None}
    root = ET.fromstring(blobs["disk-vmware.ovf"])
    ref = root.find(f"{OVF}References/{OVF}File")
    disk = root.find(f"{OVF}DiskSection/{OVF}Disk")
    assert ref is not None and disk is not None
    assert ref.get(f"{OVF}href") == "disk-vmware-disk1.vmdk"
    assert ref.get(f"{OVF}size") == str(len(blobs["disk-vmware-disk1.vmdk"]))
    assert disk.get(f"{OVF}capacity") == str(SOURCE_SIZE)
    assert disk.get(f"{OVF}fileRef") == ref.get(f"{OVF}id")
    expected = "".join(f"SHA256({n})= {hashlib.sha256(blobs[n]).hexdigest()}\n"
                       for n in ("disk-vmware.ovf", "disk-vmware-disk1.vmdk"))
    assert blobs["disk-vmware.mf"].decode() == expected
    vmdk = tmp_path / "inner.vmdk"
    vmdk.write_bytes(blobs["disk-vmware-disk1.vmdk"])
    assert qemu_info(vmdk, "vmdk")["format-specific"]["data"]["create-type"] == "streamOptimized"  # type: ignore[index]
    return vmdk


def _check_gcp(dest: Path, tmp_path: Path) -> Path:
    with tarfile.open(dest, "r:gz") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["disk.raw"]
        assert members[0].size == 1 << 30           # rounded up to a whole GiB
        assert members[0].type == tarfile.GNUTYPE_SPARSE
    with gzip.open(dest) as raw_tar:
        assert raw_tar.read(512)[257:265] == b"ustar  \0"    # the old GNU header magic (--format=oldgnu)
    return _extract(dest, "disk.raw", tmp_path / "disk.raw")


def _compressed_clusters(path: Path) -> int:
    out = subprocess.run(["qemu-img", "check", "--output=json", "-f", "qcow2", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(json.loads(out).get("compressed-clusters", 0))


def _assert_preset_fields(preset: str, dest: Path, disk: Path, info: dict[str, object],
                          result: dict[str, object]) -> None:
    """What each target checks on import, read back from the written file."""
    data = dict(info.get("format-specific", {}).get("data", {}))  # type: ignore[attr-defined]
    rounded = {"azure": 65 * MiB, "gcp": 1 << 30}.get(preset, SOURCE_SIZE)
    assert info["virtual-size"] == rounded == result["virtual_size"]
    assert len(result["notes"]) == (1 if preset in ("azure", "gcp") else 0)  # type: ignore[arg-type]
    if preset in ("openstack", "kvm", "aliyun", "tencent"):
        assert data["compat"] == "1.1"
        assert (_compressed_clusters(disk) > 0) == (preset == "openstack")
        assert data["compression-type"] == "zlib"
    elif preset == "azure":
        assert _vhd_footer(dest) == (b"conectix", 65 * MiB, 65 * MiB, 2)
        assert dest.stat().st_size == 65 * MiB + 512
    elif preset in ("aws", "vmware"):
        assert data["create-type"] == "streamOptimized"
    elif preset == "virtualbox":
        assert struct.unpack("<I", dest.read_bytes()[0x4C:0x50])[0] == 1      # dynamically allocated
    elif preset == "hyperv":
        assert dest.read_bytes()[:8] == b"vhdxfile"
    elif preset == "gcp":
        assert info["format"] == "raw" and disk.name == "disk.raw"


PRESET_FORMATS = {"openstack": "qcow2", "kvm": "qcow2", "aliyun": "qcow2", "tencent": "qcow2", "azure": "vpc",
                  "aws": "vmdk", "gcp": "raw", "vmware": "vmdk", "virtualbox": "vdi", "hyperv": "vhdx"}


@pytest.mark.parametrize("preset", list(PRESET_FORMATS))
def test_preset_round_trip(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], preset: str) -> None:
    rc, out, err = _convert([str(source), "-o", f"{tmp_path}/", "--preset", preset, "--json"], capsys)
    assert rc == 0, err
    result = json.loads(out)["outputs"][0]
    dest = Path(result["path"])
    assert dest.parent == tmp_path and dest.name.startswith("disk-" + preset)
    assert result["format"] == PRESET_FORMATS[preset] and result["preset"] == preset
    _check_sha_file(dest)
    _no_partials(tmp_path)
    fmt = PRESET_FORMATS[preset]
    if preset == "vmware":
        disk, fmt = _check_ova(dest, tmp_path), "vmdk"
    elif preset == "gcp":
        disk = _check_gcp(dest, tmp_path)
    else:
        disk = dest
    info = qemu_info(disk, fmt)
    _assert_preset_fields(preset, dest, disk, info, result)
    assert_same_data(to_raw(disk, fmt, tmp_path / "back.raw"), source)


def test_several_presets_in_parallel_in_one_run(source: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _convert([str(source), "--preset", "azure", "--preset", "gcp", "--preset", "aws",
                             "-o", f"{tmp_path}/", "-f", "raw"], capsys)
    assert rc == 0, err
    for name in ("disk-azure.vhd", "disk-gcp.tar.gz", "disk-aws.vmdk"):
        assert (tmp_path / name).is_file()
        _check_sha_file(tmp_path / name)
    assert "imgsmith: note: azure: virtual size rounded up from 64.0 MiB (67110400 bytes)" in err
    assert "imgsmith: note: gcp: virtual size rounded up" in err
    _no_partials(tmp_path)


def test_library_convert_to_reports_progress(source: Path, tmp_path: Path) -> None:
    seen: list[float] = []
    result = conv.convert_to(source, tmp_path / "x.vmdk", fmt="vmdk", options={"subformat": "streamOptimized"},
                             source_format="raw", progress=seen.append)
    assert result.format == "vmdk" and result.virtual_size == SOURCE_SIZE
    assert result.sha256 == sha256(tmp_path / "x.vmdk")
    assert result.file_size == (tmp_path / "x.vmdk").stat().st_size
    assert seen and seen[-1] == 100.0 and seen == sorted(seen)


def test_probed_fixed_vhd_is_read_as_vpc(source: Path, tmp_path: Path) -> None:
    vhd = tmp_path / "fixed.vhd"
    conv.convert_to(source, vhd, preset="azure", source_format="raw")
    assert qemuimg.probe_format(vhd) == "vpc"        # qemu-img alone would say raw
    back = conv.convert_to(vhd, tmp_path / "back.raw", fmt="raw")
    assert back.virtual_size == 65 * MiB
    assert_same_data(tmp_path / "back.raw", source)


# --- refusing bad input --------------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "message"), [
    (["--format", "qcow3"], "unknown format 'qcow3' (known: qcow2, raw, vpc, vhdx, vmdk, vdi, qed)"),
    (["--preset", "azur"], "unknown preset 'azur' (known: openstack, kvm, aliyun, tencent, azure, aws, gcp, "
                           "vmware, virtualbox, hyperv)"),
    (["--format", "vmdk", "-o", "compat=1.1"],
     "unknown option 'compat' for format vmdk (allowed: subformat, adapter_type, hwversion)"),
    (["--format", "qed"], "cannot write qed: qed is deprecated and unmaintained; write qcow2 instead"),
    (["--preset", "azure", "-o", "subformat=dynamic"],
     "preset azure: rule 'fixed-vhd' (Azure accepts only fixed-size VHD (not dynamic, not VHDX)): "
     "subformat=dynamic given, subformat=fixed required"),
    ([], "give --format FORMAT or --preset PRESET"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(source: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str], extra: list[str],
                                                      message: str) -> None:
    rc, _, err = _convert([str(source), str(tmp_path / "out.img"), *extra], capsys)
    assert rc == 2
    assert _error_line(err) == f"imgsmith: error: {message}"
    assert list(tmp_path.iterdir()) == []


def test_missing_destination_directory(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _convert([str(source), str(tmp_path / "nope" / "x.qcow2"), "--format", "qcow2"], capsys)
    assert rc == 2
    assert _error_line(err) == f"imgsmith: error: destination directory {tmp_path / 'nope'} does not exist"
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_without_force(source: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "x.qcow2"
    dest.write_bytes(b"keep me")
    rc, _, err = _convert([str(source), str(dest), "--format", "qcow2"], capsys)
    assert rc == 2
    assert _error_line(err) == f"imgsmith: error: destination {dest} already exists (use --force to overwrite)"
    assert dest.read_bytes() == b"keep me"
    rc, _, _ = _convert([str(source), str(dest), "--format", "qcow2", "--force"], capsys)
    assert rc == 0
    assert qemu_info(dest, "qcow2")["virtual-size"] == SOURCE_SIZE


def test_corrupt_qcow2_source_is_refused(source: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.qcow2"
    conv.convert_to(source, good, fmt="qcow2", source_format="raw")
    bad = tmp_path / "bad.qcow2"
    bad.write_bytes(good.read_bytes()[: 300 * 1024])      # cut off: refcounts point past the end
    (tmp_path / "good.qcow2.sha256").unlink()
    good.unlink()
    rc, _, err = _convert([str(bad), str(tmp_path / "x.vmdk"), "--format", "vmdk", "-f", "qcow2"], capsys)
    assert rc == 2
    assert _error_line(err).startswith(f"imgsmith: error: {bad}: corrupt qcow2 image: qemu-img check found ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.qcow2"]


def test_truncated_vmdk_source_is_refused(source: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.vmdk"
    bad.write_bytes(b"KDMV" + b"\0" * 60)
    rc, _, err = _convert([str(bad), str(tmp_path / "x.raw"), "--format", "raw", "-f", "vmdk"], capsys)
    assert rc == 2
    assert _error_line(err).startswith(f"imgsmith: error: {bad}: not a readable vmdk image: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.vmdk"]


def test_missing_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _convert([str(tmp_path / "none.qcow2"), str(tmp_path / "x.raw"), "--format", "raw"], capsys)
    assert rc == 2
    assert _error_line(err) == f"imgsmith: error: {tmp_path / 'none.qcow2'}: no such disk image"


def test_too_little_free_space_library(source: Path, tmp_path: Path) -> None:
    target = conv.make_target(tmp_path / "x.vhd", preset="azure")
    src = conv.open_source(source, "raw")
    with pytest.raises(UsageError) as exc:
        conv.plan(src, [target], free_space=lambda _p: 10 * MiB)
    assert exc.value.message.startswith(f"not enough free space in {tmp_path} for x.vhd: need about ")
    assert "(10485760 bytes) free" in exc.value.message


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
                      capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_too_little_free_space_cli(source: Path, small_fs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _convert([str(source), str(small_fs / "x.vhd"), "--format", "vpc", "-o", "subformat=fixed",
                           "-f", "raw"], capsys)
    assert rc == 2
    need = SOURCE_SIZE + MiB + SOURCE_SIZE // 512      # fixed VHD: the virtual size plus metadata slack
    assert _error_line(err) == (f"imgsmith: error: not enough free space in {small_fs} for x.vhd: need about "
                                f"65.13 MiB ({need} bytes), 16 MiB (16777216 bytes) free")
    assert list(small_fs.iterdir()) == []


# --- interrupted conversion ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def big_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.raw"
    with path.open("wb") as f:
        for _ in range(256):
            f.write(os.urandom(MiB))   # incompressible: streamOptimized deflate is slow on it
    return path


def _start_and_wait_for_partial(src: Path, dest: Path) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([IMGSMITH, "convert", str(src), str(dest), "--format", "vmdk", "-o",
                          "subformat=streamOptimized", "-f", "raw"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        partial = [x for x in dest.parent.iterdir() if x.name.startswith(f".{dest.name}.partial-")]
        if partial and any(x.stat().st_size > 0 for x in partial[0].iterdir()):
            return p
        assert p.poll() is None, "convert finished before it could be interrupted"
        time.sleep(0.05)
    p.kill()
    raise AssertionError("the conversion never started writing")


def _qemu_img_children(session: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == session and b"qemu-img" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except (OSError, ProcessLookupError):
                continue
    return pids


def test_sigterm_leaves_nothing(big_source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "big.vmdk"
    p = _start_and_wait_for_partial(big_source, dest)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130
    assert b"imgsmith: error: stopped by SIGTERM" in err
    assert list(tmp_path.iterdir()) == []                # no DST, no partial, no checksum
    assert _qemu_img_children(p.pid) == []


def test_sigkill_never_leaves_a_file_at_dst(big_source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "big.vmdk"
    p = _start_and_wait_for_partial(big_source, dest)
    os.killpg(p.pid, signal.SIGKILL)                     # the whole process group: imgsmith and qemu-img
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    left = [x.name for x in tmp_path.iterdir()]
    assert not dest.exists()
    assert all(name.startswith(".big.vmdk.partial-") for name in left)
