//! `pipeline report`: the figures of one or more runs (and of an experiment) as PNGs,
//! with an `index.html` that opens from disk (no script, no network).
//!
//! - `curves-epoch.png`, `curves-time.png`: loss, train and val top-1 error of every
//!   run against epoch and against wall time ([`curves`]).
//! - `figure1.png`: training error against epochs, ReLU runs against tanh runs, the
//!   threshold line and the measured factor (when both kinds of run are there).
//! - `figure3-kernels.png`: conv1's kernels of the first run ([`kernels`]).
//! - `figure4-neighbours.png`: a `neighbors --sheet`, copied in when given.

pub mod curves;
pub mod html;
pub mod kernels;
pub mod png;

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::experiment::{self, ExperimentError, ExperimentSummary};
use crate::model::Activation;
use crate::recipe::Recipe;
use crate::run::RunDir;
use crate::run::{RunError, checkpoint};
use crate::train::TrainError;
use crate::train::metrics::{self, EpochMetrics};

pub const CURVES_EPOCH: &str = "curves-epoch.png";
pub const CURVES_TIME: &str = "curves-time.png";
pub const FIGURE1: &str = "figure1.png";
pub const KERNELS: &str = "figure3-kernels.png";
pub const NEIGHBOURS: &str = "figure4-neighbours.png";
pub const INDEX: &str = "index.html";

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Both boxed: they are large, and every result here carries the type.
    #[error(transparent)]
    Train(Box<TrainError>),
    #[error(transparent)]
    Experiment(Box<ExperimentError>),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("drawing {figure}: {message}")]
    Draw { figure: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl From<TrainError> for ReportError {
    fn from(e: TrainError) -> Self {
        Self::Train(Box::new(e))
    }
}

impl From<RunError> for ReportError {
    fn from(e: RunError) -> Self {
        Self::Train(Box::new(TrainError::from(e)))
    }
}

impl From<ExperimentError> for ReportError {
    fn from(e: ExperimentError) -> Self {
        Self::Experiment(Box::new(e))
    }
}

/// `pipeline report`.
#[derive(Clone, Debug)]
pub struct ReportOptions {
    /// Run directories (after the experiment's runs, when both are given).
    pub runs: Vec<PathBuf>,
    /// An experiment directory: its runs, and its summary table.
    pub experiment: Option<PathBuf>,
    /// A contact sheet of `pipeline neighbors --sheet` to include (Figure 4).
    pub sheet: Option<PathBuf>,
    pub out: PathBuf,
}

/// One run as the report sees it.
#[derive(Clone, Debug)]
pub struct RunData {
    /// The legend's name: `recipe s0` for an experiment's run, else the folder's name.
    pub label: String,
    /// The recipe's name (an experiment's) or the folder's name.
    pub recipe_name: String,
    pub dir: PathBuf,
    pub recipe: Recipe,
    pub metrics: Vec<EpochMetrics>,
}

impl RunData {
    fn open(dir: &Path, label: String, recipe_name: String) -> Result<RunData, ReportError> {
        let run = RunDir::open(dir)?;
        let metrics = metrics::read(&run.metrics())?;
        if metrics.is_empty() {
            return Err(ReportError::Invalid(format!(
                "{}: no finished epoch yet (nothing to draw)",
                run.metrics().display()
            )));
        }
        Ok(RunData {
            label,
            recipe_name,
            dir: dir.to_path_buf(),
            recipe: run.load_recipe()?,
            metrics,
        })
    }
}

/// A figure written, for the index and the command's output.
#[derive(Clone, Debug)]
pub struct Figure {
    pub file: &'static str,
    pub title: String,
    pub width: u32,
    pub height: u32,
}

/// What the report holds.
pub struct Report {
    pub runs: Vec<RunData>,
    pub experiment: Option<ExperimentSummary>,
    pub figures: Vec<Figure>,
    /// Lines saying what was left out and why (no tanh run for Figure 1, …).
    pub notes: Vec<String>,
    pub index: PathBuf,
}

/// Writes every figure that the runs allow, then `index.html`.
pub fn write(options: &ReportOptions) -> Result<Report, ReportError> {
    crate::fonts::register().map_err(|message| ReportError::Draw {
        figure: "(every figure)".into(),
        message,
    })?;
    let (runs, summary) = gather(options)?;
    if runs.is_empty() {
        return Err(ReportError::Invalid(
            "nothing to report: give --runs RUN… or --experiment EXP".into(),
        ));
    }
    let out = &options.out;
    std::fs::create_dir_all(out).map_err(|source| ReportError::Io {
        path: out.display().to_string(),
        source,
    })?;
    let mut figures = Vec::new();
    let mut notes = Vec::new();
    let mut save =
        |canvas: png::Canvas, file: &'static str, title: String| -> Result<(), ReportError> {
            canvas.save(&out.join(file))?;
            figures.push(Figure {
                file,
                title,
                width: canvas.width,
                height: canvas.height,
            });
            Ok(())
        };

    let by_epoch = curves::training_curves(&runs, curves::Axis::Epoch, CURVES_EPOCH)?;
    save(
        by_epoch,
        CURVES_EPOCH,
        "Training curves against epoch".into(),
    )?;
    let by_time = curves::training_curves(&runs, curves::Axis::WallTime, CURVES_TIME)?;
    save(
        by_time,
        CURVES_TIME,
        "Training curves against wall time (on a shared machine: noisy)".into(),
    )?;

    let threshold = summary
        .as_ref()
        .map_or(experiment::DEFAULT_THRESHOLD, |s| s.threshold);
    match figure1_sides(&runs, threshold) {
        Some(fig) => {
            let verdict = fig.verdict();
            save(
                curves::figure1(&fig, FIGURE1)?,
                FIGURE1,
                format!("Figure 1 analogue: {verdict}"),
            )?;
        }
        None => notes.push(
            "Figure 1 (ReLU against tanh) needs runs of both activations; these runs have one."
                .into(),
        ),
    }

    let first = &runs[0];
    let weight = conv1_weight(&first.dir)?;
    let grid = kernels::kernel_grid(&weight, first.recipe.model.groups, KERNELS)?;
    save(
        grid,
        KERNELS,
        format!(
            "Figure 3 analogue: conv1's {} kernels of {} (each stretched to its own range; {} )",
            weight.dims()[0],
            first.label,
            if first.recipe.model.groups > 1 {
                "the maps of tower 1 above, tower 2 below"
            } else {
                "one tower"
            }
        ),
    )?;

    if let Some(sheet) = &options.sheet {
        let canvas = read_png(sheet)?;
        save(
            canvas,
            NEIGHBOURS,
            format!(
                "Figure 4 analogue: nearest neighbours by fc7 ({})",
                sheet.display()
            ),
        )?;
    } else {
        notes.push(
            "Figure 4: no --sheet given (make one with `pipeline neighbors --sheet`).".into(),
        );
    }

    let index = out.join(INDEX);
    let page = html::page(&runs, summary.as_ref(), &figures, &notes);
    crate::dataset::atomic::write_file(&index, page.as_bytes()).map_err(|source| {
        ReportError::Io {
            path: index.display().to_string(),
            source,
        }
    })?;
    Ok(Report {
        runs,
        experiment: summary,
        figures,
        notes,
        index,
    })
}

