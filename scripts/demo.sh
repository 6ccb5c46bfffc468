#!/usr/bin/env bash
# The main job on the embedded default (ONNX Runtime, CPU): a real face video → annotated
# mp4, per-frame JSONL records (landmarks, pose) and a summary, in out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
DATA=${REALTIME_PRN_DATA:-../shared}
VIDEO=${1:-$DATA/eval/videos/sadtalker_WDA_AlexandriaOcasioCortez_000.mp4}
.venv/bin/python -m realtime_prn run "$VIDEO" --output out/demo
echo "outputs in out/demo/"
