//! Training-step throughput (forward + backward + SGD, f32, CPU), for
//! `benches/train_step_peer.py`, which runs it next to PyTorch and prints the ratio.
//!
//! `cargo bench --bench train_step`. Cases:
//! `TRAIN_STEP_CASES="width:input:batch:classes:steps,..."` (default: the two sizes of the
//! peer bench, 0.25:64:128:10:5 and 1:224:32:1000:3).

use candle_core::{DType, Device};
use pipeline::model::Kernels;
use pipeline::train::step_timing::{StepCase, time_steps};

/// Huge pages for the large activation and gradient buffers (see `huge_pages`).
#[global_allocator]
static ALLOC: pipeline::huge_pages::HugePages = pipeline::huge_pages::HugePages;

fn main() -> anyhow::Result<()> {
    println!(
        "matmul: {}; {}",
        pipeline::model::onednn::describe(),
        matmul_kernels()
    );
    let cases = std::env::var("TRAIN_STEP_CASES")
        .unwrap_or_else(|_| "0.25:64:128:10:5,1:224:32:1000:3".into());
    for case in cases.split(',') {
        let f: Vec<f64> = case
            .split(':')
            .map(|v| v.parse())
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("TRAIN_STEP_CASES {case:?}: {e}"))?;
        let &[width, input, batch, classes, steps] = f.as_slice() else {
            anyhow::bail!("TRAIN_STEP_CASES {case:?}: expected width:input:batch:classes:steps");
        };
        let case = StepCase {
            width,
            input: input as usize,
            batch: batch as usize,
            classes: classes as usize,
            steps: steps as usize,
            dtype: DType::F32,
            kernels: Kernels::Custom,
        };
        println!("{}", time_steps(&Device::Cpu, &case)?.line(&case));
    }
    Ok(())
}

/// Which of gemm's kernels the built-in CPU path runs here (the f64 products, and every
/// product where oneDNN is not loaded): gemm picks them at run time, AVX-512 ones only
/// where the CPU has avx512f (Cargo.toml enables them).
fn matmul_kernels() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "gemm 0.19 (candle's CPU backend), AVX-512 kernels";
        }
        if std::arch::is_x86_feature_detected!("fma") {
            return "gemm 0.19 (candle's CPU backend), AVX2+FMA kernels";
        }
    }
    "gemm 0.19 (candle's CPU backend), portable kernels"
}
