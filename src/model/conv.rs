//! 2-D convolution with groups, and a CPU implementation whose backward candle lacks.
//!
//! Why not plain `Tensor::conv2d` on the CPU (candle 0.11):
//! - its backward computes the input gradient with `conv_transpose2d`, which is slow on
//!   the CPU (a direct loop, not a GEMM), and the kernel gradient as a conv with the
//!   roles of stride and dilation swapped;
//! - it computes that input gradient even when nobody needs it: for conv1 the input is
//!   the image batch (not a `Var`), yet `backward()` still runs a full
//!   `conv_transpose2d` for it (pinned by `candle_conv_computes_unused_input_grad`);
//! - groups are done with `chunk` + `cat`, whose backward pads each group's gradient
//!   back to full size with zeros and adds them.
//!
//! [`Conv2dOp`] is a `CustomOp3 (input, kernel, bias)` for f32/f64 on the CPU, with an
//! optional fused ReLU ([`Conv2d::forward_relu`]), that lowers each group to GEMMs over
//! chunks of images (im2col with columns `images*out_h*out_w`, at most [`CHUNK_ELEMS`]
//! elements per chunk), through `gemm` directly ([`super::matmul`]):
//! - forward: `out_g (c_out_g, n) = W_g (c_out_g, K) @ cols_g (K, n)`, then bias (and
//!   ReLU) while copying into `(B, c_out, P)`;
//! - backward: per chunk, one pass reorders `dOut` to `(c_out, n)` and applies the ReLU
//!   mask; `db += row sums`, `dW_g += dOut_g @ cols_gᵀ` (one op, [`ConvGradWeight`]), and
//!   only if the input needs a gradient (`Tensor::track_op`), `dcols_g = W_gᵀ @ dOut_g`
//!   followed by col2im ([`ConvGradInput`]). For a strided conv (conv1) `cols_gᵀ` is
//!   built directly, one patch per row (im2row), from contiguous input runs.
//!
//! The im2col matrix, the GEMM result and the reordered gradient are temporaries from
//! [`super::workspace`], reused from call to call: allocating them per call (conv1 at
//! batch 128 would need 560 MB) cost more in page faults and zeroing than the GEMMs.
//! im2col copies each stride-1 row as one slice and skips the padding by range, not by
//! a test per element.
//!
//! In f32, where oneDNN is loaded ([`super::onednn`], Debian's `libdnnl2`), the same three
//! ops hand the work to its direct convolutions instead: the forward with the ReLU fused,
//! and backward-data / backward-weights on the output gradient masked once per op (one
//! pass, into a reused buffer). The code below is then the f64 path and the fallback.
//!
//! On CUDA in `cudnn` builds the same layer is [`super::cudnn::CudnnConv2d`]: cuDNN's
//! forward, backward-data and backward-filter with the groups passed to cuDNN, bias and
//! ReLU fused in one kernel, no input gradient for conv1.
//!
//! Elsewhere, and always with `[model] kernels = "reference"`, the layer is the
//! reference composite of candle ops ([`Conv2d::forward_relu_reference`]:
//! `Tensor::conv2d` with its chunk + cat groups, a broadcast bias add, `relu`),
//! differentiated by candle: the oracle the custom ops are tested against.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Module, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::cpu_slice::contiguous_slice;
use super::matmul::{Mat, matmul};
use super::onednn::{self, ConvShape, OneDnn};
use super::workspace::{ScratchElem, scratch};

/// Stride, zero padding (same on all four sides) and groups of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvParams {
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
}

impl Default for ConvParams {
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
            groups: 1,
        }
    }
}

/// A conv layer: `weight (c_out, c_in/groups, k_h, k_w)`, `bias (c_out)`.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    params: ConvParams,
}

impl Conv2d {
    pub fn new(weight: Tensor, bias: Tensor, params: ConvParams) -> Self {
        Self {
            weight,
            bias,
            params,
        }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    pub fn params(&self) -> ConvParams {
        self.params
    }

    /// `relu(conv(x) + bias)` — every conv of AlexNet is followed by a ReLU. On the CPU
    /// the bias and the ReLU are applied while the GEMM result is copied out, and their
    /// backward is folded into the one pass that reorders the output gradient: this saves
    /// about six full passes over each activation (candle's broadcast add, its reduction
    /// for the bias gradient, the ReLU and the four ops of its backward).
    pub fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, true)
    }

    /// `relu(conv(x) + bias)` from candle ops only (any device and dtype).
    pub fn forward_relu_reference(&self, x: &Tensor) -> Result<Tensor> {
        self.reference(x)?.relu()
    }

    /// `conv(x) + bias` from candle ops only (any device and dtype).
    pub fn forward_reference(&self, x: &Tensor) -> Result<Tensor> {
        self.reference(x)
    }

    /// The custom op where the device has one, else the reference composite.
    fn apply(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        let p = self.params;
        if use_custom(x) {
            return x.apply_op3(&self.weight, &self.bias, Conv2dOp { p, relu });
        }
        #[cfg(feature = "cudnn")]
        if super::custom_op_runs(x, &[], true) {
            return x.apply_op3(
                &self.weight,
                &self.bias,
                super::cudnn::CudnnConv2d { p, relu },
            );
        }
        let y = self.reference(x)?;
        if relu { y.relu() } else { Ok(y) }
    }

    fn reference(&self, x: &Tensor) -> Result<Tensor> {
        let p = self.params;
        let y = x.conv2d(&self.weight, p.padding, p.stride, 1, p.groups)?;
        y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)
    }
}

