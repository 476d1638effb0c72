"""The host helpers with real files and real processes: atomic writes, locks, spawn's stop policy."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgsmith import proc
from imgsmith.errors import ProcessError
from imgsmith.host.files import atomic_write, file_digest, file_lock, scratch_dir, sha256_file, try_file_lock

HOLD_LOCK = """
import sys, time
from pathlib import Path
from imgsmith.host.files import file_lock
with file_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_atomic_write_replaces_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("old\n")
    atomic_write(path, "new\n")
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temp file left


def test_atomic_write_leaves_the_old_file_intact_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text("old content\n")
    with pytest.raises(TypeError):
        atomic_write(path, 12345)  # type: ignore[arg-type]  # not bytes: fails while writing
    assert path.read_text() == "old content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_atomic_write_into_a_missing_directory_fails_without_a_trace(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "nodir" / "f", b"x")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_mode(tmp_path: Path) -> None:
    atomic_write(tmp_path / "key", b"secret", mode=0o600)
    assert (tmp_path / "key").stat().st_mode & 0o777 == 0o600


def test_lock_excludes_another_process(tmp_path: Path) -> None:
    lock = tmp_path / "locks" / "k.lock"
    with subprocess.Popen([sys.executable, "-c", HOLD_LOCK, lock, "1.5"], stdout=subprocess.PIPE,
                          text=True) as child:
        assert child.stdout is not None and child.stdout.readline() == "locked\n"
        start = time.monotonic()
        with try_file_lock(lock) as free:
            assert not free
        waited: list[bool] = []
        with file_lock(lock, on_wait=lambda: waited.append(True)):
            took = time.monotonic() - start
        assert waited == [True] and took > 1.0  # we got it only when the holder let go
    with try_file_lock(lock) as free:
        assert free


def test_lock_survives_its_file_being_removed_by_the_holder(tmp_path: Path) -> None:
    """A holder may delete the lock file (the cache's prune does); the next locker must not lock
    the orphaned inode while a third locks a fresh file."""
    lock = tmp_path / "k.lock"
    with file_lock(lock):
        lock.unlink()
    with file_lock(lock):
        assert lock.exists()
        with try_file_lock(lock) as free:
            assert not free


HOLD_SCRATCH = """
import sys, time
from pathlib import Path
from imgsmith.host.files import scratch_dir
with scratch_dir("imgsmith-", Path(sys.argv[1])) as work:
    (work / "overlay.qcow2").write_bytes(bytes(3 << 20))
    print(work, flush=True)
    time.sleep(60)
"""


