"""Loading a definition: YAML → located data → overrides → model → operations, all errors at once.

Every problem is reported as ``FILE:LINE:COL: PATH: message`` (PATH like
``layers[1].steps[3].edit``), and all of them are collected before anything runs,
so a user fixes a file in one round.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..disk.sizes import SizeSpec
from ..errors import DefinitionError, Problem, UsageError
from ..ops import CUSTOMIZE_OPERATIONS
from ..ops.base import Operation, ParseContext
from ..publish.spec import PublishSpec
from .model import Definition
from .resolve import OutputSpec, Resolved, SysprepPlan, resolve, resolve_parts
from .yamlpos import Located, PathT, load_located

__all__ = ["LoadedDefinition", "apply_overrides", "load_definition"]


@dataclass(frozen=True)
class LoadedDefinition:
    """A definition checked whole: the model, each layer's operations, and the resolved domain objects."""

    path: Path
    definition: Definition
    layer_ops: list[list[Operation]]
    text_hash: str  # sha256 of the file text plus overrides: the "definition hash" in the manifest
    overrides: list[str] = field(default_factory=list)
    resolved: Resolved = field(default_factory=lambda: Resolved(None, ()))

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def size(self) -> SizeSpec | None:
        return self.definition.size_spec

    @property
    def sysprep(self) -> SysprepPlan | None:
        return self.resolved.sysprep

    @property
    def outputs(self) -> tuple[OutputSpec, ...]:
        return self.resolved.outputs

    @property
    def publish(self) -> tuple[PublishSpec, ...]:
        return self.resolved.publish


def _fmt_path(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        if part == "<key>":
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top)"


def _problem(file: Path, loc: Located, path: PathT, message: str, *, key: bool = False) -> Problem:
    line, col = loc.where((*path, "<key>") if key and (*path, "<key>") in loc.marks else path)
    return Problem(line, col, os.fspath(file), _fmt_path(path), message)


def apply_overrides(data: Any, overrides: Sequence[str]) -> None:
    """``--set a.b=value``: set a dotted key (value parsed as YAML). Rebases a sibling checksum-url.

    When ``source.url`` is overridden and ``source.checksum-url`` lives in the same
    directory as the old url, the checksum URL follows to the new directory: a mirror
    (or a test server) serves the image and its SUMS file side by side.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. source.url=https://…")
        parts = key.split(".")
        node = data
        for part in parts[:-1]:
            node = _child(node, part, key)
        value = yaml.safe_load(raw) if raw else ""
        if isinstance(node, list):  # layers.1.steps.2=... replaces a whole list item
            _child(node, parts[-1], key)
            node[int(parts[-1])] = value
            continue
        if not isinstance(node, dict):
            raise UsageError(f"--set {key}: cannot set a key inside a non-mapping")
        old = node.get(parts[-1])
        node[parts[-1]] = value
        if parts == ["source", "url"] and isinstance(old, str) and isinstance(node.get("checksum-url"), str):
            sums = node["checksum-url"]
            if posixpath.dirname(sums) == posixpath.dirname(old):
                node["checksum-url"] = posixpath.join(posixpath.dirname(str(value)), posixpath.basename(sums))


def _child(node: Any, part: str, key: str) -> Any:
    """One step down a ``--set`` path: a mapping key (created if missing) or a list index (must exist)."""
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise UsageError(f"--set {key}: {part!r} is not an index of a list of {len(node)} item(s)")
        return node[int(part)]
    if not isinstance(node, dict):
        raise UsageError(f"--set {key}: {part!r} is not a mapping in the definition")
    return node.setdefault(part, {})


def _model_problems(file: Path, loc: Located, exc: ValidationError) -> list[Problem]:
    problems = []
    for err in exc.errors():
        path = tuple(err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            problems.append(_problem(file, loc, path, f"unknown key {path[-1]!r}", key=True))
        elif err["type"] == "missing":
            problems.append(_problem(file, loc, path[:-1], f"missing required key {path[-1]!r}"))
        else:
            problems.append(_problem(file, loc, path, msg))
    return problems


def _step_ops(file: Path, loc: Located, check_files: bool) -> tuple[list[list[Operation]], list[Problem]]:
    """Parse every step of the raw data, even when the model has other problems (report all at once)."""
    ctx = ParseContext(base_dir=file.parent, check_files=check_files, origin=str(file))
    problems: list[Problem] = []
    layers: list[list[Operation]] = []
    raw_layers = loc.data.get("layers") if isinstance(loc.data, dict) else None
    for li, layer in enumerate(raw_layers if isinstance(raw_layers, list) else []):
        ops: list[Operation] = []
        steps = layer.get("steps") if isinstance(layer, dict) else None
        for si, step in enumerate(steps if isinstance(steps, list) else []):
            path: PathT = ("layers", li, "steps", si)
            if not isinstance(step, dict) or len(step) != 1:
                problems.append(_problem(file, loc, path, "a step is one mapping {operation: value}"))
                continue
            (name, value), = step.items()
            cls = CUSTOMIZE_OPERATIONS.get(name)
            if cls is None:
                close = [n for n in CUSTOMIZE_OPERATIONS if n.split("-")[0] == name.split("-")[0]][:3]
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                problems.append(_problem(file, loc, (*path, name), f"unknown operation {name!r}{hint}", key=True))
                continue
            try:
                ops.append(cls.from_yaml(value, ctx))
            except UsageError as exc:
                msg = exc.message.removeprefix(f"--{name}: ").removeprefix(f"{name}: ")
                problems.append(_problem(file, loc, (*path, name), msg))
        layers.append(ops)
    return layers, problems


def _source_problems(file: Path, loc: Located, definition: Definition, check_files: bool) -> list[Problem]:
    src = definition.source
    if check_files and src.file is not None:
        path = (file.parent / src.file)
        if not path.is_file():
            return [_problem(file, loc, ("source", "file"), f"{src.file}: no such file")]
    if src.url is not None and not (src.checksum or src.checksum_url):
        return [_problem(file, loc, ("source",), "a url source needs checksum: or checksum-url:")]
    return []


def load_definition(file: Path, *, overrides: Sequence[str] = (), check_files: bool = True) -> LoadedDefinition:
    """Load and validate *file*; raise DefinitionError listing every problem (exit code 2)."""
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{file}: {exc.strerror or exc}") from None
    try:
        loc = load_located(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise DefinitionError([Problem(line, col, os.fspath(file), "", f"invalid YAML: {problem}")]) from None
    if not isinstance(loc.data, dict):
        raise DefinitionError([Problem(1, 1, os.fspath(file), "(top)",
                                       "the definition must be a mapping (version:, name:, source: …)")])
    problems = [Problem(line, col, os.fspath(file), _fmt_path(p), m) for p, m, (line, col) in loc.problems]
    apply_overrides(loc.data, overrides)
    definition: Definition | None = None
    try:
        definition = Definition.model_validate(loc.data)
    except ValidationError as exc:
        problems += _model_problems(file, loc, exc)
    layer_ops, step_problems = _step_ops(file, loc, check_files)
    problems += step_problems
    resolved = Resolved(None, ())
    if definition is not None:
        problems += _source_problems(file, loc, definition, check_files)
        resolved, found = resolve(definition, layer_ops)
    else:
        found = resolve_parts(loc.data, layer_ops)
    problems += [_problem(file, loc, path, message) for path, message in found]
    if problems or definition is None:
        raise DefinitionError(problems)
    digest = hashlib.sha256(text.encode() + json.dumps(list(overrides)).encode()).hexdigest()
    return LoadedDefinition(file, definition, layer_ops, digest, list(overrides), resolved)
