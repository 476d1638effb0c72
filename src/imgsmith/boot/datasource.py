"""The datasource a boot test's guest finds: a NoCloud seed, or a cloud's own, emulated locally.

Each cloud in :data:`DATASOURCES` says how cloud-init on that cloud learns who the
instance is, and the boot test recreates exactly that inside qemu:

==========  ==================  ==================================================
cloud       cloud-init source   emulated by
==========  ==================  ==================================================
nocloud     NoCloud             ``cidata`` ISO (:mod:`.seed`), the default
openstack   ConfigDrive         ``config-2`` ISO (:mod:`.configdrive`), Nova's SMBIOS
tencent     ConfigDrive         ``config-2`` ISO, Tencent CVM's SMBIOS
aws         Ec2 (IMDSv2)        :mod:`.mdserver` at 169.254.169.254:80, token
                                required; SMBIOS uuid = serial = ``ec2…``
aliyun      AliYun              :mod:`.mdserver` at 100.100.100.200:80;
                                SMBIOS product ``Alibaba Cloud ECS``
gcp         GCE (GCELocal)      :mod:`.mdserver` at 169.254.169.254:80, header
                                ``Metadata-Flavor: Google`` required; SMBIOS
                                product ``Google Compute Engine``; the name
                                ``metadata.google.internal`` in the overlay's
                                ``/etc/hosts``
==========  ==================  ==================================================

The metadata services are local stand-ins: qemu's user network (``restrict=on``)
hands each guest connection to the metadata address to one :mod:`.mdserver`
process, so nothing listens on the host and nothing leaves it. The SMBIOS
strings are the ones cloud-init's ``ds-identify`` and the datasources check
(``ec2_identify_platform``/``identify_aws``, ``dscheck_AliYun``/``_is_aliyun``,
``dscheck_OpenStack``), as the real platforms report them.

GCE's datasource asks for ``metadata.google.internal``, a name GCP's own resolver
(169.254.169.254, handed out by its DHCP) answers. Under ``restrict=on`` qemu drops
the guest's DNS packets, and qemu can forward TCP only, so the boot test plays
GCP's resolver by writing that one name into ``/etc/hosts`` of the throw-away
overlay (:attr:`Datasource.resolver`); the image itself is never written. That
is the only file a boot test changes in the guest, and only for ``gcp``.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from . import mdserver
from . import seed as seed_mod
from .configdrive import ConfigDrive, write_config_drive
from .qemu import GUEST_MAC, GuestForward, UserNetwork

__all__ = ["DATASOURCES", "Datasource", "Platform", "datasource_for", "ec2_routes", "metadata_tree"]

_EC2_TOKEN = {"path": "/latest/api/token", "header": "X-aws-ec2-metadata-token",
              "ttl_header": "X-aws-ec2-metadata-token-ttl-seconds"}


@dataclass(frozen=True)
class Platform:
    """What one boot attaches for its datasource: a drive, the network's forwards, the SMBIOS strings."""

    drive: Path | None
    network: UserNetwork
    smbios: tuple[str, ...]
    request_log: Path | None = None


@dataclass(frozen=True)
class Datasource:
    """One cloud's datasource as the boot test emulates it (see the module table)."""

    cloud: str
    dsnames: tuple[str, ...]
    """cloud-init's class names (without ``DataSource``) that count as this datasource being used."""
    cloud_id: str
    """What ``cloud-id`` prints on that cloud (cloud-init 22.4 names a config drive's ``configdrive``)."""
    new_instance_id: Callable[[], str]
    prepare: Callable[[seed_mod.SeedConfig, Path], Platform]
    metadata_service: str | None = None
    """``ADDRESS:PORT`` of the emulated metadata service, None for a drive."""
    resolver: tuple[tuple[str, str], ...] = ()
    """(address, name) pairs the cloud's DNS answers that its datasource needs; the boot test writes them
    into the overlay's ``/etc/hosts``, since a guest under ``restrict=on`` has no DNS (module docstring)."""

    def seed_config(self, user_key: str, instance_key: str) -> seed_mod.SeedConfig:
        """A fresh identity: instance-id in the cloud's format, hostname ``imgsmith-<cloud>``."""
        return seed_mod.SeedConfig(instance_id=self.new_instance_id(), public_key=user_key,
                                   hostname=f"imgsmith-{self.cloud}", instance_key=instance_key)


