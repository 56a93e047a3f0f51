#!/usr/bin/env bash
# (Copied from the workplace's shared build_cuda.sh; fixed to resolve cudarc with the requested
# features, since cudarc is an optional dependency that plain `cargo metadata` does not list.)
# Builds a Cargo project that uses candle with `cuda` (optionally `cudnn`) on a machine WITHOUT a GPU,
# driver or CUDA toolkit, using NVIDIA's CUDA 13.0 wheels from PyPI as the toolkit. The binary is then
# carried to the GPU machine (H100/H200, sm_90, driver 580 = CUDA 13.0, PyTorch 2.11+cu130 installed).
# Verified on this kind of machine: a candle 0.11.1 cuda/cudnn binary builds (~8 min cold, ~40 MB) and
# all its dynamic symbols resolve against the wheels. Not yet run on a GPU.
#
# usage: build_cuda.sh PROJECT_DIR [CARGO_FEATURES] [extra cargo args...]
#   e.g. build_cuda.sh . cuda            build_cuda.sh . "cuda cudnn" --bin pipeline
# On the GPU machine, point the loader at PyTorch's copies of the same wheels:
#   SITE=$(python3 -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')
#   LD_LIBRARY_PATH=$SITE/nvidia/cu13/lib:$SITE/nvidia/cudnn/lib ./pipeline ...
# (libcuda.so.1 itself comes from the driver there.)
set -euo pipefail
PROJ=$(cd "${1:?usage: build_cuda.sh PROJECT_DIR [FEATURES]}" && pwd); shift
FEATURES=${1:-cuda}; [ $# -gt 0 ] && shift
CB=${CUDA_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cuda-build}
VENV=$CB/venv
LINKDIR=$CB/link                     # unversioned .so links + stub libcuda.so: LINK TIME ONLY
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PROJ/target/cuda}
mkdir -p "$CB" "$LINKDIR"

# 1. CUDA 13.0 toolkit from PyPI. Pin everything to 13.0: nvcc 13.1+ emits PTX ISA > 9.0, which driver
#    580 cannot JIT; nvcc's own deps (crt, nvvm) would otherwise resolve to a newer release. The runtime
#    libraries are the versions torch 2.11 (cu130) uses, so linking validates symbols against them.
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check \
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.1.0.3 \
  nvidia-curand==10.4.0.35 nvidia-cudnn-cu13==9.19.0.56
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
CU=$SITE/nvidia/cu13                 # the wheels share one tree: bin/ include/ lib/ nvvm/

# 2. The wheels ship only lib*.so.N: make lib*.so links for the linker, and a stub libcuda.so
#    (SONAME libcuda.so.1) exporting every driver entry point cudarc binds. Never ship the stub.
for l in "$CU"/lib/lib*.so.* "$SITE"/nvidia/cudnn/lib/lib*.so.*; do
  b=$(basename "$l"); ln -sfn "$l" "$LINKDIR/${b%%.so*}.so"
done
(cd "$PROJ" && cargo fetch -q)
CUDARC_SRC=$(cd "$PROJ" && cargo metadata --format-version 1 -q --features "$FEATURES" | "$VENV/bin/python" -c \
  'import json,sys,os; m=json.load(sys.stdin); print(os.path.dirname(next(p["manifest_path"] for p in m["packages"] if p["name"]=="cudarc")))')
if [ ! -f "$LINKDIR/libcuda.so" ] || [ "$CUDARC_SRC/src/driver/sys/mod.rs" -nt "$LINKDIR/libcuda.so" ]; then
  grep -oP '^pub unsafe fn \Kcu\w+(?=\()' "$CUDARC_SRC/src/driver/sys/mod.rs" | sort -u \
    | sed 's/.*/int &(void){return 999;}/' > "$LINKDIR/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINKDIR/libcuda.so" "$LINKDIR/libcuda_stub.c"
fi

# 3. Build.
export PATH=$CU/bin:$PATH            # nvcc: cudarc runs `nvcc --version`; candle-kernels compiles PTX
export CUDA_HOME=$CU
export CUDARC_CUDA_VERSION=13000     # cudarc bindings for the CUDA 13.0 API (driver 580)
export CUDA_COMPUTE_CAP=90           # no nvidia-smi here; 90 becomes sm_90a (H100/H200)
export CUDAFORGE_THREADS=$(nproc)    # candle-kernels' nvcc jobs (default: half the cores)
export LIBRARY_PATH=$LINKDIR${LIBRARY_PATH:+:$LIBRARY_PATH}
cd "$PROJ"
cargo build --release --features "$FEATURES" "$@"
echo "built into $CARGO_TARGET_DIR/release (PTX ISA must be <= 9.0 for driver 580)"
