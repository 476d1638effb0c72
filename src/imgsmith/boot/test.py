"""The boot test: does this image boot, run cloud-init, accept SSH and pass its checks?

The image itself is never modified: the guest runs on a throw-away qcow2 overlay.
The steps, in order:

1. overlay + the datasource's drive or metadata service (:mod:`.datasource`:
   NoCloud by default, or a cloud's own emulated locally; fresh instance-id,
   throw-away ed25519 keys) in a temp dir;
2. qemu under the accelerator that works here (KVM when the probe booted a guest,
   else TCG), user network with ``restrict=on``, serial console to a file
   watched by :mod:`.console`;
3. wait for each boot stage against deadlines scaled to the accelerator; a fatal
   console line or an early qemu exit ends the wait at once;
4. on the user-data's marker, SSH in (host key checked against the console), run
   the checks, ask cloud-init which datasource it used and prove that its
   hostname, SSH key and user-data took effect (:mod:`.verdict`), power off
   through the guest, else ACPI over QMP, else kill;
5. remove the overlay and seed, whatever happened.

A boot that does not get through raises :class:`BootTestError` naming the stage
and carrying the console's last lines; a boot that does returns a
:class:`BootResult` whose ``passed`` says whether every check held.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..disk import qemuimg
from ..errors import GuestError, ProcessError, UsageError
from ..host import accel as accel_mod
from ..host.accel import Accelerator
from ..host.files import scratch_dir
from . import seed as seed_mod
from .console import BOOT_STAGES, ConsoleParser, ConsoleState, ConsoleWatcher, Stage
from .datasource import Datasource, Platform, datasource_for
from .firmware import Firmware, UefiFirmware, find_uefi
from .qemu import QEMU, QEMU_AARCH64, QemuConfig, QemuProcess, UserNetwork, free_port, running_qemu
from .ssh import CommandResult, SshSession, ThrowawayKey, connect
from .verdict import DatasourceVerdict, judge, login_user, probe_command, request_summary

__all__ = [
    "ARM64_TCG_FACTOR",
    "BootMachine",
    "BootResult",
    "BootTestError",
    "Check",
    "CheckResult",
    "FirmwareReport",
    "Timeouts",
    "boot_test",
    "choose_accelerator",
    "evaluate",
    "judge_firmware",
    "machine_config",
]

log = logging.getLogger("imgsmith.boot")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Check:
    """A command run over SSH as the test user; passes when its exit status and stripped stdout match."""

    run: str
    expect: str | None = None
    expect_rc: int = 0

    @classmethod
    def parse(cls, text: str) -> Check:
        """``CMD=EXPECTED`` (split at the last ``=``) or just ``CMD`` (must exit 0)."""
        if not text.strip():
            raise UsageError("a check needs a command, e.g. 'uname -s=Linux'")
        command, sep, expected = text.rpartition("=")
        if not sep or not command.strip():
            return cls(text.strip())
        return cls(command.strip(), expected.strip())


@dataclass(frozen=True)
class CheckResult:
    check: Check
    passed: bool
    reason: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float


def evaluate(check: Check, res: CommandResult) -> CheckResult:
    """Judge one command result against its check."""
    got = res.stdout.strip()
    if res.returncode is None:
        reason, ok = res.stderr.strip() or "timed out", False
    elif res.returncode != check.expect_rc:
        reason, ok = f"exit status {res.returncode}, expected {check.expect_rc}", False
    elif check.expect is not None and got != check.expect:
        reason, ok = f"output {got[:200]!r}, expected {check.expect!r}", False
    else:
        reason, ok = "ok", True
    return CheckResult(check, ok, reason, res.returncode, res.stdout, res.stderr, round(res.seconds, 2))


# Deadlines under KVM, in seconds since qemu started; TCG multiplies them by TCG_FACTOR.
# Measured under TCG on a quiet 2-core host: kernel 4 s, login 44 s, cloud-init final 49 s;
# the same boot took 75 s under load, and more than 300 s with four other guests running.
_KVM_DEADLINES: Mapping[Stage, float] = {
    Stage.FIRST_OUTPUT: 30, Stage.KERNEL: 45, Stage.INIT: 75, Stage.LOGIN_PROMPT: 120,
    Stage.CLOUD_INIT_FINAL: 150, Stage.MARKER: 180,
}
TCG_FACTOR = 5.0


@dataclass(frozen=True)
class Timeouts:
    """Stage deadlines (since qemu start), then SSH (after the marker), each check, and shutdown."""

    deadlines: Mapping[Stage, float]
    ssh: float
    check: float
    shutdown: float

    @classmethod
    def for_accelerator(cls, name: str, scale: float = 1.0) -> Timeouts:
        factor = scale * (1.0 if name == "kvm" else TCG_FACTOR)
        return cls({s: d * factor for s, d in _KVM_DEADLINES.items()}, ssh=40 * factor, check=60 * factor,
                   shutdown=30 * factor)

    @classmethod
    def for_total(cls, name: str, seconds: float) -> Timeouts:
        """Deadlines scaled so the guest must finish booting (the marker) within *seconds*.

        This is what a definition's ``test: {timeout: 900}`` means; the SSH login, the
        checks and the shutdown get their proportional share on top.
        """
        if seconds <= 0:
            raise UsageError("a boot test timeout must be greater than 0 seconds")
        base = cls.for_accelerator(name)
        return cls.for_accelerator(name, seconds / base.deadlines[Stage.MARKER])


ARM64_TCG_FACTOR = 2.0
"""arm64 under TCG on an amd64 host, relative to an amd64 TCG boot: see docs/boot.md for the measured figures."""

_QEMU_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}


@dataclass(frozen=True)
class BootMachine:
    """Which machine a boot test starts: the guest architecture and the firmware (SeaBIOS, OVMF, AAVMF)."""

    arch: str = "amd64"
    firmware: Firmware = Firmware.BIOS

    def __post_init__(self) -> None:
        if self.arch not in _QEMU_ARCH:
            raise UsageError(f"cannot boot-test a {self.arch} image (supported: {', '.join(_QEMU_ARCH)})")
        if self.arch != "amd64" and self.firmware is not Firmware.UEFI:
            raise UsageError(f"a {self.arch} image boots with UEFI only, not {self.firmware}")

    @property
    def qemu_arch(self) -> str:
        return _QEMU_ARCH[self.arch]

    @property
    def binary(self) -> str:
        return QEMU_AARCH64 if self.arch == "arm64" else QEMU

    def uefi(self) -> UefiFirmware | None:
        if self.firmware is Firmware.BIOS:
            return None
        return find_uefi(self.qemu_arch, secure_boot=self.firmware is Firmware.SECURE_BOOT)


@dataclass(frozen=True)
class FirmwareReport:
    """How the guest says it booted: UEFI or BIOS (/sys/firmware/efi), and its SecureBoot variable."""

    firmware: str
    guest_arch: str
    guest_uefi: bool | None
    guest_secure_boot: bool | None
    findings: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.findings


# One line the guest prints: "<uname -m> bios", "<uname -m> uefi <SecureBoot byte|none>".
FIRMWARE_PROBE = (
    "m=$(uname -m); if [ -d /sys/firmware/efi ]; then "
    "f=$(ls /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c 2>/dev/null); "
    "if [ -n \"$f\" ]; then echo \"$m uefi $(od -An -tu1 -j4 -N1 \"$f\" | tr -d ' ')\"; "
    "else echo \"$m uefi none\"; fi; else echo \"$m bios\"; fi"
)


def judge_firmware(machine: BootMachine, output: str) -> FirmwareReport:
    """Compare the guest's own report with the firmware it was booted with."""
    words = output.split()
    arch = words[0] if words else "?"
    uefi = None if len(words) < 2 else words[1] == "uefi"
    secure = None if len(words) < 3 or words[2] == "none" else words[2] == "1"
    findings = []
    if arch != machine.qemu_arch:
        findings.append(f"the guest runs {arch}, expected {machine.qemu_arch}")
    if uefi is None:
        findings.append(f"the guest's firmware probe printed {output.strip()[:80]!r}")
    elif uefi != (machine.firmware is not Firmware.BIOS):
        findings.append(f"the guest booted with {'UEFI' if uefi else 'BIOS'}, expected {machine.firmware}")
    want_sb = machine.firmware is Firmware.SECURE_BOOT
    if uefi and bool(secure) != want_sb:
        findings.append(f"the guest reports Secure Boot {'on' if secure else 'off'}, expected "
                        f"{'on' if want_sb else 'off'}")
    return FirmwareReport(machine.firmware.value, arch, uefi, secure, tuple(findings))


