#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 machine: system packages, then the venv.
# Called by `make demo` and `make test`; safe to run any number of times.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(
  libguestfs-tools python3-guestfs python3-venv qemu-utils qemu-system-x86 qemu-block-extra
  linux-image-amd64 xfsprogs e2fsprogs fdisk busybox-static mmdebstrap debootstrap
  bubblewrap fuse3 cloud-guest-utils
  docker-registry skopeo  # an OCI registry started on 127.0.0.1 by the remote cache and publish tests, and a client
  # UEFI and arm64 (issue 16): firmware for qemu, the arm64 system emulator, foreign-architecture
  # chroots through binfmt_misc, and the tools that write an ESP without mounting vfat
  ovmf qemu-efi-aarch64 qemu-system-arm qemu-user-static binfmt-support mtools dosfstools
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Foreign-architecture chroots (arm64 on amd64) need binfmt_misc mounted and qemu-aarch64
# registered; binfmt-support registers what qemu-user-static ships. Both steps are idempotent.
if [ "$(id -u)" -eq 0 ]; then
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null \
      || echo "setup: could not mount binfmt_misc (arm64 builds will not work)"
  fi
  if [ -e /proc/sys/fs/binfmt_misc/register ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || update-binfmts --import qemu-aarch64 >/dev/null 2>&1 \
      || echo "setup: could not register qemu-aarch64 with binfmt_misc"
  fi
fi

stamp=.venv/.imgsmith-setup
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: creating .venv (system site packages, for python3-guestfs)"
  /usr/bin/python3 -m venv --system-site-packages .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi
# OpenStack Glance for the publish tests, in its own venv (cached; keyed by its version pin).
scripts/glance-venv.sh
