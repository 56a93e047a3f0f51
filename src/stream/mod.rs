//! The async staged pipeline that feeds training (tokio):
//!
//! ```text
//! source (row groups, read_ahead in flight) ─▶ shuffle (held groups) ─▶ augment (rayon pool) ─▶ consumer
//!            bounded: read_ahead                bounded: prefetch     bounded: prefetch
//! ```
//!
//! - Deterministic: the row-group order and shuffle draws derive from (seed,
//!   epoch, rank); each sample's augmentation from its position in the epoch. The
//!   batches are identical whatever the worker count.
//! - Mid-epoch resume: [`StreamPosition`] (epoch, batch) is all a checkpoint needs;
//!   reopening at it replays the shuffle without augmenting and yields exactly the
//!   batches an uninterrupted run would have.
//! - Distributed: row groups are dealt to ranks; every rank yields the same
//!   number of batches.
//! - Bounded memory, set by buffer sizes: rows are never copied, they stay in
//!   the shard mappings (page cache), of which about
//!   `(shuffle_buffer + read_ahead·rows_per_row_group + (prefetch + workers)·batch_size)·S²·3`
//!   bytes are mapped at once, plus `(prefetch + workers)·batch_size·3·C²·4`
//!   bytes of batches. Measured: 1.24 GB peak RSS at the paper's settings on
//!   one worker (bound: 0.98 GB mapped + 0.39 GB of batches).
//! - Shutdown: dropping the [`Stream`] closes the channels; every stage stops at
//!   its next send.

pub mod batch;
pub mod dump;
pub mod plan;
pub mod preview;
pub mod report;
pub mod shuffle;
pub mod source;
pub mod stages;
pub mod timing;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use batch::Batch;
use batch::BufferPool;
use plan::{EpochPlan, PURPOSE_SHUFFLE, PlanOptions, derive_seed, plan_epoch};
use shuffle::GroupShuffle;
use source::ShardIndex;
use stages::{AugmentContext, AugmentTask, ShuffleTask, SourceTask};
use timing::{StageTimes, TimingReport};

use crate::augment::{
    AugmentError, Augmenter, Geometry, MeanImage, MeanSubtraction, Pca, TrainViews,
};
use crate::dataset::manifest::ManifestError;
use crate::dataset::{MEAN_FILE, Manifest, Split, npy};
use crate::store::{Location, StoreError};

/// Which mean is subtracted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MeanMode {
    /// The paper: the per-pixel mean image, cropped and flipped with the image.
    #[default]
    Pixel,
    /// One mean per RGB channel.
    Channel,
}

/// `[stream]`: buffer sizes, threads, and the augmentation's randomness.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Rows the shuffle holds, as whole row groups (memory: rows × S²·3 bytes of
    /// mapped shard; 4096 ≈ 800 MB at S = 256).
    pub shuffle_buffer: usize,
    /// Row groups read concurrently ahead of the shuffle.
    pub read_ahead: usize,
    /// Augmentation threads (0 = every core).
    pub workers: usize,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
    /// σ of the PCA lighting coefficients αᵢ (paper: 0.1; 0 = no lighting).
    pub lighting_std: f32,
    /// "pixel" (paper) or "channel" mean subtraction.
    pub mean: MeanMode,
    /// Seed of the row-group order, the shuffle and every augmentation draw.
    pub seed: u64,
    /// true (paper §4.1): each training image is a random crop; false: the centre crop
    /// (the no-crops ablation). The draw is made either way, so the other draws stay put.
    pub random_crop: bool,
    /// true (paper §4.1): each training image is mirrored with probability 0.5; false:
    /// never mirrored.
    pub flip: bool,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            shuffle_buffer: 4096,
            read_ahead: 4,
            workers: 0,
            prefetch: 4,
            lighting_std: 0.1,
            mean: MeanMode::Pixel,
            seed: 0,
            random_crop: true,
            flip: true,
        }
    }
}

impl StreamConfig {
    /// Checks the values a recipe could get wrong, naming the offending key (before a
    /// run creates anything).
    pub fn validate(&self) -> Result<(), String> {
        if !(self.lighting_std.is_finite() && self.lighting_std >= 0.0) {
            return Err(format!(
                "stream.lighting_std must be a number >= 0 (0 = no lighting), got {}",
                self.lighting_std
            ));
        }
        Ok(())
    }
}

/// How images become network inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewMode {
    /// Random crop + mirror + lighting (paper §4.1).
    Train,
    /// The centre crop.
    Centre,
    /// Four corners + centre, and their mirrors: 10 views per image.
    TenCrop,
}

