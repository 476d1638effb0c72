"""The content-addressed layer store and `imgsmith cache ls|prune`, on real qcow2 overlays (no appliance)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from imgsmith.cache import LAYER_KEY_VERSION, LayerStore
from imgsmith.cli.cache import parse_duration, parse_max_size
from imgsmith.cli.main import main
from imgsmith.disk import qemuimg
from imgsmith.errors import UsageError

SRC = Path(__file__).resolve().parent.parent / "src"


class Clock:
    """A settable clock, so last-used times are chosen by the test."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    return path


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> LayerStore:
    return LayerStore(tmp_path / "cache" / "layers", clock=clock)


def grow(layer: Path, mib: int) -> None:
    """Make a layer take *mib* MiB on disk, as a customize step writing files would."""
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -q -P 0x5a 0 {mib}M", str(layer)], check=True)


def add(store: LayerStore, parent_key: str, parent: Path, token: object, *, fmt: str = "qcow2",
        mib: int = 0, name: str = "demo") -> tuple[str, Path]:
    key = store.key(parent_key, token)
    with store.building(key, parent, fmt, {"parent_key": parent_key, "token": token, "definition": name}) as lay:
        if mib:
            grow(lay, mib)
    path = store.get(key)
    assert path is not None
    return key, path


def visible(store: LayerStore) -> list[str]:
    return sorted(p.name for p in store.root.iterdir() if p.name != ".locks")


# --- keys ----------------------------------------------------------------------------------------

def test_key_is_canonical_and_depends_on_parent_and_token(store: LayerStore) -> None:
    a = store.key("p", {"steps": [{"op": "install", "args": ["vim"]}], "files": {"x": "1", "y": "2"}})
    b = store.key("p", {"files": {"y": "2", "x": "1"}, "steps": [{"args": ["vim"], "op": "install"}]})
    assert a == b and len(a) == 64
    assert store.key("q", {"steps": []}) != store.key("p", {"steps": []})
    assert store.key("p", {"steps": [1]}) != store.key("p", {"steps": [2]})
    assert store.key("p", ("a", "b")) == store.key("p", ["a", "b"])
    with pytest.raises(TypeError, match="plain JSON"):
        store.key("p", {"when": object()})
    with pytest.raises(TypeError, match="plain JSON"):
        store.key("p", float("nan"))


# --- publish and get -----------------------------------------------------------------------------

def test_building_publishes_an_overlay_of_the_parent(store: LayerStore, base: Path, clock: Clock) -> None:
    key = store.key("base:x", {"steps": ["a"]})
    assert store.get(key) is None
    with store.building(key, base, "qcow2", {"parent_key": "base:x", "token": {"steps": ["a"]},
                                             "definition": "centos7-golden"}) as layer:
        assert layer.parent.name == f".tmp-{key}-{os.getpid()}"
        assert store.get(key) is None  # not visible while being built
        grow(layer, 1)
    path = store.get(key)
    assert path == store.root / key / "layer.qcow2"
    info = qemuimg.info(path, "qcow2")
    assert info.backing_filename == os.fspath(base.resolve()) and info.backing_format == "qcow2"
    assert not os.access(path, os.W_OK) or os.geteuid() == 0
    assert path.stat().st_mode & 0o222 == 0
    meta = json.loads((store.root / key / "meta.json").read_text())
    assert meta["definition"] == "centos7-golden" and meta["parent_key"] == "base:x"
    assert meta["parent_path"] == os.fspath(base.resolve()) and meta["format_version"] == LAYER_KEY_VERSION
    assert meta["created"] == meta["last_used"] == clock.now
    assert visible(store) == [key]
    [entry] = store.entries()
    assert (entry.key, entry.definition, entry.parent_key) == (key, "centos7-golden", "base:x")
    assert entry.size > 1024 * 1024


