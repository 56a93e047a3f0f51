//! `pipeline experiment`: every recipe × seed trained one after another under
//! `EXP/RECIPE-sSEED/`, then compared (`EXP/summary.json`, `EXP/summary.md`).
//!
//! Each run is an ordinary training run, through [`train::train`]: a finished one
//! (its `summary.json` written) is skipped when the command is run again, an unfinished
//! one resumes from its newest checkpoint, so a killed experiment loses at most the
//! steps since the last checkpoint of the run it was in.

pub mod plan;
pub mod summary;

use std::path::{Path, PathBuf};

pub use plan::{PlannedRun, RunState};
pub use summary::{ExperimentSummary, RecipeRow, RunResult, Spread};

use crate::dataset::atomic;
use crate::recipe::RecipeError;
use crate::run::RunDir;
use crate::train::{self, Finish, Start, TrainError, TrainOptions, metrics};

/// The default training-error threshold of "epochs to threshold". The paper's 25 % (a
/// CIFAR-10 net trained for many epochs) is out of reach of the sample's short protocol:
/// there the baseline reaches 70 % about half way (epoch 3-4 of 8), so a recipe up to
/// about twice as slow still reaches it and gets a measured ratio.
pub const DEFAULT_THRESHOLD: f64 = 0.70;

/// The comparison's data file and its table.
pub const SUMMARY_JSON: &str = "summary.json";
pub const SUMMARY_TABLE: &str = "summary.md";

#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// Boxed: a training error is large, and every result here carries the type.
    #[error(transparent)]
    Train(Box<TrainError>),
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Read { path: String, message: String },
}

impl From<TrainError> for ExperimentError {
    fn from(e: TrainError) -> Self {
        Self::Train(Box::new(e))
    }
}

impl From<crate::run::RunError> for ExperimentError {
    fn from(e: crate::run::RunError) -> Self {
        Self::Train(Box::new(TrainError::from(e)))
    }
}

/// `pipeline experiment`.
#[derive(Clone, Debug)]
pub struct ExperimentOptions {
    pub recipes: Vec<PathBuf>,
    /// A recipe fragment laid over every recipe (the experiment's protocol: fewer
    /// epochs, a moved learning-rate drop).
    pub protocol: Option<PathBuf>,
    pub dataset: PathBuf,
    pub out: PathBuf,
    pub seeds: u64,
    /// Training-error threshold (a fraction) of "epochs to threshold".
    pub threshold: f64,
    /// Overrides every recipe's `train.device`.
    pub device: Option<String>,
    pub progress: bool,
}

/// What the command did.
#[derive(Clone, Debug)]
pub struct ExperimentOutcome {
    pub trained: usize,
    pub resumed: usize,
    pub skipped: usize,
    /// None when a run was interrupted (Ctrl-C / SIGTERM): its checkpoint is saved and
    /// rerunning the command continues it.
    pub summary: Option<ExperimentSummary>,
    pub interrupted_by: Option<i32>,
}

/// Trains what is not finished, then writes the comparison.
pub fn run(
    options: &ExperimentOptions,
    say: &mut dyn FnMut(&str),
) -> Result<ExperimentOutcome, ExperimentError> {
    if !(options.threshold > 0.0 && options.threshold < 1.0) {
        return Err(ExperimentError::Invalid(format!(
            "--threshold must be a fraction in (0, 1), got {}",
            options.threshold
        )));
    }
    let runs = plan::plan(
        &options.recipes,
        options.protocol.as_deref(),
        options.seeds,
        &options.out,
    )?;
    // Every run's state first: a stale run is refused before hours of training.
    let states = runs
        .iter()
        .map(PlannedRun::state)
        .collect::<Result<Vec<_>, _>>()?;
    std::fs::create_dir_all(&options.out).map_err(|source| ExperimentError::Io {
        path: options.out.display().to_string(),
        source,
    })?;
    let mut outcome = ExperimentOutcome {
        trained: 0,
        resumed: 0,
        skipped: 0,
        summary: None,
        interrupted_by: None,
    };
    for (i, (planned, state)) in runs.iter().zip(&states).enumerate() {
        let label = format!(
            "[{}/{}] {} seed {} → {}",
            i + 1,
            runs.len(),
            planned.name,
            planned.seed,
            planned.dir.display()
        );
        let start = match state {
            RunState::Finished => {
                outcome.skipped += 1;
                say(&format!("{label}: finished, skipped"));
                continue;
            }
            RunState::Unfinished => {
                outcome.resumed += 1;
                say(&format!("{label}: resuming"));
                Start::Resume {
                    run: planned.dir.clone(),
                }
            }
            RunState::New => {
                outcome.trained += 1;
                say(&format!("{label}: training"));
                Start::New {
                    recipe: Box::new(planned.recipe.clone()),
                    out: Some(planned.dir.clone()),
                }
            }
        };
        let trained = train::train(&TrainOptions {
            start,
            dataset: Some(options.dataset.clone()),
            device: options.device.clone(),
            epochs: None,
            stop_after_steps: None,
            progress: options.progress,
            handle_signals: true,
        })?;
        say(&trained.lines().join("\n"));
        if trained.finish != Finish::Completed {
            outcome.interrupted_by = trained.signal;
            return Ok(outcome);
        }
    }
    let summary = summarise(&runs, options.threshold)?;
    write_summary(&options.out, &summary)?;
    outcome.summary = Some(summary);
    Ok(outcome)
}

/// The comparison of finished runs (in plan order, the first recipe the baseline).
pub fn summarise(
    runs: &[PlannedRun],
    threshold: f64,
) -> Result<ExperimentSummary, ExperimentError> {
    let mut order: Vec<String> = Vec::new();
    let mut results = Vec::new();
    for planned in runs {
        if !order.contains(&planned.name) {
            order.push(planned.name.clone());
        }
        let run = RunDir::new(&planned.dir);
        // Epoch 0 of the crossing: the error of a uniform guess over the run's classes.
        let classes = run.load_info()?.classes.len().max(1);
        let chance = 1.0 - 1.0 / classes as f64;
        let path = run.metrics();
        let lines = metrics::read(&path)?;
        let result = RunResult::from_metrics(
            &planned.name,
            planned.seed,
            planned.dir.display().to_string(),
            &lines,
            threshold,
            chance,
        )
        .ok_or_else(|| ExperimentError::Read {
            path: path.display().to_string(),
            message: "no finished epoch".into(),
        })?;
        results.push(result);
    }
    Ok(ExperimentSummary::new(threshold, &order, results))
}

fn write_summary(out: &Path, summary: &ExperimentSummary) -> Result<(), ExperimentError> {
    let write = |name: &str, bytes: &[u8]| {
        let path = out.join(name);
        atomic::write_file(&path, bytes).map_err(|source| ExperimentError::Io {
            path: path.display().to_string(),
            source,
        })
    };
    let json = serde_json::to_string_pretty(summary).expect("summary serialises");
    write(SUMMARY_JSON, json.as_bytes())?;
    write(SUMMARY_TABLE, summary.table().as_bytes())
}

/// Reads `EXP/summary.json` (for `pipeline report --experiment EXP`).
pub fn load_summary(exp: &Path) -> Result<ExperimentSummary, ExperimentError> {
    let path = exp.join(SUMMARY_JSON);
    let text = std::fs::read_to_string(&path).map_err(|source| ExperimentError::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ExperimentError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}
