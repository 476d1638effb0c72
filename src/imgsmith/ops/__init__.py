"""Customize operations: importing this package fills :data:`CUSTOMIZE_OPERATIONS` with every operation."""

from . import accounts, cloudfix, commands, files, firstboot, packages, repos, system
from .base import CUSTOMIZE_OPERATIONS, ApplyContext, CustomizePhase, Operation, ParseContext, Settings

__all__ = ["CUSTOMIZE_OPERATIONS", "ApplyContext", "CustomizePhase", "Operation", "ParseContext", "Settings"]

_MODULES = (accounts, cloudfix, commands, files, firstboot, packages, repos, system)
