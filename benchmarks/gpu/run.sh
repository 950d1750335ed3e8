#!/usr/bin/env bash
# The CUDA path in one go (benchmarks/gpu/README.md): install what is missing, `bench learner` compiled on
# CUDA, a short CQL pre-training and WSRL fine-tuning at the paper's sizes, the suite's CUDA tests; one JSON
# file per step and results.json under the output folder. Sized for at most 8 minutes on an H100/H200.
#
#   benchmarks/gpu/run.sh [--out DIR] [--cpu-smoke] [--dry-run]
#
# --cpu-smoke (or ROBOT_WSRL_CPU_SMOKE=1): the same steps shrunk to finish on a CPU in a couple of minutes.
# --dry-run: print the commands, run none. Each step has a deadline, and the whole run BUDGET_S seconds
# (480; 900 for --cpu-smoke; a step cut short reports exit 124). Environment: PYTHON (python3), TORCH_VERSION (2.13.0),
# TORCH_INDEX_URL (default PyPI, whose Linux x86_64 torch 2.13.0 is the CUDA 13 build), CONSTRAINTS
# (default constraints.txt; empty: none), PIP_ARGS (extra pip arguments, e.g. "--no-index --find-links
# /wheels" on an offline machine).
set -euo pipefail
cd "$(dirname "$0")/../.."

MODE=gpu
DRY=0
OUT="runs/bench/gpu-$(date -u +%Y%m%dT%H%M%SZ)"
[[ "${ROBOT_WSRL_CPU_SMOKE:-0}" == 1 ]] && MODE=cpu-smoke
while (($#)); do
    case "$1" in
        --cpu-smoke) MODE=cpu-smoke ;;
        --dry-run) DRY=1 ;;
        --out) OUT="${2:?--out needs a folder}"; shift ;;
        -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

PY="${PYTHON:-python3}"
RW=("$PY" -c 'import sys; from robot_wsrl.apps.cli import main; sys.exit(main())')
CONSTRAINTS="${CONSTRAINTS-constraints.txt}"
read -r -a PIP_EXTRA <<< "${PIP_ARGS:-}"

if [[ "$MODE" == gpu ]]; then
    # Paper sizes: 10 critics, 10 CQL action samples, batch 256 (x UTD 4 = 1,024 per WSRL round).
    DEVICE=cuda DATASET=20000 PRE_STEPS=5000 FT_STEPS=6000 FT_WARMUP=1000 BUDGET=480
    SIZE=(agent.batch_size=256)
else
    # Same structure (10 critics, 10 samples, UTD 4), small networks and batches, eager on one thread.
    DEVICE=cpu DATASET=400 PRE_STEPS=20 FT_STEPS=60 FT_WARMUP=40 BUDGET=900
    SIZE=(agent.batch_size=32 "agent.actor_hidden=[32,32]" "agent.critic_hidden=[32,32]" threads=1)
fi
WORK="$OUT/work"  # checkpoints, CSVs: kept apart from the JSON results
COMMON=(env=hopper "device=$DEVICE" seed=0 progress=false tensorboard=false agent.num_critics=10 "${SIZE[@]}"
    run.eval_every=0 run.eval_episodes=1 run.checkpoint_every=0)
STEPS=()
DEADLINE=$((SECONDS + ${BUDGET_S:-$BUDGET}))

# `step NAME SECONDS CMD...`: CMD under a deadline of SECONDS (less if the run's budget is nearly spent),
# its output appended to run.log; its exit status and wall time go to results.json.
step() {
    local name="$1" limit="$2"
    shift 2
    echo "+ [$name] $*" | tee -a "$OUT/run.log"
    ((DRY)) && return 0
    local start="$EPOCHREALTIME" rc=124
    limit=$((limit < DEADLINE - SECONDS ? limit : DEADLINE - SECONDS))
    if ((limit > 0)); then
        rc=0
        timeout --kill-after=10 "$limit" "$@" >> "$OUT/run.log" 2>&1 || rc=$?
    fi
    STEPS+=("$name" "$rc" "$start" "$EPOCHREALTIME")
    echo "  [$name] exit $rc" | tee -a "$OUT/run.log"
}

importable() { "$PY" -c "import $1" 2> /dev/null; }

install() {
    local constraint=()
    [[ -n "$CONSTRAINTS" ]] && constraint=(-c "$CONSTRAINTS")
    if ! importable torch; then
        step install_torch 240 "$PY" -m pip install "torch==${TORCH_VERSION:-2.13.0}" \
            ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "${PIP_EXTRA[@]}"
    fi
    if ! importable "robot_wsrl.apps.cli, hydra, mujoco, gymnasium, pytest"; then
        step install_project 180 "$PY" -m pip install "${constraint[@]}" -e ".[learner,sim,dev]" "${PIP_EXTRA[@]}"
    fi
}

bench_learner() {
    if [[ "$MODE" == gpu ]]; then
        step bench_learner 150 bash -c '"$@" > "'"$OUT"'/bench_learner.json"' _ "${RW[@]}" bench learner --json
    else  # two rounds, one repeat, eager: the benchmark's code path, not its figures
        step bench_learner 150 "$PY" -c 'import json, sys
from robot_wsrl.bench.learner import run_learner_benchmark
r = run_learner_benchmark(device="cpu", rounds=2, repeats=1, compile_mode="off")
open(sys.argv[1], "w").write(json.dumps(r, sort_keys=True))' "$OUT/bench_learner.json"
    fi
}

train() {
    step dataset 60 "$PY" -c 'import sys
import numpy as np
from robot_wsrl.robot.drivers import make_driver
from robot_wsrl.learn.collect import record_dataset
driver = make_driver("gym:Hopper-v5", seed=0, max_episode_steps=1000)
rng = np.random.default_rng(0)
low, high = np.array(driver.spec.action_low), np.array(driver.spec.action_high)
try:
    record_dataset(driver, lambda _: rng.uniform(low, high).astype(np.float32), int(sys.argv[1]), 0, sys.argv[2])
finally:
    driver.close()' "$DATASET" "$WORK/hopper-random.npz"
    step pretrain 120 "${RW[@]}" pretrain "${COMMON[@]}" agent=cql agent.cql.num_samples=10 \
        "run.dataset=$WORK/hopper-random.npz" "run.steps=$PRE_STEPS" "out_dir=$WORK/pretrain"
    step finetune 150 "${RW[@]}" finetune "${COMMON[@]}" agent=wsrl agent.utd=4 \
        "run.checkpoint=$WORK/pretrain/checkpoint.pt" "run.steps=$FT_STEPS" "run.warmup_steps=$FT_WARMUP" \
        "out_dir=$WORK/finetune"
}

cuda_tests() {
    local files
    mapfile -t files < <(grep -l 'torch\.cuda' tests/test_*.py)
    step cuda_tests 90 "$PY" -m pytest -q -p no:cacheprovider -k cuda --junitxml "$OUT/cuda_tests.xml" \
        "${files[@]}"
}

((DRY)) || rm -rf "$WORK"  # a rerun into the same --out starts its training runs afresh (they refuse to overwrite)
mkdir -p "$WORK"
echo "robot-wsrl GPU check, mode $MODE, results in $OUT" | tee "$OUT/run.log"
install
if [[ "$MODE" == gpu ]] && ! ((DRY)) && ! "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
    echo "run.sh: torch sees no CUDA device; use --cpu-smoke on a CPU machine" | tee -a "$OUT/run.log" >&2
    exit 2
fi
bench_learner
train
cuda_tests
((DRY)) && exit 0

"$PY" benchmarks/gpu/results.py "$OUT" "$MODE" "${STEPS[@]}"
