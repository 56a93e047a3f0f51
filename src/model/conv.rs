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
//! optional fused ReLU ([`Conv2d::forward_relu`]), that lowers each group to one large
//! GEMM over the whole batch (im2col with columns `batch*out_h*out_w`, candle's own gemm
//! through `BackendStorage::matmul` / `Tensor::matmul`):
//! - forward: `out_g (c_out_g, B*P) = W_g (c_out_g, K) @ cols_g (K, B*P)`, then bias
//!   (and ReLU) while copying into `(B, c_out, P)`;
//! - backward: one pass reorders `dOut` to `(c_out, B*P)` and applies the ReLU mask;
//!   `db = row sums`, `dW_g = dOut_g @ cols_gᵀ`, and only if the input needs a gradient
//!   (`Tensor::track_op`), `dcols_g = W_gᵀ @ dOut_g` followed by col2im.
//!
//! The im2col matrix is `K x B*P` floats per group (conv1 at batch 128: 363 x 387,200,
//! 560 MB in f32), allocated per call and freed at once.
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
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Module, Result, Shape, Tensor,
    WithDType,
};
use rayon::prelude::*;

use super::cpu_slice::{contiguous_range, contiguous_slice};

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
}

/// im2col of group `g`: `cols[(c, ky, kx)][b * P + oy * ow + ox] = x[b, g*cin_g + c, iy, ix]`
/// (zero outside the image). Reads `x` through its strides.
fn im2col<T: WithDType>(x: &[T], l: &Layout, gm: &Geom, g: usize) -> Vec<T> {
    let st = l.stride();
    let (s0, s1, s2, s3) = (st[0], st[1], st[2], st[3]);
    let x = &x[l.start_offset()..];
    let (pix, bp) = (gm.pix(), gm.b * gm.pix());
    let (pad, stride) = (gm.p.padding as isize, gm.p.stride as isize);
    let mut cols = vec![T::zero(); gm.k() * bp];
    cols.par_chunks_mut(bp).enumerate().for_each(|(row, dst)| {
        let (c, ky, kx) = (row / (gm.kh * gm.kw), (row / gm.kw) % gm.kh, row % gm.kw);
        let c = g * gm.cin_g() + c;
        for b in 0..gm.b {
            let base = b * s0 + c * s1;
            for oy in 0..gm.oh {
                let iy = oy as isize * stride + ky as isize - pad;
                let d = &mut dst[b * pix + oy * gm.ow..b * pix + (oy + 1) * gm.ow];
                if iy < 0 || iy >= gm.h as isize {
                    continue; // already zero
                }
                let rowbase = base + iy as usize * s2;
                for (ox, v) in d.iter_mut().enumerate() {
                    let ix = ox as isize * stride + kx as isize - pad;
                    if ix >= 0 && ix < gm.w as isize {
                        *v = x[rowbase + ix as usize * s3];
                    }
                }
            }
        }
    });
    cols
}

/// col2im of one group: the adjoint of [`im2col`], summing overlapping contributions.
/// `cols` is `(K, B*P)` contiguous; returns `(b, cin_g, h, w)` contiguous.
fn col2im<T: WithDType>(cols: &[T], gm: &Geom) -> Vec<T> {
    let (pix, bp, cin_g) = (gm.pix(), gm.b * gm.pix(), gm.cin_g());
    let (pad, stride) = (gm.p.padding as isize, gm.p.stride as isize);
    let mut out = vec![T::zero(); gm.b * cin_g * gm.h * gm.w];
    out.par_chunks_mut(gm.h * gm.w)
        .enumerate()
        .for_each(|(plane, dst)| {
            let (b, c) = (plane / cin_g, plane % cin_g);
            for ky in 0..gm.kh {
                for kx in 0..gm.kw {
                    let row = &cols[((c * gm.kh + ky) * gm.kw + kx) * bp + b * pix..][..pix];
                    for oy in 0..gm.oh {
                        let iy = oy as isize * stride + ky as isize - pad;
                        if iy < 0 || iy >= gm.h as isize {
                            continue;
                        }
                        let d = &mut dst[iy as usize * gm.w..(iy as usize + 1) * gm.w];
                        for (ox, &v) in row[oy * gm.ow..(oy + 1) * gm.ow].iter().enumerate() {
                            let ix = ox as isize * stride + kx as isize - pad;
                            if ix >= 0 && ix < gm.w as isize {
                                d[ix as usize] += v;
                            }
                        }
                    }
                }
            }
        });
    out
}

