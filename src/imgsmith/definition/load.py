"""Loading a definition: YAML → located data → overrides → model → operations, all errors at once.

Every problem is reported as ``FILE:LINE:COL: PATH: message`` (PATH like
``layers[1].steps[3].edit``), and all of them are collected before anything runs,
so a user fixes a file in one round.
"""

from __future__ import annotations

import dataclasses
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
from ..publish.record import definition_digest
from ..publish.spec import PublishSpec
from . import matrix
from .model import Definition
from .resolve import OutputSpec, Resolved, SysprepPlan, resolve, resolve_parts
from .yamlpos import Located, PathT, load_located

__all__ = ["LoadedDefinition", "apply_overrides", "load_definition", "load_variants"]


@dataclass(frozen=True)
class LoadedDefinition:
    """A definition checked whole: the model, each layer's operations, and the resolved domain objects."""

    path: Path
    definition: Definition
    layer_ops: list[list[Operation]]
    text_hash: str  # sha256 of the file text plus overrides: the "definition hash" in the manifest
    overrides: list[str] = field(default_factory=list)
    resolved: Resolved = field(default_factory=lambda: Resolved(None, ()))
    matrix: dict[str, str | int] = field(default_factory=dict)  # this variant's axis values (matrix.py)

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


def _operation(name: str) -> type[Operation] | None:
    """The registered operation *name*. ``cloud-ready`` registers itself from clouds/ (it is made of
    the cloud rules, a layer above ops/), so the rules are imported only by a definition that uses
    it or names an operation ops/ does not have (then the suggestions see every operation)."""
    if name not in CUSTOMIZE_OPERATIONS:
        from ..clouds import ready  # noqa: F401 -- registers `cloud-ready`
    return CUSTOMIZE_OPERATIONS.get(name)


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
            cls = _operation(name)
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


def _read(file: Path) -> tuple[str, Located]:
    """The file's text and located data, or the one problem that stops everything (not YAML, not a mapping)."""
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
    return text, loc


def _check(file: Path, loc: Located, check_files: bool) -> tuple[Definition | None, list[list[Operation]],
                                                                  Resolved, list[Problem]]:
    """One (variant of a) definition checked whole: the model, every step, the resolved parts."""
    problems: list[Problem] = []
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
    return definition, layer_ops, resolved, problems


def load_variants(file: Path, *, overrides: Sequence[str] = (), check_files: bool = True) -> list[LoadedDefinition]:
    """Every variant of *file*'s ``matrix:`` (one without a matrix); raise DefinitionError listing every problem.

    Overrides apply before the expansion, so ``--set matrix.cloud=[aliyun]`` narrows the
    matrix to one variant (what a CI job given by ``imgsmith plan`` does). A problem
    found in only some variants names the variant; one found in all is reported once.
    """
    text, loc = _read(file)
    problems = [Problem(line, col, os.fspath(file), _fmt_path(p), m) for p, m, (line, col) in loc.problems]
    apply_overrides(loc.data, overrides)
    axes, found = matrix.axes_of(loc)
    found += matrix.unknown_refs(loc.data, axes)
    problems += [_problem(file, loc, path[:-1] if path[-1] == "<key>" else path, message, key=path[-1] == "<key>")
                 for path, message in found]
    if problems:
        raise DefinitionError(problems)
    variants: list[LoadedDefinition] = []
    per_variant: list[tuple[str, list[Problem]]] = []
    for values in matrix.combinations(axes):
        data = matrix.substitute(loc.data, values)
        data["name"] = matrix.variant_name(loc.data.get("name"), values)
        vloc = Located(data, loc.marks)
        definition, layer_ops, resolved, found_here = _check(file, vloc, check_files)
        label = str(data["name"])
        per_variant.append((label, found_here))
        if definition is None or found_here:
            continue
        chosen = [*overrides, *(x for x in matrix.selector(values) if x not in overrides)]
        digest = definition_digest(text, chosen)  # publish/record.py recomputes it without loading
        variants.append(LoadedDefinition(file, definition, layer_ops, digest, chosen, resolved, dict(values)))
    if any(found_here for _, found_here in per_variant):
        raise DefinitionError(_name_variants(per_variant))
    return variants


def _name_variants(per_variant: list[tuple[str, list[Problem]]]) -> list[Problem]:
    """Problems common to every variant once; the others prefixed with ``variant NAME:``."""
    if len(per_variant) == 1:
        return per_variant[0][1]
    common = set.intersection(*(set(found) for _, found in per_variant))
    out = list(common)
    for label, found in per_variant:
        out += [dataclasses.replace(p, message=f"variant {label}: {p.message}") for p in found if p not in common]
    return out


def load_definition(file: Path, *, overrides: Sequence[str] = (), check_files: bool = True) -> LoadedDefinition:
    """Load and validate *file*, one definition; raise DefinitionError listing every problem (exit code 2).

    A matrix that gives several variants is refused here (load_variants takes it whole):
    the commands that build one image say which variant with ``--set matrix.AXIS=[VALUE]``.
    """
    variants = load_variants(file, overrides=overrides, check_files=check_files)
    if len(variants) == 1:
        return variants[0]
    _, loc = _read(file)
    names = ", ".join(v.definition.name for v in variants)
    raise DefinitionError([_problem(file, loc, ("matrix",), f"the matrix gives {len(variants)} variants ({names}): "
                                    "choose one with --set matrix.AXIS=[VALUE]", key=True)])
