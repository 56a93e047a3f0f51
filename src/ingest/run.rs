//! The ingest job: list → (per shard) read, decode, crop in parallel → write the
//! shard atomically → record progress; finally `mean.npy` and the manifest.
//!
//! Output is byte-identical whatever the worker count: rows keep their planned
//! order, and the statistics are exact integer sums.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;

use super::IngestConfig;
use super::decode::{self, DecodeError};
use super::layout::{self, LayoutKind, SourceImage, SourceTree};
use super::parts::PartsError;
use super::publish::Publisher;
use super::resize::CentreCropper;
use super::state::{IngestState, SplitProgress, StateError};
use super::stats::StatsAccumulator;
use crate::buffer_pool::BufferPool;
use crate::dataset::manifest::{FORMAT_VERSION, ManifestError};
use crate::dataset::writer::{ShardWriter, WriteError};
use crate::dataset::{
    Encoding, MEAN_FILE, Manifest, PcaStats, SkippedImage, Split, SplitInfo, Stats, npy,
    shard_file_name,
};
use crate::fnv::Fnv1a;

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
    /// Set by [`ingest`] itself when `out` is an object store URL: `out` is then
    /// the local staging folder, and each finished file goes on to the store.
    pub publish: Option<Publisher>,
}

impl IngestOptions {
    /// `--out` as the user named it (the URL, for an ingest into an object store).
    pub fn out_name(&self) -> String {
        match &self.publish {
            Some(publisher) => publisher.url().to_string(),
            None => self.out.display().to_string(),
        }
    }
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
    /// Wnids of the classes no training row was written for.
    pub empty_train_classes: Vec<String>,
    /// Wnids of the classes no validation row was written for (when there is a val split).
    pub empty_val_classes: Vec<String>,
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
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{out} holds an unfinished ingest made with other settings or another source listing{detail}; \
         re-run the command that started it to finish it, or remove {out} or choose another \
         --out to start over"
    )]
    FingerprintMismatch { out: String, detail: String },
    #[error(
        "{out} holds a complete dataset made with other settings or another source listing{detail}; \
         to ingest with these settings, remove {out} or choose another --out"
    )]
    CompleteDatasetMismatch { out: String, detail: String },
    #[error(
        "{out} already holds a dataset not made by this ingest (no {state} folder); choose another --out"
    )]
    ForeignDataset { out: String, state: &'static str },
    #[error(
        "--out {out} is inside the source folder {source_dir}: the next ingest of \
         {source_dir} would read the shards as images; choose an --out outside it"
    )]
    OutInsideSource { out: String, source_dir: String },
    #[error(
        "--out {out} is a folder that is neither empty nor a dataset (it holds {entry}); \
         choose a new or empty folder"
    )]
    OutNotEmpty { out: String, entry: String },
    /// A split (train, or a val folder that exists) with no image that could be used.
    #[error("{0}")]
    NoUsableImages(String),
    #[error(transparent)]
    Parts(#[from] PartsError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot start {workers} decode threads: {message}")]
    Threads { workers: usize, message: String },
}

/// The encoding of `config` in words, as the ingest state records it.
pub(super) fn encoding_label(config: &IngestConfig) -> String {
    match config.encoding {
        Encoding::Raw => "raw".to_string(),
        Encoding::Jpeg => format!("jpeg at quality {}", config.quality),
    }
}

/// Everything that determines the output bytes.
fn fingerprint(tree: &SourceTree, image_size: usize, config: &IngestConfig) -> String {
    let mut hash = Fnv1a::default();
    let settings = serde_json::to_string(config).expect("config serialises");
    hash.update(format!("v{FORMAT_VERSION} s{image_size} {settings}").as_bytes());
    for (split, images) in [("train", &tree.train), ("val", &tree.val)] {
        hash.update(split.as_bytes());
        for image in images {
            hash.update(image.key.as_bytes());
            hash.update(&image.label.to_le_bytes());
        }
    }
    hash.hex()
}

/// The order training rows are written in: a seeded permutation of the sorted
/// listing, so every shard mixes classes.
fn training_order(images: &[SourceImage], seed: u64) -> Vec<SourceImage> {
    let mut order = images.to_vec();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    order
}

