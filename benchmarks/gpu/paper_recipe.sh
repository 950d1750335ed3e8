#!/usr/bin/env bash
# The paper's full recipe, unattended and resumable, for a GPU machine (benchmarks/gpu/README.md):
#   1. the offline dataset: `make data`'s recorded collect command (skipped when data/hopper/medium.npz exists);
#   2. CQL pre-training, `recipe=paper`: 250,000 updates, 10 critics, 10 sampled actions, batch 256, with the
#      critics' calibration in calibration.csv/png;
#   3. WSRL fine-tuning, `recipe=paper`: K = 5,000 warmup steps, then online-only SAC at UTD 4 (1,024 per
#      round) for 100,000 online steps, on the shifted robot (env.shift=real) from step 2's checkpoint.
# --task reacher_cam runs the same on the camera arm (cam:reacher, 84x84 top camera + state): the dataset
# policies/reacher_cam/manifest.json records, the default DrQ encoder (32-32-32-32) trained in
# pre-training and, on a GPU, online too (agent.encoder.train_online=true), the `reacher_real` robot, and a
# replay capped at the run's 100,000 transitions (the default million would reserve 23 GB of frames).
#
#   benchmarks/gpu/paper_recipe.sh [--task hopper|reacher_cam] [--out DIR] [--device cuda|cpu] [--dry-run]
#
# Rerun the same command after an interruption: a step whose summary.json exists is done, one with a
# checkpoint continues from it (run.resume), one with neither starts. Progress: each step's tqdm bar and
# CSVs under DIR/<step>/; DIR/progress.log says which step runs. Environment: PYTHON (python3).
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=""
TASK=hopper
DEVICE=cuda
DRY=0
while (($#)); do
    case "$1" in
        --task) TASK="${2:?--task needs hopper or reacher_cam}"; shift ;;
        --out) OUT="${2:?--out needs a folder}"; shift ;;
        --device) DEVICE="${2:?--device needs cuda or cpu}"; shift ;;
        --dry-run) DRY=1 ;;
        -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "paper_recipe.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$TASK" in
    hopper)
        ENV=hopper SHIFT=real DATASET=data/hopper/medium.npz
        PRETRAIN_ARGS=() FINETUNE_ARGS=() ;;
    reacher_cam)
        ENV=reacher_cam SHIFT=reacher_real DATASET=data/reacher_cam/expert.npz
        PRETRAIN_ARGS=() FINETUNE_ARGS=(agent.encoder.train_online=true run.buffer_capacity=100000) ;;
    *) echo "paper_recipe.sh: --task $TASK: no such task (hopper, reacher_cam)" >&2; exit 2 ;;
esac
MANIFEST="policies/$TASK/manifest.json"
OUT="${OUT:-runs/paper-recipe/$TASK}"
PY="${PYTHON:-python3}"
RW=("$PY" -c 'import sys; from robot_wsrl.apps.cli import main; sys.exit(main())')
mkdir -p "$OUT"

run() {
    echo "$(date -u +%FT%TZ) + $*" | tee -a "$OUT/progress.log"
    ((DRY)) || "$@"
}

# `phase NAME COMMAND OVERRIDES...`: start, resume or skip one training run in $OUT/NAME.
phase() {
    local name="$1" command="$2" dir="$OUT/$1"
    shift 2
    if [[ -f "$dir/summary.json" ]]; then
        echo "$name: done ($dir/summary.json)" | tee -a "$OUT/progress.log"
    elif [[ -f "$dir/checkpoint.pt" ]]; then
        run "${RW[@]}" "$command" "run.resume=$dir"
    else
        run "${RW[@]}" "$command" recipe=paper "env=$ENV" "device=$DEVICE" "out_dir=$dir" "$@"
    fi
}

[[ -f "$DATASET" ]] || run "${RW[@]}" collect --fetch "$MANIFEST"
phase pretrain pretrain "run.dataset=$DATASET" ${PRETRAIN_ARGS[@]+"${PRETRAIN_ARGS[@]}"}
phase finetune finetune "run.checkpoint=$OUT/pretrain/checkpoint.pt" "env.shift=$SHIFT" \
    ${FINETUNE_ARGS[@]+"${FINETUNE_ARGS[@]}"}
echo "$(date -u +%FT%TZ) done: $OUT/pretrain/summary.json, $OUT/finetune/summary.json" | tee -a "$OUT/progress.log"
