"""Phony guest images for the test suite.

Each guest is a small disk (MBR, one partition at 1 MiB, ext4 or xfs) that libguestfs inspection
recognises as a real distro. It is made without the appliance, as root, from a staged host directory:
dash (with the host's glibc) is /bin/sh, a static busybox provides the usual commands, shell stand-ins
replace the package managers and record every call in /var/log/pkgstub.log, and the files that
virt-sysprep operations target are present. The layout is declared in tables: ``_common`` for every
guest, ``_rh``/``_debian``/``_suse`` per family, ``CATALOG`` per distro.

Images are cached by a hash of their recipe (this file, the distro, the host files copied in, and
``extra``) under ``$IMGSMITH_TEST_CACHE`` (default /var/tmp/imgsmith-test-guests). Treat a cached
image as read-only: tests modify a ``fresh_copy``. ``tree`` and ``read_files`` read a disk back in one
read-only appliance launch each.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import posixpath
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# No working KVM on these machines: libguestfs must use TCG (see /work/shared/NOTES.md).
os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")

__all__ = ["DISTROS", "D", "Entry", "Extra", "F", "L", "Node", "detect_format", "fresh_copy", "guest_image",
           "layout", "mount_root", "mounted", "read_files", "read_tree", "sha256_file", "tree"]

DISTROS = ("centos7", "debian12", "ubuntu2204", "rocky9", "opensuse")

DISK_MIB = 512  # mkfs.xfs (>= 5.19) refuses filesystems under 300 MB; qcow2 stores only what is written
BUSYBOX = Path("/bin/busybox")
ZONES = ("UTC", "Etc/UTC", "Asia/Shanghai", "Europe/Paris", "America/New_York")
MULTIARCH = "/usr/lib/x86_64-linux-gnu"  # where the host's dynamic loader looks first, whatever the distro
HOST_FILES = (BUSYBOX, Path("/usr/bin/dash"), Path(f"{MULTIARCH}/libc.so.6"),
              Path(f"{MULTIARCH}/ld-linux-x86-64.so.2"), *(Path(f"/usr/share/zoneinfo/{z}") for z in ZONES))
ROOT_HASH = "$6$imgsmithtest$MGptxDI2HDK.q7BZA/LTWRrtFBHq3O9kHNCY0J8G/Qd2lmn0JisuSngus3pOKn3uV5pFabbjQvINOW8kEqbM5."
"""``openssl passwd -6 -salt imgsmithtest oldroot``: the root password of every phony guest."""
SMALL = 64 * 1024
UID = 1000  # the distro's normal user
# Taken by stand-ins, systemd or dash. Debian's busybox-static prefers its own applets to PATH when it is
# the shell (FEATURE_SH_STANDALONE), so the rpm/dpkg stand-ins would be unreachable: /bin/sh is dash.
SKIP_APPLETS = frozenset({"init", "linuxrc", "sh", "rpm", "rpm2cpio", "dpkg", "dpkg-deb"})
_PRUNE_AFTER_S = 7 * 86400


# --------------------------------------------------------------------------- the declarative layout


@dataclass(frozen=True)
class Node:
    """One entry of a guest's tree: a file ("f", data = content), directory ("d") or symlink ("l")."""

    kind: str
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


def F(content: str | bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Node:
    return Node("f", content.encode() if isinstance(content, str) else content, mode, uid, gid)


def D(mode: int = 0o755, uid: int = 0, gid: int = 0) -> Node:
    return Node("d", b"", mode, uid, gid)


def L(target: str) -> Node:
    return Node("l", target.encode(), 0o777)


@dataclass(frozen=True)
class Distro:
    name: str
    family: str  # "rh", "debian" or "suse": selects the family table below
    fs: str  # "ext4" or "xfs"
    usrmerge: bool  # /bin, /sbin, /lib are symlinks into /usr
    user: str
    user_gid: int
    packages: tuple[str, ...]  # printed by the `rpm -q…` / `dpkg-query -W` stand-ins
    pkg_tools: tuple[str, ...]  # stand-ins in /usr/bin
    files: Mapping[str, Node]
    mkfs_opts: tuple[str, ...] = ()

    @property
    def os_release(self) -> str:
        return OS_RELEASE[self.name]

    @property
    def uuid(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"imgsmith-test-guest:{self.name}:rootfs"))

    @property
    def machine_id(self) -> str:
        return uuid.uuid5(uuid.NAMESPACE_URL, f"imgsmith-test-guest:{self.name}:machine-id").hex


STUB = """#!/bin/sh
# imgsmith test stand-in: records its arguments and succeeds; listing queries print fake packages.
printf '%s\\n' "${{0##*/}} $*" >> /var/log/pkgstub.log
case "${{0##*/}} $1" in
  "rpm -q"*) printf '%s\\n' {pkgs} ;;
  "dpkg-query -W"*|"dpkg-query --show"*) printf '%s\\n' {pkgs} | sed 's/ /\\t/' ;;
  "dpkg -l"*) printf 'ii  %s\\n' {pkgs} ;;
esac
exit 0
"""

SYSTEMD = """#!/bin/sh
# imgsmith test stand-in for systemd: only its presence matters.
echo "systemd stand-in: this phony guest does not boot" >&2
exit 1
"""

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPhonyPhonyPhonyPhonyPhonyPhonyPhonyPhonyPho old@example\n"


def _stub(d: Distro) -> Node:
    return F(STUB.format(pkgs=" ".join(f"'{p}'" for p in d.packages)), 0o755)


