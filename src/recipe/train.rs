//! The `[train]` section of a recipe: the optimiser, the learning-rate schedule, the
//! device, checkpointing. `TrainConfig::default()` is the paper (PAPER.md, §5); every
//! other value is a named departure from it.

use serde::{Deserialize, Serialize};

/// How the learning rate changes over the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// The paper: divide by `lr_drop_factor` when the validation top-1 error has not
    /// improved for `patience` epochs, at most `max_lr_drops` times.
    #[default]
    Plateau,
    /// Divide by `lr_drop_factor` at each epoch listed in `step_epochs`.
    Step,
}

/// The number format of the forward and backward passes (`[train] precision`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32 (the paper's setting, and what the exactness tests check).
    #[default]
    F32,
    /// Mixed precision: the step casts the f32 weights and the batch to bfloat16, so
    /// the forward, the backward and their activations are bf16 (cuDNN and cuBLAS on
    /// tensor cores), while the loss, the master weights, the momentum and the paper's
    /// update rule stay f32. bf16 keeps f32's exponent range, so no loss scaling.
    /// CUDA only: candle's CPU backend has no bf16 matmul.
    Bf16,
}

impl Precision {
    /// The dtype the network computes in.
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::Bf16 => candle_core::DType::BF16,
        }
    }
}

/// `[train]`: everything the loop needs besides the data and the network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// "cpu", "cuda" (GPU 0) or "cuda:N". CUDA needs a binary built with `--features cuda`.
    pub device: String,
    /// "f32" or "bf16" (forward/backward in bfloat16, f32 master weights and update).
    pub precision: Precision,
    /// Passes over the training set (paper: "roughly 90 cycles").
    pub epochs: usize,
    /// Images per SGD step (paper: 128). Training batches are always full (the last
    /// partial batch of an epoch is dropped).
    pub batch_size: usize,
    /// Initial learning rate ε, the same for every layer (paper: 0.01).
    pub lr: f64,
    /// Momentum of the paper's update `v ← m·v − wd·ε·w − ε·g` (paper: 0.9).
    pub momentum: f64,
    /// Weight decay wd of that update (paper: 0.0005).
    pub weight_decay: f64,
    /// Also decay the biases. The paper's rule is written for weights; cuda-convnet's
    /// AlexNet layer files decay weights only, so false is the default.
    pub decay_biases: bool,
    /// "plateau" (paper) or "step".
    pub schedule: ScheduleKind,
    /// The learning rate is divided by this at each drop (paper: 10).
    pub lr_drop_factor: f64,
    /// plateau: epochs without an improvement of the validation top-1 error before the
    /// learning rate drops. Not given by the paper (its 3 drops over ~90 epochs suggest
    /// a long wait); 5 is our choice.
    pub patience: usize,
    /// plateau: a validation top-1 error counts as an improvement only when it is lower
    /// than the best so far by more than this (a fraction: 0.001 = 0.1 points).
    pub min_delta: f64,
    /// plateau: at most this many drops (paper: "reduced three times").
    pub max_lr_drops: usize,
    /// step: epochs (1-based counts of finished epochs) after which the learning rate drops,
    /// e.g. [30, 60, 80]. Ignored by "plateau".
    pub step_epochs: Vec<usize>,
    /// Seed of the initial weights (drawn from ChaCha8(seed)) and of the dropout masks
    /// (ChaCha8(seed + 1)). The data order and augmentation use `stream.seed`.
    pub seed: u64,
    /// Validate (centre crop) every N epochs; the last epoch is always validated.
    pub eval_every: usize,
    /// Also checkpoint every N optimiser steps inside an epoch (0 = only at the end of
    /// each epoch, on Ctrl-C and on a requested stop).
    pub checkpoint_every_steps: u64,
    /// Step checkpoints kept in `RUN/checkpoints/` (older ones are deleted); the best
    /// (lowest validation top-1 error) is kept apart as `best.safetensors`.
    pub keep_last: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            device: "cuda".into(),
            precision: Precision::F32,
            epochs: 90,
            batch_size: 128,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 0.0005,
            decay_biases: false,
            schedule: ScheduleKind::Plateau,
            lr_drop_factor: 10.0,
            patience: 5,
            min_delta: 0.001,
            max_lr_drops: 3,
            step_epochs: vec![30, 60, 80],
            seed: 0,
            eval_every: 1,
            checkpoint_every_steps: 0,
            keep_last: 3,
        }
    }
}

impl TrainConfig {
    /// Checks the values a recipe could get wrong, naming the offending key.
    pub fn validate(&self) -> Result<(), String> {
        crate::device::parse_device_name(&self.device).map_err(|e| format!("train.device: {e}"))?;
        let positive = [
            ("train.epochs", self.epochs),
            ("train.batch_size", self.batch_size),
            ("train.eval_every", self.eval_every),
            ("train.keep_last", self.keep_last),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(format!("{key} must be at least 1"));
            }
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!(
                "train.lr must be a positive number, got {}",
                self.lr
            ));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(format!(
                "train.momentum must be in [0, 1), got {}",
                self.momentum
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(format!(
                "train.weight_decay must be >= 0, got {}",
                self.weight_decay
            ));
        }
        if !(self.lr_drop_factor.is_finite() && self.lr_drop_factor >= 1.0) {
            return Err(format!(
                "train.lr_drop_factor must be >= 1, got {}",
                self.lr_drop_factor
            ));
        }
        if !(self.min_delta.is_finite() && self.min_delta >= 0.0) {
            return Err(format!(
                "train.min_delta must be >= 0, got {}",
                self.min_delta
            ));
        }
        if self.schedule == ScheduleKind::Plateau && self.patience == 0 {
            return Err("train.patience must be at least 1 with schedule = \"plateau\"".into());
        }
        if self.step_epochs.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!(
                "train.step_epochs must be increasing, got {:?}",
                self.step_epochs
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_paper_and_keys_are_checked() {
        let cfg: TrainConfig = toml::from_str("lr = 0.02\nschedule = \"step\"").unwrap();
        assert_eq!(cfg.lr, 0.02);
        assert_eq!(cfg.schedule, ScheduleKind::Step);
        assert_eq!(
            (cfg.batch_size, cfg.momentum, cfg.weight_decay),
            (128, 0.9, 0.0005)
        );
        let err = toml::from_str::<TrainConfig>("learning_rate = 0.1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("learning_rate"), "{err}");
        let bad = TrainConfig {
            momentum: 1.0,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("train.momentum"));
        let bad = TrainConfig {
            device: "gpu".into(),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("train.device"));
        assert!(TrainConfig::default().validate().is_ok());
    }
}
