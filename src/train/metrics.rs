//! `RUN/metrics.jsonl`: one JSON object per finished epoch, appended as the run goes.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{TrainError, error::io};
use crate::dataset::atomic;

/// One line of `metrics.jsonl`. Every field but the timings (`images_per_s`,
/// `data_stall_frac`, `train_s`, `val_s`) is bit-identical between an uninterrupted run
/// and an interrupted-then-resumed one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Finished epochs, 1-based (the stream's epoch index + 1).
    pub epoch: usize,
    /// Optimiser steps applied so far.
    pub step: u64,
    /// Mean cross-entropy over the epoch's batches (train mode: augmentation, dropout).
    pub train_loss: f64,
    /// Fraction of training images whose top prediction was wrong (train mode).
    pub train_top1_err: f64,
    /// Centre-crop validation errors (fractions in [0, 1]); null on epochs not validated.
    pub val_top1_err: Option<f64>,
    pub val_top5_err: Option<f64>,
    pub val_images: Option<usize>,
    /// The learning rate this epoch trained with.
    pub lr: f64,
    /// This validation is the best so far (`checkpoints/best.safetensors` holds it).
    pub best: bool,
    /// The schedule divided the learning rate after this epoch.
    pub lr_dropped: bool,
    /// Training images per second (the loop's wall time: data waits included).
    pub images_per_s: f64,
    /// Fraction of that wall time spent waiting for the data stream.
    pub data_stall_frac: f64,
    /// Seconds in the training loop this epoch, and in validation.
    pub train_s: f64,
    pub val_s: Option<f64>,
}

/// Appends one line (and flushes it: a crash loses at most the line being written).
pub fn append(path: &Path, line: &EpochMetrics) -> Result<(), TrainError> {
    let mut text = serde_json::to_string(line).expect("metrics serialise");
    text.push('\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io(path))?;
    file.write_all(text.as_bytes()).map_err(io(path))?;
    file.sync_data().map_err(io(path))
}

/// Reads every line.
pub fn read(path: &Path) -> Result<Vec<EpochMetrics>, TrainError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(path)(e)),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| TrainError::Metrics {
                path: path.display().to_string(),
                message: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

/// Keeps only the lines of the first `epochs` epochs (on resume: a crash between writing
/// an epoch's line and its checkpoint must not leave the line twice). Rewritten
/// atomically, bytes of the kept lines unchanged.
pub fn truncate_to(path: &Path, epochs: usize) -> Result<(), TrainError> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut kept = String::with_capacity(text.len());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let epoch = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("epoch").and_then(|e| e.as_u64()));
        if epoch.is_some_and(|e| e as usize <= epochs) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    if kept != text {
        atomic::write_file(path, kept.as_bytes()).map_err(io(path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(epoch: usize) -> EpochMetrics {
        EpochMetrics {
            epoch,
            step: 10 * epoch as u64,
            train_loss: 1.0 / epoch as f64,
            train_top1_err: 0.5,
            val_top1_err: Some(0.25),
            val_top5_err: Some(0.0),
            val_images: Some(100),
            lr: 0.01,
            best: true,
            lr_dropped: false,
            images_per_s: 100.0,
            data_stall_frac: 0.01,
            train_s: 1.0,
            val_s: Some(0.1),
        }
    }

    #[test]
    fn append_read_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        for e in 1..=3 {
            append(&path, &line(e)).unwrap();
        }
        assert_eq!(read(&path).unwrap(), [line(1), line(2), line(3)]);
        truncate_to(&path, 2).unwrap();
        assert_eq!(read(&path).unwrap(), [line(1), line(2)]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"val_top1_err\":0.25") && text.contains("\"data_stall_frac\""));
    }
}
