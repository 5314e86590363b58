#!/usr/bin/env bash
# Renders the main window for every scenario to screenshots/*.png (offscreen Qt, no display needed).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/screenshots.py screenshots "$@"
