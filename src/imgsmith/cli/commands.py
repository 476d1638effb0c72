"""The sub-commands, in the order ``imgsmith --help`` shows them, with their one-line summaries.

A command's module is imported only when that command runs (:func:`register_all`): importing all
fourteen, with the libraries behind them (the cloud rules, the converters, the remote cache's
crypto), cost every ``imgsmith`` start about 0.2 s, which is half of an up-to-date build. The
others get a parser with their summary only, so ``imgsmith --help`` and "invalid choice" still
list every command. The summaries live here, once; each module's ``register`` uses them.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from typing import Any

__all__ = ["COMMANDS", "SUMMARIES", "chosen", "register_all"]

COMMANDS: tuple[tuple[str, str], ...] = (
    ("build", "build images from a definition file (layers cached, outputs in parallel)"),
    ("plan", "list the build jobs of definitions and their matrices (for CI and Kubernetes)"),
    ("customize", "customize a disk image in place, like virt-customize, but all-or-nothing"),
    ("sysprep", "reset a disk image so clones can be made, like virt-sysprep, but all-or-nothing"),
    ("convert", "convert a disk image to other formats or cloud presets"),
    ("info", "show a disk image's format, sizes, backing chain and snapshots"),
    ("resize", "grow a disk image and its last partition and filesystem"),
    ("check", "check an image against each cloud's import rules (read-only)"),
    ("test", "boot an image under qemu and check it over SSH (the image is not modified)"),
    ("publish", "upload a build's outputs to Glance, S3, an OCI registry, AWS, Alibaba Cloud or Tencent Cloud"),
    ("bootstrap", "build a bootable cloud image from packages (Debian/Ubuntu, cached)"),
    ("schema", "print the JSON Schema of definition files (for editors)"),
    ("cache", "list, verify or prune the layer cache (local and remote); make signing keys"),
    ("doctor", "check the host: tool versions, accelerator, appliance launch time"),
)
"""(name, summary); each command's module is ``imgsmith.cli.NAME``."""

SUMMARIES: dict[str, str] = dict(COMMANDS)


def chosen(argv: Sequence[str]) -> str | None:
    """The command *argv* names, or None: the first word that is not an option.

    The top-level options (``--debug``, ``--version``, ``--help``) take no value, so the first
    non-option word is the command, as argparse will see it.
    """
    for word in argv:
        if not word.startswith("-"):
            return word if word in SUMMARIES else None
    return None


def register_all(sub: argparse._SubParsersAction[Any], argv: Sequence[str] | None) -> None:
    """Add every command; the full parser for the one *argv* names (all of them when *argv* is None)."""
    wanted = chosen(argv) if argv is not None else None
    for name, summary in COMMANDS:
        if argv is None or name == wanted:
            importlib.import_module(f"{__package__}.{name}").register(sub)
        else:
            sub.add_parser(name, help=summary, add_help=False)
