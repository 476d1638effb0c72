"""Users' traces: shell histories, SSH directories, cron and at jobs, mail, PAM state, accounts.

Only /root and /home/* are searched for home directories, as virt-sysprep does.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from ..guest.api import Guest
from .base import (
    SysprepContext,
    SysprepOperation,
    remove_files,
    remove_globs,
    remove_non_dirs,
    remove_regular_files_below,
)

__all__ = [
    "BashHistory",
    "CronSpool",
    "MailSpool",
    "PamData",
    "PasswdBackups",
    "SshUserdir",
    "UserAccount",
    "ZshHistory",
]


def _histories(ctx: SysprepContext, filename: str) -> list[str]:
    g = ctx.guest
    return remove_non_dirs(g, [f"/home/*/{filename}"]) + remove_files(g, [f"/root/{filename}"])


@dataclass(frozen=True)
class BashHistory(SysprepOperation):
    name = "bash-history"
    heading = "Remove the bash history in the guest"

    def apply(self, ctx: SysprepContext) -> list[str]:
        return _histories(ctx, ".bash_history")


@dataclass(frozen=True)
class ZshHistory(SysprepOperation):
    """In newer guestfs-tools (default on); not in virt-sysprep 1.48."""

    name = "zsh-history"
    heading = "Remove the zsh history in the guest"
    upstream = False

    def apply(self, ctx: SysprepContext) -> list[str]:
        return _histories(ctx, ".zsh_history")


def _count_keys(g: Guest, ssh_dir: str) -> int:
    """Keys a directory grants login with: non-blank, non-comment lines of authorized_keys(2)."""
    count = 0
    for name in ("authorized_keys", "authorized_keys2"):
        path = posixpath.join(ssh_dir, name)
        if g.is_file(path, follow=True):
            count += sum(1 for line in g.read_text(path).splitlines()
                         if line.strip() and not line.lstrip().startswith("#"))
    return count


@dataclass(frozen=True)
class SshUserdir(SysprepOperation):
    """Removes whole ``.ssh`` directories, so keys injected before sysprep are gone; warns when it does.

    ``--ssh-inject`` given to the same ``imgsmith sysprep`` survives: the customize
    operation runs after this one.
    """

    name = "ssh-userdir"
    heading = 'Remove ".ssh" directories in the guest'

    def apply(self, ctx: SysprepContext) -> list[str]:
        g = ctx.guest
        candidates = [p.rstrip("/") for p in g.glob("/home/*/.ssh")]
        if g.exists("/root/.ssh") or g.is_symlink("/root/.ssh"):
            candidates.append("/root/.ssh")
        for path in candidates:
            keys = _count_keys(g, path) if g.is_dir(path) else 0
            if keys:
                ctx.warn(f"ssh-userdir removed {path} (holding {keys} authorized key(s)); "
                         "use --operations defaults,-ssh-userdir to keep injected keys")
            g.rm_rf(path)
        return candidates


def _is_seq(path: str) -> bool:
    return posixpath.basename(path) == ".SEQ"


@dataclass(frozen=True)
class CronSpool(SysprepOperation):
    """Users' crontabs and queued at jobs; at's job sequence files are reset, not removed."""

    name = "cron-spool"
    heading = "Remove user at-jobs and cron-jobs"

    def apply(self, ctx: SysprepContext) -> list[str]:
        g = ctx.guest
        changed = remove_regular_files_below(g, "/var/spool/cron", keep=_is_seq)
        changed += self._reset_seq(g, "/var/spool/cron/atjobs/.SEQ")
        changed += remove_non_dirs(g, ["/var/spool/atjobs/*"])
        changed += self._reset_seq(g, "/var/spool/atjobs/.SEQ")
        changed += remove_non_dirs(g, ["/var/spool/atspool/*"])
        changed += remove_regular_files_below(g, "/var/spool/at", keep=_is_seq)
        changed += self._reset_seq(g, "/var/spool/at/.SEQ")
        return changed

    @staticmethod
    def _reset_seq(g: Guest, path: str) -> list[str]:
        """Written in place (the file keeps its owner, mode and SELinux label)."""
        if not g.is_file(path):
            return []
        g.write(path, b"00000\n")
        return [path]


@dataclass(frozen=True)
class MailSpool(SysprepOperation):
    name = "mail-spool"
    heading = "Remove email from the local mail spool directory"

    def apply(self, ctx: SysprepContext) -> list[str]:
        return remove_globs(ctx.guest, ["/var/spool/mail/*", "/var/mail/*"])


@dataclass(frozen=True)
class PamData(SysprepOperation):
    name = "pam-data"
    heading = "Remove the PAM data in the guest"

    def apply(self, ctx: SysprepContext) -> list[str]:
        return remove_non_dirs(ctx.guest, ["/var/run/console/*", "/var/run/faillock/*", "/var/run/sepermit/*"])


PASSWD_BACKUPS = ("/etc/group-", "/etc/gshadow-", "/etc/passwd-", "/etc/shadow-", "/etc/subgid-", "/etc/subuid-")


@dataclass(frozen=True)
class PasswdBackups(SysprepOperation):
    """shadow-utils' ``-`` backups hold the template's previous password hashes."""

    name = "passwd-backups"
    heading = "Remove /etc/passwd- and similar backup files"

    def apply(self, ctx: SysprepContext) -> list[str]:
        return remove_files(ctx.guest, PASSWD_BACKUPS) if ctx.os.type == "linux" else []


def _login_defs_range(g: Guest) -> tuple[int, int]:
    """UID_MIN..UID_MAX from /etc/login.defs; shadow-utils' own defaults when absent.

    virt-sysprep fails when login.defs lacks them; falling back to 1000..60000 is what
    useradd itself assumes.
    """
    values = {"UID_MIN": 1000, "UID_MAX": 60000}
    if g.is_file("/etc/login.defs", follow=True):
        for line in g.read_text("/etc/login.defs").splitlines():
            m = re.match(r"^\s*(UID_MIN|UID_MAX)\s+(\d+)\s*$", line)
            if m:
                values[m.group(1)] = int(m.group(2))
    return values["UID_MIN"], values["UID_MAX"]


def _drop_entries(g: Guest, path: str, names: set[str]) -> bool:
    """Remove the lines whose first colon field is in *names*; other lines stay byte for byte."""
    if not names or not g.is_file(path, follow=True):
        return False
    text = g.read_text(path)
    lines = text.splitlines(keepends=True)
    kept = [line for line in lines if line.split(":", 1)[0] not in names]
    if len(kept) == len(lines):
        return False
    g.write_text(path, "".join(kept))
    return True


@dataclass(frozen=True)
class UserAccount(SysprepOperation):
    """Removes normal users (UID_MIN..UID_MAX), their homes, mail and same-named groups; never root.

    ``--remove-user-accounts`` limits removal to the users named, ``--keep-user-accounts``
    spares users; a user in both is kept. Beyond virt-sysprep, the removed groups' lines
    in /etc/gshadow go too, so ``grpck`` stays clean and ``groupadd`` can reuse the names.
    """

    name = "user-account"
    heading = "Remove the user accounts in the guest"
    default = False

    def apply(self, ctx: SysprepContext) -> list[str]:
        g = ctx.guest
        if ctx.os.type == "windows" or not g.is_file("/etc/passwd", follow=True):
            return []
        uid_min, uid_max = _login_defs_range(g)
        victims: dict[str, str] = {}
        for line in g.read_text("/etc/passwd").splitlines():
            fields = line.split(":")
            if len(fields) < 7 or not fields[2].isdigit():
                continue
            name, uid, home = fields[0], int(fields[2]), fields[5]
            if uid_min <= uid <= uid_max and self._chosen(ctx, name):
                victims[name] = home
        if not victims:
            return []
        changed = [p for p in ("/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow")
                   if _drop_entries(g, p, set(victims))]
        for name, home in victims.items():
            for path in (f"/var/spool/mail/{name}", home):
                if path and path != "/" and (g.exists(path) or g.is_symlink(path)):
                    g.rm_rf(path)
                    changed.append(path)
        ctx.message(f"user-account: removed {', '.join(sorted(victims))}")
        return changed

    @staticmethod
    def _chosen(ctx: SysprepContext, user: str) -> bool:
        opts = ctx.options
        if user in opts.keep_users:
            return False
        return not opts.remove_users or user in opts.remove_users
