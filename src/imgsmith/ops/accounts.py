"""Accounts: passwords (set after every other operation, as virt-customize does) and SSH keys."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from ..errors import GuestError, UsageError
from ..guest.api import Guest, OSInfo
from .base import ApplyContext, CustomizePhase, Operation, ParseContext, Secret, split_colon
from .crypto import hash_password, is_hashed

__all__ = ["Password", "PasswordSelector", "RootPassword", "SshInject", "default_crypto"]

_RANDOM_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"


@dataclass(frozen=True)
class PasswordSelector:
    """password:… file:… random disabled locked[:…] hashed:… — the secret is held as a Secret.

    ``spelled`` is how the selector is shown (``locked:password`` …), without the secret.
    """

    kind: str  # password | random | disabled | hashed
    value: Secret | None = None
    locked: bool = False
    spelled: str = ""

    @classmethod
    def parse(cls, text: str, option: str, ctx: ParseContext) -> PasswordSelector:
        # virt-customize's parse_selector_list (password.ml): any number of leading "lock"/"locked"
        # words lock the account; "locked" alone is a locked disabled password.
        locked = False
        rest = text
        while True:
            head, sep, tail = rest.partition(":")
            if head not in ("lock", "locked"):
                break
            locked, rest = True, (tail if sep else "disabled")
        if rest == "disable":
            rest = "disabled"
        kind, _, value = rest.partition(":")
        spelled = ("locked:" if locked else "") + kind
        if kind == "password" and value:
            return cls("password", Secret(value), locked, spelled)
        if kind == "file" and value:
            path = ctx.host_path(value, option)
            first = path.read_text(encoding="utf-8").splitlines()[:1] if ctx.check_files else [""]
            if ctx.check_files and (not first or not first[0]):
                raise UsageError(f"--{option}: {value}: the password file's first line is empty")
            return cls("password", Secret(first[0] if first else ""), locked, f"{spelled}:{value}")
        if kind == "random" and not value:
            return cls("random", None, locked, spelled)
        if kind == "disabled" and not value:
            return cls("disabled", None, locked, spelled)
        if kind == "hashed" and is_hashed(value):
            return cls("hashed", Secret(value), locked, spelled)
        if kind == "hashed":
            raise UsageError(f"--{option}: hashed: needs a crypt(3) hash starting with $1$, $5$, $6$ or $y$")
        raise UsageError(f"--{option}: unknown password selector {kind!r} (expected password:PASS, "
                         "file:FILE, random, disabled, locked[:SELECTOR] or hashed:HASH)")

    def shadow_field(self, crypto: str, user: str, ctx: ApplyContext) -> str:
        if self.kind == "disabled":
            field = "*"
        elif self.kind == "hashed":
            assert self.value is not None
            field = self.value.reveal()
        else:
            if self.kind == "random":
                plain = "".join(secrets.choice(_RANDOM_CHARS) for _ in range(16))
                # The one place a generated password is shown: stdout, once, never the log.
                ctx.output(f"Setting random password of {user} to {plain}")
            else:
                assert self.value is not None
                plain = self.value.reveal()
            field = hash_password(plain, crypto)
        # virt-customize writes "!!" in front of a locked account's field (shadow-utils' own
        # `passwd -l` writes one "!"); "locked" alone is "!!*".
        return ("!!" + field) if self.locked else field


def default_crypto(info: OSInfo) -> str:
    """The hash a guest's own passwd would use: yescrypt where its libxcrypt has it, else SHA-512."""
    d, v = info.distro, info.major
    if info.family == "redhat" and d != "fedora":
        return "yescrypt" if v >= 9 else "sha512" if v >= 6 else "md5"
    if d == "fedora":
        return "yescrypt" if v >= 30 else "sha512"
    if d == "debian":
        return "yescrypt" if v >= 11 else "sha512"
    if d == "ubuntu":
        return "yescrypt" if v >= 20 else "sha512"
    if info.family == "suse":
        return "sha512"
    return "sha512"


