"""Unit tests for arm64/UEFI (issue 16): spec validation, layouts, firmware discovery, qemu machines,
the guest's firmware report, binfmt checks. No root, no qemu, no network."""

from __future__ import annotations

import json
import struct
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from imgsmith.boot.firmware import Firmware, UefiFirmware, find_uefi, from_descriptors
from imgsmith.boot.machines import machines_for_layout
from imgsmith.boot.qemu import QemuConfig, qemu_argv
from imgsmith.boot.test import BootMachine, judge_firmware
from imgsmith.disk.layout import DiskLayout, parse_table
from imgsmith.errors import UsageError
from imgsmith.host.binfmt import binfmt_problem
from imgsmith.source.bootstrap import (
    BootstrapSpec,
    Sources,
    boot_packages,
    cache_key,
    image_name,
    mmdebstrap_argv,
    profile_for,
)
from imgsmith.source.partition import ESP_GUID, Partitioning, layout_for, sfdisk_script


def _sources() -> Sources:
    return Sources("http://m/debian", "http://m/debian-security", ("main",),
                   (("http://m/debian", "bookworm", "Sat, 01 Jun 2024 10:00:00 UTC"),))


# --- the spec ------------------------------------------------------------------------------------


def _error(data: dict[str, object]) -> str:
    with pytest.raises(ValidationError) as info:
        BootstrapSpec.model_validate(data)
    return "; ".join(e["msg"].removeprefix("Value error, ") for e in info.value.errors())


def test_bad_boot_settings_are_refused_with_one_line_each() -> None:
    assert _error({"arch": "s390x"}) == "unsupported architecture 's390x' (supported: amd64, arm64)"
    assert _error({"secure-boot": True, "partitioning": "gpt"}) == (
        "secure-boot: true needs firmware uefi or hybrid (BIOS has no Secure Boot)")
    assert _error({"secure-boot": True, "firmware": "bios"}).startswith("secure-boot: true needs firmware uefi")
    assert _error({"arch": "arm64", "firmware": "hybrid"}) == (
        "arm64 boots with UEFI only: firmware 'hybrid' is not possible (use uefi)")
    assert _error({"firmware": "uefi", "partitioning": "mbr"}) == (
        "firmware uefi needs a GPT disk: drop 'partitioning: mbr'")
    assert _error({"arch": "arm64", "secure-boot": True}) == "secure-boot is supported on amd64 only, not arm64"


def test_defaults_and_packages_per_firmware() -> None:
    assert BootstrapSpec().boot_firmware == "hybrid"  # like Debian's cloud images
    assert BootstrapSpec.model_validate({"secure-boot": True}).boot_firmware == "hybrid"
    assert BootstrapSpec(arch="arm64").boot_firmware == "uefi"
    # partitioning names a BIOS layout: given alone it keeps meaning bios, as before hybrid existed
    assert BootstrapSpec.model_validate({"partitioning": "mbr"}).boot_firmware == "bios"
    assert BootstrapSpec.model_validate({"partitioning": "gpt"}).boot_firmware == "bios"
    assert BootstrapSpec.model_validate({"partitioning": "gpt", "firmware": "hybrid"}).boot_firmware == "hybrid"
    assert boot_packages(BootstrapSpec(firmware="bios")) == ("grub-pc",)
    assert boot_packages(BootstrapSpec()) == ("grub-efi-amd64", "grub-pc-bin")
    assert boot_packages(BootstrapSpec(firmware="uefi", secure_boot=True)) == (
        "grub-efi-amd64", "shim-signed", "grub-efi-amd64-signed")
    assert boot_packages(BootstrapSpec(arch="arm64")) == ("grub-efi-arm64",)
    spec = BootstrapSpec(arch="arm64")
    argv = mmdebstrap_argv(spec, profile_for(spec), _sources(), Path("/r"), Path("/p"), initramfs_stub=Path("/s"))
    assert "--architectures=arm64" in argv
    include = next(a for a in argv if a.startswith("--include=")).split("=", 1)[1].split(",")
    assert include[:2] == ["linux-image-cloud-arm64", "grub-efi-arm64"] and "grub-pc" not in include
    assert not any(a.startswith("--architectures") for a in mmdebstrap_argv(
        BootstrapSpec(), profile_for(BootstrapSpec()), _sources(), Path("/r"), Path("/p"), initramfs_stub=Path("/s")))


