"""What cloud-init in the guest says it did: which datasource it used, and proof that it took effect.

After the SSH login the boot test runs :data:`PROBE` in the guest (as root, with
the guest's own python3, cloud-init's interpreter) and judges its report with
:func:`judge`. The report comes from cloud-init's own records, not from the
console:

* ``cloud-id`` and ``/run/cloud-init/status.json`` (``DataSourceConfigDrive
  [net,ver=2][source=/dev/vdb]``): the datasource cloud-init actually used;
* ``/run/cloud-init/cloud.cfg`` and ``ds-identify.log``: what ds-identify found;
* ``instance-data.json``: the instance-id, hostname, platform it read;
* ``/sys/class/dmi/id``: the platform the SMBIOS strings announced;
* the hostname, the user-data's proof file (:data:`.seed.USER_DATA_PROOF`), and
  which accounts' ``authorized_keys`` hold the datasource's instance key.

Then the test logs in with that key as the account that got it: the metadata's
key really opens the instance.
"""

from __future__ import annotations

import json
import re
import shlex
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .datasource import Datasource
from .seed import USER_DATA_PROOF, SeedConfig

__all__ = ["PROBE", "DatasourceVerdict", "judge", "login_user", "probe_command", "request_summary"]

PROBE = r'''
import json, os, pwd, socket, subprocess, sys
key, proof = sys.argv[1], sys.argv[2]
def text(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None
def load(path):
    try:
        return json.loads(text(path) or "null")
    except ValueError:
        return None
try:
    cloud_id = subprocess.run(["cloud-id"], capture_output=True, text=True, timeout=120).stdout.strip()
except (OSError, subprocess.SubprocessError):
    cloud_id = None
status = ((load("/run/cloud-init/status.json") or {}).get("v1")) or {}
errors = [e for stage in ("init-local", "init", "modules-config", "modules-final")
          for e in ((status.get(stage) or {}).get("errors") or [])]
inst = ((load("/run/cloud-init/instance-data.json") or {}).get("v1")) or {}
keys = ("cloud_name", "cloud_id", "platform", "subplatform", "instance_id", "local_hostname", "region",
        "availability_zone")
holders = []
for pw in pwd.getpwall():
    for line in (text(os.path.join(pw.pw_dir, ".ssh", "authorized_keys")) or "").splitlines():
        if key in line:
            holders.append({"user": pw.pw_name, "restricted": "command=" in line.split(key)[0]})
dmi = {name: (text("/sys/class/dmi/id/" + name) or "").strip()
       for name in ("sys_vendor", "product_name", "product_serial", "product_uuid", "chassis_asset_tag")}
log = (text("/run/cloud-init/ds-identify.log") or "").splitlines()
print(json.dumps({
    "cloud_id": cloud_id, "datasource": status.get("datasource"), "errors": errors,
    "instance": {k: inst.get(k) for k in keys}, "ds_identify": (text("/run/cloud-init/cloud.cfg") or "").strip(),
    "ds_identify_log": [l for l in log if l.startswith(("DMI_PRODUCT_NAME", "DMI_SYS_VENDOR", "DSLIST", "MODE",
                                                          "Found", "found", "No ds found"))][:20],
    "hostname": socket.gethostname(), "user_data_proof": (text(proof) or "").strip() or None,
    "key_holders": holders, "dmi": dmi}))
'''
"""Runs in the guest as ``sudo python3 -c PROBE KEY PROOF``; prints one JSON object."""


def probe_command(instance_key: str) -> str:
    """The shell command that runs :data:`PROBE` for the key body of *instance_key*."""
    body = instance_key.split()[1]
    return " ".join(["sudo", "-n", "python3", "-c", shlex.quote(PROBE), shlex.quote(body),
                     shlex.quote(USER_DATA_PROOF)])


def request_summary(log: Path | None) -> dict[str, Any] | None:
    """What the guest asked the emulated metadata service: counts by method and status, token use."""
    if log is None:
        return None
    entries = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    by = Counter(f"{e['method']} {e['status']}" for e in entries)
    return {"requests": len(entries), "by_method_status": dict(sorted(by.items())),
            "token_puts": sum(1 for e in entries if e["method"] == "PUT" and e["status"] == 200),
            "answered_without_token": sum(1 for e in entries if e["method"] == "GET" and e["status"] == 200
                                          and not e["token"])}


