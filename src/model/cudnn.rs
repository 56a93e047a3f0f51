//! The convolution layer through cuDNN (`cudnn` builds), the CUDA twin of the CPU op in
//! `conv.rs`: [`CudnnConv2d`] `(input, kernel, bias) -> relu?(conv + bias)`.
//!
//! - Forward: one `cudnnConvolutionForward` per layer with the group count set on the
//!   descriptor (no chunk + cat), then bias and ReLU in one in-place pass (`conv.cu`).
//!   cuDNN's own fused conv + bias + activation is left aside: it supports ReLU only with
//!   one algorithm (implicit precomputed GEMM) and not for every data type.
//! - Backward: the ReLU mask on the output gradient (one pass), the bias gradient as its
//!   sum over batch and pixels (in f32 for bf16), `cudnnConvolutionBackwardFilter`, and
//!   `cudnnConvolutionBackwardData` only when the input needs a gradient
//!   (`Tensor::track_op`): never for conv1, whose input is the image batch.
//! - Algorithms: cuDNN's heuristic choice (`cudnnGetConvolution*Algorithm_v7`) once per
//!   pass, shape and dtype, kept for the process; one workspace per device, grown to the
//!   largest any chosen algorithm needs and reused by every call (all run on the
//!   device's one stream, in order).
//! - Precision: f32 uses FMA math (no TF32), so f32 training matches the CPU and the
//!   PyTorch goldens; bf16 computes in f32 on tensor cores; f64 is plain.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, CudnnDataType,
    FilterDescriptor, TensorDescriptor, sys,
};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, CudaDevice, DeviceId, WrapErr};
use candle_core::{
    CudaStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType,
};

use super::conv::{ConvParams, Geom};
use super::cuda::{self, CONV, with_float_type};

/// The conv layer as a custom op on CUDA: `(input, kernel, bias) -> output`.
#[derive(Debug, Clone, Copy)]
pub struct CudnnConv2d {
    pub p: ConvParams,
    /// Apply ReLU after the bias (every conv of AlexNet).
    pub relu: bool,
}

/// A backward pass through cuDNN: `Pass::Data` is `(kernel, grad_output) -> grad_input`
/// with `dims` the input's; `Pass::Filter` is `(input, grad_output) -> grad_kernel` with
/// `dims` the kernel's.
struct Backward {
    p: ConvParams,
    pass: Pass,
    dims: [usize; 4],
}

/// `(grad_output, output) -> grad_output where output > 0, else 0`.
struct ReluMask;

/// The element types cuDNN runs for us, with the math each computes in.
trait Element: CudnnDataType + DeviceRepr + WithDType + CudaDType {
    type Compute: CudnnDataType;
    const MATH: sys::cudnnMathType_t;
}

impl Element for f32 {
    type Compute = f32;
    const MATH: sys::cudnnMathType_t = sys::cudnnMathType_t::CUDNN_FMA_MATH;
}

impl Element for f64 {
    type Compute = f64;
    const MATH: sys::cudnnMathType_t = sys::cudnnMathType_t::CUDNN_DEFAULT_MATH;
}

impl Element for half::bf16 {
    type Compute = f32;
    const MATH: sys::cudnnMathType_t = sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH;
}

/// Which of the three convolution passes an algorithm is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Pass {
    Forward,
    Data,
    Filter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PlanKey {
    pass: Pass,
    dtype: DType,
    x: [usize; 4],
    w: [usize; 4],
    stride: usize,
    padding: usize,
    groups: usize,
}

#[derive(Debug, Clone, Copy)]
enum Algo {
    Forward(sys::cudnnConvolutionFwdAlgo_t),
    Data(sys::cudnnConvolutionBwdDataAlgo_t),
    Filter(sys::cudnnConvolutionBwdFilterAlgo_t),
}

