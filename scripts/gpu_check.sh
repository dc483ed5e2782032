#!/usr/bin/env bash
# The prepared GPU check: on a machine with one CUDA GPU it runs, in under 8 minutes,
#   1. the invariance tests on CUDA, with SDPA and with FlexAttention;
#   2. bench.perf on ViT-B/16 in bf16: padded vs packed vs grouped (and flex), with MFU;
#   3. a short default-sized experiment on CUDA (bf16 autocast, compiled encoder, bucketed shapes);
# and writes OUT/summary.md with what each step printed last and how long it took.
#
#   bash scripts/gpu_check.sh [OUT]      (OUT defaults to results/gpu_check)
#
# Each step has its own time limit (about 7 minutes in all), so one slow step cannot eat the others'
# time; a step that fails or times out is reported as such and the script goes on. Exit status: 0
# if every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/gpu_check}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.md"
status=0

step() {   # step NAME LIMIT_S COMMAND...: run it, log it, add its last lines to the summary
    local name=$1 limit=$2; shift 2
    local log="$OUT/$name.log" start=$SECONDS rc
    echo "== $name: $*" >&2
    timeout "$limit" "$@" >"$log" 2>&1; rc=$?
    local took=$((SECONDS - start))
    { echo "## $name"; echo; echo "\`$*\`: exit $rc in ${took} s (limit ${limit} s)"; echo; echo '```';
      tail -n "${TAIL:-25}" "$log"; echo '```'; echo; } >>"$SUMMARY"
    [ "$rc" -eq 0 ] || status=1
}

{ echo "# GPU check"; echo; echo "- commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)";
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)";
  echo "- device: $($PY -c 'import torch; print(torch.cuda.get_device_name(0), "| torch", torch.__version__)' 2>&1)";
  echo; } >"$SUMMARY"

# 1. The invariance suite of every variant and pool on the GPU, once per attention kernel:
#    packed == alone, batch-mates / order / max_seq_len, shuffled tokens, padding, token dropping,
#    the transposed twin, per-image augmentation draws, flex == sdpa.
INVARIANCE="packed_equals_alone or tokens_shuffled or padding_content or token_dropping or transposed_twin"
INVARIANCE="$INVARIANCE or own_draw or flex_attention_matches or cls_with_bucketed"
for attention in sdpa flex; do
    NAVIT_TEST_DEVICE=cuda NAVIT_TEST_ATTENTION=$attention TAIL=8 \
        step "invariance_$attention" 100 $PY -m pytest -q -p no:cacheprovider tests/test_model.py -k "$INVARIANCE"
done

# 2. ViT-B/16 in bf16 on the standard mixed batch: packed vs padded vs grouped vs flex, MFU.
TAIL=20 step perf_vit_b16 110 $PY -m bench.perf --device cuda --dtype bf16 --compile \
    --dim 768 --depth 12 --heads 12 --images 256 --steps 5 --warmup 2 --skip-data --json "$OUT/perf_vit_b16.json"

# 3. The default experiment's model and batches on CUDA: one seed, its three tasks, one variant of
#    each kind (additive, rotary, attention bias).
TAIL=30 step default_cuda 130 $PY run_all.py --config experiments/default.yaml --device cuda --seeds 0 \
    --variants factorized_frac_learned,rope_axial,swinv2_cpb --out "$OUT/default_cuda"

echo "summary: $SUMMARY" >&2
exit $status
