"""`cloud-ready`: a negative variant fails `imgsmith check`, cloud-ready fixes it, check then passes.

The variants are test_check.py's good phony Debian guest with things broken. Phony guests
have no dracut, update-initramfs or apt: the stand-ins written here record their call in
/var/log/pkgstub.log (as the suite's package stubs do) and do the one thing the real tool
does that the check then reads: apt-get puts the installed package's binary in place, and
update-initramfs / dracut pack the listed modules into a new initramfs (a
gzip'd newc cpio made by busybox). The real tools run in the real-image tests at the end:
the bootstrapped Debian 12 image with virtio stripped from its initramfs, repaired by
cloud-ready with the real update-initramfs in the chroot backend, and examples/debian12-clouds.yaml
built and checked for openstack, aliyun, tencent and aws.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from guests import F, fresh_copy, read_files
from imgsmith.cli.main import main
from imgsmith.clouds import PROFILES
from imgsmith.clouds.initramfs import list_files, modules_in
from test_check import KVER, MODULE_PATHS, UUID, good, initramfs

pytestmark = [pytest.mark.guest, pytest.mark.skipif(os.geteuid() != 0, reason="phony guests need root")]

REPO = Path(__file__).parent.parent
IMGSMITH = [sys.executable, "-m", "imgsmith.cli.main"]
CLOUDS = "openstack,aliyun,tencent"

APT = """#!/bin/sh
printf '%s\\n' "apt-get $*" >> /var/log/pkgstub.log
case " $* " in *" install "*) ;; *) exit 0 ;; esac
for p in "$@"; do
  case "$p" in
    cloud-init) f=/usr/bin/cloud-init ;;
    cloud-guest-utils) f=/usr/bin/growpart ;;
    qemu-guest-agent) f=/usr/bin/qemu-ga ;;
    *) continue ;;
  esac
  printf '#!/bin/sh\\nexit 0\\n' > "$f"; chmod 755 "$f"
done
"""
# Packs what the real tools would: the modules listed (initramfs-tools) or added (dracut), found in modules.dep.
PACK = """
pack() {  # pack OUTPUT VERSION MODULE...
  out=$1 v=$2; shift 2; d=$(mktemp -d)
  for m in "$@"; do
    p=$(grep "/$m\\.ko:" "/usr/lib/modules/$v/modules.dep" | cut -d: -f1)
    [ -n "$p" ] || { echo "no module $m" >&2; exit 1; }
    mkdir -p "$d/usr/lib/modules/$v/${p%/*}"; : > "$d/usr/lib/modules/$v/$p"
  done
  echo '#!/bin/sh' > "$d/init"
  (cd "$d" && find . | cpio -o -H newc 2>/dev/null) | gzip > "$out"
  rm -rf "$d"
}
"""
UPDATE_INITRAMFS = f"""#!/bin/sh
printf '%s\\n' "update-initramfs $*" >> /var/log/pkgstub.log
{PACK}
[ "$1 $2" = "-u -k" ] || [ "$1 $2" = "-c -k" ] || exit 2
pack "/boot/initrd.img-$3" "$3" $(grep -v '^#' /etc/initramfs-tools/modules | awk '{{print $1}}')
"""
DRACUT = f"""#!/bin/sh
printf '%s\\n' "dracut $*" >> /var/log/pkgstub.log
{PACK}
drivers=
while [ $# -gt 2 ]; do
  case "$1" in --add-drivers) drivers=$2; shift ;; esac; shift
