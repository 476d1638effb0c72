"""First-boot scripts: installed where virt-customize puts them, run once by a oneshot service.

Layout kept compatible with virt-customize so images made by either tool behave the
same and a later run of either adds to the same queue: scripts in
/usr/lib/virt-sysprep/scripts named ``PRIO-SEQ-name``, a runner firstboot.sh, a systemd
unit guestfs-firstboot.service (and sysvinit S99 links where /etc/init.d or /etc/rc.d
exist), output logged to ~root/virt-sysprep-firstboot.log in the guest.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..guest.api import Guest
from .base import ApplyContext, HostScriptOperation, ShellCommandOperation
from .packages import PackageListOperation, install_command

__all__ = ["Firstboot", "FirstbootCommand", "FirstbootInstall", "add_firstboot_script"]

FIRSTBOOT_DIR = "/usr/lib/virt-sysprep"
UNIT_DIR = "/usr/lib/systemd/system"
UNIT_NAME = "guestfs-firstboot.service"

# Our own runner (same contract as virt-customize's): run each executable script once,
# in name order, moving it aside first so a crash never reruns it, logging everything.
RUNNER = f"""#!/bin/sh -
### BEGIN INIT INFO
# Provides:          virt-sysprep
# Required-Start:    $null
# Should-Start:      $all
# Required-Stop:     $null
# Should-Stop:       $all
# Default-Start:     2 3 5
# Default-Stop:      0 1 6
# Short-Description: Run queued first-boot scripts once
### END INIT INFO
queue={FIRSTBOOT_DIR}/scripts
done_dir={FIRSTBOOT_DIR}/scripts-done
log=~root/virt-sysprep-firstboot.log
echo "$0 $*" | tee -a "$log"
[ "$1" = start ] || exit 0
mkdir -p "$done_dir"
for script in "$queue"/*; do
  [ -x "$script" ] || continue
  mv "$script" "$done_dir/"
  echo "=== Running $script ===" | tee -a "$log"
  "$done_dir/$(basename "$script")" 2>&1 | tee -a "$log"
done
rm -f "$done_dir"/*
"""

UNIT = f"""[Unit]
Description=libguestfs firstboot service
After=network.target
Before=prefdm.service

[Service]
Type=oneshot
ExecStart={FIRSTBOOT_DIR}/firstboot.sh start
RemainAfterExit=yes
StandardOutput=journal+console
StandardError=inherit

[Install]
WantedBy=multi-user.target
"""


def _install_service(g: Guest) -> None:
    g.mkdir_p(f"{FIRSTBOOT_DIR}/scripts")
    g.write(f"{FIRSTBOOT_DIR}/firstboot.sh", RUNNER.encode())
    g.chmod(0o755, f"{FIRSTBOOT_DIR}/firstboot.sh")
    if g.is_dir("/etc/systemd/system"):
        g.mkdir_p(UNIT_DIR)
        g.write(f"{UNIT_DIR}/{UNIT_NAME}", UNIT.encode())
        g.mkdir_p("/etc/systemd/system/multi-user.target.wants")
        g.ln_sf(f"{UNIT_DIR}/{UNIT_NAME}", f"/etc/systemd/system/multi-user.target.wants/{UNIT_NAME}")
    family = g.os.family
    runner = f"{FIRSTBOOT_DIR}/firstboot.sh"
    if family == "redhat" and (g.is_dir("/etc/rc.d") or g.is_dir("/etc/init.d")):
        for level in "235":
            g.mkdir_p(f"/etc/rc.d/rc{level}.d")
            g.ln_sf(runner, f"/etc/rc.d/rc{level}.d/S99guestfs-firstboot")
    elif family == "debian" and g.is_dir("/etc/init.d"):
        g.ln_sf(runner, "/etc/init.d/guestfs-firstboot")
        for level in "235":
            g.mkdir_p(f"/etc/rc{level}.d")
            g.ln_sf("../init.d/guestfs-firstboot", f"/etc/rc{level}.d/S99guestfs-firstboot")
    elif family == "suse" and g.is_dir("/etc/init.d"):
        g.ln_sf(runner, "/etc/init.d/guestfs-firstboot")
        for level in "235":
            g.mkdir_p(f"/etc/init.d/rc{level}.d")
            g.ln_sf("../guestfs-firstboot", f"/etc/init.d/rc{level}.d/S99guestfs-firstboot")


def add_firstboot_script(ctx: ApplyContext, name: str, content: str, prio: int = 5000) -> str:
    """Queue *content* to run at first boot; returns the guest path of the script."""
    g = ctx.guest
    _install_service(g)
    seq = ctx.next_index("firstboot")
    safe = re.sub(r"[^a-z0-9_]", "-", name, flags=re.IGNORECASE)[:60]
    path = f"{FIRSTBOOT_DIR}/scripts/{prio:04d}-{seq:04d}-{safe}"
    g.write(path, content.encode("utf-8", "surrogateescape"))
    g.chmod(0o755, path)
    return path


@dataclass(frozen=True)
class Firstboot(HostScriptOperation):
    name = "firstboot"
    metavar = "SCRIPT"
    help = "Install a host script to run once when the guest first boots"

    def apply(self, ctx: ApplyContext) -> None:
        ctx.message(f"Installing firstboot script: {self.script}")
        add_firstboot_script(ctx, os.fspath(self.script),
                             self.script.read_text(encoding="utf-8", errors="surrogateescape"))


@dataclass(frozen=True)
class FirstbootCommand(ShellCommandOperation):
    name = "firstboot-command"
    metavar = "'CMD+ARGS'"
    help = "Run a shell command once when the guest first boots"

    def apply(self, ctx: ApplyContext) -> None:
        ctx.message(f"Installing firstboot command: {self.command}")
        add_firstboot_script(ctx, self.command, self.command)


@dataclass(frozen=True)
class FirstbootInstall(PackageListOperation):
    name = "firstboot-install"
    help = "Install packages when the guest first boots (with the guest's own network)"

    def apply(self, ctx: ApplyContext) -> None:
        ctx.message(f"Installing firstboot packages: {' '.join(self.packages)}")
        add_firstboot_script(ctx, "install " + " ".join(self.packages),
                             install_command(ctx.guest.os, self.packages))
