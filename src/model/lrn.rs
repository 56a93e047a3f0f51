//! Local response normalisation across channels (paper §3.3):
//!
//! `b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta`
//!
//! Two implementations with the same maths:
//! - [`Lrn`], a candle `CustomOp1` with a hand-written forward and backward (the
//!   backward is a second custom op, [`LrnBackward`]): on the CPU one pass over memory,
//!   rayon over the batch (f32/f64); on CUDA the kernels of `lrn.cu`, one thread per
//!   element (f32/f64/bf16, `cuda` builds).
//! - [`lrn_composite`], a chain of candle ops (square, pad, shifted sums, powf, div),
//!   differentiated by candle itself; any device and dtype. The reference the custom op
//!   is tested against, and what runs where no custom op exists.
//!
//! Why the custom op on CPU: at conv1's size (batch 128, 96x55x55, f32) the composite
//! makes ~12 full-size temporaries and a generic `powf`, and candle differentiates each
//! of them; the custom op reads the input once per pass and uses
//! `s^-0.75 = 1/(sqrt(s)*sqrt(sqrt(s)))` for the paper's beta. Measured by `cargo bench
//! --bench ops` (backward: its forward+backward less the forward) on the 2-core dev
//! box, best of 3, f32:
//!
//! | implementation                           | forward | backward |
//! |------------------------------------------|---------|----------|
//! | custom op (this file)                    | 0.25 s  | 0.64 s   |
//! | composite of candle ops                  | 0.95 s  | ~2.0 s   |
//! | peer: PyTorch 1.13 `LocalResponseNorm`   | ~0.8 s  | ~1.4 s   |
//!
//! (PyTorch with 2 threads, same box, same run; the box was shared, so absolute times
//! are noisy, the ratios are not.)
//!
//! Gradient of `b_i = a_i s_i^-beta`, `s_i = k + alpha sum_{j in W(i)} a_j^2`, with the
//! window W symmetric (`j in W(i) <=> i in W(j)`):
//! `dL/da_j = g_j s_j^-beta - 2 alpha beta a_j sum_{i in W(j)} g_i a_i s_i^(-beta-1)`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::config::LrnConfig;
use super::cpu_slice::contiguous_slice;

/// Applies LRN across dim 1 of a `(batch, channels, height, width)` tensor.
/// Picks the custom op for f32/f64 on the CPU and f32/f64/bf16 on CUDA (`cuda` builds),
/// the composite elsewhere.
pub fn lrn(x: &Tensor, cfg: LrnConfig) -> Result<Tensor> {
    if super::custom_op_runs(x, &[DType::F32, DType::F64], cfg!(feature = "cuda")) {
        x.contiguous()?.apply_op1(Lrn(cfg))
    } else {
        lrn_composite(x, cfg)
    }
}

/// LRN built from candle ops only: works (forward and backward) on every device, at the
/// cost of many temporaries. The reference the custom op is tested against.
pub fn lrn_composite(x: &Tensor, cfg: LrnConfig) -> Result<Tensor> {
    let (_b, c, _h, _w) = x.dims4()?;
    let half = cfg.n / 2;
    // Zero channels on both sides make the clipped window at the edges a plain sum.
    let padded = x.sqr()?.pad_with_zeros(1, half, half)?; // (b, c + 2*half, h, w)
    let mut sum = padded.narrow(1, 0, c)?;
    for d in 1..=2 * half {
        sum = (sum + padded.narrow(1, d, c)?)?;
    }
    let denom = sum.affine(cfg.alpha, cfg.k)?.powf(cfg.beta)?; // (k + alpha*sum)^beta
    x.div(&denom)
}

/// The LRN forward as a candle custom op (CPU, f32/f64).
#[derive(Debug, Clone, Copy)]
pub struct Lrn(pub LrnConfig);

/// The LRN backward: `(input, grad_output) -> grad_input`. Recomputes the denominators
/// from the input instead of keeping them from the forward pass (cheap: n multiply-adds
/// per element), so the forward stores nothing extra.
#[derive(Debug, Clone, Copy)]
pub struct LrnBackward(pub LrnConfig);

