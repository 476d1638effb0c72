"""Linters as tests: ruff, and mypy --strict over src and tests (pyproject: files), must be clean."""

from __future__ import annotations

import subprocess
import sys
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
