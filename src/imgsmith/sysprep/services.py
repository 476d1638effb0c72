"""Per-machine data of particular services: Dovecot, Samba, SSSD, Puppet.

Their databases hold the template's identity (Samba's machine secrets, Puppet's
certificates, SSSD's cached credentials) and their logs its history; the services
rebuild them on the clone. As in virt-sysprep only files matching each glob are removed
(``rm``, not ``rm -r``): a directory a glob matches stays, with whatever is in it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import SysprepContext, SysprepOperation, remove_non_dirs

__all__ = ["DovecotData", "PuppetDataLog", "SambaDbLog", "SssdDbLog"]


@dataclass(frozen=True)
class DovecotData(SysprepOperation):
    name = "dovecot-data"
    heading = "Remove Dovecot (mail server) data"

    def apply(self, ctx: SysprepContext) -> list[str]:
        return remove_non_dirs(ctx.guest, ["/var/lib/dovecot/*"])


@dataclass(frozen=True)
class SambaDbLog(SysprepOperation):
    name = "samba-db-log"
    heading = "Remove the database and log files of Samba"

    def apply(self, ctx: SysprepContext) -> list[str]:
        return remove_non_dirs(ctx.guest, ["/var/log/samba/old/*", "/var/log/samba/*", "/var/lib/samba/*/*",
                                        "/var/lib/samba/*"])


@dataclass(frozen=True)
class SssdDbLog(SysprepOperation):
    name = "sssd-db-log"
    heading = "Remove the database and log files of sssd"

    def apply(self, ctx: SysprepContext) -> list[str]:
        return remove_non_dirs(ctx.guest, ["/var/log/sssd/*", "/var/lib/sss/db/*"])


@dataclass(frozen=True)
class PuppetDataLog(SysprepOperation):
    """Puppet's logs and the files two and three levels into /var/lib/puppet (certificates, state).

    ``/var/lib/puppet/ssl/certs/`` itself stays: virt-sysprep's ``rm`` cannot remove it either.
    """

    name = "puppet-data-log"
    heading = "Remove the data and log files of puppet"

    def apply(self, ctx: SysprepContext) -> list[str]:
        return remove_non_dirs(ctx.guest, ["/var/log/puppet/*", "/var/lib/puppet/*/*", "/var/lib/puppet/*/*/*"])