/// Float types the CPU kernels run on.
trait LrnFloat:
    Copy
    + Send
    + Sync
    + std::ops::Add<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Div<Output = Self>
{
    fn of(v: f64) -> Self;
    fn sqrt(self) -> Self;
    fn powf(self, e: Self) -> Self;
}

impl LrnFloat for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    fn powf(self, e: Self) -> Self {
        f32::powf(self, e)
    }
}

impl LrnFloat for f64 {
    fn of(v: f64) -> Self {
        v
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    fn powf(self, e: Self) -> Self {
        f64::powf(self, e)
    }
}

/// `s^-beta`; the paper's beta = 3/4 as two square roots (several times faster than powf,
/// and within an ulp or two of it).
#[inline(always)]
fn inv_pow<T: LrnFloat>(s: T, neg_beta: T, three_quarters: bool) -> T {
    if three_quarters {
        let r = s.sqrt();
        T::of(1.0) / (r * r.sqrt())
    } else {
        s.powf(neg_beta)
    }
}

/// Fills `s` (one image's `c * hw` values) with `k + alpha * windowed sum of squares`.
fn denominators<T: LrnFloat>(x: &[T], s: &mut [T], c: usize, hw: usize, cfg: &LrnConfig) {
    let half = cfg.n / 2;
    let (k, alpha) = (T::of(cfg.k), T::of(cfg.alpha));
    for ch in 0..c {
        let (lo, hi) = (ch.saturating_sub(half), (ch + half).min(c - 1));
        let acc = &mut s[ch * hw..(ch + 1) * hw];
        acc.fill(T::of(0.0));
        for j in lo..=hi {
            for (a, &v) in acc.iter_mut().zip(&x[j * hw..(j + 1) * hw]) {
                *a = *a + v * v;
            }
        }
        for a in acc.iter_mut() {
            *a = k + alpha * *a;
        }
    }
}

fn lrn_fwd<T: LrnFloat>(x: &[T], dims: (usize, usize, usize), cfg: &LrnConfig) -> Vec<T> {
    let (c, hw) = (dims.1, dims.2);
    let three_q = cfg.beta == 0.75;
    let neg_beta = T::of(-cfg.beta);
    let mut out = vec![T::of(0.0); x.len()];
    out.par_chunks_mut(c * hw)
        .zip(x.par_chunks(c * hw))
        .for_each(|(o, xi)| {
            // o holds the denominators first, then is overwritten in place by the result.
            denominators(xi, o, c, hw, cfg);
            for (ov, &xv) in o.iter_mut().zip(xi) {
                *ov = xv * inv_pow(*ov, neg_beta, three_q);
            }
        });
    out
}

fn lrn_bwd<T: LrnFloat>(x: &[T], g: &[T], dims: (usize, usize, usize), cfg: &LrnConfig) -> Vec<T> {
    let (c, hw) = (dims.1, dims.2);
    let half = cfg.n / 2;
    let three_q = cfg.beta == 0.75;
    let neg_beta = T::of(-cfg.beta);
    let two_ab = T::of(2.0 * cfg.alpha * cfg.beta);
    let mut out = vec![T::of(0.0); x.len()];
    out.par_chunks_mut(c * hw)
        .zip(x.par_chunks(c * hw).zip(g.par_chunks(c * hw)))
        .for_each(|(o, (xi, gi))| {
            let mut s = vec![T::of(0.0); c * hw];
            denominators(xi, &mut s, c, hw, cfg);
            // After this loop: s holds s^-beta, t holds g_i a_i s_i^(-beta-1).
            let mut t = vec![T::of(0.0); c * hw];
            for ((sv, tv), (&xv, &gv)) in s.iter_mut().zip(t.iter_mut()).zip(xi.iter().zip(gi)) {
                let p = inv_pow(*sv, neg_beta, three_q);
                *tv = gv * xv * p / *sv;
                *sv = p;
            }
            for ch in 0..c {
                let (lo, hi) = (ch.saturating_sub(half), (ch + half).min(c - 1));
                let acc = &mut o[ch * hw..(ch + 1) * hw];
                // acc = sum_{i in W(ch)} t_i
                for i in lo..=hi {
                    for (a, &tv) in acc.iter_mut().zip(&t[i * hw..(i + 1) * hw]) {
                        *a = *a + tv;
                    }
                }
                let range = ch * hw..(ch + 1) * hw;
                for ((a, &xv), (&gv, &pv)) in acc
                    .iter_mut()
                    .zip(&xi[range.clone()])
                    .zip(gi[range.clone()].iter().zip(&s[range]))
                {
                    *a = gv * pv - two_ab * xv * *a;
                }
            }
        });
    out
}

fn dims_of(l: &Layout, op: &'static str) -> Result<(usize, usize, usize)> {
    match l.dims() {
        &[b, c, h, w] => Ok((b, c, h * w)),
        d => candle_core::bail!("{op}: expects (batch, channels, height, width), got {d:?}"),
    }
}

impl CustomOp1 for Lrn {
    fn name(&self) -> &'static str {
        "lrn"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = dims_of(l, "lrn")?;
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(lrn_fwd(
                contiguous_slice::<f32>(s, l, "lrn")?,
                dims,
                &self.0,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(lrn_fwd(
                contiguous_slice::<f64>(s, l, "lrn")?,
                dims,
                &self.0,
            )),
            _ => candle_core::bail!("lrn: CPU kernel supports f32/f64, got {:?}", s.dtype()),
        };
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((
            gpu::launch("lrn_fwd", s, l, None, &self.0)?,
            l.shape().clone(),
        ))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let g = grad_res.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(&g, &LrnBackward(self.0))?))
    }
}

