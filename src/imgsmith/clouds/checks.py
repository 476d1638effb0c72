"""The check functions the cloud modules' rules share: each reads :class:`Facts`, returns hits.

A check knows what is wrong and how to fix it; the rule that calls it (in a cloud module)
says how much that matters to the cloud, and where the cloud documents it. Parameters
that differ between clouds (accepted boot modes, required drivers, datasources, console)
come from the :class:`Profile`, so one function serves every cloud.
"""

from __future__ import annotations

import re

from ..disk.presets import PRESETS, MaxSize
from ..disk.sizes import MiB, format_size
from ..errors import UsageError
from .base import CheckFn, Hit, Profile
from .facts import Facts

_PSEUDO_FS = frozenset({"proc", "sysfs", "tmpfs", "devpts", "none", "devtmpfs", "cgroup", "cgroup2", "securityfs",
                        "debugfs", "hugetlbfs", "mqueue", "nfs", "nfs4", "cifs", "efivarfs", "bpf"})
_STABLE = re.compile(r"^(UUID=|LABEL=|PARTUUID=|PARTLABEL=|/dev/disk/by-(uuid|label|partuuid|partlabel)/|/dev/mapper/)")
_TOOLS = {  # guest-tool family -> (what it is, where its daemon lives)
    "vmware": ("open-vm-tools (VMware Tools)", ("/usr/bin/vmtoolsd", "/usr/sbin/vmtoolsd")),
    "virtualbox": ("VirtualBox Guest Additions", ("/usr/sbin/VBoxService", "/usr/bin/VBoxService",
                                                  "/opt/VBoxGuestAdditions")),
    "xen": ("Xen guest utilities", ("/usr/sbin/xe-daemon", "/usr/sbin/xe-linux-distribution")),
}
FREE_MIN = 256 * MiB
_DEVNAME = re.compile(r"/dev/(?:[shv]|xv)d[a-z](\d*)|/dev/nvme\d+n\d+(?:p(\d+))?")  # names of this disk's partitions


def _mount_fix(cloud: str) -> str:
    return f"imgsmith customize --cloud-ready {cloud}, or edit /etc/fstab by hand"


# --- the image file ------------------------------------------------------------------------------

def image_format(f: Facts, p: Profile) -> list[Hit]:
    if f.image.format in p.formats:
        return []
    return [Hit(f"the image is {f.image.format}; {p.description} imports {', '.join(p.formats)}",
                str(f.image.path), f"imgsmith convert {f.image.path.name} --preset {p.preset} -o DIR")]


def preset_rules(f: Facts, p: Profile) -> list[Hit]:
    """The preset's own rules (disk/presets.py), on the image as it is: size multiples, VHD subformat, limits.

    A rule the conversion fixes by itself (rounding the size up) only counts when the image
    already is in the preset's format, i.e. it is the file that would be uploaded.
    """
    preset = PRESETS[p.preset]
    final = f.image.format == preset.format
    options = dict(preset.options)
    if f.image.format in ("vpc", "vmdk") and f.image.subformat:
        options["subformat"] = f.image.subformat
    hits = []
    for rule in preset.rules:
        if not final and not isinstance(rule, MaxSize):
            continue
        try:
            outcome = rule.apply(preset.name, f.image.virtual_size, options)
        except UsageError as exc:
            hits.append(Hit(exc.message, str(f.image.path), f"imgsmith convert SOURCE --preset {p.preset}"))
            continue
        if outcome.size != f.image.virtual_size:
            hits.append(Hit(f"rule {rule.name!r}: {rule.text}; the virtual size is {f.image.virtual_size} bytes",
                            str(f.image.path), f"imgsmith convert SOURCE --preset {p.preset} (it makes the size "
                                               f"{outcome.size} bytes)"))
    return hits


# --- disk layout ---------------------------------------------------------------------------------

def root_found(f: Facts, p: Profile) -> list[Hit]:
    """Facts exist only for a guest whose root was found: the check runner reports the other case itself."""
    return []