def _scratch_holder(parent: Path) -> tuple[subprocess.Popen[str], Path]:
    child = subprocess.Popen([sys.executable, "-c", HOLD_SCRATCH, parent], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    return child, Path(child.stdout.readline().strip())


def test_scratch_dir_left_by_kill9_is_removed_by_the_next_one_and_nothing_else_is(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    killed, dead = _scratch_holder(tmp_path)
    alive, live = _scratch_holder(tmp_path)
    try:
        killed.kill()
        killed.wait()
        killed.stdout.close()  # type: ignore[union-attr]
        assert (dead / "overlay.qcow2").stat().st_size == 3 << 20  # SIGKILL: nothing ran to remove it
        stranger = tmp_path / "imgsmith-someone-elses"  # same prefix, but not a scratch_dir
        stranger.mkdir()
        (stranger / "keep").write_text("mine")
        (tmp_path / "imgsmith-link").symlink_to(dead)
        with caplog.at_level("WARNING", logger="imgsmith.host.files"), scratch_dir("imgsmith-", tmp_path) as work:
            assert work.is_dir() and work.name.startswith("imgsmith-")
            assert not dead.exists()
            assert (live / "overlay.qcow2").exists()  # its owner still runs
            assert (stranger / "keep").read_text() == "mine"
        assert not work.exists()
        assert [r.getMessage() for r in caplog.records] == [
            f"removed {dead} (3 MiB) left by an imgsmith (pid {killed.pid}) that did not exit cleanly"]
    finally:
        for child in (killed, alive):
            child.terminate()
            child.wait()
            child.stdout.close()  # type: ignore[union-attr]
    assert live.exists()  # SIGTERM without a handler: its owner died uncleanly too, until the next sweep
    with scratch_dir("imgsmith-", tmp_path):
        assert not live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgsmith-link", "imgsmith-someone-elses"]


def test_session_flushes_before_an_orderly_release_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resource's flush (the ESP mirror's write-back) runs when the session releases it in order,
    and is skipped when the session unwinds after a failure; a failing flush still releases."""
    import imgsmith.host.rollback as rollback
    monkeypatch.setattr(rollback, "RUN_DIR", tmp_path / "sessions")  # where this test's records go
    flushed: list[str] = []

    def resource(session: rollback.Session, name: str, fail: bool = False) -> Path:
        path = tmp_path / name
        path.write_text("held")

        def flush() -> None:
            flushed.append(name)
            if fail:
                raise OSError(f"{name}: disk full")
        session.push("path", str(path), flush=flush)
        return path

    session = rollback.Session("test")
    a, b = resource(session, "a"), resource(session, "b", fail=True)
    with pytest.raises(OSError, match="b: disk full"):
        session.pop_while("path")
    assert flushed == ["b"] and not b.exists() and a.exists()  # released all the same, then raised
    session.pop_while("path")
    assert flushed == ["b", "a"] and not a.exists()

    with pytest.raises(RuntimeError), rollback.Session("failing").held() as failing:
        c = resource(failing, "c")
        raise RuntimeError("a step failed")
    assert flushed == ["b", "a"] and not c.exists()  # unwound without the flush
    session.close()


def test_file_digest_hashes_holes_as_zeros(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with path.open("wb") as f:
        f.write(b"head")
        f.seek(9 << 20)
        f.write(b"tail")
    data = path.read_bytes()
    seen: list[int] = []
    assert sha256_file(path, seen.append) == hashlib.sha256(data).hexdigest()
    assert sum(seen) == len(data)
    assert file_digest(path, "sha512") == hashlib.sha512(data).hexdigest()


IGNORES_TERM = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: print("got TERM", flush=True))
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


def test_spawn_stops_a_child_that_ignores_sigterm_with_sigkill() -> None:
    start = time.monotonic()
    with proc.spawn([sys.executable, "-c", IGNORES_TERM], grace=0.5) as p:
        assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        stdout = p.stdout
    took = time.monotonic() - start
    assert p.stopped and p.returncode == -9  # SIGKILL, after...
    assert stdout.closed
    assert took >= 0.5  # ...the grace period


def test_spawn_sends_sigterm_first() -> None:
    with proc.spawn([sys.executable, "-c", IGNORES_TERM], grace=1.0) as p:
        assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        out = p.stdout
        p.stop()
        rest = out.read()
    assert rest.startswith(b"got TERM\n") and p.returncode == -9


def test_spawn_lets_a_child_stopped_by_sigterm_go_quietly() -> None:
    with proc.spawn([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(30)"]) as p:
        assert p.stdout is not None and p.stdout.readline() == b"ready\n"
    assert p.stopped and p.returncode == -15


def test_spawn_raises_a_typed_error_with_the_stderr_tail() -> None:
    script = "import sys; print('first', file=sys.stderr); print('disk full', file=sys.stderr); sys.exit(3)"
    with pytest.raises(ProcessError) as caught, proc.spawn([sys.executable, "-c", script]) as p:
        p.wait()
    assert caught.value.returncode == 3
    assert caught.value.message == f"{os.path.basename(sys.executable)} failed (exit 3): first | disk full"


def test_spawn_environment_is_run_s(tmp_path: Path) -> None:
    script = "import os; print(os.environ['LC_ALL'], os.environ['EXTRA'], os.environ.get('PATH') is not None)"
    with proc.spawn([sys.executable, "-c", script], env={"EXTRA": "yes"}) as p:
        assert p.stdout is not None
        out = p.stdout.read()
        p.wait()
    assert out == b"C.UTF-8 yes True\n"
    assert proc.run([sys.executable, "-c", script], env={"EXTRA": "yes"}).stdout == out.decode()


def test_spawn_of_a_missing_program() -> None:
    with pytest.raises(ProcessError, match="no-such-tool-xyz: command not found"), proc.spawn(["no-such-tool-xyz"]):
        pass


def test_stop_pid_applies_the_same_policy_to_a_daemon() -> None:
    with subprocess.Popen([sys.executable, "-c", IGNORES_TERM], stdout=subprocess.PIPE) as child:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        start = time.monotonic()
        proc.stop_pid(child.pid, 0.5)
        assert time.monotonic() - start >= 0.5
        assert child.wait(5) == -9
        assert child.stdout.readline() == b"got TERM\n"


# A command that starts a grandchild (as `chroot ROOT update-initramfs` starts mkinitramfs), writes
# its pid, then waits for it; run through proc.run by a Python that turns SIGTERM into
# KeyboardInterrupt, as the CLI does.
FORKS = "sleep 300 & echo $! > {pidfile}; wait"
RUN_UNTIL_TERM = """
import signal, sys
from imgsmith import proc
def interrupt(signum, frame):
    raise KeyboardInterrupt
signal.signal(signal.SIGTERM, interrupt)
try:
    proc.run(["sh", "-c", sys.argv[1]])
except KeyboardInterrupt:
    sys.exit(130)
"""


def _wait_for_pid(pidfile: Path) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if pidfile.exists() and pidfile.read_text().strip():
            return int(pidfile.read_text())
        time.sleep(0.05)
    raise AssertionError("the command never started its grandchild")


def test_run_interrupted_or_timed_out_kills_what_the_command_started(tmp_path: Path) -> None:
    """SIGTERM (or a timeout) during proc.run leaves nothing running: not the child, not its children."""
    pidfile = tmp_path / "term.pid"
    with subprocess.Popen([sys.executable, "-c", RUN_UNTIL_TERM, FORKS.format(pidfile=pidfile)]) as runner:
        grandchild = _wait_for_pid(pidfile)
        assert proc.pid_alive(grandchild)
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(30) == 130
    assert not _running(grandchild)

    pidfile = tmp_path / "timeout.pid"
    start = time.monotonic()
    with pytest.raises(ProcessError, match="sh timed out after 2 s"):
        proc.run(["sh", "-c", FORKS.format(pidfile=pidfile)], timeout=2)
    assert time.monotonic() - start < 30
    assert not _running(_wait_for_pid(pidfile))


def _running(pid: int) -> bool:
    """Still alive 5 s on (a SIGKILL lands asynchronously), and not a zombie waiting for PID 1 to
    reap it (a zombie runs nothing and holds no mount)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        if state == "Z":
            return False
        time.sleep(0.05)
    return True


@pytest.mark.skipif(os.geteuid() != 0, reason="loop devices need root")
def test_partitions_left_on_a_loop_device_are_forgotten(tmp_path: Path) -> None:
    """What an attach finds when an earlier user of the device left its partitions registered."""
    from imgsmith.host.loopdev import forget_stale_partitions
    disk = tmp_path / "d.raw"
    subprocess.run(["truncate", "-s", "20M", disk], check=True)
    subprocess.run(["sfdisk", "-q", disk], input=b"label: gpt\n,4M,L\n,4M,L\n", check=True)
    loop = subprocess.run(["losetup", "--find", "--show", disk], check=True, capture_output=True,
                          text=True).stdout.strip()
    name = Path(loop).name
    try:
        subprocess.run(["partx", "-a", loop], check=True)
        assert sorted(p.name for p in Path("/sys/block", name).glob(f"{name}p*")) == [f"{name}p1", f"{name}p2"]
        assert forget_stale_partitions(loop) == [f"{name}p1", f"{name}p2"]
        assert list(Path("/sys/block", name).glob(f"{name}p*")) == []
        assert forget_stale_partitions(loop) == []
        subprocess.run(["partx", "-a", loop], check=True)  # the table can be announced again
    finally:
        subprocess.run(["partx", "-d", loop], check=False, capture_output=True)
        subprocess.run(["losetup", "-d", loop], check=False)