def _set_shadow(ctx: ApplyContext, user: str, selector: PasswordSelector) -> None:
    g = ctx.guest
    crypto = ctx.settings.password_crypto or default_crypto(g.os)
    if not g.is_file("/etc/shadow"):
        raise GuestError("the guest has no /etc/shadow")
    lines = g.read_text("/etc/shadow").split("\n")
    for i, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] == user and len(fields) >= 2:
            fields[1] = selector.shadow_field(crypto, user, ctx)
            lines[i] = ":".join(fields)
            break
    else:
        raise GuestError(f"user {user!r} does not exist in the guest's /etc/shadow")
    g.write_text("/etc/shadow", "\n".join(lines))


@dataclass(frozen=True)
class Password(Operation):
    name = "password"
    metavar = "USER:SELECTOR"
    help = ("Set USER's password; SELECTOR is password:PASS, file:FILE, random, disabled, "
            "locked[:SELECTOR] or hashed:HASH (applied after all other operations)")
    phase = CustomizePhase.PASSWORDS
    secret = True
    user: str
    selector: PasswordSelector

    @classmethod
    def parse(cls, arg: str, ctx: ParseContext) -> Self:
        user, sel = split_colon(arg, cls.name, cls.metavar)
        return cls(user, PasswordSelector.parse(sel, cls.name, ctx))

    @classmethod
    def from_yaml(cls, value: object, ctx: ParseContext) -> Self:
        if isinstance(value, dict) and set(value) == {"user", "password"}:
            return cls(str(value["user"]), _selector_from_yaml(value["password"], cls.name, ctx))
        return super().from_yaml(value, ctx)

    def argument(self) -> str:
        return f"{self.user}:{self.selector.spelled}" + (":***" if self.selector.value else "")

    def apply(self, ctx: ApplyContext) -> None:
        ctx.message(f"Setting the password of {self.user}")
        _set_shadow(ctx, self.user, self.selector)


@dataclass(frozen=True)
class RootPassword(Operation):
    name = "root-password"
    metavar = "SELECTOR"
    help = "Set root's password (same selectors as --password)"
    phase = CustomizePhase.PASSWORDS
    secret = True
    selector: PasswordSelector

    @classmethod
    def parse(cls, arg: str, ctx: ParseContext) -> Self:
        return cls(PasswordSelector.parse(arg, cls.name, ctx))

    @classmethod
    def from_yaml(cls, value: object, ctx: ParseContext) -> Self:
        return cls(_selector_from_yaml(value, cls.name, ctx))

    @classmethod
    def yaml_schema(cls) -> dict[str, Any]:
        return {"description": cls.help, "anyOf": [
            {"type": "string"},
            {"type": "object", "properties": {"env": {"type": "string"}}, "required": ["env"],
             "additionalProperties": False},
            {"type": "object", "properties": {"file": {"type": "string"}}, "required": ["file"],
             "additionalProperties": False}]}

    def argument(self) -> str:
        return self.selector.spelled + (":***" if self.selector.value else "")

    def apply(self, ctx: ApplyContext) -> None:
        ctx.message("Setting the root password")
        _set_shadow(ctx, "root", self.selector)


def _selector_from_yaml(value: object, option: str, ctx: ParseContext) -> PasswordSelector:
    """YAML secrets: ``{env: NAME}`` or ``{file: PATH}`` (first line), or the selector string."""
    if isinstance(value, dict) and len(value) == 1:
        (key, ref), = value.items()
        if key == "env":
            if ctx.check_files and not os.environ.get(str(ref)):
                raise UsageError(f"{option}: environment variable {ref} is not set (or empty)")
            return PasswordSelector("password", Secret(os.environ.get(str(ref), "")), False, f"env:{ref}")
        if key == "file":
            return PasswordSelector.parse(f"file:{ref}", option, ctx)
    if isinstance(value, str):
        return PasswordSelector.parse(value, option, ctx)
    raise UsageError(f"{option}: expected a selector string, {{env: NAME}} or {{file: PATH}}")


