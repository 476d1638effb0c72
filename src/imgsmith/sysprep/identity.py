"""Machine identity: IDs, host keys, enrolment in IPA/Kerberos/RHN, cloud-init instance state.

Every clone must have its own: two machines with one machine-id confuse journald and
DHCP (systemd derives the DHCP client ID from it), two with one SSH host key let
one impersonate the other, two enrolled with one keytab fight over the principal.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import SysprepContext, SysprepOperation, remove_files, remove_globs, remove_non_dirs

__all__ = [
    "BlkidTab",
    "CaCertificates",
    "CloudInit",
    "FlagReconfiguration",
    "IpaClient",
    "KerberosData",
    "KerberosHostkeytab",
    "LvmSystemDevices",
    "MachineId",
    "RhSubscriptionManager",
    "RhnSystemid",
    "SmoltUuid",
    "SshHostkeys",
]

UPDATE_CA_STORE = "update_ca_store"
"""Key in ``SysprepContext.facts``: a certificate was removed, so the CA store is rebuilt once at the end."""


@dataclass(frozen=True)
class MachineId(SysprepOperation):
    """Empties (never deletes) the machine-id files: systemd makes a new ID at first boot.

    An empty /etc/machine-id stays empty after imgsmith's customize step, unlike
    virt-sysprep 1.48 whose customize step fills it with one ID every clone then shares.
    """

    name = "machine-id"
    heading = "Remove the local machine ID"

    def apply(self, ctx: SysprepContext) -> list[str]:
        g = ctx.guest
        changed = []
        for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
            if g.is_file(path):
                g.truncate(path)
                changed.append(path)
        return changed


@dataclass(frozen=True)
class SshHostkeys(SysprepOperation):
    """sshd (or cloud-init) generates new host keys at first boot."""

    name = "ssh-hostkeys"
    heading = "Remove the SSH host keys in the guest"

    def apply(self, ctx: SysprepContext) -> list[str]:
        return remove_non_dirs(ctx.guest, ["/etc/ssh/*_host_*"])


@dataclass(frozen=True)
class SmoltUuid(SysprepOperation):
    name = "smolt-uuid"
    heading = "Remove the Smolt hardware UUID"

    def apply(self, ctx: SysprepContext) -> list[str]:
        return remove_files(ctx.guest, ["/etc/sysconfig/hw-uuid", "/etc/smolt/uuid", "/etc/smolt/hw-uuid"])


@dataclass(frozen=True)
class RhnSystemid(SysprepOperation):
    """RHEL only, as in virt-sysprep: other distributions have no RHN registration."""

    name = "rhn-systemid"
    heading = "Remove the RHN system ID"

    def apply(self, ctx: SysprepContext) -> list[str]:
        if ctx.os.type != "linux" or ctx.os.distro != "rhel":
            return []
        return remove_files(ctx.guest, ["/etc/sysconfig/rhn/systemid", "/etc/sysconfig/rhn/osad-auth.conf"])


@dataclass(frozen=True)
class RhSubscriptionManager(SysprepOperation):
    """RHEL only: the consumer certificate and entitlements identify one registered system."""

    name = "rh-subscription-manager"
    heading = "Remove the RH subscription manager files"

    def apply(self, ctx: SysprepContext) -> list[str]:
        if ctx.os.type != "linux" or ctx.os.distro != "rhel":
            return []
        return remove_globs(ctx.guest, ["/etc/pki/consumer/*", "/etc/pki/entitlement/*"])


IPA_FILES = ("/etc/ipa/ca.crt", "/etc/ipa/default.conf", "/var/lib/ipa-client/sysrestore/*",
             "/var/lib/ipa-client/pki/*")
IPA_CA_FILES = ("/etc/pki/ca-trust/source/anchors/ipa-ca.crt", "/usr/local/share/ca-certificates/ipa-ca.crt",
                "/etc/pki/ca-trust/source/ipa.p11-kit")


@dataclass(frozen=True)
class IpaClient(SysprepOperation):
    """Unenrols without contacting the IPA server (ipa-client-install --uninstall is not run)."""

    name = "ipa-client"
    heading = "Remove the IPA files"

    def apply(self, ctx: SysprepContext) -> list[str]:
        if ctx.os.type != "linux":
            return []
        g = ctx.guest
        removed = remove_non_dirs(g, IPA_FILES)
        certs = remove_files(g, IPA_CA_FILES)
        if certs:
            ctx.facts[UPDATE_CA_STORE] = True
        return removed + certs


@dataclass(frozen=True)
class KerberosHostkeytab(SysprepOperation):
    name = "kerberos-hostkeytab"
    heading = "Remove the Kerberos host keytab file in the guest"

    def apply(self, ctx: SysprepContext) -> list[str]:
        return remove_files(ctx.guest, ["/etc/krb5.keytab"])


@dataclass(frozen=True)
class KerberosData(SysprepOperation):
    """A KDC's database; its configuration (kdc.conf, kadm5.acl) is kept."""

    name = "kerberos-data"
    heading = "Remove Kerberos data in the guest"
    default = False

    def apply(self, ctx: SysprepContext) -> list[str]:
        keep = {"/var/kerberos/krb5kdc/kadm5.acl", "/var/kerberos/krb5kdc/kdc.conf"}
        return remove_non_dirs(ctx.guest, ["/var/kerberos/krb5kdc/*"], skip=keep.__contains__)


