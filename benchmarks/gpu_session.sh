#!/usr/bin/env bash
# Issue 16's GPU figures in one call of a lent H100/H200: model-side inference, then the served model.
#
#   bash benchmarks/gpu_session.sh OUT_DIR          # on the GPU machine, from the repository root
#
# That machine's image has PyTorch with CUDA 13's libraries (cuBLAS, cuDNN 9) but neither
# onnxruntime-gpu nor BentoML (nor nvImageCodec). Their wheels travel in .whl/ (onnxruntime-gpu's 256 MB in parts,
# joined here from /tmp/wheel-parts) and go into /tmp/site; ONNX Runtime's CUDA provider finds
# cuBLAS and cuDNN in the nvidia packages PyTorch brought, through LD_LIBRARY_PATH. The served
# model is models/model.onnx, its clients send the test split (data/prepared, and the test files
# unpacked from .gpu/test-split.tar) and check every answer against ONNX Runtime on the CPU.
# SKIP_INSTALL=1 and LOAD_SECONDS rehearse it on a CPU machine with the project's .venv.
#
# Preparing the wheels here (ignored folders: add /.whl/ and /.gpu/ to .git/info/exclude), each call
# carrying at most 64 MiB with the working tree:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl onnxruntime-gpu==1.31.1
#   split it with dd into .whl/p1 .. .whl/p5 (52, 58, 58, 58 MB and the rest), each as ort.partN;
#   .whl/serve: the same download of bentoml's closure less the image's packages (-r a list of NAME==VERSION);
#   .whl/gpu: nvidia-nvimgcodec-cu13 and nvidia-nvjpeg; .gpu/test-split.tar: the test files of data/prepared.
# Calls: carry .whl/p1 + .whl/serve, then .whl/p2 .. .whl/p4 one a call (`cp .whl/pN/* /tmp/wheel-parts/`),
# then carry .whl/p5 .whl/gpu models/model.onnx data/prepared .gpu and run this script, within 30 s of each
# other (the machine goes back when idle).
set -u
out=${1:?usage: gpu_session.sh OUT_DIR}
load_seconds=${LOAD_SECONDS:-15}
exec > >(tee "$out/session.log") 2>&1  # one log: what comes back from the machine is at most 8 files
set -a; . pipeline/telemetry.env; set +a  # the telemetry opt-outs
export PYTHONUNBUFFERED=1

if [ -z "${SKIP_INSTALL:-}" ]; then
    if [ ! -f /tmp/site/onnxruntime/__init__.py ]; then
        cat /tmp/wheel-parts/ort.part* >/tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            /tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl $(ls .whl/serve/*.whl .whl/gpu/*.whl 2>/dev/null) || exit 1
    fi
    export PYTHONPATH=/tmp/site:$PWD
    nvidia_libs=$(python3 -c 'import glob, os, nvidia
print(":".join(sorted({os.path.dirname(f) for d in nvidia.__path__ for f in glob.glob(d + "/**/lib*.so*", recursive=True)})))')
    export LD_LIBRARY_PATH=$nvidia_libs:${LD_LIBRARY_PATH:-}
fi
[ -f .gpu/test-split.tar ] && tar -xf .gpu/test-split.tar

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
    echo "cpu cores: $(nproc)"
    python3 -c 'import torch, onnxruntime as o, bentoml
print("torch", torch.__version__, "| onnxruntime", o.__version__, o.get_available_providers(), "| bentoml", bentoml.__version__)'
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

[ -z "${SERVED_ONLY:-}" ] && timeout 220 python3 -m benchmarks.inference --device "${DEVICE:-cuda}" --backbones resnet50,resnet18,efficientnet_lite0 \
    --batches "${BATCHES:-1,32,64,256}" --repeat-seconds 0.5 --out "$out/inference.json"
[ -z "${SKIP_INSTALL:-}${SERVED_ONLY:-}" ] && timeout 60 python3 -m benchmarks.gpu_decode --out "$out/decode.json"

# The served model: each HTTP worker batches its own requests on its own session (no model service); the
# workers derived from the machine (1 per 2 cores, up to 8, with a GPU), then 1 and 16; one image a request
# and 16 (classify_batch) in each run, each against the model alone at its mean batch.
load() {
    local name=$1
    shift
    timeout 150 python3 -m benchmarks.load_test --model models/model.onnx --images 450 --modes on \
        --loads 128x1,64x16 --rounds 1 --seconds "$load_seconds" --warmup 3 --out "$out/$name.json" "$@"
}
load served_derived --client-processes 6
load served_w1 --client-processes 6 --workers 1
load served_w16 --client-processes 6 --workers 16
