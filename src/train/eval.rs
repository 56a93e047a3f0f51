//! Top-1 / top-5 error on the validation split: the centre crop (every epoch of
//! training) or the paper's ten-crop (§4.1: four corners + centre and their mirrors,
//! the ten softmax outputs averaged), and `pipeline eval` on a finished run.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor};
use indicatif::ProgressBar;
use serde::Serialize;

use super::confusion::ConfusionMatrix;
use super::schedule::ValCounts;
use super::{TrainError, error::candle};
use crate::dataset::{MANIFEST_FILE, Manifest, Split};
use crate::model::AlexNet;
use crate::run::{RunDir, TrainedRun, WhichCheckpoint};
use crate::stream::{DataSource, EpochOptions, StreamError, ViewMode};

/// Runs the model over the whole split of `source` in eval mode (no dropout), read as
/// `views` says (centre or ten-crop; its `batch_size` counts images, so a ten-crop batch
/// has ten times as many rows).
/// Returns `None` when `interrupt` was raised before the end.
pub fn evaluate(
    model: &AlexNet,
    source: &DataSource,
    views: EpochOptions,
    device: &Device,
    bar: &ProgressBar,
    interrupt: Option<&AtomicBool>,
) -> Result<Option<ValCounts>, TrainError> {
    evaluate_counting(model, source, views, device, bar, interrupt, None)
}

/// [`evaluate`], also adding every prediction to `confusion`.
pub fn evaluate_counting(
    model: &AlexNet,
    source: &DataSource,
    views: EpochOptions,
    device: &Device,
    bar: &ProgressBar,
    interrupt: Option<&AtomicBool>,
    mut confusion: Option<&mut ConfusionMatrix>,
) -> Result<Option<ValCounts>, TrainError> {
    let mut stream = source.epoch(views)?;
    let mut counts = ValCounts::default();
    while let Some(batch) = stream.next_batch() {
        let batch = batch?;
        let x = Tensor::from_slice(&batch.images, batch.shape().as_slice(), device)
            .map_err(candle("validation input"))?;
        let logits = model
            .forward(&x, None)
            .map_err(candle("validation forward"))?; // (n·views, classes)
        let scores = if batch.views > 1 {
            // Average the softmax of each image's views (rows i·views .. i·views+views).
            let classes = logits.dim(1).map_err(candle("validation logits"))?;
            candle_nn::ops::softmax_last_dim(&logits)
                .and_then(|p| p.reshape((batch.len(), batch.views, classes)))
                .and_then(|p| p.mean(1))
                .map_err(candle("ten-crop averaging"))?
        } else {
            logits
        };
        let scores = scores
            .to_vec2::<f32>()
            .map_err(candle("validation scores"))?; // sync point
        let (top1, top5) = count_errors(&scores, &batch.labels);
        if let Some(confusion) = confusion.as_deref_mut() {
            confusion.add(&scores, &batch.labels);
        }
        counts.top1_errors += top1;
        counts.top5_errors += top5;
        counts.images += batch.len();
        bar.inc(batch.len() as u64);
        if interrupt.is_some_and(|f| f.load(Ordering::SeqCst)) {
            return Ok(None);
        }
    }
    Ok(Some(counts))
}

/// (top-1 errors, top-5 errors) of `scores` (one row per image) against `labels`.
/// A class outranks the true one if its score is higher, or equal with a lower index
/// (the order a stable descending sort gives), so ties cannot flatter the model.
pub fn count_errors(scores: &[Vec<f32>], labels: &[i64]) -> (usize, usize) {
    let mut errors = (0, 0);
    for (row, &label) in scores.iter().zip(labels) {
        let label = label as usize;
        let own = row[label];
        let rank = row
            .iter()
            .enumerate()
            .filter(|&(c, &s)| s > own || (s == own && c < label) || s.is_nan())
            .count();
        errors.0 += usize::from(rank >= 1);
        errors.1 += usize::from(rank >= 5);
    }
    errors
}

/// `pipeline eval`.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub run: PathBuf,
    /// None: the dataset the run was trained on (`RUN/run.json`).
    pub dataset: Option<PathBuf>,
    pub ten_crop: bool,
    pub checkpoint: WhichCheckpoint,
    /// None: the run's `train.device`.
    pub device: Option<String>,
    /// Images per batch (None: the run's `train.batch_size`, divided by 10 for ten-crop).
    pub batch_size: Option<usize>,
    pub progress: bool,
}

/// What `pipeline eval` found; the last line it prints is this as JSON.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub run: PathBuf,
    pub checkpoint: PathBuf,
    /// Finished epochs and steps of that checkpoint.
    pub epoch: u64,
    pub step: u64,
    pub dataset: PathBuf,
    /// "centre" or "ten-crop".
    pub views: &'static str,
    pub images: usize,
    pub top1_err: f64,
    pub top5_err: f64,
    pub seconds: f64,
    /// The confusion matrix of these predictions (JSON) and its heat map (PNG), in the run.
    pub confusion_json: PathBuf,
    pub confusion_png: PathBuf,
}

