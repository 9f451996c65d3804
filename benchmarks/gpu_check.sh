#!/usr/bin/env bash
# The one prepared script for a lent GPU host (issue 13, item 9): one H200, 16 cores, no internet, 15 minutes of
# device time in all and at most 10 minutes a command. It prints the machine and versions, runs the CUDA tests,
# then the side-by-side benchmarks (yolo11n and yolo11n-seg on coco128 repeated to >= 5,000 images, ultralytics in
# fp16; text and host overhead when the scripts can), each under its own `timeout` inside one overall budget, so
# one slow step cannot eat the others' time. A failed step is reported and the next one runs.
#
#   bash benchmarks/gpu_check.sh             # on the GPU host, from any folder; figures land in $OUT
#   bash benchmarks/gpu_check.sh --dry-run   # anywhere: checks the set-up, prints what each GPU step would run
#
# Through the device tool: two calls, which benchmarks/gpu_pack.sh prints after packing the assets and the wheels
# the host lacks (they must travel with the calls): the images' steps with a budget of 460 s, then the text steps
# with 240 s (GPU_CHECK_ONLY=bench_text), within the 15 minutes with the machine's start.
#
# Without nvidia-smi it runs dry by itself. $OUT (set by the device tool: a folder whose files come back) gets every
# JSON, each step's log and summary.txt; it defaults to a new folder under /tmp. Knobs (environment):
# GPU_CHECK_BUDGET_S (overall seconds, default 510: under 9 minutes), GPU_CHECK_MIN_IMAGES (default 5000),
# GPU_CHECK_REF_BATCHES (ultralytics batch sizes, default 32: its best on a GPU, where its loop is host-bound),
# GPU_CHECK_ROUNDS (timed rounds per benchmark, default 1), GPU_CHECK_ONLY (a regex of the step names to run, e.g.
# 'bench_text|bench_overhead'), PYTHON (the interpreter to use). The device tool sends the checkout but not ../shared:
# copy the assets the steps read into an ignored folder, carry it, and point AVALA_INFER_ASSETS at it.
set -u

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
START=$(date +%s)
BUDGET_S=${GPU_CHECK_BUDGET_S:-510}
MIN_IMAGES=${GPU_CHECK_MIN_IMAGES:-5000}
REF_BATCHES=${GPU_CHECK_REF_BATCHES:-32}
ROUNDS=${GPU_CHECK_ROUNDS:-1}
ONLY=${GPU_CHECK_ONLY:-} # a regex of step names: only those run (a second call for what the first could not carry)
OUT=${OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"

export YOLO_OFFLINE=1 CI=true PYTHONUNBUFFERED=1
export AVALA_INFER_ASSETS=${AVALA_INFER_ASSETS:-$REPO/../shared/assets}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" # the package without an install; benchmarks/ import it
# the assets' models folder is a model folder: its .pt files load without --trust-weights (the SAM chain's detector)
export AVALA_INFER_MODELS=${AVALA_INFER_MODELS:-$AVALA_INFER_ASSETS/models}

DRY=0
[[ ${1:-} == --dry-run ]] && DRY=1
if ! command -v nvidia-smi >/dev/null 2>&1; then
    DRY=1
    echo "no nvidia-smi here: a dry run (the GPU steps print what they would run)"
fi

note() { echo "$*" | tee -a "$SUMMARY"; }
elapsed() { echo $(($(date +%s) - START)); }

# step NAME LIMIT_S GPU|CPU COMMAND...: runs COMMAND under `timeout` (LIMIT_S, cut to what the budget has left),
# its output in $OUT/NAME.log (the last lines echoed), and notes the outcome; a GPU step only prints in a dry run
step() {
    local name=$1 limit=$2 kind=$3
    shift 3
    if [[ -n $ONLY && ! $name =~ ^($ONLY)$ ]]; then
        note "SKIPPED  $name: not in GPU_CHECK_ONLY"
        return 0
    fi
    local left=$((BUDGET_S - $(elapsed) - 5))
    if ((left < 20)); then
        note "SKIPPED  $name: the budget of ${BUDGET_S}s is spent"
        return 0
    fi
    ((limit > left)) && limit=$left
    if ((DRY)) && [[ $kind == GPU ]]; then
        note "DRY      $name (timeout ${limit}s): $*"
        return 0
    fi
    echo "=== $name (timeout ${limit}s, at $(elapsed)s): $*"
    local t0 rc
    t0=$(date +%s)
    timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    tail -n 25 "$OUT/$name.log"
    local took=$(($(date +%s) - t0))
    case $rc in
        0) note "OK       $name (${took}s)" ;;
        124 | 137) note "TIMEOUT  $name after ${took}s (limit ${limit}s): see $name.log" ;;
        *) note "FAILED   $name (exit $rc, ${took}s): see $name.log" ;;
    esac
    return 0
}