def _common(d: Distro) -> dict[str, Node]:
    home, bindir = f"/home/{d.user}", "usr/bin" if d.usrmerge else "bin"
    ug = {"uid": UID, "gid": d.user_gid}
    sbin = "/usr/sbin" if d.usrmerge else "/sbin"
    fsopts = "defaults 0 0" if d.fs == "xfs" else "errors=remount-ro 0 1"
    return {
        "/dev": D(), "/proc": D(0o555), "/sys": D(0o555), "/run": D(), "/mnt": D(), "/srv": D(),
        "/tmp": D(0o1777), "/var/tmp": D(0o1777), "/var/run": L("../run"),
        "/usr/lib/os-release": F(d.os_release), "/etc/os-release": L("../usr/lib/os-release"),
        "/etc/hostname": F(f"{d.name}.example.com\n"),
        "/etc/hosts": F("127.0.0.1   localhost localhost.localdomain\n::1         localhost ip6-localhost\n"),
        "/etc/fstab": F(f"UUID={d.uuid} / {d.fs} {fsopts}\n"),
        "/etc/machine-id": F(f"{d.machine_id}\n", 0o444),
        "/etc/resolv.conf": F("nameserver 10.0.2.3\nsearch example.com\n"),
        "/etc/shells": F("/bin/sh\n/bin/bash\n/usr/bin/sh\n/usr/bin/bash\n"),
        f"/{bindir}/dash": F(Path("/usr/bin/dash").read_bytes(), 0o755),
        f"/{bindir}/sh": L("dash"), f"/{bindir}/bash": L("dash"),  # no bash: scripts here are POSIX sh
        f"{MULTIARCH}/libc.so.6": F(Path(f"{MULTIARCH}/libc.so.6").read_bytes(), 0o755),
        f"{MULTIARCH}/ld-linux-x86-64.so.2": F(Path(f"{MULTIARCH}/ld-linux-x86-64.so.2").read_bytes(), 0o755),
        f"{'/usr' if d.usrmerge else ''}/lib64/ld-linux-x86-64.so.2": L(f"{MULTIARCH}/ld-linux-x86-64.so.2"),
        "/usr/bin/systemctl": _stub(d),
        "/usr/lib/systemd/systemd": F(SYSTEMD, 0o755),
        f"{sbin}/init": L("../lib/systemd/systemd" if d.usrmerge else "../usr/lib/systemd/systemd"),
        "/usr/lib/systemd/system": D(),
        "/etc/systemd/system/multi-user.target.wants": D(),
        "/var/lib/systemd/random-seed": F(b"\x5a" * 512, 0o600),
        **{f"/usr/share/zoneinfo/{z}": F(Path(f"/usr/share/zoneinfo/{z}").read_bytes()) for z in ZONES},
        **{f"/usr/bin/{tool}": _stub(d) for tool in d.pkg_tools},
        "/etc/ssh/sshd_config": F("PermitRootLogin without-password\nPasswordAuthentication no\n", 0o600),
        "/etc/ssh/ssh_host_rsa_key": F("-----BEGIN OPENSSH PRIVATE KEY-----\nphony-rsa\n", 0o600),
        "/etc/ssh/ssh_host_rsa_key.pub": F("ssh-rsa AAAAB3NzaC1yc2EPhonyRsa root@old\n"),
        "/etc/ssh/ssh_host_ed25519_key": F("-----BEGIN OPENSSH PRIVATE KEY-----\nphony-ed25519\n", 0o600),
        "/etc/ssh/ssh_host_ed25519_key.pub": F("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5Phony root@old\n"),
        "/root/.ssh": D(0o700), "/root/.ssh/authorized_keys": F(KEY, 0o600),
        "/root/.bash_history": F("ls\ncat /etc/shadow\n", 0o600),
        "/root/.zsh_history": F(": 1700000000:0;ls\n", 0o600),
        home: D(0o700, **ug), f"{home}/.ssh": D(0o700, **ug),
        f"{home}/.ssh/authorized_keys": F(KEY, 0o600, **ug),
        f"{home}/.bash_history": F("sudo -i\n", 0o600, **ug),
        f"{home}/.bashrc": F("# .bashrc\n", 0o644, **ug),
        "/var/log/wtmp": F(b"\0" * 384, 0o664, 0, 0), "/var/log/btmp": F(b"", 0o600),
        "/var/log/lastlog": F(b"\0" * 292, 0o644), "/run/utmp": F(b"\0" * 384, 0o664),
        "/var/log/cloud-init.log": F("2024-01-01 00:00:00,000 - util.py[DEBUG]: Cloud-init v. 23.4 start\n"),
        "/var/log/cloud-init-output.log": F("Cloud-init v. 23.4 finished\n"),
        "/var/lib/cloud/instance": L("/var/lib/cloud/instances/iid-123"),
        "/var/lib/cloud/instances/iid-123/datasource": F("DataSourceNoCloud: DataSourceNoCloud\n"),
        "/var/lib/cloud/instances/iid-123/user-data.txt": F("#cloud-config\n", 0o600),
        "/var/lib/cloud/instances/iid-123/sem/config_ssh": F("1700000000\n"),
        "/var/lib/cloud/data/instance-id": F("iid-123\n"),
        "/var/lib/cloud/data/status.json": F('{"v1": {"datasource": "DataSourceNoCloud"}}\n'),
        "/var/lib/NetworkManager/internal-6d1c2d2a-5f0b-4c0a-9d0e-ab12cd34ef56-eth0.lease": F(
            "ADDRESS=192.168.122.50\n"),
        "/etc/udev/rules.d/70-persistent-net.rules": F(
            'SUBSYSTEM=="net", ACTION=="add", ATTR{address}=="52:54:00:12:34:56", NAME="eth0"\n'),
        "/tmp/junk": F("junk\n"), "/var/tmp/junk": F("junk\n"),
        "/var/spool/mail/root": F("From root\n", 0o600),
        "/etc/blkid/blkid.tab": F(f'<device DEVNO="0xfd01" UUID="{d.uuid}">/dev/vda1</device>\n'),
        "/var/crash/vmcore": F(b"KDUMP\0phony"),
        "/etc/foo.conf.orig": F("old=1\n"), "/etc/bar~": F("backup\n"),
        "/etc/lvm/devices/system.devices": F("VERSION=1.1.1\n"),
    }


