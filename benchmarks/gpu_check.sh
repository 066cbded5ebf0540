#!/usr/bin/env bash
# The prepared GPU check of issue 9, for a CUDA machine that can fetch nothing. From the repository root:
#
#     bash benchmarks/gpu_check.sh torch          # needs nothing carried: eager vs torch_static vs torch_graphs on
#                                                 # florence2-base and -large, eager again in a fresh process each,
#                                                 # + the graph tests (~2 min on an H200 before the fresh eager runs)
#     bash benchmarks/gpu_check.sh stage          # copy carried package parts to /tmp/parts; start exporting the
#                                                 # florence2-base/-large fp16 bundles in the background (setsid)
#     bash benchmarks/gpu_check.sh run [--large]  # stage, install the packages, benchmarks/gpu.py, GPU-marked tests
#     bash benchmarks/gpu_check.sh eval CKPT DATA # `tiercel eval CKPT` on cpu (fp32) and on cuda (fp16, CUDA graphs):
#                                                 # the user's command on a GPU; compares the two predictions
#
# The device's copy of the tree has no .git: start the call's command with GIT_COMMIT=<hash> GIT_DIRTY=0|1 (the
# literal values, from the sending checkout) and gpu.py records them as the commit. gpu.py also records the GPU's
# clocks, power and temperature, a 1 GiB device copy's bandwidth (both at start and end) and the library versions;
# a path that fails is recorded in its preset's `failed` and the other paths finish.
#
# A session with one device lease: call 1 `torch; stage` carrying part aa, calls 2-3 `stage` carrying ab and ac
# (seconds each: start the next at once, the machine goes back after 30 s idle), call 4 `run --large` (worst
# case 120 s waiting for the export + 360 s benchmark + 100 s tests: give it timeout_s 600).
#
# `stage` exists because the onnxruntime-gpu package (~255 MB as a wheel) does not fit one 64 MiB transfer: it
# travels in parts over several calls to the same warm machine, and the CPU-bound export runs meanwhile (with the
# image's own CPU onnxruntime for the fp16 conversion). Logs, environment and the results JSON go to $OUT (default
# /tmp/gpu_check); benchmarks/results/gpu_<gpu>.json is written there too. Commit it from where it comes back.
#
# Packages: the GPU image this was written for holds python3 with torch (CUDA 13), transformers, onnx and a
# CPU-only onnxruntime. The GPU path needs onnxruntime-gpu (a CUDA 13 build, 1.31.1), the tensorrt path tensorrt +
# cuda-python (cuda.bindings). Found in .whl/: whole wheels (*.whl), wheels split by `split` (NAME.whl.part-*),
# or a tar.xz of an unpacked package tree split the same way (NAME.tar.xz.part-*); parts may sit in .whl/parts/ or
# in /tmp/parts/ from earlier calls. All are installed into /tmp/site, which then shadows the CPU onnxruntime.
# The tar.xz used on 2026-11-27 (194 MB in 3 parts of 64.8 MB, against 255.6 MB for the wheel):
#     pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 onnxruntime-gpu==1.31.1
#     unzip -q onnxruntime_gpu-1.31.1-*.whl -d x && cd x && tar -cf - --exclude=onnxruntime/capi/libonnxruntime.so.1.31.1 \
#         --exclude=onnxruntime/tools --exclude=onnxruntime/quantization onnxruntime onnxruntime_gpu-1.31.1.dist-info \
#         | xz -9e -T2 > ort_gpu.tar.xz && split -b 64800000 -a 2 ort_gpu.tar.xz ../.whl/parts/ort_gpu.tar.xz.part-
# (keep onnxruntime/transformers: the fp16 conversion imports it; libonnxruntime.so is the C API library, which the
# Python module does not load). Measured there (one H200, 16 CPU cores): export florence2-base fp16 51-58 s,
# florence2-large 171 s; the first onnxruntime CUDA round of a path ~11 s; gpu.py on base with its export: more than 140 s (cut off there in its 14-task rounds).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
WORK=/tmp/gpu_work
mkdir -p "$OUT" /tmp/whl /tmp/parts /tmp/site
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TIERCEL_DEBUG=1
PY=${PY:-python3}
PRESETS=(--preset florence2-base --preset florence2-large)

