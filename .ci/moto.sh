#!/usr/bin/env bash
# Installs moto's S3-compatible server (once, in a virtualenv beside the
# build outputs) and prints the path of its `moto_server` executable.
# The S3 backend tests find it through HOOKVAULT_MOTO_SERVER:
#   export HOOKVAULT_MOTO_SERVER="$(bash .ci/moto.sh)"
# Everything but the path goes to stderr.
set -euo pipefail

MOTO_VERSION=5.2.5

venv="${CARGO_TARGET_DIR:-$HOME/.cache/hookvault-target}/moto-venv"
server="$venv/bin/moto_server"
stamp="$venv/.moto-$MOTO_VERSION"

if [ ! -x "$server" ] || [ ! -e "$stamp" ]; then
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    pyver="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq >&2
    $sudo apt-get install -y -qq "python$pyver-venv" >&2
  fi
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "moto[server]==$MOTO_VERSION" >&2
  touch "$stamp"
fi

echo "$server"
