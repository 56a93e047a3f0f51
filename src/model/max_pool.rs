//! Max-pooling with a correct backward for overlapping windows (paper §3.4: z = 3, s = 2).
//!
//! Why not candle's `max_pool2d`: in candle 0.11 its backward bails out when
//! kernel != stride ("backward not supported for maxpool2d if ksize != stride"), and when
//! kernel == stride it returns the gradient scaled by 1/k² (it multiplies by an
//! `avg_pool2d` of the argmax mask). Both are pinned by the test
//! `candle_max_pool_backward_is_broken` below, so an upgrade that fixes candle shows up.
//!
//! Three implementations of one rule — every output is its window's first maximum in
//! row-major order (PyTorch's rule; a NaN counts as the maximum), and its gradient goes
//! to that position, overlapping windows that share a maximum adding up:
//! - [`MaxPool`], a `CustomOp1`: the CPU forward (rayon over planes) and the CUDA
//!   forward (`max_pool.cu`) record the argmax of every output (4 bytes each), and the
//!   backward [`MaxPoolScatter`] routes each output gradient to it, like PyTorch's
//!   `max_pool2d_with_indices`. On the GPU the backward runs per input element, summing
//!   the windows that picked it, so it needs no atomics and is deterministic.
//!   [`MaxPoolBackward`] `(input, grad_output) -> grad_input` recomputes the argmaxes
//!   instead (CPU), for when no record exists.
//! - [`max_pool2d_reference`], candle ops only (`index_select`, `stack`, `argmax`,
//!   `gather`), differentiated by candle on any device: the oracle the custom op is
//!   tested against, and what `[model] kernels = "reference"` runs.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType,
};
use rayon::prelude::*;

use super::config::PoolConfig;
use super::cpu_slice::contiguous_slice;

/// Max-pools a `(batch, channels, height, width)` tensor with square `size` windows every
/// `stride` pixels, no padding, floor mode: output side `(side - size) / stride + 1`.
/// The custom op where the device has it (CPU; CUDA in `cuda` builds), else
/// [`max_pool2d_reference`].
pub fn max_pool2d(x: &Tensor, cfg: PoolConfig) -> Result<Tensor> {
    const CPU: &[DType] = &[DType::F32, DType::F64, DType::F16, DType::BF16];
    if super::custom_op_runs(x, CPU, cfg!(feature = "cuda")) {
        x.contiguous()?.apply_op1(MaxPool::new(cfg))
    } else {
        max_pool2d_reference(x, cfg)
    }
}

/// Max-pooling from candle ops only (any device, any float dtype). Each of the size²
/// offsets within a window picks its elements with `index_select` on rows and columns;
/// the offsets are stacked on a last axis in row-major order, and `gather` at the
/// `argmax` takes each window's maximum. candle differentiates `index_select` and
/// `gather`, so the gradient goes to that maximum and overlapping windows add up.
/// Ties go to the first offset where candle's `argmax` picks the first maximum (its CPU
/// kernel does; the tests pin it), so compare with the custom op on tie-free data.
pub fn max_pool2d_reference(x: &Tensor, cfg: PoolConfig) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (oh, ow) = (out_side(h, &cfg)?, out_side(w, &cfg)?);
    let picks = |offset: usize, n: usize| {
        let idx: Vec<u32> = (0..n).map(|i| (offset + i * cfg.stride) as u32).collect();
        Tensor::from_vec(idx, n, x.device())
    };
    let mut taps = Vec::with_capacity(cfg.size * cfg.size);
    for dy in 0..cfg.size {
        let rows = x.index_select(&picks(dy, oh)?, 2)?; // (b, c, oh, w)
        for dx in 0..cfg.size {
            taps.push(rows.index_select(&picks(dx, ow)?, 3)?); // (b, c, oh, ow)
        }
    }
    let windows = Tensor::stack(&taps, 4)?; // (b, c, oh, ow, size²)
    let first_max = windows.argmax_keepdim(4)?; // (b, c, oh, ow, 1), no gradient
    windows.gather(&first_max, 4)?.squeeze(4)
}

