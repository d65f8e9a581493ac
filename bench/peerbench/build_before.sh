#!/usr/bin/env bash
# Build edgeproxy as it was at a commit (default 5171397: before the one-pipeline refactor of
# issue 10) into $PEERS_DIR/before-venv, so one peerbench run compares it with today's tree
# (target edgeproxy-before in targets.toml).
set -euo pipefail
: "${PEERS_DIR:?set PEERS_DIR}"
commit=${1:-5171397}
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
src=$(mktemp -d)
git -C "$repo" archive "$commit" | tar -x -C "$src"
python3 -m venv "$PEERS_DIR/before-venv"
"$PEERS_DIR/before-venv/bin/pip" install -q "$src"
echo "edgeproxy at $commit installed in $PEERS_DIR/before-venv"
