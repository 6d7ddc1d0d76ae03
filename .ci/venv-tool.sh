#!/usr/bin/env bash
# Installs a Python tool from PyPI (once, in its own virtualenv beside the
# build outputs) and prints the path of its executable:
#   bash .ci/venv-tool.sh VENV-NAME 'PACKAGE==VERSION' EXECUTABLE
# Everything but the path goes to stderr.
set -euo pipefail

name="$1"
requirement="$2"
executable="$3"

venv="${CARGO_TARGET_DIR:-$HOME/.cache/hookvault-target}/$name"
tool="$venv/bin/$executable"
stamp="$venv/.installed-$(printf '%s' "$requirement" | tr -c 'A-Za-z0-9.=_-' '_')"

if [ ! -x "$tool" ] || [ ! -e "$stamp" ]; then
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
    "$requirement" >&2
  touch "$stamp"
fi

echo "$tool"