def _accounts(d: Distro, shadow_mode: int, shadow_gid: int, groups: str, system: str) -> dict[str, Node]:
    """passwd/shadow/group/gshadow and their `-` backups; `system` lists extra system users."""
    u, g = d.user, d.user_gid
    passwd = f"root:x:0:0:root:/root:/bin/bash\n{system}{u}:x:{UID}:{g}:{u}:/home/{u}:/bin/bash\n"
    names = ["root"] + [line.split(":")[0] for line in system.splitlines()]
    shadow = f"root:{ROOT_HASH}:19700:0:99999:7:::\n" + "".join(f"{n}:*:19700:0:99999:7:::\n" for n in names[1:])
    shadow += f"{u}:!:19700:0:99999:7:::\n"
    gshadow = "".join(f"{line.split(':')[0]}:!::{line.split(':')[3]}\n" for line in groups.splitlines())
    files = {"passwd": F(passwd), "group": F(groups), "shadow": F(shadow, shadow_mode, 0, shadow_gid),
             "gshadow": F(gshadow, shadow_mode, 0, shadow_gid)}
    return {f"/etc/{name}{sfx}": node for name, node in files.items() for sfx in ("", "-")}


def _rh(d: Distro) -> dict[str, Node]:
    u = d.user
    release = "centos-release" if d.name == "centos7" else "rocky-release"
    return {
        **_accounts(d, 0o000, 0, f"root:x:0:\nbin:x:1:\ndaemon:x:2:\nadm:x:4:\nwheel:x:10:{u}\n"
                    f"sshd:x:74:\nnobody:x:65534:\n{u}:x:{UID}:\n",
                    "bin:x:1:1:bin:/bin:/sbin/nologin\ndaemon:x:2:2:daemon:/sbin:/sbin/nologin\n"
                    "sshd:x:74:74:Privilege-separated SSH:/var/empty/sshd:/sbin/nologin\n"
                    "nobody:x:65534:65534:Kernel Overflow User:/:/sbin/nologin\n"),
        "/root": D(0o550), "/etc/localtime": L("../usr/share/zoneinfo/UTC"),
        "/etc/redhat-release": L(release), "/etc/system-release": L(release),
        "/etc/selinux/config": F("SELINUX=enforcing\nSELINUXTYPE=targeted\n"),
        "/etc/selinux/targeted/contexts/files": D(),
        "/etc/sysconfig/selinux": L("../selinux/config"),
        "/etc/sysconfig/network": F("NETWORKING=yes\nNOZEROCONF=yes\n"),
        "/etc/sysconfig/network-scripts/ifcfg-eth0": F(
            'DEVICE="eth0"\nBOOTPROTO="dhcp"\nONBOOT="yes"\nTYPE="Ethernet"\nHWADDR=52:54:00:12:34:56\n'
            "UUID=5fb06bd0-0bb0-7ffb-45f1-d6edd65f3e03\n"),
        "/usr/lib/systemd/system/sshd.service": F("[Unit]\nDescription=OpenSSH server daemon\n"),
        "/etc/systemd/system/multi-user.target.wants/sshd.service": L("/usr/lib/systemd/system/sshd.service"),
        "/var/log/messages": F("Jan  1 00:00:00 old kernel: Linux version\n", 0o600),
        "/var/log/secure": F("Jan  1 00:00:00 old sshd[1]: Accepted publickey\n", 0o600),
        "/var/log/audit": D(0o700), "/var/log/audit/audit.log": F("type=DAEMON_START msg=audit(0:1)\n", 0o600),
        "/var/lib/dhclient/dhclient-eth0.leases": F("lease {\n  interface \"eth0\";\n}\n"),
        "/var/lib/rpm/__db.001": F(b"\0" * 64),
        "/var/spool/cron/root": F("0 * * * * /bin/true\n", 0o600),
        "/var/account/pacct": F(b"\0" * 64, 0o600),
    }