impl CustomOp2 for LrnBackward {
    fn name(&self) -> &'static str {
        "lrn-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = dims_of(l1, "lrn-backward")?;
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "lrn-backward: input {:?} vs grad {:?}",
                l1.shape(),
                l2.shape()
            );
        }
        let op = "lrn-backward";
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(lrn_bwd(
                contiguous_slice::<f32>(s1, l1, op)?,
                contiguous_slice::<f32>(s2, l2, op)?,
                dims,
                &self.0,
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(lrn_bwd(
                contiguous_slice::<f64>(s1, l1, op)?,
                contiguous_slice::<f64>(s2, l2, op)?,
                dims,
                &self.0,
            )),
            _ => candle_core::bail!("{op}: CPU kernel supports f32/f64, got {:?}", s1.dtype()),
        };
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        if l1.shape() != l2.shape() || s1.dtype() != s2.dtype() {
            candle_core::bail!(
                "lrn-backward: input {:?} {:?} vs grad {:?} {:?}",
                l1.shape(),
                s1.dtype(),
                l2.shape(),
                s2.dtype()
            );
        }
        Ok((
            gpu::launch("lrn_bwd", s1, l1, Some((s2, l2)), &self.0)?,
            l1.shape().clone(),
        ))
    }
}

/// The CUDA side: launches of `lrn.cu`.
#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::{CudaStorage, DType, Layout, Result};

    use super::{LrnConfig, dims_of};
    use crate::model::cuda::{self, LRN, dim32, with_float_type};

    /// `lrn_fwd` (x -> y) or, with `grad`, `lrn_bwd` ((x, g) -> dx).
    pub(super) fn launch(
        kernel: &'static str,
        x: &CudaStorage,
        xl: &Layout,
        grad: Option<(&CudaStorage, &Layout)>,
        cfg: &LrnConfig,
    ) -> Result<CudaStorage> {
        let (b, c, hw) = dims_of(xl, kernel)?;
        let (b32, c32, hw64, half) = (
            dim32(b, kernel)?,
            dim32(c, kernel)?,
            hw as u64,
            dim32(cfg.n / 2, kernel)?,
        );
        let n = b * c * hw;
        let dev = x.device().clone();
        let func = LRN.func(&dev, kernel, x.dtype())?;
        // f64 kernels take f64 constants; f32 and bf16 ones f32.
        let (k, alpha, beta) = (cfg.k, cfg.alpha, cfg.beta);
        let (k32, alpha32, beta32) = (k as f32, alpha as f32, beta as f32);
        with_float_type!(x.dtype(), kernel, |T| {
            let xv = cuda::view::<T>(x, xl, kernel)?;
            let gv = grad
                .map(|(g, gl)| cuda::view::<T>(g, gl, kernel))
                .transpose()?;
            // SAFETY: the kernel writes every element.
            let out = unsafe { dev.alloc::<T>(n)? };
            let stream = dev.cuda_stream();
            let mut args = stream.launch_builder(&func);
            args.arg(&xv);
            if let Some(gv) = &gv {
                args.arg(gv);
            }
            args.arg(&out).arg(&b32).arg(&c32).arg(&hw64).arg(&half);
            if x.dtype() == DType::F64 {
                args.arg(&k).arg(&alpha).arg(&beta);
            } else {
                args.arg(&k32).arg(&alpha32).arg(&beta32);
            }
            // SAFETY: argument types and order match `lrn_fwd_*` / `lrn_bwd_*` in lrn.cu.
            unsafe { args.launch(cuda::grid(n)) }.w()?;
            drop(args);
            Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    use super::super::test_util::{check_gradient, max_abs_diff, scaled_tensor as rand_tensor};

    // A large alpha makes the normalisation (not just the identity-like a/k^beta) matter
    // in the gradient; the paper's config is tested too.
    fn configs() -> [LrnConfig; 3] {
        [
            LrnConfig::default(),
            LrnConfig {
                enabled: true,
                k: 1.0,
                n: 3,
                alpha: 0.5,
                beta: 0.75,
            },
            LrnConfig {
                enabled: true,
                k: 0.7,
                n: 5,
                alpha: 0.3,
                beta: 0.6,
            },
        ]
    }

    #[test]
    fn forward_matches_formula_and_composite() -> Result<()> {
        for cfg in configs() {
            let x = rand_tensor(&[2, 7, 3, 4], 1, 3.0, DType::F64);
            let custom = lrn(&x, cfg)?;
            let comp = lrn_composite(&x, cfg)?;
            assert!(max_abs_diff(&custom, &comp) < 1e-12);
            // Direct transcription of the paper's formula for one element.
            let v = x.flatten_all()?.to_vec1::<f64>()?;
            let out = custom.flatten_all()?.to_vec1::<f64>()?;
            let (c, hw) = (7usize, 12usize);
            for (b, ch, p) in [(0usize, 0usize, 0usize), (1, 6, 11), (1, 3, 5), (0, 1, 7)] {
                let at = |j: usize| v[b * c * hw + j * hw + p];
                let lo = ch.saturating_sub(cfg.n / 2);
                let hi = (ch + cfg.n / 2).min(c - 1);
                let sum: f64 = (lo..=hi).map(|j| at(j) * at(j)).sum();
                let want = at(ch) / (cfg.k + cfg.alpha * sum).powf(cfg.beta);
                assert!((out[b * c * hw + ch * hw + p] - want).abs() < 1e-12);
            }
            // f32 agrees with f64.
            let c32 = lrn(&x.to_dtype(DType::F32)?, cfg)?.to_dtype(DType::F64)?;
            assert!(max_abs_diff(&c32, &custom) < 1e-5);
        }
        Ok(())
    }

    /// Analytic gradient (custom backward) vs central finite differences in f64, for a
    /// loss `sum(lrn(x) * w)` with random w, over every input element.
    #[test]
    fn gradient_matches_finite_differences() -> Result<()> {
        for (ci, cfg) in configs().into_iter().enumerate() {
            let shape = [2usize, 6, 3, 3];
            let x0 = rand_tensor(&shape, 10 + ci as u64, 2.0, DType::F64);
            let w = rand_tensor(&shape, 20 + ci as u64, 1.0, DType::F64);
            let check = check_gradient(|x| lrn(x, cfg), &x0, &w)?;
            let worst = check.worst;
            assert!(
                worst < 1e-6,
                "cfg {cfg:?}: worst relative error {worst:e} at element {}",
                check.element
            );
            println!("lrn {cfg:?}: worst relative error vs finite differences {worst:.1e}");
            // Same gradient as candle differentiating the composite.
            let xc = Var::from_tensor(&x0)?;
            let lc = (lrn_composite(xc.as_tensor(), cfg)? * &w)?.sum_all()?;
            let gc = lc.backward()?;
            let gcomp = gc.get(xc.as_tensor()).expect("grad");
            assert!(max_abs_diff(gcomp, &check.analytic) < 1e-12);
        }
        Ok(())
    }
}
