"""The build's live view (rich, on a terminal) and its fallbacks (plain lines, --json). Unit tier: no VMs.

The board is driven with the exact stage lines pipeline.py emits, into a rich Console that
believes it is a terminal, and the tests read what a person would see. The end-to-end
tests run the real CLI on a base image served over loopback HTTP with two qemu-img
outputs (no appliance, no qemu): once on a pipe, once with --json, once on a pty.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import pty
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypedDict

import pytest
from rich.console import Console

from imgsmith.cli.live import LiveView, StageBoard
from imgsmith.cli.render import Progress, use_live
from imgsmith.errors import OperationError, ProcessError
from imgsmith.events import StageKind, StageStarted

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PLAIN_LINE = re.compile(r"^\[\s*\d+\.\d\] (?P<text>.*)$")
MiB = 1 << 20


class FakeClock:
    """Seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def terminal() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=100)


def written(console: Console) -> str:
    """Everything written to the terminal, escape sequences included."""
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def last_frame(raw: str) -> str:
    """The last frame a live display drew (what stays on the terminal), without colours.

    Each redraw erases the previous frame line by line (ESC [2K) before drawing the next.
    """
    return ANSI.sub("", raw.rsplit("\x1b[2K", 1)[-1])


def screen(console: Console) -> str:
    return last_frame(written(console))


def snapshot(board: StageBoard) -> str:
    """The board as it looks right now (mid-build), without colours."""
    console = terminal()
    console.print(board)
    assert isinstance(console.file, io.StringIO)
    return ANSI.sub("", console.file.getvalue())


def row(text: str, title: str) -> str:
    """The one screen line whose title is *title*."""
    found = [line for line in text.splitlines() if re.match(rf"^\S\s+{re.escape(title)}(\s|$)", line)]
    assert len(found) == 1, f"{title!r} in:\n{text}"
    return found[0]


# -- the plain wording of stage events ----------------------------------------------------

@pytest.mark.parametrize(("event", "line"), [
    (StageStarted(StageKind.SOURCE, "https://cloud.centos.org/centos/7/images/c7.qcow2"),
     "source: https://cloud.centos.org/centos/7/images/c7.qcow2"),
    (StageStarted(StageKind.SOURCE, "bootstrap debian bookworm"), "source: bootstrap debian bookworm"),
    (StageStarted(StageKind.LAYER, "cached", 1, 3, "packages", cached=True), "layer 1/3 packages: cached"),
    (StageStarted(StageKind.LAYER, "4 step(s) (accelerator tcg)", 2, 3, "config"),
     "layer 2/3 config: 4 step(s) (accelerator tcg)"),
    (StageStarted(StageKind.SYSPREP, "12 operations"), "sysprep: 12 operations"),
    (StageStarted(StageKind.OUTPUTS, "2 in parallel -> /srv/dist/demo"), "outputs: 2 in parallel -> /srv/dist/demo"),
    (StageStarted(StageKind.BOOT, "demo.qcow2"), "boot test: demo.qcow2"),
])
def test_stage_events_read_as_the_plain_lines_ci_logs_show(event: StageStarted, line: str) -> None:
    assert str(event) == line


# -- the live view ----------------------------------------------------------------------

def scripted_build(view: LiveView, clock: FakeClock) -> None:
    """A whole build as pipeline.py reports it: download, cached and built layers, sysprep, outputs, boot."""
    view(StageStarted(StageKind.SOURCE, "https://example.org/images/base.qcow2"))
    view.progress("download", 40.0)
    clock.advance(12.0)
    view.progress("verify", 100.0)
    view(StageStarted(StageKind.LAYER, "cached", 1, 3, "packages", cached=True))
    view(StageStarted(StageKind.LAYER, "4 step(s) (accelerator tcg)", 2, 3, "config"))
    view.message("timezone: Asia/Shanghai")
    clock.advance(65.0)
    view(StageStarted(StageKind.LAYER, "1 step(s) (accelerator tcg)", 3, 3, "final"))
    clock.advance(3.0)
    view(StageStarted(StageKind.SYSPREP, "12 operations"))
    clock.advance(2.0)
    view(StageStarted(StageKind.OUTPUTS, "2 in parallel -> /out"))
    view.progress("demo-openstack.qcow2", 10.0)
    view.progress("demo-streamOptimized.vmdk", 10.0)
    clock.advance(4.0)
    view.progress("demo-streamOptimized.vmdk", 100.0)
    clock.advance(1.5)
    view.progress("demo-openstack.qcow2", 100.0)
    view(StageStarted(StageKind.MANIFEST, "/out/manifest.json"))
    view(StageStarted(StageKind.BOOT, "demo-openstack.qcow2"))
    view.message("login prompt reached")
    clock.advance(90.0)
    view.finish(manifest=Path("/out/manifest.json"),
                outputs={"demo-openstack.qcow2": "qcow2 (openstack)  1.2 GiB", "demo-streamOptimized.vmdk": "vmdk"})


