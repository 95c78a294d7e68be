#!/usr/bin/env bash
# The CPU experiment with a warm start (issue 13; docs/results-warmstart.md): on the embedded default model,
#   base          the model as shipped (evaluated only)
#   warmstart     `ssp warmstart` on the preset: self-distilled refusals and plain answers, no self-play
#   warm-ucb, warm-uniform, warm-none
#                 `ssp train` from the warm start (model.init_from) with replay.mode ucb / uniform / none
#   warm-static   the static-template baseline (game.attacker=static) from the warm start, same RL budget
# each trained once per seed in SEEDS (run.seed; seed 0 is named VARIANT, others VARIANT-seedN), every model
# evaluated on the same held-out data and attacks, and the tables written by scripts/cpu_results.py:
#   SEEDS="0 1" PARALLEL=2 scripts/reproduce_cpu.sh
# The first experiment's cold-start variants (ucb, uniform, none, static: no warm start) are still accepted:
#   VARIANTS="ucb none uniform static" OUT=runs/cpu-experiment PAGE= PLOTS=docs/results/cpu-small ...
#
# The warm start is trained once per seed, and warm-X-seedN starts from warmstart-seedN: the seed spread of
# every row then includes the warm start's own variance (what a user who reruns the pipeline sees), and the
# paired tests of an SSP row against `warmstart` compare a model with the very weights it started from.
# It costs one extra warm start per seed (~15 min each on 2 cores).
#
# Held out from training: HarmBench standard behaviours, XSTest safe prompts, a slice of ../shared/data's benign
# instructions (the preset's benign pool is the rest of that file, game.benign_held_out). Attacks: direct,
# template (three packaged templates the static baseline does not train on), self (the model's own Attacker);
# Defender greedy, 64 new tokens, heuristic judge grading harm by topicality (the preset's training judge, and
# what the first experiment's judge did): the same evaluation as the first experiment (docs/results.md).
#
# Resumable: each stage (warm start, training, evaluation of one row) leaves a marker in $OUT/done/ when it
# finishes and is skipped next time; an interrupted training resumes from its last checkpoint, an evaluation
# from its last finished item, a warm start starts again. A stage that finished with another command (other
# STEPS, SETS, LIMIT...) stops the script: use another OUT. Each stage's wall-clock is appended to
# $OUT/stages.tsv (row, stage, seconds, exit status, finished at), which the tables report.
# PARALLEL=2 runs two rows at a time with one torch thread each (on 2 cores faster than one job with two).
#
# Settings (environment): CONFIG (configs/cpu-small.yaml), VARIANTS, SEEDS, STEPS (run.max_steps override),
# LIMIT (items per held-out suite, 50), PARALLEL, OUT (runs/cpu-warmstart), DATA (../shared/data),
# EVAL_MODEL (embedded), SETS ("k=v k=v": more --set for ssp warmstart and ssp train), TRAIN_SETS (the same
# for ssp train only), WARM_FROM (an earlier OUT whose finished warm starts this run starts from instead of
# training its own; its warmstart rows are evaluated again here), CURVE_ROWS and CURVE_STEPS (e.g. "warm-ucb"
# and "4 8 12 16 20 24 28": those rows' checkpoints are evaluated too, as rows ROW@sN with the direct and
# template attacks, and scripts/checkpoint_curve.py draws ASR and over-refusal against the step into
# CURVE_OUT-ROW.{json,md,png}; CURVE_OUT defaults to PLOTS), RESULTS
# (docs/results/cpu-small.json), PAGE (docs/results-warmstart.md; empty: none), PLOTS (docs/results/cpu-warmstart),
# SSP (.venv/bin/ssp) and PYTHON (.venv/bin/python), each may be a command with arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-configs/cpu-small.yaml}
DATA=${DATA:-../shared/data}
LIMIT=${LIMIT:-50}
VARIANTS=${VARIANTS:-"warmstart warm-ucb warm-uniform warm-none warm-static"}
SEEDS=${SEEDS:-"0 1"}
PARALLEL=${PARALLEL:-2}
OUT=${OUT:-runs/cpu-warmstart}
EVAL_MODEL=${EVAL_MODEL:-embedded}
RESULTS=${RESULTS:-docs/results/cpu-small.json}
PAGE=${PAGE-docs/results-warmstart.md}
PLOTS=${PLOTS:-docs/results/cpu-warmstart}
read -ra SSP <<< "${SSP:-.venv/bin/ssp}"
read -ra PYTHON <<< "${PYTHON:-.venv/bin/python}"
read -ra EXTRA_SETS <<< "${SETS:-}"
read -ra TRAIN_ONLY_SETS <<< "${TRAIN_SETS:-}"
WARM_FROM=${WARM_FROM:-}
if [[ $PARALLEL -gt 1 ]]; then THREADS=${THREADS:-1}; else THREADS=${THREADS:-$(nproc)}; fi
EVAL_TEMPLATES=(--template roleplay_novelist --template prefix_injection --template research_purpose)
ATTACKS=(--attack direct --attack self --attack template "${EVAL_TEMPLATES[@]}" --self-samples 2)
CURVE_ROWS=${CURVE_ROWS:-}
CURVE_STEPS=${CURVE_STEPS:-}
CURVE_OUT=${CURVE_OUT:-$PLOTS}
STATIC_TEMPLATES="[hypothetical_world,developer_mode,refusal_suppression]"
STAGES=$OUT/stages.tsv
mkdir -p "$OUT/done"

