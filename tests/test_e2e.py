"""The README's main job end to end: examples/debian12.yaml bootstrapped, built, converted and booted.

This is the most valuable test in the suite: a real Debian 12 image from packages,
customized (password, timezone, file, apt package, SSH key), sysprepped, written as
qcow2 + streamOptimized VMDK + Azure VHD, and boot-tested with checks that prove each
customization took effect in the running guest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.boot, pytest.mark.xdist_group("boot")]

REPO = Path(__file__).parent.parent
IMGSMITH = [sys.executable, "-m", "imgsmith.cli.main"]


def test_debian12_example_builds_and_boots(tmp_path: Path) -> None:
    cache = Path(os.environ.get("IMGSMITH_TEST_BOOT_CACHE", "/var/tmp/imgsmith-test-cache"))
    env = {**os.environ, "IMGSMITH_CACHE": str(cache), "ROOT_PASSWORD": "e2e-" + os.urandom(6).hex()}
    out = tmp_path / "out"
    r = subprocess.run([*IMGSMITH, "build", str(REPO / "examples" / "debian12.yaml"), "-o", str(out), "--json"],
                       capture_output=True, text=True, env=env, check=False, timeout=3600)
    assert r.returncode == 0, r.stderr[-4000:]
    result = json.loads(r.stdout)
    assert result["boot_test"]["passed"] is True
    assert len(result["boot_test"]["checks"]) == 6
    # amd64's bootstrap default is hybrid: booted under SeaBIOS, then OVMF, each with every check
    boots = result["boot_test"]["by_firmware"]
    # OVMF without enrolled keys: the guest reads its SecureBoot variable as 0 (off), not missing
    assert [(b["boot"]["firmware"], b["boot"]["guest_uefi"], b["boot"]["guest_secure_boot"]) for b in boots] == [
        ("bios", False, None), ("uefi", True, False)]
    assert all(b["passed"] and len(b["checks"]) == 6 for b in boots)
    names = sorted(p.name for p in out.iterdir() if not p.name.endswith(".sha256"))
    assert names == ["SHA256SUMS", "debian12-demo-azure.vhd", "debian12-demo-streamOptimized.vmdk",
                     "debian12-demo.qcow2", "manifest.json"]
    manifest = json.loads((out / "manifest.json").read_text())
    guest = manifest["guest"]
    assert guest["distro"] == "debian" and guest["version"].startswith("12")
    assert any(p["name"] == "jq" for p in guest["packages"])
    assert any(k for k in guest["kernels"])
    vhd = next(o for o in manifest["outputs"] if o["path"].endswith(".vhd"))
    assert vhd["virtual_size"] % (1 << 20) == 0  # Azure: a whole number of MiB
    # The Azure output was judged for Azure after conversion: no error, as a fixed VHD.
    assert vhd["checks"]["cloud"] == "azure" and vhd["checks"]["errors"] == [], vhd["checks"]
    assert "azure.format-rules" not in {w["rule"] for w in vhd["checks"]["warnings"]}
    assert result["checks"]["debian12-demo-azure.vhd"] == vhd["checks"]
    assert env["ROOT_PASSWORD"] not in r.stdout + r.stderr + (out / "manifest.json").read_text()