/// The max-pool forward as a candle custom op. One instance per call: it keeps the
/// argmax positions of its forward for its backward.
#[derive(Debug)]
pub struct MaxPool {
    cfg: PoolConfig,
    /// Per output, the index within its input plane of the window's maximum.
    argmax: Mutex<Option<Argmax>>,
}

/// The argmax record of a forward, where the forward ran.
#[derive(Debug, Clone)]
enum Argmax {
    Cpu(Arc<Vec<u32>>),
    #[cfg(feature = "cuda")]
    Cuda(Arc<candle_core::cuda_backend::cudarc::driver::CudaSlice<u32>>),
}

impl Argmax {
    fn len(&self) -> usize {
        match self {
            Argmax::Cpu(v) => v.len(),
            #[cfg(feature = "cuda")]
            Argmax::Cuda(v) => v.len(),
        }
    }
}

impl MaxPool {
    pub fn new(cfg: PoolConfig) -> Self {
        Self {
            cfg,
            argmax: Mutex::new(None),
        }
    }
}

/// Scatters an output gradient `(b, c, oh, ow)` to the recorded argmax positions:
/// `grad_output -> grad_input (b, c, h, w)` (CPU and CUDA, no backward).
#[derive(Debug)]
pub struct MaxPoolScatter {
    argmax: Argmax,
    in_dims: (usize, usize, usize, usize),
    /// The windows (the CUDA backward walks them per input element).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    cfg: PoolConfig,
}

/// The max-pool backward: `(input, grad_output) -> grad_input` (CPU).
#[derive(Debug, Clone, Copy)]
pub struct MaxPoolBackward(pub PoolConfig);

/// Output side for one spatial dim, or an error naming the sizes.
fn out_side(side: usize, cfg: &PoolConfig) -> Result<usize> {
    if side < cfg.size || cfg.stride == 0 {
        candle_core::bail!("max-pool: input side {side} is smaller than the window {cfg:?}")
    }
    Ok((side - cfg.size) / cfg.stride + 1)
}

fn out_shape(l: &Layout, cfg: &PoolConfig) -> Result<(usize, usize, usize, usize, usize, usize)> {
    let (b, c, h, w) = match l.dims() {
        &[b, c, h, w] => (b, c, h, w),
        d => candle_core::bail!("max-pool: expects (batch, channels, height, width), got {d:?}"),
    };
    Ok((b, c, h, w, out_side(h, cfg)?, out_side(w, cfg)?))
}

/// Index (within the plane) of the first maximum of the `k`x`k` window whose top-left
/// corner is (y0, x0). `K` > 0 fixes the window side at compile time (unrolled loops for
/// the paper's 3 and the 2/2 variant); `K = 0` reads it from `k`.
#[inline(always)]
fn argmax<T: WithDType, const K: usize>(
    plane: &[T],
    w: usize,
    y0: usize,
    x0: usize,
    k: usize,
) -> usize {
    let k = if K > 0 { K } else { k };
    // Two branch-free passes over the (L1-resident) window: the maximum (and whether
    // a NaN is present), then the first position holding it, scanning backwards with a
    // select. A single pass tracking value and index compiles to a data-dependent
    // branch; on real activations its mispredictions made it ~2x slower.
    let mut m = plane[y0 * w + x0];
    let mut nan = false;
    for y in y0..y0 + k {
        for &v in &plane[y * w + x0..y * w + x0 + k] {
            m = if v > m { v } else { m };
            #[allow(clippy::eq_op)]
            {
                nan |= v != v;
            }
        }
    }
    let mut best_i = y0 * w + x0;
    for y in (y0..y0 + k).rev() {
        for dx in (0..k).rev() {
            let i = y * w + x0 + dx;
            let v = plane[i];
            // Ties: the smallest row-major position wins; a NaN counts as the maximum.
            #[allow(clippy::eq_op)]
            let hit = (!nan & (v == m)) | (nan & (v != v));
            best_i = if hit { i } else { best_i };
        }
    }
    best_i
}

