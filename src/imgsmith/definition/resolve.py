"""From the validated model to the domain objects a build uses, checked at load.

The model (model.py) says what the file may contain; this module decides what it
means: the sysprep selection and its options, each output's target (format or
preset resolved, options checked against the format, the file name decided and
collisions refused), the boot test's limits. Every value that can be wrong is judged
here, before a build does any work, and each problem names its place in the file
(a path such as ``outputs[1].options.subformat``), which load.py turns into
``FILE:LINE:COL``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..disk.convert import Target, make_target
from ..disk.formats import writable_format
from ..disk.presets import get_preset
from ..errors import UsageError
from ..ops.accounts import SshInject
from ..ops.base import Operation
from ..publish.spec import PublishSpec, resolve_entries
from ..sysprep.base import SysprepOptions
from ..sysprep.run import check_options
from ..sysprep.select import resolve_selection
from .model import Definition, Output, PublishEntry, SysprepSection
from .yamlpos import PathT

__all__ = ["SYSPREP_CONFLICTS", "OutputSpec", "Resolved", "SysprepPlan", "resolve", "resolve_parts"]

# Sysprep operations that would undo a definition's own steps, with the step type that conflicts.
SYSPREP_CONFLICTS: dict[str, tuple[type[Operation], str]] = {
    "ssh-userdir": (SshInject, "it would delete the keys the ssh-inject step installs"),
}

Found = list[tuple[PathT, str]]


@dataclass(frozen=True)
class OutputSpec:
    """One output: its file name in the output directory and the checked conversion target."""

    name: str
    target: Target  # its path is the bare name; :meth:`at` places it in the output directory

    def at(self, out_dir: Path) -> Target:
        return dataclasses.replace(self.target, path=out_dir / self.name)

    @property
    def label(self) -> str:
        return self.target.label


@dataclass(frozen=True)
class SysprepPlan:
    """The resolved sysprep selection (execution order), its options, and what was dropped and why."""

    operations: tuple[str, ...]
    options: SysprepOptions = field(default_factory=SysprepOptions)
    dropped: tuple[tuple[str, str], ...] = ()

    def key_token(self) -> dict[str, object]:
        """What the last layer's key hashes of sysprep: the selection, and the user lists when given."""
        token: dict[str, object] = {"sysprep": sorted(self.operations)}  # as keyed before user lists existed
        if self.options.keep_users or self.options.remove_users:
            token["sysprep_users"] = {"keep": sorted(self.options.keep_users),
                                      "remove": sorted(self.options.remove_users)}
        return token


@dataclass(frozen=True)
class Resolved:
    sysprep: SysprepPlan | None
    outputs: tuple[OutputSpec, ...]
    publish: tuple[PublishSpec, ...] = ()


def _sysprep(section: SysprepSection | None, layer_ops: list[list[Operation]], found: Found) -> SysprepPlan | None:
    if section is None:
        return None
    try:
        selected = resolve_selection(section.operations)
        if section.enable:
            selected = resolve_selection(section.enable, flag="--enable")
    except UsageError as exc:
        key = "enable" if exc.message.startswith("--enable") else "operations"
        found.append((("sysprep", key), exc.message.removeprefix("--enable: ").removeprefix("--operations: ")))
        return None
    options = SysprepOptions(remove_users=frozenset(section.remove_user_accounts),
                             keep_users=frozenset(section.keep_user_accounts))
    try:
        check_options(selected, (), options)
    except UsageError:
        key = "remove-user-accounts" if options.remove_users else "keep-user-accounts"
        found.append((("sysprep", key), "the user-account operation is not selected (add it: "
                      "operations: [defaults, user-account])"))
        return None
    spec_text = ",".join([section.operations] if isinstance(section.operations, str) else section.operations)
    named = {item.strip() for item in spec_text.split(",")}
    all_ops = [op for ops in layer_ops for op in ops]
    dropped = []
    for name, (kind, why) in SYSPREP_CONFLICTS.items():
        if name in selected and name not in named and any(isinstance(op, kind) for op in all_ops):
            selected.remove(name)
            dropped.append((name, why))
    return SysprepPlan(tuple(selected), options, tuple(dropped))


def default_output_name(stem: str, o: Output) -> str:
    """``NAME-PRESET.EXT`` for a preset, ``NAME[-SUBFORMAT].EXT`` for a format."""
    if o.preset:
        return f"{stem}-{o.preset}{get_preset(o.preset).extension}"
    ext = writable_format(str(o.format)).extension
    sub = o.options.get("subformat")
    return f"{stem}-{sub}{ext}" if sub else f"{stem}{ext}"


def _option_path(i: int, o: Output, message: str) -> PathT:
    """Point at the option a conversion error names (``option 'subformat' …``), else at the format/preset."""
    for key in o.options:
        if f"'{key}'" in message or f"{key}=" in message or f" {key} " in message:
            return ("outputs", i, "options", key)
    return ("outputs", i, "preset" if o.preset else "format")


def _outputs(stem: str, outputs: Sequence[tuple[int, Output]], found: Found) -> tuple[OutputSpec, ...]:
    specs: list[OutputSpec] = []
    names: dict[str, int] = {}
    for i, o in outputs:
        options = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in o.options.items()}
        try:
            name = o.name or default_output_name(stem, o)
            target = make_target(Path(name), fmt=o.format, options=options or None, preset=o.preset)
        except UsageError as exc:
            found.append((_option_path(i, o, exc.message), exc.message))
            continue
        if "/" in name or name in (".", "..") or name.startswith("."):
            found.append((("outputs", i, "name"), f"{name!r} is not a plain file name"))
            continue
        if name in names or name in {"manifest.json", "SHA256SUMS"}:
            other = f"outputs[{names[name]}]" if name in names else "the build's own files"
            found.append((("outputs", i, "name" if o.name else "preset" if o.preset else "format"),
                          f"would be written to {name}, like {other}: give one of them its own name:"))
            continue
        names[name] = i
        specs.append(OutputSpec(name, target))
    return tuple(specs)


def resolve(d: Definition, layer_ops: list[list[Operation]]) -> tuple[Resolved, Found]:
    """The domain objects of *d*, and every problem found on the way (path, message)."""
    found: Found = []
    sysprep = _sysprep(d.sysprep, layer_ops, found)
    outputs = _outputs(d.name, list(enumerate(d.outputs)), found)
    publish = _publish(d.publish, outputs, found) if len(outputs) == len(d.outputs) else ()
    return Resolved(sysprep, outputs, publish), found


def _publish(entries: Sequence[PublishEntry], outputs: Sequence[OutputSpec], found: Found) -> tuple[PublishSpec, ...]:
    """Each destination names an existing output its kind can take (judged only when every output resolved)."""
    facts = [(o.name, o.target.preset.name if o.target.preset else None, o.target.format.name, o.target.layout.value)
             for o in outputs]
    return resolve_entries(entries, facts, found)


def resolve_parts(data: Mapping[str, Any], layer_ops: list[list[Operation]]) -> Found:
    """When the model as a whole is invalid, still judge the sections that are valid on their own.

    A user then sees an output's unknown preset together with a bad ``size:``, in one round.
    """
    found: Found = []
    with contextlib.suppress(ValidationError):
        _sysprep(SysprepSection.model_validate(data.get("sysprep")) if data.get("sysprep") is not None else None,
                 layer_ops, found)
    raw = data.get("outputs")
    valid: list[tuple[int, Output]] = []
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        with contextlib.suppress(ValidationError):
            valid.append((i, Output.model_validate(item)))
    name = data.get("name")
    _outputs(name if isinstance(name, str) else "image", valid, found)
    return found
