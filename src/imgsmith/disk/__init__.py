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

from typing import TYPE_CHECKING

from ..host.lazy import lazy_exports

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

__getattr__ = lazy_exports(__name__, _HOME)
