"""The one place that spawns host processes, and the one that stops them.

Every command is logged as a line that can be pasted into a shell, with secrets
replaced by ``***``; stdin is /dev/null unless input is given; failures raise
:class:`~imgsmith.errors.ProcessError` naming what went wrong and the tail of stderr.
:func:`run` runs a command to completion; :func:`spawn` holds a long-lived child for the
duration of a ``with`` block and owns its stop policy (SIGTERM, a grace period, SIGKILL);
:func:`stop_pid` applies the same policy to a daemon known only by its pid.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .errors import ProcessError

__all__ = ["STOP_GRACE", "Completed", "Spawned", "format_argv", "pid_alive", "run", "spawn", "stop_pid"]

log = logging.getLogger("imgsmith.proc")

Arg = str | os.PathLike[str]

STOP_GRACE = 5.0
"""Seconds a child gets between SIGTERM and SIGKILL, unless its caller knows better."""


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
    try:
        # Its own process group: an interrupted run kills what the child started too (a chroot's
        # update-initramfs forks mkinitramfs, which would otherwise go on inside the mounted tree).
        child = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            env=_environment(env),
            cwd=cwd,
            process_group=0,
        )
    except FileNotFoundError as exc:
        raise _not_found(args) from exc
    with child:
        try:
            stdout, stderr = child.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            _kill_group(child)
            raise ProcessError(f"{os.path.basename(args[0])} timed out after {timeout:.0f} s",
                               argv=args) from exc
        except BaseException:  # KeyboardInterrupt (SIGINT, or SIGTERM via the CLI's handler) and the rest
            _kill_group(child)
            raise
    out = (stdout or b"").decode("utf-8", "replace")
    err = (stderr or b"").decode("utf-8", "replace")
    for secret in secrets:
        if secret:
            out, err = out.replace(secret, "***"), err.replace(secret, "***")
    if check and child.returncode != 0:
        raise ProcessError(_describe_failure(args, child.returncode, err), argv=args,
                           returncode=child.returncode, stderr=err)
    return Completed(args, child.returncode, out, err)


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    """SIGKILL *child*'s process group (it leads one: ``process_group=0``) and reap the child.

    What subprocess.run does to the child alone, extended to everything it started; a
    grandchild that left the group (a daemon) is its own owner's business.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def _environment(env: Mapping[str, str] | None) -> dict[str, str]:
    """The environment policy of every child: ours (the tools need PATH, TMPDIR and the
    LIBGUESTFS_* settings), plus *env*, in the C.UTF-8 locale (messages we parse are English)."""
    return {**os.environ, **(env or {}), "LC_ALL": "C.UTF-8"}


def _not_found(args: list[str]) -> ProcessError:
    return ProcessError(f"{args[0]}: command not found (is it installed? run scripts/setup.sh)", argv=args)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.02)
    return not pid_alive(pid)


def stop_pid(pid: int, grace: float = STOP_GRACE, *, name: str | None = None) -> None:
    """The stop policy for a process we do not hold a handle on (a daemon known by its pid file):
    SIGTERM, up to *grace* seconds to exit, then SIGKILL. With *name*, a pid whose command is not
    *name* (the pid was reused after the daemon died) is left alone."""
    if name is not None:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return
        if not name.startswith(comm):
            return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, grace):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 5)


class Spawned:
    """A child started by :func:`spawn`: its pipes, its exit status, and the one stop policy."""

    def __init__(self, argv: list[str], popen: subprocess.Popen[bytes], *, errors: IO[bytes] | None,
                 log_file: Path | None, grace: float) -> None:
        self.argv = argv
        self.popen = popen
        self.grace = grace
        self.stopped = False
        self.tail: deque[str] = deque(maxlen=30)
        """Lines of a merged stdout the caller has read, for the failure message."""
        self._errors = errors
        self._log = log_file

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def stdout(self) -> IO[bytes] | None:
        return self.popen.stdout

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to *timeout* seconds (None: for ever) for the child to exit; True when it did."""
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM (the child may clean up: qemu-img removes nothing, mmdebstrap unmounts), up to
        *grace* seconds, then SIGKILL; always reaps the child. A no-op once it has exited."""
        if self.popen.poll() is not None:
            return
        self.stopped = True
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGTERM)
        if not self.wait(self.grace if grace is None else grace):
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
            self.popen.wait()

    def output_tail(self, lines: int = 5) -> str:
        """The child's last messages: its captured stderr, its log file, or the lines in :attr:`tail`."""
        if self._errors is not None:
            self._errors.seek(0)
            text = self._errors.read().decode("utf-8", "replace")
        elif self._log is not None:
            try:
                text = self._log.read_text(encoding="utf-8", errors="replace")
            except OSError:
                text = ""
        else:
            text = "\n".join(self.tail)
        return "\n".join(ln.strip() for ln in text.strip().splitlines()[-lines:] if ln.strip())

    def failure(self) -> ProcessError:
        """The typed error for a child that exited non-zero (or was killed by a signal)."""
        err = self.output_tail(20)
        return ProcessError(_describe_failure(self.argv, self.popen.returncode or 0, err), argv=self.argv,
                            returncode=self.popen.returncode, stderr=err)


@contextlib.contextmanager
def spawn(
    argv: Sequence[Arg],
    *,
    env: Mapping[str, str] | None = None,
    stdout: int | None = subprocess.PIPE,
    merge_stderr: bool = False,
    log_file: Path | None = None,
    grace: float = STOP_GRACE,
    check: bool = True,
    secrets: Sequence[str] = (),
) -> Iterator[Spawned]:
    """Run a long-lived child (qemu, ``qemu-img convert -p``, mmdebstrap) for the block's duration.

    Same logging and environment as :func:`run`; stdin is /dev/null. stderr is captured (for
    the error message) unless *merge_stderr* sends it to stdout (then the caller appends the
    lines it reads to :attr:`Spawned.tail`) or *log_file* takes both stdout and stderr.
    Leaving the block stops a child still running with :meth:`Spawned.stop` (whether the block
    raised or simply has what it wanted); with *check*, a child that exited non-zero by itself
    raises :class:`ProcessError`.
    """
    args = [os.fspath(a) for a in argv]
    log.debug("spawn: %s", format_argv(args, secrets))
    with contextlib.ExitStack() as stack:
        errors: IO[bytes] | None = None
        if log_file is not None:
            out: int | IO[bytes] | None = stack.enter_context(log_file.open("wb"))
            err: int | IO[bytes] | None = subprocess.STDOUT
        else:
            out = stdout
            err = subprocess.STDOUT if merge_stderr else stack.enter_context(tempfile.TemporaryFile())
            errors = None if merge_stderr else err  # type: ignore[assignment]
        try:
            popen = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                     env=_environment(env))
        except FileNotFoundError as exc:
            raise _not_found(args) from exc
        child = Spawned(args, popen, errors=errors, log_file=log_file, grace=grace)
        try:
            yield child
        finally:
            child.stop()
            for pipe in (popen.stdout, popen.stderr):
                if pipe is not None:
                    pipe.close()
        if check and not child.stopped and popen.returncode != 0:
            raise child.failure()


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
