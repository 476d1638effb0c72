"""Pure-Python tests of the disk tables and argv builders: no qemu-img, no appliance."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from imgsmith.disk import gcp, ova, qemuimg
from imgsmith.disk.convert import default_name, make_target
from imgsmith.disk.formats import FORMATS, get_format, parse_option_pairs, resolve_options, writable_format
from imgsmith.disk.presets import PRESETS, Layout, apply_rules, get_preset
from imgsmith.disk.sizes import GiB, MiB, SizeSpec, format_size, parse_size
from imgsmith.errors import UsageError
from imgsmith.guest.resize import target_size

OVF = "{http://schemas.dmtf.org/ovf/envelope/1}"


@pytest.mark.parametrize(("text", "expected"), [
    ("20G", SizeSpec(20 * GiB)), ("512M", SizeSpec(512 * MiB)), ("+2G", SizeSpec(2 * GiB, True)),
    ("10737418240", SizeSpec(10737418240)), ("1.5G", SizeSpec(3 * GiB // 2)), ("20GiB", SizeSpec(20 * GiB)),
    ("64k", SizeSpec(64 * 1024)), ("1T", SizeSpec(1 << 40)),
])
def test_parse_size(text: str, expected: SizeSpec) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "-2G", "20X", "0", "0.3K", "1,5G"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="invalid size"):
        parse_size(text)


def test_size_spec_apply_and_format() -> None:
    assert parse_size("+2G").apply(10 * GiB) == 12 * GiB
    assert parse_size("20G").apply(10 * GiB) == 20 * GiB
    assert format_size(64 * MiB) == "64 MiB"
    assert format_size(64 * MiB + 512 * 1024) == "64.5 MiB"
    assert format_size(100) == "100 B"
    assert format_size(65 * MiB + 1536) == "65.0 MiB"


def test_every_format_has_extension_and_known_defaults() -> None:
    for fmt in FORMATS.values():
        assert fmt.extension.startswith(".")
        for name, value in fmt.defaults().items():
            opt = fmt.option(name)
            assert opt is not None
            assert opt.check(fmt.name, value) == value


def test_unknown_option_names_it_and_the_allowed_ones() -> None:
    with pytest.raises(UsageError) as exc:
        resolve_options(get_format("vmdk"), {"subformt": "streamOptimized"})
    assert exc.value.message == ("unknown option 'subformt' for format vmdk "
                                 "(allowed: subformat, adapter_type, hwversion)")


def test_bad_value_lists_choices() -> None:
    with pytest.raises(UsageError) as exc:
        resolve_options(get_format("vpc"), {"subformat": "sparse"})
    assert exc.value.message == "invalid value 'sparse' for vpc option subformat (allowed: dynamic, fixed)"


def test_option_values_are_canonicalised() -> None:
    opts = resolve_options(get_format("vmdk"), {"subformat": "streamoptimized", "hwversion": "6"})
    assert opts == {"subformat": "streamOptimized", "hwversion": "6"}
    assert resolve_options(get_format("qcow2"), {"cluster_size": "2M"})["cluster_size"] == str(2 * MiB)
    assert resolve_options(get_format("vdi"), {"static": "yes"}) == {"static": "on"}


@pytest.mark.parametrize(("fmt", "opts", "message"), [
    ("qcow2", {"compat": "0.10", "compression": "zstd"}, "compression=zstd needs compat=1.1"),
    ("qcow2", {"compression": "zlib", "preallocation": "full"}, "cannot be preallocated"),
    ("vpc", {"subformat": "fixed", "force_size": "off"}, "force_size"),
])
def test_cross_option_rules(fmt: str, opts: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        resolve_options(get_format(fmt), opts)


def test_aliases_and_qed_refusal() -> None:
    assert get_format("vhd").name == "vpc"
    assert get_format("QCOW2").name == "qcow2"
    get_format("qed")  # readable
    with pytest.raises(UsageError) as exc:
        writable_format("qed")
    assert exc.value.message == "cannot write qed: qed is deprecated and unmaintained; write qcow2 instead"
    with pytest.raises(UsageError, match=r"unknown format 'qcow3' \(known: qcow2, raw"):
        get_format("qcow3")


def test_parse_option_pairs() -> None:
    assert parse_option_pairs(["a=b", "c=d,e=f"]) == {"a": "b", "c": "d", "e": "f"}
    with pytest.raises(UsageError, match="expected KEY=VALUE"):
        parse_option_pairs(["novalue"])


def test_convert_argv_passes_source_format_and_options() -> None:
    argv = qemuimg.convert_argv("a.qcow2", "qcow2", "b.vhd", "vpc", {"subformat": "fixed", "force_size": "on"})
    assert argv == ["qemu-img", "convert", "-p", "-f", "qcow2", "-O", "vpc",
                    "-o", "subformat=fixed,force_size=on", "a.qcow2", "b.vhd"]


def test_convert_argv_compressed_qcow2_is_parallel() -> None:
    zlib = qemuimg.convert_argv("a", "raw", "b", "qcow2", {"compat": "0.10", "compression": "zlib"})
    assert zlib == ["qemu-img", "convert", "-p", "-f", "raw", "-O", "qcow2", "-c", "-m", "4", "-W",
                    "-o", "compat=0.10", "a", "b"]
    zstd = qemuimg.convert_argv("a", "raw", "b", "qcow2", {"compat": "1.1", "compression": "zstd"})
    assert "-o" in zstd and "compat=1.1,compression_type=zstd" in zstd
    plain = qemuimg.convert_argv("a", "raw", "b", "qcow2", {"compat": "1.1", "compression": "off"})
    assert "-c" not in plain and "-W" not in plain


def test_gcp_tar_argv() -> None:
    argv = gcp.tar_argv(Path("/w"), Path("/w/out.tar.gz"))
    assert argv == ["tar", "--format=oldgnu", "--sparse", "--owner=0", "--group=0", "--numeric-owner",
                    "--gzip", "-cf", "/w/out.tar.gz", "-C", "/w", "disk.raw"]


def test_every_preset_is_consistent() -> None:
    assert set(PRESETS) == {"openstack", "kvm", "aliyun", "tencent", "azure", "aws", "gcp", "vmware",
                            "virtualbox", "hyperv"}
    for preset in PRESETS.values():
        fmt = writable_format(preset.format)
        resolve_options(fmt, preset.options)          # the preset's own options are valid
        assert preset.source.startswith("https://")
        for rule in preset.rules:
            assert rule.source.startswith("https://"), rule.name
        # the preset's defaults satisfy its own rules at an aligned size
        apply_rules(preset, 10 * GiB, resolve_options(fmt, preset.options))


def test_azure_rounds_up_to_mib_and_says_so() -> None:
    azure = get_preset("azure")
    opts = resolve_options(get_format("vpc"), azure.options)
    size, notes = apply_rules(azure, 64 * MiB + 1536, opts)
    assert size == 65 * MiB
    assert notes == ["azure: virtual size rounded up from 64.0 MiB (67110400 bytes) to 65 MiB (68157440 bytes): "
                     "Azure needs a virtual size that is a whole number of MiB"]
    assert apply_rules(azure, 64 * MiB, opts) == (64 * MiB, [])


def test_azure_refuses_dynamic_vhd_naming_the_rule() -> None:
    target = make_target("x.vhd", preset="azure", options={"subformat": "dynamic"})
    assert target.preset is not None
    with pytest.raises(UsageError) as exc:
        apply_rules(target.preset, 64 * MiB, target.options)
    assert exc.value.message.startswith("preset azure: rule 'fixed-vhd'")


def test_max_size_is_refused_not_shrunk() -> None:
    with pytest.raises(UsageError, match=r"rule 'max-64tib'.*limit is 64 TiB"):
        apply_rules(get_preset("hyperv"), 65 << 40, {"subformat": "dynamic"})


def test_gcp_rounds_to_gib() -> None:
    size, notes = apply_rules(get_preset("gcp"), 64 * MiB + 1536, {})
    assert size == GiB
    assert "whole number of GiB" in notes[0]
    assert get_preset("gcp").layout is Layout.GCP_TAR


def test_make_target_validates() -> None:
    with pytest.raises(UsageError, match="either a format or a preset"):
        make_target("x", fmt="qcow2", preset="kvm")
    with pytest.raises(UsageError, match="unknown preset 'azur'"):
        make_target("x", preset="azur")
    t = make_target("x.vmdk", fmt="vmdk", options={"subformat": "streamOptimized"})
    assert t.options == {"subformat": "streamOptimized"}


def test_default_names() -> None:
    assert default_name(Path("/a/disk.qcow2"), "azure", ".vhd", True) == "disk-azure.vhd"
    assert default_name(Path("disk.img"), "gcp", ".tar.gz", True) == "disk-gcp.tar.gz"
    assert default_name(Path("disk.qcow2"), "vmdk", ".vmdk", False) == "disk.vmdk"


def test_ovf_descriptor_fields() -> None:
    vm = ova.VirtualMachine("web 1")
    text = ova.ovf_descriptor(vm, "web-1-disk1.vmdk", 12345, 64 * MiB)
    root = ET.fromstring(text)
    file_el = root.find(f"{OVF}References/{OVF}File")
    disk_el = root.find(f"{OVF}DiskSection/{OVF}Disk")
    assert file_el is not None and disk_el is not None
    assert file_el.get(f"{OVF}href") == "web-1-disk1.vmdk"
    assert file_el.get(f"{OVF}size") == "12345"
    assert disk_el.get(f"{OVF}capacity") == str(64 * MiB)
    assert disk_el.get(f"{OVF}capacityAllocationUnits") == "byte"
    assert disk_el.get(f"{OVF}format", "").endswith("#streamOptimized")
    assert ova.safe_name("web 1/../x") == "web-1-..-x"
    assert ova.manifest([("a.ovf", "00")]) == "SHA256(a.ovf)= 00\n"


def test_shrink_is_refused_naming_both_sizes() -> None:
    with pytest.raises(UsageError) as exc:
        target_size(Path("d.qcow2"), 20 * GiB, parse_size("10G"))
    assert exc.value.message == ("refusing to shrink d.qcow2 from 20 GiB (21474836480 bytes) to 10 GiB "
                                 "(10737418240 bytes): shrinking is not supported")
    assert target_size(Path("d"), 10 * GiB, parse_size("+1000")) == 10 * GiB + 1024


def test_docs_cover_every_format_option_preset_rule_and_source() -> None:
    """docs/formats.md is the user's reference: nothing in the tables may be missing from it."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "formats.md").read_text()
    for fmt in FORMATS.values():
        assert f"`{fmt.name}`" in text, fmt.name
        for opt in fmt.options:
            assert f"`{opt.name}`" in text, (fmt.name, opt.name)
    for preset in PRESETS.values():
        assert f"`{preset.name}`" in text, preset.name
        assert preset.source in text, preset.name
        for rule in preset.rules:
            assert f"`{rule.name}`" in text and rule.source in text, (preset.name, rule.name)


@pytest.mark.parametrize("layout", [
    [],  # empty file
    [("hole", 3 << 20)],  # nothing but a hole
    [("data", 5000)],  # no hole at all, not chunk-aligned
    [("hole", 1 << 20), ("data", 70000), ("hole", 9 << 20), ("data", 512)],  # holes first and between
    [("data", 4096), ("hole", 6 << 20)],  # a hole at the end (truncate)
])
def test_sha256_file_skips_reading_holes_but_hashes_their_zeros(tmp_path: Path,
                                                                layout: list[tuple[str, int]]) -> None:
    import hashlib
    import os

    from imgsmith.host.files import sha256_file
    path, expected = tmp_path / "sparse", hashlib.sha256()
    seen: list[int] = []
    with path.open("wb") as f:
        for kind, size in layout:
            data = os.urandom(size) if kind == "data" else bytes(size)
            if kind == "data":
                f.write(data)
            else:
                f.seek(size, os.SEEK_CUR)
            expected.update(data)
        f.truncate()
    assert sha256_file(path, progress=seen.append) == expected.hexdigest()
    assert sum(seen) == path.stat().st_size
