"""`imgsmith check`: each negative case gives exactly its finding and exit code; the image never changes.

The cases are variants of one "good" phony Debian guest (tests/guests.py) that passes the
openstack, aliyun, tencent and kvm rules: it carries a kernel config, an initramfs (written
here, independently of imgsmith's reader, as an uncompressed early cpio followed by a
compressed main cpio, the layout dracut and initramfs-tools produce), GRUB, cloud-init and
its units. Each variant changes one thing. Layout cases (root not last, GPT with an ESP)
are made by re-partitioning the good guest's disk with sfdisk. The real bootstrapped Debian
image checks its real kernel and initramfs, on both backends.
"""

from __future__ import annotations

import gzip
import json
import lzma
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import zstandard

from guests import CATALOG, L, guest_image, sha256_file
from imgsmith.cli.main import main
from imgsmith.clouds import PROFILES
from imgsmith.clouds.check import check_image, parse_clouds
from imgsmith.clouds.initramfs import UnreadableInitramfs, list_files, modules_in
from imgsmith.errors import UsageError
from imgsmith.guest.session import SessionOptions

KVER = "6.1.0-18-amd64"
UUID = CATALOG["debian12"].uuid
CLOUDS = "openstack,aliyun,tencent,kvm"
ROOTLESS = pytest.mark.skipif(os.geteuid() != 0, reason="building guests and the chroot backend need root")
MODULE_PATHS = {
    "virtio_pci": "kernel/drivers/virtio/virtio_pci.ko", "virtio_blk": "kernel/drivers/block/virtio_blk.ko",
    "virtio_net": "kernel/drivers/net/virtio_net.ko", "virtio_scsi": "kernel/drivers/scsi/virtio_scsi.ko",
    "hv_vmbus": "kernel/drivers/hv/hv_vmbus.ko", "hv_storvsc": "kernel/drivers/scsi/hv_storvsc.ko",
    "hv_netvsc": "kernel/drivers/net/hyperv/hv_netvsc.ko",
}


# --------------------------------------------------------------------------- an initramfs, made here

def cpio(files: Mapping[str, bytes]) -> bytes:
    """A newc cpio archive (as the kernel and `cpio -H newc` read it), padded to 512 bytes."""
    out = bytearray()
    for ino, (name, data) in enumerate([*files.items(), ("TRAILER!!!", b"")], 1):
        raw = name.encode() + b"\0"
        mode = 0o100644 if name != "TRAILER!!!" else 0
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0]
        out += b"070701" + b"".join(f"{v:08x}".encode() for v in fields) + raw
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out + b"\0" * (-len(out) % 512))


def initramfs(modules: list[str], compress: str = "gzip") -> bytes:
    early = cpio({"kernel/x86/microcode/GenuineIntel.bin": b"\x01" * 64})
    main_files = {"init": b"#!/bin/sh\n", **{f"usr/lib/modules/{KVER}/{MODULE_PATHS[m]}": b"\x7fELF" for m in modules}}
    body = cpio(main_files)
    if compress == "zstd":
        packed: bytes = zstandard.ZstdCompressor().compress(body)
    elif compress == "xz":
        packed = lzma.compress(body)
    else:
        packed = gzip.compress(body)
    return early + packed


def test_initramfs_reader_lists_early_and_compressed_archives() -> None:
    for kind in ("gzip", "xz", "zstd"):
        names = list_files(initramfs(["virtio_blk", "virtio_pci"], kind))
        assert names[0] == "kernel/x86/microcode/GenuineIntel.bin"
        assert modules_in(names) == {"virtio_blk", "virtio_pci"}
    with pytest.raises(UnreadableInitramfs, match="neither cpio nor a known compression"):
        list_files(b"\x89PNG not an initramfs")


