"""Disk images on the host: qemu-img wrapper, format and preset tables, convert, info.

Nothing here launches the appliance: resizing (which grows the partition and filesystem
inside the guest) is :mod:`imgsmith.guest.resize`, inspection :mod:`imgsmith.guest.osinfo`.

The qemu-img wrapper is :mod:`imgsmith.disk.qemuimg` (``qemuimg.info``,
``qemuimg.convert``, ...); it is not re-exported here so that ``imgsmith.disk.convert``
stays the module of that name. Library code only:
progress is reported through callbacks and messages through the ``imgsmith.disk``
logger; nothing here prints.
"""

from __future__ import annotations

from .convert import ConvertResult, Plan, SourceImage, Target, convert_many, convert_to, make_target, open_source
from .formats import FORMATS, Format, get_format, resolve_options
from .presets import PRESETS, Layout, Preset, get_preset
from .qemuimg import ImageCheck, ImageInfo
from .sizes import SizeSpec, format_size, parse_size

__all__ = [
    "FORMATS",
    "PRESETS",
    "ConvertResult",
    "Format",
    "ImageCheck",
    "ImageInfo",
    "Layout",
    "Plan",
    "Preset",
    "SizeSpec",
    "SourceImage",
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
