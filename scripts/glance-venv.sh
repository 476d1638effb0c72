#!/usr/bin/env bash
# The OpenStack Glance test server's own virtual environment (tests/publish: a real Glance on
# 127.0.0.1). Glance pins half of OpenStack, so it lives apart from .venv. Idempotent: keyed by
# the version pin below; a second run with the same pin does nothing.
set -euo pipefail
GLANCE_PIN="glance==33.0.0 gunicorn==27.0.1"
V="${IMGSMITH_GLANCE_VENV:-/var/tmp/imgsmith-glance-venv}"
stamp="$V/.imgsmith-glance"
if [ -x "$V/bin/gunicorn" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$GLANCE_PIN" ]; then
  exit 0
fi
echo "setup: creating the Glance test venv in $V ($GLANCE_PIN)"
# A venv cannot be moved (its scripts name their interpreter by absolute path): build in place,
# and write the stamp last, so an interrupted install is redone from scratch next time.
rm -rf "$V"
/usr/bin/python3 -m venv "$V"
"$V/bin/pip" install -q --upgrade pip
# shellcheck disable=SC2086  # the pin is a word list on purpose
"$V/bin/pip" install -q $GLANCE_PIN
echo "$GLANCE_PIN" > "$stamp"