impl Module for Conv2d {
    /// `conv(x) + bias`: `(b, c_in, h, w) -> (b, c_out, h', w')`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, false)
    }
}

fn use_custom(x: &Tensor) -> bool {
    super::custom_op_runs(x, &[DType::F32, DType::F64], false)
}

/// Convolution without bias: the custom CPU op for f32/f64 on the CPU, candle's
/// `Tensor::conv2d` elsewhere.
pub fn conv2d(x: &Tensor, w: &Tensor, p: ConvParams) -> Result<Tensor> {
    if use_custom(x) {
        let zero_bias = Tensor::zeros(w.dim(0)?, w.dtype(), w.device())?;
        x.apply_op3(w, &zero_bias, Conv2dOp { p, relu: false })
    } else {
        x.conv2d(w, p.padding, p.stride, 1, p.groups)
    }
}

/// The convolution as a candle custom op (CPU): `(input, kernel, bias) -> output`,
/// optionally followed by a ReLU.
#[derive(Debug, Clone, Copy)]
pub struct Conv2dOp {
    pub p: ConvParams,
    pub relu: bool,
}

/// Sizes of one convolution, derived from the input and kernel shapes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geom {
    pub(super) b: usize,
    pub(super) c_in: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) c_out: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) oh: usize,
    pub(super) ow: usize,
    pub(super) p: ConvParams,
}

impl Geom {
    pub(super) fn new(x: &[usize], k: &[usize], p: ConvParams) -> Result<Self> {
        let (&[b, c_in, h, w], &[c_out, c_in_g, kh, kw]) = (x, k) else {
            candle_core::bail!("conv2d: expects 4-D input and kernel, got {x:?} and {k:?}")
        };
        if p.groups == 0 || c_in != c_in_g * p.groups || c_out % p.groups != 0 {
            candle_core::bail!(
                "conv2d: input {x:?} / kernel {k:?} do not match groups {}",
                p.groups
            )
        }
        if h + 2 * p.padding < kh || w + 2 * p.padding < kw || p.stride == 0 {
            candle_core::bail!(
                "conv2d: input {x:?} smaller than kernel {k:?} (padding {})",
                p.padding
            )
        }
        let oh = (h + 2 * p.padding - kh) / p.stride + 1;
        let ow = (w + 2 * p.padding - kw) / p.stride + 1;
        Ok(Self {
            b,
            c_in,
            h,
            w,
            c_out,
            kh,
            kw,
            oh,
            ow,
            p,
        })
    }
    pub(super) fn cin_g(&self) -> usize {
        self.c_in / self.p.groups
    }
    fn cout_g(&self) -> usize {
        self.c_out / self.p.groups
    }
    /// Rows of the im2col matrix of one group.
    fn k(&self) -> usize {
        self.cin_g() * self.kh * self.kw
    }
    /// Output pixels per image.
    fn pix(&self) -> usize {
        self.oh * self.ow
    }

    fn shape(&self) -> ConvShape {
        ConvShape {
            b: self.b,
            c_in: self.c_in,
            h: self.h,
            w: self.w,
            c_out: self.c_out,
            kh: self.kh,
            kw: self.kw,
            oh: self.oh,
            ow: self.ow,
            stride: self.p.stride,
            padding: self.p.padding,
            groups: self.p.groups,
        }
    }
}

/// oneDNN where it is loaded, for f32 (see [`onednn`]); `None` leaves the op to the
/// im2col + GEMM code of this file.
fn onednn_f32() -> Option<&'static OneDnn> {
    onednn::library().ok()
}

/// Runs `f` on the output gradient with the ReLU's mask applied (zero where the output
/// was 0), written into a reused buffer; without a ReLU, on the gradient itself.
fn with_masked_grad<R>(grad: &[f32], mask: Option<&[f32]>, f: impl FnOnce(&[f32]) -> R) -> R {
    let Some(mask) = mask else { return f(grad) };
    let mut buf = scratch::<f32>(grad.len());
    buf.par_chunks_mut(1 << 14)
        .zip(grad.par_chunks(1 << 14).zip(mask.par_chunks(1 << 14)))
        .for_each(|(d, (g, m))| {
            for ((d, &g), &m) in d.iter_mut().zip(g).zip(m) {
                *d = if m > 0.0 { g } else { 0.0 };
            }
        });
    f(&buf)
}

/// The im2col matrix of one chunk of images holds at most this many elements (16 MB in
/// f32; at least one image): the workspace stays small whatever the batch, and the
/// columns a GEMM reads were written moments before.
#[cfg(not(test))]
const CHUNK_ELEMS: usize = 1 << 22;
/// In unit tests a chunk is (about) one image, so the tests' small batches run through
/// several chunks: the accumulation of dW and db across chunks and col2im's offsets.
#[cfg(test)]
const CHUNK_ELEMS: usize = 64;

impl Geom {
    /// Images per chunk (see [`CHUNK_ELEMS`]).
    fn images_per_chunk(&self) -> usize {
        (CHUNK_ELEMS / (self.k() * self.pix()).max(1)).clamp(1, self.b.max(1))
    }

    /// `(first image, images)` of each chunk, in order.
    fn chunks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let per = self.images_per_chunk();
        (0..self.b)
            .step_by(per)
            .map(move |b0| (b0, per.min(self.b - b0)))
    }
}

