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

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_HOME = {"ConvertResult": "convert", "Plan": "convert", "SourceImage": "convert", "Target": "convert",
         "convert_many": "convert", "convert_to": "convert", "make_target": "convert", "open_source": "convert",
         "FORMATS": "formats", "Format": "formats", "get_format": "formats", "resolve_options": "formats",
         "PRESETS": "presets", "Layout": "presets", "Preset": "presets", "get_preset": "presets",
         "ImageCheck": "qemuimg", "ImageInfo": "qemuimg",
         "SizeSpec": "sizes", "format_size": "sizes", "parse_size": "sizes"}


def __getattr__(name: str) -> Any:
    """Load a re-exported name's module on first use (PEP 562).

    Every command starts by importing something from this package (a size parser, the preset
    table), and the converters behind ``convert`` pull in tar, XML and ctypes: importing them
    eagerly cost each ``imgsmith`` start a tenth of a second that an up-to-date build never uses.
    """
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
