"""Host resources of a session (mounts, loop devices, a storage daemon), undone on every exit path.

diskimage-builder's block-device layer taught the shape: every resource is pushed on a
stack as it is acquired, together with how to release it, and the stack unwinds in
reverse on success, error, Ctrl-C or SIGTERM. What a stack cannot survive is imgsmith
itself being killed (kill -9, OOM, a power cut): so each acquisition is also written to
a small state file under ``/run/imgsmith/sessions/``, and every new session (a chroot
backend's, or an output writer's FUSE view) first sweeps the records whose process is gone,
releasing what they left behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .. import proc
from ..errors import ProcessError
from .files import atomic_write

__all__ = ["Session", "release", "sweep_stale"]

log = logging.getLogger("imgsmith.guest")

RUN_DIR = Path(os.environ.get("IMGSMITH_RUN_DIR", "/run/imgsmith/sessions"))


def _quiet(argv: list[str | os.PathLike[str]]) -> None:
    with contextlib.suppress(ProcessError):
        proc.run(argv)


DAEMON_GRACE = 30.0
"""qemu-storage-daemon flushes its image on SIGTERM; a large write-back can take a while."""


def release(kind: str, what: str, *, lazy: bool = False) -> None:
    """Undo one recorded resource; used by the stack and by the stale sweep."""
    if kind == "mount":
        if os.path.ismount(what):
            argv: list[str | os.PathLike[str]] = ["umount", "-l", what] if lazy else ["umount", what]
            try:
                proc.run(argv)
            except ProcessError:
                if lazy:
                    raise
                # Busy (a straggling process in the guest): detach now, the kernel finishes later.
                proc.run(["umount", "-l", what])
    elif kind == "loop":
        _quiet(["partx", "-d", what])
        _quiet(["losetup", "-d", what])
    elif kind == "daemon":
        proc.stop_pid(int(what), DAEMON_GRACE, name="qemu-storage-daemon")
    elif kind == "fuse":
        if os.path.ismount(what):
            _quiet(["fusermount3", "-u", "-z", what])
    elif kind == "path":
        Path(what).unlink(missing_ok=True)
    else:  # pragma: no cover - a record written by a newer version
        log.warning("unknown resource kind %s in a stale session record", kind)


def _undo(kind: str, what: str, undo: Callable[[], None] | None) -> None:
    if undo is not None:
        undo()
    else:
        release(kind, what)


def _remove_flat(directory: Path) -> None:
    """Remove a session directory: its files and its (empty, unmounted) mountpoint directories.

    Never recursive: if a mount survived, rmdir fails and the guest's files are left alone,
    where a recursive delete would have walked into the guest and erased it.
    """
    for entry in directory.iterdir() if directory.is_dir() else ():
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                entry.rmdir()
            else:
                entry.unlink()
    with contextlib.suppress(OSError):
        directory.rmdir()


class Session:
    """A rollback stack of host resources, mirrored in a state file for the stale sweep."""

    def __init__(self, label: str) -> None:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        self.dir = Path(f"{RUN_DIR}/{os.getpid()}-{time.monotonic_ns()}")
        self.dir.mkdir(mode=0o700)
        self._stack: list[tuple[str, str, Callable[[], None] | None, Callable[[], object] | None]] = []
        self._state: dict[str, Any] = {"pid": os.getpid(), "label": label, "resources": []}
        self._save()

    def _save(self) -> None:
        # Not durable: what the record lists (mounts, loop devices, processes) does not survive a power
        # cut either, and a killed process's page cache still reaches the next session's sweep.
        atomic_write(self.dir / "state.json", json.dumps(self._state), durable=False)

    def push(self, kind: str, what: str, undo: Callable[[], None] | None = None, *,
             flush: Callable[[], object] | None = None) -> None:
        """Record a resource just acquired; *undo* overrides :func:`release` for it.

        *flush* runs before an orderly release (:meth:`pop_while`: the end of a session that
        worked, or sysprep unmounting everything for its device operations), never when
        :meth:`close` unwinds after a failure: it is for work that only a good session wants,
        like writing a mirrored FAT partition back (guest/vfat.py).
        """
        self._stack.append((kind, what, undo, flush))
        self._state["resources"].append([kind, what])
        self._save()

    def pop_while(self, kind: str) -> None:
        """Release the newest resources while they are of *kind* (unmount everything before device work).

        A resource whose flush fails is still released; the failure propagates after that.
        """
        while self._stack and self._stack[-1][0] == kind:
            k, w, undo, flush = self._stack.pop()
            try:
                if flush is not None:
                    flush()
            finally:
                _undo(k, w, undo)
                self._state["resources"].remove([k, w])
                self._save()

    def close(self) -> None:
        """Unwind everything, newest first; keep going past failures and report the first one."""
        first: BaseException | None = None
        while self._stack:
            k, w, undo, _flush = self._stack.pop()
            try:
                _undo(k, w, undo)
            except BaseException as exc:
                log.warning("could not release %s %s: %s", k, w, exc)
                first = first or exc
            else:
                self._state["resources"].remove([k, w])
                self._save()
        if first is not None:
            raise first
        _remove_flat(self.dir)

    @contextlib.contextmanager
    def held(self) -> Iterator[Session]:
        try:
            yield self
        finally:
            self.close()


def sweep_stale(message: Callable[[str], None] = log.warning) -> int:
    """Release what sessions of dead imgsmith processes left behind; return how many were cleaned."""
    if not RUN_DIR.is_dir():
        return 0
    cleaned = 0
    for d in sorted(RUN_DIR.iterdir()):
        state_file = d / "state.json"
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            if d.is_dir() and time.time() - d.stat().st_mtime > 60:
                _remove_flat(d)
            continue
        if proc.pid_alive(int(state.get("pid", 0))):
            continue
        message(f"cleaning up after an imgsmith (pid {state.get('pid')}) that did not exit cleanly: "
                f"{len(state.get('resources', []))} mounts/devices")
        for kind, what in reversed(state.get("resources", [])):
            try:
                release(kind, what, lazy=kind == "mount")
            except ProcessError as exc:
                log.warning("stale %s %s: %s", kind, what, exc.message)
        _remove_flat(d)
        cleaned += 1
    return cleaned