# --- disk layout, continued ---------------------------------------------------------------------------------

def partition_present(f: Facts, p: Profile) -> list[Hit]:
    if f.table:
        return []
    return [Hit("the disk has no partition table (one whole-disk filesystem)", "/dev/sda",
                "make an MBR-partitioned disk with the root filesystem in a partition")]


def partition_table(f: Facts, p: Profile) -> list[Hit]:
    tables = p.partition_tables_for(f.arch)
    if not f.table or f.table in tables:
        return []
    names = {"mbr": "MBR", "gpt": "GPT"}
    return [Hit(f"the disk has a {names.get(f.table, f.table)} partition table; {p.description} accepts "
                + " or ".join(names.get(t, t) for t in tables), "/dev/sda",
                "rebuild the image with an MBR partition table (imgsmith bootstrap --firmware bios)")]


def boot_mode(f: Facts, p: Profile) -> list[Hit]:
    modes = p.boot_modes_for(f.arch)
    if set(f.boot_modes) & set(modes):
        return []
    have = " and ".join(m.upper() for m in f.boot_modes) or "neither BIOS nor UEFI"
    want = " or ".join(m.upper() for m in modes)
    whose = f"{p.description}'s arm64 machines boot" if modes != p.boot_modes else f"{p.description} boots"
    if "uefi" in modes:
        fix = ("add an EFI system partition with a UEFI boot loader (imgsmith bootstrap --firmware "
               f"{'uefi' if f.arch == 'aarch64' else 'hybrid'})")
    else:
        fix = "use an MBR disk (or GPT with a BIOS boot partition) and a BIOS boot loader"
    return [Hit(f"the disk boots with {have}; {whose} {want}", "/dev/sda", fix)]


def architecture(f: Facts, p: Profile) -> list[Hit]:
    if f.arch in p.arches or f.arch in ("", "unknown"):
        return []
    return [Hit(f"the guest is {f.arch}; {p.description} runs " + ", ".join(p.arches), "/", "build the image "
                f"for {' or '.join(p.arches)} (bootstrap: {{arch: ...}})")]


def azure_generation(f: Facts, p: Profile) -> list[Hit]:
    """Azure boots Generation 1 VMs with BIOS and Generation 2 with UEFI; arm64 sizes are Generation 2 only."""
    why = "the guest is aarch64 (arm64)" if f.arch == "aarch64" else \
        "the disk boots only with UEFI" if f.boot_modes == ("uefi",) else None
    if why is None:
        return []
    return [Hit(f"{why}: it runs only as a Generation 2 VM", "/dev/sda", "create the Azure image as Generation 2 "
                "(az image create / az sig image-definition create --hyper-v-generation V2), or check it "
                "--for azure-gen2")]


def root_last(f: Facts, p: Profile) -> list[Hit]:
    root = f.root
    if root is None or root.number == 0:
        return []
    after = [q for q in f.partitions if q.number and q.start > root.start]
    if not after:
        return []
    return [Hit(f"the root partition {root.device} is followed by {', '.join(q.device for q in after)}: "
                "growpart can grow only the last partition", root.device,
                "move the root filesystem to the last partition (or drop the partitions after it)")]


def lvm_root(f: Facts, p: Profile) -> list[Hit]:
    if not f.root_on_lvm:
        return []
    return [Hit(f"the root filesystem is on LVM ({f.guest.os.root})", f.guest.os.root,
                "rebuild the image with the root filesystem on a plain partition")]


def no_swap(f: Facts, p: Profile) -> list[Hit]:
    hits = [Hit(f"/etc/fstab line {e.line} mounts swap ({e.spec})", "/etc/fstab",
                "remove the swap line (imgsmith customize --cloud-ready " + p.name + ")", ("fstab",))
            for e in f.fstab if e.fstype == "swap"]
    hits += [Hit(f"{q.device} is a swap partition", q.device, "remove the swap partition from the OS disk")
             for q in f.partitions if q.fstype == "swap"]
    return hits