/// Per device: the cuDNN handle (bound to candle's stream), the chosen algorithms and
/// their workspace sizes, and the shared workspace.
struct DeviceState {
    handle: Arc<Cudnn>,
    plans: HashMap<PlanKey, (Algo, usize)>,
    workspace: Option<CudaSlice<u8>>,
}

// cuDNN handles are neither Send nor Sync: one per thread and device, as candle does.
thread_local! {
    static STATE: RefCell<HashMap<DeviceId, DeviceState>> = RefCell::new(HashMap::new());
}

fn with_state<R>(dev: &CudaDevice, f: impl FnOnce(&mut DeviceState) -> Result<R>) -> Result<R> {
    STATE.with(|cell| {
        let mut map = cell.borrow_mut();
        let state = match map.entry(dev.id()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(DeviceState {
                handle: Cudnn::new(dev.cuda_stream())?,
                plans: HashMap::new(),
                workspace: None,
            }),
        };
        f(state)
    })
}

impl DeviceState {
    /// The chosen algorithm of `key` and its workspace size, chosen on first use.
    fn plan(
        &mut self,
        key: PlanKey,
        choose: impl FnOnce() -> Result<(Algo, usize)>,
    ) -> Result<(Algo, usize)> {
        if let Some(p) = self.plans.get(&key) {
            return Ok(*p);
        }
        let p = choose()?;
        self.plans.insert(key, p);
        Ok(p)
    }

    /// A workspace of at least `bytes` (None for 0), grown and kept for later calls.
    fn workspace(&mut self, dev: &CudaDevice, bytes: usize) -> Result<Option<&mut CudaSlice<u8>>> {
        if bytes == 0 {
            return Ok(None);
        }
        if self.workspace.as_ref().is_none_or(|w| w.len() < bytes) {
            self.workspace = None; // free the old one first
            self.workspace = Some(dev.alloc_zeros::<u8>(bytes)?);
        }
        Ok(self.workspace.as_mut())
    }
}

/// The four descriptors of one convolution.
struct Descriptors<T: Element> {
    x: TensorDescriptor<T>,
    w: FilterDescriptor<T>,
    conv: ConvDescriptor<T::Compute>,
    y: TensorDescriptor<T>,
}

impl<T: Element> Descriptors<T> {
    fn forward(&self) -> ConvForward<'_, T, T::Compute, T> {
        ConvForward {
            conv: &self.conv,
            x: &self.x,
            w: &self.w,
            y: &self.y,
        }
    }

    fn backward_data(&self) -> ConvBackwardData<'_, T, T::Compute, T> {
        ConvBackwardData {
            conv: &self.conv,
            dx: &self.x,
            w: &self.w,
            dy: &self.y,
        }
    }

    fn backward_filter(&self) -> ConvBackwardFilter<'_, T, T::Compute, T> {
        ConvBackwardFilter {
            conv: &self.conv,
            x: &self.x,
            dw: &self.w,
            dy: &self.y,
        }
    }
}

fn descriptors<T: Element>(h: &Arc<Cudnn>, g: &Geom) -> Result<Descriptors<T>> {
    let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
    let i = |v: usize| v as i32;
    let (pad, stride) = (i(g.p.padding), i(g.p.stride));
    let mut conv = h.create_conv2d::<T::Compute>(
        [pad, pad],
        [stride, stride],
        [1, 1],
        sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
    )?;
    conv.set_group_count(i(g.p.groups))?;
    conv.set_math_type(T::MATH)?;
    Ok(Descriptors {
        x: h.create_4d_tensor::<T>(nchw, [i(g.b), i(g.c_in), i(g.h), i(g.w)])?,
        w: h.create_4d_filter::<T>(nchw, [i(g.c_out), i(g.cin_g()), i(g.kh), i(g.kw)])?,
        conv,
        y: h.create_4d_tensor::<T>(nchw, [i(g.b), i(g.c_out), i(g.oh), i(g.ow)])?,
    })
}

