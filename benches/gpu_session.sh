#!/usr/bin/env bash
# Every GPU check and benchmark of the project in one run, for a machine with one NVIDIA GPU whose Python has
# torch, pytest, pytest-benchmark and hypothesis (no Rust needed: install a wheel built elsewhere with
# `maturin build --release`). Sections run in order of importance, each under a time limit and all within
# DEADLINE seconds (default 480); a section without time left is skipped and says so. Results go to
# $OUT/session.txt (default gpu-results/), one file, every section's output under its "==== name" line, so
# that a device tool that brings back only a few files loses none. The sections: build (device and kernel
# build), cuda_tests, profile (the plain path's, the batched path's and its replayed graph's kernels),
# bench_step (plain against batched search steps), search (a 2-epoch search on the CIFAR-10 subset), numerics
# (--tf32 and --bf16 against float32), bench_ops (the compiled ops against their references), bench_loader and
# drift (float32 rounding noise of the search, plain path against itself and the batched path).
#
#   MDARTS_WHEEL=target/wheels/mdarts_rs-*.whl MDARTS_CIFAR_MINI=path/to/cifar10-mini bash benches/gpu_session.sh
#
# SKIP="profile numerics" leaves out the sections so named.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-results}"
DEADLINE="${DEADLINE:-480}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if ! "$PY" -c "import mdarts_rs._core" 2>/dev/null; then
    wheel=$(ls ${MDARTS_WHEEL:-target/wheels/mdarts_rs-*.whl} 2>/dev/null | head -n 1)
    [ -n "$wheel" ] || { echo "gpu_session: no mdarts_rs wheel; set MDARTS_WHEEL" >&2; exit 1; }
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/mdarts-site "$wheel" || exit 1
    export PYTHONPATH="/tmp/mdarts-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export MDARTS_CACHE="${MDARTS_CACHE:-/tmp/mdarts-cache}" PYTHONUNBUFFERED=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}"
MINI="${MDARTS_CIFAR_MINI:-../shared/data/cifar10-mini}"
# Warnings are not errors here: the machine's other packages may emit some.
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -o "filterwarnings=" --benchmark-columns=mean,ops)

LOG="$OUT/session.txt"
run() {  # run NAME LIMIT COMMAND...: output to $LOG under "==== NAME", at most LIMIT seconds and what is left
    local name=$1 limit=$2
    shift 2
    if [[ " ${SKIP:-} " == *" $name "* ]]; then
        echo "== $name: skipped (SKIP)" | tee -a "$LOG"
        return
    fi
    local left=$((DEADLINE - SECONDS))
    ((left < limit)) && limit=$left
    if ((limit < 15)); then
        echo "== $name: skipped, ${left} s left of ${DEADLINE}" | tee -a "$LOG"
        return
    fi
    echo "== $name (at ${SECONDS} s, limit ${limit} s): $*"
    local t0=$SECONDS start
    { echo; echo "==== $name"; } >> "$LOG"
    start=$(wc -l < "$LOG")
    timeout -k 5 "$limit" "$@" >> "$LOG" 2>&1  # straight into the log: a run cut short keeps what it wrote
    echo "rc=$? seconds=$((SECONDS - t0))" >> "$LOG"
    tail -n "+$((start + 1))" "$LOG" | tail -n 25
}

{ echo "==== device"; nvidia-smi; } > "$LOG" 2>&1
run build 200 "$PY" -c "from mdarts_rs import ops; ops.load_extension(verbose=True); print('built, CUDA kernels:', ops._state['cuda'])"
run cuda_tests 150 "${PYTEST[@]}" -m cuda -rs tests
run profile 120 "$PY" benches/gpu_report.py --sections profile
run bench_step 200 "${PYTEST[@]}" -s benches/bench_search_step.py
run search 80 "$PY" benches/gpu_report.py --sections search --data "$MINI"
run numerics 100 "$PY" benches/gpu_report.py --sections numerics
run bench_ops 60 "${PYTEST[@]}" -s benches/bench_ops.py
run bench_loader 40 "${PYTEST[@]}" benches/bench_loader.py
run drift 90 "$PY" benches/gpu_report.py --sections drift --drift-seeds 3
echo "gpu_session: done at ${SECONDS} s"