def one_disk(f: Facts, p: Profile) -> list[Hit]:
    """Every fstab entry that must mount at boot resolves on this disk (anything else is a data disk)."""
    hits = []
    for e in f.fstab:
        if e.fstype in _PSEUDO_FS or "noauto" in e.options or "nofail" in e.options:
            continue
        if not _resolves(f, e.spec):
            hits.append(Hit(f"/etc/fstab line {e.line}: {e.spec} ({e.mountpoint}) is not on this disk",
                            "/etc/fstab", f"remove the entry or add nofail (a data disk is not part of the image); "
                                          f"{_mount_fix(p.name)}"))
    return hits


def _resolves(f: Facts, spec: str) -> bool:
    m = re.match(r"^(UUID|LABEL)=[\"']?([^\"']+)[\"']?$", spec) or \
        re.match(r"^/dev/disk/by-(uuid|label)/(.+)$", spec)
    if m:
        attr = m.group(1).lower()
        return any(getattr(q, attr).lower() == m.group(2).lower() for q in f.partitions)
    m = _DEVNAME.fullmatch(spec)
    if m:
        number = int(m.group(1) or m.group(2) or 0)
        return any(q.number == number for q in f.partitions)
    return True  # PARTUUID, /dev/mapper, network filesystems: not checkable from the image alone


def fstab_stable(f: Facts, p: Profile) -> list[Hit]:
    return [Hit(f"/etc/fstab line {e.line} mounts {e.mountpoint} by device name {e.spec}", "/etc/fstab",
                f"use UUID= or LABEL= (device names change between virtio, SCSI and NVMe); {_mount_fix(p.name)}",
                (e.spec,) if _DEVNAME.fullmatch(e.spec) and _resolves(f, e.spec) else ())
            for e in f.fstab if e.spec.startswith("/dev/") and not _STABLE.match(e.spec)
            and e.fstype not in _PSEUDO_FS]


def free_space(f: Facts, p: Profile) -> list[Hit]:
    size, avail = f.root_free
    if avail >= FREE_MIN:
        return []
    return [Hit(f"only {format_size(avail)} free of {format_size(size)} on /", "/",
                "grow the disk (imgsmith resize) or remove files")]


# --- kernel and drivers ----------------------------------------------------------------------------

def early_drivers(f: Facts, p: Profile) -> list[Hit]:
    return _early(f, p.drivers)


def needs_early(*groups: tuple[str, ...]) -> CheckFn:
    """A check for drivers other than the profile's main ones (NVMe on Aliyun's newer families, say)."""
    return lambda f, _p: _early(f, groups)


def _early(f: Facts, groups: tuple[tuple[str, ...], ...]) -> list[Hit]:
    if not f.kernels:
        return [Hit("no kernel found in /boot", "/boot", "install a kernel package")]
    hits = []
    for k in f.kernels:
        for group in groups:
            if any(k.early(m) for m in group):
                continue
            where = k.initramfs_path or "/boot"
            problem = f" ({k.initramfs_problem})" if k.initramfs_problem else ""
            hits.append(Hit(f"kernel {k.version}: {' or '.join(group)} neither built in nor in the initramfs{problem}",
                            where, f"regenerate the initramfs with {group[0]} (dracut --add-drivers '{group[0]}', or "
                                   f"add it to /etc/initramfs-tools/modules and run update-initramfs -u)",
                            (group[0],)))
    return hits


def late_drivers(f: Facts, p: Profile) -> list[Hit]:
    return _late(f, p.late_drivers)


def needs_module(*groups: tuple[str, ...]) -> CheckFn:
    return lambda f, _p: _late(f, groups)


def _late(f: Facts, groups: tuple[tuple[str, ...], ...]) -> list[Hit]:
    hits = []
    for k in f.kernels:
        for group in groups:
            if not any(k.available(m) for m in group):
                hits.append(Hit(f"kernel {k.version}: no {' or '.join(group)} driver (built in or module)",
                                f"/lib/modules/{k.version}", f"install a kernel that has {group[0]}"))
    return hits


# --- cloud-init ----------------------------------------------------------------------------------