class BootTestError(GuestError):
    """The guest did not get through a stage; ``console_tail`` holds its last console lines."""

    def __init__(self, stage: Stage, reason: str, *, console_tail: Sequence[str] = (),
                 stages: Mapping[str, float | None] | None = None, accelerator: str = "") -> None:
        tail = list(console_tail)
        hint = ("last console lines:\n    " + "\n    ".join(tail)) if tail else "the console stayed silent"
        super().__init__(f"boot test failed at stage '{stage}': {reason}", hint=hint)
        self.stage = stage
        self.reason = reason
        self.console_tail = tail
        self.stages = dict(stages or {})
        self.accelerator = accelerator


@dataclass(frozen=True)
class BootResult:
    """What a completed boot showed: stage times (seconds since qemu start) and check verdicts."""

    image: str
    format: str
    accelerator: str
    accelerator_reason: str
    instance_id: str
    stages: dict[str, float | None]
    checks: tuple[CheckResult, ...] = ()
    host_key_verified: bool = False
    clean_shutdown: bool = False
    shutdown_seconds: float | None = None
    total_seconds: float = 0.0
    notes: tuple[str, ...] = field(default=())
    cloud: str = "nocloud"
    datasource: DatasourceVerdict | None = None
    """Which datasource cloud-init used, and whether its hostname, SSH key and user-data took effect."""
    boot: FirmwareReport | None = None
    """The firmware it was booted with and the guest's own report (UEFI, Secure Boot, architecture)."""

    @property
    def passed(self) -> bool:
        return (all(c.passed for c in self.checks) and (self.datasource is None or self.datasource.passed)
                and (self.boot is None or self.boot.passed))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        if self.datasource is not None:
            data["datasource"]["passed"] = self.datasource.passed
        if self.boot is not None:
            data["boot"]["passed"] = self.boot.passed
        return data


