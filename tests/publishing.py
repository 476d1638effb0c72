"""A real build to publish, made by `imgsmith build` itself (no layers: no guest session, a second or two).

The source is a raw disk with a GPT holding only an EFI system partition (so the firmware
reads as UEFI) and incompressible data, so uploads move real bytes. ``with_guest`` adds the
``guest`` facts a build with layers records (distro, version, arch, packages), as the
pipeline writes them, for the tests of the properties derived from them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

IMGSMITH = [sys.executable, "-m", "imgsmith.cli.main"]


def run(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600,
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IMGSMITH, *args], capture_output=True, text=True, cwd=cwd, check=False, timeout=timeout,
                          env={**os.environ, "IMGSMITH_CACHE": os.fspath(cwd / "cache"), **(env or {})})


UEFI = "label: gpt\n,8M,U\n,,L\n"  # an EFI system partition only: boots with UEFI
HYBRID = "label: gpt\n,1M,21686148-6449-6E6F-744E-656564454649\n,8M,U\n,,L\n"  # + a BIOS boot partition


def make_disk(path: Path, mib: int = 24, table: str = UEFI) -> Path:
    subprocess.run(["truncate", "-s", f"{mib}M", path], check=True)
    subprocess.run(["sfdisk", "-q", path], input=table.encode(), check=True)
    with path.open("r+b") as f:  # incompressible bytes in the second partition
        f.seek(10 << 20)
        f.write(os.urandom((mib - 12) << 20))
    return path


DEFINITION = """\
version: 1
name: pubtest
source: {{file: disk.raw, format: raw}}
outputs:
  - {{format: qcow2, name: pubtest.qcow2}}
  - {{format: raw, name: pubtest.raw}}
  - {{format: vmdk, name: pubtest.vmdk}}
publish:
{publish}
"""


def build(tmp: Path, publish: str, *, mib: int = 24, table: str = UEFI) -> Path:
    """``imgsmith build`` of the test definition with *publish* (YAML list items); the output directory."""
    tmp.mkdir(parents=True, exist_ok=True)
    if not (tmp / "disk.raw").exists():
        make_disk(tmp / "disk.raw", mib, table)
    (tmp / "image.yaml").write_text(DEFINITION.format(publish=publish))
    r = run("build", "image.yaml", "-o", "out", "-q", cwd=tmp)
    assert r.returncode == 0, r.stderr
    return tmp / "out"


def with_guest(out: Path, **facts: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    manifest["guest"] = {"distro": "debian", "version": "12.0", "product": "Debian GNU/Linux 12", "arch": "x86_64",
                         "kernels": ["6.1.0-18-amd64"], "packages": [{"name": "qemu-guest-agent",
                                                                       "version": "1:7.2"}], **facts}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
