//! The comparison an experiment ends with: per recipe, the final validation errors with
//! their spread over seeds, and how fast training error reaches the threshold
//! (Figure 1's measure). `EXP/summary.json` is the data; `EXP/summary.md` the table.

use serde::{Deserialize, Serialize};

use crate::train::metrics::EpochMetrics;

/// One finished run, reduced to what the comparison needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub recipe: String,
    pub seed: u64,
    /// The run directory (as given under `--out`).
    pub run: String,
    pub epochs: usize,
    /// Validation errors of the last epoch (fractions; null without validation).
    pub val_top1_err: Option<f64>,
    pub val_top5_err: Option<f64>,
    /// Training error (train mode) of the last epoch.
    pub train_top1_err: f64,
    /// Epochs (fractional, see [`crossing`]) until training error first reached the
    /// threshold; null if it never did.
    pub epochs_to_threshold: Option<f64>,
    /// Seconds of training loop (validation excluded) until then.
    pub seconds_to_threshold: Option<f64>,
    /// Seconds of training loop over the whole run.
    pub train_s: f64,
}

/// Mean and spread of one measure over a recipe's seeds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub mean: f64,
    /// Sample standard deviation (n − 1); 0 for a single seed.
    pub std: f64,
    pub min: f64,
    pub max: f64,
    /// Seeds the measure exists for (a run that never reached the threshold has none).
    pub n: usize,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n as f64;
        let var = if n > 1 {
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        Some(Spread {
            mean,
            std: var.sqrt(),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            n,
        })
    }
}

/// One row of the comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecipeRow {
    pub recipe: String,
    pub seeds: usize,
    pub val_top1_err: Option<Spread>,
    pub val_top5_err: Option<Spread>,
    pub train_top1_err: Option<Spread>,
    pub epochs_to_threshold: Option<Spread>,
    pub seconds_to_threshold: Option<Spread>,
    /// Mean epochs to threshold of this recipe ÷ the first recipe's (the baseline):
    /// 6 would be the paper's tanh against ReLU.
    pub epochs_vs_baseline: Option<f64>,
    /// Val top-1 error minus the baseline's (mean over seeds; points of fraction).
    pub val_top1_vs_baseline: Option<f64>,
}

/// `EXP/summary.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExperimentSummary {
    /// The training-error threshold of "epochs to threshold" (a fraction).
    pub threshold: f64,
    /// The first recipe given: every ratio is against it.
    pub baseline: String,
    pub rows: Vec<RecipeRow>,
    pub runs: Vec<RunResult>,
}

/// The fractional epoch at which training error first reaches `threshold`, by linear
/// interpolation between the epoch before (epoch 0 being `chance`, the error of a
/// uniform guess) and the first epoch at or below it. Epoch-level metrics are coarse
/// when runs are short; interpolating keeps a ratio of two such numbers meaningful.
pub fn crossing(metrics: &[EpochMetrics], threshold: f64, chance: f64) -> Option<(f64, f64)> {
    let mut before = (0.0, chance, 0.0); // (epoch, error, seconds)
    let mut seconds = 0.0;
    for m in metrics {
        let at = (m.epoch as f64, m.train_top1_err, seconds + m.train_s);
        if m.train_top1_err <= threshold {
            let drop = before.1 - at.1;
            let part = if drop > 0.0 {
                ((before.1 - threshold) / drop).clamp(0.0, 1.0)
            } else {
                1.0
            };
            return Some((
                before.0 + part * (at.0 - before.0),
                before.2 + part * (at.2 - before.2),
            ));
        }
        seconds = at.2;
        before = at;
    }
    None
}

impl RunResult {
    pub fn from_metrics(
        recipe: &str,
        seed: u64,
        run: String,
        metrics: &[EpochMetrics],
        threshold: f64,
        chance: f64,
    ) -> Option<RunResult> {
        let last = metrics.last()?;
        let cross = crossing(metrics, threshold, chance);
        Some(RunResult {
            recipe: recipe.to_string(),
            seed,
            run,
            epochs: last.epoch,
            val_top1_err: last.val_top1_err,
            val_top5_err: last.val_top5_err,
            train_top1_err: last.train_top1_err,
            epochs_to_threshold: cross.map(|c| c.0),
            seconds_to_threshold: cross.map(|c| c.1),
            train_s: metrics.iter().map(|m| m.train_s).sum(),
        })
    }
}

impl ExperimentSummary {
    /// Rows in the order the recipes were given (`order`), the first being the baseline.
    pub fn new(threshold: f64, order: &[String], runs: Vec<RunResult>) -> ExperimentSummary {
        let spread = |name: &str, f: &dyn Fn(&RunResult) -> Option<f64>| {
            let values: Vec<f64> = runs
                .iter()
                .filter(|r| r.recipe == name)
                .filter_map(f)
                .collect();
            Spread::of(&values)
        };
        let mut rows: Vec<RecipeRow> = order
            .iter()
            .map(|name| RecipeRow {
                recipe: name.clone(),
                seeds: runs.iter().filter(|r| &r.recipe == name).count(),
                val_top1_err: spread(name, &|r| r.val_top1_err),
                val_top5_err: spread(name, &|r| r.val_top5_err),
                train_top1_err: spread(name, &|r| Some(r.train_top1_err)),
                epochs_to_threshold: spread(name, &|r| r.epochs_to_threshold),
                seconds_to_threshold: spread(name, &|r| r.seconds_to_threshold),
                epochs_vs_baseline: None,
                val_top1_vs_baseline: None,
            })
            .collect();
        if let Some(base) = rows.first().cloned() {
            for row in &mut rows {
                row.epochs_vs_baseline = match (&row.epochs_to_threshold, &base.epochs_to_threshold)
                {
                    (Some(r), Some(b)) if b.mean > 0.0 => Some(r.mean / b.mean),
                    _ => None,
                };
                row.val_top1_vs_baseline = match (&row.val_top1_err, &base.val_top1_err) {
                    (Some(r), Some(b)) => Some(r.mean - b.mean),
                    _ => None,
                };
            }
        }
        ExperimentSummary {
            threshold,
            baseline: order.first().cloned().unwrap_or_default(),
            rows,
            runs,
        }
    }

