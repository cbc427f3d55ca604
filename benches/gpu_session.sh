#!/usr/bin/env bash
# Every GPU check and benchmark of the project in one run, for a machine with one NVIDIA GPU whose Python has
# torch, pytest, pytest-benchmark and hypothesis (no Rust needed: install a wheel built elsewhere with
# `maturin build --release`). Results go to $OUT (default gpu-results/): device.txt, build.txt,
# cuda_tests.txt, bench_ops.{txt,json}, bench_step.{txt,json}, bench_loader.txt.
#
#   MDARTS_WHEEL=target/wheels/mdarts_rs-*.whl MDARTS_CIFAR_MINI=path/to/cifar10-mini bash benches/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if ! "$PY" -c "import mdarts_rs._core" 2>/dev/null; then
    wheel=$(ls ${MDARTS_WHEEL:-target/wheels/mdarts_rs-*.whl} 2>/dev/null | head -n 1)
    [ -n "$wheel" ] || { echo "gpu_session: no mdarts_rs wheel; set MDARTS_WHEEL" >&2; exit 1; }
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/mdarts-site "$wheel" || exit 1
    export PYTHONPATH="/tmp/mdarts-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export MDARTS_CACHE="${MDARTS_CACHE:-/tmp/mdarts-cache}" PYTHONUNBUFFERED=1
nvidia-smi > "$OUT/device.txt" 2>&1
# Warnings are not errors here: the machine's other packages may emit some.
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -o "filterwarnings=" --benchmark-columns=mean,ops)

run() {
    local name=$1
    shift
    echo "== $name: $*"
    local t0=$SECONDS
    "$@" > "$OUT/$name.txt" 2>&1
    echo "rc=$? seconds=$((SECONDS - t0))" >> "$OUT/$name.txt"
    tail -n 30 "$OUT/$name.txt"
}

run build "$PY" -c "from mdarts_rs import ops; ops.load_extension(verbose=True); print('built, CUDA kernels:', ops._state['cuda'])"
run cuda_tests "${PYTEST[@]}" -m cuda -rs tests/test_ops.py tests/test_search.py
run bench_ops "${PYTEST[@]}" -s benches/bench_ops.py --benchmark-json "$OUT/bench_ops.json"
run bench_step "${PYTEST[@]}" -s benches/bench_search_step.py --benchmark-json "$OUT/bench_step.json"
run bench_loader "${PYTEST[@]}" benches/bench_loader.py
