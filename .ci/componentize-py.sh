#!/usr/bin/env bash
# Installs componentize-py (once, in a virtualenv beside the build
# outputs) and prints the path of its executable. tests/python_plugin.rs
# builds examples/plugins/python-skip-refs with it, found through
# HOOKVAULT_COMPONENTIZE_PY:
#   export HOOKVAULT_COMPONENTIZE_PY="$(bash .ci/componentize-py.sh)"
set -euo pipefail
exec bash "$(dirname "$0")/venv-tool.sh" componentize-py-venv 'componentize-py==0.25.1' componentize-py
