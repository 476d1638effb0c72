"""The one place that spawns host processes.

Every command is logged as a line that can be pasted into a shell, with secrets
replaced by ``***``; stdin is /dev/null unless input is given; failures raise
:class:`~imgsmith.errors.ProcessError` naming what went wrong and the tail of stderr.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ProcessError

__all__ = ["Completed", "format_argv", "pid_alive", "popen", "run"]

log = logging.getLogger("imgsmith.proc")

Arg = str | os.PathLike[str]


@dataclass(frozen=True)
class Completed:
    """Result of :func:`run`: argv as strings, exit status and captured output."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def format_argv(argv: Sequence[Arg], secrets: Sequence[str] = ()) -> str:
    """Shell-pasteable form of *argv* with every secret substring redacted."""
    text = shlex.join(os.fspath(a) for a in argv)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _describe_failure(argv: list[str], returncode: int, stderr: str) -> str:
    name = os.path.basename(argv[0])
    tail = " | ".join(line.strip() for line in stderr.strip().splitlines()[-3:] if line.strip())
    if returncode < 0:
        try:
            signame = signal.Signals(-returncode).name
        except ValueError:
            signame = f"signal {-returncode}"
        return f"{name} was killed by {signame}" + (f": {tail}" if tail else "")
    return f"{name} failed (exit {returncode})" + (f": {tail}" if tail else "")


def run(
    argv: Sequence[Arg],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Arg | None = None,
    check: bool = True,
    timeout: float | None = None,
    secrets: Sequence[str] = (),
    capture: bool = True,
) -> Completed:
    """Run *argv* to completion and return its output; raise ProcessError on failure.

    ``env`` entries are added to the current environment (the tools we call need PATH,
    TMPDIR and the LIBGUESTFS_* settings); ``secrets`` are redacted from the log line
    and from any error message.
    """
    args = [os.fspath(a) for a in argv]
    log.debug("run: %s", format_argv(args, secrets))
    full_env = {**os.environ, **(env or {}), "LC_ALL": "C.UTF-8"}
    try:
        proc = subprocess.run(
            args,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            env=full_env,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ProcessError(f"{args[0]}: command not found (is it installed? run scripts/setup.sh)",
                           argv=args) from exc
    except subprocess.TimeoutExpired as exc:
        raise ProcessError(f"{os.path.basename(args[0])} timed out after {timeout:.0f} s",
                           argv=args) from exc
    out = (proc.stdout or b"").decode("utf-8", "replace")
    err = (proc.stderr or b"").decode("utf-8", "replace")
    for secret in secrets:
        if secret:
            out, err = out.replace(secret, "***"), err.replace(secret, "***")
    if check and proc.returncode != 0:
        raise ProcessError(_describe_failure(args, proc.returncode, err), argv=args,
                           returncode=proc.returncode, stderr=err)
    return Completed(args, proc.returncode, out, err)


def popen(
    argv: Sequence[Arg],
    *,
    env: Mapping[str, str] | None = None,
    stdin: int | None = subprocess.DEVNULL,
    stdout: int | None = subprocess.PIPE,
    stderr: int | None = subprocess.PIPE,
    text: bool = False,
    secrets: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Start a long-running process (qemu, qemu-img convert -p) and return it, logged like :func:`run`."""
    args = [os.fspath(a) for a in argv]
    log.debug("spawn: %s", format_argv(args, secrets))
    try:
        return subprocess.Popen(args, stdin=stdin, stdout=stdout, stderr=stderr,
                                env={**os.environ, **(env or {})}, text=text)
    except FileNotFoundError as exc:
        raise ProcessError(f"{args[0]}: command not found (is it installed? run scripts/setup.sh)",
                           argv=args) from exc


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists and has not exited (for lock and session records
    left by a killed imgsmith, and for waiting on a daemon we stopped).

    A zombie counts as gone: it has exited and released everything, and only waits for its
    parent to reap it. A daemonized qemu-storage-daemon's parent is PID 1, which on some hosts
    (container and microVM init processes) reaps only about once a second.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust the signal probe
    return stat[stat.rfind(")") + 2:][:1] not in ("Z", "X")


def failure_message(argv: Sequence[str], returncode: int, stderr: str) -> str:
    """The one-line description of a failed process, for callers that drive popen() themselves."""
    return _describe_failure(list(argv), returncode, stderr)