def _default_public_key(option: str) -> tuple[str, str]:
    """The caller's own public key, chosen as virt-customize's ``local_user_ssh_pubkey`` does.

    ssh_key.ml: every file in ``$HOME/.ssh`` whose name matches ``^id.*\\.pub$`` and does
    not end in ``-cert.pub``, newest modification time first (a stable sort of the
    directory's own listing order, so equal times keep readdir order).
    """
    ssh_dir = Path.home() / ".ssh"
    try:
        names = os.listdir(ssh_dir)
    except OSError as exc:
        raise UsageError(f"--{option}: no selector given and {ssh_dir} cannot be read "
                         f"({exc.strerror or exc}); give USER:string:KEY or USER:file:PATH") from None
    keys = [ssh_dir / n for n in names
            if n.startswith("id") and n.endswith(".pub") and not n.endswith("-cert.pub")]
    if not keys:
        raise UsageError(f"--{option}: no selector given and no public key file (id*.pub) in {ssh_dir} "
                         "(give USER:string:KEY or USER:file:PATH)")
    newest = sorted(keys, key=lambda k: k.stat().st_mtime, reverse=True)[0]
    key = newest.read_text().strip()
    if not key:
        raise UsageError(f"--{option}: public key file {newest} is empty")
    return key, f"file:{newest}"


def _passwd_entry(g: Guest, user: str) -> tuple[int, int, str]:
    for line in g.read_text("/etc/passwd").splitlines():
        fields = line.split(":")
        if fields[0] == user and len(fields) >= 6:
            return int(fields[2]), int(fields[3]), fields[5]
    raise GuestError(f"user {user!r} does not exist in the guest")


@dataclass(frozen=True)
class SshInject(Operation):
    name = "ssh-inject"
    metavar = "USER[:SELECTOR]"
    help = ("Append a public key to USER's ~/.ssh/authorized_keys; SELECTOR is string:KEY or file:FILE "
            "(default: your own ~/.ssh/id_*.pub)")
    user: str
    key: str
    source: str

    @classmethod
    def parse(cls, arg: str, ctx: ParseContext) -> Self:
        user, _, sel = arg.partition(":")
        if not user:
            raise UsageError(f"--ssh-inject: expected USER[:SELECTOR], got {arg!r}")
        if not sel:  # "USER" and "USER:" both mean the caller's own key (ssh_key.ml)
            key, source = _default_public_key(cls.name)
        elif sel.startswith("string:") and sel[7:].strip():
            key, source = sel[7:].strip(), "string"
        elif sel.startswith("file:") and sel[5:]:
            path = ctx.host_path(sel[5:], cls.name)
            key = path.read_text().strip() if ctx.check_files else ""
            source = f"file:{path}"
            if ctx.check_files and not key:
                raise UsageError(f"--ssh-inject: {sel[5:]}: the key file is empty")
        else:
            raise UsageError(f"--ssh-inject: unknown key selector {sel!r} (expected string:KEY or file:FILE)")
        if "\n" in key:
            raise UsageError("--ssh-inject: the key must be a single line")
        return cls(user, key, source)

    def argument(self) -> str:
        return f"{self.user}:{self.source}" + (f":{self.key}" if self.source == "string" else "")

    def host_files(self) -> list[Path]:
        return [Path(self.source[5:])] if self.source.startswith("file:") else []

    def apply(self, ctx: ApplyContext) -> None:
        g = ctx.guest
        ctx.message(f"SSH key inject: {self.user}")
        uid, gid, home = _passwd_entry(g, self.user)
        ssh_dir = home.rstrip("/") + "/.ssh"
        if not g.exists(ssh_dir):
            g.mkdir_p(ssh_dir)
            g.chmod(0o700, ssh_dir)
            g.chown(uid, gid, ssh_dir)
        keys = ssh_dir + "/authorized_keys"
        prefix = b""
        if not g.exists(keys):
            g.touch(keys)
            g.chmod(0o600, keys)
            g.chown(uid, gid, keys)
        else:
            current = g.read(keys)
            if current and not current.endswith(b"\n"):
                prefix = b"\n"
        g.append(keys, prefix + self.key.encode() + b"\n")


