//! Tensors and comparisons shared by the model's op tests (gradient checks).

use candle_core::{DType, Device, Tensor};

/// Deterministic pseudo-random values in [-scale, scale) (no candle RNG).
pub fn scaled_tensor(shape: &[usize], seed: u64, scale: f64, dtype: DType) -> Tensor {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| (rng.random::<f64>() * 2.0 - 1.0) * scale)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// f64 values in [-1, 1).
pub fn rand_tensor(shape: &[usize], seed: u64) -> Tensor {
    scaled_tensor(shape, seed, 1.0, DType::F64)
}

/// Largest absolute elementwise difference, in f64.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}
