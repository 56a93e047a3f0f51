//! `pipeline stream`: run the stream alone at full speed and report where the
//! time goes.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::timing::{TimingReport, peak_rss_bytes};
use super::{DataSource, EpochOptions, StreamError, StreamPosition, ViewMode, dump};
use crate::dataset::npy::NpyError;

#[derive(Clone, Debug)]
pub struct StreamRun {
    pub mode: ViewMode,
    pub crop: usize,
    pub batch_size: usize,
    /// Stop after this many batches (None = the whole epoch).
    pub batches: Option<usize>,
    pub epoch: u64,
    pub rank: usize,
    pub world_size: usize,
    /// Write the first `dump_batches` batches here.
    pub dump: Option<PathBuf>,
    pub dump_batches: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct StreamReport {
    pub images: usize,
    pub batches: usize,
    pub seconds: f64,
    pub images_per_s: f64,
    pub workers: usize,
    pub peak_rss_mb: Option<f64>,
    pub stages: TimingReport,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamRunError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Dump(#[from] NpyError),
}

/// Pulls batches as fast as the pipeline delivers them (the consumer does no work).
pub fn run(source: &DataSource, run: &StreamRun) -> Result<StreamReport, StreamRunError> {
    let options = EpochOptions {
        mode: run.mode,
        crop: run.crop,
        batch_size: run.batch_size,
        position: StreamPosition { epoch: run.epoch, batch: 0 },
        rank: run.rank,
        world_size: run.world_size,
        with_keys: run.dump.is_some(),
    };
    let started = Instant::now();
    let mut stream = source.epoch(options)?;
    let (mut images, mut batches) = (0, 0);
    while let Some(batch) = stream.next_batch() {
        let batch = batch?;
        if let Some(dir) = &run.dump {
            if batches < run.dump_batches {
                dump::write_batch(dir, batches, &batch)?;
            }
        }
        images += batch.len();
        batches += 1;
        if run.batches.is_some_and(|n| batches >= n) {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let stages = stream.timing();
    drop(stream);
    Ok(StreamReport {
        images,
        batches,
        seconds,
        images_per_s: images as f64 / seconds.max(1e-9),
        workers: source.workers(),
        peak_rss_mb: peak_rss_bytes().map(|b| b as f64 / 1e6),
        stages,
    })
}

impl StreamReport {
    /// Human-readable lines; the caller prints the JSON line last.
    pub fn lines(&self) -> Vec<String> {
        let busy = |s: f64| format!("{s:7.2} s busy, {:5.1} % of wall", 100.0 * s / self.seconds.max(1e-9));
        vec![
            format!("{} images in {} batches, {:.2} s: {:.0} images/s ({} augment workers)", self.images, self.batches, self.seconds, self.images_per_s, self.workers),
            format!("read      {}", busy(self.stages.read_busy_s)),
            format!("shuffle   {}", busy(self.stages.shuffle_busy_s)),
            format!("augment   {} (summed over workers)", busy(self.stages.augment_busy_s)),
            format!("consumer  {:7.2} s waiting for batches", self.stages.consumer_stall_s),
            format!("peak RSS  {}", self.peak_rss_mb.map_or("unknown".into(), |m| format!("{m:.0} MB"))),
        ]
    }
}