stage() {  # stage ROW STEP COMMAND...: run COMMAND unless it finished before; log its wall-clock to $STAGES
  local row=$1 step=$2; shift 2
  local marker="$OUT/done/$row.$step" key
  # what the result depends on: not the threads, nor whether an interrupted run resumes
  key=$(printf '%q ' "$@" | sed -E 's/(--threads |run\.threads=)[0-9]+//g; s/ --resume / /')
  if [[ -f $marker ]]; then
    if [[ $(<"$marker") == "$key" ]]; then echo "$row $step: finished earlier, skipped"; return 0; fi
    echo "$row $step finished earlier with another command (see $marker); use another OUT" >&2
    return 3
  fi
  local start=$SECONDS rc=0
  echo "$row $step: $key"
  "$@" || rc=$?
  printf '%s\t%s\t%d\t%d\t%s\n' "$row" "$step" $((SECONDS - start)) "$rc" "$(date -u +%FT%TZ)" >> "$STAGES"
  if (( rc == 0 )); then printf '%s' "$key" > "$marker"; fi
  return $rc
}

seed_name() {  # seed_name KIND SEED -> KIND or KIND-seedN
  if [[ $2 == 0 ]]; then echo "$1"; else echo "$1-seed$2"; fi
}

row_seed() {  # row_seed ROW -> N for KIND-seedN, 0 for KIND (the inverse of seed_name)
  if [[ $1 == *-seed* ]]; then echo "${1##*-seed}"; else echo 0; fi
}

sets() {  # the --set options shared by the warm start and training of one seed
  local seed=$1 kv
  printf '%s\n' --set "run.seed=$seed" --set "run.threads=$THREADS"
  for kv in "${EXTRA_SETS[@]}"; do printf '%s\n' --set "$kv"; done
}

warm_dir() {  # warm_dir SEED: the warm start of that seed, trained here or taken from WARM_FROM
  echo "${WARM_FROM:-$OUT}/train-$(seed_name warmstart "$1")"
}

warm_start() {  # warm_start SEED: train warmstart[-seedN] once; rows that start from it wait for it (a lock)
  local seed=$1 name opts
  name=$(seed_name warmstart "$seed")
  if [[ -n $WARM_FROM ]]; then
    [[ -f $WARM_FROM/done/$name.warmstart ]] && return 0
    echo "WARM_FROM=$WARM_FROM has no finished $name" >&2
    return 2
  fi
  mapfile -t opts < <(sets "$seed")
  (
    flock 9
    stage "$name" warmstart "${SSP[@]}" warmstart -c "$CONFIG" -o "$OUT/train-$name" --quiet "${opts[@]}"
  ) 9> "$OUT/done/.lock-$name"
}

evaluate() {  # evaluate ROW [ssp eval options...], under the attacks in ATTACKS
  local row=$1; shift
  stage "$row" eval "${SSP[@]}" eval --model "$EVAL_MODEL" "$@" \
    --benchmark harmbench="$DATA/harmbench_behaviors_text_val.csv" \
    --benchmark xstest:safe="$DATA/xstest_prompts.csv" \
    --benchmark generic:benign="$DATA/benign_instructions.jsonl" \
    --benchmark-option benign.kind=benign --benchmark-option benign.prompt=instruction \
    "${ATTACKS[@]}" \
    --judge heuristic --judge-option harm_grading=topicality \
    --max-new-tokens 64 --attacker-max-new-tokens 64 --accept-truncated-attacks \
    --limit "$LIMIT" --threads "$THREADS" --quiet --output "$OUT/eval-$row"
}

train() {  # train ROW: the SSP or static run of one row (KIND or KIND-seedN), from its seed's warm start
  local row=$1 kind=${1%-seed*} seed extra opts
  seed=$(row_seed "$row")
  case ${kind#warm-} in
    ucb|none|uniform|priority) extra=(--set "replay.mode=${kind#warm-}") ;;
    static) extra=(--set game.attacker=static --set "game.static_template_names=$STATIC_TEMPLATES") ;;
    *) echo "unknown variant $row" >&2; return 2 ;;
  esac
  if [[ $kind == warm-* ]]; then
    warm_start "$seed" || return
    extra+=(--set "model.init_from=$(warm_dir "$seed")")
  fi
  [[ -n ${STEPS:-} ]] && extra+=(--set "run.max_steps=$STEPS")
  for kv in "${TRAIN_ONLY_SETS[@]}"; do extra+=(--set "$kv"); done
  mapfile -t opts < <(sets "$seed")
  local resume=()
  [[ -f $OUT/train-$row/config.yaml ]] && resume=(--resume)
  stage "$row" train "${SSP[@]}" train -c "$CONFIG" -o "$OUT/train-$row" --quiet "${resume[@]}" "${opts[@]}" \
    "${extra[@]}"
}

