"""Publish pieces that need no server: the firmware read from a real partition table, refusals, names."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from imgsmith.definition.model import PublishEntry
from imgsmith.errors import UsageError
from imgsmith.publish.firmware import firmware_of
from imgsmith.publish.oci import layer_headers
from imgsmith.publish.run import artifact_for
from imgsmith.publish.spec import PublishSpec


@pytest.mark.parametrize(("table", "want"), [
    ("label: gpt\n,8M,U\n,,L\n", "uefi"),                                      # ESP only
    ("label: gpt\n,1M,21686148-6449-6E6F-744E-656564454649\n,8M,U\n,,L\n", "bios"),  # hybrid (bios_grub)
    ("label: dos\n,,L,*\n", "bios"),
])
def test_firmware_from_the_partition_table(tmp_path: Path, table: str, want: str) -> None:
    disk = tmp_path / "d.raw"
    subprocess.run(["truncate", "-s", "20M", disk], check=True)
    subprocess.run(["sfdisk", "-q", disk], input=table.encode(), check=True)
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", disk, tmp_path / "d.qcow2"], check=True)
    assert firmware_of(tmp_path / "d.qcow2", "qcow2") == want


def test_refused_output_is_not_published(tmp_path: Path) -> None:
    manifest = {"name": "x", "outputs": [], "refused": [{"path": "x-aliyun.qcow2", "checks": {
        "cloud": "aliyun", "errors": [{"rule": "aliyun.virtio", "found": "no virtio_blk in the initramfs"}]}}]}
    spec = PublishSpec(PublishEntry(name="s", output="aliyun", to="s3", bucket="b"), "s3", "x-aliyun.qcow2")
    with pytest.raises(UsageError) as e:
        artifact_for(tmp_path, manifest, spec)
    assert e.value.message == ("s: x-aliyun.qcow2 was refused by the build's check for aliyun: aliyun.virtio: "
                               "no virtio_blk in the initramfs; nothing to publish")
    json.dumps(manifest)


def test_layer_is_a_whole_tar(tmp_path: Path) -> None:
    import io
    import tarfile
    head, tail = layer_headers("d.qcow2", 3)
    with tarfile.open(fileobj=io.BytesIO(head + b"abc" + tail)) as tar:
        m = tar.getmember("disk/d.qcow2")
        assert (m.uid, m.gid, m.size, m.mode) == (107, 107, 3, 0o444)
        f = tar.extractfile(m)
        assert f is not None and f.read() == b"abc"
