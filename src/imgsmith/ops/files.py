"""File operations: write, append, edit, copy, move, link, delete, permissions, uploads."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from ..errors import GuestError, UsageError
from .base import ApplyContext, Operation, ParseContext, split_colon
from .perl_edit import PerlSubst, parse_subst

__all__ = [
    "AppendLine", "Chmod", "Copy", "CopyIn", "Delete", "Edit", "Link", "Mkdir", "Move",
    "Scrub", "Touch", "Truncate", "TruncateRecursive", "Upload", "Write",
]


def _guest_path(arg: str, option: str) -> str:
    if not arg:
        raise UsageError(f"--{option}: a guest path is required")
    return arg


@dataclass(frozen=True)
class _GuestPathOperation(Operation):
    """Shared shape of the operations whose whole argument is one guest path (not registered itself)."""

    path: str

    @classmethod
    def parse(cls, arg: str, ctx: ParseContext) -> Self:
        return cls(_guest_path(arg, cls.name))

    def argument(self) -> str:
        return self.path


@dataclass(frozen=True)
class AppendLine(Operation):
    name = "append-line"
    metavar = "FILE:LINE"
    help = "Append a line to FILE (created if missing); adds a newline first if the file lacks one"
    path: str
    line: str

    @classmethod
    def parse(cls, arg: str, ctx: ParseContext) -> Self:
        path, line = split_colon(arg, cls.name, cls.metavar)
        if "\n" in line:
            raise UsageError("--append-line: the line must not contain newlines; "
                             "use --append-line several times")
        return cls(path, line)

    def argument(self) -> str:
        return f"{self.path}:{self.line}"

    def apply(self, ctx: ApplyContext) -> None:
        g = ctx.guest
        ctx.message(f"Appending line to {self.path}")
        if not g.exists(self.path):
            g.write(self.path, (self.line + "\n").encode())
            return
        st = g.stat(self.path)
        if not st.is_file:
            raise GuestError(f"{self.path} is not a regular file")
        ending = "\n"
        prefix = ""
        if st.size:
            tail = g.read(self.path)[-2:]
            if tail.endswith(b"\r\n"):
                ending = "\r\n"
            elif not tail.endswith(b"\n"):
                prefix = ending
        g.append(self.path, (prefix + self.line + ending).encode())


@dataclass(frozen=True)
class Chmod(Operation):
    name = "chmod"
    metavar = "PERMISSIONS:FILE"
    help = "Change the permissions of FILE; PERMISSIONS is octal only with a leading 0 (0755), else decimal"
    mode: int
    path: str
    spelled: str

    @classmethod
    def parse(cls, arg: str, ctx: ParseContext) -> Self:
        perms, path = split_colon(arg, cls.name, cls.metavar)
        try:
            mode = int(perms, 8) if perms.startswith("0") and not perms.startswith(("0x", "0o", "0b")) \
                else int(perms, 0)
        except ValueError:
            raise UsageError(f"--chmod: {perms!r} is not a number (use octal with a leading 0, e.g. 0755)") \
                from None
        if not 0 <= mode <= 0o7777:
            raise UsageError(f"--chmod: mode {perms} is out of range")
        return cls(mode, _guest_path(path, cls.name), perms)

    def argument(self) -> str:
        return f"{self.spelled}:{self.path}"

    def apply(self, ctx: ApplyContext) -> None:
        if not self.spelled.startswith("0") and set(self.spelled) <= set("01234567"):
            ctx.warn(f"--chmod {self.spelled}:{self.path}: {self.spelled} is read as DECIMAL "
                     f"(mode {self.mode:04o}), as virt-customize does; write 0{self.spelled} for octal")
        ctx.message(f"Changing permissions of {self.path} to {self.spelled}")
        ctx.guest.chmod(self.mode, self.path)


def _two_paths(cls: type[Operation], arg: str) -> tuple[str, str]:
    assert cls.metavar is not None
    src, dest = split_colon(arg, cls.name, cls.metavar)
    if not dest:
        raise UsageError(f"--{cls.name}: expected {cls.metavar}, got {arg!r}")
    return src, dest


@dataclass(frozen=True)
class _TwoGuestPaths(Operation):
    """Shared shape of ``SOURCE:DEST`` operations inside the guest (not registered itself)."""

    src: str
    dest: str

    @classmethod
    def parse(cls, arg: str, ctx: ParseContext) -> Self:
        return cls(*_two_paths(cls, arg))

    def argument(self) -> str:
        return f"{self.src}:{self.dest}"


@dataclass(frozen=True)
class Copy(_TwoGuestPaths):
    name = "copy"
    metavar = "SOURCE:DEST"
    help = "Copy files or directories recursively inside the guest (cp -a)"

    def apply(self, ctx: ApplyContext) -> None:
        ctx.message(f"Copying (in image): {self.src} to {self.dest}")
        ctx.guest.cp_a(self.src, self.dest)


@dataclass(frozen=True)
class Move(_TwoGuestPaths):
    name = "move"
    metavar = "SOURCE:DEST"
    help = "Move files or directories inside the guest"

    def apply(self, ctx: ApplyContext) -> None:
        ctx.message(f"Moving: {self.src} -> {self.dest}")
        ctx.guest.mv(self.src, self.dest)


@dataclass(frozen=True)
class CopyIn(Operation):
    name = "copy-in"
    metavar = "LOCALPATH:REMOTEDIR"
    help = "Copy a host file or directory tree into REMOTEDIR (which must exist)"
    local: Path
    remotedir: str

    @classmethod
    def parse(cls, arg: str, ctx: ParseContext) -> Self:
        local, remote = _two_paths(cls, arg)
        return cls(ctx.host_path(local, cls.name, directory=True), remote)

    def argument(self) -> str:
        return f"{os.fspath(self.local)}:{self.remotedir}"

    def host_files(self) -> list[Path]:
        return [self.local]

    def apply(self, ctx: ApplyContext) -> None:
        ctx.message(f"Copying: {self.local} to {self.remotedir}")
        if not ctx.guest.is_dir(self.remotedir, follow=True):
            raise GuestError(f"{self.remotedir} is not a directory in the guest")
        ctx.guest.copy_in(self.local, self.remotedir)


@dataclass(frozen=True)
class Delete(_GuestPathOperation):
    name = "delete"
    metavar = "PATH"
    help = "Delete files or directories recursively; PATH may be a glob (/var/log/*.log)"

    def apply(self, ctx: ApplyContext) -> None:
        ctx.message(f"Deleting: {self.path}")
        for path in ctx.guest.glob(self.path):
            ctx.guest.rm_rf(path)


@dataclass(frozen=True)
class Edit(Operation):
    name = "edit"
    metavar = "FILE:EXPR"
    help = "Edit FILE line by line with a Perl s/regex/replacement/flags expression (Python re semantics)"
    path: str
    expr: str

    @classmethod
    def parse(cls, arg: str, ctx: ParseContext) -> Self:
        path, expr = split_colon(arg, cls.name, cls.metavar)
        try:
            parse_subst(expr)
        except UsageError as exc:
            raise UsageError(f"--edit {path}: {exc.message}") from None
        return cls(path, expr)

    @property
    def subst(self) -> PerlSubst:
        return parse_subst(self.expr)

    def argument(self) -> str:
        return f"{self.path}:{self.expr}"

    def apply(self, ctx: ApplyContext) -> None:
        g = ctx.guest
        ctx.message(f"Editing: {self.path}")
        if not g.exists(self.path):
            raise GuestError(f"{self.path} does not exist in the guest")
        if not g.is_file(self.path, follow=True):
            raise GuestError(f"{self.path} is not a regular file in the guest")
        # Write through the resolved path in place: the inode (mode, owner, SELinux label) stays.
        target = g.realpath(self.path)
        text = g.read(target).decode("utf-8", "surrogateescape")
        new = self.subst.apply(text)
        if new != text:
            g.write(target, new.encode("utf-8", "surrogateescape"))


@dataclass(frozen=True)
class Link(Operation):
    name = "link"
    metavar = "TARGET:LINK[:LINK..]"
    help = "Create symbolic links LINK -> TARGET (ln -sf)"
    target: str
    links: tuple[str, ...]

    @classmethod
    def parse(cls, arg: str, ctx: ParseContext) -> Self:
        parts = arg.split(":")
        if len(parts) < 2 or not parts[0] or not all(parts[1:]):
            raise UsageError(f"--link: expected TARGET:LINK[:LINK..], got {arg!r}")
        return cls(parts[0], tuple(parts[1:]))

    def argument(self) -> str:
        return ":".join((self.target, *self.links))

    def apply(self, ctx: ApplyContext) -> None:
        for link in self.links:
            ctx.message(f"Linking: {link} -> {self.target}")
            ctx.guest.ln_sf(self.target, link)


@dataclass(frozen=True)
class Mkdir(_GuestPathOperation):
    name = "mkdir"
    metavar = "DIR"
    help = "Create a directory, with parents as needed (mkdir -p)"

    def apply(self, ctx: ApplyContext) -> None:
        ctx.message(f"Making directory: {self.path}")
        ctx.guest.mkdir_p(self.path)


@dataclass(frozen=True)
class Scrub(_GuestPathOperation):
    name = "scrub"
    metavar = "FILE"
    help = "Overwrite FILE's blocks with patterns, then delete it"

    def apply(self, ctx: ApplyContext) -> None:
        ctx.message(f"Scrubbing: {self.path}")
        ctx.guest.scrub_file(self.path)


@dataclass(frozen=True)
class Touch(_GuestPathOperation):
    name = "touch"
    metavar = "FILE"
    help = "Create FILE if missing, else update its timestamps (touch)"

    def apply(self, ctx: ApplyContext) -> None:
        ctx.message(f"Running touch: {self.path}")
        ctx.guest.touch(self.path)


@dataclass(frozen=True)
class Truncate(_GuestPathOperation):
    name = "truncate"
    metavar = "FILE"
    help = "Truncate FILE to zero size (it must exist)"

    def apply(self, ctx: ApplyContext) -> None:
        ctx.message(f"Truncating: {self.path}")
        ctx.guest.truncate(self.path)


@dataclass(frozen=True)
class TruncateRecursive(_GuestPathOperation):
    name = "truncate-recursive"
    metavar = "PATH"
    help = "Truncate every regular file under PATH to zero size"

    def apply(self, ctx: ApplyContext) -> None:
        ctx.message(f"Recursively truncating: {self.path}")
        g = ctx.guest
        for rel in g.find(self.path):
            full = self.path.rstrip("/") + "/" + rel
            if g.is_file(full):
                g.truncate(full)


@dataclass(frozen=True)
class Upload(Operation):
    name = "upload"
    metavar = "FILE:DEST"
    help = "Upload a host FILE to DEST (a file, or a directory to upload into), keeping its mode and owner"
    local: Path
    dest: str

    @classmethod
    def parse(cls, arg: str, ctx: ParseContext) -> Self:
        local, dest = _two_paths(cls, arg)
        return cls(ctx.host_path(local, cls.name), dest)

    def argument(self) -> str:
        return f"{os.fspath(self.local)}:{self.dest}"

    def host_files(self) -> list[Path]:
        return [self.local]

    def apply(self, ctx: ApplyContext) -> None:
        g = ctx.guest
        ctx.message(f"Uploading: {self.local} to {self.dest}")
        if not self.local.is_file():
            raise GuestError(f"{self.local}: no such file on the host")
        dest = self.dest
        if g.is_dir(dest, follow=True):
            dest = dest.rstrip("/") + "/" + self.local.name
        g.upload(self.local, dest)
        st = self.local.stat()
        g.chmod(st.st_mode & 0o7777, dest)
        g.chown(st.st_uid, st.st_gid, dest)


@dataclass(frozen=True)
class Write(Operation):
    name = "write"
    metavar = "FILE:CONTENT"
    help = "Write CONTENT to FILE, replacing it (no newline is added)"
    path: str
    content: str

    @classmethod
    def parse(cls, arg: str, ctx: ParseContext) -> Self:
        path, content = split_colon(arg, cls.name, cls.metavar)
        return cls(path, content)

    def argument(self) -> str:
        return f"{self.path}:{self.content}"

    def apply(self, ctx: ApplyContext) -> None:
        ctx.message(f"Writing: {self.path}")
        ctx.guest.write(self.path, self.content.encode("utf-8", "surrogateescape"))
