//! The ingest job: list → (per shard) read, decode, crop in parallel → write the
//! shard atomically → record progress; finally `mean.npy` and the manifest.
//!
//! Output is byte-identical whatever the worker count: rows keep their planned
//! order, and the statistics are exact integer sums.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;

use super::IngestConfig;
use super::decode::{self, DecodeError};
use super::layout::{self, LayoutKind, SourceImage, SourceTree};
use super::resize::CentreCropper;
use super::state::{IngestState, SplitProgress, StateError};
use super::stats::StatsAccumulator;
use crate::dataset::manifest::{FORMAT_VERSION, ManifestError};
use crate::dataset::writer::{ShardRow, WriteError, write_shard};
use crate::dataset::{MEAN_FILE, Manifest, PcaStats, SkippedImage, Split, SplitInfo, Stats, npy, shard_file_name};

/// What to ingest, where, and how.
#[derive(Clone, Debug)]
pub struct IngestOptions {
    pub source: PathBuf,
    pub out: PathBuf,
    /// S (the recipe's `data.image_size`).
    pub image_size: usize,
    pub config: IngestConfig,
    /// Decode threads; 0 = every core.
    pub workers: usize,
    /// `filename wnid` lines labelling a flat `val/`.
    pub val_labels: Option<PathBuf>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// The one-screen summary printed at the end.
#[derive(Clone, Debug)]
pub struct IngestSummary {
    pub out: PathBuf,
    pub layout: LayoutKind,
    pub classes: usize,
    pub train: SplitInfo,
    pub val: SplitInfo,
    pub skipped: Vec<SkippedImage>,
    /// Images decoded by this run (shards finished by an earlier run are not redone).
    pub images_this_run: usize,
    pub shards_resumed: usize,
    pub seconds: f64,
    pub workers: usize,
    pub stats: Stats,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Layout(#[from] layout::LayoutError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Npy(#[from] npy::NpyError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(
        "{out} holds an unfinished ingest made with other settings or another source listing; \
         remove it or choose another --out"
    )]
    FingerprintMismatch { out: String },
    #[error("{out} already holds a dataset not made by this ingest (no {state} folder); choose another --out")]
    ForeignDataset { out: String, state: &'static str },
    #[error("{source_dir}: no training images found")]
    NoTrainingImages { source_dir: String },
    #[error("cannot start {workers} decode threads: {message}")]
    Threads { workers: usize, message: String },
}

/// FNV-1a: a stable 64-bit hash (std's hasher may change between releases).
fn fnv1a(hash: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *hash ^= u64::from(b);
        *hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
}

/// Everything that determines the output bytes.
fn fingerprint(tree: &SourceTree, image_size: usize, config: &IngestConfig) -> String {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let settings = serde_json::to_string(config).expect("config serialises");
    fnv1a(&mut hash, format!("v{FORMAT_VERSION} s{image_size} {settings}").as_bytes());
    for (split, images) in [("train", &tree.train), ("val", &tree.val)] {
        fnv1a(&mut hash, split.as_bytes());
        for image in images {
            fnv1a(&mut hash, image.key.as_bytes());
            fnv1a(&mut hash, &image.label.to_le_bytes());
        }
    }
    format!("{hash:016x}")
}

/// The order training rows are written in: a seeded permutation of the sorted
/// listing, so every shard mixes classes.
fn training_order(images: &[SourceImage], seed: u64) -> Vec<SourceImage> {
    let mut order = images.to_vec();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    order
}

/// Reads, decodes and centre-crops one image.
/// `scratch` is the decode buffer, kept between images.
fn load_image(
    root: &Path,
    image: &SourceImage,
    cropper: &mut CentreCropper,
    scratch: &mut Vec<u8>,
    max_pixels: u64,
) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(root.join(&image.key)).map_err(|e| format!("cannot read: {e}"))?;
    let decoded =
        decode::decode_reusing(&bytes, max_pixels, std::mem::take(scratch)).map_err(|e: DecodeError| e.to_string())?;
    let crop = cropper.crop(&decoded);
    *scratch = decoded.pixels;
    Ok(crop)
}

/// Everything the per-shard loop needs, shared by both splits.
struct Job<'a> {
    opts: &'a IngestOptions,
    tree: &'a SourceTree,
    pool: rayon::ThreadPool,
    bar: indicatif::ProgressBar,
}

/// Shards handed from the decoding thread to the writer thread. Zero: a
/// rendezvous, so at most two decoded shards are held at once (the one being
/// written and the one waiting), each S·S·3 bytes per row.
const WRITE_QUEUE: usize = 0;

/// One decoded shard on its way to the writer thread.
struct DecodedShard {
    index: usize,
    rows: Vec<ShardRow>,
    skipped: Vec<SkippedImage>,
    /// The shard's training sums (empty for `val`).
    stats: StatsAccumulator,
}