def choose_accelerator(detect: Callable[[], Accelerator] = accel_mod.detect) -> Accelerator:
    """KVM when a real guest booted under it here (cached probe), else TCG; IMGSMITH_ACCEL overrides."""
    return detect()


def machine_config(overlay: Path, seed: Path | None, tmp: Path, accelerator: Accelerator, port: int, *,
                   memory_mib: int = 2048, cpus: int = 2, network: UserNetwork = UserNetwork(),
                   smbios: tuple[str, ...] = (), machine: BootMachine = BootMachine()) -> QemuConfig:
    """The qemu machine for one boot test, with its serial log, QMP socket and UEFI variables in *tmp*.

    The UEFI variable store is this boot's own copy of the firmware's template: the guest
    writes boot entries into it, and the template is shared by every boot on the host.
    """
    qmp = tmp / "qmp.sock"
    if len(os.fspath(qmp)) > 100:  # unix socket paths are limited to 108 bytes
        qmp = Path(tempfile.mkdtemp(prefix="imgsmith-qmp-")) / "qmp.sock"
    uefi = machine.uefi()
    uefi_vars = None
    if uefi is not None:
        uefi_vars = tmp / "uefi-vars.fd"
        if not uefi_vars.exists():
            shutil.copyfile(uefi.vars_template, uefi_vars)
    return QemuConfig(disk=overlay, seed=seed, accel=accelerator.qemu_accel, ssh_port=port,
                      serial_log=tmp / "console.log", qmp_socket=qmp, memory_mib=memory_mib, cpus=cpus,
                      network=network, smbios=smbios, binary=machine.binary, arch=machine.qemu_arch,
                      uefi=uefi, uefi_vars=uefi_vars)


def _stage_times(state: ConsoleState, ssh_at: float | None = None) -> dict[str, float | None]:
    times: dict[str, float | None] = {s.value: round(state.reached[s], 1) if s in state.reached else None
                                      for s in BOOT_STAGES}
    times[Stage.SSH_LOGIN.value] = round(ssh_at, 1) if ssh_at is not None else None
    return times