# ------------------------------------------------------------------------------------------------ the machine
echo "=== machine"
{
    date -u
    nproc
    free -g | head -2
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    fi
} 2>&1 | tee "$OUT/machine.txt"

# ------------------------------------------------------------------------------------------------ python
# An interpreter that already has the stack is used as it is (a venv carried from elsewhere cannot be: it is too
# large to travel). Else one with torch gets a venv on top of its packages and `pip install -e .[test]`, tried
# once, quickly (the host may reach no index): the outcome is in the summary either way.
MODULES="torch torchvision cv2 yaml click PIL ultralytics pytest avala_infer"
has_stack() { # found without importing (imports are slow): the import below proves the chosen one
    "$1" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))" $MODULES \
        >/dev/null 2>&1
}
PY=""
for candidate in "${PYTHON:-}" "$REPO/.venv/bin/python" python3.11 python3 python; do
    if [[ -n $candidate ]] && command -v "$candidate" >/dev/null 2>&1 && has_stack "$candidate"; then
        PY=$(command -v "$candidate")
        break
    fi
done
if [[ -z $PY ]]; then
    for candidate in python3.11 python3 python; do
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c "import torch" >/dev/null 2>&1; then
            venv=(-m venv --system-site-packages /tmp/venv) # on top of its torch
        elif [[ $candidate == python3.11 ]]; then
            venv=(-m venv /tmp/venv) # torch comes with .[test], if an index is reachable
        else
            continue
        fi
        if ((DRY)); then
            note "DRY      python: would run $candidate ${venv[*]}, then pip install -e .[test]"
        else
            "$candidate" "${venv[@]}" &&
                step pip-install 200 CPU /tmp/venv/bin/python -m pip install --retries 0 --timeout 15 -e "$REPO[test]"
        fi
        PY=/tmp/venv/bin/python
        break
    done
fi
VERSIONS='import sys, torch, torchvision, cv2, yaml, click, PIL, ultralytics, pytest, avala_infer
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "torch sees no GPU"
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (cuda {torch.version.cuda}), torchvision",
      f"{torchvision.__version__}, ultralytics {ultralytics.__version__}: {gpu}")
for name in ("onnxruntime", "transformers"):
    try:
        module = __import__(name)
        print(f"{name} {module.__version__}", *getattr(module, "get_available_providers", list)())
    except ImportError:
        print(f"MISSING  {name}: the tests and benchmarks that need it fail")'
if [[ -n $PY ]] && versions=$("$PY" -c "$VERSIONS" 2>&1); then
    note "python   $PY: $versions"
else
    note "FAILED   python: no interpreter imports $MODULES (${versions:-none found}); the steps below fail"
    PY=${PY:-python3}
fi