def test_finished_build_collapses_every_stage_to_a_tick_with_its_duration() -> None:
    clock, console = FakeClock(), terminal()
    with LiveView(console, clock=clock) as view:
        scripted_build(view, clock)
    text = screen(console)
    titles = ["source", "layer 1/3 packages", "layer 2/3 config", "layer 3/3 final", "sysprep", "outputs",
              "demo-openstack.qcow2", "demo-streamOptimized.vmdk", "manifest", "boot test"]
    lines = [line for line in text.splitlines() if line.strip()]
    assert [lines.index(row(text, t)) for t in titles] == list(range(len(titles)))
    assert all(line.startswith("✓ ") for line in lines)
    assert row(text, "source").endswith("12.0s") and "https://example.org/images/base.qcow2" in row(text, "source")
    assert "cached" in row(text, "layer 1/3 packages")
    assert row(text, "layer 2/3 config").endswith("1m05s")
    assert "4 step(s) (accelerator tcg)" in row(text, "layer 2/3 config")
    assert row(text, "sysprep").endswith("2.0s")
    qcow2 = row(text, "demo-openstack.qcow2")
    assert "qcow2 (openstack)  1.2 GiB" in qcow2 and qcow2.endswith("5.5s")  # from the stage start, parallel
    assert row(text, "demo-streamOptimized.vmdk").endswith("4.0s")
    assert "/out/manifest.json" in row(text, "manifest")
    assert row(text, "boot test").endswith("1m30s")
    assert "%" not in text and "━" not in text  # no bars left once finished


def test_running_stage_shows_a_spinner_its_latest_step_and_elapsed_time() -> None:
    clock = FakeClock()
    board = StageBoard(clock)
    board.stage(StageStarted(StageKind.LAYER, "cached", 1, 2, "packages", cached=True))
    board.stage(StageStarted(StageKind.LAYER, "4 step(s) (accelerator tcg)", 2, 2, "config"))
    text = snapshot(board)
    assert "4 step(s) (accelerator tcg)" in row(text, "layer 2/2 config")  # before any news: the plan
    board.message("[bold]run-command[/bold]: systemctl enable qemu-guest-agent\nsecond line")
    clock.advance(7.0)
    line = row(snapshot(board), "layer 2/2 config")
    assert line[0] not in "✓✗-"  # a spinner frame
    assert "[bold]run-command[/bold]: systemctl enable qemu-guest-agent" in line  # text, never markup
    assert "second line" not in line
    assert line.endswith("7.0s")
    assert row(snapshot(board), "layer 1/2 packages").startswith("✓")


def test_outputs_get_a_row_and_a_bar_each() -> None:
    clock = FakeClock()
    board = StageBoard(clock)
    board.stage(StageStarted(StageKind.OUTPUTS, "3 in parallel -> /out"))
    board.progress("a.qcow2", 42.0)
    board.progress("c.vmdk", 0.0)
    clock.advance(2.0)
    board.progress("b.vhd", 100.0)
    clock.advance(1.0)
    text = snapshot(board)
    assert "42%" in row(text, "a.qcow2") and "━" in row(text, "a.qcow2")
    assert row(text, "b.vhd").startswith("✓") and row(text, "b.vhd").endswith("2.0s")  # its own duration
    assert row(text, "a.qcow2").endswith("3.0s")  # still running, timed from the stage start
    assert "%" not in row(text, "c.vmdk")  # nothing yet: a pulse, not a misleading 0 %
    assert row(text, "outputs")[0] not in "✓✗"