done
pack "$1" "$2" $drivers
"""
NETPLAN = ("network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n      match:\n"
           "        macaddress: '52:54:00:12:34:56'\n      set-name: eth0\n")
BROKEN: dict[str, object] = {  # everything cloud-ready knows how to fix, broken at once
    "/etc/fstab": "/dev/sda1 / ext4 errors=remount-ro 0 1\n/swapfile none swap sw 0 0\n",
    f"/boot/initrd.img-{KVER}": initramfs(["hv_vmbus", "hv_storvsc"], "zstd"),
    "/boot/grub/grub.cfg": f"menuentry 'Debian' {{\n\tlinux\t/boot/vmlinuz-{KVER} root=/dev/sda1 ro quiet\n"
                           f"\tinitrd\t/boot/initrd.img-{KVER}\n}}\n",
    "/etc/default/grub": 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX="quiet console=tty1"\nGRUB_DISABLE_LINUX_UUID=true\n',
    "/etc/cloud/cloud.cfg": "datasource_list: [NoCloud, None]\n",
    "/etc/cloud/cloud-init.disabled": "",
    "/etc/sysconfig/network-scripts/ifcfg-eth0": "DEVICE=eth0\nBOOTPROTO=dhcp\nHWADDR=52:54:00:12:34:56\n",
    "/etc/udev/rules.d/70-persistent-net.rules":
        'SUBSYSTEM=="net", ACTION=="add", ATTR{address}=="52:54:00:12:34:56", NAME="eth0"\n',
    "/etc/netplan/50-cloud-init.yaml": NETPLAN,
    "/usr/bin/growpart": None, "/usr/bin/qemu-ga": None,
    "/usr/bin/apt-get": F(APT, 0o755), "/usr/sbin/update-initramfs": F(UPDATE_INITRAMFS, 0o755),
    "/etc/initramfs-tools/modules": "# modules\nhv_vmbus\nhv_storvsc\n",
}


def check(disk: Path, clouds: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main(["check", str(disk), "--for", clouds, "--backend", "chroot", "--json"])
    return code, json.loads(capsys.readouterr().out)


def customize(disk: Path, *args: str, backend: str = "chroot") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IMGSMITH, "customize", "-a", str(disk), "--backend", backend, "--trust-image", *args],
                          capture_output=True, text=True, check=False, timeout=1800)


def test_broken_guest_fails_check_cloud_ready_fixes_everything(backend: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    disk = fresh_copy("debian12", tmp_path, extra=good(**BROKEN))  # type: ignore[arg-type]
    code, doc = check(disk, CLOUDS, capsys)
    assert code == 1
    assert {f["rule"] for f in doc["findings"] if f["severity"] == "error"} >= {
        "aliyun.no-swap", "aliyun.fstab-uuid", "aliyun.grub-uuid", "aliyun.datasource", "openstack.virtio",
        "tencent.virtio", "openstack.no-mac-binding", "openstack.cloud-init-enabled", "openstack.datasource"}
    r = customize(disk, "--cloud-ready", CLOUDS, backend=backend)
    assert r.returncode == 0, r.stderr
    code, doc = check(disk, CLOUDS, capsys)
    assert (code, doc["findings"]) == (0, [])
    files = read_files(disk, ["/etc/fstab", "/boot/grub/grub.cfg", "/etc/default/grub",
                              "/etc/cloud/cloud.cfg.d/91-imgsmith-datasource.cfg", "/etc/initramfs-tools/modules",
                              "/etc/sysconfig/network-scripts/ifcfg-eth0", "/etc/netplan/50-cloud-init.yaml",
                              "/etc/udev/rules.d/70-persistent-net.rules", "/etc/cloud/cloud-init.disabled",
                              "/var/log/pkgstub.log", f"/boot/initrd.img-{KVER}"])
    assert files["/etc/fstab"] == (f"UUID={UUID} / ext4 errors=remount-ro 0 1\n"
                                   "# swap removed by imgsmith: /swapfile none swap sw 0 0\n").encode()
    assert files["/boot/grub/grub.cfg"] == (
        f"menuentry 'Debian' {{\n\tlinux\t/boot/vmlinuz-{KVER} root=UUID={UUID} ro quiet console=tty0 "
        f"console=ttyS0,115200n8\n\tinitrd\t/boot/initrd.img-{KVER}\n}}\n").encode()
    assert files["/etc/default/grub"] == b'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX="quiet console=tty0 ' \
                                         b'console=ttyS0,115200n8"\n'
    ds = yaml.safe_load(files["/etc/cloud/cloud.cfg.d/91-imgsmith-datasource.cfg"] or b"")
    assert ds == {"datasource_list": ["NoCloud", "OpenStack", "ConfigDrive", "AliYun", "None"]}
    assert files["/etc/initramfs-tools/modules"] == b"# modules\nhv_vmbus\nhv_storvsc\nvirtio_pci\nvirtio_blk\n"
    assert files["/etc/sysconfig/network-scripts/ifcfg-eth0"] == b"DEVICE=eth0\nBOOTPROTO=dhcp\n"
    assert yaml.safe_load(files["/etc/netplan/50-cloud-init.yaml"] or b"") == {
        "network": {"version": 2, "ethernets": {"eth0": {"dhcp4": True}}}}
    assert files["/etc/udev/rules.d/70-persistent-net.rules"] is None
    assert files["/etc/cloud/cloud-init.disabled"] is None
    log = (files["/var/log/pkgstub.log"] or b"").decode().splitlines()
    assert "apt-get -q -y -o Dpkg::Options::=--force-confnew install cloud-guest-utils qemu-guest-agent" in log
    assert f"update-initramfs -u -k {KVER}" in log
    assert not any(line.startswith("systemctl") for line in log)  # a unit is enabled already: nothing to enable
    assert modules_in(list_files(files[f"/boot/initrd.img-{KVER}"] or b"")) == {
        "hv_vmbus", "hv_storvsc", "virtio_pci", "virtio_blk"}


def test_cloud_init_absent_is_installed_then_its_datasource_set(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Two rounds: the install brings cloud-init, whose datasource list the next round fixes."""
    disk = fresh_copy("debian12", tmp_path, extra=good(**{  # type: ignore[arg-type]
        "/usr/bin/cloud-init": None, "/etc/cloud/cloud.cfg": "datasource_list: [ConfigDrive, None]\n",
        "/usr/bin/apt-get": F(APT, 0o755)}))
    code, doc = check(disk, "aliyun,tencent", capsys)
    assert (code, {f["rule"] for f in doc["findings"]}) == (1, {"aliyun.cloud-init", "tencent.cloud-init"})
    r = customize(disk, "--cloud-ready", "aliyun,tencent")
    assert r.returncode == 0, r.stderr
    code, doc = check(disk, "aliyun,tencent", capsys)
    assert (code, doc["findings"]) == (0, [])
    files = read_files(disk, ["/var/log/pkgstub.log", "/etc/cloud/cloud.cfg.d/91-imgsmith-datasource.cfg"])
    assert "install cloud-init" in (files["/var/log/pkgstub.log"] or b"").decode()
    assert yaml.safe_load(files["/etc/cloud/cloud.cfg.d/91-imgsmith-datasource.cfg"] or b"") == {
        "datasource_list": ["ConfigDrive", "AliYun", "None"]}