def cloud_init_installed(f: Facts, p: Profile) -> list[Hit]:
    if f.cloud_init_binary:
        return []
    return [Hit("cloud-init is not installed", "/usr/bin/cloud-init",
                f"install cloud-init (imgsmith customize --install cloud-init, or --cloud-ready {p.name})")]


def cloud_init_enabled(f: Facts, p: Profile) -> list[Hit]:
    if not f.cloud_init_binary:
        return []  # cloud-init-installed says it
    if f.guest.exists("/etc/cloud/cloud-init.disabled"):
        return [Hit("/etc/cloud/cloud-init.disabled exists: cloud-init will not run", "/etc/cloud/cloud-init.disabled",
                    "remove the file")]
    if f.guest.os.init != "systemd":
        return []
    units = ("cloud-init.service", "cloud-init-local.service", "cloud-init-main.service", "cloud-init-network.service")
    if any(f.glob(f"/etc/systemd/system/*.wants/{u}") for u in units):
        return []
    return [Hit("no cloud-init unit is enabled at boot", "/etc/systemd/system",
                "systemctl enable cloud-init-local.service cloud-init.service cloud-config.service "
                "cloud-final.service")]


def datasource(f: Facts, p: Profile) -> list[Hit]:
    if not f.cloud_init_binary or not p.datasources:
        return []
    listed = f.cloud_cfg[0].get("datasource_list")
    if not isinstance(listed, list):
        return []  # cloud-init's default list detects every datasource
    names = [str(x) for x in listed]
    if any(d in names for d in p.datasources):
        return []
    return [Hit(f"datasource_list is [{', '.join(names)}]: no {' or '.join(p.datasources)}",
                f.datasource_source(), f"add {p.datasources[0]} to datasource_list "
                                      f"(imgsmith customize --cloud-ready {p.name})", p.datasources)]


def growpart(f: Facts, p: Profile) -> list[Hit]:
    if f.exists_any("/usr/bin/growpart", "/usr/sbin/growpart", "/bin/growpart"):
        return []
    return [Hit("growpart is not installed: the root partition will not grow to the instance's disk",
                "/usr/bin/growpart", "install cloud-utils-growpart (RHEL, SUSE) or cloud-guest-utils (Debian)")]


# --- boot loader ---------------------------------------------------------------------------------

def grub_config(f: Facts, p: Profile) -> list[Hit]:
    if f.grub_cfg is not None:
        return []
    return [Hit("no GRUB configuration with a kernel entry found", "/boot/grub",
                "install GRUB and run grub-mkconfig (or grub2-mkconfig)")]


def grub_uuid(f: Facts, p: Profile) -> list[Hit]:
    hits = []
    if f.grub_cfg is not None:
        for args in f.kernel_cmdlines:
            m = re.search(r"(?:^|\s)root=(/dev/\S+)", args)
            if m and not _STABLE.match(m.group(1)):
                hits.append(Hit(f"a kernel entry boots root={m.group(1)}", f.grub_cfg[0],
                                "regenerate grub.cfg with root=UUID=... (grub-mkconfig with "
                                "GRUB_DISABLE_LINUX_UUID unset)"))
                break
    default = f.text("/etc/default/grub") or ""
    if re.search(r"^GRUB_DISABLE_LINUX_UUID=[\"']?true", default, re.MULTILINE):
        hits.append(Hit("GRUB_DISABLE_LINUX_UUID=true: grub-mkconfig will write device names", "/etc/default/grub",
                        "remove GRUB_DISABLE_LINUX_UUID"))
    return hits


def serial_console(f: Facts, p: Profile) -> list[Hit]:
    if f.grub_cfg is None:
        return []  # grub-config says it
    missing = [a for a in f.kernel_cmdlines if not re.search(rf"(?:^|\s)console={p.console}\b", a)]
    if not missing:
        return []
    return [Hit(f"{len(missing)} kernel entr{'y has' if len(missing) == 1 else 'ies have'} no console={p.console}: "
                "the cloud's serial console log stays empty", f.grub_cfg[0],
                f"add console=tty0 console={p.console},115200n8 to GRUB_CMDLINE_LINUX and regenerate grub.cfg "
                f"(imgsmith customize --cloud-ready {p.name})", (p.console,))]


