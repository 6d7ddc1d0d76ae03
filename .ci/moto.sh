#!/usr/bin/env bash
# Installs moto's S3-compatible server (once, in a virtualenv beside the
# build outputs) and prints the path of its `moto_server` executable.
# The S3 backend tests find it through HOOKVAULT_MOTO_SERVER:
#   export HOOKVAULT_MOTO_SERVER="$(bash .ci/moto.sh)"
set -euo pipefail
exec bash "$(dirname "$0")/venv-tool.sh" moto-venv 'moto[server]==5.2.5' moto_server