def _debian(d: Distro) -> dict[str, Node]:
    u = d.user
    return {
        **_accounts(d, 0o640, 42, f"root:x:0:\ndaemon:x:1:\nbin:x:2:\nadm:x:4:{u}\nshadow:x:42:\n"
                    f"sudo:x:27:{u}\nusers:x:100:\nnogroup:x:65534:\n{u}:x:{UID}:\n",
                    "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nbin:x:2:2:bin:/bin:/usr/sbin/nologin\n"
                    "_apt:x:42:65534::/nonexistent:/usr/sbin/nologin\n"
                    "sshd:x:105:65534::/run/sshd:/usr/sbin/nologin\n"
                    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
        "/root": D(0o700),
        "/etc/localtime": L("/usr/share/zoneinfo/Etc/UTC"), "/etc/timezone": F("Etc/UTC\n"),
        "/etc/network/interfaces": F("source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n"
                                     "\nauto eth0\niface eth0 inet dhcp\n"),
        "/etc/network/interfaces.d": D(),
        "/usr/lib/systemd/system/ssh.service": F("[Unit]\nDescription=OpenBSD Secure Shell server\n"),
        "/etc/systemd/system/multi-user.target.wants/ssh.service": L("/lib/systemd/system/ssh.service"),
        "/etc/systemd/system/sshd.service": L("/lib/systemd/system/ssh.service"),
        "/var/log/syslog": F("Jan  1 00:00:00 old kernel: Linux version\n", 0o640, 0, 4),
        "/var/log/auth.log": F("Jan  1 00:00:00 old sshd[1]: Accepted publickey\n", 0o640, 0, 4),
        "/var/lib/dhcp/dhclient.eth0.leases": F("lease {\n  interface \"eth0\";\n}\n"),
        "/var/cache/apt/archives/foo.deb": F(b"!<arch>\nphony"), "/var/cache/apt/archives/partial": D(),
        "/var/spool/cron/crontabs": D(0o730), "/var/spool/cron/crontabs/root": F("0 * * * * true\n", 0o600),
        "/var/lib/dpkg/status": F("".join(
            f"Package: {p.split()[0]}\nStatus: install ok installed\nPriority: required\nSection: admin\n"
            f"Architecture: amd64\nVersion: {p.split()[1]}\nDescription: phony {p.split()[0]}\n\n"
            for p in d.packages)),
        "/var/lib/dpkg/info": D(),
    }


def _suse(d: Distro) -> dict[str, Node]:
    u = d.user
    return {
        **_accounts(d, 0o640, 15, f"root:x:0:\nbin:x:1:daemon\ndaemon:x:2:\nshadow:x:15:\nusers:x:100:\n"
                    f"wheel:x:10:{u}\nnobody:x:65533:\nnogroup:x:65534:nobody\n",
                    "bin:x:1:1:bin:/bin:/sbin/nologin\ndaemon:x:2:2:Daemon:/sbin:/sbin/nologin\n"
                    "sshd:x:498:498:SSH daemon:/var/lib/sshd:/sbin/nologin\n"
                    "nobody:x:65534:65534:nobody:/var/lib/nobody:/bin/bash\n"),
        "/root": D(0o700),
        "/etc/localtime": L("../usr/share/zoneinfo/UTC"),
        "/etc/sysconfig/network/ifcfg-eth0": F("BOOTPROTO='dhcp'\nSTARTMODE='auto'\n"),
        "/etc/sysconfig/network/config": F('NETCONFIG_DNS_POLICY="auto"\n'),
        "/etc/zypp/repos.d/repo-oss.repo": F("[repo-oss]\nname=Main Repository\nenabled=1\n"
                                             "baseurl=http://download.opensuse.org/distribution/leap/15.5/repo/oss/\n"),
        "/usr/lib/systemd/system/sshd.service": F("[Unit]\nDescription=OpenSSH Daemon\n"),
        "/etc/systemd/system/multi-user.target.wants/sshd.service": L("/usr/lib/systemd/system/sshd.service"),
        "/var/log/messages": F("2024-01-01T00:00:00 old kernel: Linux version\n", 0o640),
        "/var/log/zypper.log": F("2024-01-01 00:00:00 zypper started\n", 0o640),
        "/var/log/audit": D(0o700), "/var/log/audit/audit.log": F("type=DAEMON_START msg=audit(0:1)\n", 0o600),
        "/var/lib/wicked/lease-eth0-dhcp-ipv4.xml": F("<lease/>\n"),
        "/var/cache/zypp/packages/repo-oss/x86_64/foo.rpm": F(RPM),
        "/var/spool/cron/tabs/root": F("0 * * * * true\n", 0o600),
    }


_FAMILIES = {"rh": _rh, "debian": _debian, "suse": _suse}

OS_RELEASE = {  # /usr/lib/os-release as the real releases ship it (trimmed of URLs nobody reads)
    "centos7": 'NAME="CentOS Linux"\nVERSION="7 (Core)"\nID="centos"\nID_LIKE="rhel fedora"\nVERSION_ID="7"\n'
               'PRETTY_NAME="CentOS Linux 7 (Core)"\nANSI_COLOR="0;31"\nCPE_NAME="cpe:/o:centos:centos:7"\n'
               'HOME_URL="https://www.centos.org/"\nBUG_REPORT_URL="https://bugs.centos.org/"\n\n'
               'CENTOS_MANTISBT_PROJECT="CentOS-7"\nCENTOS_MANTISBT_PROJECT_VERSION="7"\n'
               'REDHAT_SUPPORT_PRODUCT="centos"\nREDHAT_SUPPORT_PRODUCT_VERSION="7"\n\n',
    "rocky9": 'NAME="Rocky Linux"\nVERSION="9.3 (Blue Onyx)"\nID="rocky"\nID_LIKE="rhel centos fedora"\n'
              'VERSION_ID="9.3"\nPLATFORM_ID="platform:el9"\nPRETTY_NAME="Rocky Linux 9.3 (Blue Onyx)"\n'
              'ANSI_COLOR="0;32"\nLOGO="fedora-logo-icon"\nCPE_NAME="cpe:/o:rocky:rocky:9::baseos"\n'
              'HOME_URL="https://rockylinux.org/"\nBUG_REPORT_URL="https://bugs.rockylinux.org/"\n'
              'SUPPORT_END="2032-05-31"\nROCKY_SUPPORT_PRODUCT="Rocky-Linux-9"\n'
              'ROCKY_SUPPORT_PRODUCT_VERSION="9.3"\nREDHAT_SUPPORT_PRODUCT="Rocky Linux"\n'
              'REDHAT_SUPPORT_PRODUCT_VERSION="9.3"\n',
    "debian12": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n'
                'VERSION="12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\n'
                'HOME_URL="https://www.debian.org/"\nSUPPORT_URL="https://www.debian.org/support"\n'
                'BUG_REPORT_URL="https://bugs.debian.org/"\n',
    "ubuntu2204": 'PRETTY_NAME="Ubuntu 22.04.4 LTS"\nNAME="Ubuntu"\nVERSION_ID="22.04"\n'
                  'VERSION="22.04.4 LTS (Jammy Jellyfish)"\nVERSION_CODENAME=jammy\nID=ubuntu\nID_LIKE=debian\n'
                  'HOME_URL="https://www.ubuntu.com/"\nSUPPORT_URL="https://help.ubuntu.com/"\n'
                  'BUG_REPORT_URL="https://bugs.launchpad.net/ubuntu/"\nUBUNTU_CODENAME=jammy\n',
    "opensuse": 'NAME="openSUSE Leap"\nVERSION="15.5"\nID="opensuse-leap"\nID_LIKE="suse opensuse"\n'
                'VERSION_ID="15.5"\nPRETTY_NAME="openSUSE Leap 15.5"\nANSI_COLOR="0;32"\n'
                'CPE_NAME="cpe:/o:opensuse:leap:15.5"\nBUG_REPORT_URL="https://bugs.opensuse.org"\n'
                'HOME_URL="https://www.opensuse.org/"\nLOGO="distributor-logo-Leap"\n',
}
RPM = b"\xed\xab\xee\xdbphony"
DEB_TOOLS = ("apt-get", "apt", "dpkg", "dpkg-query")

CATALOG: dict[str, Distro] = {d.name: d for d in (
    Distro("centos7", family="rh", fs="xfs", usrmerge=True, user="centos", user_gid=UID,
           packages=("bash-4.2.46-34.el7.x86_64", "openssh-server-7.4p1-23.el7_9.x86_64",
                     "kernel-3.10.0-1160.el7.x86_64"),
           pkg_tools=("yum", "rpm"),
           # RHEL 7's kernel knows none of the newer xfs features
           mkfs_opts=("-m", "reflink=0,bigtime=0,inobtcount=0,finobt=0", "-i", "sparse=0"),
           files={
               "/etc/centos-release": F("CentOS Linux release 7.9.2009 (Core)\n"),
               "/etc/yum.conf": F("[main]\ncachedir=/var/cache/yum/$basearch/$releasever\nkeepcache=0\n"),
               "/etc/yum.repos.d/CentOS-Base.repo": F(
                   "[base]\nname=CentOS-$releasever - Base\n"
                   "mirrorlist=http://mirrorlist.centos.org/?release=$releasever&arch=$basearch&repo=os\n"
                   "#baseurl=http://mirror.centos.org/centos/$releasever/os/$basearch/\ngpgcheck=1\n"),
               "/var/lib/yum/uuid": F("1c9b4e9e-5a4c-4a3e-9c55-0d6f7e1b2a3c\n"),
               "/var/cache/yum/x86_64/7/base/packages/foo.rpm": F(RPM)}),
    Distro("rocky9", family="rh", fs="xfs", usrmerge=True, user="rocky", user_gid=UID,
           packages=("bash-5.1.8-6.el9_1.x86_64", "openssh-server-8.7p1-34.el9.x86_64",
                     "kernel-5.14.0-362.8.1.el9_3.x86_64"),
           pkg_tools=("dnf", "rpm"),
           files={
               "/etc/rocky-release": F("Rocky Linux release 9.3 (Blue Onyx)\n"),
               "/usr/bin/yum": L("dnf"),
               "/etc/dnf/dnf.conf": F("[main]\ngpgcheck=1\ninstallonly_limit=3\n"),
               "/etc/yum.repos.d/rocky.repo": F(
                   "[baseos]\nname=Rocky Linux $releasever - BaseOS\nmirrorlist="
                   "https://mirrors.rockylinux.org/mirrorlist?arch=$basearch&repo=BaseOS-$releasever\n"),
               "/etc/NetworkManager/system-connections/eth0.nmconnection": F(
                   "[connection]\nid=eth0\nuuid=5fb06bd0-0bb0-7ffb-45f1-d6edd65f3e03\ntype=ethernet\n"
                   "interface-name=eth0\n\n[ethernet]\nmac-address=52:54:00:12:34:56\n\n[ipv4]\nmethod=auto\n",
                   0o600),
               "/var/cache/dnf/foo.solv": F(b"SOLV phony")}),
    Distro("debian12", family="debian", fs="ext4", usrmerge=True, user="debian", user_gid=UID,
           packages=("bash 5.2.15-2+b2", "openssh-server 1:9.2p1-2+deb12u2",
                     "linux-image-6.1.0-18-amd64 6.1.76-1"),
           pkg_tools=DEB_TOOLS,
           files={
               "/etc/debian_version": F("12.5\n"),
               "/etc/apt/sources.list.d/debian.sources": F(
                   "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n"
                   "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")}),
    Distro("ubuntu2204", family="debian", fs="ext4", usrmerge=True, user="ubuntu", user_gid=UID,
           packages=("bash 5.1-6ubuntu1.1", "openssh-server 1:8.9p1-3ubuntu0.6",
                     "linux-image-5.15.0-97-generic 5.15.0-97.107"),
           pkg_tools=DEB_TOOLS,
           files={
               "/etc/debian_version": F("bookworm/sid\n"),
               "/etc/lsb-release": F("DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=22.04\nDISTRIB_CODENAME=jammy\n"
                                     'DISTRIB_DESCRIPTION="Ubuntu 22.04.4 LTS"\n'),
               "/etc/netplan/50-cloud-init.yaml": F(
                   "network:\n    ethernets:\n        eth0:\n            dhcp4: true\n            match:\n"
                   "                macaddress: '52:54:00:12:34:56'\n            set-name: eth0\n"
                   "    version: 2\n", 0o600),
               "/etc/apt/sources.list": F("deb http://archive.ubuntu.com/ubuntu jammy main restricted\n")}),
    Distro("opensuse", family="suse", fs="ext4", usrmerge=False, user="opensuse", user_gid=100,  # "users"
           packages=("bash-4.4-150400.27.3.2.x86_64", "openssh-server-8.4p1-150300.3.22.1.x86_64",
                     "kernel-default-5.14.21-150500.53.2.x86_64"),
           pkg_tools=("zypper", "rpm"),
           files={}),
)}


@functools.cache
def _applets() -> tuple[str, ...]:
    out = subprocess.run([BUSYBOX, "--list-full"], check=True, capture_output=True, text=True).stdout
    return tuple(line for line in out.split() if "/" in line and line.rsplit("/", 1)[1] not in SKIP_APPLETS)


def _busybox(d: Distro) -> dict[str, Node]:
    bindir = "/usr/bin" if d.usrmerge else "/bin"
    nodes = {f"{bindir}/busybox": F(BUSYBOX.read_bytes(), 0o755)}
    for rel in _applets():
        if rel == "bin/busybox":
            continue
        path = f"/usr/{rel}" if d.usrmerge and rel.startswith(("bin/", "sbin/")) else f"/{rel}"
        nodes[path] = L(f"{bindir}/busybox")
    if d.usrmerge:
        nodes |= {"/bin": L("usr/bin"), "/sbin": L("usr/sbin"), "/lib": L("usr/lib"), "/lib64": L("usr/lib64"),
                  "/usr/lib64": D()}
    return nodes


Extra = Mapping[str, "bytes | str | Node"]
"""Extra paths of a variant: file contents, or a Node (``L(target)`` for a symlink, ``D()``, ``F(..., mode)``)."""


def layout(distro: str, extra: Extra | None = None) -> dict[str, Node]:
    """The whole tree of a phony guest, path -> Node (later tables override earlier ones)."""
    d = _distro(distro)
    nodes = _busybox(d) | _common(d) | _FAMILIES[d.family](d) | dict(d.files)
    for path, content in (extra or {}).items():
        nodes[path] = content if isinstance(content, Node) else F(content)
    return nodes


def _distro(name: str) -> Distro:
    if name not in CATALOG:
        raise ValueError(f"unknown phony distro {name!r}; choose one of {', '.join(DISTROS)}")
    return CATALOG[name]


# --------------------------------------------------------------------------- building and the cache


def cache_dir() -> Path:
    return Path(os.environ.get("IMGSMITH_TEST_CACHE") or "/var/tmp/imgsmith-test-guests")


def recipe_key(distro: str, extra: Extra | None = None) -> str:
    """sha256 of everything an image is made from: this file, the distro, host inputs, ``extra``."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(f"\0{distro}\0".encode())
    for host_file in HOST_FILES:
        h.update(hashlib.sha256(host_file.read_bytes()).digest())
    for path, content in sorted((extra or {}).items()):
        if isinstance(content, Node):
            data = f"{content.kind}:{content.mode:o}:{content.uid}:{content.gid}:".encode() + content.data
        else:
            data = content.encode() if isinstance(content, str) else content
        h.update(f"\0{path}\0{len(data)}\0".encode() + data)
    return h.hexdigest()


def guest_image(distro: str, *, extra: Extra | None = None) -> Path:
    """Path to a cached, read-only-by-convention qcow2 of that phony guest (built if missing)."""
    d = _distro(distro)
    cache = cache_dir()
    final = cache / f"{distro}-{recipe_key(distro, extra)[:16]}.qcow2"
    if not final.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with _locked(cache / f".{distro}.lock"):
            if not final.exists():
                _build(d, layout(distro, extra), final)
                _prune(cache, distro, final)
    os.utime(final)  # marks it in use for _prune
    return final


@contextlib.contextmanager
def _locked(lockfile: Path) -> Iterator[None]:
    with lockfile.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _prune(cache: Path, distro: str, keep: Path) -> None:
    """Delete this distro's images nobody asked for in a week (other recipes or other ``extra``)."""
    for old in cache.glob(f"{distro}-*.qcow2"):
        if old != keep and time.time() - old.stat().st_mtime > _PRUNE_AFTER_S:
            old.unlink(missing_ok=True)


def _build(d: Distro, nodes: Mapping[str, Node], final: Path) -> None:
    if os.geteuid() != 0:
        raise PermissionError("building phony guest images needs root (chown, loop mounts)")
    work = Path(tempfile.mkdtemp(prefix=f".build-{d.name}-", dir=final.parent))
    try:
        _stage(nodes, work / "root")
        fsimg = work / "rootfs.img"
        _mkfs(d, work / "root", fsimg, work / "mnt")
        raw = work / "disk.raw"
        with raw.open("wb") as fh:
            fh.truncate(DISK_MIB << 20)
        label_id = d.uuid.replace("-", "")[:8]
        subprocess.run(["sfdisk", "--quiet", raw], check=True, text=True,
                       input=f"label: dos\nlabel-id: 0x{label_id}\n\nstart=2048, type=83, bootable\n")
        subprocess.run(["dd", f"if={fsimg}", f"of={raw}", "bs=1M", "seek=1", "conv=notrunc,sparse",
                        "status=none"], check=True)
        tmp = work / "disk.qcow2"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, tmp], check=True)
        tmp.chmod(0o444)
        tmp.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _stage(nodes: Mapping[str, Node], root: Path) -> None:
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    for path in sorted(nodes):
        node, dest = nodes[path], root / path.lstrip("/")
        for parent in reversed(dest.relative_to(root).parents[:-1]):
            if not (root / parent).exists():
                (root / parent).mkdir()
                (root / parent).chmod(0o755)
        if node.kind == "d":
            dest.mkdir(exist_ok=True)
        elif node.kind == "f":
            dest.write_bytes(node.data)
        else:
            dest.symlink_to(node.data.decode())
        os.lchown(dest, node.uid, node.gid)
        if node.kind != "l":
            dest.chmod(node.mode)  # after chown, which clears setuid bits


