"""Disk images on the host: qemu-img wrapper, format and preset tables, convert, info, resize.

The qemu-img wrapper is :mod:`imgsmith.disk.qemuimg` (``qemuimg.info``,
``qemuimg.convert``, ...); it is not re-exported here so that ``imgsmith.disk.convert``
and ``imgsmith.disk.resize`` stay the modules of those names. Library code only:
progress is reported through callbacks and messages through the ``imgsmith.disk``
logger; nothing here prints.
"""

from __future__ import annotations

from .convert import ConvertResult, Plan, Source, Target, convert_many, convert_to, make_target, open_source
from .formats import FORMATS, Format, get_format, resolve_options
from .presets import PRESETS, Layout, Preset, get_preset
from .qemuimg import CheckResult, ImageInfo
from .sizes import SizeSpec, format_size, parse_size

__all__ = [
    "FORMATS",
    "PRESETS",
    "CheckResult",
    "ConvertResult",
    "Format",
    "ImageInfo",
    "Layout",
    "Plan",
    "Preset",
    "SizeSpec",
    "Source",
    "Target",
    "convert_many",
    "convert_to",
    "format_size",
    "get_format",
    "get_preset",
    "make_target",
    "open_source",
    "parse_size",
    "resolve_options",
]
