"""Customize operations: importing this package fills :data:`REGISTRY` with every operation."""

from . import accounts, commands, files, firstboot, packages, repos, system
from .base import REGISTRY, ApplyContext, Operation, ParseContext, Phase, Settings

__all__ = ["REGISTRY", "ApplyContext", "Operation", "ParseContext", "Phase", "Settings"]

_MODULES = (accounts, commands, files, firstboot, packages, repos, system)
