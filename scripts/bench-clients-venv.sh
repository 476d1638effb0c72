#!/usr/bin/env bash
# The stock clients bench/publish compares imgsmith with: python-openstackclient (`openstack image
# create`) and the AWS CLI (`aws s3 cp`), in their own virtual environment (they pin their own
# botocore/keystoneauth; kept apart from .venv and from the Glance server's venv). Idempotent:
# keyed by the pin below.
set -euo pipefail
PIN="python-openstackclient==10.5.0 awscli==1.46.2"
V="${IMGSMITH_BENCH_CLIENTS:-/var/tmp/imgsmith-bench-clients}"
stamp="$V/.imgsmith-bench-clients"
if [ -x "$V/bin/openstack" ] && [ -x "$V/bin/aws" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$PIN" ]; then
  exit 0
fi
echo "bench: creating the stock clients' venv in $V ($PIN)"
rm -rf "$V"
/usr/bin/python3 -m venv "$V"
"$V/bin/pip" install -q --upgrade pip
# shellcheck disable=SC2086  # the pin is a word list on purpose
"$V/bin/pip" install -q $PIN
echo "$PIN" > "$stamp"
