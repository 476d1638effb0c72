"""Linters as tests: ruff, and mypy --strict over src and tests (pyproject: files), must be clean.

And the one property of the test toolchain the suite's time budget rests on: xdist groups hold.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent


def test_ruff() -> None:
    r = subprocess.run([BIN / "ruff", "check", "src", "tests", "bench"], cwd=ROOT, capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict() -> None:
    r = subprocess.run([BIN / "mypy"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_import_layers() -> None:
    """No package imports one from a higher layer (scripts/import-graph, layers in docs/decisions.md)."""
    r = subprocess.run([sys.executable, ROOT / "scripts" / "import-graph"], cwd=ROOT, capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    graph = dict(line.split(" -> ") for line in r.stdout.splitlines())
    assert graph["host"] == "errors, paths, proc"  # the bottom layer uses nothing above it
    assert "customize" not in graph["sysprep"] and "guest" not in graph["disk"]


def test_import_graph_reports_an_upward_import(tmp_path: Path) -> None:
    """The checker really fails: a disk module importing the guest package is reported, exit 1."""
    pkg = tmp_path / "imgsmith"
    (pkg / "disk").mkdir(parents=True)
    (pkg / "guest").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "guest" / "__init__.py").write_text("")
    (pkg / "disk" / "__init__.py").write_text("")
    (pkg / "disk" / "bad.py").write_text("def f() -> None:\n    from ..guest import api\n")
    r = subprocess.run([sys.executable, ROOT / "scripts" / "import-graph", pkg], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 1
    assert r.stdout == "disk -> guest\n"
    assert r.stderr == "imgsmith/disk/bad.py:2: disk -> guest imports upward (layer 2 -> 4)\n"


def test_xdist_groups_keep_their_tests_on_one_worker(tmp_path: Path) -> None:
    """`make test`'s ``--dist loadgroup`` really keeps an ``xdist_group`` on one worker.

    The suite's expensive module fixtures (virt-customize references, the sysprep module's
    appliance runs) are shared through groups. pytest 9.2 with pytest-xdist 3.8 drops every group
    without a word (pytest-dev/pytest-xdist#1386), and the suite only gets minutes slower: this
    catches that (pyproject.toml pins pytest below 9.2).
    """
    (tmp_path / "test_grouped.py").write_text(textwrap.dedent("""\
        import os, time
        import pytest

        @pytest.mark.xdist_group("shared")
        @pytest.mark.parametrize("n", range(6))
        def test_grouped(n):
            time.sleep(0.1)
            with open("workers", "a") as f:
                f.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")

        @pytest.mark.parametrize("n", range(6))
        def test_free(n):
            time.sleep(0.1)
        """))
    # the inner run is a fresh one: not this worker's, and without options given to the outer run
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist",
                        "loadgroup", "-o", "addopts=", "test_grouped.py"], cwd=tmp_path, capture_output=True,
                       text=True, check=False, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    workers = (tmp_path / "workers").read_text().split()
    assert len(workers) == 6 and len(set(workers)) == 1, workers