def test_dracut_on_the_redhat_family(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra = {
        f"/boot/vmlinuz-{KVER}": b"phony kernel", f"/boot/config-{KVER}": "CONFIG_VIRTIO_PCI=m\n",
        f"/boot/initramfs-{KVER}.img": initramfs(["hv_vmbus"], "xz"),
        f"/usr/lib/modules/{KVER}/modules.dep": "".join(f"{p}:\n" for p in MODULE_PATHS.values()),
        "/boot/grub2/grub.cfg": f"menuentry 'Rocky' {{\n\tlinux /vmlinuz-{KVER} root=UUID=x ro\n}}\n",
        "/usr/bin/dracut": F(DRACUT, 0o755),
    }
    disk = fresh_copy("rocky9", tmp_path, extra=extra)  # type: ignore[arg-type]
    code, doc = check(disk, "kvm", capsys)
    assert (code, {f["rule"] for f in doc["findings"]}) == (1, {"kvm.virtio"})
    r = customize(disk, "--cloud-ready", "kvm")
    assert r.returncode == 0, r.stderr
    code, doc = check(disk, "kvm", capsys)
    assert (code, doc["findings"]) == (0, [])
    files = read_files(disk, ["/var/log/pkgstub.log", "/etc/dracut.conf.d/90-imgsmith-cloud.conf"])
    assert f"dracut -f --no-hostonly --add-drivers virtio_pci virtio_blk /boot/initramfs-{KVER}.img {KVER}" in \
        (files["/var/log/pkgstub.log"] or b"").decode().splitlines()
    assert files["/etc/dracut.conf.d/90-imgsmith-cloud.conf"] == b'add_drivers+=" virtio_pci virtio_blk "\n'


def test_each_fix_operation_alone(backend: str, tmp_path: Path) -> None:
    """The fixes are ordinary operations: on the command line, in order, with their own arguments."""
    disk = fresh_copy("debian12", tmp_path, extra=good(**BROKEN))  # type: ignore[arg-type]
    r = customize(disk, "--fstab-uuid", "--remove-swap", "--grub-uuid", "--serial-console", "hvc0",
                  "--datasource-list", "Ec2,None", "--remove-mac-binding", "--cloud-init-enable",
                  "--initramfs-drivers", "virtio_scsi", backend=backend)
    assert r.returncode == 0, r.stderr
    files = read_files(disk, ["/etc/fstab", "/boot/grub/grub.cfg", "/etc/cloud/cloud.cfg.d/91-imgsmith-datasource.cfg",
                              "/etc/initramfs-tools/modules", "/etc/udev/rules.d/70-persistent-net.rules"])
    assert (files["/etc/fstab"] or b"").startswith(f"UUID={UUID} / ext4".encode())
    assert f"root=UUID={UUID} ro quiet console=tty0 console=hvc0,115200n8\n".encode() in (files["/boot/grub/grub.cfg"]
                                                                                          or b"")
    assert b"datasource_list: [Ec2, None]" in (files["/etc/cloud/cloud.cfg.d/91-imgsmith-datasource.cfg"] or b"")
    assert (files["/etc/initramfs-tools/modules"] or b"").endswith(b"\nvirtio_scsi\n")
    assert files["/etc/udev/rules.d/70-persistent-net.rules"] is None


def test_cloud_ready_in_a_definition_and_unknown_clouds() -> None:
    from imgsmith.clouds.ready import CloudReady
    from imgsmith.errors import UsageError
    from imgsmith.ops.base import ParseContext
    ctx = ParseContext(check_files=False)
    assert CloudReady.from_yaml(["openstack", "aliyun,tencent"], ctx).clouds == ("openstack", "aliyun", "tencent")
    assert CloudReady.from_yaml("aws", ctx).describe() == "--cloud-ready aws"
    with pytest.raises(UsageError, match="unknown cloud 'digitalocean'"):
        CloudReady.from_yaml(["digitalocean"], ctx)
    with pytest.raises(UsageError, match="expected a cloud name or a list"):
        CloudReady.from_yaml([1], ctx)
    assert set(PROFILES) <= set(CloudReady.yaml_schema()["anyOf"][1]["items"]["enum"])
    token = CloudReady.parse("aws", ctx).cache_token()
    assert (token["op"], token["clouds"]) == ("cloud-ready", ["aws"]) and "aws.nvme" in token["fixes"]


# --------------------------------------------------------------------------- the real Debian image

@pytest.fixture(scope="module")
def debian_image() -> Path:
    from imgsmith.source.bootstrap import BootstrapSpec, bootstrap_image
    cache = Path(os.environ.get("IMGSMITH_CACHE") or "/var/tmp/imgsmith-test-cache")
    return bootstrap_image(BootstrapSpec(distro="debian", release="bookworm", firmware="bios"), cache_dir=cache)


def test_real_debian_initramfs_without_virtio_is_regenerated(debian_image: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The real update-initramfs, in the chroot backend, on the bootstrapped image stripped of virtio."""
    disk = tmp_path / "debian.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", debian_image, "-F", "qcow2", disk], check=True)
    strip = ("sed -i 's/^MODULES=.*/MODULES=list/' /etc/initramfs-tools/initramfs.conf && "
             "update-initramfs -u -k all")
    r = customize(disk, "--run-command", strip)
    assert r.returncode == 0, r.stderr
    code, doc = check(disk, "openstack", capsys)
    assert code == 1 and "openstack.virtio" in {f["rule"] for f in doc["findings"] if f["severity"] == "error"}
    r = customize(disk, "--cloud-ready", "openstack")
    assert r.returncode == 0, r.stderr
    code, doc = check(disk, "openstack", capsys)
    assert (code, [f["rule"] for f in doc["findings"]]) == (0, [])  # qemu-guest-agent was installed too
    kver = next(p.name[len("config-"):] for p in _boot_listing(disk) if p.name.startswith("config-"))
    files = read_files(disk, [f"/boot/initrd.img-{kver}", "/etc/initramfs-tools/modules"])
    assert {"virtio_pci", "virtio_blk"} <= modules_in(list_files(files[f"/boot/initrd.img-{kver}"] or b""))
    assert (files["/etc/initramfs-tools/modules"] or b"").endswith(b"virtio_pci\nvirtio_blk\n")


def _boot_listing(disk: Path) -> list[Path]:
    from guests import host_mounted
    with host_mounted(disk) as root:
        return list((root / "boot").iterdir())


def test_debian12_clouds_example_builds_and_passes_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = Path(os.environ.get("IMGSMITH_CACHE") or "/var/tmp/imgsmith-test-cache")
    out = tmp_path / "out"
    r = subprocess.run([*IMGSMITH, "build", str(REPO / "examples" / "debian12-clouds.yaml"), "-o", str(out),
                        "--backend", "chroot", "--no-test", "--json"], capture_output=True, text=True, check=False,
                       env={**os.environ, "IMGSMITH_CACHE": str(cache)}, timeout=3600)
    assert r.returncode == 0, r.stderr[-4000:]
    code, doc = check(out / "debian12-clouds.qcow2", "openstack,aliyun,tencent,aws,azure,gcp", capsys)
    assert (code, doc["errors"]) == (0, 0), doc["findings"]
    # every cloud's rules pass; three only say they import another format (convert --preset CLOUD)
    assert {f["rule"] for f in doc["findings"]} == {"aws.format", "azure.format", "gcp.format"}
