"""`imgsmith test IMAGE`: boot an image on a throw-away overlay and check it over SSH."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .commands import SUMMARIES

if TYPE_CHECKING:  # the boot modules pull in paramiko and pycdlib: imported when the command runs
    from ..boot.test import BootResult, BootTestError

__all__ = ["register", "run"]

_CLOUDS = ("nocloud", "openstack", "tencent", "aws", "aliyun", "gcp")
"""The keys of :data:`imgsmith.boot.datasource.DATASOURCES` (a test keeps them equal; not imported
here so that ``imgsmith --help`` does not load the boot modules)."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "test", help=SUMMARIES["test"],
        description="Boot IMAGE on a throw-away overlay with a cloud-init NoCloud seed (or, with --cloud, that "
                    "cloud's own datasource emulated locally), watch the serial console through the boot "
                    "stages, log in over SSH with a throw-away key, run the checks, and power off. The guest's "
                    "network reaches nothing but the forwarded SSH port and the emulated metadata service. "
                    "Exit status 0 when the boot and every check passed, 1 otherwise.",
        epilog="Checks run as the test user 'imgsmith' (passwordless sudo). Examples:\n"
               "  imgsmith test disk.qcow2 --check 'timedatectl show -p Timezone --value=Asia/Shanghai'\n"
               "  imgsmith test disk.qcow2 --cloud aws    # cloud-init must use Ec2 (IMDSv2) and apply it",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", type=Path, metavar="IMAGE", help="disk image to boot")
    p.add_argument("--format", dest="fmt", metavar="F", help="image format (default: probed; give it for raw)")
    p.add_argument("--check", action="append", default=[], metavar="'CMD=EXPECTED'",
                   help="run CMD in the guest; pass when it exits 0 and its stripped stdout equals EXPECTED "
                        "(split at the last '='; without '=' only the exit status counts); repeatable")
    p.add_argument("--cloud", metavar="CLOUD", choices=_CLOUDS,
                   help=f"boot on this cloud's datasource, emulated locally: {', '.join(_CLOUDS)} "
                        "(config drive for openstack/tencent, metadata service for aws/aliyun/gcp); the verdict "
                        "says which datasource cloud-init used and whether its hostname, SSH key and "
                        "user-data took effect (default: a NoCloud seed)")
    p.add_argument("--firmware", action="append", default=[], choices=("bios", "uefi", "secure-boot"),
                   help="boot with this firmware: bios (SeaBIOS), uefi (OVMF, or AAVMF for arm64), secure-boot "
                        "(OVMF with Microsoft's keys enrolled; the guest must report Secure Boot on); "
                        "repeatable; default: every firmware the image's layout supports, one boot each")
    p.add_argument("--timeout-scale", type=float, default=1.0, metavar="X",
                   help="multiply every stage deadline by X (slow or loaded hosts)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="the guest must finish booting within SECONDS; the other deadlines scale with it "
                        "(default: 180 s under KVM, 900 s under TCG)")
    p.add_argument("--memory", type=int, default=2048, metavar="MIB", help="guest memory (default 2048)")
    p.add_argument("--console-log", type=Path, metavar="FILE", help="keep a copy of the serial console here")
    p.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    p.add_argument("-v", "--verbose", action="store_true", help="log what is being done")
    p.set_defaults(func=run)