# Keys computed by the code before amd64's default became hybrid (builder 0.1.0+bootstrap.2),
# for BootstrapSpec(), BootstrapSpec(partitioning=GPT) and BootstrapSpec(firmware="hybrid"):
# a spec pinned to bios must keep the first, the new default must get the third.
OLD_BUILDER = "0.1.0+bootstrap.2"
OLD_KEYS = {"mbr": "d132f7248d73aba15bd7682e40ddabb76206a4ad4509c153818e97fe8efb302f",
            "gpt": "35ce57df3ae1685b6bd80bacb3499aa55d8f7c6cdf8ef2a22bf97f3fda11959b",
            "hybrid": "a33adc3a58812d63af5664efa3d0a2220283f7d15dc0604c032423f1675fb6df"}


def test_pinned_bios_keeps_the_old_default_key_and_the_new_default_is_hybrids() -> None:
    def key(data: dict[str, object]) -> str:
        return cache_key(BootstrapSpec.model_validate(data), _sources(), builder=OLD_BUILDER)
    assert key({"firmware": "bios"}) == key({"partitioning": "mbr"}) == OLD_KEYS["mbr"]
    assert key({"firmware": "bios", "partitioning": "gpt"}) == key({"partitioning": "gpt"}) == OLD_KEYS["gpt"]
    assert key({}) == key({"firmware": "hybrid"}) == OLD_KEYS["hybrid"]
    pinned = BootstrapSpec(firmware="bios")
    assert image_name(pinned, "a" * 64) == "debian-bookworm-mbr-aaaaaaaaaaaaaaaa"
    assert image_name(BootstrapSpec(), "a" * 64) == "debian-bookworm-amd64-hybrid-aaaaaaaaaaaaaaaa"
    assert pinned.describe() == "debian bookworm amd64 bios" and BootstrapSpec().describe() == "debian bookworm"


def test_cache_keys_distinct_per_boot_mode() -> None:
    bios = cache_key(BootstrapSpec(firmware="bios"), _sources())
    keys = {bios, cache_key(BootstrapSpec(), _sources()),
            cache_key(BootstrapSpec(firmware="uefi"), _sources()),
            cache_key(BootstrapSpec(firmware="uefi", secure_boot=True), _sources()),
            cache_key(BootstrapSpec(secure_boot=True), _sources()),
            cache_key(BootstrapSpec(arch="arm64"), _sources())}
    assert len(keys) == 6
    assert cache_key(BootstrapSpec(), _sources()) == cache_key(BootstrapSpec(firmware="hybrid"), _sources())
    assert image_name(BootstrapSpec(arch="arm64"), "b" * 64) == "debian-bookworm-arm64-uefi-bbbbbbbbbbbbbbbb"
    assert image_name(BootstrapSpec(firmware="hybrid", secure_boot=True), "c" * 64).startswith(
        "debian-bookworm-amd64-secureboot-")


def test_hybrid_and_uefi_layouts_put_root_last() -> None:
    hybrid = layout_for(Partitioning.MBR, "hybrid")
    assert (hybrid.partitioning, hybrid.bios_boot, hybrid.esp, hybrid.root_partition) == (Partitioning.GPT, 1, 2, 3)
    script = sfdisk_script(hybrid).splitlines()
    assert script[0] == "label: gpt"
    assert script[2] == f"start=4096, size=258048, type={ESP_GUID}, name=esp"
    assert script[3].startswith("start=262144,") and script[3].endswith("name=root")
    uefi = layout_for(Partitioning.GPT, "uefi")
    assert (uefi.bios_boot, uefi.esp, uefi.root_partition, uefi.esp_offset) == (None, 1, 2, 1 << 20)
    assert sfdisk_script(Partitioning.MBR) == "label: dos\nstart=2048, type=83, bootable\n"