# ------------------------------------------------------------------------------------------------ the images
# coco128 val2017 repeated through symlinks (both tools read each link as its own image) up to MIN_IMAGES
COCO=$AVALA_INFER_ASSETS/data/coco128/images/val2017
IMAGES=/tmp/gpu_check_images
COPIES=/tmp/gpu_check_copies
rm -rf "$IMAGES" && mkdir -p "$IMAGES"
shopt -s nullglob
originals=("$COCO"/*.jpg)
if ((${#originals[@]} == 0)); then
    note "FAILED   images: no JPEGs in $COCO (set AVALA_INFER_ASSETS)"
else
    # a subfolder of links per copy (one `ln` each); bench_detection.py flattens subfolders into its own staging
    # folder of links, named apart, which both tools then read
    copies=$(((MIN_IMAGES + ${#originals[@]} - 1) / ${#originals[@]}))
    for ((r = 0; r < copies; r++)); do
        printf -v copy "%s/%03d" "$IMAGES" "$r"
        mkdir -p "$copy" && ln -s "${originals[@]}" "$copy/"
    done
    note "images   $(find "$IMAGES" -type l | wc -l) links in $IMAGES: $copies copies of the ${#originals[@]} of $COCO"
    # the CLI reads a file linked twice once (by its real path): for `label`, copies (~800 MB; not in a dry run)
    rm -rf "$COPIES" && mkdir -p "$COPIES"
    for ((r = 0; r < copies * !DRY; r++)); do
        printf -v copy "%s/%03d" "$COPIES" "$r"
        mkdir -p "$copy" && cp "${originals[@]}" "$copy/"
    done
fi

# ------------------------------------------------------------------------------------------------ the steps
MODELS=$AVALA_INFER_ASSETS/models
# the benchmark options below, parsed before any GPU time goes on them (a renamed option fails here, in seconds)
step bench-options 60 CPU "$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); import bench_detection as b
b.parse_args(['--device', 'cuda', '--ref-half', '--ref-batches', '$REF_BATCHES', '--rounds', '$ROUNDS', '--json', 'x'])"
# the GPU tests only (the rest run in CI); onnxruntime's CUDA tests where onnxruntime-gpu is there (a plain
# onnxruntime only shows the refusal, which test_cuda.py checks)
CUDA_TESTS=(tests/test_cuda.py tests/test_runtime_options.py::test_cudnn_autotune_on_for_square_batches_on_cuda
    tests/test_device_decode.py::test_on_cuda_the_detections_and_map_match_the_cpu_decoded_run
    tests/test_device_decode.py::test_nvjpeg_pictures_stay_close_to_cv2s)
ORT_CUDA=0
"$PY" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" \
    >/dev/null 2>&1 && ORT_CUDA=1
((ORT_CUDA)) && CUDA_TESTS+=(tests/test_onnx_binding.py::test_cuda_batches_stay_on_the_device)
bench_detection() { # NAME LIMIT WEIGHTS [OPTION...]
    local name=$1 limit=$2 weights=$3
    shift 3
    step "$name" "$limit" GPU "$PY" benchmarks/bench_detection.py --weights "$MODELS/$weights" --images "$IMAGES" \
        --device cuda --ref-batches "$REF_BATCHES" --rounds "$ROUNDS" --json "$OUT/$name.json" "$@"
}
# the steps by importance, so the budget cuts the least important: the detection figure first
bench_detection bench_detection_yolo11n 150 yolo11n.pt --ref-half
# the lead from the first GPU run (0.66 of the ceiling, decode-only 2,252 img/s on 8 loader threads of 16 cores):
# the engine now starts cores - 2 loader threads on a GPU (14 there); ours at the engine's GPU batch (64) with them,
# the ceilings measured with them too (the step above: batch 32 at the same default)
bench_detection bench_detection_yolo11n_b64 150 yolo11n.pt --ref-half --ours-batch 64
# CI=false: an asset that did not travel (the device tool takes 64 MiB) is a skip, listed by -ra, not a failure
step cuda-tests 150 GPU env CI=false "$PY" -m pytest -q -s -ra -p no:cacheprovider "${CUDA_TESTS[@]}"
bench_detection bench_detection_yolo11n-seg 200 yolo11n-seg.pt --ref-half # masks: both sides slower
# --decode gpu (nvJPEG in the collate stage) against the default CPU decode, end to end as a user runs it: the CLI,
# the same images, JSONL out; each run's last line gives its items/s
for decode in cpu gpu; do
    step "label_decode_$decode" 45 GPU "$PY" -m avala_infer.cli label "$COPIES" --model "$MODELS/yolo11n.pt" \
        --device cuda --decode "$decode" --format jsonl --trust-weights --overwrite --out "/tmp/gpu_check_label_$decode"
done
if ((ORT_CUDA)); then
    bench_detection bench_detection_yolo11n_onnx 120 yolo11n.onnx
else
    note "SKIPPED  bench_detection_yolo11n_onnx: this onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu)"
fi
# issue 15: the detector -> SAM chain (tiny SAM at SAM's 1024 geometry) against the loop one image at a time, both
# on the GPU, in-process, over one copy of the 128 images (the reference loop is slow)
if "$PY" benchmarks/bench_sam_chain.py --help 2>/dev/null | grep -q -- --device; then
    step bench_sam_chain 75 GPU "$PY" benchmarks/bench_sam_chain.py --device cuda --limit 128 --images "$IMAGES/000" \
        --rounds "$ROUNDS" --json "$OUT/bench_sam_chain.json"
else
    note "SKIPPED  bench_sam_chain: benchmarks/bench_sam_chain.py has no --device option"
fi

if [[ ! -d $MODELS/sentiment-minilm-sst2 ]]; then
    note "SKIPPED  bench_text: no $MODELS/sentiment-minilm-sst2 (the text models did not travel)"
elif "$PY" benchmarks/bench_text.py --help 2>/dev/null | grep -q -- --device; then
    task=all && [[ ! -d $MODELS/ner-minilm-conll03 ]] && task=classification # the NER model did not travel
    step bench_text 240 GPU "$PY" benchmarks/bench_text.py --device cuda --task "$task" --rounds "$ROUNDS" \
        --json "$OUT/bench_text.json"
    # the spec's torch_compile on the text model: CUDA graphs, one per length bucket (compiled in the warm-up)
    step bench_text_compiled 240 GPU "$PY" benchmarks/bench_text.py --device cuda --task classification \
        --torch-compile reduce-overhead --rounds "$ROUNDS" --json "$OUT/bench_text_compiled.json"
else
    note "SKIPPED  bench_text: benchmarks/bench_text.py has no --device option yet (both sides run on the CPU)"
fi
if [[ -f benchmarks/bench_overhead.py ]]; then
    extra=()
    "$PY" benchmarks/bench_overhead.py --help 2>/dev/null | grep -q -- --rounds && extra+=(--rounds "$ROUNDS")
    # detection and segmentation (their weights travel with the images), staged as a GPU engine runs: the host's
    # own overhead per image with a null forward, on this host's cores; not the writers (a CPU target, measured
    # where the project is built: on the first GPU run they took the step past its time)
    step bench_overhead 90 GPU "$PY" benchmarks/bench_overhead.py ${extra[@]+"${extra[@]}"} --tasks detect,segment \
        --staged --no-writers --json "$OUT/bench_overhead.json"
else
    note "SKIPPED  bench_overhead: no benchmarks/bench_overhead.py"
fi

# ------------------------------------------------------------------------------------------------ the figures
# each detection JSON read back: ours against ultralytics' best batch, and against the ceiling min(decode, model)
if ((!DRY)); then
    "$PY" - "$OUT" <<'EOF' 2>&1 | tee -a "$SUMMARY"
import json, sys
from pathlib import Path

for path in sorted(Path(sys.argv[1]).glob("bench_detection_*.json")):
    r = json.loads(path.read_text())
    ours, refs = r["results"][-1], r["results"][:-1]
    best = max(refs, key=lambda s: s["median"])
    decode, model = r["ceilings"]["decode_only"]["median"], r["ceilings"]["model_only"]["median"]
    ceiling = min(decode, model)
    print(
        f"{path.stem}: {r['images']} images on {r['device']}: ours {ours['median']:.0f} img/s (batch {ours['batch']}), "
        f"ultralytics {best['median']:.0f} img/s (batch {best['batch']}, half {r['ref_half']}): {r['ratio']:.2f}x; "
        f"decode-only {decode:.0f}, model-only {model:.0f}: ours = {ours['median'] / ceiling:.2f} of the ceiling"
    )
EOF
fi
note "done in $(elapsed)s of a ${BUDGET_S}s budget; logs and JSON in $OUT"
# the device tool brings back at most 8 files: the summary, the machine and one archive of the rest
if ((!DRY)); then
    (cd "$OUT" && find . -maxdepth 1 -type f ! -name summary.txt ! -name machine.txt ! -name gpu_check.tgz -printf '%P\n' |
        tar czf gpu_check.tgz -T - --remove-files) && echo "logs and JSON packed into $OUT/gpu_check.tgz"
fi
echo "=== summary"
cat "$SUMMARY"