def test_unknown_cloud_is_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown cloud 'digitalocean'"):
        parse_clouds("aws,digitalocean")
    assert parse_clouds(["aws,gcp", "aws"]) == ["aws", "gcp"]
    assert main(["check", str(tmp_path / "missing.qcow2"), "--for", "aws"]) == 2
    assert "missing.qcow2: no such disk image" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "missing.qcow2"), "--for", "nope"]) == 2


def test_every_rule_has_a_source_and_a_unique_id() -> None:
    ids = [p.rule_id(r) for p in PROFILES.values() for r in p.rules]
    assert len(ids) == len(set(ids))
    assert all(r.source.startswith("https://") for p in PROFILES.values() for r in p.rules)
    assert {"VirtioNotInstall", "CloudInitNotInstalled", "PartitionNotPresent", "RootPartitionNotFound",
            "InvalidFormatSize"} <= {r.error_name for r in PROFILES["tencent"].rules}


# --------------------------------------------------------------------------- the phony variants

def good(**changes: object) -> dict[str, object]:
    """The good variant's extra files, with *changes* (path -> content, or None to leave a path out)."""
    files: dict[str, object] = {
        f"/boot/vmlinuz-{KVER}": b"phony kernel",
        f"/boot/config-{KVER}": "CONFIG_VIRTIO_PCI=m\nCONFIG_VIRTIO_BLK=m\nCONFIG_VIRTIO_NET=m\n"
                                "CONFIG_BLK_DEV_NVME=y\n",
        f"/boot/initrd.img-{KVER}": initramfs(list(MODULE_PATHS)),
        f"/usr/lib/modules/{KVER}/modules.dep": "".join(f"{p}:\n" for p in MODULE_PATHS.values()),
        "/boot/grub/grub.cfg": f"menuentry 'Debian' {{\n\tlinux\t/boot/vmlinuz-{KVER} root=UUID={UUID} ro "
                               f"console=tty0 console=ttyS0,115200n8\n\tinitrd\t/boot/initrd.img-{KVER}\n}}\n",
        "/etc/default/grub": 'GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"\n',
        "/usr/bin/cloud-init": "#!/bin/sh\nexit 0\n", "/usr/bin/growpart": "#!/bin/sh\nexit 0\n",
        "/usr/bin/qemu-ga": "#!/bin/sh\nexit 0\n",
        "/etc/cloud/cloud.cfg": "datasource_list: [NoCloud, ConfigDrive, OpenStack, AliYun, Azure, None]\n",
        "/etc/systemd/system/cloud-init.target.wants/cloud-init.service": L("/lib/systemd/system/cloud-init.service"),
        "/etc/udev/rules.d/70-persistent-net.rules": "",  # the phony default binds eth0's MAC: not in this variant
    }
    for path, content in changes.items():
        if content is None:
            files.pop(path, None)
        else:
            files[path] = content
    return files


def image(**changes: object) -> Path:
    return guest_image("debian12", extra=good(**changes))  # type: ignore[arg-type]


def check_json(disk: Path, clouds: str, capsys: pytest.CaptureFixture[str], *extra: str,
               backend: str = "chroot") -> tuple[int, dict[str, Any]]:
    """Run `imgsmith check --json`; assert the image's bytes did not change; return (exit code, document)."""
    before = sha256_file(disk)
    code = main(["check", str(disk), "--for", clouds, "--backend", backend, "--json", *extra])
    assert sha256_file(disk) == before
    return code, json.loads(capsys.readouterr().out)


def errors(doc: dict[str, Any]) -> set[str]:
    return {f["rule"] for f in doc["findings"] if f["severity"] == "error"}


def rules(doc: dict[str, Any]) -> set[str]:
    return {f["rule"] for f in doc["findings"]}


