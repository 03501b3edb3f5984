#!/usr/bin/env bash
# The GPU path in one prepared script (issue 5): on a machine with CUDA,
#   1. the tests marked `cuda` (model resident on the GPU; projections and
#      occlusion there equal the CPU's within float tolerance),
#   2. the occlusion benchmark on CUDA (ours vs Captum, same model/window/stride),
#   3. the API benchmark against a server whose model is on the GPU,
# in well under 10 minutes. Results land in bench/results/gpu/ (and in $OUT
# when set, e.g. on a lent device machine); put the figures in bench/README.md
# with the GPU named.
#
#   bash bench/gpu_check.sh            # here: .venv's python
#   PY=python3 bash bench/gpu_check.sh # a machine whose python3 has torch with CUDA
#
# A machine that has torch but not the server's packages (fastapi, starlette,
# pydantic, pydantic-settings, uvicorn, python-multipart, fastapi-offline,
# captum) takes them as wheels from ./.whl when that folder exists: prepare it
# where pip works with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv uvicorn \
#     python-multipart fastapi-offline captum typing-inspection annotated-types
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD/backend${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if ! "$PY" -c "import fastapi, uvicorn, pydantic_settings, python_multipart, fastapi_offline, captum" 2>/dev/null; then
  if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
  else
    echo "gpu_check: the server's packages are missing and there is no .whl folder (see the header)" >&2
    exit 2
  fi
fi

RES=bench/results/gpu
mkdir -p "$RES"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$RES/gpu.txt" || true
"$PY" - <<'EOF'
import torch
assert torch.cuda.is_available(), "gpu_check: torch sees no CUDA device"
print("torch", torch.__version__, "on", torch.cuda.get_device_name(0))
EOF

status=0
echo "== 1. tests marked cuda"
timeout 240 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests/test_api_cuda.py 2>&1 | tee "$RES/tests.txt" \
  || status=1

echo "== 2. occlusion on CUDA vs Captum (Captum's default perturbations_per_eval=1 is also timed)"
timeout 180 "$PY" bench/bench_occlusion.py --device cuda --reps 3 --out "$RES/occlusion.json" 2>&1 \
  | tee "$RES/occlusion.txt" || status=1

echo "== 3. the API with the model on the GPU"
DECONVLAB_DEVICE=cuda timeout 150 "$PY" bench/bench_api.py --device cuda --requests 32 --out "$RES/api.json" 2>&1 \
  | tee "$RES/api.txt" || status=1

if [ -n "${OUT:-}" ]; then cp -r "$RES" "$OUT/"; fi
echo "gpu_check: done (status $status); results in $RES"
exit $status
