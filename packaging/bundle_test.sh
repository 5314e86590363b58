#!/usr/bin/env bash
# Checks a built bundle (default dist/glassbox): --version, the headless report, the GUI smoke test
# offscreen, and that the bundle holds none of what the spec excludes. Exit status 0 = all passed.
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE="${1:-dist/glassbox}"
EXE="$BUNDLE/glassbox"
[ -x "$EXE" ] || EXE="$BUNDLE/glassbox.exe"
[ -x "$EXE" ] || { echo "bundle_test: no executable in $BUNDLE (run make package)" >&2; exit 1; }
export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-offscreen}"
CONFIG="$(mktemp -d)"; trap 'rm -rf "$CONFIG"' EXIT
export GLASSBOX_SETTINGS_DIR="$CONFIG"   # leave the user's remembered layout alone

echo "== --version"
version="$("$EXE" --version)"
echo "$version"
[[ "$version" == glassbox\ * ]]

echo "== report --scenario xor-mlp --steps 20"
"$EXE" report --scenario xor-mlp --steps 20 --json "$CONFIG/report.json" > "$CONFIG/report.txt" 2>&1 \
  || { cat "$CONFIG/report.txt"; exit 1; }
tail -n 5 "$CONFIG/report.txt"
[ -s "$CONFIG/report.json" ] || { echo "bundle_test: report wrote no JSON" >&2; exit 1; }

echo "== --smoke-test 600 (long enough past its 1 s warm-up to time the GUI)"
"$EXE" --smoke-test 600 | tail -n 1

echo "== excluded from the bundle"
for unwanted in torch/include torch/test torch/bin/protoc PySide6/Qt/translations PySide6/Qt/qml _pytest pytest jinja2 PyQt5 PyQt6 PySide2; do
  if [ -e "$BUNDLE/_internal/$unwanted" ]; then echo "bundle_test: $unwanted is in the bundle" >&2; exit 1; fi
done
du -sh "$BUNDLE"
echo "bundle_test: all passed"
