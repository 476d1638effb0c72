"""`imgsmith sysprep`: virt-sysprep's operations and options, applied transactionally."""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..ops.base import ParseContext
from ..ops.cmdline import add_operation_arguments, parse_operations
from ..ops.commands import Script
from ..sysprep import (
    SYSPREP_OPERATIONS,
    OperationReport,
    SysprepOptions,
    check_options,
    list_operations,
    resolve_flags,
    sysprep_disk,
)
from ..transaction import DiskResult
from .commands import SUMMARIES
from .customize import add_session_arguments, session_from, settings_from
from .render import Progress, print_json

EPILOG = """\
Without --operations/--enable the default set runs (marked * by --list-operations).
List syntax: NAME adds, -NAME removes, 'defaults' and 'all' are the two sets; several
flags accumulate, the first starting from an empty selection:
  --operations defaults,-ssh-userdir        everything by default except removing ~/.ssh
  --operations firewall-rules,defaults,-tmp-files
Operations run sorted by name, 'customize' (every customize option below) last, then
fs-uuids/lvm-uuids with the guest unmounted. The disk changes only if all succeed.

The default ssh-userdir removes /root/.ssh and /home/*/.ssh, including keys an earlier
`imgsmith customize --ssh-inject` put there (a warning says so); --ssh-inject given to
this command survives, because customize runs last.

examples:
  imgsmith sysprep -a centos7.qcow2
  imgsmith sysprep -a disk.qcow2 --operations defaults,-ssh-userdir --root-password random
  imgsmith sysprep -a disk.img --format raw --enable ssh-hostkeys,machine-id --dry-run -v
"""


class _SelectionAction(argparse.Action):
    """Append ``(flag, list)`` to ``namespace.selection`` so --operations and --enable keep their order."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        flag = "--enable" if option_string == "--enable" else "--operations"
        namespace.selection = [*(getattr(namespace, "selection", None) or []), (flag, str(values))]


class _ListAction(argparse.Action):
    """--list-operations prints and exits at once, so it needs no -a (like --version)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        print("\n".join(list_operations()))
        parser.exit(0)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sysprep", help=SUMMARIES["sysprep"],
        description="Remove what makes a guest one particular machine (SSH host keys, machine-id, logs, "
                    "MAC-bound network config, leases, histories...) with virt-sysprep's operations, names "
                    "and defaults, then apply any customize options.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_session_arguments(p)
    group = p.add_argument_group("sysprep operations")
    group.add_argument("--operations", "--operation", dest="selection", action=_SelectionAction, metavar="LIST",
                       help="operations to run: NAME, -NAME, defaults, all, comma-separated; repeatable")
    group.add_argument("--enable", dest="selection", action=_SelectionAction, metavar="LIST",
                       help="same as --operations (virt-sysprep's older spelling)")
    group.add_argument("--list-operations", action=_ListAction, nargs=0,
                       help="list the operations ('*' marks the default set) and exit")
    group.add_argument("--remove-user-accounts", action="append", default=[], metavar="USERS",
                       help="user-account: remove only these users (comma-separated; repeatable)")
    group.add_argument("--keep-user-accounts", action="append", default=[], metavar="USERS",
                       help="user-account: never remove these users (comma-separated; repeatable)")
    group.add_argument("--script", dest="scripts", action="append", default=[], metavar="SCRIPT",
                       help="script: run this host program with its current directory at the guest's root "
                            "(FUSE; see --scriptdir); repeatable")
    add_operation_arguments(p, exclude=("script",))
    p.set_defaults(func=run, selection=[])
    _accept_dash_lists(p)


def _accept_dash_lists(p: argparse.ArgumentParser) -> None:
    """Let ``--operations -ssh-userdir`` (a list starting with a removal) through, as virt-sysprep does.

    argparse reads any word starting with "-" as an option (``-all`` even as ``-a ll``);
    a word that is "-" + a known list item is made a value instead, while real options
    (-a, -n, -qv...) keep working. ``_parse_optional`` is private API, hence the guard.
    """
    original = getattr(p, "_parse_optional", None)
    if original is None:  # pragma: no cover - a future argparse
        return
    items = "|".join(re.escape(n) for n in sorted([*SYSPREP_OPERATIONS, "all", "defaults"], key=len, reverse=True))
    removal = re.compile(rf"^-(?:{items})(?:,.*)?$")

    def parse_optional(arg: str) -> Any:
        return None if removal.match(arg) else original(arg)

    p._parse_optional = parse_optional  # type: ignore[method-assign,assignment]


def _users(values: list[str], flag: str) -> frozenset[str]:
    from ..errors import UsageError

    users: set[str] = set()
    for value in values:
        for user in value.split(","):
            if not user.strip():
                raise UsageError(f"{flag}: empty user name in '{value}'")
            users.add(user.strip())
    return frozenset(users)


def options_from(args: argparse.Namespace, ctx: ParseContext) -> SysprepOptions:
    """The operation-specific options, each value checked now (scripts must exist and be executable)."""
    scripts = tuple(Script.parse(s, ctx).script for s in args.scripts)
    return SysprepOptions(remove_users=_users(args.remove_user_accounts, "--remove-user-accounts"),
                          keep_users=_users(args.keep_user_accounts, "--keep-user-accounts"),
                          scripts=scripts)


def _render(args: argparse.Namespace, progress: Progress, result: DiskResult[OperationReport]) -> None:
    if args.json:
        data = dataclasses.asdict(result)
        data["os"] = dataclasses.asdict(result.os) if result.os else None
        print_json(data)
        return
    if args.verbose:
        for op in result.operations:
            for path in op.changed:
                progress.message(f"  {op.name}: {path}")
    if not args.quiet:
        touched = sum(1 for op in result.operations if op.changed)
        verb = "would change" if args.dry_run else "changed"
        progress.message(f"Finished: {len(result.operations)} operation(s) run, {touched} {verb} something in "
                         f"{args.disk} ({result.os.describe() if result.os else '?'}) in {result.seconds:.1f} s, "
                         + ("backend chroot" if result.backend == "chroot" else f"accelerator {result.accelerator}")
                         + (" — dry run, nothing committed" if args.dry_run else ""))


def run(args: argparse.Namespace) -> int:
    ctx = ParseContext(base_dir=Path.cwd())
    selected = resolve_flags(args.selection)
    customize_ops = parse_operations(args.ops, ctx)
    options = options_from(args, ctx)
    check_options(selected, customize_ops, options)
    progress = Progress(quiet=args.quiet or args.json)
    result = sysprep_disk(args.disk, [",".join(selected)], customize_ops, options=options, fmt=args.format,
                          settings=settings_from(args), session=session_from(args), message=progress.message,
                          warn=progress.warn, output=progress.output_fn(args.json))
    _render(args, progress, result)
    return 0