SWAP = "/etc/fstab", f"UUID={UUID} / ext4 errors=remount-ro 0 1\n/swapfile none swap sw 0 0\n"
DEVNAME = "/etc/fstab", "/dev/sda1 / ext4 errors=remount-ro 0 1\n"
HWADDR = "/etc/sysconfig/network-scripts/ifcfg-eth0", "DEVICE=eth0\nBOOTPROTO=dhcp\nHWADDR=52:54:00:12:34:56\n"
NARROW_DS = "/etc/cloud/cloud.cfg", "datasource_list: [ConfigDrive, None]\n"
NO_VIRTIO = f"/boot/initrd.img-{KVER}", initramfs(["hv_vmbus", "hv_storvsc"], "zstd")

# name: (changes, the errors expected for openstack, aliyun, tencent and kvm)
CASES: dict[str, tuple[dict[str, object], set[str]]] = {
    "good": ({}, set()),
    "swap in fstab": (dict([SWAP]), {"aliyun.no-swap"}),
    "fstab by /dev/sda1": (dict([DEVNAME]), {"aliyun.fstab-uuid"}),
    "HWADDR in ifcfg": (dict([HWADDR]), {"openstack.no-mac-binding", "aliyun.no-mac-binding",
                                         "tencent.no-mac-binding"}),
    "datasource list without AliYun": (dict([NARROW_DS]), {"aliyun.datasource"}),
    "cloud-init absent": ({"/usr/bin/cloud-init": None}, {"openstack.cloud-init", "aliyun.cloud-init",
                                                         "tencent.cloud-init"}),
    "no virtio in the initramfs": (dict([NO_VIRTIO]), {"openstack.virtio", "aliyun.virtio", "tencent.virtio",
                                                       "kvm.virtio"}),
}


@pytest.mark.guest
@ROOTLESS
@pytest.mark.parametrize("case", list(CASES))
def test_each_variant_gives_exactly_its_errors(case: str, capsys: pytest.CaptureFixture[str]) -> None:
    changes, expected = CASES[case]
    code, doc = check_json(image(**changes), CLOUDS, capsys)
    assert errors(doc) == expected
    assert code == (1 if expected else 0)
    if case == "good":  # warnings only where the phony guest really differs from a cloud image
        assert rules(doc) == set()
    if case == "no virtio in the initramfs":
        found = [f for f in doc["findings"] if f["rule"] == "tencent.virtio"]
        assert {f["error_name"] for f in found} == {"VirtioNotInstall"}
        assert {f["where"] for f in found} == {f"/boot/initrd.img-{KVER}"}
        assert [f["found"] for f in found] == [f"kernel {KVER}: {m} neither built in nor in the initramfs"
                                               for m in ("virtio_pci", "virtio_blk")]
    if case == "cloud-init absent":
        finding = next(f for f in doc["findings"] if f["rule"] == "tencent.cloud-init")
        assert finding["error_name"] == "CloudInitNotInstalled"
    if case == "swap in fstab":
        finding = next(f for f in doc["findings"] if f["rule"] == "aliyun.no-swap")
        assert finding["found"] == "/etc/fstab line 2 mounts swap (/swapfile)"


