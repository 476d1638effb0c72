"""An OpenStack config drive (what Nova attaches with ``--config-drive true``), written with pycdlib.

cloud-init's ConfigDrive datasource (OpenStack, and Tencent Cloud's CVM) looks
for a filesystem labelled ``config-2`` holding ``openstack/<version>/meta_data.json``
(required), ``user_data`` and ``network_data.json``. Nova writes the same files
under a dated version and under ``latest``; cloud-init reads the newest version
it knows, so both are written here too. Like the NoCloud seed, the ISO is made
in Python: this host (like many) has no iso9660 module to loop-mount one.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pycdlib

__all__ = ["CONFIG_DRIVE_LABEL", "ConfigDrive", "meta_data", "network_data", "write_config_drive"]

CONFIG_DRIVE_LABEL = "config-2"
VERSIONS = ("2018-08-27", "latest")
"""The dated version (Rocky, known to cloud-init 22.4 and later) and ``latest``, as Nova writes them."""


@dataclass(frozen=True)
class ConfigDrive:
    """What the drive says about the instance."""

    uuid: str
    hostname: str
    public_key: str
    user_data: str
    mac: str
    key_name: str = "imgsmith"
    availability_zone: str = "nova"


def meta_data(cfg: ConfigDrive) -> dict[str, Any]:
    """``meta_data.json`` as Nova writes it (the fields cloud-init reads, and a few it only records)."""
    return {
        "uuid": cfg.uuid,
        "name": cfg.hostname,
        "hostname": cfg.hostname,
        "launch_index": 0,
        "availability_zone": cfg.availability_zone,
        "project_id": "imgsmith-boot-test",
        "public_keys": {cfg.key_name: cfg.public_key},
        "keys": [{"name": cfg.key_name, "type": "ssh", "data": cfg.public_key}],
        "meta": {"imgsmith": "boot-test"},
        "devices": [],
    }


def network_data(cfg: ConfigDrive) -> dict[str, Any]:
    """One NIC by MAC address with DHCP, as Neutron describes a port on a DHCP subnet."""
    return {
        "links": [{"id": "tap-imgsmith0", "type": "ovs", "ethernet_mac_address": cfg.mac, "mtu": 1500,
                   "vif_id": "imgsmith-port-0"}],
        "networks": [{"id": "network0", "type": "ipv4_dhcp", "link": "tap-imgsmith0",
                      "network_id": "imgsmith-net-0"}],
        "services": [],
    }


def _files(cfg: ConfigDrive) -> Mapping[str, bytes]:
    docs = {
        "meta_data.json": json.dumps(meta_data(cfg), indent=2).encode(),
        "network_data.json": json.dumps(network_data(cfg), indent=2).encode(),
        "user_data": cfg.user_data.encode(),
        "vendor_data.json": b"{}",
    }
    return {f"openstack/{version}/{name}": body for version in VERSIONS for name, body in docs.items()}


def _iso_name(part: str, is_dir: bool) -> str:
    """An ISO 9660 level-3 name for *part* (upper case, ``[A-Z0-9_]``); files get ``.EXT;1``."""
    def clean(text: str, limit: int) -> str:
        return "".join(ch if ch.isalnum() else "_" for ch in text.upper())[:limit]
    if is_dir:
        return clean(part, 31)
    stem, _dot, ext = part.rpartition(".") if "." in part else (part, "", "")
    return f"{clean(stem, 27)}.{clean(ext, 3)};1"


def write_config_drive(path: Path, cfg: ConfigDrive) -> Path:
    """Write the ``config-2`` ISO (Joliet and Rock Ridge carry the real names) to *path*."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=CONFIG_DRIVE_LABEL, sys_ident="LINUX", joliet=3, rock_ridge="1.09")
    made: set[str] = set()
    try:
        for rel, body in _files(cfg).items():
            parts = rel.split("/")
            for depth in range(1, len(parts)):
                real = "/" + "/".join(parts[:depth])
                if real in made:
                    continue
                made.add(real)
                iso_dir = "/" + "/".join(_iso_name(p, True) for p in parts[:depth])
                iso.add_directory(iso_dir, rr_name=parts[depth - 1], joliet_path=real)
            iso_path = "/" + "/".join([*(_iso_name(p, True) for p in parts[:-1]), _iso_name(parts[-1], False)])
            iso.add_fp(io.BytesIO(body), len(body), iso_path, rr_name=parts[-1], joliet_path="/" + rel)
        iso.write(str(path))
    finally:
        iso.close()
    return path
