"""Reading a guest's serial console: which boot stage it reached, and when, and whether it died.

:class:`ConsoleParser` is pure (text in, stages out) so it is tested on recorded
consoles; :class:`ConsoleWatcher` is the thread that tails qemu's serial log file
into it. Stages are recognised by lines every mainstream cloud image prints:

==================  ==========================================================
first output        any byte (GRUB's menu, with a serial terminal)
kernel              ``Linux version N``
init                systemd's ``Welcome to ...!`` banner or a ``systemd[1]:`` line
login prompt        ``HOST login:`` at the start of a line (a getty on the console)
cloud-init final    ``Cloud-init v. X running 'modules:final'``
marker              the seed's ``IMGSMITH-BOOT-OK <instance-id>`` final message
==================  ==========================================================

A later stage implies the earlier ones (a ``quiet`` kernel prints no version line;
some images run no serial getty). Fatal lines (GRUB cannot load the kernel, a
panic, an initramfs that cannot find root, emergency mode, cloud-init without a
datasource) end the wait at once instead of at the next deadline.
"""

from __future__ import annotations

import codecs
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

__all__ = ["BOOT_STAGES", "ConsoleParser", "ConsoleState", "ConsoleWatcher", "Stage", "clean_line"]


class Stage(StrEnum):
    """Boot stages in the order a healthy guest passes them; the names appear in error messages."""

    FIRST_OUTPUT = "first output"
    KERNEL = "kernel"
    INIT = "init"
    LOGIN_PROMPT = "login prompt"
    CLOUD_INIT_FINAL = "cloud-init final"
    MARKER = "marker"
    SSH_LOGIN = "ssh login"


BOOT_STAGES: tuple[Stage, ...] = (Stage.FIRST_OUTPUT, Stage.KERNEL, Stage.INIT, Stage.LOGIN_PROMPT,
                                  Stage.CLOUD_INIT_FINAL, Stage.MARKER)

# Full-screen programs (GRUB's menu) place text with cursor moves instead of newlines.
_CURSOR_MOVE = re.compile(r"\x1b\[\d*(;\d*)?[Hf]")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78DEHMc]")

_STAGE_PATTERNS: tuple[tuple[Stage, re.Pattern[str]], ...] = (
    (Stage.KERNEL, re.compile(r"Linux version \d")),
    # systemd's "Welcome to Debian GNU/Linux 12 (bookworm)!", not GRUB's EFI banner "Welcome to GRUB!"
    (Stage.INIT, re.compile(r"^Welcome to (?!GRUB!).+!\s*$|systemd\[1\]: ")),
    (Stage.LOGIN_PROMPT, re.compile(r"^\S+ login:(\s|$)")),
    (Stage.CLOUD_INIT_FINAL, re.compile(r"Cloud-init v\. \S+ running 'modules:final'")),
)

_FATAL: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"you need to load the kernel first|error: file .*vmlinuz.* not found"),
     "GRUB could not load the kernel"),
    (re.compile(r"^grub rescue>"), "GRUB dropped to its rescue shell"),
    (re.compile(r"Kernel panic - not syncing"), "kernel panic"),
    (re.compile(r"ALERT! .* does not exist|Gave up waiting for root (file system )?device"),
     "the initramfs could not find the root filesystem"),
    (re.compile(r"You are in emergency mode|Give root password for maintenance|Entering emergency mode"),
     "systemd entered emergency mode"),
    (re.compile(r"Datasource DataSourceNone"),
     "cloud-init found no datasource (the test's seed, config drive or metadata service was not seen)"),
)

_KEYS_BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
_KEYS_END = "-----END SSH HOST KEY KEYS-----"
_HOST_KEY = re.compile(r"\b((?:ssh|ecdsa|sk-ssh|sk-ecdsa)-[\w@.-]+) (AAAA[0-9A-Za-z+/=]+)")


def clean_line(text: str) -> str:
    """A console line without terminal escapes, carriage returns or trailing blanks."""
    text = _ANSI.sub("", text)
    if "\r" in text:  # a redrawn line: keep what was written last
        parts = [p for p in text.split("\r") if p.strip()]
        text = parts[-1] if parts else ""
    return "".join(ch for ch in text if ch == "\t" or ch >= " ").rstrip()


