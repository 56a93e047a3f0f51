//! Training (paper §5): the paper's SGD, the learning-rate schedule, the loop,
//! checkpoints, metrics, and evaluation.
//!
//! - [`config`]: the `[train]` recipe section (`TrainConfig::default()` is the paper).
//! - [`sgd`]: `v ← 0.9·v − 0.0005·ε·w − ε·g; w ← w + v`.
//! - [`schedule`]: ε ÷ 10 when validation error stops improving (or at fixed epochs).
//! - [`trainer`]: the loop, top to bottom; [`eval`]: centre and ten-crop top-1/top-5.
//! - [`checkpoint`], [`metrics`], [`run_dir`]: what a run writes, and how it resumes.

pub mod checkpoint;
pub mod config;
pub mod confusion;
pub mod device;
mod error;
pub mod eval;
pub mod golden;
pub mod interrupt;
pub mod metrics;
pub mod net;
pub mod run_dir;
pub mod schedule;
pub mod sgd;
pub mod step_timing;
pub mod trainer;

pub use config::{Precision, ScheduleKind, TrainConfig};
pub use error::TrainError;
pub use eval::{EvalOptions, EvalReport, WhichCheckpoint, run_eval};
pub use trainer::{Finish, Start, TrainOptions, TrainSummary, train};

/// The dataset directory `train` reads when not told otherwise (what bare `ingest` writes).
pub const DEFAULT_DATASET: &str = "dataset";