/// Reads, decodes and centre-crops one image into `out` (its row's slot).
/// The worker's file and decode buffers are reused from image to image.
fn load_image(
    root: &Path,
    image: &SourceImage,
    worker: &mut WorkerState,
    max_pixels: u64,
    out: &mut [u8],
) -> Result<(), String> {
    let cannot_read = |e: std::io::Error| format!("cannot read: {e}");
    let mut file = std::fs::File::open(root.join(&image.path)).map_err(cannot_read)?;
    worker.file.clear();
    std::io::Read::read_to_end(&mut file, &mut worker.file).map_err(cannot_read)?;
    let decoded = decode::decode_reusing(
        &worker.file,
        max_pixels,
        std::mem::take(&mut worker.scratch),
    )
    .map_err(|e: DecodeError| e.to_string())?;
    worker.cropper.crop_into(&decoded, out);
    worker.scratch = decoded.pixels;
    Ok(())
}

/// Everything the per-shard loop needs, shared by both splits.
struct Job<'a> {
    opts: &'a IngestOptions,
    tree: &'a SourceTree,
    pool: rayon::ThreadPool,
    bar: indicatif::ProgressBar,
    /// Pixel buffers of decode units, recycled once their row groups are written.
    buffers: BufferPool<u8>,
    /// One per decode thread, indexed by rayon's thread index.
    workers: Vec<std::sync::Mutex<WorkerState>>,
}

/// Decoded units queued between the decode pool and the writer thread. With the
/// unit being decoded and the one being written, at most `WRITE_QUEUE + 2`
/// units' pixels are held at once: memory does not grow with shard or dataset size.
const WRITE_QUEUE: usize = 2;

/// Images each decode thread gets per unit at least: at a unit's end a thread
/// waits about half an image for the slowest, ~3 % of a 16-image share, while
/// a unit's buffer stays small (16 threads: 256 images, 50 MB at S = 256).
const IMAGES_PER_WORKER: usize = 16;

/// One row group, decoded: rows in planned order, failed images left out.
struct DecodedGroup {
    keys: Vec<String>,
    labels: Vec<i32>,
    /// `labels.len()` rows of S·S·3 bytes, a slice of the unit's pooled buffer (raw).
    pixels: Bytes,
    /// Each row's JPEG (jpeg; empty when raw).
    jpegs: Vec<Bytes>,
}

/// A few consecutive row groups of one shard, on their way to the writer thread.
struct DecodedUnit {
    shard: usize,
    /// The shard's last unit: the writer commits the shard after it.
    closes_shard: bool,
    groups: Vec<DecodedGroup>,
    skipped: Vec<SkippedImage>,
    /// Training sums over the whole shard, on its last unit (else empty).
    stats: StatsAccumulator,
}

/// What one decode thread keeps from image to image and unit to unit (so
/// nothing is allocated per image): its resizer, its file and decode buffers,
/// its failures in the current unit, and its sums over the current shard.
struct WorkerState {
    cropper: CentreCropper,
    /// The source file's bytes.
    file: Vec<u8>,
    /// The decoded source.
    scratch: Vec<u8>,
    /// A crop's JPEG decoded again (jpeg), for the statistics.
    decoded_jpeg: Vec<u8>,
    failures: Vec<(usize, String)>,
    stats: StatsAccumulator,
}

/// The shard being written and what it has gathered so far.
struct OpenShard {
    index: usize,
    writer: ShardWriter,
    rows: usize,
    skipped: Vec<SkippedImage>,
}