impl ViewMode {
    pub fn views(self) -> usize {
        if self == ViewMode::TenCrop { 10 } else { 1 }
    }
}

/// Where a stream is in its data: all a checkpoint needs to resume mid-epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    pub epoch: u64,
    /// Batches of this epoch already consumed.
    pub batch: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Npy(#[from] npy::NpyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{dataset}: the dataset has no {split} split")]
    NoSplit {
        dataset: String,
        split: &'static str,
    },
    #[error("{path}: {message}")]
    Shard { path: String, message: String },
    /// A row's pixels differ from the CRC-32 ingest recorded for them.
    #[error(transparent)]
    Corrupt(Box<crate::dataset::checksum::CorruptRow>),
    /// A row whose stored image does not decode to an S×S RGB image (a JPEG that
    /// matches its CRC but not the format: a bug in the writer of the shard).
    #[error("{path}: row {row} (row group {row_group}, key {key}): the image {source}")]
    Pixels {
        path: String,
        row: usize,
        row_group: usize,
        key: String,
        source: crate::dataset::encoding::PixelsError,
    },
    /// A label that names no class of the manifest (it would index past the
    /// network's outputs).
    #[error(transparent)]
    Label(Box<LabelError>),
    #[error("{dataset}: {split} shards hold {found} rows but dataset.json lists {expected}")]
    RowCount {
        dataset: String,
        split: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("augmentation setup: {0}")]
    Augment(#[from] AugmentError),
    /// A stage's worker panicked (a bug): the stream ends with this instead of aborting
    /// the process, so the trainer can keep its work.
    #[error(
        "the {stage} stage panicked while preparing batch {} of epoch {}: {message} (a bug in pipeline)",
        batch + 1,
        epoch + 1
    )]
    WorkerPanic {
        stage: &'static str,
        /// 0-based, like [`StreamPosition`].
        epoch: u64,
        batch: usize,
        message: String,
    },
    #[error("stream setup: {0}")]
    Setup(String),
    #[error("the stream stopped unexpectedly (a stage task ended early)")]
    Stopped,
}

/// A row whose label is outside `0..classes`.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path}: row {row} (row group {row_group}, key {key}) has label {label}, but dataset.json \
     lists {classes} classes, so a label must be at least 0 and below {classes}; the shard \
     and the manifest disagree, ingest the dataset again"
)]
pub struct LabelError {
    pub path: String,
    /// Row within the shard, from 0.
    pub row: usize,
    pub row_group: usize,
    pub key: String,
    pub label: i32,
    pub classes: usize,
}

/// A split opened for streaming: shards checked once, reused by every epoch.
pub struct DataSource {
    pub dataset: PathBuf,
    pub split: Split,
    pub manifest: Manifest,
    pub config: StreamConfig,
    index: Arc<ShardIndex>,
    mean: MeanSubtraction,
    pca: Pca,
    runtime: Arc<tokio::runtime::Runtime>,
    pool: Arc<rayon::ThreadPool>,
    images_pool: BufferPool<f32>,
    workers: usize,
}

/// What to stream in one epoch.
#[derive(Clone, Copy, Debug)]
pub struct EpochOptions {
    pub mode: ViewMode,
    pub crop: usize,
    pub batch_size: usize,
    pub position: StreamPosition,
    pub rank: usize,
    pub world_size: usize,
    /// Include the source keys in each batch.
    pub with_keys: bool,
}

impl EpochOptions {
    /// One process reading the whole split from its start, without keys: what every
    /// reader but the trainer's data-parallel ranks wants.
    pub fn new(mode: ViewMode, crop: usize, batch_size: usize) -> Self {
        Self {
            mode,
            crop,
            batch_size,
            position: StreamPosition::default(),
            rank: 0,
            world_size: 1,
            with_keys: false,
        }
    }

    /// Starting at `position` (a resumed epoch) instead of the split's start.
    pub fn from_position(self, position: StreamPosition) -> Self {
        Self { position, ..self }
    }

    /// Rank `rank`'s share of the split, of `world_size` data-parallel ranks.
    pub fn for_rank(self, rank: usize, world_size: usize) -> Self {
        Self {
            rank,
            world_size,
            ..self
        }
    }

    /// With the source keys in each batch (or not).
    pub fn keyed(self, with_keys: bool) -> Self {
        Self { with_keys, ..self }
    }
}

