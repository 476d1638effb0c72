"""Facts about a guest for the build manifest: kernels and installed packages, via the Guest API."""

from __future__ import annotations

import re

from ..errors import GuestError
from .api import Guest

__all__ = ["installed_packages", "kernels"]


def kernels(guest: Guest) -> list[str]:
    """Kernel versions present in /boot (vmlinuz-VERSION) or /lib/modules."""
    found = {p.rsplit("vmlinuz-", 1)[1] for p in guest.glob("/boot/vmlinuz-*")}
    if not found and guest.is_dir("/lib/modules", follow=True):
        found = set(guest.ls("/lib/modules"))
    return sorted(found)


def _dpkg(guest: Guest) -> list[dict[str, str]]:
    text = guest.read_text("/var/lib/dpkg/status")
    out = []
    for stanza in text.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): ?(.*)$", stanza, re.MULTILINE))
        if fields.get("Package") and "install ok installed" in fields.get("Status", ""):
            out.append({"name": fields["Package"], "version": fields.get("Version", ""),
                        "arch": fields.get("Architecture", "")})
    return out


def _rpm(guest: Guest) -> list[dict[str, str]]:
    try:
        text = guest.sh("rpm -qa --qf '%{NAME}\\t%{VERSION}-%{RELEASE}\\t%{ARCH}\\n' 2>/dev/null")
    except GuestError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            out.append({"name": parts[0], "version": parts[1], "arch": parts[2]})
    return out


def installed_packages(guest: Guest) -> list[dict[str, str]]:
    """Installed packages from the guest's own database (dpkg status or rpm), sorted by name."""
    fmt = guest.os.package_format
    pkgs = _dpkg(guest) if fmt == "deb" and guest.is_file("/var/lib/dpkg/status") else \
        _rpm(guest) if fmt == "rpm" else []
    return sorted(pkgs, key=lambda p: p["name"])
