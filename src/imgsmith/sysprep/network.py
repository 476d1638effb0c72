"""Network identity: MAC-bound configuration, leases, NetworkManager profiles, firewall rules.

A clone gets a new MAC address. Configuration pinned to the old one (``HWADDR=`` in
ifcfg files, udev's persistent-net rules) makes the clone's NIC come up as eth1 or
not at all; DHCP leases would make it ask for the template's old address.

On the Red Hat family virt-sysprep 1.48 matches distro names (fedora, rhel, centos,
scientificlinux, oraclelinux, redhat-based), so it skips Rocky Linux and AlmaLinux;
imgsmith applies these operations to the whole family (``OSInfo.family``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..guest.api import Guest
from .base import SysprepContext, SysprepOperation, remove_files, remove_globs, remove_non_dirs

__all__ = [
    "DhcpClientState",
    "DhcpServerState",
    "FirewallRules",
    "NetHostname",
    "NetHwaddr",
    "NetNmconn",
    "UdevPersistentNet",
]

IFCFG_GLOB = "/etc/sysconfig/network-scripts/ifcfg-*"


def _redhat(ctx: SysprepContext) -> bool:
    return ctx.os.type == "linux" and ctx.os.family == "redhat"


def _drop_keys(g: Guest, keys: tuple[str, ...]) -> list[str]:
    """Rewrite every ifcfg file without lines starting ``KEY=``; the file keeps its inode and label.

    Like virt-sysprep the file is rewritten as lines joined by newlines with a final
    newline, even when no line was dropped, so results compare byte for byte.
    """
    changed: list[str] = []
    for path in g.glob(IFCFG_GLOB):
        if not g.is_file(path, follow=True):
            continue
        lines = g.read_text(path).splitlines()
        kept = [line for line in lines if not line.startswith(keys)]
        g.write_text(path, "\n".join(kept) + "\n")
        if kept != lines:
            changed.append(path)
    return changed


@dataclass(frozen=True)
class NetHostname(SysprepOperation):
    name = "net-hostname"
    heading = "Remove HOSTNAME and DHCP_HOSTNAME in network interface configuration"

    def apply(self, ctx: SysprepContext) -> list[str]:
        return _drop_keys(ctx.guest, ("HOSTNAME=", "DHCP_HOSTNAME=")) if _redhat(ctx) else []


@dataclass(frozen=True)
class NetHwaddr(SysprepOperation):
    name = "net-hwaddr"
    heading = "Remove HWADDR (hard-coded MAC address) configuration"

    def apply(self, ctx: SysprepContext) -> list[str]:
        return _drop_keys(ctx.guest, ("HWADDR=",)) if _redhat(ctx) else []


@dataclass(frozen=True)
class NetNmconn(SysprepOperation):
    """Keyfile profiles carry the template's MAC and connection UUIDs; NetworkManager recreates defaults."""

    name = "net-nmconn"
    heading = "Remove system-local NetworkManager connection profiles (keyfiles)"

    def apply(self, ctx: SysprepContext) -> list[str]:
        if not _redhat(ctx):
            return []
        g = ctx.guest
        return remove_files(g, g.glob("/etc/NetworkManager/system-connections/*.nmconnection"))


@dataclass(frozen=True)
class UdevPersistentNet(SysprepOperation):
    name = "udev-persistent-net"
    heading = "Remove udev persistent net rules"

    def apply(self, ctx: SysprepContext) -> list[str]:
        return remove_files(ctx.guest, ["/etc/udev/rules.d/70-persistent-net.rules"])


@dataclass(frozen=True)
class DhcpClientState(SysprepOperation):
    name = "dhcp-client-state"
    heading = "Remove DHCP client leases"

    def apply(self, ctx: SysprepContext) -> list[str]:
        return remove_globs(ctx.guest, ["/var/lib/dhclient/*", "/var/lib/dhcp/*"])


@dataclass(frozen=True)
class DhcpServerState(SysprepOperation):
    name = "dhcp-server-state"
    heading = "Remove DHCP server leases"

    def apply(self, ctx: SysprepContext) -> list[str]:
        return remove_globs(ctx.guest, ["/var/lib/dhcpd/*"])


@dataclass(frozen=True)
class FirewallRules(SysprepOperation):
    """Off by default: removing a template's firewall rules can expose its clones."""

    name = "firewall-rules"
    heading = "Remove the firewall rules"
    default = False

    def apply(self, ctx: SysprepContext) -> list[str]:
        return remove_non_dirs(ctx.guest, ["/etc/sysconfig/iptables", "/etc/firewalld/services/*",
                                           "/etc/firewalld/zones/*"])
