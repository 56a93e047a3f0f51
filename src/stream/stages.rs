//! The stage tasks. Each is a struct with `run()`; each link is a bounded
//! channel whose capacity is a named knob; a stage stops when its input ends or
//! its output's receiver is gone (dropping the consumer unwinds the whole chain).

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use futures::StreamExt;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use tokio::sync::{mpsc, oneshot};

use super::batch::{Batch, BufferPool};
use super::plan::{PURPOSE_SAMPLE, RowGroupRef, derive_seed};
use super::shuffle::GroupShuffle;
use super::source::{Row, RowGroupData, ShardIndex};
use super::timing::StageTimes;
use super::{StreamError, ViewMode};
use crate::augment::{Augmenter, centre_view, ten_crop_views};
use crate::dataset::Encoding;
use crate::dataset::checksum::{self, PixelsCrc};

thread_local! {
    /// Each augmentation worker's decoded image (jpeg rows), reused from row to row so
    /// memory stays one S×S×3 image per worker.
    static DECODED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The rows of one batch, in order, before augmentation.
pub struct BatchPlan {
    pub index: usize,
    pub rows: Vec<Row>,
}

/// Reads the plan's row groups in order, `read_ahead` at a time.
pub struct SourceTask {
    pub index: Arc<ShardIndex>,
    pub row_groups: Vec<RowGroupRef>,
    pub with_keys: bool,
    /// Row groups read concurrently ahead of the shuffle (several shards in flight).
    pub read_ahead: usize,
    pub out: mpsc::Sender<Result<RowGroupData, StreamError>>,
    pub times: Arc<StageTimes>,
}

impl SourceTask {
    pub async fn run(self) {
        let SourceTask {
            index,
            row_groups,
            with_keys,
            read_ahead,
            out,
            times,
        } = self;
        let reads = futures::stream::iter(row_groups).map(|group| {
            let (index, times) = (index.clone(), times.clone());
            async move {
                let started = Instant::now();
                let data = index.read(group, with_keys).await;
                StageTimes::add(&times.read_ns, started);
                data
            }
        });
        // `buffered` keeps the plan's order whatever finishes first.
        let mut reads = reads.buffered(read_ahead.max(1));
        while let Some(group) = reads.next().await {
            let failed = group.is_err();
            if out.send(group).await.is_err() || failed {
                return;
            }
        }
    }
}

/// Draws rows through the shuffle and cuts them into batch plans.
pub struct ShuffleTask {
    pub input: mpsc::Receiver<Result<RowGroupData, StreamError>>,
    pub shuffle: GroupShuffle<Row>,
    pub batch_size: usize,
    /// Rows to emit this epoch (the plan's, after dropping the rank's surplus).
    pub rows: usize,
    /// Batches to skip (mid-epoch resume): drawn exactly as before, then discarded.
    pub start_batch: usize,
    pub out: mpsc::Sender<Result<BatchPlan, StreamError>>,
    pub times: Arc<StageTimes>,
}

impl ShuffleTask {
    pub async fn run(mut self) {
        let mut emitted = 0usize;
        let mut current = Vec::with_capacity(self.batch_size);
        let mut input_open = true;
        while emitted < self.rows {
            while input_open && self.shuffle.wants_group() {
                match self.input.recv().await {
                    Some(Ok(group)) => self.shuffle.add_group(group.into_rows()),
                    Some(Err(e)) => {
                        let _ = self.out.send(Err(e)).await;
                        return;
                    }
                    None => input_open = false,
                }
            }
            let started = Instant::now();
            let Some(row) = self.shuffle.draw() else {
                break;
            };
            StageTimes::add(&self.times.shuffle_ns, started);
            emitted += 1;
            current.push(row);
            if current.len() == self.batch_size {
                let index = emitted / self.batch_size - 1;
                let rows = std::mem::replace(&mut current, Vec::with_capacity(self.batch_size));
                if !self.send(index, rows).await {
                    return;
                }
            }
        }
        if !current.is_empty() {
            let index = emitted.div_ceil(self.batch_size) - 1;
            self.send(index, current).await;
        }
    }

    /// Sends a batch plan (or drops it, when resuming before it). False = stop.
    async fn send(&mut self, index: usize, rows: Vec<Row>) -> bool {
        if index < self.start_batch {
            return true;
        }
        self.out.send(Ok(BatchPlan { index, rows })).await.is_ok()
    }
}

/// Everything an augmentation job needs, shared across jobs.
pub struct AugmentContext {
    pub augmenter: Augmenter,
    /// Names a corrupt row's shard and key.
    pub index: Arc<ShardIndex>,
    pub mode: ViewMode,
    pub seed: u64,
    pub epoch: u64,
    pub rank: usize,
    pub batch_size: usize,
    pub pool: Arc<rayon::ThreadPool>,
    pub images_pool: BufferPool<f32>,
    pub times: Arc<StageTimes>,
}

impl AugmentContext {
    /// Builds one batch: every image written straight into its slot of the
    /// (recycled) batch buffer, images in parallel on the augmentation pool.
    /// Each row's pixels are checked against their CRC as they are first augmented, in
    /// the same read of the row.
    fn assemble(&self, plan: BatchPlan) -> Result<Batch, StreamError> {
        let started = Instant::now();
        let slot = self.augmenter.output_len();
        let views = self.mode.views();
        let mut images = self.images_pool.take(plan.rows.len() * views * slot);
        let first_position = (plan.index * self.batch_size) as u64;
        self.pool.install(|| {
            images
                .par_chunks_mut(slot * views)
                .zip(plan.rows.par_iter())
                .enumerate()
                .try_for_each(|(i, (out, row))| {
                    if i == 0 && self.mode == ViewMode::Train {
                        inject_augment_panic(plan.index);
                    }
                    // The CRC rides on the augmentation's own read of the pixels
                    // (one pass over the row instead of two). A JPEG row is checked
                    // whole before it is decoded, so no decoder sees altered bytes.
                    let check = row.pending_check(&self.index);
                    let raw = self.index.encoding == Encoding::Raw;
                    if let (Some(check), false) = (check, raw) {
                        row.confirm(&self.index, check, checksum::pixels_crc32(&row.pixels))?;
                    }
                    let mut crc = check.filter(|_| raw).map(|_| PixelsCrc::new());
                    let visit = crc.as_mut().map(|crc| |bytes: &[u8]| crc.update(bytes));
                    // A JPEG row is decoded whole into this worker's buffer (zune-jpeg
                    // decodes no window), reused from row to row.
                    DECODED.with_borrow_mut(|buffer| {
                        let pixels = row.decoded(&self.index, buffer)?;
                        match self.mode {
                            ViewMode::Train => {
                                // Each sample's randomness depends only on its position, so the
                                // batch is the same whatever thread runs it.
                                let position = first_position + i as u64;
                                let seed = derive_seed(
                                    self.seed,
                                    &[self.epoch, self.rank as u64, PURPOSE_SAMPLE, position],
                                );
                                self.augmenter.train_image_visiting(
                                    pixels,
                                    &mut ChaCha8Rng::seed_from_u64(seed),
                                    out,
                                    visit,
                                );
                            }
                            ViewMode::Centre => self.augmenter.eval_image_visiting(
                                pixels,
                                centre_view(self.augmenter.geometry()),
                                out,
                                visit,
                            ),
                            ViewMode::TenCrop => {
                                let (first, rest) = out.split_at_mut(slot);
                                let mut views =
                                    ten_crop_views(self.augmenter.geometry()).into_iter();
                                let first_view = views.next().expect("ten views");
                                self.augmenter
                                    .eval_image_visiting(pixels, first_view, first, visit);
                                for (view, out) in views.zip(rest.chunks_mut(slot)) {
                                    self.augmenter.eval_image(pixels, view, out);
                                }
                            }
                        }
                        Ok::<(), StreamError>(())
                    })?;
                    if let (Some(check), Some(crc)) = (check, crc) {
                        row.confirm(&self.index, check, crc.finalize())?;
                    }
                    Ok::<(), StreamError>(())
                })
        })?;
        let labels = plan.rows.iter().map(|r| i64::from(r.label)).collect();
        let mut keys = Vec::new();
        for row in plan.rows {
            keys.extend(row.key);
        }
        let crop = self.augmenter.geometry().crop;
        StageTimes::add(&self.times.augment_ns, started);
        Ok(Batch::new(
            plan.index,
            images,
            labels,
            keys,
            views,
            crop,
            self.images_pool.clone(),
        ))
    }
}

/// Hands batch plans to the augmentation pool and passes the results on in order.
pub struct AugmentTask {
    pub input: mpsc::Receiver<Result<BatchPlan, StreamError>>,
    pub context: Arc<AugmentContext>,
    /// Capacity = batches prepared ahead of the consumer (prefetch depth).
    pub out: mpsc::Sender<oneshot::Receiver<Result<Batch, StreamError>>>,
}

impl AugmentTask {
    pub async fn run(mut self) {
        while let Some(plan) = self.input.recv().await {
            let (tx, rx) = oneshot::channel();
            match plan {
                Ok(plan) => {
                    let context = self.context.clone();
                    self.context.pool.spawn(move || {
                        // A panic here (a bug) must not abort the run: it becomes this
                        // batch's error, and the trainer checkpoints before reporting it.
                        let batch = plan.index;
                        let result =
                            std::panic::catch_unwind(AssertUnwindSafe(|| context.assemble(plan)))
                                .unwrap_or_else(|payload| {
                                    Err(StreamError::WorkerPanic {
                                        stage: "augment",
                                        epoch: context.epoch,
                                        batch,
                                        message: panic_message(payload.as_ref()),
                                    })
                                });
                        let _ = tx.send(result);
                    });
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
            if self.out.send(rx).await.is_err() {
                return;
            }
        }
    }
}

/// The text of a panic payload (`panic!` gives a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

/// Test hook, not a user setting: `PIPELINE_FAULT_INJECT=augment-panic-at-batch:N` makes
/// the augmentation of training batch N (0-based, in every epoch) panic, so the tests can
/// prove that a bug in an augment worker ends the run with a checkpoint and a named error
/// rather than an abort. (Tests run in release builds, so this cannot hide behind
/// `cfg(debug_assertions)`.) Any other value is ignored.
fn inject_augment_panic(batch: usize) {
    static AT: OnceLock<Option<usize>> = OnceLock::new();
    let at = AT.get_or_init(|| {
        std::env::var("PIPELINE_FAULT_INJECT")
            .ok()?
            .strip_prefix("augment-panic-at-batch:")?
            .parse()
            .ok()
    });
    if *at == Some(batch) {
        panic!("injected fault (PIPELINE_FAULT_INJECT=augment-panic-at-batch:{batch})");
    }
}