/// The outputs `o` in `0..out` whose input position `o * stride + tap - pad` lies in
/// `0..side`: a range, since the position grows with `o`.
fn valid_outputs(out: usize, side: usize, tap: usize, stride: usize, pad: usize) -> (usize, usize) {
    let lo = pad.saturating_sub(tap).div_ceil(stride).min(out);
    let hi = (side + pad).saturating_sub(tap).div_ceil(stride).min(out);
    (lo, hi.max(lo))
}

/// im2col of group `g` for images `b0..b0 + nb` into `cols` (`K x nb*P`, every element
/// written): `cols[(c, ky, kx)][(b - b0) * P + oy * ow + ox] = x[b, g*cin_g + c, iy, ix]`,
/// zero outside the image. Reads `x` through its strides; a stride-1 row is one copy.
#[allow(clippy::too_many_arguments)]
fn im2col_into<T: WithDType>(
    x: &[T],
    l: &Layout,
    gm: &Geom,
    g: usize,
    b0: usize,
    nb: usize,
    cols: &mut [T],
) {
    let st = l.stride();
    let (s0, s1, s2, s3) = (st[0], st[1], st[2], st[3]);
    let x = &x[l.start_offset()..];
    let (pix, ow, n) = (gm.pix(), gm.ow, nb * gm.pix());
    let (pad, stride) = (gm.p.padding, gm.p.stride);
    cols.par_chunks_mut(n).enumerate().for_each(|(row, dst)| {
        let (c, ky, kx) = (row / (gm.kh * gm.kw), (row / gm.kw) % gm.kh, row % gm.kw);
        let c = g * gm.cin_g() + c;
        let (ylo, yhi) = valid_outputs(gm.oh, gm.h, ky, stride, pad);
        let (xlo, xhi) = valid_outputs(ow, gm.w, kx, stride, pad);
        let step = stride * s3;
        for bi in 0..nb {
            let img = &mut dst[bi * pix..][..pix];
            img[..ylo * ow].fill(T::zero());
            img[yhi * ow..].fill(T::zero());
            let base = (b0 + bi) * s0 + c * s1;
            for oy in ylo..yhi {
                let d = &mut img[oy * ow..][..ow];
                d[..xlo].fill(T::zero());
                d[xhi..].fill(T::zero());
                if xhi == xlo {
                    continue;
                }
                let iy = oy * stride + ky - pad;
                let start = base + iy * s2 + (xlo * stride + kx - pad) * s3;
                let d = &mut d[xlo..xhi];
                if step == 1 {
                    d.copy_from_slice(&x[start..start + d.len()]);
                } else {
                    for (j, v) in d.iter_mut().enumerate() {
                        *v = x[start + j * step];
                    }
                }
            }
        }
    });
}

/// im2row of group `g` for the images from `b0` on into `patches` (`nb*P x K` for `nb`
/// images, every element written): the transpose of [`im2col_into`]'s matrix, one output
/// pixel's patch per row. The kernel-gradient GEMM reads it as its `K`-major operand,
/// which `gemm` packs by plain copies (from im2col's layout it packs element by element,
/// measured at ~9 % of the small net's step). Each patch row is built from `kw`-long
/// input runs, where im2col's rows of a strided conv are strided gathers.
fn im2row_into<T: WithDType>(
    x: &[T],
    l: &Layout,
    gm: &Geom,
    g: usize,
    b0: usize,
    patches: &mut [T],
) {
    let st = l.stride();
    let (s0, s1, s2, s3) = (st[0], st[1], st[2], st[3]);
    let x = &x[l.start_offset()..];
    let (k, ow, kh, kw) = (gm.k(), gm.ow, gm.kh, gm.kw);
    let (pad, stride, cin_g) = (gm.p.padding, gm.p.stride, gm.cin_g());
    // One task per output row of one image: `ow` patches.
    patches
        .par_chunks_mut(ow * k)
        .enumerate()
        .for_each(|(line, dst)| {
            let (bi, oy) = (line / gm.oh, line % gm.oh);
            let base = (b0 + bi) * s0 + g * cin_g * s1;
            // Taps ky in ky_lo..ky_hi fall inside the image on this output row.
            let y0 = oy * stride;
            let ky_lo = pad.saturating_sub(y0).min(kh);
            let ky_hi = (gm.h + pad).saturating_sub(y0).min(kh).max(ky_lo);
            for (ox, patch) in dst.chunks_exact_mut(k).enumerate() {
                // Likewise taps kx in kx_lo..kx_hi on this output column.
                let x0 = ox * stride;
                let kx_lo = pad.saturating_sub(x0).min(kw);
                let kx_hi = (gm.w + pad).saturating_sub(x0).min(kw).max(kx_lo);
                let whole = kx_lo == 0 && kx_hi == kw && s3 == 1;
                for (c, taps) in patch.chunks_exact_mut(kh * kw).enumerate() {
                    taps[..ky_lo * kw].fill(T::zero());
                    taps[ky_hi * kw..].fill(T::zero());
                    for ky in ky_lo..ky_hi {
                        let run = &mut taps[ky * kw..][..kw];
                        let at = base + c * s1 + (y0 + ky - pad) * s2;
                        if whole {
                            run.copy_from_slice(&x[at + x0 - pad..][..kw]);
                            continue;
                        }
                        run[..kx_lo].fill(T::zero());
                        run[kx_hi..].fill(T::zero());
                        for kx in kx_lo..kx_hi {
                            run[kx] = x[at + (x0 + kx - pad) * s3];
                        }
                    }
                }
            }
        });
}