# --- reading a layout back ------------------------------------------------------------------------


def _gpt_head(types: list[uuid.UUID]) -> bytes:
    head = bytearray(34 * 512)
    head[446 + 4] = 0xEE
    struct.pack_into("<II", head, 446 + 8, 1, 0xFFFFFFFF)
    head[510:512] = b"\x55\xaa"
    head[512:520] = b"EFI PART"
    struct.pack_into("<QII", head, 512 + 72, 2, 128, 128)
    for i, t in enumerate(types):
        at = 1024 + 128 * i
        head[at:at + 16] = t.bytes_le
        struct.pack_into("<QQ", head, at + 32, 2048 * (i + 1), 2048 * (i + 2) - 1)
        head[at + 56:at + 56 + 8] = f"p{i + 1}".encode("utf-16-le")
    return bytes(head)


BIOS = uuid.UUID("21686148-6449-6E6F-744E-656564454649")
ESP = uuid.UUID(ESP_GUID)
LINUX = uuid.UUID("0FC63DAF-8483-4772-8E79-3D69C8477DE4")


def test_parse_table_and_boot_modes() -> None:
    table, parts = parse_table(_gpt_head([BIOS, ESP, LINUX]))
    assert table == "gpt" and [p.type_name for p in parts] == ["BIOS boot", "EFI System", "Linux filesystem"]
    assert parts[1].start == 4096 * 512 and parts[1].name == "p2"
    hybrid = DiskLayout(table, tuple(parts), efi_arch="amd64")
    assert (hybrid.boot_mode, hybrid.firmwares) == ("hybrid", ("bios", "uefi"))
    uefi = DiskLayout("gpt", tuple(parse_table(_gpt_head([ESP, LINUX]))[1]), efi_arch="arm64")
    assert (uefi.boot_mode, uefi.firmwares) == ("uefi", ("uefi",))
    shim = DiskLayout("gpt", tuple(parse_table(_gpt_head([ESP, LINUX]))[1]), efi_arch="amd64", shim=True)
    assert shim.firmwares == ("uefi", "secure-boot")
    mbr = bytearray(34 * 512)
    mbr[446:446 + 16] = bytes([0x80, 0, 0, 0, 0x83, 0, 0, 0]) + struct.pack("<II", 2048, 4096)
    mbr[510:512] = b"\x55\xaa"
    table, parts = parse_table(bytes(mbr))
    assert (table, parts[0].type, parts[0].bootable) == ("mbr", "0x83", True)
    assert DiskLayout(table, tuple(parts)).firmwares == ("bios",)
    assert parse_table(bytes(1024)) == ("none", [])


def test_machines_from_the_layout_and_refusals() -> None:
    parts = tuple(parse_table(_gpt_head([BIOS, ESP, LINUX]))[1])
    hybrid = DiskLayout("gpt", parts, efi_arch="amd64")
    assert [m.firmware for m in machines_for_layout(hybrid)] == [Firmware.BIOS, Firmware.UEFI]
    assert machines_for_layout(hybrid, ["uefi"]) == [BootMachine("amd64", Firmware.UEFI)]
    with pytest.raises(UsageError, match=r"this amd64 image cannot boot with secure-boot: its layout \(hybrid, "
                                         r"gpt\) supports bios, uefi"):
        machines_for_layout(hybrid, ["secure-boot"])
    arm = DiskLayout("gpt", tuple(parse_table(_gpt_head([ESP, LINUX]))[1]), efi_arch="arm64")
    assert machines_for_layout(arm) == [BootMachine("arm64", Firmware.UEFI)]
    with pytest.raises(UsageError, match="cannot boot with bios"):
        machines_for_layout(arm, ["bios"])
    with pytest.raises(UsageError, match="no boot partition"):
        machines_for_layout(DiskLayout("none"))
    with pytest.raises(UsageError, match="boots with UEFI only"):
        BootMachine("arm64", Firmware.BIOS)


# --- firmware discovery ----------------------------------------------------------------------------