def _mkfs(d: Distro, src: Path, fsimg: Path, mnt: Path) -> None:
    size = (DISK_MIB - 1) << 20
    with fsimg.open("wb") as fh:
        fh.truncate(size)
    if d.fs == "ext4":
        subprocess.run(["mkfs.ext4", "-q", "-F", "-U", d.uuid, "-d", src, "-E",
                        "lazy_itable_init=0,lazy_journal_init=0", *d.mkfs_opts, fsimg], check=True)
        return
    subprocess.run(["mkfs.xfs", "-q", "-f", "-m", f"uuid={d.uuid}", *d.mkfs_opts, fsimg], check=True)
    mnt.mkdir()
    # nouuid: two builders (pytest-xdist) may mount the same distro's uuid at once
    subprocess.run(["mount", "-o", "loop,nouuid", fsimg, mnt], check=True)
    try:
        subprocess.run(["cp", "-a", f"{src}/.", f"{mnt}/"], check=True)
    finally:
        subprocess.run(["umount", mnt], check=True)


def fresh_copy(distro: str, dest_dir: Path, *, fmt: str = "qcow2",
               extra: Extra | None = None) -> Path:
    """A private writable copy (qcow2 or raw) for a test to modify."""
    if fmt not in ("qcow2", "raw"):
        raise ValueError(f"fresh_copy makes qcow2 or raw, not {fmt!r}")
    src = guest_image(distro, extra=extra)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest, n = dest_dir / f"{distro}.{fmt}", 1
    while dest.exists():
        dest, n = dest_dir / f"{distro}-{n}.{fmt}", n + 1
    if fmt == "qcow2":
        subprocess.run(["cp", "--reflink=auto", src, dest], check=True)
    else:
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", src, dest], check=True)
    dest.chmod(0o644)
    return dest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- reading guests back


