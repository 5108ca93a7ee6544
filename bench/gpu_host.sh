#!/usr/bin/env bash
# The whole GPU benchmark as ONE command on a bare GPU host that has torch but no network:
#
#   OUT=results/bench bash bench/gpu_host.sh [extra bench.gpu_bench arguments]
#
# Wheels in .whl/ (made beforehand with `pip download`, see docs/PERFORMANCE.md) are installed into /tmp/site
# first, so the host runs the transformers/pydantic versions the tests ran; if they break the imports, the
# host's own transformers is used instead and the log says so. Results: $OUT/gpu_bench.json (rewritten after
# every model, so a killed run keeps what it measured), $OUT/gpu_bench.log, $OUT/gpu.txt, $OUT/dmon.txt.
set -u
PYTHON=${PYTHON:-python3}
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
        export PYTHONPATH=/tmp/site
fi
preflight() {
    "$PYTHON" -c "import torch, transformers, pydantic, contract, runner.loop, bench.fullsize
print('torch', torch.__version__, 'transformers', transformers.__version__, 'pydantic', pydantic.__version__,
      'cuda', torch.cuda.is_available())"
}
if ! preflight; then
    echo "gpu_host: carried transformers does not import here; falling back to the host's transformers" >&2
    rm -rf /tmp/site/transformers /tmp/site/transformers-*.dist-info
    preflight || exit 3
fi

if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >"$OUT/gpu.txt" 2>&1
    nproc >>"$OUT/gpu.txt"
    # GPU utilisation once a second for the whole run: shows whether the GPU waited on the host.
    nvidia-smi dmon -s u -d 1 >"$OUT/dmon.txt" 2>&1 &
    DMON=$!
fi

set -o pipefail
"$PYTHON" -m bench.gpu_bench --out "$OUT/gpu_bench.json" "$@" 2>&1 | tee "$OUT/gpu_bench.log"
STATUS=$?
[ -n "${DMON:-}" ] && kill "$DMON" 2>/dev/null
exit $STATUS
