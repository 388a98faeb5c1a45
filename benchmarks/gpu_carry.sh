#!/usr/bin/env bash
# What benchmarks/gpu_suite.sh needs on the device machine and the checkout does not hold, in folders git ignores:
# - .whl/: wheels (Python 3.12, x86-64 manylinux) of incasem-like's runtime dependencies, resolved here, less those
#   the machine's image holds (benchmarks/device_packages.txt) and those prediction and training never import
#   (NOT_IMPORTED: review, skeletons, graph databases; ~30 MB);
# - .lucchi/: a 165 x 256 x 256 crop of the Lucchi++ training volume (raw/ and mito/ TIFF slices, 11 MB) from
#   ../shared/data (its licence allows redistribution of crops, with attribution).
# The device tool carries at most 64 MiB with the checkout (~10 MB): this comes to ~45 MB. Then, there:
#   bash benchmarks/gpu_carry.sh                      # here, once
#   device run, carry [".whl", ".lucchi"]: bash benchmarks/gpu_suite.sh --data .lucchi --out "$OUT/gpu.json"
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
report="$(mktemp)"
"$python" -m pip install --dry-run --ignore-installed --quiet --report "$report" .
mkdir -p .whl
for folder in /.whl/ /.lucchi/; do
    grep -qx "$folder" .git/info/exclude 2>/dev/null || echo "$folder" >> .git/info/exclude
done
NOT_IMPORTED="neuroglancer google-apitools google-auth oauth2client httplib2 rsa pyasn1 pyasn1-modules cryptography cffi
    pycparser kimimaro dijkstra3d edt fill-voids xs3d osteoid psycopg2-binary pymongo dnspython"
"$python" - "$report" "$NOT_IMPORTED" <<'PY' | while read -r requirement; do
import json, sys
present = {line.strip() for line in open("benchmarks/device_packages.txt") if not line.startswith("#")}
present |= set(sys.argv[2].split())
for item in json.load(open(sys.argv[1]))["install"]:
    name = item["metadata"]["name"].lower().replace("_", "-").replace(".", "-")
    if name not in present and name != "incasem-like":
        print(f"{item['metadata']['name']}=={item['metadata']['version']}")
PY
    platforms=()
    for n in 17 24 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$requirement" \
        2>/dev/null || "$python" -m pip wheel --quiet --no-deps -w .whl "$requirement"  # a pure-Python sdist
done
rm -f "$report"
"$python" - <<'PY'
from pathlib import Path

import tifffile

source, target = Path("../shared/data/lucchi_pp_train"), Path(".lucchi")
for name in ("raw", "mito"):
    (target / name).mkdir(parents=True, exist_ok=True)
    for path in sorted((source / name).iterdir()):
        crop = tifffile.imread(path)[256:512, 384:640]
        tifffile.imwrite(target / name / path.name, crop, compression=None if name == "raw" else "zlib")
PY
echo "wheels in .whl: $(ls .whl | wc -l), $(du -sh .whl | cut -f1); Lucchi crop in .lucchi: $(du -sh .lucchi | cut -f1)"
