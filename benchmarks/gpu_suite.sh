#!/usr/bin/env bash
# The device suite on one GPU (<= 8 minutes; see benchmarks/gpu_suite.py): from a fresh checkout, with the wheels the
# device machine lacks carried in .whl/ (the device tool's README says how to download them), e.g.
#   bash benchmarks/gpu_suite.sh --data shared_lucchi_crop --out "$OUT/gpu.json"
# A dry run of every step at tiny sizes on a CPU: bash benchmarks/gpu_suite.sh --device cpu --tiny --out /tmp/gpu.json
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" benchmarks/gpu_suite.py "$@"
