"""Repository fixes for end-of-life distributions (imgsmith extensions, not virt-customize options)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import GuestError
from .base import ApplyContext, FlagOperation

__all__ = ["Centos7VaultRepos"]

VAULT = "http://vault.centos.org/7.9.2009"


def vault_repo_text(text: str) -> str:
    """Point a CentOS 7 .repo file at the vault: mirrorlist off, baseurl on the vault. Idempotent."""
    text = re.sub(r"^(mirrorlist=.*)$", r"#\1", text, flags=re.MULTILINE)
    text = re.sub(r"^##+(mirrorlist=)", r"#\1", text, flags=re.MULTILINE)
    return re.sub(r"^#?baseurl=https?://[^/\s]+/(?:centos/)?(?:\$releasever|7(?:\.\d+\.\d+)?)/",
                  f"baseurl={VAULT}/", text, flags=re.MULTILINE)


@dataclass(frozen=True)
class Centos7VaultRepos(FlagOperation):
    """CentOS 7 reached end of life in June 2024; its mirrorlist no longer answers, so yum fails."""

    name = "centos7-vault-repos"
    help = "Point CentOS 7's yum repositories at vault.centos.org (CentOS 7 is end-of-life); idempotent"

    def apply(self, ctx: ApplyContext) -> None:
        g = ctx.guest
        if g.os.distro != "centos" or g.os.major != 7:
            raise GuestError(f"centos7-vault-repos applies to CentOS 7, not {g.os.describe()}")
        ctx.message("Pointing yum at the CentOS 7 vault")
        for path in g.glob("/etc/yum.repos.d/CentOS-*.repo"):
            old = g.read_text(path)
            new = vault_repo_text(old)
            if new != old:
                g.write_text(path, new)
