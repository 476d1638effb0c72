"""`imgsmith customize`: virt-customize's options, applied transactionally."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..clouds import ready as _cloud_ready  # noqa: F401 -- registers `cloud-ready` in the registry
from ..customize import customize_disk
from ..guest.backend import BACKENDS
from ..guest.session import SessionOptions
from ..ops.base import ParseContext, Settings
from ..ops.cmdline import add_operation_arguments, parse_operations
from ..ops.crypto import HASH_PREFIXES
from .commands import SUMMARIES
from .render import Progress, print_json

EPILOG = """\
Operations run in the order given (passwords last, SELinux relabel at the very end).
The disk is changed only if every operation succeeds: work happens in a temporary
overlay that is committed at the end, so a failure leaves DISK byte-for-byte intact.

examples:
  imgsmith customize -a centos7.qcow2 --root-password password:secret \\
      --timezone Asia/Shanghai --install cloud-utils-growpart \\
      --ssh-inject root:file:admin.pub --run-command 'systemctl enable qemu-guest-agent'
  imgsmith customize -a disk.img --edit '/etc/ssh/sshd_config:s/^#?PermitRootLogin.*/PermitRootLogin no/'
  imgsmith customize -a disk.qcow2 --commands-from-file steps.txt --dry-run
"""


def add_session_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by customize and sysprep (the disk, appliance and output controls)."""
    p.add_argument("-a", "--add", dest="disk", type=Path, required=True, metavar="DISK",
                   help="the disk image to modify (in place, transactionally)")
    p.add_argument("--format", default=None, metavar="FORMAT",
                   help="the disk's format (raw, qcow2, …); default: detected by qemu-img, never by the guest")
    p.add_argument("-n", "--dry-run", "--dryrun", action="store_true",
                   help="apply everything to a throw-away overlay and discard it")
    p.add_argument("--network", dest="network", action="store_true", default=True,
                   help="enable the appliance network (default; needed for --install/--update)")
    p.add_argument("--no-network", dest="network", action="store_false", help="disable the appliance network")
    p.add_argument("--root", default="single", metavar="ROOT",
                   help="which OS when the disk holds several: a root device, 'first', or 'single' (default)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="appliance: libguestfs VM (safe for any image); chroot: mount on the host and run the "
                        "guest's commands in a bubblewrap sandbox (root only, 10-50x faster without KVM); "
                        "auto (default): chroot only as root with --trust-image, else the appliance")
    p.add_argument("--trust-image", action="store_true",
                   help="the image is yours or from a verified source: let --backend auto use chroot")
    p.add_argument("-m", "--memsize", type=int, default=None, metavar="MB", help="appliance memory in MiB")
    p.add_argument("--smp", type=int, default=None, metavar="N", help="accepted for compatibility; ignored")
    p.add_argument("--password-crypto", choices=sorted(HASH_PREFIXES), default=None,
                   help="password hash to use (default: what the guest's distro uses, e.g. sha512 on "
                        "CentOS 7, yescrypt on Debian 12)")
    p.add_argument("--no-selinux-relabel", dest="selinux_relabel", action="store_false", default=None,
                   help="do not relabel SELinux guests (relabelling is automatic when the guest uses SELinux)")
    p.add_argument("--scriptdir", type=Path, default=None, metavar="DIR",
                   help="host directory where --script sees the guest's filesystem (default: a temporary one)")
    p.add_argument("--json", action="store_true", help="print a machine-readable result on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    p.add_argument("-v", "--verbose", action="store_true", help="say more (accelerator, each step)")
    p.add_argument("-x", dest="trace", action="store_true", help="trace libguestfs calls and host commands")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "customize", help=SUMMARIES["customize"],
        description="Customize a VM disk image with virt-customize's options and semantics. "
                    "Every option below is one operation.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_session_arguments(p)
    add_operation_arguments(p)
    p.set_defaults(func=run)


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(password_crypto=args.password_crypto, selinux_relabel=args.selinux_relabel,
                    dry_run=args.dry_run, scriptdir=args.scriptdir)


def session_from(args: argparse.Namespace) -> SessionOptions:
    return SessionOptions(network=args.network, memsize=args.memsize, root=args.root, trace=args.trace,
                          backend=args.backend, trusted=args.trust_image)


def run(args: argparse.Namespace) -> int:
    ops = parse_operations(args.ops, ParseContext(base_dir=Path.cwd()))
    progress = Progress(quiet=args.quiet or args.json)
    result = customize_disk(args.disk, ops, fmt=args.format, settings=settings_from(args),
                            session=session_from(args), message=progress.message, warn=progress.warn,
                            output=progress.output_fn(args.json))
    if args.json:
        data = dataclasses.asdict(result)
        data["os"] = dataclasses.asdict(result.os) if result.os else None
        print_json(data)
    elif not args.quiet:
        verb = "would change" if args.dry_run else "changed"
        progress.message(f"Finished: {len(result.operations)} operation(s) {verb} {args.disk} "
                         f"({result.os.describe() if result.os else '?'}) in {result.seconds:.1f} s, "
                         + ("backend chroot" if result.backend == "chroot" else
                            f"accelerator {result.accelerator}") + (" — dry run, nothing committed"
                                                                if args.dry_run else ""))
    return 0


