#!/usr/bin/env bash
# Everything the GPU rows of bench/RESULTS.md need, in one command on a fresh GPU machine without a registry:
#   bash bench/gpu.sh          # the gpu configuration; results under $OUT (default bench/out)
#   bash bench/gpu.sh tiny     # the same steps, small, to rehearse on a CPU
# The machine's own Python must have torch with CUDA, transformers' dependencies, matplotlib and sacrebleu; what it
# lacks (TRL, datasets, and this project's transformers) comes as wheels in .whl/, which the command installs.
# Fetch them here, where the registry is reachable, with the `pip download` line in bench/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-gpu}
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 RLHF_COURSE_PROGRESS=0
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import trl, datasets" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/bench-site .whl/*.whl \
        || { echo "gpu.sh: installing the wheels in .whl/ failed" >&2; exit 1; }
    export PYTHONPATH=/tmp/bench-site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the course from this checkout, not an installed copy

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep its output in $OUT/NAME.txt, carry on if it fails
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    local rc=$?
    grep -v -i -E "warning|warn\(|output = func" "$OUT/$name.txt" | tail -n 40
    echo "== $name: exit $rc after $((SECONDS - start))s"
}

step env 30 bash -c "nvidia-smi 2>&1 | head -15; nproc; $PYTHON -c 'import sys, torch, transformers, trl, datasets, accelerate; print(sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"transformers\", transformers.__version__, \"trl\", trl.__version__, \"datasets\", datasets.__version__, \"accelerate\", accelerate.__version__); print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"no GPU\")'"
step bench "${BENCH_LIMIT:-360}" "$PYTHON" bench/run.py --config "$CONFIG" --out "$OUT/bench.json"
# test_language_model.py's tests run on the CPU, as in CI: the GPU machine runs the CUDA ones
step cuda_tests "${TESTS_LIMIT:-80}" "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py
# the profile decodes as the bench's PPO rows did (the bench falls back to "static" if the compiled decoder fails)
DECODER=$(grep -q "the compiled decoder failed" "$OUT/bench.txt" && echo static || echo "")
step profile "${PROFILE_LIMIT:-90}" "$PYTHON" bench/profile_ppo.py --config "$CONFIG" ${DECODER:+--decoder "$DECODER"}
ls -la "$OUT"
