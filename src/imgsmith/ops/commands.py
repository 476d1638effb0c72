"""Running things: commands and scripts inside the guest, and host scripts over its filesystem."""

from __future__ import annotations

import os
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from .. import proc
from ..errors import ForeignArchError, GuestError, ProcessError, UsageError
from .base import ApplyContext, HostScriptOperation, ParseContext, ShellCommandOperation

__all__ = ["Run", "RunCommand", "Script", "guest_logfile", "run_in_guest"]

PROXY_VARS = ("http_proxy", "https_proxy", "ftp_proxy", "no_proxy")


def guest_logfile(ctx: ApplyContext) -> str:
    """Where command output goes in the guest; virt-customize uses /tmp/builder.log (left in place)."""
    return "/tmp/builder.log" if ctx.guest.is_dir("/tmp") else "/builder.log"


def run_in_guest(ctx: ApplyContext, display: str, script: str, *, needs_network: bool = False) -> None:
    """Run *script* with /bin/sh in the guest, output appended to the guest's log file.

    The prologue matches virt-customize's: proxy variables are passed through from the
    host and output goes to the log file, whose tail is shown when the command fails.
    """
    logfile = guest_logfile(ctx)
    env = "".join(f"export {name}={shlex.quote(os.environ[name])}\n" for name in PROXY_VARS
                  if name in os.environ)
    wrapped = f"exec >>{shlex.quote(logfile)} 2>&1\n{env}{script}\n"
    try:
        ctx.guest.sh(wrapped)
    except ForeignArchError:
        raise  # nothing ran: there is no log to show, and the cause is the architecture
    except GuestError as exc:
        tail = ""
        try:
            lines = ctx.guest.read(logfile).decode("utf-8", "replace").strip().splitlines()
            tail = " | ".join(line.strip() for line in lines[-3:])
        except GuestError:
            pass
        hint = ""
        if needs_network and not ctx.guest.network:
            hint = " (the appliance network is off: --no-network was given)"
        raise GuestError(f"{display}: command exited with an error{hint}" + (f": {tail}" if tail else "")) \
            from exc


@dataclass(frozen=True)
class RunCommand(ShellCommandOperation):
    name = "run-command"
    metavar = "'CMD+ARGS'"
    help = "Run a shell command inside the guest (output goes to /tmp/builder.log in the guest)"

    def apply(self, ctx: ApplyContext) -> None:
        ctx.message(f"Running: {self.command}")
        run_in_guest(ctx, self.command, self.command)


@dataclass(frozen=True)
class Run(HostScriptOperation):
    name = "run"
    metavar = "SCRIPT"
    help = "Run a host shell script inside the guest (its content is run by the guest's /bin/sh)"

    def apply(self, ctx: ApplyContext) -> None:
        ctx.message(f"Running: {self.script}")
        content = self.script.read_text(encoding="utf-8", errors="surrogateescape")
        run_in_guest(ctx, os.fspath(self.script), content)


@dataclass(frozen=True)
class Script(HostScriptOperation):
    """virt-sysprep's --script: a HOST script run with the guest filesystem as its working directory."""

    name = "script"
    metavar = "SCRIPT"
    help = ("Run a host script with its current directory at the guest's mounted filesystem "
            "(FUSE; see --scriptdir)")

    @classmethod
    def parse(cls, arg: str, ctx: ParseContext) -> Self:
        op = super().parse(arg, ctx)
        if ctx.check_files and not os.access(op.script, os.X_OK):
            raise UsageError(f"--script: {arg}: not executable (chmod +x it)")
        return op

    def apply(self, ctx: ApplyContext) -> None:
        ctx.message(f"Running host script: {self.script}")
        base = ctx.settings.scriptdir
        with tempfile.TemporaryDirectory(prefix="imgsmith-script-") as tmp:
            mountpoint = Path(base) if base else Path(tmp)
            mountpoint.mkdir(parents=True, exist_ok=True)
            with ctx.guest.host_view(mountpoint) as root:
                try:
                    proc.run([self.script], cwd=root, capture=True)
                except ProcessError as exc:
                    raise GuestError(f"script {self.script}: {exc.message}") from exc