_MISSING = {
    Stage.FIRST_OUTPUT: "no console output within {t:.0f} s (does the image boot with BIOS and a ttyS0 console?)",
    Stage.KERNEL: "no kernel output within {t:.0f} s",
    Stage.INIT: "the init system did not start within {t:.0f} s",
    Stage.LOGIN_PROMPT: "no login prompt within {t:.0f} s",
    Stage.CLOUD_INIT_FINAL: "cloud-init did not reach its final stage within {t:.0f} s",
    Stage.MARKER: "cloud-init did not finish (no {marker!r} on the console) within {t:.0f} s",
}


@dataclass
class _Boot:
    """The moving parts of one boot, for the step functions below."""

    qemu: QemuProcess
    watcher: ConsoleWatcher
    seed: seed_mod.SeedConfig
    key: ThrowawayKey
    timeouts: Timeouts
    accelerator: Accelerator
    say: Progress
    datasource: Datasource
    platform: Platform
    instance_key: ThrowawayKey
    machine: BootMachine

    def fail(self, stage: Stage, reason: str, ssh_at: float | None = None) -> BootTestError:
        state = self.watcher.snapshot()
        return BootTestError(stage, reason, console_tail=state.tail, stages=_stage_times(state, ssh_at),
                             accelerator=self.accelerator.name)


def _wait_for_marker(b: _Boot) -> ConsoleState:
    """Block until the marker shows, or raise naming the first stage that did not come in time."""
    seen: set[Stage] = set()
    while True:
        b.watcher.changed.wait(0.25)
        b.watcher.changed.clear()
        state = b.watcher.snapshot()
        for stage in BOOT_STAGES:
            if stage in state.reached and stage not in seen:
                seen.add(stage)
                b.say(f"{stage.value}: {state.reached[stage]:.1f} s")
        if Stage.MARKER in state.reached:
            return state
        if state.fatal is not None:
            reason, line, _at = state.fatal
            raise b.fail(state.first_missing(), f"{reason}: {line[:160]}")
        elapsed = time.monotonic() - b.qemu.started
        if b.qemu.poll() is not None:
            b.watcher.stop()
            state = b.watcher.snapshot()
            why = ("the guest powered off or rebooted" if b.qemu.poll() == 0 else b.qemu.exit_message())
            raise b.fail(state.first_missing(), f"{why} after {elapsed:.0f} s")
        for stage in BOOT_STAGES:
            limit = b.timeouts.deadlines[stage]
            if not state.has_passed(stage) and elapsed > limit:
                raise b.fail(stage, _MISSING[stage].format(t=limit, marker=b.seed.marker))


def _run_checks(session: SshSession, checks: Sequence[Check], timeout: float, say: Progress) -> list[CheckResult]:
    results = []
    for check in checks:
        result = evaluate(check, session.run(check.run, timeout))
        say(f"check {'passed' if result.passed else 'FAILED'}: {check.run} ({result.reason})")
        results.append(result)
    return results


def _shutdown(b: _Boot, session: SshSession | None) -> tuple[bool, float]:
    """Power off through the guest, else ACPI; kill as the last resort. Returns (clean, seconds)."""
    start = time.monotonic()
    if session is not None:
        session.poweroff()
        session.close()
    if not b.qemu.wait(b.timeouts.shutdown / 2):
        b.qemu.powerdown()
        if not b.qemu.wait(b.timeouts.shutdown / 2):
            log.warning("the guest did not power off within %.0f s; killing qemu", b.timeouts.shutdown)
            b.qemu.kill()
            return False, time.monotonic() - start
    return True, time.monotonic() - start


def _start_qemu(stack: contextlib.ExitStack, make: Callable[[int], QemuConfig], log_path: Path,
                attempts: int = 3) -> QemuProcess:
    """Start qemu (stopped when *stack* closes); a forwarded port taken between probe and bind is
    retried with another port."""
    for attempt in range(attempts):
        with contextlib.ExitStack() as this_try:
            qemu = this_try.enter_context(running_qemu(make(free_port()), log_path))
            try:
                qemu.check_started()
            except ProcessError as exc:
                port_clash = "hostfwd" in exc.stderr.lower() or "host forwarding" in exc.stderr.lower()
                if port_clash and attempt + 1 < attempts:
                    continue
                raise
            stack.enter_context(this_try.pop_all())
            return qemu
    raise AssertionError("unreachable")  # pragma: no cover