def _descriptor(d: Path, name: str, arch: str, features: list[str], code: Path, tmpl: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(json.dumps({
        "interface-types": ["uefi"], "features": features,
        "mapping": {"device": "flash", "executable": {"filename": str(code), "format": "raw"},
                    "nvram-template": {"filename": str(tmpl), "format": "raw"}},
        "targets": [{"architecture": arch, "machines": ["pc-q35-*"]}]}))


def test_descriptors_are_preferred_and_secure_boot_needs_enrolled_keys(tmp_path: Path) -> None:
    files = {n: tmp_path / n for n in ("sb.fd", "sbvars.fd", "plain.fd", "vars.fd", "nokeys.fd")}
    for f in files.values():
        f.write_bytes(b"x")
    share, etc = tmp_path / "share", tmp_path / "etc"
    _descriptor(share, "40-sb.json", "x86_64", ["secure-boot", "enrolled-keys", "requires-smm"], files["sb.fd"],
                files["sbvars.fd"])
    _descriptor(share, "50-sb-nokeys.json", "x86_64", ["secure-boot", "requires-smm"], files["nokeys.fd"],
                files["vars.fd"])
    _descriptor(share, "60-plain.json", "x86_64", [], files["plain.fd"], files["vars.fd"])
    _descriptor(share, "70-missing.json", "aarch64", [], tmp_path / "absent.fd", files["vars.fd"])
    dirs = (etc, share)
    sb = find_uefi("x86_64", secure_boot=True, dirs=dirs, fallbacks={})
    assert (sb.code, sb.vars_template, sb.requires_smm) == (files["sb.fd"], files["sbvars.fd"], True)
    plain = find_uefi("x86_64", dirs=dirs, fallbacks={})
    assert plain.code == files["plain.fd"] and not plain.requires_smm  # SMM-free build preferred
    assert all(fw.code != tmp_path / "absent.fd" for fw in from_descriptors(dirs))
    # /etc overrides a descriptor of the same name in /usr/share
    _descriptor(etc, "60-plain.json", "x86_64", [], files["nokeys.fd"], files["vars.fd"])
    assert find_uefi("x86_64", dirs=dirs, fallbacks={}).code == files["nokeys.fd"]
    with pytest.raises(UsageError, match="no UEFI firmware for aarch64 found") as info:
        find_uefi("aarch64", dirs=dirs, fallbacks={})
    assert info.value.hint == "apt-get install qemu-efi-aarch64"
    fallback = find_uefi("aarch64", dirs=dirs, fallbacks={("aarch64", False): (
        (str(tmp_path / "nope.fd"), str(files["vars.fd"])), (str(files["plain.fd"]), str(files["vars.fd"])))})
    assert (fallback.code, fallback.source) == (files["plain.fd"], "fallback path")


# --- qemu machines -----------------------------------------------------------------------------------


def _cfg(tmp_path: Path, **kw: object) -> QemuConfig:
    return QemuConfig(disk=tmp_path / "d.qcow2", seed=None, accel="tcg", ssh_port=1, serial_log=tmp_path / "c",
                      qmp_socket=tmp_path / "q", **kw)  # type: ignore[arg-type]


def test_qemu_argv_for_ovmf_secure_boot_and_aavmf(tmp_path: Path) -> None:
    bios = qemu_argv(_cfg(tmp_path))
    assert "q35,accel=tcg" in bios and not any("pflash" in a for a in bios)
    sb_fw = UefiFirmware(Path("/fw/CODE.ms.fd"), Path("/fw/VARS.ms.fd"), "x86_64", True, True, "t")
    sb = qemu_argv(_cfg(tmp_path, uefi=sb_fw, uefi_vars=tmp_path / "v.fd"))
    assert sb[sb.index("-machine") + 1] == "q35,smm=on,accel=tcg"
    assert "driver=cfi.pflash01,property=secure,value=on" in sb
    assert "if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.ms.fd" in sb
    assert f"if=pflash,format=raw,unit=1,file={tmp_path / 'v.fd'}" in sb  # the copy, never the template
    aa_fw = UefiFirmware(Path("/fw/AAVMF_CODE.fd"), Path("/fw/AAVMF_VARS.fd"), "aarch64", False, False, "t")
    arm = qemu_argv(_cfg(tmp_path, uefi=aa_fw, uefi_vars=tmp_path / "v.fd", arch="aarch64",
                         binary="qemu-system-aarch64"))
    assert arm[0] == "qemu-system-aarch64"
    assert arm[arm.index("-machine") + 1] == "virt,accel=tcg"
    assert arm[arm.index("-cpu") + 1] == "max,pauth-impdef=on"
    assert "driver=cfi.pflash01,property=secure,value=on" not in arm
    with pytest.raises(ValueError, match="own copy"):
        qemu_argv(_cfg(tmp_path, uefi=aa_fw))


def test_the_guests_firmware_report_is_judged() -> None:
    sb = BootMachine("amd64", Firmware.SECURE_BOOT)
    assert judge_firmware(sb, "x86_64 uefi 1\n").passed
    off = judge_firmware(sb, "x86_64 uefi 0")
    assert off.findings == ("the guest reports Secure Boot off, expected on",)
    assert judge_firmware(BootMachine(), "x86_64 bios").passed
    assert judge_firmware(BootMachine(), "x86_64 uefi none").findings == (
        "the guest booted with UEFI, expected bios",)
    arm = judge_firmware(BootMachine("arm64", Firmware.UEFI), "aarch64 uefi none")
    assert arm.passed and arm.guest_arch == "aarch64" and arm.guest_secure_boot is None
    assert judge_firmware(BootMachine("arm64", Firmware.UEFI), "x86_64 uefi none").findings == (
        "the guest runs x86_64, expected aarch64",)
    assert not judge_firmware(BootMachine(), "").passed


# --- binfmt ------------------------------------------------------------------------------------------


def test_binfmt_problems_name_the_fix(tmp_path: Path) -> None:
    assert binfmt_problem("amd64", tmp_path) is None  # native
    assert "binfmt_misc is not mounted" in (binfmt_problem("arm64", tmp_path) or "")
    (tmp_path / "register").write_text("")
    assert "qemu-aarch64 is not registered" in (binfmt_problem("arm64", tmp_path) or "")
    (tmp_path / "qemu-aarch64").write_text("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n"
                                           "flags: P\n")
    assert "without the F flag" in (binfmt_problem("aarch64", tmp_path) or "")
    (tmp_path / "qemu-aarch64").write_text("disabled\nflags: PF\n")
    assert "disabled" in (binfmt_problem("arm64", tmp_path) or "")
    (tmp_path / "qemu-aarch64").write_text("enabled\nflags: PF\n")
    assert binfmt_problem("arm64", tmp_path) is None



def test_grubs_efi_banner_is_not_the_init_system() -> None:
    from imgsmith.boot.console import ConsoleParser, Stage
    parser = ConsoleParser("MARK")
    parser.feed("Welcome to GRUB!\n", 1.0)
    assert Stage.INIT not in parser.state.reached
    parser.feed("Welcome to Debian GNU/Linux 12 (bookworm)!\n", 2.0)
    assert parser.state.reached[Stage.INIT] == 2.0


def test_publish_takes_the_firmware_from_the_manifest(tmp_path: Path) -> None:
    from imgsmith.publish.firmware import firmware_for
    missing = tmp_path / "absent.raw"  # not read when the manifest says how it boots
    assert firmware_for({"boot": {"firmware": "hybrid"}}, missing, "raw") == "hybrid"
    assert firmware_for({"boot": {"firmware": "uefi"}}, missing, "raw") == "uefi"
    assert firmware_for({"boot": {"firmware": "bios"}}, missing, "raw") == "bios"
    disk = tmp_path / "uefi.raw"
    disk.write_bytes(_gpt_head([ESP, LINUX]))
    assert firmware_for({}, disk, "raw") == "uefi"  # an older manifest: read from the partition table
    disk.write_bytes(_gpt_head([BIOS, ESP, LINUX]))
    assert firmware_for({}, disk, "raw") == "hybrid"


def test_doctor_reports_arm64_binfmt_and_the_firmware_found() -> None:
    import subprocess
    import sys

    from imgsmith.host.binfmt import binfmt_problem
    r = subprocess.run([sys.executable, "-m", "imgsmith.cli.main", "doctor", "--no-launch", "--json"],
                       capture_output=True, text=True, check=True, timeout=300)
    report = json.loads(r.stdout)
    problem = binfmt_problem("arm64")
    assert report["binfmt_arm64"] == ("registered (arm64 bootstrap and chroot customize work)" if problem is None
                                      else f"unavailable: {problem}")
    for key, arch, secure in (("firmware_uefi_x86_64", "x86_64", False),
                              ("firmware_secure_boot_x86_64", "x86_64", True),
                              ("firmware_uefi_aarch64", "aarch64", False)):
        try:
            expected = find_uefi(arch, secure_boot=secure).describe()
        except UsageError as exc:
            expected = f"not found ({exc.hint})"
        assert report[key] == expected


def test_cloud_rules_follow_the_guest_architecture_and_firmware() -> None:
    """The rule functions over the two facts they read: every cloud's arm64 machines boot UEFI only."""
    from types import SimpleNamespace
    from typing import cast

    from imgsmith.clouds import PROFILES, checks
    from imgsmith.clouds.facts import Facts

    def facts(arch: str, modes: tuple[str, ...], table: str) -> Facts:
        return cast(Facts, SimpleNamespace(arch=arch, boot_modes=modes, table=table))
    arm, arm_bios = facts("aarch64", ("uefi",), "gpt"), facts("aarch64", ("bios",), "mbr")
    x86_uefi, hybrid, bios = facts("x86_64", ("uefi",), "gpt"), facts("x86_64", ("bios", "uefi"), "gpt"), \
        facts("x86_64", ("bios",), "mbr")
    tencent, aws, azure, gen2 = (PROFILES[n] for n in ("tencent", "aws", "azure", "azure-gen2"))

    # Tencent's x86 import takes MBR + BIOS; its arm64 machines boot UEFI from GPT.
    assert checks.boot_mode(arm, tencent) == [] and checks.partition_table(arm, tencent) == []
    assert [h.found for h in checks.boot_mode(x86_uefi, tencent)] == [
        "the disk boots with UEFI; Tencent Cloud CVM boots BIOS"]
    assert [h.found for h in checks.boot_mode(arm_bios, aws)] == [
        "the disk boots with BIOS; AWS VM Import's arm64 machines boot UEFI"]
    assert checks.boot_mode(arm_bios, aws)[0].fix.endswith("(imgsmith bootstrap --firmware uefi)")
    assert checks.boot_mode(hybrid, tencent) == [] and checks.boot_mode(hybrid, gen2) == []

    assert [h.found for h in checks.architecture(arm, PROFILES["vmware"])] == [
        "the guest is aarch64; VMware runs x86_64, i386"]
    assert all(checks.architecture(arm, PROFILES[c]) == [] for c in
               ("openstack", "aliyun", "tencent", "aws", "azure", "azure-gen2", "gcp", "kvm"))
    assert all(any(r.name == "architecture" for r in p.rules) for p in PROFILES.values())

    # Azure: either generation boots a hybrid or BIOS disk; UEFI-only and arm64 need Generation 2,
    # which boots nothing but UEFI.
    assert checks.azure_generation(hybrid, azure) == checks.azure_generation(bios, azure) == []
    assert [h.found for h in checks.azure_generation(x86_uefi, azure) + checks.azure_generation(arm, azure)] == [
        "the disk boots only with UEFI: it runs only as a Generation 2 VM",
        "the guest is aarch64 (arm64): it runs only as a Generation 2 VM"]
    assert [h.found for h in checks.boot_mode(bios, gen2)] == [
        "the disk boots with BIOS; Azure Generation 2 boots UEFI"]
    assert "generation" in {r.name for r in azure.rules} and "generation" not in {r.name for r in gen2.rules}
    assert (gen2.preset, gen2.formats, gen2.datasources) == ("azure", azure.formats, azure.datasources)