impl DataSource {
    /// Opens a split: reads `dataset.json` and `mean.npy`, checks every shard.
    /// `dataset` is a folder or an object store URL (see [`crate::store`]).
    pub fn open(dataset: &Path, split: Split, config: StreamConfig) -> Result<Self, StreamError> {
        let location = Location::parse(dataset).map_err(ManifestError::from)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("stream-io")
            .enable_all()
            .build()
            .map_err(|e| StreamError::Setup(format!("tokio runtime: {e}")))?;
        // One runtime for every read of an object store, so its client's pooled
        // connections stay alive between them.
        let manifest = runtime.block_on(Manifest::read(&location))?;
        let s = manifest.image_size;
        let mean = match config.mean {
            MeanMode::Pixel => {
                let shown = location.display(MEAN_FILE);
                let bytes =
                    runtime
                        .block_on(location.read_all(MEAN_FILE))
                        .map_err(|e| match e {
                            StoreError::Io { source, .. } => StreamError::Npy(npy::NpyError::Io {
                                path: shown.clone(),
                                source,
                            }),
                            e => StreamError::Store(e),
                        })?;
                let hwc = npy::parse_f32(&bytes, &shown, &[s as u64, s as u64, 3])?;
                MeanSubtraction::PerPixel(MeanImage::from_hwc(s, hwc)?)
            }
            MeanMode::Channel => {
                MeanSubtraction::PerChannel(manifest.stats.mean_rgb.map(|v| v as f32))
            }
        };
        let p = &manifest.stats.pca;
        let pca = Pca {
            eigenvalues: p.eigenvalues.map(|v| v as f32),
            eigenvectors: p.eigenvectors.map(|row| row.map(|v| v as f32)),
        };
        let index = runtime.block_on(ShardIndex::open(location, split, &manifest))?;
        let unchecked = index.shards_without_checksums();
        if unchecked > 0 {
            // Still readable: checksums came after format version 1's first shards.
            eprintln!(
                "note: {} {split}: {unchecked} of {} shards have no pixel checksums (written \
                 before ingest recorded them), so corruption in them cannot be detected; \
                 ingest again to add them",
                dataset.display(),
                index.shards.len()
            );
        }
        let workers = if config.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.workers
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .thread_name(|i| format!("augment-{i}"))
            // Each job catches its own panic and sends it on as a StreamError (stages.rs);
            // this keeps rayon's default, aborting the process, from ever applying.
            .panic_handler(|_| {})
            .build()
            .map_err(|e| StreamError::Setup(format!("augmentation threads: {e}")))?;
        Ok(Self {
            dataset: dataset.to_path_buf(),
            split,
            manifest,
            config,
            index: Arc::new(index),
            mean,
            pca,
            runtime: Arc::new(runtime),
            pool: Arc::new(pool),
            images_pool: BufferPool::new(),
            workers,
        })
    }

    pub fn image_size(&self) -> usize {
        self.manifest.image_size
    }

    /// Augmentation threads.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// What the augmentation subtracts (to add it back for display).
    pub fn mean(&self) -> &MeanSubtraction {
        &self.mean
    }

    /// The epoch's plan for these options (row groups, rows, batches).
    pub fn plan(&self, options: &EpochOptions) -> EpochPlan {
        plan_epoch(
            &self.index.row_groups(),
            PlanOptions {
                shuffle: options.mode == ViewMode::Train,
                seed: self.config.seed,
                epoch: options.position.epoch,
                rank: options.rank,
                world_size: options.world_size,
                batch_size: options.batch_size,
                drop_last: options.mode == ViewMode::Train,
            },
        )
    }

