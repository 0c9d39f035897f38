#!/usr/bin/env bash
# The kernels' GPU check in one go, within 10 minutes: the CUDA kernel tests,
# then the large-n configuration sweep (bench/kernel_configs.py), bench/kernels.py and the
# engine against the graph runner (bench/engine_gpu.py).
# Needs torch, Triton and pytest only (the root tests/conftest.py, which needs the server's
# packages, is cut off with --confcutdir). Logs and JSON go to $OUT when it is set, else /tmp/eqserve-gpu-check/.
#
#     bash bench/gpu_check.sh            # PYTHON=... to choose the interpreter (default python3)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/eqserve-gpu-check}"
mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
status=0

# The engine-parity test needs pydantic (models import it), which the GPU image lacks: carried as
# wheels in .whl/ (see bench/RESULTS.md for how they were fetched), installed outside the image.
if compgen -G ".whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  "$py" -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} 2>&1 | tee "$out/env.txt"

timeout 120 "$py" -m pytest -q -p no:cacheprovider --confcutdir=tests/kernels tests/kernels \
  --deselect tests/kernels/test_aot.py::test_shipped_configurations_fit 2>&1 | tee "$out/tests.log" || status=1

timeout 170 "$py" bench/kernel_configs.py --budget-s 90 2>&1 | tee "$out/configs.log" || status=1
tail -n 1 "$out/configs.log" > "$out/configs.json"

timeout 170 "$py" bench/kernels.py --budget-s 120 2>&1 | tee "$out/bench.log" || status=1
tail -n 1 "$out/bench.log" > "$out/bench.json"

# The engine against the graph runner's closed-batch solve (needs the carried wheels: the models
# import pydantic).
timeout 90 "$py" bench/engine_gpu.py 2>&1 | tee "$out/engine_gpu.log" || status=1
tail -n 1 "$out/engine_gpu.log" > "$out/engine_gpu.json"

exit $status