stage() {
  cp .whl/parts/*.part-* /tmp/parts/ 2>/dev/null
  ls -la /tmp/parts
  if [ ! -e /tmp/export.started ]; then
    touch /tmp/export.started
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    $PY -c "import sys, torch, transformers; print(sys.version.split()[0], 'torch', torch.__version__, torch.cuda.is_available(), 'transformers', transformers.__version__)"
    setsid nohup bash -c "$PY benchmarks/gpu.py --export-only --reuse --work $WORK ${PRESETS[*]} > /tmp/export.log 2>&1; echo \$? > /tmp/export.rc" \
      < /dev/null > /dev/null 2>&1 &
    echo "export started in the background (/tmp/export.log)"
  fi
  tail -3 /tmp/export.log 2>/dev/null
}

install() {
  for first in /tmp/parts/*.part-aa; do
    [ -e "$first" ] || continue
    name=$(basename "${first%.part-aa}")
    case "$name" in
      *.tar.xz) cat "/tmp/parts/$name".part-* | $PY -c "import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('/tmp/site')" ;;
      *.whl) cat "/tmp/parts/$name".part-* > "/tmp/whl/$name" ;;
    esac
  done
  cp .whl/*.whl /tmp/whl/ 2>/dev/null
  if ls /tmp/whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/whl/*.whl
  fi
  export PYTHONPATH=/tmp/site:$PYTHONPATH
  # CUDA libraries from the nvidia-* wheels beside torch (onnxruntime-gpu loads cuBLAS/cuDNN/cuFFT by name)
  libs=$($PY -c "import glob, os, site; print(':'.join(sorted({os.path.dirname(p) for d in site.getsitepackages() for p in glob.glob(d + '/nvidia/**/lib/*.so*', recursive=True)})))")
  export LD_LIBRARY_PATH=${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
}

run() {
  stage
  install
  {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
    $PY -c "import sys, torch, onnxruntime as ort; print(sys.version.split()[0], 'torch', torch.__version__, torch.cuda.is_available(), 'onnxruntime', ort.__version__, ort.__file__, ort.get_available_providers())"
    $PY -c "import tensorrt; print('tensorrt', tensorrt.__version__)" 2>&1 | tail -1
    $PY -c "from cuda.bindings import runtime; print('cuda-python: cuda.bindings ok')" 2>&1 | tail -1
  } 2>&1 | tee "$OUT/env.txt"
  # the background export must finish first (the benchmark reuses its bundles)
  for _ in $(seq 120); do [ -e /tmp/export.rc ] && break; sleep 1; done
  cp /tmp/export.log "$OUT/" 2>/dev/null
  presets=(--preset florence2-base)
  [ "${1:-}" = "--large" ] && presets=("${PRESETS[@]}")
  # gpu.py writes its JSON after each preset, so a cut-off large run keeps base; the torch paths ran in `torch`,
  # and so did eager in a fresh process (--no-fresh-eager here: onnxruntime's first rounds leave no time for it)
  timeout 360 $PY benchmarks/gpu.py --reuse --work $WORK --paths eager,ort,ort_bound,tensorrt "${presets[@]}" --runs 5 --all-runs 5 \
    --no-fresh-eager 2>&1 | tee "$OUT/bench.log"
  cp benchmarks/results/gpu_*.json "$OUT/" 2>/dev/null
  # GPU-marked tests (onnxruntime CUDA + I/O binding, fp16 bundles on cuda, TensorRT engines, gpu.py on tiny)
  timeout 100 $PY -m pytest -q -m gpu tests/gpu -rs --tb=short -p no:cacheprovider 2>&1 | tee "$OUT/tests.log"
  ls -la "$OUT"
}

torch_only() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/env_torch.txt"
  # 420 s: ~2 min measured before eager's fresh-process runs, which add a process start and a model build per preset
  timeout 420 $PY benchmarks/gpu.py --paths eager,torch_static,torch_graphs,torch_graphs_split "${PRESETS[@]}" --runs 5 --all-runs 5 \
    --out "$OUT/gpu_torch.json" 2>&1 | grep -v Warning | tee "$OUT/bench_torch.log"
  timeout 90 $PY -m pytest -q -m gpu tests/gpu -k "cuda_graph or device_preprocess" -rs -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/tests_torch.log"
}

eval_cuda() {
  # the checkpoint and a small Falcon_SFT file travel with the call (carry: both are git-ignored work folders)
  # the CLI's own packages (typer, rich, pydantic, ...) where the image lacks them: wheels carried in .whl/cli,
  # put after the image's packages on the path (the image's own versions win)
  local ckpt=$1 data=$2
  if ! $PY -c "import typer, rich, pydantic, yaml, PIL" 2>/dev/null && ls .whl/cli/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site_cli .whl/cli/*.whl
    export PYTHONPATH=$PYTHONPATH:/tmp/site_cli
  fi
  for dev in cpu cuda; do
    timeout 120 $PY -m tiercel eval "$ckpt" --data "$data" --device $dev --json "$OUT/eval_$dev.json" 2>&1 \
      | grep -v Warning | tail -4 | tee -a "$OUT/eval.log"
  done
  $PY - "$OUT" <<'PYEOF' 2>&1 | tee -a "$OUT/eval.log"
import json, sys
a, b = (json.load(open(f"{sys.argv[1]}/eval_{d}.json")) for d in ("cpu", "cuda"))
same = [x["pred"].get("raw") == y["pred"].get("raw") for x, y in zip(a["predictions"], b["predictions"])]
print(f"cuda vs cpu: {sum(same)}/{len(same)} predictions identical; average headline cpu {a['average_headline']:.4f} "
      f"cuda {b['average_headline']:.4f}; backends {a['backend']} / {b['backend']}; seconds {a['seconds']:.1f} / {b['seconds']:.1f}")
PYEOF
}

case "${1:-run}" in
  torch) torch_only ;;
  eval) shift; eval_cuda "$@" ;;
  stage) stage ;;
  run) shift; run "$@" ;;
  *) echo "usage: bash benchmarks/gpu_check.sh torch | stage | run [--large] | eval CKPT DATA" >&2; exit 1 ;;
esac
