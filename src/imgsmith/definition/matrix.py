"""``matrix:`` — named axes whose values are substituted into a definition, one variant per combination.

``matrix: {cloud: [openstack, aliyun]}`` and ``preset: ${matrix.cloud}`` give two
variants, ``NAME-openstack`` and ``NAME-aliyun``, each a whole definition checked on its
own. The substitution works on the located data (yamlpos.py) before the model sees it,
so a problem in a variant still points at the line of the file it came from. Only
string *values* are substituted (not keys); a value that is exactly one reference
takes the axis value's own type (``memsize: ${matrix.mem}`` stays an int).

One syntax only, ``${matrix.AXIS}``: ``{{ }}`` would collide with YAML flow mappings
and with Jinja in ``write:`` steps; ``$`` followed by ``{matrix.`` appears in no shell
text we know of (``${matrix}`` alone is left as it is).
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from .yamlpos import Located, PathT

__all__ = ["REF", "Axes", "axes_of", "combinations", "selector", "substitute", "unknown_refs", "variant_name"]

REF = re.compile(r"\$\{\s*matrix\.([^}\s]*)\s*\}")
_AXIS = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")  # it goes into the variant's name

Axes = dict[str, list[str | int]]


def axes_of(loc: Located) -> tuple[Axes, list[tuple[PathT, str]]]:
    """The declared axes (in file order) and the problems of the ``matrix:`` section itself."""
    raw = loc.data.get("matrix") if isinstance(loc.data, dict) else None
    if raw is None:
        return {}, []
    if not isinstance(raw, dict) or not raw:
        return {}, [(("matrix",), "a matrix is a mapping of axis names to lists of values, e.g. "
                                  "{cloud: [openstack, aliyun]}")]
    axes: Axes = {}
    problems: list[tuple[PathT, str]] = []
    for name, values in raw.items():
        if not _AXIS.match(name):
            problems.append((("matrix", name, "<key>"), f"axis name {name!r}: a letter, then letters, digits or _"))
            continue
        if not isinstance(values, list) or not values:
            problems.append((("matrix", name), "an axis is a non-empty list of values"))
            continue
        for i, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, (str, int)) or not _VALUE.match(str(value)):
                problems.append((("matrix", name, i), f"axis value {value!r}: letters, digits, '.', '_' or '-' "
                                                      "(it becomes part of the variant's name)"))
        if len({str(v) for v in values}) != len(values):
            problems.append((("matrix", name), "an axis lists each value once"))
        axes[name] = values
    return axes, problems


def combinations(axes: Axes) -> list[dict[str, str | int]]:
    """Every combination, the first axis varying slowest; ``[{}]`` without a matrix (one plain variant)."""
    names = list(axes)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(axes[n] for n in names))]


def unknown_refs(data: Any, axes: Axes, path: PathT = ()) -> list[tuple[PathT, str]]:
    """``${matrix.X}`` where X is not a declared axis: refused at load, where it is written."""
    if isinstance(data, dict):
        return [p for key, value in data.items() if not (path == () and key == "matrix")
                for p in unknown_refs(value, axes, (*path, key))]
    if isinstance(data, list):
        return [p for i, value in enumerate(data) for p in unknown_refs(value, axes, (*path, i))]
    if not isinstance(data, str):
        return []
    known = ", ".join(axes) or "none: the definition has no matrix:"
    return [(path, f"unknown matrix axis {m.group(1)!r} in {m.group(0)!r} (axes: {known})")
            for m in REF.finditer(data) if m.group(1) not in axes]


def substitute(data: Any, values: dict[str, str | int], *, top: bool = True) -> Any:
    """A copy of *data* with every ``${matrix.AXIS}`` in a string value replaced (the top matrix key dropped)."""
    if isinstance(data, dict):
        return {k: substitute(v, values, top=False) for k, v in data.items() if not (top and k == "matrix")}
    if isinstance(data, list):
        return [substitute(v, values, top=False) for v in data]
    if not isinstance(data, str):
        return data
    whole = REF.fullmatch(data)
    if whole is not None and whole.group(1) in values:
        return values[whole.group(1)]
    return REF.sub(lambda m: str(values.get(m.group(1), m.group(0))), data)


def variant_name(raw_name: object, values: dict[str, str | int]) -> object:
    """``NAME-v1-v2`` — unless the name itself places the values (``name: web-${matrix.cloud}``)."""
    if not values or not isinstance(raw_name, str):
        return raw_name
    if REF.search(raw_name):
        return substitute(raw_name, values)
    return "-".join([raw_name, *(str(v) for v in values.values())])


def selector(values: dict[str, str | int]) -> list[str]:
    """The ``--set`` items that narrow the matrix to this one variant (what a CI job passes)."""
    return [f"matrix.{name}={json.dumps([value])}" for name, value in values.items()]
