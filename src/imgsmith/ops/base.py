"""The operation registry: one small declarative class per virt-customize option.

Each operation declares its option name and argument syntax (``metavar``), a help
line, the phase it runs in, how to parse the virt-customize argument string and the
YAML value, what host files it reads (for validation and cache keys), a redacted
description, and ``apply`` against the Guest API. Registration is explicit through
``__init_subclass__``: defining the class with a ``name`` adds it to ``CUSTOMIZE_OPERATIONS``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shlex
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, ClassVar, Self

from ..cache.config import shared_secret_key
from ..errors import UsageError
from ..guest.api import Guest

__all__ = [
    "CUSTOMIZE_OPERATIONS",
    "ApplyContext",
    "CustomizePhase",
    "FlagOperation",
    "HostScriptOperation",
    "Operation",
    "ParseContext",
    "Secret",
    "Settings",
    "ShellCommandOperation",
    "split_colon",
]


class CustomizePhase(IntEnum):
    """virt-customize applies passwords after every other operation and relabels SELinux last."""

    NORMAL = 0
    PASSWORDS = 1
    RELABEL = 2


class Secret(str):
    """A string that never shows itself: repr/str-formatting in logs give ``***``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('***')"

    def reveal(self) -> str:
        return str.__str__(self)

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return "***"


@dataclass(frozen=True)
class ParseContext:
    """Where relative host paths are resolved and whether host files must exist now."""

    base_dir: Path = field(default_factory=Path.cwd)
    check_files: bool = True
    origin: str = "command line"

    def host_path(self, raw: str, option: str, *, must_exist: bool = True, directory: bool = False) -> Path:
        path = Path(os.path.expanduser(raw))
        if not path.is_absolute():
            path = self.base_dir / path
        if self.check_files and must_exist:
            if not path.exists():
                raise UsageError(f"--{option}: {raw}: no such file on the host")
            if not directory and path.is_dir():
                raise UsageError(f"--{option}: {raw}: is a directory, expected a file")
            if not os.access(path, os.R_OK):
                raise UsageError(f"--{option}: {raw}: not readable")
        return path


@dataclass(frozen=True)
class Settings:
    """Run-wide settings that some operations consult (they are flags, not operations)."""

    password_crypto: str | None = None
    selinux_relabel: bool | None = None  # None: automatic (on when the guest has SELinux enabled)
    dry_run: bool = False
    scriptdir: Path | None = None


@dataclass
class ApplyContext:
    """What an operation gets when applied: the guest, settings, and ways to report."""

    guest: Guest
    settings: Settings = Settings()
    message: Callable[[str], None] = lambda _m: None
    warn: Callable[[str], None] = lambda _m: None
    output: Callable[[str], None] = print  # stdout: only for what the user asked to see (random passwords)
    state: dict[str, Any] = field(default_factory=dict)

    def next_index(self, key: str) -> int:
        value = int(self.state.get(key, 0)) + 1
        self.state[key] = value
        return value


def split_colon(arg: str, option: str, metavar: str) -> tuple[str, str]:
    """``FILE:REST`` split at the first colon, as virt-customize does; both halves required."""
    head, sep, tail = arg.partition(":")
    if not sep or not head:
        raise UsageError(f"--{option}: expected {metavar}, got {arg!r}")
    return head, tail


CUSTOMIZE_OPERATIONS: dict[str, type[Operation]] = {}