    /// Starts streaming one epoch from `options.position`.
    ///
    /// Fails on an empty batch or a rank outside the world size (the plan's
    /// arithmetic assumes neither), and on a crop that does not fit the images.
    pub fn epoch(&self, options: EpochOptions) -> Result<Stream, StreamError> {
        check_options(&options)?;
        let geometry = Geometry::new(self.image_size(), options.crop)?;
        let lighting =
            (options.mode == ViewMode::Train && self.config.lighting_std > 0.0).then_some(self.pca);
        let augmenter = Augmenter::new(
            geometry,
            self.mean.clone(),
            lighting,
            self.config.lighting_std,
        )?
        .with_train_views(TrainViews {
            random_crop: self.config.random_crop,
            flip: self.config.flip,
        });
        let plan = self.plan(&options);
        let times = Arc::new(StageTimes::default());
        let prefetch = self.config.prefetch.max(1);
        let (groups_tx, groups_rx) = mpsc::channel(self.config.read_ahead.max(1));
        let (plans_tx, plans_rx) = mpsc::channel(prefetch);
        let (batches_tx, batches_rx) = mpsc::channel(prefetch);
        // The shuffle holds whole row groups: as many as `shuffle_buffer` rows fill.
        let group_rows = plan
            .row_groups
            .iter()
            .map(|g| g.rows)
            .max()
            .unwrap_or(1)
            .max(1);
        let shuffle_groups = match options.mode {
            ViewMode::Train if self.config.shuffle_buffer > 1 => {
                self.config.shuffle_buffer.div_ceil(group_rows)
            }
            _ => 0,
        };
        let shuffle_seed = derive_seed(
            self.config.seed,
            &[options.position.epoch, options.rank as u64, PURPOSE_SHUFFLE],
        );
        let source = SourceTask {
            index: self.index.clone(),
            row_groups: plan.row_groups.clone(),
            with_keys: options.with_keys,
            read_ahead: self.config.read_ahead,
            out: groups_tx,
            times: times.clone(),
        };
        let shuffle = ShuffleTask {
            input: groups_rx,
            shuffle: GroupShuffle::new(shuffle_groups, shuffle_seed),
            batch_size: options.batch_size,
            rows: plan.rows,
            start_batch: options.position.batch,
            out: plans_tx,
            times: times.clone(),
        };
        let augment = AugmentTask {
            input: plans_rx,
            context: Arc::new(AugmentContext {
                augmenter,
                index: self.index.clone(),
                mode: options.mode,
                seed: self.config.seed,
                epoch: options.position.epoch,
                rank: options.rank,
                batch_size: options.batch_size,
                pool: self.pool.clone(),
                images_pool: self.images_pool.clone(),
                times: times.clone(),
            }),
            out: batches_tx,
        };
        let tasks = vec![
            self.runtime.spawn(source.run()),
            self.runtime.spawn(shuffle.run()),
            self.runtime.spawn(augment.run()),
        ];
        Ok(Stream {
            batches: batches_rx,
            tasks,
            times,
            total_batches: plan.batches,
            position: options.position,
            _runtime: self.runtime.clone(),
        })
    }
}

/// The options that come from user input (flags, recipes), refused by name before
/// they reach [`plan_epoch`]'s asserts.
fn check_options(options: &EpochOptions) -> Result<(), StreamError> {
    if options.batch_size == 0 {
        return Err(StreamError::Setup(
            "the batch size must be at least 1".into(),
        ));
    }
    if options.rank >= options.world_size {
        return Err(StreamError::Setup(format!(
            "rank {} is outside a world of {} (ranks are 0 to world size - 1)",
            options.rank, options.world_size
        )));
    }
    Ok(())
}

/// One epoch's batches, in order, for a synchronous consumer (the trainer).
pub struct Stream {
    batches: mpsc::Receiver<oneshot::Receiver<Result<Batch, StreamError>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    times: Arc<StageTimes>,
    total_batches: usize,
    position: StreamPosition,
    _runtime: Arc<tokio::runtime::Runtime>,
}

impl Stream {
    /// Batches in the whole epoch (including any skipped by resuming).
    pub fn total_batches(&self) -> usize {
        self.total_batches
    }

    /// Where the next batch comes from: save this to resume.
    pub fn position(&self) -> StreamPosition {
        self.position
    }

    /// The next batch, waiting for it if the pipeline is behind (that wait is the
    /// consumer's stall, measured). `None` at the end of the epoch.
    pub fn next_batch(&mut self) -> Option<Result<Batch, StreamError>> {
        if self.position.batch >= self.total_batches {
            return None;
        }
        let waited = Instant::now();
        let result = match self.batches.blocking_recv() {
            Some(pending) => pending.blocking_recv().unwrap_or(Err(StreamError::Stopped)),
            None => Err(StreamError::Stopped),
        };
        StageTimes::add(&self.times.stall_ns, waited);
        if result.is_ok() {
            self.position.batch += 1;
        } else {
            self.position.batch = self.total_batches; // a failed stream ends
        }
        Some(result)
    }

    pub fn timing(&self) -> TimingReport {
        TimingReport::from(self.times.as_ref())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // Closing the receiver stops the stages at their next send; aborting also
        // stops any stage parked on a read.
        self.batches.close();
        for task in &self.tasks {
            task.abort();
        }
    }
}
