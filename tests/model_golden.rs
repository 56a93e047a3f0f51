//! The candle AlexNet against PyTorch: logits, loss, every parameter gradient, and the
//! weights after two steps of the paper's SGD, on fixtures written by
//! `benches/torch_golden.py` (reduced width 0.0625, 95x95 inputs, 10 classes, batch 4;
//! PyTorch computed in float64, stored as float32).
//!
//! Run in f64 (our ops must reproduce PyTorch up to the f32 rounding of the fixture), in
//! f32 (the training dtype) with the custom and the reference kernels, and in bf16. The
//! comparison itself is `pipeline::train::golden`, which the GPU check runs on CUDA.

use candle_core::{DType, Device, Result};
use pipeline::model::Kernels;
use pipeline::train::golden;

fn run(dtype: DType, kernels: Kernels) -> Result<()> {
    let rows = golden::check(&golden::fixture_path(), &Device::Cpu, dtype, kernels)?;
    let worst = rows.iter().fold(0f64, |m, r| m.max(r.rel_err));
    println!("{dtype:?} {kernels:?}: worst error relative to tensor scale {worst:.2e}");
    for r in &rows {
        println!("  {:24} {:.2e}", r.tensor, r.rel_err);
    }
    // logits, loss, 16 gradients, 16 weight deltas, logits after the steps
    assert_eq!(rows.len(), 35);
    let failures: Vec<&String> = rows.iter().filter_map(|r| r.failure.as_ref()).collect();
    assert!(failures.is_empty(), "{failures:#?}");
    Ok(())
}

/// f64: our LRN, pool, conv and SGD against PyTorch up to the fixture's f32 rounding.
#[test]
fn matches_pytorch_f64() -> Result<()> {
    run(DType::F64, Kernels::Custom)
}

/// f32, the dtype training runs in: 1e-4 relative (plus 1e-5 of each tensor's scale for
/// entries near zero).
#[test]
fn matches_pytorch_f32() -> Result<()> {
    run(DType::F32, Kernels::Custom)
}

/// The reference composites (`[model] kernels = "reference"`) match PyTorch as well.
#[test]
fn reference_kernels_match_pytorch_f32() -> Result<()> {
    run(DType::F32, Kernels::Reference)
}