def _repartition(src: Path, dest: Path, script: str, root_number: int, esp: int | None = None) -> Path:
    """The good guest's root filesystem in a new disk laid out by the sfdisk *script*."""
    raw, fs = dest.with_suffix(".raw"), dest.with_suffix(".fs")
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", src, raw], check=True)
    subprocess.run(["dd", f"if={raw}", f"of={fs}", "bs=1M", "skip=1", "status=none"], check=True)
    with raw.open("wb") as f:
        f.truncate(1024 << 20)
    subprocess.run(["sfdisk", "--quiet", raw], input=script, text=True, check=True)
    parts = json.loads(subprocess.run(["sfdisk", "--json", raw], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]["partitions"]
    start = {i + 1: p["start"] for i, p in enumerate(parts)}
    subprocess.run(["dd", f"if={fs}", f"of={raw}", "bs=512", f"seek={start[root_number]}", "conv=notrunc,sparse",
                    "status=none"], check=True)
    if esp is not None:
        vfat = dest.with_suffix(".esp")
        subprocess.run(["mkfs.fat", "-C", "-F", "32", vfat, str(parts[esp - 1]["size"] // 2)], check=True,
                       capture_output=True)
        subprocess.run(["dd", f"if={vfat}", f"of={raw}", "bs=512", f"seek={start[esp]}", "conv=notrunc",
                        "status=none"], check=True)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, dest], check=True)
    for tmp in (raw, fs, dest.with_suffix(".esp")):
        tmp.unlink(missing_ok=True)
    return dest


@pytest.mark.guest
@ROOTLESS
def test_layouts_root_not_last_and_gpt_esp_on_both_backends(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    base = image()
    not_last = _repartition(base, tmp_path / "not-last.qcow2",
                            "label: dos\nstart=2048, size=1046528, type=83\nsize=100MiB, type=83\n", 1)
    code, doc = check_json(not_last, CLOUDS, capsys)
    assert (code, errors(doc)) == (1, {"aliyun.root-last"})
    assert {"openstack.root-last", "tencent.root-last"} <= rules(doc)  # warnings there: growpart cannot grow it
    gpt = _repartition(base, tmp_path / "gpt-esp.qcow2",
                       "label: gpt\nstart=2048, size=100MiB, type=U\nsize=1046528, type=L\n", 2, esp=1)
    for backend in ("chroot", "appliance"):  # the appliance once: its partition listing must agree
        code, doc = check_json(gpt, CLOUDS, capsys, backend=backend)
        assert (code, errors(doc)) == (1, {"tencent.partition-table", "tencent.boot-mode"}), backend
        found = {f["rule"]: f["found"] for f in doc["findings"]}
        assert found["tencent.partition-table"] == "the disk has a GPT partition table; Tencent Cloud CVM accepts MBR"
        assert found["tencent.boot-mode"] == "the disk boots with UEFI; Tencent Cloud CVM boots BIOS"
    # Hyper-V and Azure generation 2 boot UEFI: the ESP is what they need; Azure says a UEFI-only disk needs Gen2.
    code, doc = check_json(gpt, "hyperv,azure,azure-gen2", capsys)
    assert not {"hyperv.boot-mode", "azure-gen2.boot-mode", "azure.boot-mode"} & rules(doc)
    generation = next(f for f in doc["findings"] if f["rule"] == "azure.generation")
    assert (generation["severity"], generation["found"]) == ("warning", "the disk boots only with UEFI: it runs "
                                                                        "only as a Generation 2 VM")
    code, doc = check_json(not_last, "hyperv,azure,azure-gen2", capsys)
    assert {"hyperv.boot-mode", "azure-gen2.boot-mode"} <= errors(doc) and "azure.generation" not in rules(doc)


@pytest.mark.guest
@ROOTLESS
def test_vhd_size_rules_come_from_the_azure_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = image()
    vhds = {}
    for name, size in (("whole-mib", 512 << 20), ("odd", (512 << 20) + 512)):
        grown = tmp_path / f"{name}.qcow2"
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", base, grown], check=True)
        subprocess.run(["qemu-img", "resize", "-q", "-f", "qcow2", grown, str(size)], check=True)
        vhds[name] = tmp_path / f"{name}.vhd"
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "vpc", "-o", "subformat=fixed,force_size=on",
                        grown, vhds[name]], check=True)
    code, doc = check_json(vhds["whole-mib"], "azure", capsys, "--format", "vpc")
    assert (code, errors(doc)) == (0, set())
    code, doc = check_json(vhds["odd"], "azure", capsys)  # probed: a fixed VHD reads as raw, its footer says VHD
    assert (code, errors(doc)) == (1, {"azure.format-rules"})
    finding = next(f for f in doc["findings"] if f["rule"] == "azure.format-rules")
    assert "whole number of MiB" in finding["found"] and str((512 << 20) + 512) in finding["found"]


