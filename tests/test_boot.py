"""Boot tests on real qemu: the bootstrapped Debian image boots and passes checks; a broken one fails
at the right stage. Slow (minutes under TCG): run this tier alone with ``-m boot``.

The image is bootstrapped once per machine into ``$IMGSMITH_CACHE`` (default
/var/tmp/imgsmith-test-cache) and reused until the mirror moves on.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgsmith import proc
from imgsmith.boot.console import Stage
from imgsmith.boot.test import BootTestError, Check, Timeouts, boot_test, choose_accelerator
from imgsmith.source import partition
from imgsmith.source.bootstrap import BootstrapSpec, bootstrap_image

pytestmark = pytest.mark.boot

CACHE = Path(os.environ.get("IMGSMITH_CACHE") or "/var/tmp/imgsmith-test-cache")


@contextlib.contextmanager
def _host_listener() -> Iterator[Check]:
    """A listener on the host's 127.0.0.1, and a check that the guest cannot reach it.

    Without ``restrict=on`` the guest's connection to its gateway (qemu's host address)
    would arrive here; with it, qemu refuses it and nothing arrives.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        yield Check("gw=$(ip route show default | awk '{print $3}'); python3 -c 'import socket, sys; "
                    f"socket.create_connection((sys.argv[1], {port}), 5)' \"$gw\"", expect_rc=1)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing came through


@pytest.fixture(scope="session")
def debian_image() -> Path:
    if os.geteuid() != 0:
        pytest.skip("bootstrapping an image needs root (loop devices, mounts, chroot)")
    return bootstrap_image(BootstrapSpec(distro="debian", release="bookworm", firmware="bios"), cache_dir=CACHE)


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


PROBE_PKG = "imgsmith-fbprobe"


def _probe_repo(tmp: Path) -> Path:
    """A one-package apt repository (flat, ``[trusted=yes]``) whose package logs its own install.

    The guest gets it as a local ``file:`` source, so ``--firstboot-install`` runs the real
    apt-get update + install at first boot without any traffic beyond 127.0.0.1.
    """
    build, repo = tmp / "pkg", tmp / "repo"
    (build / "DEBIAN").mkdir(parents=True)
    (build / "DEBIAN" / "control").write_text(
        f"Package: {PROBE_PKG}\nVersion: 1.0\nArchitecture: all\nMaintainer: imgsmith tests <t@example.org>\n"
        "Description: records its installation for the first-boot test\n")
    (build / "DEBIAN" / "postinst").write_text("#!/bin/sh\necho install >> /var/log/fb.log\n")
    (build / "DEBIAN" / "postinst").chmod(0o755)
    repo.mkdir()
    proc.run(["dpkg-deb", "--root-owner-group", "-b", build, repo / f"{PROBE_PKG}_1.0_all.deb"])
    packages = proc.run(["dpkg-scanpackages", "-m", "."], cwd=repo).stdout
    (repo / "Packages").write_text(packages)
    digest = hashlib.sha256(packages.encode()).hexdigest()
    size = len(packages.encode())
    (repo / "Release").write_text(f"Origin: imgsmith-tests\nSuite: ./\nSHA256:\n {digest} {size} Packages\n")
    return repo