def test_download_shows_phase_percent_and_bytes_when_the_size_is_known() -> None:
    console = terminal()
    view = LiveView(console, clock=FakeClock())
    view(StageStarted(StageKind.SOURCE, "https://example.org/base.qcow2"))
    view.transfer("download", 1 * MiB, 4 * MiB)
    line = row(snapshot(view.board), "source")
    assert "download" in line and "25%" in line and "1 MiB / 4 MiB" in line
    view.transfer("download", 3 * MiB, None)  # no Content-Length: bytes only
    line = row(snapshot(view.board), "source")
    assert "3 MiB" in line and "%" not in line and "/" not in line.split("3 MiB")[1]
    view.progress("verify", 50.0)  # a new phase forgets the download's byte counts
    line = row(snapshot(view.board), "source")
    assert "verify" in line and "50%" in line and "MiB" not in line


def test_failure_marks_the_running_stage_with_the_error_and_keeps_the_finished_ones() -> None:
    clock, console = FakeClock(), terminal()
    with pytest.raises(OperationError), LiveView(console, clock=clock) as view:
        view(StageStarted(StageKind.LAYER, "cached", 1, 2, "packages", cached=True))
        view(StageStarted(StageKind.LAYER, "3 step(s) (accelerator tcg)", 2, 2, "config"))
        view.message("run-command: false")
        clock.advance(4.0)
        raise OperationError(3, "run-command", "command failed with exit status 1")
    text = screen(console)
    assert row(text, "layer 1/2 packages").startswith("✓")
    failed = row(text, "layer 2/2 config")
    assert failed.startswith("✗") and "step 3 run-command: command failed with exit status 1" in failed
    assert failed.endswith("4.0s")
    assert "sysprep" not in text and "manifest" not in text


def test_a_failed_output_is_named_and_its_parallel_siblings_show_as_stopped() -> None:
    console = terminal()
    with pytest.raises(ProcessError), LiveView(console, clock=FakeClock()) as view:
        view(StageStarted(StageKind.OUTPUTS, "3 in parallel -> /out"))
        view.progress("a.qcow2", 100.0)
        view.progress("b.vhd", 30.0)
        view.progress("c.vmdk", 60.0)
        raise ProcessError("qemu-img convert /out/.c.vmdk.tmp: No space left on device\nmore detail")
    text = screen(console)
    assert row(text, "a.qcow2").startswith("✓")
    assert row(text, "b.vhd").startswith("-") and "stopped" in row(text, "b.vhd")
    assert row(text, "c.vmdk").startswith("✗") and "No space left on device" in row(text, "c.vmdk")
    assert row(text, "outputs").startswith("✗")
    assert "more detail" not in text  # the first line here; the CLI's error handler prints the whole message


def test_an_interrupt_shows_where_the_build_stopped() -> None:
    console = terminal()
    with pytest.raises(KeyboardInterrupt), LiveView(console, clock=FakeClock()) as view:
        view(StageStarted(StageKind.MANIFEST, "/out/manifest.json"))
        view(StageStarted(StageKind.BOOT, "demo.qcow2"))
        raise KeyboardInterrupt
    line = row(screen(console), "boot test")
    assert line.startswith("✗") and "interrupted" in line
    assert "manifest" in screen(console)  # written before the boot test started


def test_warnings_and_verbose_messages_print_above_the_view() -> None:
    console = terminal()
    with LiveView(console, clock=FakeClock(), verbose=True) as view:
        view(StageStarted(StageKind.LAYER, "1 step(s) (accelerator kvm)", 1, 1, "base"))
        view.warn("sysprep operation ssh-userdir dropped: [reason]")
        view.message("install: [vim]")
        view.finish()
    lines = re.split(r"[\r\n]", ANSI.sub("", written(console)))  # the view rewinds with \r
    assert "imgsmith: warning: sysprep operation ssh-userdir dropped: [reason]" in lines
    assert any(re.fullmatch(r"\[\s+0\.0\] install: \[vim\]", line) for line in lines)


def test_progress_from_parallel_threads_while_the_view_redraws() -> None:
    clock = FakeClock()
    board = StageBoard(clock)
    board.stage(StageStarted(StageKind.OUTPUTS, "4 in parallel -> /out"))
    names = [f"out{i}.qcow2" for i in range(4)]

    def convert(name: str) -> None:
        for step in range(1, 201):
            board.progress(name, step / 2)

    threads = [threading.Thread(target=convert, args=(n,)) for n in names]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        snapshot(board)
    for t in threads:
        t.join()
    board.finish()
    text = snapshot(board)
    assert all(row(text, n).startswith("✓") for n in names)