@dataclass
class ConsoleState:
    """A snapshot of what the console has shown so far (times are seconds since qemu started)."""

    reached: dict[Stage, float] = field(default_factory=dict)
    fatal: tuple[str, str, float] | None = None  # (reason, line, time)
    host_keys: frozenset[str] = frozenset()
    tail: tuple[str, ...] = ()

    def has_passed(self, stage: Stage) -> bool:
        """True when *stage* or any later boot stage was seen."""
        idx = BOOT_STAGES.index(stage)
        return any(s in self.reached for s in BOOT_STAGES[idx:])

    def first_missing(self) -> Stage:
        """The earliest boot stage not yet passed: the one a failure is attributed to."""
        for stage in BOOT_STAGES:
            if not self.has_passed(stage):
                return stage
        return Stage.SSH_LOGIN


class ConsoleParser:
    """Feed console text with timestamps; it records stages, fatal lines, host keys and a tail."""

    def __init__(self, marker: str, tail_lines: int = 200) -> None:
        self._marker = re.compile(re.escape(marker) + r"(\s|$)")
        self.state = ConsoleState()
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._partial = ""
        self._in_keys = False
        self._keys: set[str] = set()

    def _reach(self, stage: Stage, now: float, new: list[Stage]) -> None:
        if stage not in self.state.reached:
            self.state.reached[stage] = now
            new.append(stage)

    def _line(self, line: str, now: float, new: list[Stage]) -> None:
        for stage, pattern in _STAGE_PATTERNS:
            if pattern.search(line):
                self._reach(stage, now, new)
        if self._marker.search(line):
            self._reach(Stage.MARKER, now, new)
        if self.state.fatal is None:
            for pattern, reason in _FATAL:
                if pattern.search(line):
                    self.state.fatal = (reason, line.strip(), now)
                    break
        if _KEYS_BEGIN in line:
            self._in_keys = True
        elif _KEYS_END in line:
            self._in_keys = False
        elif self._in_keys and (m := _HOST_KEY.search(line)):
            self._keys.add(f"{m[1]} {m[2]}")

    def feed(self, text: str, now: float) -> list[Stage]:
        """Consume *text* seen at *now*; return the stages reached for the first time."""
        new: list[Stage] = []
        if not text:
            return new
        self._reach(Stage.FIRST_OUTPUT, now, new)
        text = _CURSOR_MOVE.sub("\n", text)
        *complete, self._partial = (self._partial + text).split("\n")
        for raw in complete:
            line = clean_line(raw)
            if line:
                self._tail.append(line)
            self._line(line, now, new)
        # A login prompt waits for input: it never ends with a newline.
        if Stage.LOGIN_PROMPT not in self.state.reached and _STAGE_PATTERNS[2][1].search(clean_line(self._partial)):
            self._reach(Stage.LOGIN_PROMPT, now, new)
        self.state.host_keys = frozenset(self._keys)
        return new

    def tail(self, lines: int = 40) -> list[str]:
        """The last *lines* console lines, including an unfinished last one."""
        out = list(self._tail)
        partial = clean_line(self._partial)
        if partial:
            out.append(partial)
        return out[-lines:]


class ConsoleWatcher(threading.Thread):
    """Tail qemu's serial log file into a parser from a background thread.

    The orchestrator waits on :attr:`changed` and reads :meth:`snapshot`; the
    parser is only touched under the lock.
    """

    def __init__(self, path: Path, parser: ConsoleParser, *, clock: Callable[[], float] = time.monotonic,
                 started: float | None = None, poll: float = 0.1,
                 on_stage: Callable[[Stage, float], None] | None = None) -> None:
        super().__init__(name="imgsmith-console", daemon=True)
        self.path = path
        self.parser = parser
        self.clock = clock
        self.started = clock() if started is None else started
        self.poll = poll
        self.on_stage = on_stage
        self.changed = threading.Event()
        self._lock = threading.Lock()
        self._stop_event = threading.Event()

    def stop(self) -> None:
        """Read what is left, then end the thread."""
        self._stop_event.set()
        self.join(timeout=5)

    def snapshot(self) -> ConsoleState:
        with self._lock:
            s = self.parser.state
            return ConsoleState(dict(s.reached), s.fatal, s.host_keys, tuple(self.parser.tail(40)))

    def _pump(self, chunk: bytes, decoder: codecs.IncrementalDecoder) -> None:
        text = decoder.decode(chunk)
        now = self.clock() - self.started
        with self._lock:
            new = self.parser.feed(text, now)
        for stage in new:
            if self.on_stage:
                self.on_stage(stage, now)
        self.changed.set()

    def run(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while not self.path.exists():
            if self._stop_event.wait(self.poll):
                return
        with self.path.open("rb") as f:
            while True:
                chunk = f.read(65536)
                if chunk:
                    self._pump(chunk, decoder)
                    continue
                if self._stop_event.wait(self.poll):
                    rest = f.read()
                    if rest:
                        self._pump(rest, decoder)
                    return