/// col2im of group `g` for images `b0..b0 + nb`: the adjoint of [`im2col_into`], adding
/// `dcols` (`K x nb*P`) into the group's channels of `dx` (`(b, c_in, h, w)`, whole batch).
fn col2im_into<T: WithDType>(dcols: &[T], gm: &Geom, g: usize, b0: usize, nb: usize, dx: &mut [T]) {
    let (pix, ow, n, cin_g) = (gm.pix(), gm.ow, nb * gm.pix(), gm.cin_g());
    let (pad, stride, plane) = (gm.p.padding, gm.p.stride, gm.h * gm.w);
    let images = &mut dx[b0 * gm.c_in * plane..(b0 + nb) * gm.c_in * plane];
    images
        .par_chunks_mut(plane)
        .enumerate()
        .filter(|(i, _)| (i % gm.c_in) / cin_g == g)
        .for_each(|(i, dst)| {
            let (bi, c) = (i / gm.c_in, i % gm.c_in % cin_g);
            for ky in 0..gm.kh {
                let (ylo, yhi) = valid_outputs(gm.oh, gm.h, ky, stride, pad);
                for kx in 0..gm.kw {
                    let (xlo, xhi) = valid_outputs(ow, gm.w, kx, stride, pad);
                    if xhi == xlo {
                        continue;
                    }
                    let row = &dcols[((c * gm.kh + ky) * gm.kw + kx) * n + bi * pix..][..pix];
                    for oy in ylo..yhi {
                        let iy = oy * stride + ky - pad;
                        let src = &row[oy * ow + xlo..oy * ow + xhi];
                        let d = &mut dst[iy * gm.w + xlo * stride + kx - pad..];
                        if stride == 1 {
                            for (d, &s) in d.iter_mut().zip(src) {
                                *d += s;
                            }
                        } else {
                            for (j, &s) in src.iter().enumerate() {
                                d[j * stride] += s;
                            }
                        }
                    }
                }
            }
        });
}

fn fwd<T: ScratchElem>(
    x: &[T],
    xl: &Layout,
    w: &[T],
    bias: &[T],
    relu: bool,
    gm: &Geom,
) -> Result<Vec<T>> {
    let (k, pix, cout_g, c_out) = (gm.k(), gm.pix(), gm.cout_g(), gm.c_out);
    let per = gm.images_per_chunk();
    let mut out = vec![T::zero(); gm.b * c_out * pix];
    let mut cols = scratch::<T>(k * per * pix);
    let mut res = scratch::<T>(cout_g * per * pix);
    for (b0, nb) in gm.chunks() {
        let n = nb * pix;
        for g in 0..gm.p.groups {
            im2col_into(x, xl, gm, g, b0, nb, &mut cols[..k * n]);
            // W_g viewed as (cout_g, K): rows are output channels, K runs over (c, ky, kx).
            let w_g = Mat::rows(&w[g * cout_g * k..(g + 1) * cout_g * k], cout_g, k);
            matmul(
                &mut res[..cout_g * n],
                n,
                w_g,
                Mat::rows(&cols[..k * n], k, n),
                false,
            )?;
            let res = &res[..cout_g * n];
            // (cout_g, nb*P) -> out (b, c_out, P) at channel offset g*cout_g, adding the
            // bias (and applying the ReLU) on the way.
            out[b0 * c_out * pix..(b0 + nb) * c_out * pix]
                .par_chunks_mut(c_out * pix)
                .enumerate()
                .for_each(|(bi, ob)| {
                    for co in 0..cout_g {
                        let c = g * cout_g + co;
                        let src = &res[co * n + bi * pix..][..pix];
                        let dst = &mut ob[c * pix..][..pix];
                        let bc = bias[c];
                        if relu {
                            for (d, &s) in dst.iter_mut().zip(src) {
                                let v = s + bc;
                                *d = if v > T::zero() { v } else { T::zero() };
                            }
                        } else {
                            for (d, &s) in dst.iter_mut().zip(src) {
                                *d = s + bc;
                            }
                        }
                    }
                });
        }
    }
    Ok(out)
}

/// Images `b0..b0 + nb` of the `(b, c, P)` output gradient as `rows` (`c x nb*P`),
/// zeroed where the ReLU output (`mask`) was 0.
#[allow(clippy::too_many_arguments)]
fn grad_rows_into<T: WithDType>(
    g: &[T],
    mask: Option<&[T]>,
    b0: usize,
    nb: usize,
    c: usize,
    pix: usize,
    rows: &mut [T],
) {
    rows.par_chunks_mut(nb * pix)
        .enumerate()
        .for_each(|(ch, row)| {
            for bi in 0..nb {
                let at = ((b0 + bi) * c + ch) * pix;
                let (src, dst) = (&g[at..][..pix], &mut row[bi * pix..][..pix]);
                match mask {
                    Some(r) => {
                        for ((d, &s), &rv) in dst.iter_mut().zip(src).zip(&r[at..][..pix]) {
                            *d = if rv > T::zero() { s } else { T::zero() };
                        }
                    }
                    None => dst.copy_from_slice(src),
                }
            }
        });
}

/// Sum of a slice in eight interleaved partial sums (vectorisable, and the same order
/// on every run).
fn lane_sum<T: WithDType>(v: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let chunks = v.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    let mut s = T::zero();
    for a in acc.into_iter().chain(tail.iter().copied()) {
        s += a;
    }
    s
}