# -- the fallbacks ----------------------------------------------------------------------

class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_only_a_terminal_without_quiet_json_or_debug_gets_the_live_view(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    off = {"quiet": False, "json_mode": False, "debug": False}
    assert use_live(FakeTerminal(), **off)
    assert not use_live(io.StringIO(), **off)  # a pipe, a CI log
    for flag in off:
        assert not use_live(FakeTerminal(), **{**off, flag: True})
    monkeypatch.setenv("TERM", "dumb")
    assert not use_live(FakeTerminal(), **off)


def test_plain_lines_are_timestamped_virt_customize_style() -> None:
    stream = io.StringIO()
    progress = Progress(stream=stream)
    progress.message("layer 1/2 packages: cached")
    progress.warn("b.vmdk: streamOptimized is read-only in some hypervisors")
    first, second = stream.getvalue().splitlines()
    assert re.fullmatch(r"\[ {3}\d\.\d\] layer 1/2 packages: cached", first)
    assert second == "imgsmith: warning: b.vmdk: streamOptimized is read-only in some hypervisors"
    quiet = io.StringIO()
    Progress(quiet=True, stream=quiet).message("hidden")
    assert quiet.getvalue() == ""


# -- end to end: the real CLI on a pipe, with --json, and on a pty ------------------------

class Report(TypedDict):
    rc: int
    rich: list[str]  # the rich modules the process had imported when main() returned


DRIVER = """
import json, sys
from imgsmith.cli.main import main
report, argv = sys.argv[1], sys.argv[2:]
try:
    rc = main(argv)
except SystemExit as exc:
    rc = exc.code
with open(report, "w") as f:
    json.dump({"rc": rc, "rich": sorted(m for m in sys.modules if m.split(".")[0] == "rich")}, f)
"""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Path]:
    """A definition whose base image comes over loopback HTTP, with two outputs (qemu-img only)."""
    web = tmp_path / "web"
    web.mkdir()
    image = web / "base.raw"
    image.write_bytes(os.urandom(2 * MiB))
    handler = functools.partial(QuietHandler, directory=os.fspath(web))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    definition = tmp_path / "demo.yaml"
    definition.write_text(f"""\
version: 1
name: demo
source:
  url: http://127.0.0.1:{server.server_port}/base.raw
  checksum: sha256:{hashlib.sha256(image.read_bytes()).hexdigest()}
  format: raw
outputs:
  - format: qcow2
  - format: vmdk
""")
    try:
        yield definition
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output clean: no access log on stderr."""


def read_report(path: Path) -> Report:
    data = json.loads(path.read_text())
    return Report(rc=int(data["rc"]), rich=list(data["rich"]))


def run_cli(tmp_path: Path, argv: list[str], *, tty: bool = False) -> tuple[Report, str, str]:
    """Run imgsmith with stderr on a pipe or a pty: (rc and rich modules loaded, stdout, raw stderr)."""
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSMITH_")}
    env.update(IMGSMITH_CACHE=os.fspath(tmp_path / "cache"), IMGSMITH_ACCEL="tcg", TERM="xterm", COLUMNS="100")
    cmd = [sys.executable, "-c", DRIVER, os.fspath(report), *argv]
    if not tty:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False)
        return read_report(report), r.stdout, r.stderr
    master, slave = pty.openpty()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, env=env, cwd=tmp_path) as proc:
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.stdout is not None
        stdout = proc.stdout.read().decode()
    os.close(master)
    return read_report(report), stdout, b"".join(chunks).decode()


def test_cli_on_a_pipe_writes_plain_lines_and_never_imports_rich(served: Path, tmp_path: Path) -> None:
    report, stdout, stderr = run_cli(tmp_path, ["build", os.fspath(served), "-o", "out"])
    assert report == {"rc": 0, "rich": []}, stderr
    stages = [m["text"] for m in map(PLAIN_LINE.match, stderr.splitlines()) if m]
    assert stages[0].startswith("source: http://127.0.0.1:") and stages[1].startswith("outputs: 2 in parallel -> ")
    assert "\x1b" not in stderr and "✓" not in stderr
    assert "manifest: out/manifest.json" in stdout


def test_cli_json_result_keeps_its_keys_and_never_imports_rich(served: Path, tmp_path: Path) -> None:
    report, stdout, stderr = run_cli(tmp_path, ["build", os.fspath(served), "-o", "out", "--json"])
    assert report == {"rc": 0, "rich": []}, stderr
    data = json.loads(stdout)
    assert list(data) == ["name", "nothing_to_do", "dry_run", "output_dir", "layers", "dropped_sysprep", "outputs",
                          "manifest", "launches", "sessions", "backend", "seconds", "boot_test", "checks",
                          "base_source", "planned_outputs"]
    assert [o["format"] for o in data["outputs"]] == ["qcow2", "vmdk"]
    assert stderr == ""


def test_cli_help_never_imports_rich(tmp_path: Path) -> None:
    report, stdout, _ = run_cli(tmp_path, ["--help"])
    assert report == {"rc": 0, "rich": []}
    assert "build" in stdout


def test_cli_on_a_terminal_draws_the_live_view(served: Path, tmp_path: Path) -> None:
    report, stdout, raw = run_cli(tmp_path, ["build", os.fspath(served), "-o", "out"], tty=True)
    assert report["rc"] == 0 and "rich.live" in report["rich"], raw
    final = last_frame(raw)
    for title in ("source", "outputs", "demo.qcow2", "demo.vmdk", "manifest"):
        assert re.search(rf"^✓ +{re.escape(title)} ", final, re.MULTILINE), raw
    assert not any(PLAIN_LINE.match(line) for line in ANSI.sub("", raw).splitlines())  # no plain lines here
    assert "manifest: out/manifest.json" in stdout  # results stay on stdout


def test_cli_on_a_terminal_shows_the_failed_stage_then_the_error(served: Path, tmp_path: Path) -> None:
    served.write_text(re.sub(r"sha256:[0-9a-f]{64}", "sha256:" + "0" * 64, served.read_text()))
    report, _, raw = run_cli(tmp_path, ["build", os.fspath(served), "-o", "out"], tty=True)
    assert report["rc"] == 2, raw  # a checksum mismatch is bad input
    text = ANSI.sub("", raw)
    assert re.search(r"^✗ +source +checksum mismatch", last_frame(raw.split("imgsmith: error:")[0]), re.MULTILINE)
    assert text.count("imgsmith: error: checksum mismatch") == 1  # the whole message, once, after the view


def test_library_log_lines_go_above_the_view_not_across_it() -> None:
    """The CLI's log handler holds the real stderr; while the view runs it writes through rich."""
    import logging
    handler = logging.StreamHandler(sys.stderr)
    logger = logging.getLogger("imgsmith")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    console = terminal()
    try:
        with LiveView(console, clock=FakeClock()) as view:
            view(StageStarted(StageKind.LAYER, "1 step(s) (accelerator kvm)", 1, 1, "base"))
            logging.getLogger("imgsmith.test").info("appliance launched in 2.1 s")
            view.finish()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert handler.stream is sys.stderr  # given back
    assert "appliance launched in 2.1 s" in re.split(r"[\r\n]", ANSI.sub("", written(console)))


