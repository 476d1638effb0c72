"""The output formats imgsmith writes, declared once: name, extension, options and their values.

Option names are qemu-img's own (``-o subformat=fixed``) so a user can move a
qemu-img command line over unchanged; the one addition is qcow2's ``compression``,
which stands for qemu-img's ``-c`` flag plus ``compression_type`` so that "compressed
with zstd" is a single, checkable setting. Every option is validated here, before
any work, so a typo fails in milliseconds with the list of what is allowed instead
of after a long conversion.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import UsageError
from .sizes import parse_size

__all__ = ["FORMATS", "Format", "Option", "get_format", "parse_option_pairs", "resolve_options",
           "writable_format"]

_BOOL_VALUES = ("on", "off")


@dataclass(frozen=True)
class Option:
    """One ``-o`` option: its allowed values (``choices``) or a value ``kind``, and its default."""

    name: str
    help: str
    choices: tuple[str, ...] = ()
    kind: str = "choice"  # choice | bool | size | int
    default: str | None = None

    def check(self, fmt: str, value: str) -> str:
        """Return the canonical value or raise UsageError naming the option and what it accepts."""
        if self.kind == "bool":
            lowered = value.lower()
            aliases = {"true": "on", "yes": "on", "1": "on", "false": "off", "no": "off", "0": "off"}
            lowered = aliases.get(lowered, lowered)
            if lowered in _BOOL_VALUES:
                return lowered
            raise UsageError(f"invalid value {value!r} for {fmt} option {self.name} (allowed: on, off)")
        if self.kind == "size":
            return str(parse_size(value).amount)
        if self.kind == "int":
            if re.fullmatch(r"\d+", value):
                return value
            raise UsageError(f"invalid value {value!r} for {fmt} option {self.name} (a whole number)")
        for choice in self.choices:
            if value.lower() == choice.lower():
                return choice
        raise UsageError(f"invalid value {value!r} for {fmt} option {self.name} "
                         f"(allowed: {', '.join(self.choices)})")


@dataclass(frozen=True)
class Format:
    """A disk format qemu-img can write (or, for ``qed``, only read).

    ``fixed_when`` lists option values that make the file preallocated (the full
    virtual size on disk); ``always_full`` marks raw. Both feed the free-space
    estimate. ``checkable`` says whether ``qemu-img check`` understands the format.
    """

    name: str
    extension: str
    description: str
    options: tuple[Option, ...] = ()
    aliases: tuple[str, ...] = ()
    checkable: bool = False
    writable: bool = True
    refusal: str = ""
    always_full: bool = False
    fixed_when: tuple[tuple[str, str], ...] = field(default=())

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)

    def defaults(self) -> dict[str, str]:
        return {o.name: o.default for o in self.options if o.default is not None}

    def is_fixed(self, options: Mapping[str, str]) -> bool:
        """Whether the written file takes the whole virtual size (raw, fixed VHD, static VDI, ...)."""
        return self.always_full or any(options.get(k) == v for k, v in self.fixed_when)


_QCOW2 = Format(
    "qcow2", ".qcow2", "QEMU copy-on-write v2/v3: sparse, snapshots, optional zlib/zstd compression",
    options=(
        Option("compat", "0.10 for qemu < 1.1 and old clouds, 1.1 (v3) otherwise", ("0.10", "1.1"),
               default="1.1"),
        Option("compression", "compress clusters (qemu-img convert -c) with zlib or zstd",
               ("off", "zlib", "zstd"), default="off"),
        Option("cluster_size", "cluster size, a power of two from 512 to 2M (default 64K)", kind="size"),
        Option("preallocation", "allocate metadata or data up front", ("off", "metadata", "falloc", "full")),
        Option("lazy_refcounts", "postpone refcount updates (compat 1.1 only)", kind="bool"),
    ),
    checkable=True,
    fixed_when=(("preallocation", "falloc"), ("preallocation", "full")),
)

FORMATS: Mapping[str, Format] = {f.name: f for f in (
    _QCOW2,
    Format("raw", ".raw", "plain bytes: the disk as the guest sees it (sparse where zero)",
           aliases=("img",), always_full=True),
    Format("vpc", ".vhd", "Microsoft VHD (Virtual PC / Hyper-V gen 1 / Azure)",
           options=(
               Option("subformat", "dynamic (sparse) or fixed (preallocated; Azure)", ("dynamic", "fixed"),
                      default="dynamic"),
               Option("force_size", "keep the exact virtual size instead of rounding to CHS geometry",
                      kind="bool", default="on"),
           ),
           aliases=("vhd",), fixed_when=(("subformat", "fixed"),)),
    Format("vhdx", ".vhdx", "Microsoft VHDX (Hyper-V gen 2)",
           options=(
               Option("subformat", "dynamic or fixed", ("dynamic", "fixed"), default="dynamic"),
               Option("block_size", "payload block size, 1M to 256M (0 = automatic)", kind="size"),
               Option("log_size", "log size, at least 1M", kind="size"),
           ),
           checkable=True, fixed_when=(("subformat", "fixed"),)),
    Format("vmdk", ".vmdk", "VMware VMDK, single-file subformats",
           options=(
               Option("subformat", "monolithicSparse (hosted products) or streamOptimized (OVA, ESXi import, "
                      "AWS)", ("monolithicSparse", "streamOptimized"), default="monolithicSparse"),
               Option("adapter_type", "virtual disk controller recorded in the descriptor",
                      ("ide", "lsilogic", "buslogic", "legacyESX")),
               Option("hwversion", "VMware virtual hardware version recorded in the descriptor", kind="int"),
           ),
           checkable=True),
    Format("vdi", ".vdi", "VirtualBox VDI",
           options=(Option("static", "on: preallocated (static), off: dynamically allocated", kind="bool",
                           default="off"),),
           checkable=True, fixed_when=(("static", "on"),)),
    Format("qed", ".qed", "QEMU enhanced disk (read only)", checkable=True, writable=False,
           refusal="qed is deprecated and unmaintained; write qcow2 instead"),
)}


def get_format(name: str) -> Format:
    """Look a format up by name or alias (``vhd`` is ``vpc``); UsageError listing the known ones."""
    key = name.lower()
    for fmt in FORMATS.values():
        if key == fmt.name or key in fmt.aliases:
            return fmt
    raise UsageError(f"unknown format {name!r} (known: {', '.join(FORMATS)})")


def writable_format(name: str) -> Format:
    """Like :func:`get_format`, but refuse formats imgsmith reads and will not write."""
    fmt = get_format(name)
    if not fmt.writable:
        raise UsageError(f"cannot write {fmt.name}: {fmt.refusal}")
    return fmt


def _cross_checks(fmt: Format, opts: Mapping[str, str]) -> None:
    if fmt.name == "qcow2":
        if opts.get("compression") == "zstd" and opts.get("compat") == "0.10":
            raise UsageError("qcow2 compression=zstd needs compat=1.1 (compat 0.10 readers know only zlib)")
        if opts.get("compression", "off") != "off" and opts.get("preallocation", "off") != "off":
            raise UsageError("qcow2: a compressed image cannot be preallocated "
                             "(drop compression or preallocation)")
        if opts.get("lazy_refcounts") == "on" and opts.get("compat") == "0.10":
            raise UsageError("qcow2 lazy_refcounts=on needs compat=1.1")
    if fmt.name == "vpc" and opts.get("subformat") == "fixed" and opts.get("force_size") == "off":
        raise UsageError("vpc: subformat=fixed with force_size=off would change the virtual size; "
                         "leave force_size on")


def resolve_options(fmt: Format, given: Mapping[str, str]) -> dict[str, str]:
    """Defaults merged with *given*, every name and value checked against the table.

    An unknown option fails naming it and the options the format does take.
    """
    opts = fmt.defaults()
    allowed = ", ".join(o.name for o in fmt.options) or "none"
    for name, value in given.items():
        opt = fmt.option(name)
        if opt is None:
            raise UsageError(f"unknown option {name!r} for format {fmt.name} (allowed: {allowed})")
        opts[name] = opt.check(fmt.name, value)
    _cross_checks(fmt, opts)
    return opts


def parse_option_pairs(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["a=b", "c=d,e=f"]`` -> ``{"a": "b", "c": "d", "e": "f"}`` (qemu-img's comma lists work too)."""
    out: dict[str, str] = {}
    for pair in pairs:
        for item in pair.split(","):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"invalid option {item!r}: expected KEY=VALUE")
            out[key.strip()] = value.strip()
    return out
