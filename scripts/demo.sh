#!/usr/bin/env bash
# The README's main job: build examples/debian12.yaml end to end — bootstrap a Debian 12
# cloud image from packages (cached after the first run), customize it, sysprep it,
# convert it to qcow2 + streamOptimized VMDK + fixed VHD (Azure), and boot-test it under
# SeaBIOS and under OVMF (the bootstrap is hybrid BIOS+UEFI, like Debian's cloud images).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

if [ -z "${ROOT_PASSWORD:-}" ]; then
  # A throw-away password for the demo; it never appears on a command line or in a log.
  ROOT_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  export ROOT_PASSWORD
fi

echo "== imgsmith doctor"
imgsmith doctor --no-launch
echo
echo "== imgsmith build examples/debian12.yaml (first run bootstraps Debian from packages: a few minutes)"
imgsmith build examples/debian12.yaml -o demo-out/debian12 "$@"
echo
echo "== the result"
ls -l demo-out/debian12
python3 - <<'PY'
import json
m = json.load(open("demo-out/debian12/manifest.json"))
g = m.get("guest") or {}
print(f"guest: {g.get('product')} kernel {', '.join(g.get('kernels', []))}, {len(g.get('packages', []))} packages")
for o in m["outputs"]:
    print(f"output: {o['path']}  {o['format']}  virtual {o['virtual_size']:,} B  file {o['file_size']:,} B")
bt = m.get("boot_test")
for v in (bt.get("by_firmware") or [bt]) if bt else []:
    fw = (v.get("boot") or {}).get("firmware", "?")
    print(f"boot test ({fw}): {'passed' if v.get('passed') else 'FAILED'}; stages: {v.get('stages')}")
PY
echo
echo "== a second build with nothing changed"
time imgsmith build examples/debian12.yaml -o demo-out/debian12
echo
echo "== a rebuild after changing one step (the hostname): only that layer runs, and the outputs"
echo "   are patched where the change landed instead of converted again (boot test skipped)"
time imgsmith build examples/debian12.yaml -o demo-out/debian12 --no-test \
  --set layers.1.steps.2.hostname=imgsmith-demo-2
