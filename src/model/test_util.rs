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

/// The outcome of [`check_gradient`].
pub struct GradientCheck {
    /// Worst relative error, `|fd − analytic| / (1e-3 + max(|fd|, |analytic|))`.
    pub worst: f64,
    /// The input element where it occurred.
    pub element: usize,
    /// The gradient candle's backward gave (the op's own backward for a custom op).
    pub analytic: Tensor,
}

/// The gradient of `x ↦ sum(op(x) · weights)` at `x0` from candle's backward against
/// central finite differences in f64 (step 1e-6), element by element. Random weights
/// make every output matter with a different sign and size.
pub fn check_gradient(
    op: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    x0: &Tensor,
    weights: &Tensor,
) -> candle_core::Result<GradientCheck> {
    const STEP: f64 = 1e-6;
    let loss = |x: &Tensor| (op(x)? * weights)?.sum_all();
    let x = candle_core::Var::from_tensor(x0)?;
    let grads = loss(x.as_tensor())?.backward()?;
    let analytic = grads
        .get(x.as_tensor())
        .ok_or_else(|| candle_core::Error::Msg("no gradient reached the input".into()))?
        .clone();
    let exact = analytic.flatten_all()?.to_vec1::<f64>()?;
    let base = x0.flatten_all()?.to_vec1::<f64>()?;
    let at = |v: &[f64]| -> candle_core::Result<f64> {
        loss(&Tensor::from_slice(v, x0.dims(), &Device::Cpu)?)?.to_scalar::<f64>()
    };
    let (mut worst, mut element) = (0f64, 0);
    for i in 0..base.len() {
        let (mut plus, mut minus) = (base.clone(), base.clone());
        plus[i] += STEP;
        minus[i] -= STEP;
        let numeric = (at(&plus)? - at(&minus)?) / (2.0 * STEP);
        let err = (numeric - exact[i]).abs() / (1e-3 + numeric.abs().max(exact[i].abs()));
        if err > worst {
            (worst, element) = (err, i);
        }
    }
    Ok(GradientCheck {
        worst,
        element,
        analytic,
    })
}
