#!/usr/bin/env bash
# Install the Kyutai engine (moshi on torch 2.13) into the venv; does nothing when it is there.
#
# moshi 0.2.13 pins torch<2.10 and numpy<2.3 but runs on torch 2.13 and numpy 2.x (the kyutai
# tests show it); letting pip resolve that pin downloads an old CUDA torch. So: torch first (the
# local CPU wheel in /opt/wheels where there is one, the CUDA build from the index elsewhere), then
# the `kyutai` extra (moshi's runtime imports), then moshi itself without its dependencies. The
# first two install with constraints.txt, so torch's own dependencies (filelock, ...) stay at the
# tested pins instead of the newest release.
# Usage: tests/kyutai_setup.sh [venv]   (default .venv; run from anywhere)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:-.venv}/bin/python"

if "$python" - >/dev/null 2>&1 <<'CHECK'
from importlib.metadata import version
assert version("moshi") == "0.2.13"
assert version("torch").split("+")[0] == "2.13.0"
import einops, huggingface_hub, moshi.models, safetensors, sentencepiece
CHECK
then
    exit 0
fi

find_links=()
if [ -d /opt/wheels ]; then
    find_links=(--find-links /opt/wheels)
fi
"$python" -m pip install --quiet --constraint constraints.txt "${find_links[@]}" "torch==2.13.0"
"$python" -m pip install --quiet --constraint constraints.txt "${find_links[@]}" -e ".[kyutai]"
"$python" -m pip install --quiet --no-deps "moshi==0.2.13"
