//! `pipeline stream`: run the stream alone at full speed and report where the
//! time goes.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::timing::{TimingReport, peak_rss_bytes};
use super::{DataSource, EpochOptions, StreamError, StreamPosition, ViewMode, dump};
use crate::dataset::npy::NpyError;
use crate::progress::count;

#[derive(Clone, Debug)]
pub struct StreamRun {
    pub mode: ViewMode,
    pub crop: usize,
    pub batch_size: usize,
    /// Stop each epoch after this many batches (None = the whole epoch).
    pub batches: Option<usize>,
    /// The first epoch, and how many to run back to back in this process (as
    /// training does: buffers warmed by the first epoch are reused by the rest).
    pub epoch: u64,
    pub epochs: usize,
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
    pub epochs: usize,
    /// Images/s of each epoch: the first one also fills the shuffle and
    /// warms every recycled buffer.
    pub epoch_images_per_s: Vec<f64>,
    pub workers: usize,
    pub peak_rss_mb: Option<f64>,
    /// Summed over epochs.
    pub stages: TimingReport,
    /// For a dataset in an object store: each epoch's bytes fetched from it and
    /// read from `--cache` instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_per_epoch: Option<Vec<crate::store::Traffic>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamRunError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Dump(#[from] NpyError),
    #[error(
        "{dataset}: the {split} split holds {rows} images for rank {rank}, fewer than one full \
         batch of {batch_size} (training views drop a partial batch); lower --batch-size"
    )]
    NoBatch {
        dataset: String,
        split: &'static str,
        rank: usize,
        rows: usize,
        batch_size: usize,
    },
}

/// Pulls batches as fast as the pipeline delivers them (the consumer does no work).
pub fn run(source: &DataSource, run: &StreamRun) -> Result<StreamReport, StreamRunError> {
    let started = Instant::now();
    let (mut images, mut batches) = (0, 0);
    let mut epoch_images_per_s = Vec::new();
    let mut stages = TimingReport::default();
    let mut store_per_epoch = Vec::new();
    for epoch in run.epoch..run.epoch + run.epochs.max(1) as u64 {
        let traffic_before = crate::store::traffic();
        let options = EpochOptions::new(run.mode, run.crop, run.batch_size)
            .from_position(StreamPosition { epoch, batch: 0 })
            .for_rank(run.rank, run.world_size)
            .keyed(run.dump.is_some());
        let epoch_started = Instant::now();
        let mut stream = source.epoch(options)?;
        if stream.total_batches() == 0 {
            // An empty report would read as a stream that runs at 0 images/s.
            let plan = source.plan(&options);
            return Err(StreamRunError::NoBatch {
                dataset: source.dataset.display().to_string(),
                split: source.split.name(),
                rank: run.rank,
                rows: plan.row_groups.iter().map(|g| g.rows).sum(),
                batch_size: run.batch_size,
            });
        }
        let (mut epoch_images, mut epoch_batches) = (0, 0);
        while let Some(batch) = stream.next_batch() {
            let batch = batch?;
            if let Some(dir) = &run.dump
                && batches < run.dump_batches
            {
                dump::write_batch(dir, batches, &batch)?;
            }
            epoch_images += batch.len();
            epoch_batches += 1;
            batches += 1;
            if run.batches.is_some_and(|n| epoch_batches >= n) {
                break;
            }
        }
        images += epoch_images;
        epoch_images_per_s
            .push(epoch_images as f64 / epoch_started.elapsed().as_secs_f64().max(1e-9));
        stages += stream.timing();
        store_per_epoch.push(crate::store::traffic() - traffic_before);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(StreamReport {
        images,
        batches,
        seconds,
        images_per_s: images as f64 / seconds.max(1e-9),
        epochs: epoch_images_per_s.len(),
        epoch_images_per_s,
        workers: source.workers(),
        peak_rss_mb: peak_rss_bytes().map(|b| b as f64 / 1e6),
        stages,
        store_per_epoch: crate::store::is_url(&source.dataset).then_some(store_per_epoch),
    })
}

impl StreamReport {
    /// Human-readable lines; the caller prints the JSON line last.
    pub fn lines(&self) -> Vec<String> {
        let busy = |s: f64| {
            format!(
                "{s:7.2} s busy, {:5.1} % of wall",
                100.0 * s / self.seconds.max(1e-9)
            )
        };
        let mut lines = vec![
            format!(
                "{} in {} over {}, {:.2} s: {:.0} images/s ({})",
                count(self.images, "image", "images"),
                count(self.batches, "batch", "batches"),
                count(self.epochs, "epoch", "epochs"),
                self.seconds,
                self.images_per_s,
                count(self.workers, "augment worker", "augment workers")
            ),
            format!(
                "per epoch {} images/s",
                self.epoch_images_per_s
                    .iter()
                    .map(|r| format!("{r:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            format!("read      {}", busy(self.stages.read_busy_s)),
            format!("shuffle   {}", busy(self.stages.shuffle_busy_s)),
            format!(
                "augment   {} (summed over workers)",
                busy(self.stages.augment_busy_s)
            ),
            format!(
                "consumer  {:7.2} s waiting for batches",
                self.stages.consumer_stall_s
            ),
            format!(
                "peak RSS  {}",
                self.peak_rss_mb
                    .map_or("unknown".into(), |m| format!("{m:.0} MB"))
            ),
        ];
        if let Some(epochs) = &self.store_per_epoch {
            let per_epoch = epochs.iter().map(|t| {
                format!(
                    "{:.1} MB fetched, {:.1} MB from the cache",
                    t.fetched_bytes as f64 / 1e6,
                    t.cache_read_bytes as f64 / 1e6
                )
            });
            lines.push(format!(
                "store     {}",
                per_epoch.collect::<Vec<_>>().join("; ")
            ));
        }
        lines
    }
}
