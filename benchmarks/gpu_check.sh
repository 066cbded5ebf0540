#!/usr/bin/env bash
# The prepared GPU check of issue 9, for one call on a CUDA machine (about 5-8 minutes on one GPU, estimated:
# it has never run). From the repository root:
#
#     bash benchmarks/gpu_check.sh            # GPU-marked tests + benchmarks/gpu.py on florence2-base
#     bash benchmarks/gpu_check.sh --large    # ... and florence2-large in the same gpu.py run
#
# Logs, environment and the results JSON go to $OUT (default /tmp/gpu_check); benchmarks/results/gpu_<gpu>.json
# is written there too. Commit that file from the machine the results come back to.
#
# Packages: the GPU image this was written for holds python3 with torch (CUDA 13), transformers, onnx and a
# CPU-only onnxruntime, and nothing can be fetched there. The GPU path needs onnxruntime-gpu (a CUDA 13 build,
# e.g. 1.31.1, one ~255 MB wheel), the tensorrt path tensorrt + cuda-python (cuda.bindings). Wheels found in
# .whl/ (whole, or split as NAME.whl.part-* by `split -b 55M`, in .whl/parts/ or already copied to /tmp/parts/
# by earlier calls) are installed into /tmp/site, which then shadows the CPU onnxruntime. README, "GPU".
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT" /tmp/whl /tmp/parts
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TIERCEL_DEBUG=1
PY=${PY:-python3}

# 1. carried wheels: reassemble split ones, install all into /tmp/site
cp .whl/parts/*.part-* /tmp/parts/ 2>/dev/null
for first in /tmp/parts/*.whl.part-aa; do
  [ -e "$first" ] || continue
  name=$(basename "${first%.part-aa}")
  cat "/tmp/parts/$name".part-* > "/tmp/whl/$name"
done
cp .whl/*.whl /tmp/whl/ 2>/dev/null
if ls /tmp/whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi

# 2. CUDA libraries from the nvidia-* wheels beside torch (onnxruntime-gpu loads cuBLAS/cuDNN/cuFFT by name)
libs=$($PY -c "import glob, os, site; print(':'.join(sorted({os.path.dirname(p) for d in site.getsitepackages() for p in glob.glob(d + '/nvidia/**/lib/*.so*', recursive=True)})))")
export LD_LIBRARY_PATH=${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

# 3. what is here
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import sys, torch, onnxruntime as ort; print(sys.version.split()[0], 'torch', torch.__version__, torch.cuda.is_available(), 'onnxruntime', ort.__version__, ort.get_available_providers())"
  $PY -c "import tensorrt; print('tensorrt', tensorrt.__version__)" 2>&1 | tail -1
  $PY -c "from cuda.bindings import runtime; print('cuda-python: cuda.bindings ok')" 2>&1 | tail -1
} 2>&1 | tee "$OUT/env.txt"

# 4. GPU-marked tests (onnxruntime CUDA + I/O binding, fp16 bundles on cuda, TensorRT engines, gpu.py on tiny)
timeout 300 $PY -m pytest -q -m gpu tests/gpu -rs 2>&1 | tee "$OUT/tests.log"

# 5. the benchmark; gpu.py writes its JSON after each preset, so a cut-off large run keeps base
presets=(--preset florence2-base)
[ "${1:-}" = "--large" ] && presets+=(--preset florence2-large)
timeout 420 $PY benchmarks/gpu.py "${presets[@]}" --runs 5 --all-runs 5 2>&1 | tee "$OUT/bench.log"
cp benchmarks/results/gpu_*.json "$OUT/" 2>/dev/null
ls -la "$OUT"
