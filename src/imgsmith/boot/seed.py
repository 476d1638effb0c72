"""The cloud-init NoCloud seed of a boot test, written as an ISO 9660 image in Python.

cloud-init's NoCloud datasource finds any filesystem labelled ``cidata`` holding
``user-data`` and ``meta-data``. The ISO is written with pycdlib rather than by
loop-mounting (many hosts, this one included, have no iso9660 or vfat module) or
by genisoimage (one less host tool). Joliet and Rock Ridge carry the real file
names; the plain ISO 9660 names (``USER_DAT.;1``) are only the fallback level.

The seed holds a public key only: the private half of the throw-away key never
leaves the test's memory.
"""

from __future__ import annotations

import io
import secrets
from dataclasses import dataclass
from pathlib import Path

import pycdlib
import yaml

__all__ = ["MARKER", "TEST_USER", "USER_DATA_PROOF", "SeedConfig", "meta_data", "new_instance_id", "user_data",
           "write_seed"]

MARKER = "IMGSMITH-BOOT-OK"
TEST_USER = "imgsmith"
VOLUME_ID = "cidata"
USER_DATA_PROOF = "/var/lib/imgsmith-boot/user-data"
"""The file user-data's ``runcmd`` writes the instance-id into: proof the user-data was run."""


def new_instance_id() -> str:
    """A fresh instance-id per boot makes cloud-init treat the overlay as a new instance."""
    return f"imgsmith-{secrets.token_hex(6)}"


@dataclass(frozen=True)
class SeedConfig:
    """What the seed says: who the instance is, which key may log in, what marks success.

    ``public_key`` goes to the test user through user-data; ``instance_key`` (when
    given) is the instance's own key from the datasource's metadata, which
    cloud-init gives to the image's default user: logging in with it proves the
    metadata's keys took effect.
    """

    instance_id: str
    public_key: str
    hostname: str = "imgsmith-boot-test"
    user: str = TEST_USER
    instance_key: str | None = None

    @property
    def marker(self) -> str:
        """The console line that proves cloud-init ran this seed to the end, for this boot only."""
        return f"{MARKER} {self.instance_id}"


def user_data(cfg: SeedConfig) -> str:
    """``#cloud-config`` creating the test user (key-only, passwordless sudo), the proof file and the marker.

    ``default`` keeps the image's default user (``debian``, ``ubuntu``, ...): cloud-init gives it
    the datasource's public keys, and logging in with the instance key as that user is the
    proof that the metadata's keys took effect.
    ``final_message`` is printed to the console by cloud-init's last module, after
    runcmd and the SSH keys are in place: seeing it means the boot is complete.
    ``$UPTIME`` is expanded by cloud-init and shows the guest's own view of boot time.
    """
    doc = {
        "users": ["default", {
            "name": cfg.user,
            "gecos": "imgsmith boot test",
            "shell": "/bin/bash",
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "lock_passwd": True,
            "ssh_authorized_keys": [cfg.public_key],
        }],
        "ssh_pwauth": False,
        "manage_etc_hosts": True,
        "runcmd": [["sh", "-c", f"mkdir -p {USER_DATA_PROOF.rsplit('/', 1)[0]} && "
                                f"echo {cfg.instance_id} > {USER_DATA_PROOF}"]],
        "final_message": f"{cfg.marker} up $UPTIME s",
    }
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False, width=4096)


def meta_data(cfg: SeedConfig) -> str:
    doc: dict[str, object] = {"instance-id": cfg.instance_id, "local-hostname": cfg.hostname}
    if cfg.instance_key:
        doc["public-keys"] = [cfg.instance_key]
    return yaml.safe_dump(doc, sort_keys=False, width=4096)


def _add(iso: pycdlib.PyCdlib, name: str, data: bytes, iso_name: str) -> None:
    iso.add_fp(io.BytesIO(data), len(data), f"/{iso_name};1", rr_name=name, joliet_path=f"/{name}")


def write_seed(path: Path, cfg: SeedConfig) -> Path:
    """Write the seed ISO to *path* and return it."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=VOLUME_ID, sys_ident="LINUX", joliet=3, rock_ridge="1.09")
    try:
        _add(iso, "user-data", user_data(cfg).encode(), "USER_DAT.")
        _add(iso, "meta-data", meta_data(cfg).encode(), "META_DAT.")
        iso.write(str(path))
    finally:
        iso.close()
    return path
