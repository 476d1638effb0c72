"""Generate docs/clouds.md from the cloud registry, so the rules and their documentation cannot drift.

``make docs`` writes the file; a test fails when the committed file differs.
"""

from __future__ import annotations

from ..boot.datasource import DATASOURCES
from . import PROFILES
from .fixes import FIXES

__all__ = ["render_clouds_doc"]

HEADER = """\
# Cloud readiness checks

Generated from `src/imgsmith/clouds/` by `make docs` — do not edit by hand.

`imgsmith check IMAGE --for CLOUD[,CLOUD...]` runs the rules below on an image before it is
uploaded. The image is opened through a throw-away qcow2 overlay, so its bytes never
change; the guest's files are read once and shared by every cloud. A rule is an
**error** when the cloud rejects the image or the instance will not boot or provision,
a **warning** when the image works but something the cloud relies on is missing (or the
file still has to be converted: `imgsmith convert --preset CLOUD` does that and applies
the preset's own rules, [formats.md](formats.md)). Exit status: 0 without errors, 1 with
any, 2 for bad input.

How fast (`bench/check`, on the 3 GiB Debian 12 image `imgsmith bootstrap` makes, 2 cores, TCG,
2026-12-02): all six clouds take 0.7 s with the chroot backend and 26.0 s with the appliance,
against 31.9 s for one `virt-inspector` run on the same image (0.81). Nearly all of the
appliance's time is its launch; the rules themselves read a few files and list the initramfs.

How the checks read the guest:

- **Drivers**: a driver counts as available early when the kernel builds it in
  (`/boot/config-VERSION` says `=y`, or `modules.builtin` lists it) or the initramfs carries
  it. The initramfs is listed in imgsmith's own process, running nothing from the image:
  the uncompressed early cpio (microcode) that dracut and initramfs-tools prepend, then the
  compressed main cpio (gzip, xz, lzma, bzip2, zstd). `net-driver` also accepts a module
  installed under `/lib/modules/VERSION`.
- **cloud-init**: installed (`/usr/bin/cloud-init`), enabled (a `cloud-init*.service` link in
  an `/etc/systemd/system/*.wants/` directory, and no `/etc/cloud/cloud-init.disabled`), and
  `datasource_list` from `/etc/cloud/cloud.cfg` then `cloud.cfg.d/*.cfg` in lexical order (the
  last one wins, as in cloud-init) either unset (cloud-init's default list detects every
  datasource) or naming the cloud's datasource.
- **Layout**: the partition table, the partitions' types, filesystems, UUIDs and labels come
  from the Guest API (`partition_table()`, `partitions()`), identical on both backends. BIOS
  boot means an MBR disk or a GPT disk with a BIOS boot partition; UEFI boot means an EFI
  system partition. The root partition is "last" when no partition starts after it.
- **A disk without an operating system** is not a command error: each cloud reports its
  `root-found` rule (Tencent's `RootPartitionNotFound`).

"""


FIXES_HEADER = """\
## Fixes: `cloud-ready`

`imgsmith customize --cloud-ready CLOUD[,CLOUD...]` (in a definition: `- cloud-ready: [openstack,
aliyun]`) runs the rules of each cloud on the open guest and applies the fix of every rule
that found something, where a fix is safe on any image. The fixes are ordinary operations
(each also usable alone, [operations.md](operations.md)) made from what the check found; the
operations of all clouds are merged (one package install, one initramfs regeneration with every
missing driver, one datasource list) and run packages first, initramfs last. Then the rules run
again: a fix that did not take fails the step; what no fix covers (LVM root, partition layout,
data disks, static addresses, image format and size) is a warning, and `imgsmith check` reports it.
GRUB is edited, not regenerated: grub-mkconfig in a chroot or an appliance writes the build
machine's device names, so `/etc/default/grub` (for the guest's next regeneration) and the
existing kernel lines (grub.cfg, BLS entries) are changed in place.

| rule | what cloud-ready changes |
|---|---|
"""


def _fixes_section() -> str:
    rows = [f"| `{name}` | {fix.text} |\n" for name, fix in FIXES.items()]
    per_cloud = []
    for profile in PROFILES.values():
        fixed = [r.name for r in profile.rules if r.fix is not None]
        if fixed:
            per_cloud.append(f"- **{profile.name}**: " + ", ".join(f"`{n}`" for n in fixed) + "\n")
    return FIXES_HEADER + "".join(rows) + "\nRules each cloud's `cloud-ready` fixes:\n\n" + "".join(per_cloud) + "\n"


def _boot_test_line(cloud: str) -> str:
    """What ``imgsmith test --cloud`` proves for *cloud* (docs/boot.md has how each is emulated)."""
    ds = DATASOURCES.get(cloud)
    if ds is None:
        return ("boot test: no emulation of this cloud's datasource; `imgsmith test` boots with NoCloud, "
                "which proves the image boots and cloud-init runs, not that it finds this cloud's datasource")
    where = f"its metadata service at {ds.metadata_service}" if ds.metadata_service else "its config drive"
    return (f"boot test: `imgsmith test IMAGE --cloud {cloud}` (or `test: {{cloud: {cloud}}}`) boots on "
            f"{where}, emulated locally ([boot.md](boot.md)); it passes when cloud-init used "
            f"{' or '.join('DataSource' + n for n in ds.dsnames)}, `cloud-id` is `{ds.cloud_id}`, and the "
            "hostname, SSH key and user-data from that datasource took effect (then SSH login)")


def render_clouds_doc() -> str:
    parts = [HEADER]
    for profile in PROFILES.values():
        parts.append(f"## {profile.name} — {profile.description}\n\n")
        facts = [f"formats it imports: {', '.join(profile.formats)} (preset `{profile.preset}`)",
                  f"architectures: {', '.join(profile.arches)}",
                 f"boot modes: {', '.join(m.upper() for m in profile.boot_modes)}; partition tables: "
                 + ", ".join(t.upper() for t in profile.partition_tables)
                 + ("; arm64: UEFI, MBR or GPT" if "aarch64" in profile.arches else "")]
        if profile.drivers or profile.late_drivers:
            groups = [" or ".join(g) for g in profile.drivers]
            late = [" or ".join(g) for g in profile.late_drivers]
            facts.append("drivers needed early: " + (", ".join(groups) or "none")
                         + ("; network: " + ", ".join(late) if late else ""))
        if profile.datasources:
            facts.append(f"cloud-init datasource: {' or '.join(profile.datasources)}")
        facts.append(_boot_test_line(profile.name))
        parts.append("".join(f"- {f}\n" for f in facts) + "\n")
        parts.append("| rule | severity | cloud's error | what it checks | source |\n|---|---|---|---|---|\n")
        for rule in profile.rules:
            parts.append(f"| `{profile.rule_id(rule)}` | {rule.severity} | {rule.error_name or ''} | {rule.text} "
                         f"| <{rule.source}> |\n")
        parts.append("\n")
    parts.append(_fixes_section())
    return "".join(parts).rstrip("\n") + "\n"
