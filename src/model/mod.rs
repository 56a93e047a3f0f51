//! AlexNet (Krizhevsky, Sutskever, Hinton 2012) in candle, layer by layer as in the
//! paper (PAPER.md §3): the network, its initialisation, dropout with a resumable RNG,
//! and the two ops candle lacks or gets wrong (cross-channel LRN; overlapping
//! max-pooling with a correct backward), plus a faster CPU convolution and cuDNN's.
//!
//! Each op keeps its implementations side by side in its file: the CPU code, the CUDA
//! kernel (the `.cu` file of the same name, `cuda` builds) and a reference composite of
//! candle ops that runs on any device — the oracle the others are tested against, and
//! what `[model] kernels = "reference"` selects.

mod alexnet;
mod config;
pub mod conv;
pub mod cpu_slice;
#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "cudnn")]
mod cudnn;
mod dropout;
mod init;
pub mod linear;
pub mod lrn;
mod matmul;
pub mod max_pool;
pub mod onednn;
pub mod parity;
#[cfg(test)]
mod test_util;
mod workspace;

pub use alexnet::{
    AlexNet, FeatureLayer, LayerParams, ParamInit, ParamSpec, alexnet, param_specs, parameter_count,
};
pub use config::{Activation, Kernels, LrnConfig, ModelConfig, PoolConfig};
pub use dropout::{DropoutRng, DropoutState};
pub use init::init_paper;

/// What can go wrong building or running the model, naming the key or tensor at fault.
/// [`ModelConfig::validate`], [`param_specs`] and [`parameter_count`] return it as is;
/// the candle-style APIs (`alexnet`, `forward`, `init_paper`) return a
/// `candle_core::Error::Wrapped` carrying its message (candle 0.11's wrapper keeps only
/// `Display`, so check a recipe with `param_specs` first when the variant matters).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A `[model]` recipe value is out of range.
    #[error("invalid config {key}: {reason}")]
    InvalidConfig { key: &'static str, reason: String },
    /// The input image is too small for the conv/pool stack.
    #[error(
        "input size {input_size} is too small for AlexNet: after {layer} the feature map \
         would be empty (the smallest input this config accepts is {min_input})"
    )]
    InputTooSmall {
        input_size: usize,
        layer: &'static str,
        min_input: usize,
    },
    /// A parameter the network needs is not in the VarBuilder.
    #[error(
        "parameter {name} (shape {shape:?}) is missing: initialise with model::init_paper \
         or load a checkpoint that has it"
    )]
    MissingParameter { name: String, shape: Vec<usize> },
    /// The input batch does not have the shape the network was built for.
    #[error("input has shape {got:?}, expected (batch, 3, {size}, {size})")]
    BadInput { got: Vec<usize>, size: usize },
}

/// Whether one of our hand-written ops runs for `x`: on the CPU for the dtypes in `cpu`;
/// on a CUDA device for f32, f64 and bf16 when `cuda` (the build has the op's kernel).
/// Elsewhere the op's reference composite runs.
fn custom_op_runs(x: &candle_core::Tensor, cpu: &[candle_core::DType], cuda: bool) -> bool {
    use candle_core::{DType, Device};
    match x.device() {
        Device::Cpu => cpu.contains(&x.dtype()),
        Device::Cuda(_) => cuda && matches!(x.dtype(), DType::F32 | DType::F64 | DType::BF16),
        _ => false,
    }
}

impl From<ModelError> for candle_core::Error {
    fn from(e: ModelError) -> Self {
        candle_core::Error::wrap(e)
    }
}