/// Calls `f(output_index, argmax_index)` for every window of one plane.
fn for_each_window<T: WithDType, const K: usize>(
    plane: &[T],
    w: usize,
    oh: usize,
    ow: usize,
    cfg: &PoolConfig,
    mut f: impl FnMut(usize, usize),
) {
    for oy in 0..oh {
        for ox in 0..ow {
            f(
                oy * ow + ox,
                argmax::<T, K>(plane, w, oy * cfg.stride, ox * cfg.stride, cfg.size),
            );
        }
    }
}

/// Dispatches to the unrolled window sizes.
fn windows<T: WithDType>(
    plane: &[T],
    w: usize,
    oh: usize,
    ow: usize,
    cfg: &PoolConfig,
    f: impl FnMut(usize, usize),
) {
    match cfg.size {
        3 => for_each_window::<T, 3>(plane, w, oh, ow, cfg, f),
        2 => for_each_window::<T, 2>(plane, w, oh, ow, cfg, f),
        _ => for_each_window::<T, 0>(plane, w, oh, ow, cfg, f),
    }
}

/// Forward on one dtype: the maxima and their positions within each plane.
fn pool_fwd<T: WithDType>(inp: &[T], l: &Layout, cfg: &PoolConfig) -> Result<(Vec<T>, Vec<u32>)> {
    let (b, c, h, w, oh, ow) = out_shape(l, cfg)?;
    if h * w > u32::MAX as usize {
        candle_core::bail!("max-pool: plane {h}x{w} too large for u32 indices")
    }
    let mut out = vec![T::zero(); b * c * oh * ow];
    let mut idx = vec![0u32; b * c * oh * ow];
    out.par_chunks_mut(oh * ow)
        .zip(idx.par_chunks_mut(oh * ow))
        .zip(inp.par_chunks(h * w))
        .for_each(|((o, ix), plane)| {
            windows(plane, w, oh, ow, cfg, |j, i| {
                o[j] = plane[i];
                ix[j] = i as u32;
            });
        });
    Ok((out, idx))
}

fn scatter<T: WithDType>(grad: &[T], idx: &[u32], plane: usize, out_plane: usize) -> Vec<T> {
    let mut out = vec![T::zero(); grad.len() / out_plane * plane];
    out.par_chunks_mut(plane)
        .zip(grad.par_chunks(out_plane).zip(idx.par_chunks(out_plane)))
        .for_each(|(o, (g, ix))| {
            for (&gv, &i) in g.iter().zip(ix) {
                o[i as usize] += gv;
            }
        });
    out
}

