#!/usr/bin/env bash
# The device suite on one GPU (<= 8 minutes; see benchmarks/gpu_suite.py): from a fresh checkout, with the wheels the
# device machine lacks and a Lucchi++ crop carried in .whl/ and .lucchi/ (made by benchmarks/gpu_carry.sh), e.g.
#   bash benchmarks/gpu_suite.sh --data .lucchi --out "$OUT/gpu.json"
# A dry run of every step at tiny sizes on a CPU: bash benchmarks/gpu_suite.sh --device cpu --tiny --out /tmp/gpu.json
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
# the wheels benchmarks/gpu_carry.sh put in .whl/, where this Python lacks the product's dependencies
if ! "$python" -c "import daisy, gunpowder, zarr" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$python" benchmarks/gpu_suite.py "$@"