/// The experiment's runs (as its plan named them) and then `--runs`.
fn gather(
    options: &ReportOptions,
) -> Result<(Vec<RunData>, Option<ExperimentSummary>), ReportError> {
    let mut runs = Vec::new();
    let mut summary = None;
    if let Some(exp) = &options.experiment {
        let s = experiment::load_summary(exp)?;
        for r in &s.runs {
            let dir = exp.join(format!("{}-s{}", r.recipe, r.seed));
            runs.push(RunData::open(
                &dir,
                format!("{} s{}", r.recipe, r.seed),
                r.recipe.clone(),
            )?);
        }
        summary = Some(s);
    }
    for dir in &options.runs {
        let name = dir.file_name().map_or_else(
            || dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        runs.push(RunData::open(dir, name.clone(), name)?);
    }
    Ok((runs, summary))
}

/// The ReLU runs of the first ReLU recipe (an experiment's baseline) against the runs of
/// every tanh recipe; None without both.
fn figure1_sides(runs: &[RunData], threshold: f64) -> Option<curves::Figure1<'_>> {
    let side = |recipe: &str| -> curves::Side<'_> {
        let of: Vec<&RunData> = runs.iter().filter(|r| r.recipe_name == recipe).collect();
        // The mean over the recipe's runs, counted only if every run reached it.
        let mut sum = 0.0;
        let mut all = true;
        for r in &of {
            match experiment::summary::crossing(&r.metrics, threshold, chance_error(r)) {
                Some((epochs, _)) => sum += epochs,
                None => all = false,
            }
        }
        curves::Side {
            recipe: recipe.to_string(),
            epochs: (all && !of.is_empty()).then(|| sum / of.len() as f64),
            runs: of,
        }
    };
    let relu = runs
        .iter()
        .find(|r| r.recipe.model.activation == Activation::Relu)?;
    let mut tanh_recipes: Vec<&str> = Vec::new();
    for r in runs
        .iter()
        .filter(|r| r.recipe.model.activation == Activation::Tanh)
    {
        if !tanh_recipes.contains(&r.recipe_name.as_str()) {
            tanh_recipes.push(&r.recipe_name);
        }
    }
    if tanh_recipes.is_empty() {
        return None;
    }
    Some(curves::Figure1 {
        relu: side(&relu.recipe_name),
        tanh: tanh_recipes.into_iter().map(side).collect(),
        threshold,
    })
}

/// The error of a uniform guess over the run's classes (epoch 0 of a crossing).
fn chance_error(run: &RunData) -> f64 {
    let classes = RunDir::new(&run.dir)
        .load_info()
        .map(|i| i.classes.len())
        .unwrap_or(1)
        .max(1);
    1.0 - 1.0 / classes as f64
}

/// conv1's weights from the run's best checkpoint (the last one without validation).
fn conv1_weight(dir: &Path) -> Result<candle_core::Tensor, ReportError> {
    let run = RunDir::new(dir);
    let path = if run.best().exists() {
        run.best()
    } else {
        run.last_checkpoint()?.ok_or_else(|| {
            ReportError::Invalid(format!(
                "{}: no checkpoint to draw conv1 from",
                dir.display()
            ))
        })?
    };
    let mut tensors =
        checkpoint::load(&run, &path, checkpoint::Tensors::Weights, &Device::Cpu)?.tensors;
    tensors.remove("conv1.weight").ok_or_else(|| {
        ReportError::Invalid(format!("{}: has no tensor conv1.weight", path.display()))
    })
}

fn read_png(path: &Path) -> Result<png::Canvas, ReportError> {
    let image = image::open(path)
        .map_err(|e| ReportError::Invalid(format!("{}: {e}", path.display())))?
        .to_rgb8();
    Ok(png::Canvas {
        width: image.width(),
        height: image.height(),
        rgb: image.into_raw(),
    })
}
