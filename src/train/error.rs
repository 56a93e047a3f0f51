//! What can stop training or evaluation, each naming the file, key or tensor at fault.

use crate::recipe::RecipeError;
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
    #[error("device {device:?}: {message}")]
    Device { device: String, message: String },
    /// The dataset does not fit the recipe or the run (image size, classes).
    #[error("dataset {dataset}: {message}")]
    Dataset { dataset: String, message: String },
    /// The run directory is missing, already used, or incomplete.
    #[error("run {path}: {message}")]
    Run { path: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A checkpoint file is unreadable or does not match the run.
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: String, message: String },
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