/// What one decode worker holds between images.
struct WorkerState {
    cropper: CentreCropper,
    /// The decode buffer, reused from image to image.
    scratch: Vec<u8>,
    results: Vec<(usize, Result<ShardRow, SkippedImage>)>,
    stats: StatsAccumulator,
}

impl Job<'_> {
    /// Decodes one shard's images in parallel, in order; failures become skips.
    /// With `with_stats`, each worker also adds its crops to its own
    /// accumulator while they are hot in cache; the sums are exact integers, so
    /// their merge does not depend on how the images were split among workers.
    fn decode_shard(&self, index: usize, images: &[SourceImage], with_stats: bool) -> DecodedShard {
        let (size, filter, max_pixels) = (self.opts.image_size, self.opts.config.filter, self.opts.config.max_pixels);
        let stats_size = if with_stats { size } else { 0 };
        let parts: Vec<WorkerState> = self.pool.install(|| {
            images
                .par_iter()
                .enumerate()
                .fold(
                    || WorkerState {
                        cropper: CentreCropper::new(size, filter),
                        scratch: Vec::new(),
                        results: Vec::new(),
                        stats: StatsAccumulator::new(stats_size),
                    },
                    |mut worker, (i, image)| {
                        let result = load_image(&self.tree.root, image, &mut worker.cropper, &mut worker.scratch, max_pixels);
                        self.bar.inc(1);
                        if let (true, Ok(pixels)) = (with_stats, &result) {
                            worker.stats.add(pixels);
                        }
                        let result = result
                            .map(|pixels| ShardRow { key: image.key.clone(), label: image.label, pixels })
                            .map_err(|reason| SkippedImage { path: image.key.clone(), reason });
                        worker.results.push((i, result));
                        worker
                    },
                )
                .collect()
        });
        let mut stats = StatsAccumulator::new(stats_size);
        let mut results = Vec::with_capacity(images.len());
        for part in parts {
            stats.merge(&part.stats);
            results.extend(part.results);
        }
        // Planned order, whatever order the workers' pieces came back in.
        results.sort_unstable_by_key(|(i, _)| *i);
        let mut rows = Vec::with_capacity(results.len());
        let mut skipped = Vec::new();
        for (_, result) in results {
            match result {
                Ok(row) => rows.push(row),
                Err(skip) => skipped.push(skip),
            }
        }
        DecodedShard { index, rows, skipped, stats }
    }

    /// Writes every unfinished shard of `split`; returns images decoded.
    ///
    /// The pool decodes shard k+1 while a writer thread writes shard k and
    /// records it (shard renamed into place, then `state.json` saved, in shard
    /// order), so the resume rules of `state.rs` are unchanged.
    fn run_split(
        &self,
        split: Split,
        images: &[SourceImage],
        state: &mut IngestState,
        sums: &mut StatsAccumulator,
    ) -> Result<usize, IngestError> {
        let out = &self.opts.out;
        let dir = out.join(split.name());
        std::fs::create_dir_all(&dir).map_err(|source| IngestError::Io { path: dir.display().to_string(), source })?;
        let chunks: Vec<&[SourceImage]> = images.chunks(self.opts.config.rows_per_shard).collect();
        let done = progress_of(state, split).shards_done;
        let (size, rows_per_group) = (self.opts.image_size, self.opts.config.rows_per_row_group);
        let (sender, receiver) = std::sync::mpsc::sync_channel::<DecodedShard>(WRITE_QUEUE);
        std::thread::scope(|scope| {
            let dir = &dir;
            let writer = scope.spawn(move || -> Result<(), IngestError> {
                for shard in receiver {
                    write_shard(&dir.join(shard_file_name(shard.index)), size, rows_per_group, &shard.rows)?;
                    let progress = progress_of(state, split);
                    progress.shards_done = shard.index + 1;
                    progress.rows_done += shard.rows.len();
                    progress.skipped.extend(shard.skipped);
                    if split == Split::Train {
                        sums.merge(&shard.stats);
                        state.save_with_sums(out, sums)?;
                    } else {
                        state.save(out)?;
                    }
                }
                Ok(())
            });
            let mut decoded = 0;
            for (index, chunk) in chunks.iter().enumerate().skip(done) {
                let shard = self.decode_shard(index, chunk, split == Split::Train);
                decoded += chunk.len();
                if sender.send(shard).is_err() {
                    break; // the writer stopped on an error, returned below
                }
            }
            drop(sender);
            match writer.join() {
                Ok(result) => result.map(|()| decoded),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

fn progress_of(state: &mut IngestState, split: Split) -> &mut SplitProgress {
    match split {
        Split::Train => &mut state.train,
        Split::Val => &mut state.val,
    }
}

/// Runs (or resumes) an ingest. Safe to kill at any point: re-running the same
/// command continues from the last finished shard and ends with the same files.
pub fn ingest(opts: &IngestOptions) -> Result<IngestSummary, IngestError> {
    let started = Instant::now();
    let tree = layout::discover(&opts.source, opts.val_labels.as_deref())?;
    if tree.train.is_empty() {
        return Err(IngestError::NoTrainingImages { source_dir: opts.source.display().to_string() });
    }
    let out = &opts.out;
    let print = |p: &Path| p.display().to_string();
    std::fs::create_dir_all(out).map_err(|source| IngestError::Io { path: print(out), source })?;

    let fingerprint = fingerprint(&tree, opts.image_size, &opts.config);
    let mut state = match IngestState::load(out)? {
        Some(state) if state.fingerprint == fingerprint => state,
        Some(_) => return Err(IngestError::FingerprintMismatch { out: print(out) }),
        None if out.join(crate::dataset::MANIFEST_FILE).exists() => {
            return Err(IngestError::ForeignDataset { out: print(out), state: super::state::STATE_DIR });
        }
        None => IngestState::new(fingerprint),
    };
    let shards_resumed = state.train.shards_done + state.val.shards_done;
    let mut sums = state.load_sums(out, opts.image_size)?;

    let workers = if opts.workers == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { opts.workers };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .build()
        .map_err(|e| IngestError::Threads { workers, message: e.to_string() })?;
    let per_shard = opts.config.rows_per_shard;
    let remaining = tree.train.len().saturating_sub(state.train.shards_done * per_shard)
        + tree.val.len().saturating_sub(state.val.shards_done * per_shard);
    let bar = if opts.progress { crate::progress::bar(remaining as u64, "img") } else { indicatif::ProgressBar::hidden() };
    bar.set_prefix("ingest");
    let job = Job { opts, tree: &tree, pool, bar };

    let train_order = training_order(&tree.train, opts.config.seed);
    let mut decoded = job.run_split(Split::Train, &train_order, &mut state, &mut sums)?;
    decoded += job.run_split(Split::Val, &tree.val, &mut state, &mut StatsAccumulator::new(0))?;
    job.bar.finish_and_clear();

    // Statistics, then the manifest last: its presence means the dataset is complete.
    let mean_path = out.join(MEAN_FILE);
    let s = opts.image_size as u64;
    npy::write(&mean_path, &[s, s, 3], &sums.mean_image())?;
    let stats = Stats { mean_image: MEAN_FILE.to_string(), mean_rgb: sums.mean_rgb(), pca: sums.pca() };
    let mut skipped = tree.skipped.clone();
    skipped.extend(state.train.skipped.iter().cloned());
    skipped.extend(state.val.skipped.iter().cloned());
    let split_info = |p: &SplitProgress| SplitInfo { rows: p.rows_done, shards: p.shards_done };
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        image_size: opts.image_size,
        classes: tree.classes.clone(),
        splits: [(Split::Train, split_info(&state.train)), (Split::Val, split_info(&state.val))].into_iter().collect(),
        skipped: skipped.clone(),
        stats: stats.clone(),
    };
    manifest.save(out)?;
    Ok(IngestSummary {
        out: out.clone(),
        layout: tree.layout,
        classes: tree.classes.len(),
        train: split_info(&state.train),
        val: split_info(&state.val),
        skipped,
        images_this_run: decoded,
        shards_resumed,
        seconds: started.elapsed().as_secs_f64(),
        workers,
        stats,
    })
}

impl IngestSummary {
    /// The one-screen summary.
    pub fn lines(&self) -> Vec<String> {
        let PcaStats { eigenvalues: ev, .. } = &self.stats.pca;
        let mut lines = vec![
            format!("dataset     {}", self.out.display()),
            format!("layout      {}", self.layout),
            format!("classes     {}", self.classes),
            format!("train       {} images in {} shards", self.train.rows, self.train.shards),
            format!("val         {} images in {} shards", self.val.rows, self.val.shards),
            format!(
                "this run    {} images in {:.1} s ({:.0} images/s, {} workers{})",
                self.images_this_run,
                self.seconds,
                self.images_this_run as f64 / self.seconds.max(1e-9),
                self.workers,
                if self.shards_resumed > 0 { format!(", {} shards already done", self.shards_resumed) } else { String::new() }
            ),
            format!(
                "mean RGB    {:.2} {:.2} {:.2}",
                self.stats.mean_rgb[0], self.stats.mean_rgb[1], self.stats.mean_rgb[2]
            ),
            format!("PCA λ       {:.5} {:.5} {:.5} (pixels in [0,1])", ev[0], ev[1], ev[2]),
            format!("skipped     {}", self.skipped.len()),
        ];
        for skip in self.skipped.iter().take(10) {
            lines.push(format!("  {}: {}", skip.path, skip.reason));
        }
        if self.skipped.len() > 10 {
            lines.push(format!("  … and {} more (all listed in dataset.json)", self.skipped.len() - 10));
        }
        lines
    }
}