/// `[dW (c_out x K) | db (c_out)]` from the input and the output gradient.
fn grad_weight_bias<T: ScratchElem>(
    x: &[T],
    xl: &Layout,
    grad: &[T],
    mask: Option<&[T]>,
    gm: &Geom,
) -> Result<Vec<T>> {
    let (k, pix, cout_g, c_out) = (gm.k(), gm.pix(), gm.cout_g(), gm.c_out);
    let per = gm.images_per_chunk();
    let mut out = vec![T::zero(); c_out * k + c_out];
    let (dw, db) = out.split_at_mut(c_out * k);
    let mut cols = scratch::<T>(k * per * pix);
    let mut rows = scratch::<T>(c_out * per * pix);
    for (b0, nb) in gm.chunks() {
        let n = nb * pix;
        let rows = &mut rows[..c_out * n];
        grad_rows_into(grad, mask, b0, nb, c_out, pix, rows);
        db.par_iter_mut()
            .zip(rows.par_chunks(n))
            .for_each(|(d, r)| *d += lane_sum(r));
        for g in 0..gm.p.groups {
            // Strided convs (conv1) build the patches directly from `kw`-long input runs;
            // stride-1 ones copy whole im2col rows and let gemm transpose them while it
            // packs (measured at full size: conv1's backward 0.23 -> 0.17 s with
            // patches; conv2-4's 3-6 % slower with them).
            let patches = if gm.p.stride > 1 {
                im2row_into(x, xl, gm, g, b0, &mut cols[..k * n]);
                Mat::rows(&cols[..k * n], n, k)
            } else {
                im2col_into(x, xl, gm, g, b0, nb, &mut cols[..k * n]);
                Mat::rows(&cols[..k * n], k, n).t()
            };
            // dW_g (cout_g, K) += dOut_g (cout_g, n) @ patches_g (n, K)
            matmul(
                &mut dw[g * cout_g * k..(g + 1) * cout_g * k],
                k,
                Mat::rows(&rows[g * cout_g * n..(g + 1) * cout_g * n], cout_g, n),
                patches,
                b0 > 0,
            )?;
        }
    }
    Ok(out)
}

/// `dx (b, c_in, h, w)` from the kernel and the output gradient.
fn grad_input<T: ScratchElem>(
    w: &[T],
    grad: &[T],
    mask: Option<&[T]>,
    gm: &Geom,
) -> Result<Vec<T>> {
    let (k, pix, cout_g, c_out) = (gm.k(), gm.pix(), gm.cout_g(), gm.c_out);
    let per = gm.images_per_chunk();
    let mut dx = vec![T::zero(); gm.b * gm.c_in * gm.h * gm.w];
    let mut dcols = scratch::<T>(k * per * pix);
    let mut rows = scratch::<T>(c_out * per * pix);
    for (b0, nb) in gm.chunks() {
        let n = nb * pix;
        let rows = &mut rows[..c_out * n];
        grad_rows_into(grad, mask, b0, nb, c_out, pix, rows);
        for g in 0..gm.p.groups {
            // dcols_g (K, n) = W_gᵀ (K, cout_g) @ dOut_g (cout_g, n)
            let w_g = Mat::rows(&w[g * cout_g * k..(g + 1) * cout_g * k], cout_g, k);
            matmul(
                &mut dcols[..k * n],
                n,
                w_g.t(),
                Mat::rows(&rows[g * cout_g * n..(g + 1) * cout_g * n], cout_g, n),
                false,
            )?;
            col2im_into(&dcols[..k * n], gm, g, b0, nb, &mut dx);
        }
    }
    Ok(dx)
}

/// Checks the output gradient (and the ReLU output) against the geometry and returns
/// them as slices.
fn grad_and_mask<'a, T: WithDType>(
    gs: &'a CpuStorage,
    gl: &Layout,
    ms: &'a CpuStorage,
    ml: &Layout,
    relu: bool,
    gm: &Geom,
    op: &str,
) -> Result<(&'a [T], Option<&'a [T]>)> {
    let want = [gm.b, gm.c_out, gm.oh, gm.ow];
    if gl.dims() != want || (relu && ml.dims() != want) {
        candle_core::bail!(
            "{op}: gradient {:?} / output {:?}, expected {want:?}",
            gl.dims(),
            ml.dims()
        )
    }
    let grad = contiguous_slice::<T>(gs, gl, op)?;
    let mask = if relu {
        Some(contiguous_slice::<T>(ms, ml, op)?)
    } else {
        None
    };
    Ok((grad, mask))
}

/// The kernel and bias gradients as one (no-backward) op:
/// `(input, grad, relu output or grad) -> [dW | db]`, flat.
struct ConvGradWeight {
    gm: Geom,
    relu: bool,
}