fn key(pass: Pass, dtype: DType, g: &Geom) -> PlanKey {
    PlanKey {
        pass,
        dtype,
        x: [g.b, g.c_in, g.h, g.w],
        w: [g.c_out, g.cin_g(), g.kh, g.kw],
        stride: g.p.stride,
        padding: g.p.padding,
        groups: g.p.groups,
    }
}

fn dims4(l: &Layout, what: &str) -> Result<[usize; 4]> {
    match l.dims() {
        &[a, b, c, d] => Ok([a, b, c, d]),
        d => candle_core::bail!("cudnn conv2d: {what} must be 4-D, got {d:?}"),
    }
}

/// Runs one pass of the convolution `g` in `T`: builds the descriptors, takes the pass's
/// algorithm (`choose` picks it and its workspace size on the first call for this pass,
/// shape and dtype) and the shared workspace, and hands them to `launch`.
fn run_pass<T: Element>(
    dev: &CudaDevice,
    g: &Geom,
    pass: Pass,
    choose: impl FnOnce(&Descriptors<T>) -> Result<(Algo, usize)>,
    launch: impl FnOnce(&Descriptors<T>, Algo, Option<&mut CudaSlice<u8>>) -> Result<()>,
) -> Result<()> {
    with_state(dev, |st| {
        let d = descriptors::<T>(&st.handle, g)?;
        let (algo, bytes) = st.plan(key(pass, T::DTYPE, g), || choose(&d))?;
        launch(&d, algo, st.workspace(dev, bytes)?)
    })
}

/// cuDNN's scaling factors: `out = 1 · result + 0 · out`.
fn overwrite<T: Element>() -> (T, T) {
    (T::from_f64(1.0), T::from_f64(0.0))
}

/// `y = conv(x, w)` (fresh output).
fn forward<T: Element>(
    dev: &CudaDevice,
    g: &Geom,
    (x, xl): (&CudaStorage, &Layout),
    (w, wl): (&CudaStorage, &Layout),
) -> Result<CudaSlice<T>> {
    let op_name = "cudnn conv2d";
    let (xv, wv) = (
        cuda::view::<T>(x, xl, op_name)?,
        cuda::view::<T>(w, wl, op_name)?,
    );
    // SAFETY: cuDNN writes every output (beta = 0).
    let mut y = unsafe { dev.alloc::<T>(g.b * g.c_out * g.oh * g.ow)? };
    run_pass::<T>(
        dev,
        g,
        Pass::Forward,
        |d| {
            let a = d.forward().pick_algorithm()?;
            Ok((Algo::Forward(a), d.forward().get_workspace_size(a)?))
        },
        |d, algo, ws| {
            let Algo::Forward(algo) = algo else {
                unreachable!("a forward plan")
            };
            // SAFETY: the views and the output match the descriptors' shapes and type.
            Ok(unsafe { d.forward().launch(algo, ws, overwrite(), &xv, &wv, &mut y) }?)
        },
    )?;
    Ok(y)
}

/// `dx = conv_backward_data(w, dy)`.
fn backward_data<T: Element>(
    dev: &CudaDevice,
    g: &Geom,
    (w, wl): (&CudaStorage, &Layout),
    (dy, dyl): (&CudaStorage, &Layout),
) -> Result<CudaSlice<T>> {
    let op_name = "cudnn conv2d backward-data";
    let (wv, dyv) = (
        cuda::view::<T>(w, wl, op_name)?,
        cuda::view::<T>(dy, dyl, op_name)?,
    );
    // SAFETY: cuDNN writes every element (beta = 0).
    let mut dx = unsafe { dev.alloc::<T>(g.b * g.c_in * g.h * g.w)? };
    run_pass::<T>(
        dev,
        g,
        Pass::Data,
        |d| {
            let a = d.backward_data().pick_algorithm()?;
            Ok((Algo::Data(a), d.backward_data().get_workspace_size(a)?))
        },
        |d, algo, ws| {
            let Algo::Data(algo) = algo else {
                unreachable!("a backward-data plan")
            };
            // SAFETY: as in `forward`.
            Ok(unsafe {
                d.backward_data()
                    .launch(algo, ws, overwrite(), &mut dx, &wv, &dyv)
            }?)
        },
    )?;
    Ok(dx)
}