@dataclass(frozen=True)
class Entry:
    """One path of a guest as ``tree`` sees it (symlinks are not followed)."""

    type: str  # "f" regular file, "d" directory, "l" symlink, "other" (devices, fifos, sockets)
    mode: int  # permission bits, including setuid/setgid/sticky
    uid: int
    gid: int
    size: int  # bytes for files, length of the target for symlinks, 0 otherwise (directory sizes are noise)
    sha256: str | None = None  # regular files
    content: bytes | None = None  # regular files smaller than 64 KiB
    target: str | None = None  # symlinks


def detect_format(disk: Path) -> str:
    out = subprocess.run(["qemu-img", "info", "--output=json", disk], check=True, capture_output=True,
                         text=True).stdout
    return str(json.loads(out)["format"])


def mount_root(g: Any, root: str, *, readonly: bool = True) -> None:
    """Mount an inspected root's filesystems (per inspection's mountpoints) under / in the appliance."""
    mps = g.inspect_get_mountpoints(root)
    for mp in sorted(mps, key=len):
        (g.mount_ro if readonly else g.mount)(mps[mp], mp)


@contextlib.contextmanager
def mounted(disk: Path, fmt: str | None = None, *, readonly: bool = True) -> Iterator[Any]:
    """One appliance launch on ``disk`` with its single OS mounted per inspection; yields the handle."""
    import guestfs

    g = guestfs.GuestFS(python_return_dict=True)
    try:
        g.add_drive_opts(os.fspath(disk), format=fmt or detect_format(disk), readonly=readonly)
        g.launch()
        roots = g.inspect_os()
        if len(roots) != 1:
            raise RuntimeError(f"{disk}: inspection found {len(roots)} operating systems, expected 1")
        mount_root(g, roots[0], readonly=readonly)
        yield g
        if not readonly:
            g.shutdown()
    finally:
        g.close()


