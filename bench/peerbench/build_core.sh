#!/usr/bin/env bash
# Build the pre-billing core gateway (commit 730e09a) into $PEERS_DIR/core-venv, so one peerbench
# run can compare billing on against the core (issue 4's "within 0.2 ms of the core's p50").
set -euo pipefail
: "${PEERS_DIR:?set PEERS_DIR}"
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
src=$(mktemp -d)
git -C "$repo" archive 730e09a | tar -x -C "$src"
# that commit predates the router module; take today's _fastroute files so it builds
git -C "$repo" show HEAD:edgeproxy/_fastroute.pyx > "$src/edgeproxy/_fastroute.pyx"
git -C "$repo" show HEAD:edgeproxy/_fastroute.pxd > "$src/edgeproxy/_fastroute.pxd"
git -C "$repo" show HEAD:edgeproxy/_fastroute_py.py > "$src/edgeproxy/_fastroute_py.py"
git -C "$repo" show HEAD:edgeproxy/_fastroute.pyi > "$src/edgeproxy/_fastroute.pyi"
mkdir -p "$src/edgeproxy/simulate" && git -C "$repo" archive HEAD edgeproxy/simulate | tar -x -C "$src"
# that commit's packaging listed only the top package; install its subpackages too
sed -i 's/^\[tool.setuptools\]$/[tool.setuptools.packages.find]/; s/^packages = \["edgeproxy"\]$/include = ["edgeproxy*"]/' "$src/pyproject.toml"
python3 -m venv "$PEERS_DIR/core-venv"
"$PEERS_DIR/core-venv/bin/pip" install -q "$src"
echo "core gateway installed in $PEERS_DIR/core-venv"