/// `dw = conv_backward_filter(x, dy)`.
fn backward_filter<T: Element>(
    dev: &CudaDevice,
    g: &Geom,
    (x, xl): (&CudaStorage, &Layout),
    (dy, dyl): (&CudaStorage, &Layout),
) -> Result<CudaSlice<T>> {
    let op_name = "cudnn conv2d backward-filter";
    let (xv, dyv) = (
        cuda::view::<T>(x, xl, op_name)?,
        cuda::view::<T>(dy, dyl, op_name)?,
    );
    // SAFETY: cuDNN writes every element (beta = 0).
    let mut dw = unsafe { dev.alloc::<T>(g.c_out * g.cin_g() * g.kh * g.kw)? };
    run_pass::<T>(
        dev,
        g,
        Pass::Filter,
        |d| {
            let a = d.backward_filter().pick_algorithm()?;
            Ok((Algo::Filter(a), d.backward_filter().get_workspace_size(a)?))
        },
        |d, algo, ws| {
            let Algo::Filter(algo) = algo else {
                unreachable!("a backward-filter plan")
            };
            // SAFETY: as in `forward`.
            Ok(unsafe {
                d.backward_filter()
                    .launch(algo, ws, overwrite(), &xv, &mut dw, &dyv)
            }?)
        },
    )?;
    Ok(dw)
}

/// `y <- relu?(y + bias)` in place (`bias_act_*` in conv.cu).
fn bias_act<T: Element>(
    dev: &CudaDevice,
    y: &mut CudaSlice<T>,
    b: &CudaStorage,
    bl: &Layout,
    g: &Geom,
    relu: bool,
) -> Result<()> {
    let bias = cuda::view::<T>(b, bl, "cudnn conv2d bias")?;
    let func = CONV.func(dev, "bias_act", T::DTYPE)?;
    let n = y.len();
    let (n64, c, hw, relu) = (n as u64, g.c_out as u32, (g.oh * g.ow) as u64, relu as u32);
    let stream = dev.cuda_stream();
    let mut args = stream.launch_builder(&func);
    args.arg(y).arg(&bias).arg(&n64).arg(&c).arg(&hw).arg(&relu);
    // SAFETY: argument types and order match `bias_act_*`.
    unsafe { args.launch(cuda::grid(n)) }.w()?;
    Ok(())
}