run_row() {  # one row, its output in $OUT/ROW.log
  local row=$1 seed
  seed=$(row_seed "$row")
  case $row in
    base) evaluate base ;;
    warmstart|warmstart-seed*) warm_start "$seed" && evaluate "$row" --adapter "$(warm_dir "$seed")" ;;
    *) train "$row" && evaluate "$row" --adapter "$OUT/train-$row" ;;
  esac >> "$OUT/$row.log" 2>&1
}

# Warm starts first, then the rows of seed 0, seed 1, ...: a row rarely waits for its warm start's lock.
rows=(base)
for s in $SEEDS; do
  if [[ " $VARIANTS " == *" warmstart "* ]]; then rows+=("$(seed_name warmstart "$s")"); fi
done
for s in $SEEDS; do for v in $VARIANTS; do
  if [[ $v != warmstart ]]; then rows+=("$(seed_name "$v" "$s")"); fi
done; done

run_checkpoint() {  # run_checkpoint ROW@sN: the held-out evaluation of ROW's checkpoint at step N
  local row=${1%@s*} step=${1##*@s}
  evaluate "$1" --adapter "$OUT/train-$row/checkpoints/$(printf 'step-%06d' "$step")" >> "$OUT/$1.log" 2>&1
}

run_all() {  # run_all JOB ITEM...: JOB ITEM for each item, PARALLEL at a time; failed items into `failed`
  local job=$1 item running=0 done_pid; shift
  declare -A pid_item
  for item in "$@"; do
    "$job" "$item" &
    pid_item[$!]=$item
    running=$((running + 1))
    if (( running >= PARALLEL )); then
      wait -n -p done_pid || failed+=("${pid_item[$done_pid]}")
      running=$((running - 1))
    fi
  done
  while (( running > 0 )); do
    wait -n -p done_pid || failed+=("${pid_item[$done_pid]}")
    running=$((running - 1))
  done
}

start=$SECONDS failed=()
run_all run_row "${rows[@]}"
# Checkpoint curves: after every row, so that each row's training has finished; direct and template only
ATTACKS=(--attack direct --attack template "${EVAL_TEMPLATES[@]}")
points=()
for row in $CURVE_ROWS; do
  for n in $CURVE_STEPS; do
    if [[ -f $OUT/done/$row.train ]]; then points+=("$row@s$n"); fi
  done
done
(( ${#points[@]} )) && run_all run_checkpoint "${points[@]}"
printf '%s\t%s\t%d\t%d\t%s\n' all run $((SECONDS - start)) "${#failed[@]}" "$(date -u +%FT%TZ)" >> "$STAGES"
for row in $CURVE_ROWS; do
  [[ -f $OUT/done/$row.eval ]] || continue
  seed=$(row_seed "$row")
  curve=()
  if [[ -f $OUT/done/$(seed_name warmstart "$seed").eval ]]; then curve+=("0=$OUT/eval-$(seed_name warmstart "$seed")"); fi
  for n in $CURVE_STEPS; do
    if [[ -f $OUT/done/$row@s$n.eval ]]; then curve+=("$n=$OUT/eval-$row@s$n"); fi
  done
  "${PYTHON[@]}" scripts/checkpoint_curve.py "$CURVE_OUT-curve-$row" --train "$OUT/train-$row" \
    --final "$OUT/eval-$row" "${curve[@]}" \
    --title "$row: held-out ASR and over-refusal along training"
done

if [[ ! -f $OUT/done/base.eval ]]; then
  echo "the base model's evaluation did not finish (see $OUT/base.log); rerun the same command to resume" >&2
  exit 1
fi
collected=() evals=()
for row in "${rows[@]}"; do
  if [[ -f $OUT/done/$row.eval ]]; then
    train_dir=$OUT/train-$row
    [[ $row == warmstart* ]] && train_dir=$(warm_dir "$(row_seed "$row")")
    collected+=("$row=$OUT/eval-$row:$train_dir")
    evals+=("$OUT/eval-$row")
  fi
done
page=()
[[ -n $PAGE ]] && page=(--page "$PAGE")
"${PYTHON[@]}" scripts/cpu_results.py "$RESULTS" "${page[@]}" --plots "$PLOTS" --stages "$STAGES" --regrade heuristic \
  "${collected[@]}"
"${SSP[@]}" compare "${evals[@]}" --output "$OUT/compare.md" > "$OUT/compare.log" 2>&1 || true
if (( ${#failed[@]} )); then
  echo "failed: ${failed[*]} (see $OUT/ROW.log); rerun the same command to resume" >&2
  exit 1
fi