fn pool_bwd<T: WithDType>(inp: &[T], l: &Layout, grad: &[T], cfg: &PoolConfig) -> Result<Vec<T>> {
    let (b, c, h, w, oh, ow) = out_shape(l, cfg)?;
    if grad.len() != b * c * oh * ow {
        candle_core::bail!(
            "max-pool backward: grad has {} values, expected {}",
            grad.len(),
            b * c * oh * ow
        )
    }
    let mut out = vec![T::zero(); b * c * h * w];
    out.par_chunks_mut(h * w)
        .zip(inp.par_chunks(h * w).zip(grad.par_chunks(oh * ow)))
        .for_each(|(o, (plane, g))| {
            // Overlapping windows may share an argmax: gradients add up.
            windows(plane, w, oh, ow, cfg, |j, i| o[i] += g[j]);
        });
    Ok(out)
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, _, _, oh, ow) = out_shape(l, &self.cfg)?;
        let (op, cfg) = ("max-pool2d", &self.cfg);
        let (out, idx) = match s {
            CpuStorage::F32(_) => {
                let (o, i) = pool_fwd(contiguous_slice::<f32>(s, l, op)?, l, cfg)?;
                (CpuStorage::F32(o), i)
            }
            CpuStorage::F64(_) => {
                let (o, i) = pool_fwd(contiguous_slice::<f64>(s, l, op)?, l, cfg)?;
                (CpuStorage::F64(o), i)
            }
            CpuStorage::F16(_) => {
                let (o, i) = pool_fwd(contiguous_slice(s, l, op)?, l, cfg)?;
                (CpuStorage::F16(o), i)
            }
            CpuStorage::BF16(_) => {
                let (o, i) = pool_fwd(contiguous_slice(s, l, op)?, l, cfg)?;
                (CpuStorage::BF16(o), i)
            }
            _ => candle_core::bail!("{op}: unsupported dtype {:?}", s.dtype()),
        };
        *self.argmax.lock().expect("max-pool argmax lock") = Some(Argmax::Cpu(Arc::new(idx)));
        Ok((out, Shape::from((b, c, oh, ow))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, c, _, _, oh, ow) = out_shape(l, &self.cfg)?;
        let (out, idx) = gpu::forward(s, l, &self.cfg)?;
        *self.argmax.lock().expect("max-pool argmax lock") = Some(Argmax::Cuda(Arc::new(idx)));
        Ok((out, Shape::from((b, c, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let g = grad_res.contiguous()?;
        let recorded = self.argmax.lock().expect("max-pool argmax lock").clone();
        match recorded {
            Some(argmax) => {
                let (in_dims, cfg) = (arg.dims4()?, self.cfg);
                Ok(Some(g.apply_op1_no_bwd(&MaxPoolScatter {
                    argmax,
                    in_dims,
                    cfg,
                })?))
            }
            None => Ok(Some(arg.apply_op2_no_bwd(&g, &MaxPoolBackward(self.cfg))?)),
        }
    }
}

impl CustomOp1 for MaxPoolScatter {
    fn name(&self) -> &'static str {
        "max-pool2d-scatter"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = self.in_dims;
        let out_plane = match l.dims() {
            &[gb, gc, oh, ow] if gb == b && gc == c => oh * ow,
            d => candle_core::bail!("max-pool2d-scatter: grad {d:?} vs input {:?}", self.in_dims),
        };
        if self.argmax.len() != b * c * out_plane {
            candle_core::bail!(
                "max-pool2d-scatter: {} indices for grad {:?}",
                self.argmax.len(),
                l.dims()
            )
        }
        let op = "max-pool2d-scatter";
        let idx = match &self.argmax {
            Argmax::Cpu(v) => &v[..],
            #[cfg(feature = "cuda")]
            Argmax::Cuda(_) => candle_core::bail!("{op}: the argmax record is on the GPU"),
        };
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(scatter(
                contiguous_slice::<f32>(s, l, op)?,
                idx,
                h * w,
                out_plane,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(scatter(
                contiguous_slice::<f64>(s, l, op)?,
                idx,
                h * w,
                out_plane,
            )),
            CpuStorage::F16(_) => {
                CpuStorage::F16(scatter(contiguous_slice(s, l, op)?, idx, h * w, out_plane))
            }
            CpuStorage::BF16(_) => {
                CpuStorage::BF16(scatter(contiguous_slice(s, l, op)?, idx, h * w, out_plane))
            }
            _ => candle_core::bail!("{op}: unsupported dtype {:?}", s.dtype()),
        };
        Ok((out, Shape::from(self.in_dims)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let Argmax::Cuda(argmax) = &self.argmax else {
            candle_core::bail!("max-pool2d-scatter: the argmax record is on the CPU")
        };
        let out = gpu::scatter(s, l, argmax, self.in_dims, &self.cfg)?;
        Ok((out, Shape::from(self.in_dims)))
    }
}

/// The CUDA side: launches of `max_pool.cu`.
#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, PushKernelArg};
    use candle_core::{CudaStorage, Layout, Result};

    use super::{PoolConfig, out_shape};
    use crate::model::cuda::{self, MAX_POOL, dim32, with_float_type};

    /// `(planes, h, w, oh, ow, size, stride)` as the kernels take them.
    fn dims(
        d: (usize, usize, usize, usize),
        oh: usize,
        ow: usize,
        cfg: &PoolConfig,
    ) -> Result<[u32; 7]> {
        let op = "max-pool2d";
        Ok([
            dim32(d.0 * d.1, op)?,
            dim32(d.2, op)?,
            dim32(d.3, op)?,
            oh as u32,
            ow as u32,
            cfg.size as u32,
            cfg.stride as u32,
        ])
    }

    pub(super) fn forward(
        s: &CudaStorage,
        l: &Layout,
        cfg: &PoolConfig,
    ) -> Result<(CudaStorage, CudaSlice<u32>)> {
        let (b, c, h, w, oh, ow) = out_shape(l, cfg)?;
        dim32(b * c * h * w, "max-pool2d")?; // plane indices are u32
        let dims = dims((b, c, h, w), oh, ow, cfg)?;
        let n = b * c * oh * ow;
        let dev = s.device().clone();
        let func = MAX_POOL.func(&dev, "max_pool_fwd", s.dtype())?;
        let idx = unsafe { dev.alloc::<u32>(n)? };
        with_float_type!(s.dtype(), "max-pool2d", |T| {
            let x = cuda::view::<T>(s, l, "max-pool2d")?;
            // SAFETY: the kernel writes every output and index.
            let y = unsafe { dev.alloc::<T>(n)? };
            let stream = dev.cuda_stream();
            let mut args = stream.launch_builder(&func);
            args.arg(&x).arg(&y).arg(&idx);
            for d in &dims {
                args.arg(d);
            }
            // SAFETY: argument types and order match `max_pool_fwd_*` in max_pool.cu.
            unsafe { args.launch(cuda::grid(n)) }.w()?;
            drop(args);
            Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), idx))
        })
    }

    pub(super) fn scatter(
        s: &CudaStorage,
        l: &Layout,
        argmax: &CudaSlice<u32>,
        in_dims: (usize, usize, usize, usize),
        cfg: &PoolConfig,
    ) -> Result<CudaStorage> {
        let (b, c, h, w) = in_dims;
        let (oh, ow) = match l.dims() {
            &[gb, gc, oh, ow] if gb == b && gc == c && argmax.len() == b * c * oh * ow => (oh, ow),
            d => candle_core::bail!("max-pool2d-scatter: grad {d:?} vs input {in_dims:?}"),
        };
        let dims = dims(in_dims, oh, ow, cfg)?;
        let n = b * c * h * w;
        let dev = s.device().clone();
        let func = MAX_POOL.func(&dev, "max_pool_bwd", s.dtype())?;
        with_float_type!(s.dtype(), "max-pool2d-scatter", |T| {
            let gy = cuda::view::<T>(s, l, "max-pool2d-scatter")?;
            // SAFETY: the kernel writes every input gradient.
            let gx = unsafe { dev.alloc::<T>(n)? };
            let stream = dev.cuda_stream();
            let mut args = stream.launch_builder(&func);
            args.arg(&gy).arg(argmax).arg(&gx);
            for d in &dims {
                args.arg(d);
            }
            // SAFETY: argument types and order match `max_pool_bwd_*` in max_pool.cu.
            unsafe { args.launch(cuda::grid(n)) }.w()?;
            drop(args);
            Ok(CudaStorage::wrap_cuda_slice(gx, dev.clone()))
        })
    }
}

impl CustomOp2 for MaxPoolBackward {
    fn name(&self) -> &'static str {
        "max-pool2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = "max-pool2d-backward";
        let c = &self.0;
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(pool_bwd(
                contiguous_slice::<f32>(s1, l1, op)?,
                l1,
                contiguous_slice(s2, l2, op)?,
                c,
            )?),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(pool_bwd(
                contiguous_slice::<f64>(s1, l1, op)?,
                l1,
                contiguous_slice(s2, l2, op)?,
                c,
            )?),
            (CpuStorage::F16(_), CpuStorage::F16(_)) => CpuStorage::F16(pool_bwd(
                contiguous_slice(s1, l1, op)?,
                l1,
                contiguous_slice(s2, l2, op)?,
                c,
            )?),
            (CpuStorage::BF16(_), CpuStorage::BF16(_)) => CpuStorage::BF16(pool_bwd(
                contiguous_slice(s1, l1, op)?,
                l1,
                contiguous_slice(s2, l2, op)?,
                c,
            )?),
            _ => candle_core::bail!("{op}: unsupported dtypes {:?}/{:?}", s1.dtype(), s2.dtype()),
        };
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    use super::super::test_util::check_gradient;

    fn rand_vec(n: usize, seed: u64) -> Vec<f64> {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect()
    }

    fn paper() -> PoolConfig {
        PoolConfig::default()
    }

    #[test]
    fn forward_values_and_shape() -> Result<()> {
        // One 5x5 plane 0..25: windows at rows/cols {0,2}, each max is its bottom-right.
        let x = Tensor::arange(0f32, 25., &Device::Cpu)?.reshape((1, 1, 5, 5))?;
        let y = max_pool2d(&x, paper())?;
        assert_eq!(y.dims(), &[1, 1, 2, 2]);
        assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, vec![12., 14., 22., 24.]);
        // Window 3 stride 2 drops the last column/row when they do not fit (6 -> 2).
        let x = Tensor::arange(0f32, 72., &Device::Cpu)?.reshape((2, 1, 6, 6))?;
        assert_eq!(max_pool2d(&x, paper())?.dims(), &[2, 1, 2, 2]);
        // Same values as candle's own forward.
        let x = Tensor::from_vec(rand_vec(2 * 3 * 13 * 11, 5), (2, 3, 13, 11), &Device::Cpu)?;
        let ours = max_pool2d(&x, paper())?;
        let theirs = x.max_pool2d_with_stride(3, 2)?;
        assert_eq!(
            ours.flatten_all()?.to_vec1::<f64>()?,
            theirs.flatten_all()?.to_vec1::<f64>()?
        );
        // Too small an input is an error, not a panic.
        assert!(
            max_pool2d(
                &Tensor::zeros((1, 1, 2, 2), DType::F32, &Device::Cpu)?,
                paper()
            )
            .is_err()
        );
        Ok(())
    }

    /// Analytic vs central finite differences in f64 on random inputs (distinct values,
    /// so the max is locally differentiable), covering overlapping windows and edges
    /// (odd/even sides where the last row/column is dropped), for 3/2 and 2/2.
    #[test]
    fn gradient_matches_finite_differences() -> Result<()> {
        for (cfg, (h, w)) in [
            (paper(), (7usize, 7usize)),
            (paper(), (8, 6)),
            (PoolConfig { size: 2, stride: 2 }, (5, 6)),
            (PoolConfig { size: 3, stride: 1 }, (5, 4)),
        ] {
            let shape = (2usize, 3usize, h, w);
            let n = 2 * 3 * h * w;
            let base = rand_vec(n, (h * 10 + w) as u64);
            let oh = (h - cfg.size) / cfg.stride + 1;
            let ow = (w - cfg.size) / cfg.stride + 1;
            let wts =
                Tensor::from_vec(rand_vec(2 * 3 * oh * ow, 99), (2, 3, oh, ow), &Device::Cpu)?;
            let x0 = Tensor::from_slice(&base, shape, &Device::Cpu)?;
            let check = check_gradient(|x| max_pool2d(x, cfg), &x0, &wts)?;
            let worst = check.worst;
            assert!(
                worst < 1e-6,
                "{cfg:?} {h}x{w}: worst relative error {worst:e} at element {}",
                check.element
            );
            println!("max-pool {cfg:?} {h}x{w}: worst relative error {worst:.1e}");
        }
        Ok(())
    }

    /// Ties: the whole gradient of a window goes to its first maximum in row-major order
    /// (PyTorch's CPU rule); a shared argmax of two overlapping windows gets both.
    #[test]
    fn ties_go_to_first_max_and_overlaps_add() -> Result<()> {
        // 3x5 plane, two windows (cols 0-2 and 2-4) overlapping at column 2.
        #[rustfmt::skip]
        let v = [
            1., 5., 5.,   0., 0.,
            5., 0., 0.,   0., 0.,
            0., 0., 0.,   0., 0.,
        ];
        let x = Var::from_tensor(&Tensor::from_slice(&v, (1, 1, 3, 5), &Device::Cpu)?)?;
        let g = Tensor::from_slice(&[10f64, 100.], (1, 1, 1, 2), &Device::Cpu)?;
        let grads = (max_pool2d(x.as_tensor(), paper())? * &g)?
            .sum_all()?
            .backward()?;
        let got = grads
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()?
            .to_vec1::<f64>()?;
        // window 0: maxima (0,1),(0,2),(1,0) -> first is (0,1); window 1: max 5 at (0,2).
        let mut want = vec![0.0; 15];
        want[1] = 10.0;
        want[2] = 100.0;
        assert_eq!(got, want);
        // All-equal plane: every window's gradient lands on its top-left corner, and
        // the corner shared by neighbouring windows accumulates.
        let x = Var::from_tensor(&Tensor::ones((1, 1, 5, 5), DType::F64, &Device::Cpu)?)?;
        let grads = max_pool2d(x.as_tensor(), paper())?.sum_all()?.backward()?;
        let got = grads
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()?
            .to_vec1::<f64>()?;
        let mut want = vec![0.0; 25];
        for i in [0, 2, 10, 12] {
            want[i] = 1.0;
        }
        assert_eq!(got, want);
        Ok(())
    }

    /// The recorded-argmax backward (scatter) equals the recomputing one, on data full
    /// of ties (small integers) and with a NaN, which wins its windows like in PyTorch.
    #[test]
    fn scatter_equals_recompute_and_nan_wins() -> Result<()> {
        let mut v: Vec<f64> = rand_vec(2 * 3 * 9 * 8, 4)
            .iter()
            .map(|x| (x * 3.0).round())
            .collect();
        v[17] = f64::NAN;
        let x = Var::from_tensor(&Tensor::from_vec(v, (2, 3, 9, 8), &Device::Cpu)?)?;
        let y = max_pool2d(x.as_tensor(), paper())?;
        let g = Tensor::from_vec(rand_vec(2 * 3 * 4 * 3, 5), (2, 3, 4, 3), &Device::Cpu)?;
        let scatter = (&y * &g)?.sum_all()?.backward()?;
        let scatter = scatter
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()?
            .to_vec1::<f64>()?;
        let recompute = x
            .as_tensor()
            .apply_op2_no_bwd(&g, &MaxPoolBackward(paper()))?;
        assert_eq!(scatter, recompute.flatten_all()?.to_vec1::<f64>()?);
        // Element 17 = plane 0, row 2, col 1: in the windows at rows 0 and 2, col 0.
        let yv = y.flatten_all()?.to_vec1::<f64>()?;
        assert!(
            yv[0].is_nan() && yv[3].is_nan() && !yv[1].is_nan(),
            "{:?}",
            &yv[..6]
        );
        let gv = g.flatten_all()?.to_vec1::<f64>()?;
        assert_eq!(scatter[17], gv[0] + gv[3]);
        Ok(())
    }

    /// Pins candle 0.11's max_pool2d backward behaviour that this module exists to avoid.
    /// If this fails after a candle upgrade, candle may have fixed it: re-evaluate.
    #[test]
    fn candle_max_pool_backward_is_broken() -> Result<()> {
        let x = Var::from_tensor(&Tensor::from_vec(
            rand_vec(36, 1),
            (1, 1, 6, 6),
            &Device::Cpu,
        )?)?;
        // kernel 3 stride 2: backward is refused.
        let y = x.as_tensor().max_pool2d_with_stride(3, 2)?;
        assert!(y.sum_all()?.backward().is_err());
        // kernel 2 stride 2: the gradient of sum() should be one 1 per window; candle
        // gives 1/k^2 = 0.25.
        let grads = x.as_tensor().max_pool2d(2)?.sum_all()?.backward()?;
        let total = grads
            .get(x.as_tensor())
            .unwrap()
            .sum_all()?
            .to_scalar::<f64>()?;
        assert!(
            (total - 9.0 * 0.25).abs() < 1e-12,
            "candle total gradient {total}"
        );
        let grads = max_pool2d(x.as_tensor(), PoolConfig { size: 2, stride: 2 })?
            .sum_all()?
            .backward()?;
        let total = grads
            .get(x.as_tensor())
            .unwrap()
            .sum_all()?
            .to_scalar::<f64>()?;
        assert_eq!(total, 9.0);
        Ok(())
    }
}