class _Status:
    """A rich live status line on a terminal; plain timestamped lines otherwise (or nothing with --json)."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._status: Any = None
        self._console: Any = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            self._console = Console(stderr=True, log_path=False)

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        if self._status is not None:
            from rich.markup import escape
            from rich.text import Text

            # Guest text may contain [brackets]: never interpret it as rich markup.
            self._console.log(Text(message))
            self._status.update(f"booting: {escape(message.split(' (', 1)[0])}")
        else:
            print(f"imgsmith: {message}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def shown(self) -> Iterator[None]:
        if self._console is None:
            yield
            return
        with self._console.status("starting qemu") as status:
            self._status = status
            try:
                yield
            finally:
                self._status = None


def _render(result: BootResult) -> None:
    print(f"image        {result.image} ({result.format})")
    print(f"accelerator  {result.accelerator}")
    if result.boot is not None:
        b = result.boot
        sb = "" if b.guest_secure_boot is None else f", Secure Boot {'on' if b.guest_secure_boot else 'off'}"
        said = "UEFI" if b.guest_uefi else "BIOS" if b.guest_uefi is not None else "?"
        print(f"{'PASS' if b.passed else 'FAIL'}  firmware {b.firmware}: the guest ({b.guest_arch}) reports {said}{sb}")
        for finding in b.findings:
            print(f"FAIL  {finding}")
    for stage, at in result.stages.items():
        print(f"  {stage:<17} {'-' if at is None else f'{at:7.1f} s'}")
    if result.shutdown_seconds is not None:
        print(f"  {'shutdown':<17} {result.shutdown_seconds:7.1f} s" + ("" if result.clean_shutdown else " (killed)"))
    for c in result.checks:
        print(f"{'PASS' if c.passed else 'FAIL'}  {c.check.run}" + ("" if c.passed else f"  -- {c.reason}"))
        if not c.passed and c.stderr.strip():
            print("      stderr: " + c.stderr.strip().splitlines()[-1][:200])
    ds = result.datasource
    if ds is not None:
        print(f"datasource   {ds.datasource_detail or '-'} (cloud-id {ds.cloud_id or '-'}; "
              f"expected {' or '.join(ds.expected_datasource)}, cloud-id {ds.expected_cloud_id})")
        print(f"{'PASS' if ds.hostname == ds.expected_hostname else 'FAIL'}  hostname {ds.hostname}")
        print(f"{'PASS' if ds.instance_key_login else 'FAIL'}  SSH login with the datasource's key"
              + (f" as {ds.instance_key_login}" if ds.instance_key_login else ""))
        print(f"{'PASS' if ds.user_data_ran else 'FAIL'}  user-data ran")
        if ds.metadata_requests is not None:
            print(f"      metadata service: {ds.metadata_requests['requests']} requests, "
                  f"{ds.metadata_requests['token_puts']} token PUTs")
        for finding in ds.findings:
            print(f"FAIL  {finding}")
    for note in result.notes:
        print(f"note: {note}")
    print("boot test passed" if result.passed else "boot test FAILED")


def _render_failure(exc: BootTestError) -> None:
    print(f"boot test failed at stage '{exc.stage}': {exc.reason}", file=sys.stderr)
    for stage, at in exc.stages.items():
        print(f"  {stage:<17} {'-' if at is None else f'{at:7.1f} s'}", file=sys.stderr)
    print("last console lines:", file=sys.stderr)
    for line in exc.console_tail:
        print(f"  | {line}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from ..boot.machines import machines_for
    from ..boot.test import BootTestError, Check, Timeouts, boot_test, choose_accelerator
    from ..disk import qemuimg

    checks = [Check.parse(text) for text in args.check]
    if args.timeout_scale <= 0 or (args.timeout is not None and args.timeout <= 0):
        raise UsageError("--timeout and --timeout-scale must be greater than 0")
    fmt = qemuimg.open_image(args.image, args.fmt).format
    machines = machines_for(args.image, fmt, args.firmware)
    status = _Status(enabled=not args.json)
    results: list[dict[str, Any]] = []
    failed = False
    for machine in machines:
        try:
            with status.shown():
                verdict = choose_accelerator()
                limits = (Timeouts.for_total(verdict.name, args.timeout * args.timeout_scale)
                          if args.timeout is not None else None)
                result = boot_test(args.image, fmt, checks=checks, accelerator=verdict,
                                   timeout_scale=args.timeout_scale, timeouts=limits, memory_mib=args.memory,
                                   progress=status, console_copy=args.console_log, cloud=args.cloud,
                                   machine=machine)
        except BootTestError as exc:
            failed = True
            results.append({"passed": False, "firmware": machine.firmware.value, "stage": exc.stage.value,
                            "reason": exc.reason, "accelerator": exc.accelerator, "stages": exc.stages,
                            "console_tail": exc.console_tail})
            if not args.json:
                _render_failure(exc)
            continue
        failed = failed or not result.passed
        results.append(result.to_dict())
        if not args.json:
            _render(result)
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2, default=str))
    return 1 if failed else 0