# --- network -------------------------------------------------------------------------------------

def mac_bound(f: Facts, p: Profile) -> list[Hit]:
    fix = f"remove the MAC address binding (imgsmith customize --cloud-ready {p.name})"
    hits = []
    for path in f.glob("/etc/sysconfig/network-scripts/ifcfg-*") + f.glob("/etc/sysconfig/network/ifcfg-*"):
        if re.search(r"^\s*(HWADDR|MACADDR)=\S", f.text(path) or "", re.MULTILINE):
            hits.append(Hit("HWADDR= binds the interface to the build machine's MAC address", path, fix))
    for path in f.glob("/etc/udev/rules.d/*persistent-net*.rules"):
        if re.search(r"ATTRS?\{address\}==", f.text(path) or ""):
            hits.append(Hit("persistent-net rules name interfaces by MAC address", path, fix))
    for path in f.glob("/etc/netplan/*.yaml"):
        if re.search(r"^\s*macaddress\s*:", f.text(path) or "", re.MULTILINE):
            hits.append(Hit("netplan matches an interface by macaddress", path, fix))
    for path in f.glob("/etc/NetworkManager/system-connections/*"):
        if re.search(r"^\s*mac-address\s*=\s*\S", f.text(path) or "", re.MULTILINE):
            hits.append(Hit("a NetworkManager connection is bound to a MAC address", path, fix))
    return hits


def dhcp(f: Facts, p: Profile) -> list[Hit]:
    hits = []
    for path in f.glob("/etc/sysconfig/network-scripts/ifcfg-*") + f.glob("/etc/sysconfig/network/ifcfg-*"):
        text = f.text(path) or ""
        if path.endswith("ifcfg-lo"):
            continue
        if re.search(r"^\s*BOOTPROTO=[\"']?(static|none)", text, re.MULTILINE) and "IPADDR" in text:
            hits.append(Hit("a static address is configured", path, "set BOOTPROTO=dhcp"))
    text = f.text("/etc/network/interfaces") or ""
    for m in re.finditer(r"^\s*iface\s+(\S+)\s+inet6?\s+static", text, re.MULTILINE):
        if m.group(1) != "lo":
            hits.append(Hit(f"{m.group(1)} has a static address", "/etc/network/interfaces",
                            f"use 'iface {m.group(1)} inet dhcp'"))
    for path in f.glob("/etc/NetworkManager/system-connections/*"):
        if re.search(r"^\s*method\s*=\s*manual", f.text(path) or "", re.MULTILINE):
            hits.append(Hit("a NetworkManager connection has a manual address", path, "set method=auto"))
    return hits


# --- guest software ------------------------------------------------------------------------------

def qemu_guest_agent(f: Facts, p: Profile) -> list[Hit]:
    if f.exists_any("/usr/bin/qemu-ga", "/usr/sbin/qemu-ga"):
        return []
    return [Hit("qemu-guest-agent is not installed (images with hw_qemu_guest_agent=yes need it)",
                "/usr/bin/qemu-ga", "install qemu-guest-agent")]


def guest_tools(f: Facts, p: Profile) -> list[Hit]:
    hits = []
    for family, (what, paths) in _TOOLS.items():
        if family in p.own_tools:
            continue
        found = f.exists_any(*paths)
        if found:
            hits.append(Hit(f"{what} installed: it belongs to another hypervisor", found, f"remove {what}"))
    return hits


def rtc_utc(f: Facts, p: Profile) -> list[Hit]:
    lines = (f.text("/etc/adjtime") or "").splitlines()
    if len(lines) >= 3 and lines[2].strip() == "LOCAL":
        return [Hit("the hardware clock is kept in local time", "/etc/adjtime",
                    "timedatectl set-local-rtc 0 (third line UTC)")]
    return []