    /// The comparison as a Markdown table (also what the command prints).
    pub fn table(&self) -> String {
        let pct = |s: &Option<Spread>| match s {
            Some(s) if s.n > 1 => format!("{:.1} ± {:.1}", 100.0 * s.mean, 100.0 * s.std),
            Some(s) => format!("{:.1}", 100.0 * s.mean),
            None => "–".into(),
        };
        let num = |s: &Option<Spread>, digits: usize| match s {
            Some(s) if s.n > 1 => format!("{:.digits$} ± {:.digits$}", s.mean, s.std),
            Some(s) => format!("{:.digits$}", s.mean),
            None => "never".into(),
        };
        let mut out = format!(
            "| recipe | seeds | val top-1 err % | val top-5 err % | Δ top-1 vs {} (points) | final train err % | epochs to {:.0} % train err | × {}'s epochs | train seconds to {:.0} % |\n\
             |---|---|---|---|---|---|---|---|---|\n",
            self.baseline,
            100.0 * self.threshold,
            self.baseline,
            100.0 * self.threshold
        );
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.recipe,
                r.seeds,
                pct(&r.val_top1_err),
                pct(&r.val_top5_err),
                r.val_top1_vs_baseline
                    .map_or("–".into(), |d| format!("{:+.1}", 100.0 * d)),
                pct(&r.train_top1_err),
                num(&r.epochs_to_threshold, 2),
                r.epochs_vs_baseline
                    .map_or("–".into(), |x| format!("{x:.2}")),
                num(&r.seconds_to_threshold, 0),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(epoch: usize, err: f64) -> EpochMetrics {
        EpochMetrics {
            epoch,
            step: epoch as u64 * 10,
            train_loss: 1.0,
            train_top1_err: err,
            val_top1_err: Some(err),
            val_top5_err: Some(err / 2.0),
            val_images: Some(100),
            lr: 0.01,
            best: false,
            lr_dropped: false,
            images_per_s: 100.0,
            data_stall_frac: 0.0,
            train_s: 10.0,
            val_s: Some(1.0),
        }
    }

    #[test]
    fn crossing_interpolates_between_the_epochs_around_the_threshold() {
        let m = [epoch(1, 0.7), epoch(2, 0.5), epoch(3, 0.3)];
        // 0.5 → 0.3 crosses 0.4 half way through epoch 3.
        let (e, s) = crossing(&m, 0.4, 0.9).unwrap();
        assert!(
            (e - 2.5).abs() < 1e-12 && (s - 25.0).abs() < 1e-12,
            "{e} {s}"
        );
        // From chance (0.9 at epoch 0) to 0.7: 0.8 is half way through epoch 1.
        let (e, _) = crossing(&m, 0.8, 0.9).unwrap();
        assert!((e - 0.5).abs() < 1e-12, "{e}");
        assert_eq!(crossing(&m, 0.1, 0.9), None);
    }

    #[test]
    fn rows_spread_over_seeds_and_compare_with_the_first_recipe() {
        let run = |recipe: &str, seed, errs: &[f64]| {
            let m: Vec<_> = errs
                .iter()
                .enumerate()
                .map(|(i, &e)| epoch(i + 1, e))
                .collect();
            RunResult::from_metrics(recipe, seed, String::new(), &m, 0.5, 0.9).unwrap()
        };
        let runs = vec![
            run("relu", 0, &[0.6, 0.5]),
            run("relu", 1, &[0.6, 0.4]),
            run("tanh", 0, &[0.8, 0.7, 0.6, 0.5]),
        ];
        let s = ExperimentSummary::new(0.5, &["relu".into(), "tanh".into()], runs);
        let relu = &s.rows[0];
        let val = relu.val_top1_err.as_ref().unwrap();
        assert!((val.mean - 0.45).abs() < 1e-12 && (val.std - 0.05f64.hypot(0.05)).abs() < 1e-9);
        // relu: 2.0 and 1.0 + 0.1/0.2 = 1.5 → mean 1.75; tanh: 4.0.
        let e = relu.epochs_to_threshold.as_ref().unwrap();
        assert!((e.mean - 1.75).abs() < 1e-12, "{e:?}");
        let x = s.rows[1].epochs_vs_baseline.unwrap();
        assert!((x - 4.0 / 1.75).abs() < 1e-12, "{x}");
        assert!(s.table().contains("| tanh | 1 |"), "{}", s.table());
    }
}
