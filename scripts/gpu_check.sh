#!/usr/bin/env bash
# One-GPU trainer check (see scripts/gpu_check.py): stage 1 + stage 2, ~50 steps each, on a
# random-init ~0.8B LLaVA in bf16; prints samples/s, tokens/s, peak memory and MFU per stage as
# `GPU_CHECK {json}` lines. Takes about 5 minutes on one H100; `--cpu-smoke` checks it on a CPU.
#
# The machine needs torch, transformers, pillow, numpy, pyyaml and tqdm. Beam is not needed, and
# the package need not be installed. Without network, bring webdataset as wheels, prepared where
# there is one:  pip download --no-deps -d .wheels webdataset==1.0.2 braceexpand==0.1.7
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c "import webdataset" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet --no-index --find-links "${WHEELS:-.wheels}" webdataset braceexpand
fi
export TOKENIZERS_PARALLELISM=false
exec "$PYTHON" scripts/gpu_check.py "$@"