CA_GLOBS = ("/etc/pki/CA/certs/*.crt", "/etc/pki/CA/crl/*.crt", "/etc/pki/CA/newcerts/*.crt",
            "/etc/pki/CA/private/*.key", "/etc/pki/tls/private/*.key", "/etc/pki/tls/certs/*.crt")
CA_KEEP = frozenset({"/etc/pki/tls/certs/ca-bundle.crt", "/etc/pki/tls/certs/ca-bundle.trust.crt"})


@dataclass(frozen=True)
class CaCertificates(SysprepOperation):
    """Off by default: local CA material may be exactly what the template is for."""

    name = "ca-certificates"
    heading = "Remove CA certificates in the guest"
    default = False

    def apply(self, ctx: SysprepContext) -> list[str]:
        if ctx.os.type == "windows":
            return []
        removed = remove_non_dirs(ctx.guest, CA_GLOBS, skip=CA_KEEP.__contains__)
        if removed:
            ctx.facts[UPDATE_CA_STORE] = True
        return removed


@dataclass(frozen=True)
class FlagReconfiguration(SysprepOperation):
    """/.unconfigured makes the first boot ask for root password, timezone and so on (interactive)."""

    name = "flag-reconfiguration"
    heading = "Flag the system for reconfiguration"
    default = False

    def apply(self, ctx: SysprepContext) -> list[str]:
        if ctx.os.type != "linux":
            return []
        ctx.guest.touch("/.unconfigured")
        return ["/.unconfigured"]


@dataclass(frozen=True)
class BlkidTab(SysprepOperation):
    """blkid's cache maps the template's devices to UUIDs; symlinks (into tmpfs) are left alone."""

    name = "blkid-tab"
    heading = "Remove blkid tab in the guest"

    def apply(self, ctx: SysprepContext) -> list[str]:
        paths = [f"{d}{n}" for d in ("/var/run/blkid.tab", "/etc/blkid/blkid.tab", "/etc/blkid.tab",
                                     "/dev/.blkid.tab") for n in ("", ".old")]
        return remove_files(ctx.guest, paths, keep_symlinks=True)


@dataclass(frozen=True)
class LvmSystemDevices(SysprepOperation):
    """LVM may only scan the WWIDs listed there, and a clone's disks have new ones (newer guestfs-tools)."""

    name = "lvm-system-devices"
    heading = "Remove LVM2 system.devices file"
    upstream = False

    def apply(self, ctx: SysprepContext) -> list[str]:
        if ctx.os.type != "linux":
            return []
        return remove_files(ctx.guest, ["/etc/lvm/devices/system.devices"])


CLOUD_STATE = ("/var/lib/cloud/instance", "/var/lib/cloud/instances", "/var/lib/cloud/data",
               "/var/lib/cloud/sem", "/var/lib/cloud/handlers", "/var/lib/cloud/scripts/vendor")


@dataclass(frozen=True)
class CloudInit(SysprepOperation):
    """cloud-init's record of the instance it ran on, so a clone runs its per-instance modules again.

    Removed: the ``instance`` link, ``instances/``, ``data/``, ``sem/`` (per-once
    semaphores), ``handlers/`` and ``scripts/vendor/`` (both come from the old
    instance's user and vendor data) and /var/log/cloud-init*.log. Kept: /etc/cloud
    (configuration), /var/lib/cloud/seed (a seed baked into the image on purpose) and the
    administrator's /var/lib/cloud/scripts/per-* — like ``cloud-init clean --logs``
    without ``--seed``, minus the scripts it would also remove.
    """

    name = "cloud-init"
    heading = "Remove cloud-init instance state and logs, keeping its configuration"
    upstream = False

    def apply(self, ctx: SysprepContext) -> list[str]:
        if ctx.os.type != "linux":
            return []
        g = ctx.guest
        removed = [p for p in CLOUD_STATE if g.exists(p) or g.is_symlink(p)]
        for path in removed:
            g.rm_rf(path)
        return removed + remove_non_dirs(g, ["/var/log/cloud-init*.log*"])
