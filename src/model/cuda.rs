//! Our CUDA kernels (`max_pool.cu`, `lrn.cu`, `conv.cu`, beside the ops that launch them),
//! compiled to PTX by `src/build.rs` and loaded by the driver on first use per device.
//! Only in builds with the `cuda` feature.
//!
//! Every kernel is a grid-stride loop named `<root>_<dtype>` (`lrn_fwd_f32`, …) for f32,
//! f64 and bf16; bf16 is computed in f32.

use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaView, LaunchConfig};
use candle_core::cuda_backend::{CudaDType, CudaDevice};
use candle_core::{CudaStorage, DType, Layout, Result};

/// One `.cu` file's PTX.
pub struct Module {
    name: &'static str,
    ptx: &'static str,
}

pub const MAX_POOL: Module = Module {
    name: "pipeline_max_pool",
    ptx: include_str!(concat!(env!("OUT_DIR"), "/max_pool.ptx")),
};
pub const LRN: Module = Module {
    name: "pipeline_lrn",
    ptx: include_str!(concat!(env!("OUT_DIR"), "/lrn.ptx")),
};
#[cfg(feature = "cudnn")]
pub const CONV: Module = Module {
    name: "pipeline_conv",
    ptx: include_str!(concat!(env!("OUT_DIR"), "/conv.ptx")),
};

impl Module {
    /// The kernel `<root>_<dtype>` on `dev`; launch it on `dev.cuda_stream()`, the
    /// stream candle's own ops run on.
    pub fn func(&self, dev: &CudaDevice, root: &str, dtype: DType) -> Result<CudaFunction> {
        if !matches!(dtype, DType::F32 | DType::F64 | DType::BF16) {
            candle_core::bail!("{root}: no CUDA kernel for {dtype:?} (f32, f64 and bf16 only)")
        }
        let name = format!("{root}_{}", dtype.as_str());
        Ok(dev
            .get_or_load_custom_func(&name, self.name, self.ptx)?
            .into_cuda_function())
    }
}

/// Launch shape of the grid-stride kernels for `n` elements: 256 threads a block and
/// at most 64 K blocks (the loops cover the rest).
pub fn grid(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 65_535) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The contiguous data of `s` that `l` describes, or an error naming `op`.
pub fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout, op: &str) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.as_cuda_slice::<T>()?.slice(a..b)),
        None => candle_core::bail!("{op}: expects a contiguous input"),
    }
}

/// A dimension as the kernels' `uint32_t`, or an error naming `op`.
pub fn dim32(v: usize, op: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{op}: size {v} exceeds u32")))
}

/// Runs `$body` with `$t` bound to the Rust type of a float `DType` our kernels have.
macro_rules! with_float_type {
    ($dtype:expr, $op:expr, |$t:ident| $body:expr) => {
        match $dtype {
            candle_core::DType::F32 => {
                type $t = f32;
                $body
            }
            candle_core::DType::F64 => {
                type $t = f64;
                $body
            }
            candle_core::DType::BF16 => {
                type $t = half::bf16;
                $body
            }
            d => candle_core::bail!("{}: no CUDA kernel for {d:?} (f32, f64 and bf16 only)", $op),
        }
    };
}
pub(crate) use with_float_type;
