//! `pipeline export`: a trained run's network in another framework's files.
//!
//! [`torch`] writes the weights as safetensors under PyTorch's parameter names and
//! layouts, with a self-contained PyTorch module, the network's config, the classes
//! and the mean image, so the run loads with `load_state_dict` and gives candle's
//! logits. ONNX is one documented line from there (`torch.onnx.export`, README): no
//! well-kept Rust crate writes ONNX graphs, and a hand-built protobuf would be a second
//! definition of the network to keep in step.

pub mod torch;

/// The formats `pipeline export --format` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// safetensors + a PyTorch module (`alexnet.py`) + config, classes and mean.
    Torch,
}

/// What can stop an export, naming the file or the setting.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Write { path: String, message: String },
    /// The run's network has something PyTorch's layers cannot express the same way.
    #[error("cannot export {key} = {value}: {reason}")]
    Unsupported {
        key: &'static str,
        value: String,
        reason: String,
    },
    /// Reading the weights or computing the sample logits failed.
    #[error("{what}: {source}")]
    Network {
        what: String,
        source: candle_core::Error,
    },
    #[error(transparent)]
    Stream(#[from] crate::stream::StreamError),
}

impl ExportError {
    fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
        move |source| ExportError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    fn network(what: impl Into<String>) -> impl FnOnce(candle_core::Error) -> ExportError {
        let what = what.into();
        move |source| ExportError::Network { what, source }
    }
}