def _key_login(b: _Boot, user: str | None, host_keys: frozenset[str]) -> str | None:
    """Log in as *user* with the datasource's instance key; the user on success, None otherwise."""
    if user is None:
        return None
    try:
        session = connect(b.qemu.cfg.ssh_port, b.instance_key, user=user, host_keys=host_keys,
                          deadline=time.monotonic() + b.timeouts.ssh / 2)
    except GuestError as exc:
        b.say(f"login with the datasource's key as {user} failed: {exc.message}")
        return None
    try:
        res = session.run("id -un", b.timeouts.check)
    finally:
        session.close()
    return user if res.returncode == 0 and res.stdout.strip() == user else None


def _datasource_verdict(b: _Boot, session: SshSession, host_keys: frozenset[str]) -> DatasourceVerdict:
    """Ask cloud-init in the guest what it used (:mod:`.verdict`), then log in with the instance key."""
    res = session.run(probe_command(b.instance_key.public), b.timeouts.check)
    try:
        report: dict[str, Any] = json.loads(res.stdout) if res.returncode == 0 else {}
    except ValueError:
        report = {}
    if not report:
        b.say(f"the datasource probe failed: exit {res.returncode}: {res.stderr.strip()[-200:]}")
    user = login_user(report)
    verdict = judge(b.datasource, b.seed, report, key_login=_key_login(b, user, host_keys),
                    requests=request_summary(b.platform.request_log))
    b.say(f"datasource: {verdict.datasource_detail} (cloud-id {verdict.cloud_id}): "
          + ("as expected" if verdict.passed else "; ".join(verdict.findings)))
    return verdict


def _run(b: _Boot, image: Path, fmt: str, checks: Sequence[Check]) -> BootResult:
    """Steps 3-4: wait for the marker, log in, check, power off."""
    state = _wait_for_marker(b)
    deadline = time.monotonic() + b.timeouts.ssh
    try:
        session = connect(b.qemu.cfg.ssh_port, b.key, user=b.seed.user, deadline=deadline,
                          host_keys=state.host_keys)
    except GuestError as exc:
        raise b.fail(Stage.SSH_LOGIN, exc.message) from exc
    ssh_at = time.monotonic() - b.qemu.started
    b.say(f"ssh login: {ssh_at:.1f} s")
    try:
        results = _run_checks(session, checks, b.timeouts.check, b.say)
        probe = session.run(FIRMWARE_PROBE, b.timeouts.check)
        boot = judge_firmware(b.machine, probe.stdout)
        b.say(f"firmware: booted with {boot.firmware}; the guest reports {probe.stdout.strip()!r}: "
              + ("as expected" if boot.passed else "; ".join(boot.findings)))
        verdict = _datasource_verdict(b, session, state.host_keys)
        b.say("powering off")
        clean, took = _shutdown(b, session)
    finally:
        session.close()
    final = b.watcher.snapshot()
    notes = () if session.host_key_verified else ("the guest printed no SSH host keys; host key not verified",)
    return BootResult(
        image=os.fspath(image), format=fmt, accelerator=b.accelerator.name,
        accelerator_reason=b.accelerator.reason, instance_id=b.seed.instance_id,
        stages=_stage_times(final, ssh_at), checks=tuple(results), host_key_verified=session.host_key_verified,
        clean_shutdown=clean, shutdown_seconds=round(took, 1),
        total_seconds=round(time.monotonic() - b.qemu.started, 1), notes=notes, cloud=b.datasource.cloud,
        datasource=verdict, boot=boot)


def _write_resolver(overlay: Path, source: Datasource, trusted: bool, say: Progress) -> None:
    """Play the cloud's DNS for the names its datasource needs: lines in the overlay's /etc/hosts."""
    from ..guest.session import SessionOptions, open_guest

    lines = [f"{address} {name}" for address, name in source.resolver]
    say(f"datasource: {', '.join(n for _a, n in source.resolver)} in the overlay's /etc/hosts "
        f"({source.cloud}'s resolver; the guest has no DNS under restrict=on)")
    with open_guest(overlay, "qcow2", SessionOptions(network=False, trusted=trusted), say) as guest:
        hosts = guest.read_text("/etc/hosts") if guest.exists("/etc/hosts") else ""
        missing = [line for line in lines if line not in hosts.splitlines()]
        if missing:
            text = hosts + ("" if not hosts or hosts.endswith("\n") else "\n")
            guest.write_text("/etc/hosts", text + "\n".join(missing) + "\n")