def test_bootstrapped_image_boots_and_firstboot_scripts_run_once_in_order(debian_image: Path,
                                                                         tmp_path: Path) -> None:
    """The bootstrapped image boots on its NoCloud seed and passes checks; --firstboot-command and
    --firstboot-install really run at boot: once, in order, not at the second boot.

    One test, because each TCG boot costs minutes: the first boot carries the plain boot test's
    assertions too (stages, NoCloud, SSH host key, restrict=on, clean shutdown). The throw-away
    overlay's removal is asserted by the datasource tests below, which boot the image itself.
    """
    before = debian_image.stat()
    disk = tmp_path / "disk.qcow2"
    proc.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", debian_image, "-F", "qcow2", disk])
    repo = _probe_repo(tmp_path)
    offline = ("mkdir -p /root/apt-off && find /etc/apt -name '*.list' -o -name '*.sources' "
               "| xargs -r mv -t /root/apt-off")  # the image's own mirrors: no traffic leaves the host
    status = f"dpkg-query -W -f='${{Status}}\\n' {PROBE_PKG} >> /var/log/fb.log; echo cmd2 >> /var/log/fb.log"
    r = subprocess.run([sys.executable, "-m", "imgsmith.cli.main", "customize", "-a", os.fspath(disk),
                        "--backend", "appliance", "--copy-in", f"{repo}:/opt", "--run-command", offline,
                        "--write", "/etc/apt/sources.list:deb [trusted=yes] file:/opt/repo ./\n",
                        "--firstboot-command", "echo cmd1 >> /var/log/fb.log",
                        "--firstboot-install", PROBE_PKG,
                        "--firstboot-command", status], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    settled = "systemctl is-system-running --wait >/dev/null; "
    expected_log = "cmd1\ninstall\ninstall ok installed\ncmd2"
    checks = [
        Check(settled + "sudo cat /var/log/fb.log", expected_log),
        Check(settled + "sudo grep -c '^=== Running' /root/virt-sysprep-firstboot.log", "3"),
    ]
    with _host_listener() as reach_host:
        first = [Check("uname -s", "Linux"),
                 Check("cloud-init status --wait >/dev/null; cloud-init status", "status: done"),
                 Check("sudo -n id -u", "0"), Check("findmnt -no SOURCE /", expect_rc=0), reach_host]
        for boot, starts in ((1, "1"), (2, "2")):
            result = boot_test(disk, "qcow2", in_place=True, workdir=tmp_path, checks=[
                *(first if boot == 1 else []), *checks,
                Check(settled + "sudo grep -c 'firstboot.sh start' /root/virt-sysprep-firstboot.log", starts),
                Check("ls /usr/lib/virt-sysprep/scripts | wc -l", "0")])
            assert result.passed, (boot, [(c.check.run, c.reason) for c in result.checks if not c.passed])
            if boot == 1:
                ds = result.datasource  # the default: a NoCloud seed, and cloud-init says it used it
                assert ds is not None and ds.datasource in ("NoCloud", "NoCloudNet") and ds.cloud_id == "nocloud"
                assert ds.hostname == "imgsmith-nocloud" and ds.user_data_ran and ds.instance_key_login == "debian"
                for stage in ("first output", "kernel", "init", "cloud-init final", "marker", "ssh login"):
                    assert result.stages[stage] is not None, stage
                assert result.stages["kernel"] <= result.stages["marker"] <= result.stages["ssh login"]  # type: ignore[operator]
                assert result.host_key_verified and result.clean_shutdown
    after = debian_image.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns), "the image was modified"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.qcow2", "pkg", "repo"], "the seed must be removed"


# --- each cloud's own datasource, emulated locally: one boot per datasource, every assertion on it --

CLOUD_EXPECTATIONS = {
    # cloud: (cloud-init datasource class names, cloud-id, where it came from)
    "openstack": (("ConfigDrive",), "configdrive", "config-disk"),
    "aws": (("Ec2Local", "Ec2"), "aws", "metadata (http://169.254.169.254)"),
    "aliyun": (("AliYun",), "aliyun", "metadata (http://100.100.100.200)"),
    "gcp": (("GCELocal", "GCE"), "gce", "metadata (http://metadata.google.internal/computeMetadata/v1/)"),
}


@pytest.mark.slow
@pytest.mark.parametrize("cloud", list(CLOUD_EXPECTATIONS))
def test_boots_on_the_clouds_own_datasource(debian_image: Path, tmp_path: Path, cloud: str) -> None:
    """cloud-init finds that cloud's datasource (not NoCloud), and its hostname, SSH key and user-data
    take effect; the guest reaches nothing but the emulated service and the SSH forward."""
    dsnames, cloud_id, subplatform = CLOUD_EXPECTATIONS[cloud]
    before = debian_image.stat()
    with _host_listener() as reach_host:
        result = boot_test(debian_image, "qcow2", workdir=tmp_path, cloud=cloud, trusted=True, checks=[
            Check("cloud-init status --wait >/dev/null; cloud-init status", "status: done"), reach_host])
    ds = result.datasource
    assert ds is not None
    assert ds.datasource in dsnames, ds.datasource_detail
    assert ds.cloud_id == cloud_id and ds.ds_identify in {n.removesuffix("Local") for n in dsnames}
    assert ds.instance_data["subplatform"].startswith(subplatform), ds.instance_data
    assert ds.instance_data["instance_id"] == result.instance_id
    assert ds.hostname == ds.expected_hostname == f"imgsmith-{cloud}"
    assert ds.instance_key_login is not None and ds.instance_key_login != "root"  # the metadata's key opens it
    assert ds.user_data_ran and not ds.cloud_init_errors
    assert ds.findings == () and result.passed, ([c.reason for c in result.checks if not c.passed], ds.findings)
    if cloud == "aws":
        assert ds.metadata_requests is not None and ds.metadata_requests["token_puts"] >= 1
        assert ds.metadata_requests["answered_without_token"] == 0
        assert ds.dmi["product_uuid"].startswith("ec2") and ds.dmi["sys_vendor"] == "Amazon EC2"
    if cloud == "aliyun":
        assert ds.dmi["product_name"] == "Alibaba Cloud ECS"
    if cloud == "gcp":  # every request carried Metadata-Flavor: Google (else 403, and a finding)
        assert ds.metadata_requests is not None and ds.metadata_requests["requests"] >= 5
        assert "GET 403" not in ds.metadata_requests["by_method_status"]
        assert ds.dmi["product_name"] == "Google Compute Engine"
    after = debian_image.stat()  # gcp's /etc/hosts line went into the throw-away overlay only
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)
    assert result.to_dict()["datasource"]["passed"] is True
    assert list(tmp_path.iterdir()) == []