def _host_reader() -> bool:
    """Read results back through the host kernel (root, ~1 s) rather than an appliance launch (~20 s).

    Either way the reader is independent of imgsmith's code. IMGSMITH_TEST_READER=appliance forces
    the appliance (e.g. to cross-check the host reader itself).
    """
    return os.geteuid() == 0 and os.environ.get("IMGSMITH_TEST_READER", "host") != "appliance"


@contextlib.contextmanager
def host_mounted(disk: Path, fmt: str | None = None) -> Iterator[Path]:
    """The guest's root filesystem mounted read-only on the host (a sparse raw copy on a loop device)."""
    with tempfile.TemporaryDirectory(prefix="imgsmith-read-", dir="/var/tmp") as tmp:
        raw, mnt = Path(tmp) / "disk.raw", Path(tmp) / "mnt"
        mnt.mkdir()
        subprocess.run(["qemu-img", "convert", "-U", "-f", fmt or detect_format(disk), "-O", "raw", disk, raw],
                       check=True, capture_output=True)
        loop = subprocess.run(["losetup", "-r", "-f", "--show", raw], check=True, capture_output=True,
                              text=True).stdout.strip()
        try:
            subprocess.run(["partx", "-a", loop], capture_output=True, check=False)
            base = os.path.basename(loop)
            nodes = sorted(str(Path("/dev") / p.name) for p in Path(f"/sys/block/{base}").glob(f"{base}p*")) or [loop]
            for node in nodes:
                fstype = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", node], capture_output=True,
                                        text=True, check=False).stdout.strip()
                opts = {"xfs": "ro,norecovery,nouuid", "ext4": "ro,noload", "ext3": "ro,noload"}.get(fstype)
                if opts is None or subprocess.run(["mount", "-t", fstype, "-o", opts, node, mnt],
                                                  capture_output=True, check=False).returncode:
                    continue
                if (mnt / "etc").is_dir():
                    try:
                        yield mnt
                    finally:
                        subprocess.run(["umount", mnt], check=True)
                    return
                subprocess.run(["umount", mnt], check=True)
            raise RuntimeError(f"{disk}: no root filesystem found by the host reader")
        finally:
            subprocess.run(["partx", "-d", loop], capture_output=True, check=False)
            subprocess.run(["losetup", "-d", loop], capture_output=True, check=False)


