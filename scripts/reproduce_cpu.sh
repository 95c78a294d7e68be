#!/usr/bin/env bash
# The CPU experiment (docs/results.md): train each variant on the embedded default model, evaluate it
# on held-out data, and collect the table into docs/results/cpu-small.json.
#   STEPS=40 LIMIT=50 VARIANTS="ucb none uniform static" scripts/reproduce_cpu.sh
# Held out from training: HarmBench standard behaviours, XSTest safe prompts, ../shared/data benign
# instructions (training uses the package's own seeds). The static baseline trains on three templates
# that the template attack does not use.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
STEPS=${STEPS:-40}
LIMIT=${LIMIT:-50}
VARIANTS=${VARIANTS:-"ucb none uniform static"}
OUT=${OUT:-runs/cpu-experiment}
SSP=${SSP:-.venv/bin/ssp}
EVAL_TEMPLATES="--template roleplay_novelist --template prefix_injection --template research_purpose"
STATIC_TEMPLATES="[hypothetical_world,developer_mode,refusal_suppression]"

evaluate() {  # evaluate NAME [ssp eval options...]
  local name=$1; shift
  "$SSP" eval --model embedded "$@" \
    --benchmark harmbench="$DATA/harmbench_behaviors_text_val.csv" \
    --benchmark xstest:safe="$DATA/xstest_prompts.csv" \
    --benchmark generic:benign="$DATA/benign_instructions.jsonl" \
    --benchmark-option benign.kind=benign --benchmark-option benign.prompt=instruction \
    --attack direct --attack self --attack template $EVAL_TEMPLATES --self-samples 2 \
    --judge heuristic --max-new-tokens 64 --attacker-max-new-tokens 64 --accept-truncated-attacks \
    --limit "$LIMIT" --quiet --output "$OUT/eval-$name"
}

evaluate base
collected=("base=$OUT/eval-base")
for variant in $VARIANTS; do
  case $variant in
    ucb|none|uniform|priority) extra=(--set "replay.mode=$variant") ;;
    static) extra=(--set game.attacker=static --set "game.static_template_names=$STATIC_TEMPLATES") ;;
    *) echo "unknown variant $variant" >&2; exit 2 ;;
  esac
  "$SSP" train -c configs/cpu-small.yaml -o "$OUT/train-$variant" --quiet --set "run.max_steps=$STEPS" "${extra[@]}"
  evaluate "$variant" --adapter "$OUT/train-$variant"
  collected+=("$variant=$OUT/eval-$variant")
done
.venv/bin/python scripts/cpu_results.py docs/results/cpu-small.json "${collected[@]}"
"$SSP" compare "$OUT"/eval-* || true
