//! Training (paper §5): the paper's SGD, the learning-rate schedule, the loop, metrics,
//! and evaluation. What a run *is* once written (its directory, checkpoints, model card)
//! lives in [`crate::run`], which this module writes and its consumers read.
//!
//! - [`crate::recipe::train`]: the `[train]` recipe section (`TrainConfig::default()` is
//!   the paper).
//! - [`sgd`]: `v ← 0.9·v − 0.0005·ε·w − ε·g; w ← w + v`.
//! - [`schedule`]: ε ÷ 10 when validation error stops improving (or at fixed epochs).
//! - [`trainer`]: the loop, top to bottom; [`eval`]: centre and ten-crop top-1/top-5.
//! - [`state`]: what a checkpoint saves for `--resume`; [`metrics`]: `metrics.jsonl`.

pub mod confusion;
mod error;
pub mod eval;
pub mod golden;
pub mod interrupt;
pub mod metrics;
pub mod schedule;
pub mod sgd;
pub mod state;
pub mod step_timing;
pub mod trainer;

pub use crate::device;
pub use crate::recipe::train::{Precision, ScheduleKind, TrainConfig};
pub use crate::run::WhichCheckpoint;
pub use error::TrainError;
pub use eval::{EvalOptions, EvalReport, run_eval};
pub use trainer::{Finish, Start, TrainOptions, TrainSummary, train};

/// The dataset directory `train` reads when not told otherwise (what bare `ingest` writes).
pub const DEFAULT_DATASET: &str = "dataset";