def _host_tree(root: Path) -> dict[str, Entry]:
    out: dict[str, Entry] = {"/": _host_entry(root)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            out["/" + str(p.relative_to(root))] = _host_entry(p)
    return out


def _host_entry(p: Path) -> Entry:
    st = p.lstat()
    meta = (st.st_mode & 0o7777, st.st_uid, st.st_gid)
    if p.is_symlink():
        target = os.readlink(p)
        return Entry("l", *meta, len(os.fsencode(target)), target=target)
    if p.is_file():
        data = p.read_bytes()
        return Entry("f", *meta, len(data), hashlib.sha256(data).hexdigest(), data if len(data) < SMALL else None)
    return Entry("d" if p.is_dir() else "other", *meta, 0)


def _resolve(root: Path, path: str) -> Path:
    """*path* inside the guest with symlinks followed relative to the guest's / (never the host's)."""
    parts, hops = [p for p in path.split("/") if p], 0
    done: list[str] = []
    while parts:
        name = parts.pop(0)
        if name in (".", ""):
            continue
        if name == "..":
            done = done[:-1]
            continue
        candidate = root.joinpath(*done, name)
        if candidate.is_symlink() and hops < 40:
            hops += 1
            target = os.readlink(candidate)
            done = [] if target.startswith("/") else done
            parts = [p for p in target.split("/") if p] + parts
            continue
        done.append(name)
    return root.joinpath(*done)


def tree(disk: Path, fmt: str | None = None) -> dict[str, Entry]:
    """Every path of the guest, read-only: through the host kernel as root, else one appliance launch."""
    if _host_reader():
        with host_mounted(disk, fmt) as root:
            return _host_tree(root)
    with mounted(disk, fmt) as g:
        return read_tree(g)


def read_tree(g: Any, directory: str = "/") -> dict[str, Entry]:
    """``tree`` on an open handle: every path under ``directory`` of what is mounted, keyed by full path.

    One ``tar_out`` carries metadata and contents; files are hashed on the host (much faster than in a
    TCG appliance). GNU tar skips sockets, so they are missing.
    """
    with tempfile.TemporaryDirectory(prefix="imgsmith-tree-") as tmp:
        g.tar_out(directory, f"{tmp}/all.tar", numericowner=True)
        return _tar_entries(Path(f"{tmp}/all.tar"), directory)


def _tar_entries(tar: Path, top: str) -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    with tarfile.open(tar, "r:") as tf:
        for m in tf:
            path, meta = posixpath.normpath(posixpath.join(top, m.name)), (m.mode, m.uid, m.gid)
            if m.islnk():  # a hard link: same inode as an earlier member
                first = out[posixpath.normpath(posixpath.join(top, m.linkname))]
                out[path] = Entry("f", *meta, first.size, first.sha256, first.content)
            elif m.isfile():
                fh = tf.extractfile(m)
                assert fh is not None
                h, head = hashlib.sha256(), bytearray()
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
                    if m.size < SMALL:
                        head += chunk
                out[path] = Entry("f", *meta, m.size, h.hexdigest(), bytes(head) if m.size < SMALL else None)
            elif m.issym():
                out[path] = Entry("l", *meta, len(os.fsencode(m.linkname)), target=m.linkname)
            else:
                out[path] = Entry("d" if m.isdir() else "other", *meta, 0)
    return out


def read_files(disk: Path, paths: Sequence[str], fmt: str | None = None) -> dict[str, bytes | None]:
    """Contents of ``paths`` (symlinks followed inside the guest; None if not a regular file)."""
    if _host_reader():
        with host_mounted(disk, fmt) as root:
            return {p: _resolve(root, p).read_bytes() if _resolve(root, p).is_file() else None for p in paths}
    with mounted(disk, fmt) as g:
        return {p: g.read_file(p) if g.is_file(p, followsymlinks=True) else None for p in paths}