_DSNAME = re.compile(r"DataSource(\w+)")
_DS_LIST = re.compile(r"datasource_list:\s*\[\s*([^\],\s]+)")


@dataclass(frozen=True)
class DatasourceVerdict:
    """Which datasource cloud-init used and whether what it said took effect; ``findings`` say what did not."""

    cloud: str
    expected_datasource: tuple[str, ...]
    datasource: str | None
    datasource_detail: str | None
    cloud_id: str | None
    expected_cloud_id: str
    ds_identify: str | None
    hostname: str | None
    expected_hostname: str
    user_data_ran: bool
    instance_key_holders: tuple[str, ...]
    instance_key_login: str | None
    dmi: dict[str, str] = field(default_factory=dict)
    instance_data: dict[str, Any] = field(default_factory=dict)
    metadata_requests: dict[str, Any] | None = None
    cloud_init_errors: tuple[str, ...] = ()
    ds_identify_log: tuple[str, ...] = ()
    findings: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.findings


def login_user(report: Mapping[str, Any]) -> str | None:
    """The account to log in as with the instance key: one that got it without a forced command."""
    for holder in report.get("key_holders") or []:
        if not holder.get("restricted"):
            return str(holder["user"])
    return None


def _findings(ds: Datasource, cfg: SeedConfig, v: DatasourceVerdict) -> list[str]:
    found = []
    if v.datasource not in ds.dsnames:
        found.append(f"cloud-init used {v.datasource_detail or 'no datasource'}, not "
                     f"{' or '.join(ds.dsnames)}")
    if v.cloud_id != ds.cloud_id:
        found.append(f"cloud-id says {v.cloud_id!r}, expected {ds.cloud_id!r}")
    if v.hostname != v.expected_hostname:
        found.append(f"hostname is {v.hostname!r}, the datasource said {v.expected_hostname!r}")
    if not v.user_data_ran:
        found.append(f"user-data's runcmd did not write {cfg.instance_id} to {USER_DATA_PROOF}")
    if v.instance_key_login is None:
        found.append("no login with the datasource's SSH key" + (
            f" (it is only in {', '.join(v.instance_key_holders)}'s authorized_keys, behind a forced command)"
            if v.instance_key_holders else " (no account's authorized_keys holds it)"))
    if v.cloud_init_errors:
        found.append(f"cloud-init reported errors: {'; '.join(v.cloud_init_errors)[:300]}")
    requests = v.metadata_requests
    if ds.metadata_service and requests is not None:
        if not requests["requests"]:
            found.append(f"the guest never asked the metadata service at {ds.metadata_service}")
        if ds.cloud == "aws" and not requests["token_puts"]:
            found.append("no IMDSv2 token was requested (PUT /latest/api/token)")
        refused = requests["by_method_status"].get("GET 403", 0)
        if ds.cloud == "gcp" and refused:
            found.append(f"{refused} request(s) without the Metadata-Flavor: Google header (GCE refuses them)")
    return found


def judge(ds: Datasource, cfg: SeedConfig, report: Mapping[str, Any], *, key_login: str | None,
          requests: dict[str, Any] | None) -> DatasourceVerdict:
    """The verdict on one boot from the guest's *report* (:data:`PROBE`'s JSON)."""
    detail = report.get("datasource")
    match = _DSNAME.search(detail or "")
    listed = _DS_LIST.search(report.get("ds_identify") or "")
    verdict = DatasourceVerdict(
        cloud=ds.cloud, expected_datasource=ds.dsnames, datasource=match[1] if match else None,
        datasource_detail=detail, cloud_id=report.get("cloud_id"), expected_cloud_id=ds.cloud_id,
        ds_identify=listed[1] if listed else None, hostname=report.get("hostname"),
        expected_hostname=cfg.hostname, user_data_ran=report.get("user_data_proof") == cfg.instance_id,
        instance_key_holders=tuple(h["user"] for h in report.get("key_holders") or []),
        instance_key_login=key_login, dmi=dict(report.get("dmi") or {}),
        instance_data=dict(report.get("instance") or {}), metadata_requests=requests,
        cloud_init_errors=tuple(str(e) for e in report.get("errors") or []),
        ds_identify_log=tuple(report.get("ds_identify_log") or []))
    return replace(verdict, findings=tuple(_findings(ds, cfg, verdict)))

