"""`imgsmith info` and the qemu-img wrapper on real images (no appliance)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from imgsmith.cli.main import main
from imgsmith.disk import qemuimg
from imgsmith.errors import ImageError
from test_disk_support import SOURCE_SIZE, make_source


@pytest.fixture
def chain(tmp_path: Path) -> tuple[Path, Path]:
    """base.qcow2 (with an internal snapshot) <- top.qcow2 (grown by 1 MiB)."""
    raw = make_source(tmp_path / "src.raw")
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(base)], check=True)
    subprocess.run(["qemu-img", "snapshot", "-c", "before", str(base)], check=True)
    top = tmp_path / "top.qcow2"
    qemuimg.create_overlay(base, "qcow2", top, SOURCE_SIZE + (1 << 20))
    return base, top


def test_info_backing_chain_and_snapshots(chain: tuple[Path, Path]) -> None:
    base, top = chain
    info = qemuimg.info(top, "qcow2")
    assert info.format == "qcow2"
    assert info.virtual_size == SOURCE_SIZE + (1 << 20)
    assert info.backing_filename == str(base.resolve())
    assert info.backing_format == "qcow2"
    assert [i.filename for i in info.chain] == [str(top), str(base.resolve())]
    assert info.backing is not None
    assert [s.name for s in info.backing.snapshots] == ["before"]
    assert info.allocated_size == info.actual_size + info.backing.actual_size
    assert info.format_specific["compat"] == "1.1"


def test_commit_grows_the_base(chain: tuple[Path, Path]) -> None:
    base, top = chain
    qemuimg.commit(top)
    assert qemuimg.info(base, "qcow2").virtual_size == SOURCE_SIZE + (1 << 20)


def test_check_reports_unsupported_for_raw(tmp_path: Path) -> None:
    raw = make_source(tmp_path / "r.raw")
    assert qemuimg.check(raw, "raw") == qemuimg.ImageCheck(supported=False)


def test_info_of_garbage_names_qemus_reason(tmp_path: Path) -> None:
    junk = tmp_path / "junk.qcow2"
    junk.write_bytes(b"not an image")
    with pytest.raises(ImageError) as exc:
        qemuimg.info(junk, "qcow2")
    assert exc.value.message == f"{junk}: not a readable qcow2 image: Image is not in qcow2 format"


def test_cli_info_text(chain: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, top = chain
    assert main(["info", str(top), "--format", "qcow2"]) == 0
    rows = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    rows = {k: v.strip() for k, v in rows.items()}
    assert rows["format"] == "qcow2"
    assert rows["virtual size"] == f"65.0 MiB ({SOURCE_SIZE + (1 << 20)} bytes)"
    assert rows["backing chain"].endswith("base.qcow2 (qcow2) <- " + str(top) + " (qcow2)")
    assert rows["snapshots"] == "none"
    assert rows["compat"] == "1.1"


def test_cli_info_json(chain: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base, top = chain
    assert main(["info", str(top), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["format"] == "qcow2"
    assert data["backing"]["filename"] == str(base.resolve())
    assert data["backing"]["snapshots"][0]["name"] == "before"


def test_cli_info_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tmp_path / "nope.img"), "--format", "raw"]) == 2
    assert capsys.readouterr().err == f"imgsmith: error: {tmp_path / 'nope.img'}: no such disk image\n"