impl Job<'_> {
    /// Decodes `images` (whole planned row groups of one shard) in parallel,
    /// each straight into its slot of one pooled buffer; failures become skips.
    /// With `with_stats`, each thread also adds its crops to its own
    /// accumulator while they are hot in cache; the sums are exact integers, so
    /// their merge (at the shard's last unit) does not depend on which thread
    /// decoded which image.
    fn decode_unit(
        &self,
        shard: usize,
        closes_shard: bool,
        images: &[SourceImage],
        with_stats: bool,
    ) -> DecodedUnit {
        let max_pixels = self.opts.config.max_pixels;
        let side = self.opts.image_size;
        let (encoding, quality) = (self.opts.config.encoding, self.opts.config.quality);
        let row_bytes = crate::dataset::schema::PixelLayout::new(side).bytes();
        let mut buffer = self.buffers.take(images.len() * row_bytes);
        // Each image's JPEG (jpeg only). The statistics are taken from the JPEG decoded
        // again, the pixels the stream will see, so the mean it subtracts is exact.
        let jpegs: Vec<Option<Bytes>> = self.pool.install(|| {
            buffer
                .par_chunks_mut(row_bytes)
                .zip(images.par_iter())
                .enumerate()
                .map(|(i, (slot, image))| {
                    let thread = rayon::current_thread_index().expect("runs on the decode pool");
                    let mut worker = self.workers[thread].lock().expect("worker state lock");
                    let worker = &mut *worker;
                    let stored = load_image(&self.tree.root, image, worker, max_pixels, slot)
                        .and_then(|()| match encoding {
                            Encoding::Raw => {
                                if with_stats {
                                    worker.stats.add(slot);
                                }
                                Ok(None)
                            }
                            Encoding::Jpeg => {
                                let mut jpeg = Vec::new();
                                encoding
                                    .encode(slot, side, quality, &mut jpeg)
                                    .map_err(|e| format!("the crop {e}"))?;
                                if with_stats {
                                    let pixels = encoding
                                        .pixels(&jpeg, side, &mut worker.decoded_jpeg)
                                        .map_err(|e| format!("the encoded crop {e}"))?;
                                    worker.stats.add(pixels);
                                }
                                Ok(Some(Bytes::from(jpeg)))
                            }
                        });
                    self.bar.inc(1);
                    stored.unwrap_or_else(|reason| {
                        worker.failures.push((i, reason));
                        None
                    })
                })
                .collect()
        });
        // Sums travel only with a shard's last unit (an empty accumulator otherwise).
        let shard_sums = closes_shard && with_stats;
        let mut stats = StatsAccumulator::new(if shard_sums { self.opts.image_size } else { 0 });
        let mut failures = Vec::new();
        for worker in &self.workers {
            let mut worker = worker.lock().expect("worker state lock");
            failures.append(&mut worker.failures);
            if shard_sums {
                stats.merge(&worker.stats);
                worker.stats = StatsAccumulator::new(self.opts.image_size);
            }
        }
        failures.sort_unstable_by_key(|(i, _)| *i);

        // Close the gaps failed images left, within each row group, so every
        // group's rows are contiguous; then share the buffer among the groups.
        let rows_per_group = self.opts.config.rows_per_row_group.max(1);
        let mut kept = vec![true; images.len()];
        for (i, _) in &failures {
            kept[*i] = false;
        }
        let mut ranges = Vec::new();
        for start in (0..images.len()).step_by(rows_per_group) {
            let end = (start + rows_per_group).min(images.len());
            let mut next = start;
            for (i, &is_kept) in kept.iter().enumerate().take(end).skip(start) {
                if is_kept {
                    if i != next {
                        buffer.copy_within(i * row_bytes..(i + 1) * row_bytes, next * row_bytes);
                    }
                    next += 1;
                }
            }
            ranges.push((start, end, next));
        }
        let shared = self.buffers.share(buffer);
        let groups = ranges
            .into_iter()
            .map(|(start, end, next)| DecodedGroup {
                keys: (start..end)
                    .filter(|&i| kept[i])
                    .map(|i| images[i].key.clone())
                    .collect(),
                labels: (start..end)
                    .filter(|&i| kept[i])
                    .map(|i| images[i].label)
                    .collect(),
                pixels: shared.slice(start * row_bytes..next * row_bytes),
                jpegs: (start..end).filter_map(|i| jpegs[i].clone()).collect(),
            })
            .collect();
        let skipped = failures
            .into_iter()
            .map(|(i, reason)| SkippedImage {
                path: images[i].key.clone(),
                reason,
            })
            .collect();
        DecodedUnit {
            shard,
            closes_shard,
            groups,
            skipped,
            stats,
        }
    }

    /// Planned images per decode unit: whole row groups, enough for every worker.
    fn unit_len(&self) -> usize {
        let rows_per_group = self.opts.config.rows_per_row_group.max(1);
        let wanted = self.pool.current_num_threads() * IMAGES_PER_WORKER;
        wanted.div_ceil(rows_per_group) * rows_per_group
    }

    /// Writes every unfinished shard of `split` among the `owned` ones (shard
    /// indices of the whole split); returns images decoded. `state` counts the
    /// owned shards done, and is saved in `state_dir`.
    ///
    /// The pool decodes the next unit while a writer thread appends the last
    /// one's row groups to its shard; after a shard's last unit the writer
    /// renames the shard into place, then saves `state.json` (shards in order),
    /// so the resume rules of `state.rs` are unchanged.
    fn run_split(
        &self,
        split: Split,
        images: &[SourceImage],
        owned: &Range<usize>,
        state_dir: &Path,
        state: &mut IngestState,
        sums: &mut StatsAccumulator,
    ) -> Result<usize, IngestError> {
        let out = &self.opts.out;
        let dir = out.join(split.name());
        std::fs::create_dir_all(&dir).map_err(|source| IngestError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let shards: Vec<&[SourceImage]> = images
            .chunks(self.opts.config.rows_per_shard.max(1))
            .collect();
        let done = progress_of(state, split).shards_done;
        let size = self.opts.image_size;
        let with_stats = split == Split::Train;
        // Hugging Face's ClassLabel names: the wnids (unique, where ImageNet's
        // class names are not: two "crane"s).
        let class_names: Vec<String> = self.tree.classes.iter().map(|c| c.wnid.clone()).collect();
        let (sender, receiver) = std::sync::mpsc::sync_channel::<DecodedUnit>(WRITE_QUEUE);
        std::thread::scope(|scope| {
            let dir = &dir;
            let writer = scope.spawn(move || -> Result<(), IngestError> {
                let mut open: Option<OpenShard> = None;
                for unit in receiver {
                    let shard = match &mut open {
                        Some(shard) => shard,
                        None => open.insert(OpenShard {
                            index: unit.shard,
                            writer: ShardWriter::create_for(
                                &dir.join(shard_file_name(unit.shard)),
                                size,
                                self.opts.config.encoding,
                                &class_names,
                            )?,
                            rows: 0,
                            skipped: Vec::new(),
                        }),
                    };
                    debug_assert_eq!(shard.index, unit.shard, "units arrive shard by shard");
                    for group in unit.groups {
                        shard.rows += group.labels.len();
                        match self.opts.config.encoding {
                            Encoding::Raw => shard.writer.write_row_group(
                                &group.keys,
                                &group.labels,
                                group.pixels,
                            )?,
                            Encoding::Jpeg => shard.writer.write_encoded_row_group(
                                &group.keys,
                                &group.labels,
                                &group.jpegs,
                            )?,
                        }
                    }
                    shard.skipped.extend(unit.skipped);
                    if !unit.closes_shard {
                        continue;
                    }
                    let shard = open.take().expect("opened above");
                    shard.writer.finish()?;
                    let progress = progress_of(state, split);
                    progress.shards_done = shard.index + 1 - owned.start;
                    progress.rows_done += shard.rows;
                    progress.skipped.extend(shard.skipped);
                    if with_stats {
                        sums.merge(&unit.stats);
                        state.save_with_sums(state_dir, sums)?;
                    } else {
                        state.save(state_dir)?;
                    }
                    if let Some(publisher) = &self.opts.publish {
                        let name = format!("{}/{}", split.name(), shard_file_name(shard.index));
                        publisher.shard_done(&name, state, with_stats)?;
                    }
                }
                Ok(())
            });
            let mut decoded = 0;
            let unit_len = self.unit_len();
            let todo = shards
                .iter()
                .enumerate()
                .take(owned.end)
                .skip(owned.start + done);
            'shards: for (index, shard) in todo {
                let units = shard.chunks(unit_len);
                let last = units.len() - 1;
                for (u, images) in units.enumerate() {
                    decoded += images.len();
                    if sender
                        .send(self.decode_unit(index, u == last, images, with_stats))
                        .is_err()
                    {
                        break 'shards; // the writer stopped on an error, returned below
                    }
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

/// What the source holds and the order it is written in: the same for a
/// one-shot ingest, each of its parts, and their merge.
pub(super) struct Plan {
    pub tree: SourceTree,
    pub has_val: bool,
    /// Everything that determines the output bytes (see [`fingerprint`]).
    pub fingerprint: String,
    pub train_order: Vec<SourceImage>,
}

impl Plan {
    /// Lists the source and checks it can make a dataset in `opts.out`;
    /// nothing is written.
    pub fn new(opts: &IngestOptions) -> Result<Self, IngestError> {
        let tree = layout::discover(&opts.source, opts.val_labels.as_deref())?;
        let has_val = tree.layout != LayoutKind::TrainOnly;
        // Nothing to ingest in a split: refused before anything is written.
        if tree.train.is_empty() {
            return Err(no_usable_images(
                &opts.source,
                Split::Train,
                0,
                &tree.train_skipped,
            ));
        }
        if has_val && tree.val.is_empty() {
            return Err(no_usable_images(
                &opts.source,
                Split::Val,
                0,
                &tree.val_skipped,
            ));
        }
        refuse_out_inside_source(&opts.source, &opts.out)?;
        Ok(Self {
            fingerprint: fingerprint(&tree, opts.image_size, &opts.config),
            train_order: training_order(&tree.train, opts.config.seed),
            has_val,
            tree,
        })
    }

    /// Shards of `split`: its planned images cut every `rows_per_shard`.
    pub fn shard_count(&self, split: Split, config: &IngestConfig) -> usize {
        let images = match split {
            Split::Train => self.tree.train.len(),
            Split::Val => self.tree.val.len(),
        };
        images.div_ceil(config.rows_per_shard.max(1))
    }

    /// Every shard of both splits (a one-shot ingest owns them all).
    pub fn all_shards(&self, config: &IngestConfig) -> OwnedShards {
        OwnedShards {
            train: 0..self.shard_count(Split::Train, config),
            val: 0..self.shard_count(Split::Val, config),
        }
    }
}

/// The shard indices (of the whole split) one run writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct OwnedShards {
    pub train: Range<usize>,
    pub val: Range<usize>,
}

/// What a run did besides the files, for its summary.
#[derive(Clone, Copy, Debug)]
pub(super) struct ThisRun {
    pub started: Instant,
    pub images: usize,
    pub shards_resumed: usize,
    pub workers: usize,
}

/// Runs (or resumes) an ingest. Safe to kill at any point: re-running the same
/// command continues from the last finished shard and ends with the same files.
pub fn ingest(opts: &IngestOptions) -> Result<IngestSummary, IngestError> {
    if opts.publish.is_none() && crate::store::is_url(&opts.out) {
        return super::publish::ingest_to_store(opts);
    }
    let started = Instant::now();
    let plan = Plan::new(opts)?;
    let out = &opts.out;
    let state_dir = IngestState::dir(out);
    let complete = out.join(crate::dataset::MANIFEST_FILE).exists();
    let mut state = match IngestState::load(&state_dir)? {
        Some(state) if state.fingerprint == plan.fingerprint => state,
        Some(state) if complete => {
            return Err(IngestError::CompleteDatasetMismatch {
                out: opts.out_name(),
                detail: state.encoding_differs(&encoding_label(&opts.config)),
            });
        }
        Some(state) => {
            return Err(IngestError::FingerprintMismatch {
                out: opts.out_name(),
                detail: state.encoding_differs(&encoding_label(&opts.config)),
            });
        }
        None if complete => {
            return Err(IngestError::ForeignDataset {
                out: opts.out_name(),
                state: super::state::STATE_DIR,
            });
        }
        None => {
            super::parts::refuse_parts_in_progress(out)?;
            refuse_out_not_empty(out)?;
            IngestState::new(plan.fingerprint.clone(), encoding_label(&opts.config))
        }
    };
    std::fs::create_dir_all(out).map_err(|source| IngestError::Io {
        path: out.display().to_string(),
        source,
    })?;
    // Saved before the first shard, so a folder this ingest has written to is
    // always recognised as its own (and resumed) by the next run.
    state.save(&state_dir)?;
    let mut sums = state.load_sums(&state_dir, opts.image_size)?;
    let this_run = write_shards(
        opts,
        &plan,
        &plan.all_shards(&opts.config),
        &state_dir,
        &mut state,
        &mut sums,
        started,
    )?;
    finish(opts, &plan, &state, &sums, this_run)
}

/// Decodes and writes the shards of `owned` that `state` has not finished,
/// saving progress (and the training sums) in `state_dir` after each shard.
pub(super) fn write_shards(
    opts: &IngestOptions,
    plan: &Plan,
    owned: &OwnedShards,
    state_dir: &Path,
    state: &mut IngestState,
    sums: &mut StatsAccumulator,
    started: Instant,
) -> Result<ThisRun, IngestError> {
    let shards_resumed = state.train.shards_done + state.val.shards_done;
    let workers = if opts.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        opts.workers
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .build()
        .map_err(|e| IngestError::Threads {
            workers,
            message: e.to_string(),
        })?;
    let per_shard = opts.config.rows_per_shard.max(1);
    // Planned images in the owned shards not yet done.
    let to_do = |images: usize, owned: &Range<usize>, done: usize| {
        (owned.end * per_shard).min(images) - ((owned.start + done) * per_shard).min(images)
    };
    let remaining = to_do(plan.tree.train.len(), &owned.train, state.train.shards_done)
        + to_do(plan.tree.val.len(), &owned.val, state.val.shards_done);
    let bar = if opts.progress {
        crate::progress::bar(remaining as u64, "img")
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_prefix("ingest");
    let worker = || WorkerState {
        cropper: CentreCropper::new(opts.image_size, opts.config.filter),
        file: Vec::new(),
        scratch: Vec::new(),
        decoded_jpeg: Vec::new(),
        failures: Vec::new(),
        stats: StatsAccumulator::new(opts.image_size),
    };
    let worker_states = (0..workers)
        .map(|_| std::sync::Mutex::new(worker()))
        .collect();
    let job = Job {
        opts,
        tree: &plan.tree,
        pool,
        bar,
        buffers: BufferPool::new(),
        workers: worker_states,
    };

    let mut images = job.run_split(
        Split::Train,
        &plan.train_order,
        &owned.train,
        state_dir,
        state,
        sums,
    )?;
    // A run owning every training shard knows now that none gave a row: the
    // validation split is not decoded for a dataset that cannot be made.
    let all_train = owned.train == (0..plan.shard_count(Split::Train, &opts.config));
    if all_train && state.train.rows_done == 0 {
        job.bar.finish_and_clear();
        return Err(split_without_rows(opts, plan, state, Split::Train));
    }
    images += job.run_split(
        Split::Val,
        &plan.tree.val,
        &owned.val,
        state_dir,
        state,
        &mut StatsAccumulator::new(0),
    )?;
    job.bar.finish_and_clear();
    Ok(ThisRun {
        started,
        images,
        shards_resumed,
        workers,
    })
}

/// A split whose every image was skipped, named with the reasons.
fn split_without_rows(
    opts: &IngestOptions,
    plan: &Plan,
    state: &IngestState,
    split: Split,
) -> IngestError {
    let (listed, found, progress) = match split {
        Split::Train => (
            &plan.tree.train_skipped,
            plan.tree.train.len(),
            &state.train,
        ),
        Split::Val => (&plan.tree.val_skipped, plan.tree.val.len(), &state.val),
    };
    let skipped = [&listed[..], &progress.skipped[..]].concat();
    let error = no_usable_images(&opts.source, split, found, &skipped);
    with_restart_hint(error, &opts.out_name())
}

/// The one way a dataset is completed, from the state of every shard and the
/// exact training sums (a one-shot ingest's own, or the parts' added up):
/// `mean.npy`, then the manifest last, whose presence means the dataset is complete.
pub(super) fn finish(
    opts: &IngestOptions,
    plan: &Plan,
    state: &IngestState,
    sums: &StatsAccumulator,
    this_run: ThisRun,
) -> Result<IngestSummary, IngestError> {
    let out = &opts.out;
    let tree = &plan.tree;
    if state.train.rows_done == 0 {
        return Err(split_without_rows(opts, plan, state, Split::Train));
    }
    if plan.has_val && state.val.rows_done == 0 {
        return Err(split_without_rows(opts, plan, state, Split::Val));
    }

    let mean_path = out.join(MEAN_FILE);
    let s = opts.image_size as u64;
    npy::write(&mean_path, &[s, s, 3], &sums.mean_image())?;
    let stats = Stats {
        mean_image: MEAN_FILE.to_string(),
        mean_rgb: sums.mean_rgb(),
        pca: sums.pca(),
    };
    let empty_classes = |images: &[SourceImage], skipped: &[SkippedImage]| {
        classes_without_rows(&tree.classes, images, skipped)
    };
    let empty_train_classes = empty_classes(&tree.train, &state.train.skipped);
    let empty_val_classes = if plan.has_val {
        empty_classes(&tree.val, &state.val.skipped)
    } else {
        Vec::new()
    };
    let mut skipped = tree.train_skipped.clone();
    skipped.extend(state.train.skipped.iter().cloned());
    skipped.extend(tree.val_skipped.iter().cloned());
    skipped.extend(state.val.skipped.iter().cloned());
    let split_info = |p: &SplitProgress| SplitInfo {
        rows: p.rows_done,
        shards: p.shards_done,
    };
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        image_size: opts.image_size,
        encoding: opts.config.encoding,
        jpeg_quality: opts.config.jpeg_quality(),
        classes: tree.classes.clone(),
        splits: [
            (Split::Train, split_info(&state.train)),
            (Split::Val, split_info(&state.val)),
        ]
        .into_iter()
        .collect(),
        skipped: skipped.clone(),
        stats: stats.clone(),
    };
    manifest.save(out)?;
    if let Some(publisher) = &opts.publish {
        publisher.dataset_done()?;
    }
    Ok(IngestSummary {
        out: out.clone(),
        layout: tree.layout,
        classes: tree.classes.len(),
        train: split_info(&state.train),
        val: split_info(&state.val),
        skipped,
        empty_train_classes,
        empty_val_classes,
        images_this_run: this_run.images,
        shards_resumed: this_run.shards_resumed,
        seconds: this_run.started.elapsed().as_secs_f64(),
        workers: this_run.workers,
        stats,
    })
}

/// How many skipped files the summary and errors show (all are in `dataset.json`).
const SKIPPED_SHOWN: usize = 10;

/// `1 shard`, `2 shards`, `2 classes`.
fn count(n: usize, noun: &str) -> String {
    match (n, noun.ends_with('s')) {
        (1, _) => format!("{n} {noun}"),
        (_, true) => format!("{n} {noun}es"),
        (_, false) => format!("{n} {noun}s"),
    }
}

/// The first skipped files with their reasons, one indented line each.
fn skipped_lines(skipped: &[SkippedImage]) -> Vec<String> {
    let mut lines: Vec<String> = skipped
        .iter()
        .take(SKIPPED_SHOWN)
        .map(|skip| format!("  {}: {}", skip.path, skip.reason))
        .collect();
    if skipped.len() > SKIPPED_SHOWN {
        lines.push(format!("  … and {} more", skipped.len() - SKIPPED_SHOWN));
    }
    lines
}

/// The error for a split without a single usable image, listing why.
fn no_usable_images(
    source: &Path,
    split: Split,
    found: usize,
    skipped: &[SkippedImage],
) -> IngestError {
    let mut message = format!(
        "{}: the {} split has no usable image",
        source.display(),
        split.name()
    );
    if found + skipped.len() == 0 {
        message.push_str(" (no image files found)");
    } else {
        message.push_str(&format!(" ({} skipped):", count(skipped.len(), "file")));
        for line in skipped_lines(skipped) {
            message.push('\n');
            message.push_str(&line);
        }
    }
    IngestError::NoUsableImages(message)
}

/// Shards already written are not decoded again by a resume, so files
/// repaired in place are only read once the unfinished dataset is gone.
fn with_restart_hint(error: IngestError, out: &str) -> IngestError {
    match error {
        IngestError::NoUsableImages(message) => IngestError::NoUsableImages(format!(
            "{message}\n{out} holds this unfinished ingest; remove it before ingesting again"
        )),
        other => other,
    }
}

/// Wnids of the classes that none of `images` (less the skipped) belongs to.
fn classes_without_rows(
    classes: &[crate::dataset::ClassInfo],
    images: &[SourceImage],
    skipped: &[SkippedImage],
) -> Vec<String> {
    let skipped: std::collections::HashSet<&str> =
        skipped.iter().map(|s| s.path.as_str()).collect();
    let mut rows = vec![0usize; classes.len()];
    for image in images.iter().filter(|i| !skipped.contains(i.key.as_str())) {
        if let Some(n) = usize::try_from(image.label)
            .ok()
            .and_then(|l| rows.get_mut(l))
        {
            *n += 1;
        }
    }
    classes
        .iter()
        .zip(rows)
        .filter(|(_, n)| *n == 0)
        .map(|(c, _)| c.wnid.clone())
        .collect()
}

/// `path` made absolute with its symlinks resolved, as far as it exists (the
/// rest, not yet created, appended as given).
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut missing = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            return missing.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// Shards written into the source tree would be listed as images by the next
/// ingest of it, so an --out there is refused.
fn refuse_out_inside_source(source: &Path, out: &Path) -> Result<(), IngestError> {
    if resolved(out).starts_with(resolved(source)) {
        return Err(IngestError::OutInsideSource {
            out: out.display().to_string(),
            source_dir: source.display().to_string(),
        });
    }
    Ok(())
}

/// A new ingest writes only into a new or empty folder (or one holding just the
/// state folder a run killed at once left), never among someone's files.
fn refuse_out_not_empty(out: &Path) -> Result<(), IngestError> {
    refuse_out_holding_others(out, &[])
}

/// As [`refuse_out_not_empty`], but `allowed` entries (besides the state
/// folder) may be there too: the split folders other parts are writing.
pub(super) fn refuse_out_holding_others(out: &Path, allowed: &[&str]) -> Result<(), IngestError> {
    let entries = match std::fs::read_dir(out) {
        Ok(entries) => entries,
        // Missing: created below. Not a folder: create_dir_all names the problem.
        Err(_) => return Ok(()),
    };
    let mut names: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|name| name != super::state::STATE_DIR)
        .filter(|name| !allowed.iter().any(|a| name == *a))
        .collect();
    names.sort();
    match names.first() {
        None => Ok(()),
        Some(name) => Err(IngestError::OutNotEmpty {
            out: out.display().to_string(),
            entry: name.to_string_lossy().into_owned(),
        }),
    }
}

impl IngestSummary {
    /// The one-screen summary.
    pub fn lines(&self) -> Vec<String> {
        let PcaStats {
            eigenvalues: ev, ..
        } = &self.stats.pca;
        let mut lines = vec![
            format!("dataset     {}", self.out.display()),
            format!("layout      {}", self.layout),
            format!("classes     {}", self.classes),
            format!(
                "train       {} in {}",
                count(self.train.rows, "image"),
                count(self.train.shards, "shard")
            ),
            format!(
                "val         {} in {}",
                count(self.val.rows, "image"),
                count(self.val.shards, "shard")
            ),
            format!(
                "this run    {} in {:.1} s ({:.0} images/s, {}{})",
                count(self.images_this_run, "image"),
                self.seconds,
                self.images_this_run as f64 / self.seconds.max(1e-9),
                count(self.workers, "worker"),
                if self.shards_resumed > 0 {
                    format!(", {} already done", count(self.shards_resumed, "shard"))
                } else {
                    String::new()
                }
            ),
            format!(
                "mean RGB    {:.2} {:.2} {:.2}",
                self.stats.mean_rgb[0], self.stats.mean_rgb[1], self.stats.mean_rgb[2]
            ),
            format!(
                "PCA λ       {:.5} {:.5} {:.5} (pixels in [0,1])",
                ev[0], ev[1], ev[2]
            ),
            format!("skipped     {}", self.skipped.len()),
        ];
        lines.extend(
            self.skipped
                .iter()
                .take(SKIPPED_SHOWN)
                .map(|skip| format!("  {}: {}", skip.path, skip.reason)),
        );
        if self.skipped.len() > SKIPPED_SHOWN {
            lines.push(format!(
                "  … and {} more (all listed in dataset.json)",
                self.skipped.len() - SKIPPED_SHOWN
            ));
        }
        for (split, empty) in [
            ("train", &self.empty_train_classes),
            ("val", &self.empty_val_classes),
        ] {
            if !empty.is_empty() {
                lines.push(format!(
                    "warning     {} without a {split} image: {}",
                    count(empty.len(), "class"),
                    empty.join(", ")
                ));
            }
        }
        lines
    }
}