def test_a_board_taller_than_the_terminal_keeps_the_running_stage_in_view() -> None:
    board = StageBoard(FakeClock())
    for i in range(1, 31):
        board.stage(StageStarted(StageKind.LAYER, "cached", i, 30, f"step{i}", cached=True) if i < 30
                    else StageStarted(StageKind.LAYER, "1 step(s) (accelerator tcg)", 30, 30, "last"))
    console = Console(file=io.StringIO(), force_terminal=True, width=100, height=10)
    console.print(board)
    lines = ANSI.sub("", written(console)).splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("… 21 earlier row(s) not shown")
    assert "layer 22/30 step22" in lines[1] and "layer 30/30 last" in lines[-1]


def test_parallel_layer_pulls_get_a_row_each_with_bytes() -> None:
    console = terminal()
    view = LiveView(console, clock=FakeClock())
    view(StageStarted(StageKind.PULL, "2 layer(s) in parallel from s3://b/p"))
    view.transfer("layer 1 base", 1 * MiB, 4 * MiB)
    view.transfer("layer 2 app", 2 * MiB, 2 * MiB)
    text = snapshot(view.board)
    assert "25%" in row(text, "layer 1 base") and "1 MiB / 4 MiB" in row(text, "layer 1 base")
    assert row(text, "layer 2 app").startswith("✓")
    assert row(text, "pull")[0] not in "✓✗"
