#!/usr/bin/env bash
# Packs what benchmarks/gpu_check.sh needs on a lent GPU host, which gets the checkout but not ../shared, at most
# 64 MiB a call, and a python3 without ultralytics or pycocotools (the device tool's README). Run here, in the
# repository, before the first device call:
#
#   bash benchmarks/gpu_pack.sh
#
# It writes three ignored folders (each listed in .git/info/exclude):
#   .whl         the wheels the host lacks (cp312, manylinux), from the package index pip reaches here
#   .gpu_assets  weights and images for every step but the text benchmark (~46 MiB)
#   .gpu_text    the text benchmark's model and data (~45 MiB): a second call, as both do not fit in one
# and prints the two device calls that use them (the first run, 2026-12-04, took 12 of the 15 device minutes).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
ASSETS=${AVALA_INFER_ASSETS:-$REPO/../shared/assets}
[[ -d $ASSETS/models && -d $ASSETS/data/coco128 ]] || { echo "no assets at $ASSETS (set AVALA_INFER_ASSETS)" >&2; exit 2; }
PY=${PYTHON:-python3}
[[ -z ${PYTHON:-} && -x .venv/bin/python ]] && PY=.venv/bin/python # the README's environment: its versions travel

mkdir -p .git/info
for folder in /.whl/ /.gpu_assets/ /.gpu_text/; do
    grep -qxF "$folder" .git/info/exclude 2>/dev/null || echo "$folder" >>.git/info/exclude
done

# the versions this checkout's environment runs (the host's own torch stays: 2.11 + CUDA 13.0 when first seen)
version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
rm -rf .whl && mkdir -p .whl
wheels=()
for name in ultralytics ultralytics-thop ultralytics-platform pycocotools; do
    wheels+=("$name==$(version "$name")")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${wheels[@]}"

rm -rf .gpu_assets && mkdir -p .gpu_assets/models .gpu_assets/images .gpu_assets/data/coco128/images/train2017 \
    .gpu_assets/data/coco128/object_detection/labels
cp "$ASSETS"/models/{yolo11n.pt,yolo11n-seg.pt,ppocrv4_det.onnx} .gpu_assets/models/
cp -r "$ASSETS"/data/coco128/images/val2017 .gpu_assets/data/coco128/images/
cp "$ASSETS"/data/coco128/object_detection/config.yaml .gpu_assets/data/coco128/object_detection/
cp -r "$ASSETS"/data/coco128/object_detection/labels/val2017 .gpu_assets/data/coco128/object_detection/labels/
# the train2017 images tests/test_postprocess_syncs.py batches: tests/test_batch_independence.py's BATCH_SET
for name in $("$PY" -c "from tests.test_batch_independence import BATCH_SET; print(*BATCH_SET)"); do
    cp "$ASSETS/data/coco128/images/train2017/$name" .gpu_assets/data/coco128/images/train2017/
done
cp -r "$ASSETS"/images/ultralytics "$ASSETS"/images/skimage .gpu_assets/images/

rm -rf .gpu_text && mkdir -p .gpu_text/models .gpu_text/data
cp -r "$ASSETS"/models/sentiment-minilm-sst2 .gpu_text/models/
cp -r "$ASSETS"/data/sst2 .gpu_text/data/
chmod -R u+w .whl .gpu_assets .gpu_text # the shared assets are read-only; the copies need not be

du -sh .whl .gpu_assets .gpu_text
install='python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit;'
cat <<EOF

Device calls (the tool's run; each within its 64 MiB):
1. carry [".whl", ".gpu_assets"], timeout_s 500:
   $install export AVALA_INFER_ASSETS=\$PWD/.gpu_assets GPU_CHECK_BUDGET_S=460; bash benchmarks/gpu_check.sh
2. at once after it (the machine stays warm 30 s), carry [".whl", ".gpu_text"], timeout_s 270 (the text passes run
   10,000 texts, and the compiled run compiles a graph per length bucket in its warm-up):
   $install export AVALA_INFER_ASSETS=\$PWD/.gpu_text GPU_CHECK_BUDGET_S=240 GPU_CHECK_ONLY=bench_text; bash benchmarks/gpu_check.sh
EOF
