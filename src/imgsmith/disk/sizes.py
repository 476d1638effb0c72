"""Disk sizes as people write them (``20G``, ``512M``, ``+2G``, ``10737418240``) and as we print them.

Suffixes are binary multiples, as in qemu-img: ``G`` means GiB. ``GB`` and ``GiB``
are accepted as the same thing, because image tools never mean 10^9 and a user who
types ``20GB`` expects the disk qemu-img would give them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UsageError

__all__ = ["GiB", "KiB", "MiB", "SizeSpec", "TiB", "format_size", "parse_size", "round_up"]

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

_UNITS = {"": 1, "B": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB, "P": 1 << 50, "E": 1 << 60}
_SIZE_RE = re.compile(r"^\s*(?P<sign>\+?)(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>[bkmgtpeBKMGTPE]?)(?:i?[bB])?\s*$")


@dataclass(frozen=True)
class SizeSpec:
    """A parsed size: ``relative`` when written ``+N`` (grow by N), else the absolute size."""

    amount: int
    relative: bool = False

    def apply(self, current: int) -> int:
        """The absolute size this spec asks for, given the *current* size."""
        return current + self.amount if self.relative else self.amount

    def __str__(self) -> str:
        return ("+" if self.relative else "") + format_size(self.amount)


def parse_size(text: str) -> SizeSpec:
    """Parse ``20G``, ``512M``, ``1.5G``, ``+2G`` or a plain byte count; UsageError otherwise.

    Fractions are allowed but must come out as whole bytes (``1.5G`` yes, ``0.3K`` no),
    so a size never silently changes by rounding.
    """
    m = _SIZE_RE.match(text)
    if not m:
        raise UsageError(f"invalid size {text!r} (examples: 20G, 512M, +2G, 10737418240)")
    unit = _UNITS[m["unit"].upper()]
    num = m["num"]
    if "." in num:
        whole, frac = num.split(".")
        numerator = (int(whole) * 10 ** len(frac) + int(frac)) * unit
        amount, rest = divmod(numerator, 10 ** len(frac))
        if rest:
            raise UsageError(f"invalid size {text!r}: not a whole number of bytes")
    else:
        amount = int(num) * unit
    if amount <= 0:
        raise UsageError(f"invalid size {text!r}: must be greater than zero")
    return SizeSpec(amount, relative=bool(m["sign"]))


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of *multiple* that is >= *value*."""
    return -(-value // multiple) * multiple


def format_size(n: int) -> str:
    """Human form with binary units: ``64 MiB``, ``1.5 GiB``, ``512 B``; exact when it can be."""
    for unit, name in ((TiB, "TiB"), (GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if abs(n) >= unit:
            value = n / unit
            if n % unit == 0:
                return f"{n // unit} {name}"
            # Inexact values keep a decimal, so 65 MiB + 1536 B never reads as exactly 65 MiB.
            text = f"{value:.2f}".rstrip("0")
            return (text + "0" if text.endswith(".") else text) + f" {name}"
    return f"{n} B"