def boot_test(image: Path, fmt: str | None = None, *, checks: Sequence[Check] = (),
              accelerator: Accelerator | None = None, timeout_scale: float = 1.0,
              timeouts: Timeouts | None = None, workdir: Path | None = None,
              memory_mib: int = 2048, cpus: int = 2, progress: Progress | None = None,
              console_copy: Path | None = None, in_place: bool = False, cloud: str | None = None,
              machine: BootMachine = BootMachine(), trusted: bool = False) -> BootResult:
    """Boot *image* on a throw-away overlay and test it (see the module docstring for the steps).

    *cloud* picks the datasource the guest finds (:data:`.datasource.DATASOURCES`: ``openstack``,
    ``tencent``, ``aws``, ``aliyun``; None is NoCloud), emulated locally; the result's
    ``datasource`` says which one cloud-init used and whether its data took effect.

    ``in_place=True`` boots a qcow2 *image* itself, so what the guest writes stays in it: a
    second boot of the same file is a real second boot (first-boot scripts, per-boot state).
    Give it an overlay of your own, never an image you want to keep as it is.

    *machine* is the guest architecture and firmware (:class:`BootMachine`: amd64 under SeaBIOS
    by default); the result's ``boot`` holds the guest's own report of how it booted. A
    foreign-architecture guest always runs under TCG, with deadlines scaled for emulation.

    *trusted* lets the one cloud that needs a file in the overlay (``gcp``: its metadata server's
    name, see :attr:`.datasource.Datasource.resolver`) write it through the chroot backend when
    running as root, instead of an appliance launch; say it only of an image you built.
    """
    say: Progress = progress or (lambda _msg: None)
    source = datasource_for(cloud)
    image = Path(image).resolve()
    fmt = qemuimg.open_image(image, fmt).format
    if in_place and fmt != "qcow2":
        raise UsageError(f"{image}: booting in place needs a qcow2 image, not {fmt}")
    verdict = accelerator or choose_accelerator()
    if machine.arch != "amd64" and verdict.name != "tcg":
        verdict = Accelerator("tcg", f"a {machine.arch} guest on this host is emulated")
    if machine.arch != "amd64":
        timeout_scale *= ARM64_TCG_FACTOR
    limits = timeouts or Timeouts.for_accelerator(verdict.name, timeout_scale)
    say(f"accelerator: {verdict.name} ({verdict.reason}); {machine.arch} with {machine.firmware} firmware")
    with scratch_dir("imgsmith-boot-", workdir) as tmp:  # its overlay: swept by the next boot after kill -9
        overlay = image if in_place else tmp / "overlay.qcow2"
        if not in_place:
            qemuimg.create_overlay(image, fmt, overlay)
        if source.resolver:
            _write_resolver(overlay, source, trusted, say)
        key, instance_key = ThrowawayKey.generate(), ThrowawayKey.generate()
        cfg = source.seed_config(key.public, instance_key.public)
        platform = source.prepare(cfg, tmp)
        say(f"datasource: {source.cloud} ({', '.join(source.dsnames)}), instance {cfg.instance_id}")
        with contextlib.ExitStack() as stack:
            qemu = _start_qemu(stack, lambda port: machine_config(
                overlay, platform.drive, tmp, verdict, port, memory_mib=memory_mib, cpus=cpus,
                network=platform.network, smbios=platform.smbios, machine=machine), tmp / "qemu.log")
            watcher = ConsoleWatcher(tmp / "console.log", ConsoleParser(cfg.marker), started=qemu.started)
            watcher.start()
            boot = _Boot(qemu, watcher, cfg, key, limits, verdict, say, source, platform, instance_key, machine)
            try:
                return _run(boot, image, fmt, checks)
            finally:
                stack.close()
                watcher.stop()
                if console_copy is not None and (tmp / "console.log").exists():
                    shutil.copyfile(tmp / "console.log", console_copy)
                if qemu.cfg.qmp_socket.parent != tmp:
                    shutil.rmtree(qemu.cfg.qmp_socket.parent, ignore_errors=True)