fn fwd<T: WithDType>(
    x: &[T],
    xl: &Layout,
    ks: &CpuStorage,
    kl: &Layout,
    bias: &[T],
    relu: bool,
    gm: &Geom,
) -> Result<Vec<T>> {
    let (k, bp, pix, cout_g) = (gm.k(), gm.b * gm.pix(), gm.pix(), gm.cout_g());
    if !kl.is_contiguous() {
        candle_core::bail!("conv2d: kernel must be contiguous")
    }
    let mut out = vec![T::zero(); gm.b * gm.c_out * pix];
    for g in 0..gm.p.groups {
        let cols = T::to_cpu_storage_owned(im2col(x, xl, gm, g));
        // W_g viewed as (cout_g, K): rows are output channels, K runs over (c, ky, kx).
        let wl = Layout::new(
            (cout_g, k).into(),
            vec![k, 1],
            kl.start_offset() + g * cout_g * k,
        );
        let res = ks.matmul(&cols, (1, cout_g, bp, k), &wl, &Layout::contiguous((k, bp)))?;
        drop(cols);
        let res = res.as_slice::<T>()?;
        // (cout_g, B*P) -> out (B, c_out, P) at channel offset g*cout_g, adding the bias
        // (and applying the ReLU) on the way.
        out.par_chunks_mut(gm.c_out * pix)
            .enumerate()
            .for_each(|(b, ob)| {
                for co in 0..cout_g {
                    let c = g * cout_g + co;
                    let src = &res[co * bp + b * pix..][..pix];
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
    Ok(out)
}

/// `(b, c, h, w)` output gradient -> `(c, b*h*w)`, zeroed where the ReLU output was 0.
fn grad_to_rows<T: WithDType>(
    g: &[T],
    res: Option<&[T]>,
    b: usize,
    c: usize,
    pix: usize,
) -> Vec<T> {
    let bp = b * pix;
    let mut out = vec![T::zero(); c * bp];
    out.par_chunks_mut(bp).enumerate().for_each(|(ch, row)| {
        for bi in 0..b {
            let src = &g[(bi * c + ch) * pix..][..pix];
            let dst = &mut row[bi * pix..][..pix];
            match res {
                Some(r) => {
                    let r = &r[(bi * c + ch) * pix..][..pix];
                    for ((d, &s), &rv) in dst.iter_mut().zip(src).zip(r) {
                        *d = if rv > T::zero() { s } else { T::zero() };
                    }
                }
                None => dst.copy_from_slice(src),
            }
        }
    });
    out
}

/// The reordering (and ReLU mask) of the output gradient as a (no-backward) op:
/// `(grad (b, c, h, w), relu output or grad itself) -> (c, b*h*w)`.
struct GradRows {
    relu: bool,
}

impl CustomOp2 for GradRows {
    fn name(&self) -> &'static str {
        "conv-grad-rows"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let &[b, c, h, w] = gl.dims() else {
            candle_core::bail!("conv-grad-rows: expects 4-D, got {:?}", gl.dims())
        };
        let g_range = contiguous_range(gl, "conv-grad-rows: grad")?;
        let r_range = contiguous_range(rl, "conv-grad-rows: output")?;
        let out = match (gs, rs) {
            (CpuStorage::F32(g), CpuStorage::F32(r)) => CpuStorage::F32(grad_to_rows(
                &g[g_range.clone()],
                self.relu.then(|| &r[r_range.clone()]),
                b,
                c,
                h * w,
            )),
            (CpuStorage::F64(g), CpuStorage::F64(r)) => CpuStorage::F64(grad_to_rows(
                &g[g_range.clone()],
                self.relu.then(|| &r[r_range.clone()]),
                b,
                c,
                h * w,
            )),
            _ => candle_core::bail!("conv-grad-rows: supports f32/f64"),
        };
        Ok((out, Shape::from((c, b * h * w))))
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
        let out = match (xs, ks) {
            (CpuStorage::F32(x), CpuStorage::F32(_)) => CpuStorage::F32(fwd(
                x,
                xl,
                ks,
                kl,
                contiguous_slice(bs, bl, "conv2d: bias")?,
                self.relu,
                &gm,
            )?),
            (CpuStorage::F64(x), CpuStorage::F64(_)) => CpuStorage::F64(fwd(
                x,
                xl,
                ks,
                kl,
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
        let (k, cout_g, groups) = (gm.k(), gm.cout_g(), gm.p.groups);
        // dOut as (c_out, B*P), ReLU mask applied: one pass, then each group is a
        // contiguous row block.
        let grad = grad.contiguous()?;
        let gperm = grad.apply_op2_no_bwd(
            if self.relu { res } else { &grad },
            &GradRows { relu: self.relu },
        )?;
        let db = gperm.sum(1)?; // (c_out)
        let w2 = w.contiguous()?.reshape((gm.c_out, k))?;
        let mut dws = Vec::with_capacity(groups);
        let mut dxs = Vec::with_capacity(groups);
        for g in 0..groups {
            let dout_g = gperm.narrow(0, g * cout_g, cout_g)?; // (cout_g, B*P)
            let cols = x.apply_op1_no_bwd(&Im2Col {
                p: self.p,
                kh: gm.kh,
                kw: gm.kw,
                group: g,
            })?; // (K, B*P)
            dws.push(dout_g.matmul(&cols.t()?)?); // (cout_g, K)
            drop(cols);
            // The input gradient only when something upstream wants it: for conv1 the
            // input is the image batch and this would be the most expensive GEMM.
            if x.track_op() {
                let w_g = w2.narrow(0, g * cout_g, cout_g)?; // (cout_g, K)
                let dcols = w_g.t()?.matmul(&dout_g)?; // (K, B*P)
                dxs.push(dcols.apply_op1_no_bwd(&Col2Im { gm })?); // (B, cin_g, H, W)
            }
        }
        let dw = Tensor::cat(&dws, 0)?.reshape(w.dims())?;
        let dx = if x.track_op() {
            Some(Tensor::cat(&dxs, 1)?)
        } else {
            None
        };
        Ok((dx, Some(dw), Some(db)))
    }
}

/// im2col of one group as a (no-backward) custom op: `(B, C, H, W) -> (K, B*P)`.
struct Im2Col {
    p: ConvParams,
    kh: usize,
    kw: usize,
    group: usize,
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = l.dims();
        let c_out_dummy = self.p.groups; // only the kernel's spatial dims matter here
        let gm = Geom::new(
            d,
            &[c_out_dummy, d[1] / self.p.groups, self.kh, self.kw],
            self.p,
        )?;
        let shape = Shape::from((gm.k(), gm.b * gm.pix()));
        let out = match s {
            CpuStorage::F32(x) => CpuStorage::F32(im2col(x, l, &gm, self.group)),
            CpuStorage::F64(x) => CpuStorage::F64(im2col(x, l, &gm, self.group)),
            _ => candle_core::bail!("im2col: supports f32/f64, got {:?}", s.dtype()),
        };
        Ok((out, shape))
    }
}

/// col2im of one group as a (no-backward) custom op: `(K, B*P) -> (B, cin_g, H, W)`.
struct Col2Im {
    gm: Geom,
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let gm = &self.gm;
        let range = contiguous_range(l, "col2im")?;
        let shape = Shape::from((gm.b, gm.cin_g(), gm.h, gm.w));
        let out = match s {
            CpuStorage::F32(c) => CpuStorage::F32(col2im(&c[range], gm)),
            CpuStorage::F64(c) => CpuStorage::F64(col2im(&c[range], gm)),
            _ => candle_core::bail!("col2im: supports f32/f64, got {:?}", s.dtype()),
        };
        Ok((out, shape))
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