impl EvalReport {
    pub fn lines(&self) -> Vec<String> {
        vec![
            format!(
                "{} ({}, epoch {}, step {})",
                self.run.display(),
                self.checkpoint
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("?"),
                self.epoch,
                self.step
            ),
            format!(
                "dataset  {} (val, {}, {} view{})",
                self.dataset.display(),
                crate::progress::count(self.images, "image", "images"),
                self.views,
                if self.views == "centre" { "" } else { "s" }
            ),
            format!(
                "top-1 error  {:6.2} %   (accuracy {:.2} %)",
                100.0 * self.top1_err,
                100.0 * (1.0 - self.top1_err)
            ),
            format!("top-5 error  {:6.2} %", 100.0 * self.top5_err),
            format!(
                "time         {:.1} s ({:.0} images/s)",
                self.seconds,
                self.images as f64 / self.seconds.max(1e-9)
            ),
            format!(
                "confusion    {} and {}",
                self.confusion_json.display(),
                self.confusion_png.display()
            ),
        ]
    }
}

/// Evaluates a run's checkpoint on the validation split of a dataset.
pub fn run_eval(options: &EvalOptions) -> Result<EvalReport, TrainError> {
    let dir = RunDir::open(&options.run)?;
    let dataset = match &options.dataset {
        Some(d) => d.clone(),
        None => dir.load_info()?.dataset,
    };
    // An empty split would "evaluate" to 0 % error over 0 images.
    if !Manifest::load(&dataset)
        .map_err(StreamError::from)?
        .has_rows(Split::Val)
    {
        return Err(TrainError::Dataset {
            dataset: dataset.display().to_string(),
            message: format!(
                "has no val split (no validation images in {}): eval measures the val split, \
                 so there is nothing to evaluate; pass --dataset with a dataset ingested from a \
                 source that has a val/ folder",
                dataset.join(MANIFEST_FILE).display()
            ),
        });
    }
    let recipe = dir.load_recipe()?;
    let device = crate::device::open(options.device.as_deref().unwrap_or(&recipe.train.device))?;
    let run = TrainedRun::open(&options.run, options.checkpoint, &device)?;
    let source = run.open_dataset(Some(&dataset), Split::Val)?;

    let mode = if options.ten_crop {
        ViewMode::TenCrop
    } else {
        ViewMode::Centre
    };
    let batch_size = options
        .batch_size
        .unwrap_or((recipe.train.batch_size / mode.views()).max(1));
    let images = source.manifest.split(Split::Val).map_or(0, |s| s.rows);
    let bar = if options.progress {
        crate::progress::bar(images as u64, "img")
    } else {
        ProgressBar::hidden()
    };
    bar.set_prefix(if options.ten_crop {
        "eval ten-crop"
    } else {
        "eval centre"
    });
    let started = Instant::now();
    let mut confusion = ConfusionMatrix::new(source.manifest.classes.clone());
    let counts = evaluate_counting(
        run.model(),
        &source,
        EpochOptions::new(mode, run.input_size(), batch_size),
        &device,
        &bar,
        None,
        Some(&mut confusion),
    )?
    .expect("no interrupt flag");
    bar.finish_and_clear();
    let trained = run.card().trained;
    let seconds = started.elapsed().as_secs_f64();
    let views = if options.ten_crop {
        "ten-crop"
    } else {
        "centre"
    };
    let which = match options.checkpoint {
        WhichCheckpoint::Best => "best",
        WhichCheckpoint::Last => "last",
    };
    let stem = dir.path.join(format!("confusion-{which}-{views}"));
    let (confusion_json, confusion_png) = (stem.with_extension("json"), stem.with_extension("png"));
    confusion.write_json(&confusion_json, run.checkpoint(), views)?;
    confusion.write_png(
        &confusion_png,
        &format!(
            "{} ({which}, {views}): top-1 error {:.2} %; rows true class, columns predicted",
            dir.path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("run"),
            100.0 * counts.top1_err()
        ),
    )?;
    Ok(EvalReport {
        run: dir.path.clone(),
        checkpoint: run.checkpoint().to_path_buf(),
        epoch: trained.epochs,
        step: trained.steps,
        dataset,
        views,
        images: counts.images,
        top1_err: counts.top1_err(),
        top5_err: counts.top5_err(),
        seconds,
        confusion_json,
        confusion_png,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_counting_with_ties() {
        let scores = vec![
            vec![0.9, 0.05, 0.05, 0.0, 0.0, 0.0, 0.0], // label 0: right
            vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],   // label 2: rank 4 → top-5 right
            vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],   // label 1: rank 5 → both wrong
            vec![0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0],   // label 1, tied with class 0: wrong
        ];
        assert_eq!(count_errors(&scores, &[0, 2, 1, 1]), (3, 1));
    }
}