impl CustomOp3 for CudnnConv2d {
    fn name(&self) -> &'static str {
        "conv2d-cudnn"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
        b: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let g = Geom::new(xl.dims(), wl.dims(), self.p)?;
        if bl.dims() != [g.c_out] || x.dtype() != w.dtype() || x.dtype() != b.dtype() {
            candle_core::bail!(
                "conv2d-cudnn: bias {:?} / dtypes {:?} {:?} {:?} do not match the kernel {:?}",
                bl.dims(),
                x.dtype(),
                w.dtype(),
                b.dtype(),
                wl.dims()
            )
        }
        let dev = x.device().clone();
        let out = with_float_type!(x.dtype(), "conv2d-cudnn", |T| {
            let mut y = forward::<T>(&dev, &g, (x, xl), (w, wl))?;
            bias_act::<T>(&dev, &mut y, b, bl, &g, self.relu)?;
            CudaStorage::wrap_cuda_slice(y, dev.clone())
        });
        Ok((out, Shape::from((g.b, g.c_out, g.oh, g.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dy = if self.relu {
            grad.apply_op2_no_bwd(res, &ReluMask)?
        } else {
            grad
        };
        // The bias gradient sums batch × pixels terms (387,200 for conv1 at batch 128):
        // in f32 for bf16, whose 8-bit mantissa would lose most of them.
        let db = match dy.dtype() {
            DType::BF16 => dy
                .to_dtype(DType::F32)?
                .sum((0, 2, 3))?
                .to_dtype(DType::BF16)?,
            _ => dy.sum((0, 2, 3))?,
        };
        let dims = |t: &Tensor| t.dims4().map(|(a, b, c, d)| [a, b, c, d]);
        let (p, filter) = (self.p, Pass::Filter);
        let dw = x.contiguous()?.apply_op2_no_bwd(
            &dy,
            &Backward {
                p,
                pass: filter,
                dims: dims(w)?,
            },
        )?;
        // The input gradient only when something upstream wants it (not for conv1).
        let dx = if x.track_op() {
            let data = Backward {
                p,
                pass: Pass::Data,
                dims: dims(x)?,
            };
            Some(w.contiguous()?.apply_op2_no_bwd(&dy, &data)?)
        } else {
            None
        };
        Ok((dx, Some(dw), Some(db)))
    }
}

/// The CPU refusal every CUDA-only op of this file shares.
fn cuda_only(op: &str) -> Result<(candle_core::CpuStorage, Shape)> {
    candle_core::bail!("{op} runs on CUDA only")
}

impl CustomOp2 for Backward {
    fn name(&self) -> &'static str {
        match self.pass {
            Pass::Data => "conv2d-cudnn-backward-data",
            _ => "conv2d-cudnn-backward-filter",
        }
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    /// `(kernel or input, grad_output) -> grad_input or grad_kernel`.
    fn cuda_fwd(
        &self,
        a: &CudaStorage,
        al: &Layout,
        dy: &CudaStorage,
        dyl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (x_dims, w_dims) = match self.pass {
            Pass::Data => (self.dims, dims4(al, "kernel")?),
            _ => (dims4(al, "input")?, self.dims),
        };
        let g = Geom::new(&x_dims, &w_dims, self.p)?;
        if dims4(dyl, "grad")? != [g.b, g.c_out, g.oh, g.ow] {
            candle_core::bail!(
                "{}: grad {:?} for input {x_dims:?}",
                self.name(),
                dyl.dims()
            )
        }
        let dev = a.device().clone();
        let out = with_float_type!(a.dtype(), self.name(), |T| {
            let grad = match self.pass {
                Pass::Data => backward_data::<T>(&dev, &g, (a, al), (dy, dyl))?,
                _ => backward_filter::<T>(&dev, &g, (a, al), (dy, dyl))?,
            };
            CudaStorage::wrap_cuda_slice(grad, dev.clone())
        });
        Ok((out, Shape::from(self.dims.to_vec())))
    }
}

impl CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "relu-mask"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    fn cuda_fwd(
        &self,
        gy: &CudaStorage,
        gl: &Layout,
        y: &CudaStorage,
        yl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        if gl.shape() != yl.shape() || gy.dtype() != y.dtype() {
            candle_core::bail!(
                "relu-mask: grad {:?} vs output {:?}",
                gl.shape(),
                yl.shape()
            )
        }
        let dev = gy.device().clone();
        let n = gl.shape().elem_count();
        let func = CONV.func(&dev, "relu_mask", gy.dtype())?;
        let out = with_float_type!(gy.dtype(), "relu-mask", |T| {
            let g = cuda::view::<T>(gy, gl, "relu-mask")?;
            let yv = cuda::view::<T>(y, yl, "relu-mask")?;
            // SAFETY: the kernel writes every element.
            let out = unsafe { dev.alloc::<T>(n)? };
            let n64 = n as u64;
            let stream = dev.cuda_stream();
            let mut args = stream.launch_builder(&func);
            args.arg(&g).arg(&yv).arg(&out).arg(&n64);
            // SAFETY: argument types and order match `relu_mask_*`.
            unsafe { args.launch(cuda::grid(n)) }.w()?;
            drop(args);
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        });
        Ok((out, gl.shape().clone()))
    }
}
