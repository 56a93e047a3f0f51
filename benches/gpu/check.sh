#!/usr/bin/env bash
# Every GPU check of the project in one call, for one H100/H200 (16 cores, PyTorch cu130
# installed, no Rust, no network). Run from the repository root:
#
#   bash benches/gpu/check.sh OUT_DIR [PIPELINE_BINARY_GZ]
#
# Needs carried: the stripped, gzipped CUDA binary (default target/pipeline-cuda.gz), built
# on a machine without a GPU by
#   bash benches/gpu/build_cuda.sh . "cuda cudnn" --bin pipeline
#   strip -o target/pipeline-cuda target/cuda/release/pipeline && gzip -f -1 target/pipeline-cuda
# PyTorch (and its CUDA/cuDNN wheels, which the binary loads) are already on the machine.
#
# What it checks (raw output of each part in OUT_DIR/<part>.txt, the timing of each part
# and its exit code in OUT_DIR/summary.txt):
#   a. parity: our CUDA kernels and cuDNN against the reference composites at the paper's
#      layer shapes, and the whole network (f32 and f64 to 1e-4 / 1e-10, bf16 to 3e-2 of
#      each tensor's scale); the PyTorch golden fixture on CUDA (logits, every gradient,
#      two SGD steps) in f32 (1e-4 relative), with the reference kernels, and in bf16 (2 %);
#   b. throughput of the paper's net (width 1, 224 px, batch 128, forward + backward +
#      SGD) in f32 and bf16 against PyTorch + cuDNN on the same card at its best, printed as
#      `ratio candle/pytorch = X` per precision;
#   c. pipeline/sample.toml trained with device = "cuda": val accuracy and wall time;
#   d. the stream on 16 cores with the paper's recipe (the sample ingested at S = 256):
#      images/s, and the trainer's data stall over a short paper-recipe run on CUDA.
# Limits: about 6 minutes expected in all (each part has its own timeout, so one hang cannot eat
# the lease); the sample is 6,000 train / 1,000 val images in 10 classes, so (c) and (d)
# measure the pipeline, not ImageNet accuracy.
# DEVICE=cpu runs the same flow on a CPU build, to try the script itself where no GPU is
# (slow parts then stop at their timeouts; bf16 is refused there).
set -uo pipefail
OUT=${1:?usage: check.sh OUT_DIR [PIPELINE_BINARY_GZ]}
DEVICE=${DEVICE:-cuda}
FIXTURE=tests/fixtures/golden/alexnet_w0.0625_s95.safetensors
BIN_GZ=${2:-target/pipeline-cuda.gz}
mkdir -p "$OUT"
WORK=$(mktemp -d)
SITE=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
export LD_LIBRARY_PATH=$SITE/nvidia/cu13/lib:$SITE/nvidia/cudnn/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export RUST_BACKTRACE=0
BIN=$WORK/pipeline
gunzip -c "$BIN_GZ" > "$BIN" && chmod +x "$BIN" || { echo "no binary at $BIN_GZ" | tee "$OUT/summary.txt"; exit 2; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
FAILED=0
# A device call ends at 10 minutes: parts that would start past BUDGET_S are skipped (and
# counted as failed) so that what ran still comes back.
BUDGET_S=${BUDGET_S:-540}
START=$SECONDS

# part NAME TIMEOUT_S COMMAND...: runs one check, keeps its output and time.
part() {
  local name=$1 limit=$2; shift 2
  if [ $((SECONDS - START)) -ge "$BUDGET_S" ]; then
    FAILED=$((FAILED + 1))
    printf '%-22s skipped: past the %ss budget\n' "$name" "$BUDGET_S" | tee -a "$OUT/summary.txt"
    return
  fi
  local t0=$(date +%s.%N)
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  local dt=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
  [ $rc -ne 0 ] && FAILED=$((FAILED + 1))
  printf '%-22s rc=%-3s %7ss  %s\n' "$name" "$rc" "$dt" "$(tail -n 1 "$OUT/$name.txt")" | tee -a "$OUT/summary.txt"
}

# a. parity
part kernels-f32   60 "$BIN" check kernels --device "$DEVICE" --precision f32 --batch 16
part kernels-f64   60 "$BIN" check kernels --device "$DEVICE" --precision f64 --batch 4
part kernels-bf16  60 "$BIN" check kernels --device "$DEVICE" --precision bf16 --batch 16
part golden-f32    30 "$BIN" check golden --fixture "$FIXTURE" --device "$DEVICE" --precision f32
part golden-ref    30 "$BIN" check golden --fixture "$FIXTURE" --device "$DEVICE" --precision f32 --reference
part golden-bf16   30 "$BIN" check golden --fixture "$FIXTURE" --device "$DEVICE" --precision bf16

# b. throughput, ours then the peer on the same card
part step-f32      60 "$BIN" check step --device "$DEVICE" --precision f32 --batch 128 --steps 20
part step-bf16     60 "$BIN" check step --device "$DEVICE" --precision bf16 --batch 128 --steps 20
part torch-step   240 python3 benches/gpu/torch_step.py --batch 128 --steps 20
python3 - "$OUT" <<'PY' | tee -a "$OUT/summary.txt"
import re, sys
out = sys.argv[1]
def rate(path, pattern):
    try:
        text = open(f"{out}/{path}").read()
    except OSError:
        return None
    m = re.search(pattern, text)
    return float(m.group(1)) if m else None
torch = {v: rate("torch-step.txt", rf"torch {re.escape(v)}: ([\d.]+) images/s") for v in ("f32", "f32-tf32", "bf16", "bf16-compile")}
for ours_file, prec, peers in (("step-f32.txt", "f32", ("f32", "f32-tf32")), ("step-bf16.txt", "bf16", ("bf16", "bf16-compile"))):
    ours = rate(ours_file, r"([\d.]+) images/s")
    best = max((torch[p] for p in peers if torch[p]), default=None)
    if ours and best:
        print(f"{prec}: candle {ours:.0f} images/s, pytorch best {best:.0f} ({'/'.join(p for p in peers if torch[p])}): ratio candle/pytorch = {ours / best:.2f}")
    else:
        print(f"{prec}: ratio candle/pytorch = unmeasured (candle {ours}, pytorch {best})")
PY

# c. the sample recipe on CUDA
part sample-tree   60 "$BIN" sample --out "$WORK/sample"
part ingest-sample 60 "$BIN" ingest "$WORK/sample" --out "$WORK/ds72" --recipe pipeline/sample.toml --quiet
sed "s/^device = \"cpu\"/device = \"$DEVICE\"/" pipeline/sample.toml > "$WORK/sample-cuda.toml"
part train-sample 240 "$BIN" train --recipe "$WORK/sample-cuda.toml" --dataset "$WORK/ds72" --out "$WORK/run-sample" --quiet

# d. the stream on every core with the paper's recipe, and the trainer's data stall
part ingest-256    90 "$BIN" ingest "$WORK/sample" --out "$WORK/ds256" --recipe pipeline/paper.toml --quiet
part stream-paper  90 "$BIN" stream --dataset "$WORK/ds256" --recipe pipeline/paper.toml --epochs 2
part train-paper  120 "$BIN" train --recipe pipeline/paper.toml --device "$DEVICE" --dataset "$WORK/ds256" --out "$WORK/run-paper" --stop-after-steps 60 --quiet

echo "failed parts: $FAILED" | tee -a "$OUT/summary.txt"
rm -rf "$WORK"
[ $FAILED -eq 0 ]