@pytest.mark.guest
@ROOTLESS
def test_a_disk_without_an_os_gives_root_partition_not_found(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    blank = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", blank, "64M"], check=True)
    code, doc = check_json(blank, "tencent,aws", capsys)
    assert (code, errors(doc)) == (1, {"tencent.root-found", "aws.root-found"})
    assert {f["error_name"] for f in doc["findings"]} == {"RootPartitionNotFound", None}


# --------------------------------------------------------------------------- the real Debian image

@pytest.fixture(scope="session")
def debian_image() -> Path:
    if os.geteuid() != 0:
        pytest.skip("bootstrapping an image needs root (loop devices, mounts, chroot)")
    from imgsmith.source.bootstrap import BootstrapSpec, bootstrap_image
    cache = Path(os.environ.get("IMGSMITH_CACHE") or "/var/tmp/imgsmith-test-cache")
    return bootstrap_image(BootstrapSpec(distro="debian", release="bookworm", firmware="bios"), cache_dir=cache)


@pytest.mark.guest
def test_bootstrapped_debian_passes_the_six_clouds(debian_image: Path) -> None:
    before = sha256_file(debian_image)
    report = check_image(debian_image, ["openstack", "aliyun", "tencent", "aws", "azure", "gcp"],
                         session=SessionOptions(backend="chroot"))
    assert sha256_file(debian_image) == before
    assert report.errors == []
    # the real initramfs-tools image was read: its virtio and Hyper-V drivers were found, so no driver finding
    assert not {f.rule for f in report.findings} & {"openstack.virtio", "azure.drivers", "gcp.drivers"}
    assert {f.rule for f in report.findings if f.severity == "warning"} == {
        "openstack.qemu-guest-agent", "aws.format", "azure.format", "gcp.format"}


def test_docs_clouds_md_is_generated_from_the_rules() -> None:
    from imgsmith.clouds.doc import render_clouds_doc
    doc = Path(__file__).parent.parent / "docs" / "clouds.md"
    assert doc.read_text() == render_clouds_doc(), "docs/clouds.md is stale: run `make docs`"


def _on_lvm(src: Path, dest: Path) -> Path:
    """The good guest's root filesystem moved onto a logical volume (vg0/root), the LVM made inside the
    libguestfs appliance so the host's device-mapper state is never touched."""
    import guestfs  # type: ignore[import-untyped,unused-ignore]
    raw, fs = dest.with_suffix(".raw"), dest.with_suffix(".fs")
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", src, raw], check=True)
    subprocess.run(["dd", f"if={raw}", f"of={fs}", "bs=1M", "skip=1", "status=none"], check=True)
    with raw.open("wb") as f:
        f.truncate(1024 << 20)
    subprocess.run(["sfdisk", "--quiet", raw], input="label: dos\nstart=2048, type=8e\n", text=True, check=True)
    g = guestfs.GuestFS(python_return_dict=True)
    try:
        g.add_drive_opts(str(raw), format="raw")
        g.launch()
        g.pvcreate("/dev/sda1")
        g.vgcreate("vg0", ["/dev/sda1"])
        g.lvcreate("root", "vg0", fs.stat().st_size >> 20)
        g.upload(str(fs), "/dev/vg0/root")
        g.shutdown()
    finally:
        g.close()
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, dest], check=True)
    for tmp in (raw, fs):
        tmp.unlink(missing_ok=True)
    return dest


@pytest.mark.guest
@ROOTLESS
def test_lvm_root_is_refused_where_the_cloud_rejects_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    disk = _on_lvm(image(), tmp_path / "lvm.qcow2")
    code, doc = check_json(disk, CLOUDS, capsys, backend="appliance")  # chroot refuses LVM guests
    assert (code, errors(doc)) == (1, {"aliyun.no-lvm-root"}), doc["findings"]
    finding = next(f for f in doc["findings"] if f["rule"] == "aliyun.no-lvm-root")
    assert finding["found"].startswith("the root filesystem is on LVM (/dev/")