impl CustomOp3 for ConvGradWeight {
    fn name(&self) -> &'static str {
        "conv2d-grad-weight"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        ms: &CpuStorage,
        ml: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (gm, op) = (&self.gm, self.name());
        let out = match (xs, onednn_f32()) {
            (CpuStorage::F32(_), Some(dnnl)) if xl.is_contiguous() => {
                let (g, m) = grad_and_mask(gs, gl, ms, ml, self.relu, gm, op)?;
                let x = contiguous_slice(xs, xl, op)?;
                let mut out = vec![0f32; gm.c_out * gm.k() + gm.c_out];
                with_masked_grad(g, m, |dy| {
                    dnnl.conv_backward_weights(gm.shape(), (x, dy), &mut out)
                })?;
                CpuStorage::F32(out)
            }
            (CpuStorage::F32(x), _) => {
                let (g, m) = grad_and_mask(gs, gl, ms, ml, self.relu, gm, op)?;
                CpuStorage::F32(grad_weight_bias(x, xl, g, m, gm)?)
            }
            (CpuStorage::F64(x), _) => {
                let (g, m) = grad_and_mask(gs, gl, ms, ml, self.relu, gm, op)?;
                CpuStorage::F64(grad_weight_bias(x, xl, g, m, gm)?)
            }
            _ => candle_core::bail!("{op}: supports f32/f64, got {:?}", xs.dtype()),
        };
        Ok((out, Shape::from(gm.c_out * gm.k() + gm.c_out)))
    }
}

/// The input gradient as a (no-backward) op: `(kernel, grad, relu output or grad) -> dx`.
struct ConvGradInput {
    gm: Geom,
    relu: bool,
}

