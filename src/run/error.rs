//! What can stop a run from opening, each naming the run, the checkpoint or the dataset.

use crate::model::ModelConfig;
use crate::recipe::RecipeError;
use crate::stream::StreamError;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The run directory is missing, already used, or incomplete.
    #[error("run {path}: {message}")]
    Run { path: String, message: String },
    /// A checkpoint file is unreadable, damaged, or not one `pipeline train` wrote.
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: String, message: String },
    /// The dataset, the recipe and the model card do not describe the same network.
    #[error(transparent)]
    Incompatible(Box<Incompatible>),
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A tensor operation failed; `what` says which (building the model, loading a tensor…).
    #[error("{what}: {source}")]
    Candle {
        what: String,
        source: candle_core::Error,
    },
}

impl From<Box<Incompatible>> for RunError {
    fn from(e: Box<Incompatible>) -> Self {
        Self::Incompatible(e)
    }
}

/// The one error of the compatibility check ([`super::compat`]): a dataset that the run
/// (or the recipe, for a new run) cannot read, or a recipe that no longer describes the
/// run's network. The message names both sides and says how to go on.
#[derive(Debug, thiserror::Error)]
#[error("dataset {dataset}: {mismatch}")]
pub struct Incompatible {
    /// The dataset's folder or URL.
    pub dataset: String,
    pub mismatch: Mismatch,
}

/// What differs, with the other side named (the run directory, its checkpoint, or the
/// recipe file).
#[derive(Debug, thiserror::Error)]
pub enum Mismatch {
    /// A new run's recipe asks for another image size than the dataset stores.
    #[error(
        "stores {stored}×{stored} images but the recipe's data.image_size is {recipe}; use the \
         recipe the dataset was ingested with (e.g. --recipe pipeline/sample.toml)"
    )]
    RecipeImageSize { stored: usize, recipe: usize },
    /// A run meets a dataset of another image size.
    #[error(
        "stores {stored}×{stored} images but the run was trained on {trained}×{trained} \
         (data.image_size of run {run}); pass --dataset with a dataset ingested at that size \
         (`pipeline ingest SRC --out DIR --image-size {trained}`){own}"
    )]
    RunImageSize {
        stored: usize,
        trained: usize,
        run: String,
        /// ", or leave --dataset out to use the run's own (…)", when that is another one.
        own: String,
    },
    /// A run meets a dataset with other classes (or the same in another order).
    #[error(
        "has {found} classes but the run was trained on {trained} (the classes recorded in \
         {checkpoint}){differ}; use the dataset the run was trained on"
    )]
    Classes {
        found: usize,
        trained: usize,
        checkpoint: String,
        /// "; class 3 is n01 there but n02 here", when a position differs.
        differ: String,
    },
    /// The run's recipe was edited so that it describes another network than the one
    /// the checkpoint holds.
    #[error(
        "the checkpoint {checkpoint} holds [model] {card:?} at crop {card_crop}, but {recipe} \
         now says [model] {recipe_model:?} at data.crop_size {recipe_crop}; restore that \
         recipe or start a new run"
    )]
    Network {
        checkpoint: String,
        // Boxed: a model config is large, and every error carries the enum.
        card: Box<ModelConfig>,
        card_crop: usize,
        recipe: String,
        recipe_model: Box<ModelConfig>,
        recipe_crop: usize,
    },
}

/// Wraps a candle error with what was being done.
pub(crate) fn candle(what: impl Into<String>) -> impl FnOnce(candle_core::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Candle { what, source }
}

/// Wraps an I/O error with the path.
pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.display().to_string(),
        source,
    }
}