def test_meta_must_match_the_key(store: LayerStore, base: Path) -> None:
    key = store.key("p", {"steps": [1]})
    with pytest.raises(ValueError, match="do not hash to the key"), \
            store.building(key, base, "qcow2", {"parent_key": "p", "token": {"steps": [2]}}):
        pass
    with pytest.raises(ValueError, match="not a layer key"):
        store.get("../etc")


def test_exception_in_building_publishes_nothing(store: LayerStore, base: Path) -> None:
    key = store.key("p", "t")
    with pytest.raises(RuntimeError, match="step 3 failed"), store.building(key, base, "qcow2", {}) as layer:
        grow(layer, 1)
        raise RuntimeError("step 3 failed")
    assert store.get(key) is None
    assert visible(store) == []
    assert store.entries() == []


def test_layer_chain_and_touch(store: LayerStore, base: Path, clock: Clock) -> None:
    k1, l1 = add(store, "base", base, {"steps": [1]})
    k2, l2 = add(store, k1, l1, {"steps": [2]})
    assert qemuimg.info(l2, "qcow2").backing_filename == os.fspath(l1)
    assert [e.key for e in store.entries()] == [k1, k2]
    clock.now += 100
    store.touch(k1)
    used = {e.key: e.last_used for e in store.entries()}
    assert used[k1] == clock.now and used[k2] == clock.now - 100


def test_missing_backing_file_is_a_miss_and_removes_the_chain(store: LayerStore, tmp_path: Path,
                                                              base: Path) -> None:
    copy = tmp_path / "copy.qcow2"
    copy.write_bytes(base.read_bytes())
    k1, l1 = add(store, "base", copy, {"s": 1})
    k2, _ = add(store, k1, l1, {"s": 2})
    k3, _ = add(store, "other", base, {"s": 3})
    copy.unlink()  # the base image was deleted (or the cache was moved)
    assert store.get(k2) is None
    assert visible(store) == [k3]
    assert store.get(k1) is None


def test_missing_parent_layer_is_a_miss(store: LayerStore, base: Path) -> None:
    k1, l1 = add(store, "base", base, {"s": 1})
    k2, _ = add(store, k1, l1, {"s": 2})
    os.chmod(store.root / k1 / "layer.qcow2", 0o644)
    (store.root / k1 / "layer.qcow2").unlink()
    assert store.get(k2) is None
    assert visible(store) == []


# --- interruption and concurrency ----------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from imgsmith.cache import LayerStore
    store = LayerStore(Path(sys.argv[1]))
    key = store.key("p", "killed")
    with store.building(key, Path(sys.argv[2]), "qcow2", {}) as layer:
        Path(sys.argv[3]).write_text(str(layer))
        time.sleep(60)