impl CustomOp3 for ConvGradInput {
    fn name(&self) -> &'static str {
        "conv2d-grad-input"
    }

    fn cpu_fwd(
        &self,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        ms: &CpuStorage,
        ml: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (gm, op) = (&self.gm, self.name());
        let out = match (ws, onednn_f32()) {
            (CpuStorage::F32(_), Some(dnnl)) => {
                let (g, m) = grad_and_mask(gs, gl, ms, ml, self.relu, gm, op)?;
                let w = contiguous_slice(ws, wl, op)?;
                let mut dx = vec![0f32; gm.b * gm.c_in * gm.h * gm.w];
                with_masked_grad(g, m, |dy| {
                    dnnl.conv_backward_data(gm.shape(), (w, dy), &mut dx)
                })?;
                CpuStorage::F32(dx)
            }
            (CpuStorage::F32(_), _) => {
                let (g, m) = grad_and_mask(gs, gl, ms, ml, self.relu, gm, op)?;
                CpuStorage::F32(grad_input(contiguous_slice(ws, wl, op)?, g, m, gm)?)
            }
            (CpuStorage::F64(_), _) => {
                let (g, m) = grad_and_mask(gs, gl, ms, ml, self.relu, gm, op)?;
                CpuStorage::F64(grad_input(contiguous_slice(ws, wl, op)?, g, m, gm)?)
            }
            _ => candle_core::bail!("{op}: supports f32/f64, got {:?}", ws.dtype()),
        };
        Ok((out, Shape::from((gm.b, gm.c_in, gm.h, gm.w))))
    }
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "conv2d-im2col"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let gm = Geom::new(xl.dims(), kl.dims(), self.p)?;
        if bl.dims() != [gm.c_out] {
            candle_core::bail!(
                "conv2d: bias shape {:?}, expected [{}]",
                bl.dims(),
                gm.c_out
            )
        }
        let out = match (xs, onednn_f32()) {
            (CpuStorage::F32(_), Some(dnnl)) if xl.is_contiguous() => {
                let mut out = vec![0f32; gm.b * gm.c_out * gm.oh * gm.ow];
                dnnl.conv_forward(
                    gm.shape(),
                    self.relu,
                    (
                        contiguous_slice(xs, xl, "conv2d: input")?,
                        contiguous_slice(ks, kl, "conv2d: kernel")?,
                        contiguous_slice(bs, bl, "conv2d: bias")?,
                    ),
                    &mut out,
                )?;
                CpuStorage::F32(out)
            }
            (CpuStorage::F32(x), _) => CpuStorage::F32(fwd(
                x,
                xl,
                contiguous_slice(ks, kl, "conv2d: kernel")?,
                contiguous_slice(bs, bl, "conv2d: bias")?,
                self.relu,
                &gm,
            )?),
            (CpuStorage::F64(x), _) => CpuStorage::F64(fwd(
                x,
                xl,
                contiguous_slice(ks, kl, "conv2d: kernel")?,
                contiguous_slice(bs, bl, "conv2d: bias")?,
                self.relu,
                &gm,
            )?),
            _ => candle_core::bail!(
                "conv2d-im2col: supports f32/f64, got {:?}/{:?}",
                xs.dtype(),
                ks.dtype()
            ),
        };
        Ok((out, Shape::from((gm.b, gm.c_out, gm.oh, gm.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let gm = Geom::new(x.dims(), w.dims(), self.p)?;
        let relu = self.relu;
        let grad = grad.contiguous()?;
        let mask = if relu {
            res.contiguous()?
        } else {
            grad.clone()
        };
        let wb = x.apply_op3_no_bwd(&grad, &mask, &ConvGradWeight { gm, relu })?;
        let n_w = gm.c_out * gm.k();
        let dw = wb.narrow(0, 0, n_w)?.reshape(w.dims())?;
        let db = wb.narrow(0, n_w, gm.c_out)?;
        // The input gradient only when something upstream wants it: for conv1 the
        // input is the image batch and this would be the most expensive GEMM.
        let dx = if x.track_op() {
            Some(
                w.contiguous()?
                    .apply_op3_no_bwd(&grad, &mask, &ConvGradInput { gm, relu })?,
            )
        } else {
            None
        };
        Ok((dx, Some(dw), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    use super::super::test_util::{max_abs_diff, rand_tensor};

    const CASES: [(ConvParams, [usize; 4], [usize; 4]); 4] = [
        // conv1-like: stride 4, pad 2, a side that leaves a remainder
        (
            ConvParams {
                stride: 4,
                padding: 2,
                groups: 1,
            },
            [2, 3, 23, 23],
            [4, 3, 11, 11],
        ),
        // conv2-like: 2 groups, pad 2
        (
            ConvParams {
                stride: 1,
                padding: 2,
                groups: 2,
            },
            [2, 4, 7, 6],
            [6, 2, 5, 5],
        ),
        // conv4-like: 2 groups, pad 1
        (
            ConvParams {
                stride: 1,
                padding: 1,
                groups: 2,
            },
            [3, 6, 5, 5],
            [4, 3, 3, 3],
        ),
        // stride 2, no padding, non-square kernel
        (
            ConvParams {
                stride: 2,
                padding: 0,
                groups: 1,
            },
            [2, 2, 7, 8],
            [3, 2, 3, 2],
        ),
    ];

    /// Forward and both gradients equal candle's own conv2d (f64).
    #[test]
    fn matches_candle_conv2d() -> Result<()> {
        for (i, (p, xs, ks)) in CASES.iter().enumerate() {
            let x = Var::from_tensor(&rand_tensor(xs, i as u64))?;
            let w = Var::from_tensor(&rand_tensor(ks, 100 + i as u64))?;
            let ours = conv2d(x.as_tensor(), w.as_tensor(), *p)?;
            let theirs = x
                .as_tensor()
                .conv2d(w.as_tensor(), p.padding, p.stride, 1, p.groups)?;
            assert_eq!(ours.dims(), theirs.dims());
            assert!(max_abs_diff(&ours, &theirs) < 1e-12, "case {i} forward");
            let r = rand_tensor(ours.dims(), 200 + i as u64);
            let g1 = (ours * &r)?.sum_all()?.backward()?;
            let g2 = (theirs * &r)?.sum_all()?.backward()?;
            for (name, v) in [("input", &x), ("kernel", &w)] {
                let d = max_abs_diff(
                    g1.get(v.as_tensor()).unwrap(),
                    g2.get(v.as_tensor()).unwrap(),
                );
                assert!(d < 1e-12, "case {i} {name} grad differs by {d}");
            }
        }
        Ok(())
    }

    /// oneDNN's f32 convolution (forward with and without the fused ReLU, input, kernel
    /// and bias gradients) against candle's conv in f64, on the same cases plus a larger
    /// grouped one whose channels fill oneDNN's 16-wide blocks. Where the library is not
    /// installed this prints why and passes, unless `PIPELINE_TEST_REQUIRE_ONEDNN` is set
    /// (CI sets it).
    #[test]
    fn onednn_matches_candle_conv2d_f32() -> Result<()> {
        if let Err(why) = onednn::library() {
            assert!(
                std::env::var_os("PIPELINE_TEST_REQUIRE_ONEDNN").is_none(),
                "oneDNN required but not loaded: {why}"
            );
            eprintln!("skipped: oneDNN not loaded ({why})");
            return Ok(());
        }
        let big = (
            ConvParams {
                stride: 1,
                padding: 2,
                groups: 2,
            },
            [3, 32, 9, 9],
            [64, 16, 5, 5],
        );
        for (i, (p, xs, ks)) in CASES.iter().chain([&big]).enumerate() {
            for relu in [false, true] {
                let x64 = rand_tensor(xs, 300 + i as u64);
                let w64 = rand_tensor(ks, 400 + i as u64);
                let b64 = rand_tensor(&[ks[0]], 500 + i as u64);
                let x = Var::from_tensor(&x64.to_dtype(DType::F32)?)?;
                let w = Var::from_tensor(&w64.to_dtype(DType::F32)?)?;
                let b = Var::from_tensor(&b64.to_dtype(DType::F32)?)?;
                let conv = Conv2d::new(w.as_tensor().clone(), b.as_tensor().clone(), *p);
                let ours = conv.apply(x.as_tensor(), relu)?;
                let (xr, wr, br) = (
                    Var::from_tensor(&x64)?,
                    Var::from_tensor(&w64)?,
                    Var::from_tensor(&b64)?,
                );
                let reference = Conv2d::new(wr.as_tensor().clone(), br.as_tensor().clone(), *p);
                let theirs = if relu {
                    reference.forward_relu_reference(xr.as_tensor())?
                } else {
                    reference.forward_reference(xr.as_tensor())?
                };
                let scale = |t: &Tensor| -> Result<f64> {
                    t.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
                };
                let close = |a: &Tensor, b: &Tensor, what: &str| -> Result<()> {
                    let d = max_abs_diff(&a.to_dtype(DType::F64)?, b);
                    let rel = d / scale(b)?.max(1e-12);
                    assert!(
                        rel < 1e-5,
                        "case {i} relu {relu}: {what} off by {rel:e} (relative)"
                    );
                    Ok(())
                };
                close(&ours, &theirs, "forward")?;
                let r = rand_tensor(theirs.dims(), 600 + i as u64);
                let g1 = (ours * r.to_dtype(DType::F32)?)?.sum_all()?.backward()?;
                let g2 = (theirs * &r)?.sum_all()?.backward()?;
                for (name, v, vr) in [("input", &x, &xr), ("kernel", &w, &wr), ("bias", &b, &br)] {
                    close(
                        g1.get(v.as_tensor()).unwrap(),
                        g2.get(vr.as_tensor()).unwrap(),
                        &format!("{name} gradient"),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Central finite differences on the input and the kernel (f64).
    #[test]
    fn gradient_matches_finite_differences() -> Result<()> {
        const H: f64 = 1e-3;
        for (case, (p, xs, ks)) in CASES.into_iter().enumerate() {
            let x0 = rand_tensor(&xs, 7 + case as u64);
            let w0 = rand_tensor(&ks, 17 + case as u64);
            let oshape = conv2d(&x0, &w0, p)?.dims().to_vec();
            let r = rand_tensor(&oshape, 27 + case as u64);
            let loss = |x: &Tensor, w: &Tensor| -> f64 {
                (conv2d(x, w, p).unwrap() * &r)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let (x, w) = (Var::from_tensor(&x0)?, Var::from_tensor(&w0)?);
            let grads = (conv2d(x.as_tensor(), w.as_tensor(), p)? * &r)?
                .sum_all()?
                .backward()?;
            let mut worst = 0f64;
            for (which, t0, v) in [(0, &x0, &x), (1, &w0, &w)] {
                let analytic = grads
                    .get(v.as_tensor())
                    .unwrap()
                    .flatten_all()?
                    .to_vec1::<f64>()?;
                let base = t0.flatten_all()?.to_vec1::<f64>()?;
                for i in 0..base.len() {
                    let (mut pv, mut mv) = (base.clone(), base.clone());
                    // The loss is linear in x and in w, so central differences have no
                    // truncation error and a large step keeps rounding noise down.
                    pv[i] += H;
                    mv[i] -= H;
                    let tp = Tensor::from_slice(&pv, t0.dims(), &Device::Cpu)?;
                    let tm = Tensor::from_slice(&mv, t0.dims(), &Device::Cpu)?;
                    let numeric = if which == 0 {
                        (loss(&tp, &w0) - loss(&tm, &w0)) / (2.0 * H)
                    } else {
                        (loss(&x0, &tp) - loss(&x0, &tm)) / (2.0 * H)
                    };
                    let err = (numeric - analytic[i]).abs()
                        / (1e-3 + numeric.abs().max(analytic[i].abs()));
                    worst = worst.max(err);
                    let what = ["input", "kernel"][which];
                    assert!(
                        err < 1e-6,
                        "case {case} {what} element {i}: {numeric} vs {}",
                        analytic[i]
                    );
                }
            }
            println!("conv case {case} {p:?}: worst relative error {worst:.1e}");
        }
        Ok(())
    }

    /// `Conv2d::forward_relu` and `forward` (bias fused in the op) against candle's conv,
    /// broadcast bias add and ReLU: values and the gradients of input, kernel and bias.
    #[test]
    fn fused_bias_relu_matches_composite() -> Result<()> {
        for (i, (p, xs, ks)) in CASES.iter().enumerate() {
            let x = Var::from_tensor(&rand_tensor(xs, 300 + i as u64))?;
            let w = Var::from_tensor(&rand_tensor(ks, 400 + i as u64))?;
            let b = Var::from_tensor(&rand_tensor(&[ks[0]], 500 + i as u64))?;
            let layer = Conv2d::new(w.as_tensor().clone(), b.as_tensor().clone(), *p);
            for relu in [false, true] {
                let ours = if relu {
                    layer.forward_relu(x.as_tensor())?
                } else {
                    layer.forward(x.as_tensor())?
                };
                let lin = x
                    .as_tensor()
                    .conv2d(w.as_tensor(), p.padding, p.stride, 1, p.groups)?
                    .broadcast_add(&b.as_tensor().reshape((1, (), 1, 1))?)?;
                let theirs = if relu { lin.relu()? } else { lin };
                assert!(
                    max_abs_diff(&ours, &theirs) < 1e-12,
                    "case {i} relu {relu} forward"
                );
                let r = rand_tensor(ours.dims(), 600 + i as u64);
                let g1 = (ours * &r)?.sum_all()?.backward()?;
                let g2 = (theirs * &r)?.sum_all()?.backward()?;
                for (name, v) in [("input", &x), ("kernel", &w), ("bias", &b)] {
                    let d = max_abs_diff(
                        g1.get(v.as_tensor()).unwrap(),
                        g2.get(v.as_tensor()).unwrap(),
                    );
                    assert!(d < 1e-12, "case {i} relu {relu} {name} grad differs by {d}");
                }
            }
        }
        Ok(())
    }

    /// candle's conv2d backward computes a gradient for a plain (non-Var) input; ours
    /// skips it. If the first assertion fails, candle stopped doing the wasted work.
    #[test]
    fn candle_conv_computes_unused_input_grad() -> Result<()> {
        let (p, xs, ks) = CASES[0];
        let x = rand_tensor(&xs, 1); // the image batch: not a Var
        let w = Var::from_tensor(&rand_tensor(&ks, 2))?;
        let g = x
            .conv2d(w.as_tensor(), p.padding, p.stride, 1, 1)?
            .sum_all()?
            .backward()?;
        assert!(
            g.get(&x).is_some(),
            "candle computed an input gradient nobody asked for"
        );
        let g = conv2d(&x, w.as_tensor(), p)?.sum_all()?.backward()?;
        assert!(g.get(&x).is_none());
        assert!(g.get(w.as_tensor()).is_some());
        Ok(())
    }
}
