"""Incremental outputs with the real qemu-img and qemu-storage-daemon: a patched output has exactly the
new content, and anything unusual falls back to a full conversion."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import pytest

from imgsmith.cache import LayerStore
from imgsmith.disk import delta, qemuimg
from imgsmith.disk.convert import ConvertResult, Target, convert_many, make_target
from imgsmith.disk.presets import Layout
from imgsmith.rebuild import patch_updates

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="FUSE exports under /run/imgsmith need root")

MiB = 1 << 20
SIZE = 64 * MiB
TARGETS = [  # (name, format, options, preset)
    ("out.raw", "raw", None, None),
    ("out-azure.vhd", None, None, "azure"),
    ("out.qcow2", "qcow2", None, None),
    ("out-z.qcow2", "qcow2", {"compression": "zlib"}, None),
    ("out.vmdk", "vmdk", {"subformat": "streamOptimized"}, None),
    ("out-dyn.vhdx", "vhdx", None, None),  # no patcher: always a full conversion
]


def qemu_io(image: Path, *commands: str) -> None:
    argv = ["qemu-io", "-f", "qcow2"]
    for c in commands:
        argv += ["-c", c]
    subprocess.run([*argv, image], check=True, capture_output=True)


def overlay(parent: Path, path: Path) -> Path:
    qemuimg.create_overlay(parent, "qcow2", path)
    return path


@pytest.fixture(scope="module")
def chains(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """base <- shared <- old-top and base <- shared <- new-top, with data, zeros and holes changing."""
    d = tmp_path_factory.mktemp("chains")
    base = d / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, str(SIZE)], check=True)
    qemu_io(base, "write -P 0x11 0 8M", "write -P 0x22 20M 3M", "write -P 0x33 60M 4M")
    shared = overlay(base, d / "shared.qcow2")
    qemu_io(shared, "write -P 0x44 30M 2M")
    old = overlay(shared, d / "old.qcow2")
    qemu_io(old, "write -P 0x55 1M 1M", "write -P 0x66 40M 128k")  # only in the old build
    new = overlay(shared, d / "new.qcow2")
    qemu_io(new, "write -P 0x77 2M 64k",  # data over data
            "write -z 20M 1M",  # zeros over data
            "write -P 0x78 50M 100k",  # data into a hole, not cluster-aligned
            "write -P 0x79 63M 1M")  # the last MiB of the disk
    return {"base": base, "shared": shared, "old": old, "new": new}


def _targets(out: Path) -> list[Target]:
    return [make_target(out / name, fmt=fmt, options=opts, preset=preset) for name, fmt, opts, preset in TARGETS]


def test_changed_extents_cover_both_builds_own_layers(chains: dict[str, Path]) -> None:
    extents = delta.changed_extents(chains["new"], 1, chains["old"], 1, SIZE)
    assert extents == [(1 * MiB, 1 * MiB + 64 * 1024), (20 * MiB, 1 * MiB), (40 * MiB, 128 * 1024),
                       (50 * MiB, 128 * 1024), (63 * MiB, 1 * MiB)]
    # Widened to 64 KiB blocks, touching blocks joined, cut at the end of the disk.
    assert delta.merge([(10, 5), (0, 1), (65536, 1), (300_000, 0)], limit=100_000) == [(0, 100_000)]
    assert delta.merge([(200_000, 10), (0, 1)]) == [(0, 65536), (196608, 65536)]


def test_patch_kinds() -> None:
    assert delta.patch_kind("raw", {}, Layout.PLAIN) == "raw"
    assert delta.patch_kind("raw", {"preallocation": "full"}, Layout.PLAIN) is None
    assert delta.patch_kind("vpc", {"subformat": "fixed", "force_size": "on"}, Layout.PLAIN) == "vhd-fixed"
    assert delta.patch_kind("vpc", {"subformat": "dynamic"}, Layout.PLAIN) is None
    assert delta.patch_kind("qcow2", {"compat": "1.1", "compression": "zstd"}, Layout.PLAIN) == "qcow2-compressed"
    assert delta.patch_kind("qcow2", {"compat": "1.1", "cluster_size": "2M"}, Layout.PLAIN) is None
    assert delta.patch_kind("vmdk", {"subformat": "streamOptimized"}, Layout.OVA) is None


def _manifest(out: Path, results: list[ConvertResult], keys: list[str]) -> dict[str, object]:
    outputs = []
    for r in results:
        entry = r.to_json()
        entry["mtime_ns"] = Path(entry["path"]).stat().st_mtime_ns
        outputs.append(entry)
    return {"layers": [{"key": k} for k in keys], "outputs": outputs}


def test_rebuild_patches_every_patchable_output_to_the_new_content(chains: dict[str, Path], tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "layers")
    # The store holds the old chain's top under its key, as a real build leaves it.
    old_key, new_key, shared_key = "a" * 64, "b" * 64, "c" * 64
    (store.root / old_key).mkdir(parents=True)
    os.link(chains["old"], store.root / old_key / "layer.qcow2")
    (store.root / old_key / "meta.json").write_text(json.dumps({"key": old_key,
                                                                "parent_path": str(chains["shared"])}))
    assert store.get(old_key) is not None, "the fixture must look like a published layer"

    out = tmp_path / "out"
    out.mkdir()
    first = convert_many(chains["old"], _targets(out), source_format="qcow2", force=True)
    previous = _manifest(out, first, [shared_key, old_key])
    (out / "out-dyn.vhdx").touch()  # stands for a user's edit: mtime no longer matches
    os.utime(out / "out-dyn.vhdx", ns=(1, 1))

    with patch_updates(out, previous, store=store, keys=[shared_key, new_key], final=chains["new"],
                       virtual_size=SIZE, targets=_targets(out)) as updates:
        assert sorted(p.name for p in updates) == ["out-azure.vhd", "out-z.qcow2", "out.qcow2", "out.raw",
                                                   "out.vmdk"]
        second = convert_many(chains["new"], _targets(out), source_format="qcow2", force=True, updates=updates)
    by_name = {r.path.name: r for r in second}
    assert by_name["out-dyn.vhdx"].patched_bytes is None
    assert {n for n, r in by_name.items() if r.patched_bytes} == {"out.raw", "out-azure.vhd", "out.qcow2",
                                                                  "out-z.qcow2", "out.vmdk"}
    for name, r in by_name.items():
        fmt = r.format
        cmp = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", fmt, chains["new"], out / name],
                             capture_output=True, text=True, check=False)
        assert cmp.returncode == 0, f"{name}: {cmp.stdout}{cmp.stderr}"
        assert qemuimg.info(out / name, fmt).virtual_size == SIZE
    for name in ("out.qcow2", "out-z.qcow2"):
        assert qemuimg.check(out / name, "qcow2").ok
    z = qemuimg.info(out / "out-z.qcow2", "qcow2")
    assert z.actual_size < 8 * MiB  # still compressed (the patterns compress to almost nothing)
    # The VHD footer: a new unique id and a checksum that adds up.
    footer = (out / "out-azure.vhd").read_bytes()[SIZE:]
    assert footer[:8] == b"conectix" and len(footer) == 512
    zeroed = footer[:64] + b"\0\0\0\0" + footer[68:]
    assert struct.unpack(">I", footer[64:68])[0] == ~sum(zeroed) & 0xFFFFFFFF
    # Holes stay holes: the raw output did not grow to the full virtual size on disk.
    assert os.stat(out / "out.raw").st_blocks * 512 < 24 * MiB


def test_nothing_qualifies_without_the_old_layer_or_with_another_base(chains: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "layers")
    out = tmp_path / "out"
    out.mkdir()
    first = convert_many(chains["old"], _targets(out)[:1], source_format="qcow2", force=True)
    previous = _manifest(out, first, ["c" * 64, "a" * 64])
    # The old top layer was pruned from the cache: no map of the old content, so no patching.
    with patch_updates(out, previous, store=store, keys=["c" * 64, "b" * 64], final=chains["new"],
                       virtual_size=SIZE, targets=_targets(out)[:1]) as updates:
        assert updates == {}
    # No shared first layer (another base): no patching either, even with the layer present.
    (store.root / ("a" * 64)).mkdir(parents=True)
    os.link(chains["old"], store.root / ("a" * 64) / "layer.qcow2")
    (store.root / ("a" * 64) / "meta.json").write_text(json.dumps({"key": "a" * 64,
                                                                   "parent_path": str(chains["shared"])}))
    with patch_updates(out, previous, store=store, keys=["d" * 64, "b" * 64], final=chains["new"],
                       virtual_size=SIZE, targets=_targets(out)[:1]) as updates:
        assert updates == {}


def test_a_patch_that_fails_falls_back_to_a_full_conversion(chains: dict[str, Path], tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A previous output that is damaged but looks intact (same size and mtime): the patch fails on it,
    the output is converted in full instead, with a warning, and the result is right."""
    store = LayerStore(tmp_path / "layers")
    old_key = "a" * 64
    (store.root / old_key).mkdir(parents=True)
    os.link(chains["old"], store.root / old_key / "layer.qcow2")
    (store.root / old_key / "meta.json").write_text(json.dumps({"key": old_key,
                                                                "parent_path": str(chains["shared"])}))
    out = tmp_path / "out"
    out.mkdir()
    targets = [make_target(out / "out.vmdk", fmt="vmdk", options={"subformat": "streamOptimized"})]
    first = convert_many(chains["old"], targets, source_format="qcow2", force=True)
    previous = _manifest(out, first, ["c" * 64, old_key])
    st = (out / "out.vmdk").stat()
    with (out / "out.vmdk").open("r+b") as f:  # break the magic, keep size and mtime
        f.write(b"XXXX")
    os.utime(out / "out.vmdk", ns=(st.st_atime_ns, st.st_mtime_ns))
    with patch_updates(out, previous, store=store, keys=["c" * 64, "b" * 64], final=chains["new"],
                       virtual_size=SIZE, targets=targets) as updates:
        assert list(updates) == [out / "out.vmdk"]
        (result,) = convert_many(chains["new"], targets, source_format="qcow2", force=True, updates=updates)
    assert result.patched_bytes is None
    assert "could not patch the previous output" in caplog.text and "converting in full" in caplog.text
    subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "vmdk", chains["new"], out / "out.vmdk"],
                   check=True, capture_output=True)