# --- NoCloud and config drive --------------------------------------------------------------------


def _nocloud(cfg: seed_mod.SeedConfig, tmp: Path) -> Platform:
    return Platform(seed_mod.write_seed(tmp / "seed.iso", cfg), UserNetwork(), ())


def _config_drive(smbios: Callable[[seed_mod.SeedConfig], tuple[str, ...]]
                  ) -> Callable[[seed_mod.SeedConfig, Path], Platform]:
    def prepare(cfg: seed_mod.SeedConfig, tmp: Path) -> Platform:
        drive = ConfigDrive(uuid=cfg.instance_id, hostname=cfg.hostname, public_key=cfg.instance_key or "",
                            user_data=seed_mod.user_data(cfg), mac=GUEST_MAC)
        return Platform(write_config_drive(tmp / "config-drive.iso", drive), UserNetwork(), smbios(cfg))
    return prepare


def _nova_smbios(cfg: seed_mod.SeedConfig) -> tuple[str, ...]:
    return (f"type=1,manufacturer=OpenStack Foundation,product=OpenStack Nova,version=28.0.0,"
            f"serial={cfg.instance_id},uuid={cfg.instance_id},family=Virtual Machine",)


def _tencent_smbios(cfg: seed_mod.SeedConfig) -> tuple[str, ...]:
    return (f"type=1,manufacturer=Tencent Cloud,product=CVM,version=3.0,serial={cfg.instance_id},"
            f"uuid={cfg.instance_id}",)


# --- metadata services ---------------------------------------------------------------------------


