//! What can stop training or evaluation, each naming the file, key or tensor at fault.

use crate::device::DeviceError;
use crate::recipe::RecipeError;
use crate::run::RunError;
use crate::stream::StreamError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// A recipe value (after command-line overrides) is invalid.
    #[error("invalid recipe: {0}")]
    Config(String),
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The data stream failed mid-training; the steps done were checkpointed first.
    #[error(
        "{cause}\ntraining stopped after step {step}, saved in {checkpoint}; \
         once the cause is fixed, continue with `pipeline train --resume {run}`"
    )]
    StreamFailed {
        /// (Not `source`: the message already says it; anyhow would print it twice.)
        cause: Box<StreamError>,
        step: u64,
        checkpoint: String,
        run: String,
    },
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The run directory, a checkpoint, or a dataset that does not fit the run.
    #[error(transparent)]
    Run(Box<RunError>),
    /// The dataset cannot be trained on or evaluated (too few images, no val split).
    #[error("dataset {dataset}: {message}")]
    Dataset { dataset: String, message: String },
    /// A line of `metrics.jsonl` is unreadable.
    #[error("{path}: {message}")]
    Metrics { path: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A tensor operation failed; `what` says which (building the model, a forward pass…).
    #[error("{what}: {source}")]
    Candle {
        what: String,
        source: candle_core::Error,
    },
    /// The loss became NaN or infinite: training stopped before the bad step was applied
    /// and nothing was saved after it.
    #[error(
        "the training loss is {loss} at epoch {epoch}, step {step} (batch {batch} of {batches}): \
         training stopped without applying or saving that step. {resume_hint}"
    )]
    NonFinite {
        loss: f32,
        epoch: u64,
        step: u64,
        batch: usize,
        batches: usize,
        resume_hint: String,
    },
}

impl From<RunError> for TrainError {
    fn from(e: RunError) -> Self {
        Self::Run(Box::new(e))
    }
}

/// Wraps a candle error with what was being done.
pub(crate) fn candle(what: impl Into<String>) -> impl FnOnce(candle_core::Error) -> TrainError {
    let what = what.into();
    move |source| TrainError::Candle { what, source }
}

/// Wraps an I/O error with the path.
pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.display().to_string(),
        source,
    }
}
