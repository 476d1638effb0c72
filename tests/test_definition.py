"""Definition files: every problem reported at once as FILE:LINE:COL, before anything runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from imgsmith.definition import load_definition
from imgsmith.definition.load import apply_overrides
from imgsmith.errors import DefinitionError, UsageError

IMGSMITH = [sys.executable, "-m", "imgsmith.cli.main"]

BAD = """\
version: 1
name: test
source:
  file: base.qcow2
colour: blue
layers:
  - name: one
    steps:
      - timezone: Asia/Shanghai
      - edit: "/etc/x:s/(/y/"
      - frobnicate: yes
      - upload: nothere.txt:/etc/motd
      - root-password: {env: IMGSMITH_TEST_UNSET_VAR}
outputs:
  - preset: openstack
    options: {a: 1}
"""


def test_every_problem_with_its_position(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(BAD)
    with pytest.raises(DefinitionError) as info:
        load_definition(f)
    assert [str(p) for p in info.value.problems] == [
        f"{f}:5:1: colour: unknown key 'colour'",
        f"{f}:10:15: layers[0].steps[1].edit: --edit /etc/x: bad regex '(': missing ), unterminated subpattern "
        "at position 0",
        f"{f}:11:9: layers[0].steps[2].frobnicate: unknown operation 'frobnicate'",
        f"{f}:12:17: layers[0].steps[3].upload: nothere.txt: no such file on the host",
        f"{f}:13:24: layers[0].steps[4].root-password: environment variable IMGSMITH_TEST_UNSET_VAR is not set "
        "(or empty)",
        f"{f}:15:5: outputs[0]: options go with format, not preset",
    ]


def test_cli_reports_all_problems_and_exits_2(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(BAD)
    r = subprocess.run([*IMGSMITH, "build", str(f)], capture_output=True, text=True, check=False)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 6 and all(line.startswith(f"imgsmith: error: {f}:") for line in lines), r.stderr
    assert lines[0] == f"imgsmith: error: {f}:5:1: colour: unknown key 'colour'"
    assert lines[-1] == f"imgsmith: error: {f}:15:5: outputs[0]: options go with format, not preset"
    r = subprocess.run([*IMGSMITH, "build", str(f), "--json"], capture_output=True, text=True, check=False)
    assert r.returncode == 2
    error = json.loads(r.stdout)["error"]
    assert error["kind"] == "DefinitionError" and len(error["problems"]) == 6
    assert error["problems"][0] == {"file": str(f), "line": 5, "column": 1, "path": "colour",
                                    "message": "unknown key 'colour'"}
    third = f"{f}:11:9: layers[0].steps[2].frobnicate: unknown operation 'frobnicate'"
    assert error["message"].splitlines()[2] == third


@pytest.mark.parametrize(("text", "expected"), [
    ("version: 2\nname: x\nsource: {file: b}\n", ":1:10: version: Input should be 1"),
    ("version: 1\nname: x\nsource: {file: b, url: 'http://x'}\n", ":3:9: source: give exactly one of file, url"),
    ("version: 1\nname: x\n", ":1:1: (top): missing required key 'source'"),
    ("version: 1\nname: x\nsource: {url: 'http://h/i.qcow2'}\n", ":3:9: source: a url source needs checksum:"),
    ("version: 1\nname: x\nsource: {file: b}\nlayers:\n  - name: a\n    steps:\n      - timezone: UTC\n"
     "        hostname: h\n", ":7:9: layers[0].steps[0]: a step is one mapping"),
    ("version: 1\nname: x\nname: y\nsource: {file: b}\n", ":3:1: name: duplicate key 'name'"),
    ("version: 1\nname: [x\n", ":3:1: invalid YAML"),
    ("version: 1\nname: x\nsource: {file: b}\nbackend: vm\n", ":4:10: backend: Input should be 'auto', "
                                                                 "'appliance' or 'chroot'"),
])
def test_single_problems(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "b").write_bytes(b"")
    f = tmp_path / "d.yaml"
    f.write_text(text)
    with pytest.raises(DefinitionError) as info:
        load_definition(f)
    assert any(str(p).startswith(str(f)) and expected in str(p) for p in info.value.problems), info.value.problems


def test_examples_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOT_PASSWORD", "x")
    root = Path(__file__).parent.parent / "examples"
    for f in sorted(root.glob("*.yaml")):
        loaded = load_definition(f)
        assert loaded.definition.version == 1 and loaded.layer_ops


def test_set_override_rebases_the_sums_file() -> None:
    data = {"source": {"url": "https://a.example/c7/img.qcow2", "checksum-url": "https://a.example/c7/SUMS"}}
    apply_overrides(data, ["source.url=http://127.0.0.1:8000/x/img.qcow2"])
    assert data["source"] == {"url": "http://127.0.0.1:8000/x/img.qcow2",
                              "checksum-url": "http://127.0.0.1:8000/x/SUMS"}


def test_set_override_reaches_into_lists() -> None:
    data = {"layers": [{"name": "a", "steps": [{"hostname": "one"}, {"timezone": "UTC"}]}]}
    apply_overrides(data, ["layers.0.steps.0.hostname=two", "layers.0.steps.1={timezone: Asia/Shanghai}"])
    assert data["layers"][0]["steps"] == [{"hostname": "two"}, {"timezone": "Asia/Shanghai"}]
    for bad, message in [("layers.3.name=x", "'3' is not an index of a list of 1 item"),
                         ("layers.first.name=x", "'first' is not an index of a list of 1 item"),
                         ("layers.0.steps.5=x", "'5' is not an index of a list of 2 item"),
                         ("layers.0.name.x=1", "cannot set a key inside a non-mapping")]:
        with pytest.raises(UsageError, match=re.escape(message)):
            apply_overrides(data, [bad])


def test_schema_describes_every_step() -> None:
    r = subprocess.run([*IMGSMITH, "schema"], capture_output=True, text=True, check=True)
    schema = json.loads(r.stdout)
    steps = schema["$defs"]["Layer"]["properties"]["steps"]["items"]["properties"]
    assert {"timezone", "root-password", "install", "edit", "centos7-vault-repos"} <= set(steps)
    assert schema["additionalProperties"] is False