def metadata_tree(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested dict into EC2-style routes: a dict is a directory whose listing names its
    children (``name/`` for a directory), a string is a leaf."""
    routes: dict[str, str] = {}
    listing = []
    for name, value in tree.items():
        if isinstance(value, Mapping):
            listing.append(f"{name}/")
            routes.update(metadata_tree(value, f"{prefix}{name}/"))
        else:
            listing.append(name)
            routes[f"{prefix}{name}"] = str(value)
    routes[prefix] = "\n".join(listing)
    return routes


def ec2_routes(meta: Mapping[str, Any], user_data: str, versions: tuple[str, ...], *,
               dynamic: Mapping[str, Any] | None = None, key_listing: str | None = None) -> dict[str, str]:
    """Every route of an EC2-style service under each of *versions*: ``meta-data/``, ``user-data``
    and ``dynamic/``. *key_listing* replaces the ``meta-data/public-keys/`` listing (EC2 lists
    ``0=KEYNAME``, not ``0/``; cloud-init then reads ``public-keys/0/openssh-key``)."""
    routes: dict[str, str] = {}
    top = ["meta-data", "user-data"] + (["dynamic"] if dynamic is not None else [])
    for version in versions:
        base = f"/{version}/"
        routes.update({f"{base}meta-data/{path}": body for path, body in metadata_tree(meta).items()})
        if key_listing is not None:
            routes[f"{base}meta-data/public-keys/"] = key_listing
        routes[f"{base}user-data"] = user_data
        if dynamic is not None:
            routes.update({f"{base}dynamic/{path}": body for path, body in metadata_tree(dynamic).items()})
        routes[base] = "\n".join(top)
    routes["/"] = "\n".join(versions)
    return routes


def _server(tmp: Path, name: str, data: Mapping[str, Any]) -> tuple[str, Path]:
    """Write the service's data file; return the guestfwd command that serves it, and its request log."""
    log = tmp / f"{name}-requests.jsonl"
    path = tmp / f"{name}-metadata.json"
    path.write_text(json.dumps({**data, "log": os.fspath(log)}, indent=1))
    return shlex.join([sys.executable, "-I", os.fspath(Path(mdserver.__file__)), os.fspath(path)]), log


GUEST_IP_LINK_LOCAL = "169.254.0.15"


def _ec2_uuid() -> str:
    """A system UUID as EC2 (Nitro) reports it: it starts with ``ec2``, and the serial equals it."""
    text = str(uuid.uuid4())
    return "ec2" + text[3:]


def _aws(cfg: seed_mod.SeedConfig, tmp: Path) -> Platform:
    fqdn = f"{cfg.hostname}.ec2.internal"
    mac_md = {"device-number": "0", "interface-id": "eni-0imgsmith", "local-hostname": fqdn,
              "local-ipv4s": GUEST_IP_LINK_LOCAL, "mac": GUEST_MAC, "owner-id": "123456789012",
              "subnet-id": "subnet-0imgsmith", "subnet-ipv4-cidr-block": "169.254.0.0/16",
              "vpc-id": "vpc-0imgsmith", "vpc-ipv4-cidr-block": "169.254.0.0/16"}
    meta = {
        "ami-id": "ami-0imgsmith0000000", "ami-launch-index": "0", "ami-manifest-path": "(unknown)",
        "block-device-mapping": {"ami": "/dev/xvda", "root": "/dev/xvda"},
        "hostname": fqdn, "instance-id": cfg.instance_id, "instance-type": "t3.micro",
        "local-hostname": fqdn, "local-ipv4": GUEST_IP_LINK_LOCAL, "mac": GUEST_MAC,
        "network": {"interfaces": {"macs": {GUEST_MAC: mac_md}}},
        "placement": {"availability-zone": "us-east-1a", "region": "us-east-1"},
        "public-keys": {"0": {"openssh-key": cfg.instance_key or ""}},
        "services": {"domain": "amazonaws.com", "partition": "aws"},
    }
    document = {"accountId": "123456789012", "architecture": "x86_64", "availabilityZone": "us-east-1a",
                "imageId": meta["ami-id"], "instanceId": cfg.instance_id, "instanceType": "t3.micro",
                "privateIp": GUEST_IP_LINK_LOCAL, "region": "us-east-1", "version": "2017-09-30"}
    routes = ec2_routes(meta, seed_mod.user_data(cfg), ("latest", "2021-03-23", "2018-09-24", "2016-09-02",
                                                        "2009-04-04"),
                        dynamic={"instance-identity": {"document": json.dumps(document, indent=2)}},
                        key_listing="0=imgsmith")
    token = {**_EC2_TOKEN, "value": secrets.token_urlsafe(32)}
    command, log = _server(tmp, "ec2", {"routes": routes, "token": token})
    net = UserNetwork(net="169.254.0.0/16", host="169.254.0.2", dhcpstart=GUEST_IP_LINK_LOCAL,
                      guestfwd=(GuestForward("169.254.169.254", 80, command),))
    system_uuid = _ec2_uuid()
    smbios = (f"type=1,manufacturer=Amazon EC2,product=t3.micro,version=Not Specified,serial={system_uuid},"
              f"uuid={system_uuid},family=Not Specified",
              f"type=3,manufacturer=Amazon EC2,asset={cfg.instance_id}")
    return Platform(None, net, smbios, log)


GUEST_IP_ALIYUN = "100.100.100.15"


def _aliyun(cfg: seed_mod.SeedConfig, tmp: Path) -> Platform:
    meta = {
        "hostname": cfg.hostname, "image-id": "imgsmith_boot_test.qcow2", "instance-id": cfg.instance_id,
        "mac": GUEST_MAC, "network-type": "vpc", "private-ipv4": GUEST_IP_ALIYUN,
        "public-keys": {"0": {"openssh-key": cfg.instance_key or ""}},
        "region-id": "cn-hangzhou", "serial-number": str(uuid.uuid4()), "vpc-id": "vpc-imgsmith",
        "vswitch-id": "vsw-imgsmith", "zone-id": "cn-hangzhou-i",
    }
    routes = ec2_routes(meta, seed_mod.user_data(cfg), ("latest", "2016-01-01"))
    command, log = _server(tmp, "aliyun", {"routes": routes})
    net = UserNetwork(net="100.100.100.0/24", host="100.100.100.2", dhcpstart=GUEST_IP_ALIYUN,
                      guestfwd=(GuestForward("100.100.100.200", 80, command),))
    smbios = ("type=1,manufacturer=Alibaba Cloud,product=Alibaba Cloud ECS,version=pc-i440fx-2.1,"
              f"serial={meta['serial-number']},uuid={meta['serial-number']}",)
    return Platform(None, net, smbios, log)


GCE_PROJECT = ("imgsmith-boot-test", "123456789012")
GCE_ZONE = "us-central1-a"


def _gcp(cfg: seed_mod.SeedConfig, tmp: Path) -> Platform:
    """GCE's metadata server: ``/computeMetadata/v1/`` (what cloud-init reads: the id, zone, hostname
    and the recursive ``attributes`` documents), answering only requests with ``Metadata-Flavor: Google``."""
    attributes = {"ssh-keys": f"cloudinit:{cfg.instance_key or ''}", "user-data": seed_mod.user_data(cfg)}
    project_attributes: dict[str, str] = {}
    meta = {
        "instance": {"id": cfg.instance_id, "zone": f"projects/{GCE_PROJECT[1]}/zones/{GCE_ZONE}",
                     "hostname": f"{cfg.hostname}.{GCE_ZONE}.c.{GCE_PROJECT[0]}.internal",
                     "machine-type": f"projects/{GCE_PROJECT[1]}/machineTypes/e2-small",
                     "attributes": attributes},
        "project": {"project-id": GCE_PROJECT[0], "numeric-project-id": GCE_PROJECT[1],
                    "attributes": project_attributes},
    }
    routes = metadata_tree(meta, "/computeMetadata/v1/")
    routes["/computeMetadata/v1/instance/attributes?recursive=true"] = json.dumps(attributes)
    routes["/computeMetadata/v1/project/attributes?recursive=true"] = json.dumps(project_attributes)
    routes["/computeMetadata/"] = "v1/"
    routes["/"] = "computeMetadata/"
    command, log = _server(tmp, "gce", {"routes": routes, "require_header": ["Metadata-Flavor", "Google"]})
    net = UserNetwork(net="169.254.0.0/16", host="169.254.0.2", dhcpstart=GUEST_IP_LINK_LOCAL,
                      guestfwd=(GuestForward("169.254.169.254", 80, command),))
    serial = f"GoogleCloud-{secrets.token_hex(16).upper()}"
    smbios = ("type=0,vendor=Google,version=Google,date=01/01/2011",
              f"type=1,manufacturer=Google,product=Google Compute Engine,version=,serial={serial},"
              f"uuid={uuid.uuid4()}")
    return Platform(None, net, smbios, log)


def _hex_id(prefix: str, length: int) -> Callable[[], str]:
    return lambda: prefix + secrets.token_hex(length)[:length]


DATASOURCES: Mapping[str, Datasource] = {d.cloud: d for d in (
    Datasource("nocloud", ("NoCloud", "NoCloudNet"), "nocloud", seed_mod.new_instance_id, _nocloud),
    Datasource("openstack", ("ConfigDrive",), "configdrive", lambda: str(uuid.uuid4()),
               _config_drive(_nova_smbios)),
    Datasource("tencent", ("ConfigDrive",), "configdrive", lambda: str(uuid.uuid4()),
               _config_drive(_tencent_smbios)),
    Datasource("aws", ("Ec2Local", "Ec2"), "aws", _hex_id("i-0", 16), _aws,
               metadata_service="169.254.169.254:80"),
    Datasource("aliyun", ("AliYun",), "aliyun", _hex_id("i-bp", 18), _aliyun,
               metadata_service="100.100.100.200:80"),
    Datasource("gcp", ("GCELocal", "GCE"), "gce", lambda: str(10**18 + secrets.randbelow(9 * 10**18)), _gcp,
               metadata_service="169.254.169.254:80", resolver=(("169.254.169.254", "metadata.google.internal"),)),
)}
"""Every datasource the boot test can emulate, by cloud name (``imgsmith test --cloud NAME``)."""


def datasource_for(cloud: str | None) -> Datasource:
    """The datasource of *cloud* (None: NoCloud); UsageError naming the choices otherwise."""
    name = (cloud or "nocloud").lower()
    if name in DATASOURCES:
        return DATASOURCES[name]
    if name == "gce":
        return DATASOURCES["gcp"]
    if name == "azure":
        raise UsageError("no azure datasource emulation: cloud-init's speaks the Wire Server protocol "
                         "(and reads an OVF provisioning ISO), which the boot test does not emulate",
                         hint=f"available: {', '.join(DATASOURCES)}")
    raise UsageError(f"unknown cloud {cloud!r} for the boot test", hint=f"available: {', '.join(DATASOURCES)}")