class Operation(ABC):
    """Base for customize operations; subclasses are frozen dataclasses with a ``name``."""

    name: ClassVar[str]
    metavar: ClassVar[str | None] = None  # None: a flag that takes no argument
    help: ClassVar[str] = ""
    phase: ClassVar[CustomizePhase] = CustomizePhase.NORMAL
    secret: ClassVar[bool] = False  # True: the argument must never be shown

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name:
            if name in CUSTOMIZE_OPERATIONS:
                raise TypeError(f"operation {name!r} registered twice")
            CUSTOMIZE_OPERATIONS[name] = cls

    @classmethod
    @abstractmethod
    def parse(cls, arg: str, ctx: ParseContext) -> Self:
        """Parse the virt-customize argument string (``""`` for flags)."""

    @classmethod
    def from_yaml(cls, value: object, ctx: ParseContext) -> Self:
        """The YAML form: the same string the option takes (or ``true`` for a flag)."""
        if cls.metavar is None:
            if value is True:
                return cls.parse("", ctx)
            raise UsageError(f"{cls.name}: expected true (this option takes no argument)")
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return cls.parse(str(value), ctx)
        raise UsageError(f"{cls.name}: expected a string like {cls.metavar}")

    @classmethod
    def yaml_schema(cls) -> dict[str, Any]:
        """JSON Schema of the YAML value (the option string, or true for flags)."""
        if cls.metavar is None:
            return {"const": True, "description": cls.help}
        return {"type": "string", "description": f"{cls.metavar}: {cls.help}"}

    def argument(self) -> str:
        """The argument as virt-customize would take it (secrets redacted)."""
        return ""

    def describe(self) -> str:
        arg = self.argument()
        return f"--{self.name}" + (f" {arg}" if arg else "")

    def host_files(self) -> list[Path]:
        """Host files this operation reads; their content digests enter the cache key."""
        return []

    def cache_token(self) -> dict[str, Any]:
        """Canonical form for the layer cache key: option name and its fields (secrets hashed)."""
        token: dict[str, Any] = {"op": self.name}
        if is_dataclass(self):
            for f in fields(self):
                token[f.name] = _canonical(getattr(self, f.name))
        return token

    @abstractmethod
    def apply(self, ctx: ApplyContext) -> None: ...


def _canonical(value: object) -> object:
    if isinstance(value, Secret):
        # Keyed so a leaked cache key cannot be brute-forced offline without the host key. With a team's
        # shared key (cache/config.py: shared_secret_key) an HMAC instead: the same on every host that holds
        # it, so the layer can be shared (sharing.carries_secret tells the two apart).
        shared = shared_secret_key()
        if shared is not None:
            return "shared-secret:" + hmac.new(shared, value.reveal().encode(), hashlib.sha256).hexdigest()[:32]
        return "secret:" + hashlib.blake2b(value.reveal().encode(), key=_secret_key(), digest_size=16).hexdigest()
    if isinstance(value, Path):
        return os.fspath(value)
    if isinstance(value, tuple | list):
        return [_canonical(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _canonical(getattr(value, f.name)) for f in fields(value)}
    return value


def _secret_key() -> bytes:
    """A per-host random key (0600, in the cache root) used to hash secrets into cache keys."""
    from ..paths import cache_root
    path = cache_root() / "secret-key"
    try:
        return path.read_bytes()[:64]
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = os.urandom(32)
        tmp = path.with_name(f".secret-key.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        try:
            os.link(tmp, path)  # first writer wins; everyone then reads the winner's key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return path.read_bytes()[:64]
    except OSError:
        return b"imgsmith-no-host-key"


@dataclass(frozen=True)
class ShellCommandOperation(Operation):
    """Shared shape of the operations whose argument is one shell command line (not registered itself)."""

    command: str

    @classmethod
    def parse(cls, arg: str, ctx: ParseContext) -> Self:
        if not arg.strip():
            raise UsageError(f"--{cls.name}: the command is empty")
        return cls(arg)

    def argument(self) -> str:
        return shlex.quote(self.command)


@dataclass(frozen=True)
class HostScriptOperation(Operation):
    """Shared shape of the operations whose argument is one host script, part of the layer's key."""

    script: Path

    @classmethod
    def parse(cls, arg: str, ctx: ParseContext) -> Self:
        return cls(ctx.host_path(arg, cls.name))

    def argument(self) -> str:
        return os.fspath(self.script)

    def host_files(self) -> list[Path]:
        return [self.script]


@dataclass(frozen=True)
class FlagOperation(Operation):
    """Shared shape of the options that take no argument (``--update``, ``--selinux-relabel``)."""

    @classmethod
    def parse(cls, arg: str, ctx: ParseContext) -> Self:
        return cls()
