#!/usr/bin/env bash
# The CPU experiment (docs/results.md): train each variant on the embedded default model, evaluate it
# on held-out data, and collect the table into docs/results/cpu-small.json.
#   LIMIT=50 VARIANTS="ucb none uniform static" SEEDS="0" PARALLEL=2 scripts/reproduce_cpu.sh
# SEEDS="0 1" trains every variant once per seed (run.seed); seed 0 is named VARIANT, others VARIANT-seedN.
# Held out from training: HarmBench standard behaviours, XSTest safe prompts, ../shared/data benign
# instructions (training uses the package's own seeds). The static baseline trains on three templates
# that the template attack does not use. Every variant uses configs/cpu-small.yaml's budget
# (run.max_steps), unless STEPS overrides it. PARALLEL=2 runs two variants at a time with one torch
# thread each (on 2 cores that is faster than one job with two threads). Interrupted runs resume: the
# trainer continues from its last checkpoint and the evaluation from its last finished item.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
LIMIT=${LIMIT:-50}
VARIANTS=${VARIANTS:-"ucb none uniform static"}
SEEDS=${SEEDS:-0}
PARALLEL=${PARALLEL:-1}
OUT=${OUT:-runs/cpu-experiment}
SSP=${SSP:-.venv/bin/ssp}
if [[ $PARALLEL -gt 1 ]]; then THREADS=${THREADS:-1}; else THREADS=${THREADS:-$(nproc)}; fi
EVAL_TEMPLATES="--template roleplay_novelist --template prefix_injection --template research_purpose"
STATIC_TEMPLATES="[hypothetical_world,developer_mode,refusal_suppression]"
mkdir -p "$OUT"

evaluate() {  # evaluate NAME [ssp eval options...]
  local name=$1; shift
  "$SSP" eval --model embedded "$@" \
    --benchmark harmbench="$DATA/harmbench_behaviors_text_val.csv" \
    --benchmark xstest:safe="$DATA/xstest_prompts.csv" \
    --benchmark generic:benign="$DATA/benign_instructions.jsonl" \
    --benchmark-option benign.kind=benign --benchmark-option benign.prompt=instruction \
    --attack direct --attack self --attack template $EVAL_TEMPLATES --self-samples 2 \
    --judge heuristic --max-new-tokens 64 --attacker-max-new-tokens 64 --accept-truncated-attacks \
    --limit "$LIMIT" --threads "$THREADS" --quiet --output "$OUT/eval-$name"
}

variant() {  # train and evaluate one variant (NAME or NAME-seedN); its log goes to $OUT/NAME.log
  local name=$1 kind=${1%-seed*} seed=0 extra
  [[ $name == *-seed* ]] && seed=${name##*-seed}
  case $kind in
    ucb|none|uniform|priority) extra=(--set "replay.mode=$kind") ;;
    static) extra=(--set game.attacker=static --set "game.static_template_names=$STATIC_TEMPLATES") ;;
    *) echo "unknown variant $name" >&2; return 2 ;;
  esac
  extra+=(--set "run.seed=$seed")
  [[ -n ${STEPS:-} ]] && extra+=(--set "run.max_steps=$STEPS")
  local resume=()
  [[ -f $OUT/train-$name/config.yaml ]] && resume=(--resume)
  "$SSP" train -c configs/cpu-small.yaml -o "$OUT/train-$name" --quiet "${resume[@]}" \
    --set "run.threads=$THREADS" "${extra[@]}"
  evaluate "$name" --adapter "$OUT/train-$name"
}

names=(base)
for v in $VARIANTS; do for s in $SEEDS; do
  if [[ $s == 0 ]]; then names+=("$v"); else names+=("$v-seed$s"); fi
done; done
run_one() { if [[ $1 == base ]]; then evaluate base; else variant "$1"; fi > "$OUT/$1.log" 2>&1; }
running=0
for name in "${names[@]}"; do
  run_one "$name" &
  running=$((running + 1))
  if (( running >= PARALLEL )); then wait -n; running=$((running - 1)); fi
done
wait
collected=()
for name in "${names[@]}"; do collected+=("$name=$OUT/eval-$name:$OUT/train-$name"); done
.venv/bin/python scripts/cpu_results.py docs/results/cpu-small.json "${collected[@]}"
"$SSP" compare "$OUT"/eval-* --output "$OUT/compare.md" || true