""")


def test_sigkill_inside_building_leaves_no_entry_and_is_swept(store: LayerStore, base: Path,
                                                              tmp_path: Path) -> None:
    marker = tmp_path / "inside"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(store.root), str(base), str(marker)], env=env)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert child.poll() is None, "child exited early"
            assert time.monotonic() < deadline, "child never entered building()"
            time.sleep(0.05)
        layer = Path(marker.read_text())
        assert layer.exists()
        # While the builder lives, prune leaves its temp directory alone.
        store.prune(max_size=0)
        assert layer.exists()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    key = store.key("p", "killed")
    assert store.get(key) is None
    assert store.entries() == []
    assert layer.parent.exists()  # only the temp directory is left...
    store.prune()
    assert visible(store) == []  # ...and the next prune sweeps it


def test_next_build_of_the_key_sweeps_a_killed_build(store: LayerStore, base: Path) -> None:
    key = store.key("p", "t")
    stale = store.root / f".tmp-{key}-999999999"
    stale.mkdir(parents=True)
    (stale / "layer.qcow2").write_bytes(b"half")
    add(store, "p", base, "t")
    assert visible(store) == [key]


def test_concurrent_builders_of_one_key_build_once(store: LayerStore, base: Path) -> None:
    key = store.key("p", "shared")
    calls: list[Path] = []
    results: list[Path] = []

    def apply(layer: Path) -> None:
        calls.append(layer)
        time.sleep(0.3)  # long enough for the other builder to be waiting on the lock
        grow(layer, 1)

    def worker() -> None:
        results.append(store.build(key, base, "qcow2", {"definition": "d"}, apply))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(calls) == 1
    assert results == [store.root / key / "layer.qcow2"] * 3


def test_building_race_keeps_the_first_published_layer(store: LayerStore, base: Path) -> None:
    key = store.key("p", "race")
    entered = threading.Event()
    saw: list[Path | None] = []

    def first() -> None:
        with store.building(key, base, "qcow2", {"definition": "first"}):
            entered.set()
            time.sleep(0.3)

    t = threading.Thread(target=first)
    t.start()
    assert entered.wait(30)
    with store.building(key, base, "qcow2", {"definition": "second"}) as layer:
        saw.append(store.get(key))  # the documented way to skip the work: it is already there
        assert layer.exists()
    t.join(30)
    assert saw == [store.root / key / "layer.qcow2"]
    assert [e.definition for e in store.entries()] == ["first"]
    assert visible(store) == [key]


# --- pruning -------------------------------------------------------------------------------------

def test_prune_by_size_removes_lru_leaves_and_keeps_parents(store: LayerStore, base: Path, clock: Clock) -> None:
    k1, l1 = add(store, "base", base, {"s": 1}, mib=2)   # oldest use, but parent of k2
    clock.now += 10
    k3, _ = add(store, "base", base, {"s": 3}, mib=2)    # sibling, used in between
    clock.now += 10
    k2, _ = add(store, k1, l1, {"s": 2}, mib=2)          # newest
    sizes = {e.key: e.size for e in store.entries()}
    removed = store.prune(max_size=sizes[k1] + sizes[k2] + 1024)
    assert [e.key for e in removed] == [k3]
    assert sorted(visible(store)) == sorted([k1, k2])


def test_prune_by_age_keeps_parents_of_recent_layers(store: LayerStore, base: Path, clock: Clock) -> None:
    k1, l1 = add(store, "base", base, {"s": 1})
    k3, _ = add(store, "base", base, {"s": 3})
    clock.now += 8 * 86400
    k2, _ = add(store, k1, l1, {"s": 2})
    assert [e.key for e in store.prune(older_than=7 * 86400, dry_run=True)] == [k3]
    assert len(visible(store)) == 3  # dry run
    assert [e.key for e in store.prune(older_than=7 * 86400)] == [k3]
    assert sorted(visible(store)) == sorted([k1, k2])
    clock.now += 8 * 86400
    assert [e.key for e in store.prune(older_than=7 * 86400)] == [k2, k1]  # child first, then its parent
    assert visible(store) == []


def test_prune_all_spares_the_parent_of_a_build_in_progress(store: LayerStore, base: Path) -> None:
    k1, l1 = add(store, "base", base, {"s": 1})
    k9, _ = add(store, "base", base, {"s": 9})
    child = store.key(k1, {"s": 2})
    with store.building(child, l1, "qcow2", {}):
        removed = store.prune(max_size=0)
    assert [e.key for e in removed] == [k9]
    assert sorted(visible(store)) == sorted([k1, child])


def test_explain_miss_names_the_changed_part(store: LayerStore, base: Path, clock: Clock) -> None:
    token = {"steps": [{"op": "install", "v": ["vim"]}, {"op": "timezone", "v": "UTC"}], "files": {}}
    k1, _ = add(store, "base", base, token)
    changed = {"steps": [{"op": "install", "v": ["vim"]}, {"op": "timezone", "v": "Asia/Shanghai"}], "files": {}}
    reason = store.explain_miss(store.key("base", changed), changed, parent_key="base")
    assert reason is not None
    assert reason.nearest == k1 and reason.differences == ("steps[1].v",)
    assert str(reason) == f"cache miss: steps[1].v changed since layer {k1[:12]}"
    assert store.explain_miss(k1, token, parent_key="base") is None
    other = store.explain_miss(store.key("elsewhere", token), token, parent_key="elsewhere")
    assert other is not None and other.nearest is None and "no layer cached on this parent" in other.message
    same = store.explain_miss(store.key("elsewhere", token), token)
    assert same is not None and same.message.endswith("different parent")


# --- CLI -----------------------------------------------------------------------------------------

@pytest.fixture
def cli_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LayerStore:
    monkeypatch.setenv("IMGSMITH_CACHE", str(tmp_path / "cache"))
    return LayerStore(tmp_path / "cache" / "layers")


def test_cli_ls_empty_and_populated(cli_store: LayerStore, base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "ls"]) == 0
    assert capsys.readouterr().out.startswith("no cached layers in ")
    k1, l1 = add(cli_store, "base", base, {"s": 1}, name="centos7-golden", mib=1)
    k2, _ = add(cli_store, k1, l1, {"s": 2}, name="centos7-golden")
    assert main(["cache", "ls"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["KEY", "SIZE", "CREATED", "USED", "DEFINITION", "PARENT"]
    assert lines[1].startswith(k1[:12]) and "centos7-golden" in lines[1] and "base base.qcow2" in lines[1]
    assert "MiB" in lines[1] and "just now" in lines[1]
    assert lines[2].startswith(k2[:12]) and lines[2].rstrip().endswith(k1[:12])
    assert lines[3].startswith("2 layers, ")
    assert main(["cache", "ls", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [e["key"] for e in data["layers"]] == [k1, k2]
    assert data["layers"][1]["parent"] == k1[:12] and data["total_size"] > 0


def test_cli_prune(cli_store: LayerStore, base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    k1, l1 = add(cli_store, "base", base, {"s": 1})
    k2, _ = add(cli_store, k1, l1, {"s": 2})
    assert main(["cache", "prune", "--all", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would remove {k2[:12]}" in out and "would remove 2 layers" in out
    assert len(cli_store.entries()) == 2
    assert main(["cache", "prune", "--older-than", "7d"]) == 0
    assert "removed 0 layers" in capsys.readouterr().out
    assert main(["cache", "prune", "--all", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [e["key"] for e in data["removed"]] == [k2, k1] and data["kept"] == 0
    assert cli_store.entries() == []


@pytest.mark.parametrize(("argv", "message"), [
    (["--max-size", "10X"], "invalid size '10X'"),
    (["--max-size", "+2G"], "give an absolute size"),
    (["--older-than", "7"], "invalid duration '7'"),
    (["--older-than", "soon"], "invalid duration 'soon'"),
    ([], "nothing to prune by"),
    (["--all", "--max-size", "1G"], "cannot be combined"),
])
def test_cli_prune_bad_input(cli_store: LayerStore, capsys: pytest.CaptureFixture[str], argv: list[str],
                             message: str) -> None:
    assert main(["cache", "prune", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len([ln for ln in err.splitlines() if "error:" in ln]) == 1


def test_parse_duration_and_size() -> None:
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("12h") == 12 * 3600
    assert parse_duration("30m") == 1800
    assert parse_duration("1d12h") == 36 * 3600
    assert parse_duration("2w") == 14 * 86400
    assert parse_max_size("10G") == 10 << 30
    assert parse_max_size("500M") == 500 << 20
    assert parse_max_size("0") == 0
    with pytest.raises(UsageError):
        parse_duration("")


def test_pid_alive_counts_an_unreaped_zombie_as_gone() -> None:
    """A daemon that exited but waits for a slow PID 1 to reap it must not hold up a session's teardown."""
    from imgsmith import proc
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while proc.pid_alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        assert not proc.pid_alive(child.pid)
        assert child.poll() == 0  # not reaped until now: it was a zombie while pid_alive said gone
    finally:
        child.wait()
    assert proc.pid_alive(os.getpid())
    assert not proc.pid_alive(child.pid)
