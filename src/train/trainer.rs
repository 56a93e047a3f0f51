//! The training loop (paper §5), top to bottom: set up the run, then for every epoch
//! stream batches → forward → cross-entropy → backward → the paper's SGD step → log,
//! and at the end of the epoch validate, step the schedule, write metrics and a
//! checkpoint.
//!
//! Everything random is seeded and saved (stream position, dropout RNG), and every
//! decision depends only on saved state, so `--resume` continues bit for bit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::Tensor;
use indicatif::ProgressBar;
use serde::Serialize;

use super::checkpoint::{self, CheckpointMeta, EpochProgress};
use super::eval::{check_classes, evaluate};
use super::metrics::{self, EpochMetrics};
use super::net::{self, Net};
use super::run_dir::{RUNS_ROOT, RunDir, RunInfo};
use super::schedule::{ScheduleState, ValCounts};
use super::sgd::PaperSgd;
use super::{TrainError, device, error::candle, interrupt};
use crate::dataset::Split;
use crate::model::DropoutRng;
use crate::recipe::Recipe;
use crate::stream::{DataSource, EpochOptions, StreamError, StreamPosition, ViewMode};

/// How a run starts.
#[derive(Clone, Debug)]
pub enum Start {
    /// A new run with this recipe, in `out` (None: the next `runs/run-NNNN`).
    New {
        recipe: Box<Recipe>,
        out: Option<PathBuf>,
    },
    /// Continue the run in this directory from its newest checkpoint, with its recipe.
    Resume { run: PathBuf },
}

/// `pipeline train`.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub start: Start,
    /// None: `dataset` for a new run, the run's own dataset (`RUN/run.json`) on resume.
    pub dataset: Option<PathBuf>,
    /// Overrides `train.device` (saved into the run's recipe).
    pub device: Option<String>,
    /// Overrides `train.epochs` (saved into the run's recipe; extends a finished run).
    pub epochs: Option<usize>,
    /// Save a checkpoint and stop after this many more steps, counted from where this
    /// call starts (from 0 for a new run, from the checkpoint on resume).
    pub stop_after_steps: Option<u64>,
    /// Draw progress bars (on stderr, when it is a terminal).
    pub progress: bool,
    /// Catch Ctrl-C and SIGTERM: save a checkpoint and return [`Finish::Interrupted`].
    pub handle_signals: bool,
}

/// Why the loop returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// Every epoch of the recipe is done.
    Completed,
    /// Ctrl-C or SIGTERM: a checkpoint was saved; `--resume` continues.
    Interrupted,
    /// `--stop-after-steps` was reached; a checkpoint was saved.
    Stopped,
}

/// The end-of-run report; `lines()` is the one-screen summary, the struct is also JSON.
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    pub run: PathBuf,
    pub finish: Finish,
    /// The signal that interrupted the run (SIGINT 2, SIGTERM 15), if one did.
    pub signal: Option<i32>,
    pub epochs_done: u64,
    pub epochs: usize,
    pub step: u64,
    pub parameters: usize,
    pub device: String,
    /// This invocation's wall time, training images and their rate.
    pub wall_s: f64,
    pub images: usize,
    pub images_per_s: f64,
    pub data_stall_frac: f64,
    pub lr: f64,
    pub last_train_loss: Option<f64>,
    /// Epoch (1-based) and errors of the best and of the last validation.
    pub best_epoch: Option<usize>,
    pub best_top1_err: Option<f64>,
    pub best_top5_err: Option<f64>,
    pub last_top1_err: Option<f64>,
    pub last_top5_err: Option<f64>,
    pub checkpoint: Option<PathBuf>,
}

impl TrainSummary {
    pub fn lines(&self) -> Vec<String> {
        let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2} %", 100.0 * v));
        let what = match self.finish {
            Finish::Completed => "finished".to_string(),
            Finish::Interrupted => format!(
                "interrupted ({})",
                interrupt::signal_name(self.signal.unwrap_or(interrupt::SIGINT))
            ),
            Finish::Stopped => "stopped (--stop-after-steps)".to_string(),
        };
        let mut lines = vec![
            format!("run          {} ({what})", self.run.display()),
            format!(
                "progress     epoch {}/{}, step {}, lr {}",
                self.epochs_done,
                self.epochs,
                self.step,
                fmt_lr(self.lr)
            ),
            format!(
                "network      AlexNet, {} parameters, on {}",
                self.parameters, self.device
            ),
            format!(
                "this session {:.1} s, {}, {:.0} images/s, data stall {:.1} %",
                self.wall_s,
                crate::progress::count(self.images, "image", "images"),
                self.images_per_s,
                100.0 * self.data_stall_frac
            ),
            format!(
                "train loss   {}",
                self.last_train_loss
                    .map_or("-".into(), |l| format!("{l:.4} (last epoch)"))
            ),
            format!(
                "val error    best top-1 {} top-5 {}{}; last top-1 {} top-5 {}",
                pct(self.best_top1_err),
                pct(self.best_top5_err),
                self.best_epoch
                    .map_or(String::new(), |e| format!(" (epoch {e})")),
                pct(self.last_top1_err),
                pct(self.last_top5_err),
            ),
        ];
        if let Some(c) = &self.checkpoint {
            lines.push(format!("checkpoint   {}", c.display()));
        }
        if self.finish != Finish::Completed {
            lines.push(format!(
                "continue     pipeline train --resume {}",
                self.run.display()
            ));
        }
        lines
    }
}

/// Everything the loop mutates, i.e. what a checkpoint holds besides the tensors.
struct State {
    step: u64,
    position: StreamPosition,
    dropout: DropoutRng,
    schedule: ScheduleState,
    progress: EpochProgress,
    /// Epoch (1-based), top-1 and top-5 error of the newest validation.
    last_val: Option<(usize, f64, f64)>,
    last_train_loss: Option<f64>,
    last_checkpoint: Option<PathBuf>,
}

/// Trains (or resumes) a run; returns its summary. See [`TrainOptions`].
pub fn train(options: &TrainOptions) -> Result<TrainSummary, TrainError> {
    // ------------------------------------------------------------------ the recipe
    // Nothing is written until the recipe, the device and the data are known to fit.
    let (mut recipe, existing) = match &options.start {
        Start::New { recipe, out } => {
            if let Some(out) = out {
                RunDir::ensure_free(out)?;
            }
            ((**recipe).clone(), None)
        }
        Start::Resume { run } => {
            let run = RunDir::open(run)?;
            (run.load_recipe()?, Some(run))
        }
    };
    if let Some(device) = &options.device {
        recipe.train.device = device.clone();
    }
    if let Some(epochs) = options.epochs {
        recipe.train.epochs = epochs;
    }
    recipe.validate().map_err(TrainError::Config)?;
    let cfg = recipe.train.clone();
    let dataset = match (&options.dataset, &existing) {
        (Some(d), _) => d.clone(),
        (None, Some(run)) if run.info().exists() => run.load_info()?.dataset,
        (None, _) => PathBuf::from(super::DEFAULT_DATASET),
    };
    let device = device::open(&cfg.device)?;
    device::check_precision(&device, cfg.precision.dtype())?;

    // ------------------------------------------------------------------ the data
    let train_src = DataSource::open(&dataset, Split::Train, recipe.stream.clone())?;
    // Without val images there is nothing to validate on: skip it (said once, below)
    // rather than report 0 % error over 0 images.
    let val_src = if train_src.manifest.has_rows(Split::Val) {
        Some(DataSource::open(
            &dataset,
            Split::Val,
            recipe.stream.clone(),
        )?)
    } else {
        None
    };
    let misfit = |message: String| TrainError::Dataset {
        dataset: dataset.display().to_string(),
        message,
    };
    recipe
        .check_dataset(&dataset, train_src.image_size())
        .map_err(misfit)?;
    let classes: Vec<String> = train_src
        .manifest
        .classes
        .iter()
        .map(|c| c.wnid.clone())
        .collect();
    let crop = recipe.data.crop_size;
    let epoch_options = |position| EpochOptions {
        mode: ViewMode::Train,
        crop,
        batch_size: cfg.batch_size,
        position,
        rank: 0,
        world_size: 1,
        with_keys: false,
    };
    let batches_per_epoch = train_src
        .plan(&epoch_options(StreamPosition::default()))
        .batches;
    if batches_per_epoch == 0 {
        let rows = train_src.manifest.split(Split::Train).map_or(0, |s| s.rows);
        return Err(misfit(format!(
            "the training split holds {rows} images, fewer than one batch (train.batch_size = {})",
            cfg.batch_size
        )));
    }
    let parameters = net::check_fits(&recipe.model, crop, classes.len())?;

    // ------------------------------------------------------------------ the run directory
    let (run, resume_from) = match (existing, &options.start) {
        (Some(run), _) => {
            let usable = newest_usable_checkpoint(&run, &device)?;
            (run, usable)
        }
        (None, Start::New { out: Some(out), .. }) => (RunDir::create(out)?, None),
        (None, _) => (RunDir::create_numbered(Path::new(RUNS_ROOT))?, None),
    };

    // ------------------------------------------------------------------ model, optimiser, state
    let resuming = resume_from.is_some();
    let (net, mut opt, mut state) = match resume_from {
        None => {
            // (Also a --resume of a run stopped before its first checkpoint: start over.)
            run.write_recipe(&recipe)?;
            metrics::truncate_to(&run.metrics(), 0)?;
            let dataset_abs = std::fs::canonicalize(&dataset).unwrap_or_else(|_| dataset.clone());
            run.write_info(&RunInfo {
                dataset: dataset_abs,
                classes: classes.clone(),
                parameters,
            })?;
            let net = net::fresh(&recipe.model, crop, classes.len(), cfg.seed, &device)?;
            let opt = PaperSgd::new(net.vars.clone(), cfg.momentum, cfg.weight_decay)
                .map_err(candle("creating the optimiser"))?
                .with_decay_biases(cfg.decay_biases);
            let state = State {
                step: 0,
                position: StreamPosition::default(),
                dropout: DropoutRng::new(cfg.seed.wrapping_add(1)),
                schedule: ScheduleState::default(),
                progress: EpochProgress::default(),
                last_val: None,
                last_train_loss: None,
                last_checkpoint: None,
            };
            (net, opt, state)
        }
        Some((path, tensors, meta)) => {
            check_classes(&dataset, &train_src, &meta, &path)?;
            if !meta.model.same_network(&recipe.model) || meta.input_size != crop {
                return Err(TrainError::Checkpoint {
                    path: path.display().to_string(),
                    message: format!(
                        "was trained with [model] {:?} at crop {}, but {} now says {:?} at data.crop_size {crop}",
                        meta.model,
                        meta.input_size,
                        run.recipe().display(),
                        recipe.model
                    ),
                });
            }
            let net =
                net::from_checkpoint(&recipe.model, crop, classes.len(), &tensors, &path, &device)?;
            let mut opt = PaperSgd::new(net.vars.clone(), cfg.momentum, cfg.weight_decay)
                .map_err(candle("creating the optimiser"))?
                .with_decay_biases(cfg.decay_biases);
            opt.load_velocity_tensors(&tensors)
                .map_err(|e| TrainError::Checkpoint {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
            drop(tensors);
            run.write_recipe(&recipe)?; // keeps --epochs / --device overrides
            // Lines written after this checkpoint belong to work that is redone now.
            metrics::truncate_to(&run.metrics(), meta.position.epoch as usize)?;
            let last_val = metrics::read(&run.metrics())?
                .iter()
                .rev()
                .find_map(|m| Some((m.epoch, m.val_top1_err?, m.val_top5_err?)));
            let state = State {
                step: meta.step,
                position: meta.position,
                dropout: DropoutRng::from_state(meta.dropout),
                schedule: meta.schedule,
                progress: meta.progress,
                last_val,
                last_train_loss: None,
                last_checkpoint: Some(path.clone()),
            };
            (net, opt, state)
        }
    };
    let save = |state: &State,
                opt: &PaperSgd,
                val: Option<ValCounts>,
                best: bool|
     -> Result<PathBuf, TrainError> {
        save_checkpoint(
            &run,
            &net,
            opt,
            state,
            val,
            best,
            &classes,
            &recipe,
            cfg.keep_last,
        )
    };

    let interrupted: Arc<AtomicBool> = if options.handle_signals {
        interrupt::stop_flag()
    } else {
        Arc::new(AtomicBool::new(false))
    };
    let started = Instant::now();
    let mut session = Session::default();
    if val_src.is_none() {
        say(format_args!(
            "{} has no val split: training without validation (metrics.jsonl records no val \
             errors and no best.safetensors is kept)",
            dataset.display()
        ));
    }
    say(format_args!(
        "training {} on {} ({} train / {} val images, {}): AlexNet width {} at {crop}×{crop}, \
         {parameters} parameters, {} on {}; epoch {}/{}, step {}, {} per epoch",
        run.path.display(),
        dataset.display(),
        train_src.manifest.split(Split::Train).map_or(0, |s| s.rows),
        train_src.manifest.split(Split::Val).map_or(0, |s| s.rows),
        crate::progress::count(classes.len(), "class", "classes"),
        recipe.model.width,
        if resuming { "resuming" } else { "starting" },
        cfg.device,
        state.position.epoch,
        cfg.epochs,
        state.step,
        crate::progress::count(batches_per_epoch, "step", "steps"),
    ));
    let mut finish = Finish::Completed;
    // Counted from here: on --resume, N more steps after the checkpoint.
    let stop_at = options.stop_after_steps.map(|n| state.step + n);

    // ------------------------------------------------------------------ epochs
    'epochs: while (state.position.epoch as usize) < cfg.epochs {
        let epoch = state.position.epoch as usize + 1; // 1-based, as reported
        let lr = state.schedule.lr(&cfg, epoch - 1);
        let mut stream = train_src.epoch(epoch_options(state.position))?;
        let total = stream.total_batches();
        let bar = bar(options.progress, (total * cfg.batch_size) as u64, "img");
        bar.set_prefix(format!("epoch {epoch}/{}", cfg.epochs));
        bar.set_position((state.position.batch * cfg.batch_size) as u64);
        let mut clock = Accounting::start(&state.progress);

        let dtype = cfg.precision.dtype();
        let (mut upcoming, mut stream_failure) = Staged::next_or_failure(&mut stream, &device)?;
        while let Some(batch) = upcoming.take() {
            // -- forward (train mode: dropout from our RNG) and loss, queued on the device;
            //    bf16 casts the f32 weights and batch (the gradients come back in f32)
            let dropout_before = state.dropout.clone();
            let model = net
                .model
                .cast(dtype)
                .map_err(candle("casting the weights"))?;
            let x = batch.x.to_dtype(dtype).map_err(candle("input batch"))?;
            let logits = model
                .forward(&x, Some(&mut state.dropout))
                .map_err(candle("forward"))?;
            let logits = logits
                .to_dtype(candle_core::DType::F32)
                .map_err(candle("logits"))?;
            let loss = candle_nn::loss::cross_entropy(&logits, &batch.y)
                .map_err(candle("cross-entropy"))?;

            // -- the next batch onto the device while this forward runs (a stream that
            //    fails here still lets this step finish, so its checkpoint holds it)
            (upcoming, stream_failure) = Staged::next_or_failure(&mut stream, &device)?;

            let loss_value = loss.to_scalar::<f32>().map_err(candle("loss"))?; // sync point with the GPU
            let predicted = logits
                .argmax(1)
                .and_then(|p| p.to_vec1::<u32>())
                .map_err(candle("predictions"))?;
            if !loss_value.is_finite() {
                // Nothing of this step is applied or saved: the last checkpoint stays the
                // last good one.
                state.dropout = dropout_before;
                bar.abandon();
                let resume_hint = match &state.last_checkpoint {
                    Some(c) => format!(
                        "The last good checkpoint is {}; lower train.lr in {} and continue with \
                         `pipeline train --resume {}`.",
                        c.display(),
                        run.recipe().display(),
                        run.path.display()
                    ),
                    None => "No checkpoint was saved yet; lower train.lr and start again.".into(),
                };
                return Err(TrainError::NonFinite {
                    loss: loss_value,
                    epoch: epoch as u64,
                    step: state.step + 1,
                    batch: batch.index + 1,
                    batches: total,
                    resume_hint,
                });
            }

            // -- backward and update: v ← m·v − wd·ε·w − ε·g; w ← w + v (queued; the next
            //    forward follows them on the device's stream)
            let grads = loss.backward().map_err(candle("backward"))?;
            // (data parallel: the gradients would be all-reduced across ranks here)
            opt.step(&grads, lr).map_err(candle("SGD step"))?;
            state.step += 1;
            state.position = batch.position;

            // -- bookkeeping (all exact: sums of the same f32 values in the same order)
            let wrong = predicted
                .iter()
                .zip(&batch.labels)
                .filter(|&(&p, &l)| p as i64 != l)
                .count();
            let p = &mut state.progress;
            p.loss_sum += loss_value as f64;
            p.batches += 1;
            p.images += batch.len();
            p.top1_errors += wrong;

            // -- timing and logging
            crate::progress::advance(
                &bar,
                batch.len() as u64,
                format!("step {} loss {loss_value:.4} lr {}", state.step, fmt_lr(lr)),
            );

            // -- checkpoint / stop on request
            if stream_failure.is_some() {
                break;
            }
            let stop = stop_at == Some(state.step);
            let ctrl_c = interrupted.load(Ordering::SeqCst);
            let periodic = cfg.checkpoint_every_steps > 0
                && state.step.is_multiple_of(cfg.checkpoint_every_steps);
            if stop || ctrl_c || periodic {
                clock.account(&mut state.progress, &mut session, &stream);
                state.last_checkpoint = Some(save(&state, &opt, None, false)?);
                if stop || ctrl_c {
                    bar.abandon();
                    finish = if ctrl_c {
                        Finish::Interrupted
                    } else {
                        Finish::Stopped
                    };
                    break 'epochs;
                }
            }
        }
        clock.account(&mut state.progress, &mut session, &stream);
        drop(stream);
        if let Some(cause) = stream_failure {
            // The data stopped mid-epoch (a damaged shard, a bug in a stage): keep the
            // work done so far, then report the cause.
            bar.abandon();
            let checkpoint = save(&state, &opt, None, false)?;
            return Err(TrainError::StreamFailed {
                cause: Box::new(cause),
                step: state.step,
                checkpoint: checkpoint.display().to_string(),
                run: run.path.display().to_string(),
            });
        }
        bar.finish_and_clear();

        // ------------------------------------------------------------------ end of epoch
        // -- validation (centre crop), schedule, metrics, checkpoint
        let validate = epoch.is_multiple_of(cfg.eval_every) || epoch == cfg.epochs;
        let validate = if validate { val_src.as_ref() } else { None };
        let val_started = Instant::now();
        let val = if let Some(val_src) = validate {
            let images = val_src.manifest.split(Split::Val).map_or(0, |s| s.rows);
            let vbar = bar_for(options.progress, images as u64, "val");
            let counts = evaluate(
                &net.model,
                val_src,
                EpochOptions::new(ViewMode::Centre, crop, cfg.batch_size),
                &device,
                &vbar,
                Some(&interrupted),
            )?;
            vbar.finish_and_clear();
            match counts {
                Some(c) => Some(c),
                None => {
                    // Ctrl-C during validation: save the finished epoch; resume validates.
                    state.last_checkpoint = Some(save(&state, &opt, None, false)?);
                    finish = Finish::Interrupted;
                    break 'epochs;
                }
            }
        } else {
            None
        };
        let val_s = validate.map(|_| val_started.elapsed().as_secs_f64());
        let observed = val
            .map(|v| state.schedule.observe(&cfg, epoch, v))
            .unwrap_or_default();
        let p = std::mem::take(&mut state.progress);
        let line = EpochMetrics {
            epoch,
            step: state.step,
            train_loss: p.loss_sum / p.batches.max(1) as f64,
            train_top1_err: p.top1_errors as f64 / p.images.max(1) as f64,
            val_top1_err: val.map(|v| v.top1_err()),
            val_top5_err: val.map(|v| v.top5_err()),
            val_images: val.map(|v| v.images),
            lr,
            best: observed.best,
            lr_dropped: observed.dropped,
            images_per_s: p.images as f64 / p.train_s.max(1e-9),
            data_stall_frac: p.stall_s / p.train_s.max(1e-9),
            train_s: p.train_s,
            val_s,
        };
        metrics::append(&run.metrics(), &line)?;
        say(format_args!("{}", epoch_line(&line, cfg.epochs)));
        state.last_train_loss = Some(line.train_loss);
        if let Some(v) = val {
            state.last_val = Some((epoch, v.top1_err(), v.top5_err()));
        }
        state.position = StreamPosition {
            epoch: state.position.epoch + 1,
            batch: 0,
        };
        state.last_checkpoint = Some(save(&state, &opt, val, observed.best)?);
    }

    // ------------------------------------------------------------------ summary
    let Session {
        images,
        loop_s,
        stall_s,
    } = session;
    let best = state.schedule.best;
    let summary = TrainSummary {
        run: run.path.clone(),
        finish,
        signal: (finish == Finish::Interrupted)
            .then(|| interrupt::received().unwrap_or(interrupt::SIGINT)),
        epochs_done: state.position.epoch,
        epochs: cfg.epochs,
        step: state.step,
        parameters,
        device: cfg.device.clone(),
        wall_s: started.elapsed().as_secs_f64(),
        images,
        images_per_s: images as f64 / loop_s.max(1e-9),
        data_stall_frac: stall_s / loop_s.max(1e-9),
        lr: state.schedule.lr(&cfg, state.position.epoch as usize),
        last_train_loss: state.last_train_loss,
        best_epoch: best.map(|b| b.0),
        best_top1_err: best.map(|b| b.1.top1_err()),
        best_top5_err: best.map(|b| b.1.top5_err()),
        last_top1_err: state.last_val.map(|v| v.1),
        last_top5_err: state.last_val.map(|v| v.2),
        checkpoint: state.last_checkpoint.clone(),
    };
    if finish == Finish::Completed {
        let json = serde_json::to_string_pretty(&summary).expect("summary serialises");
        crate::dataset::atomic::write_file(&run.summary(), json.as_bytes())
            .map_err(super::error::io(&run.summary()))?;
    }
    Ok(summary)
}

/// A training batch on the device, with what the loop needs of the host batch. The
/// loop stages batch i+1 while the device computes step i, so the wait for the stream
/// overlaps the GPU's work (on the CPU both run in turn, as before).
struct Staged {
    index: usize,
    labels: Vec<i64>,
    x: Tensor,
    y: Tensor,
    /// The stream position after this batch: where a checkpoint taken after its step
    /// resumes.
    position: StreamPosition,
}

impl Staged {
    fn next(
        stream: &mut crate::stream::Stream,
        device: &candle_core::Device,
    ) -> Result<Option<Staged>, TrainError> {
        let Some(batch) = stream.next_batch() else {
            return Ok(None);
        };
        let mut batch = batch?;
        let x = Tensor::from_slice(&batch.images, batch.shape().as_slice(), device)
            .map_err(candle("input batch"))?;
        let y = Tensor::from_slice(&batch.labels, batch.len(), device).map_err(candle("labels"))?;
        // The host batch goes back to the stream's buffer pool here; its labels stay.
        Ok(Some(Staged {
            index: batch.index,
            labels: std::mem::take(&mut batch.labels),
            x,
            y,
            position: stream.position(),
        }))
    }

    /// [`Staged::next`], with a failure of the stream itself handed back apart (the
    /// loop checkpoints before reporting it); other errors stay errors.
    fn next_or_failure(
        stream: &mut crate::stream::Stream,
        device: &candle_core::Device,
    ) -> Result<(Option<Staged>, Option<StreamError>), TrainError> {
        match Staged::next(stream, device) {
            Ok(next) => Ok((next, None)),
            Err(TrainError::Stream(e)) => Ok((None, Some(e))),
            Err(e) => Err(e),
        }
    }

    fn len(&self) -> usize {
        self.labels.len()
    }
}

/// The newest step checkpoint of `run` that loads and verifies, with its contents.
/// Damaged newer ones are named on stderr and moved aside (`….damaged`), so pruning can
/// never keep them over good ones. None: the run has no checkpoint yet. An error when
/// every checkpoint is damaged (they are then left in place).
#[allow(clippy::type_complexity)]
fn newest_usable_checkpoint(
    run: &RunDir,
    device: &candle_core::Device,
) -> Result<Option<(PathBuf, HashMap<String, Tensor>, CheckpointMeta)>, TrainError> {
    let steps = checkpoint::list_steps(&run.checkpoints())?;
    let mut damaged: Vec<(PathBuf, TrainError)> = Vec::new();
    for (_, path) in steps.iter().rev() {
        match checkpoint::load(path, device) {
            Ok((tensors, meta)) => {
                for (bad, _) in &damaged {
                    let aside = damaged_path(bad);
                    std::fs::rename(bad, &aside).map_err(super::error::io(bad))?;
                    eprintln!(
                        "moved the damaged {} aside to {}",
                        bad.display(),
                        aside.display()
                    );
                }
                if !damaged.is_empty() {
                    eprintln!(
                        "resuming from the previous good checkpoint {} (step {})",
                        path.display(),
                        meta.step
                    );
                }
                return Ok(Some((path.clone(), tensors, meta)));
            }
            Err(e @ TrainError::Checkpoint { .. }) => {
                eprintln!("{e}");
                damaged.push((path.clone(), e));
            }
            Err(e) => return Err(e),
        }
    }
    if damaged.is_empty() {
        return Ok(None);
    }
    Err(TrainError::Run {
        path: run.path.display().to_string(),
        message: format!(
            "has no usable checkpoint to resume from; every one is damaged:\n  {}\n\
             restore one from a backup, or start the run again with `pipeline train --out`",
            damaged
                .iter()
                .map(|(_, e)| e.to_string())
                .collect::<Vec<_>>()
                .join("\n  ")
        ),
    })
}

/// `step-00000018.safetensors` → `step-00000018.safetensors.damaged`.
fn damaged_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".damaged");
    path.with_file_name(name)
}

/// Moves the loop time, data stall and images since the last call into the epoch's
/// sums and the session's totals (the stream's stall counter is cumulative).
struct Accounting {
    segment: Instant,
    stall_seen: f64,
    images_seen: usize,
}

impl Accounting {
    fn start(p: &EpochProgress) -> Self {
        Self {
            segment: Instant::now(),
            stall_seen: 0.0,
            images_seen: p.images,
        }
    }

    fn account(
        &mut self,
        p: &mut EpochProgress,
        session: &mut Session,
        stream: &crate::stream::Stream,
    ) {
        let secs = self.segment.elapsed().as_secs_f64();
        let stall = stream.timing().consumer_stall_s;
        let stall_new = (stall - self.stall_seen).max(0.0);
        p.train_s += secs;
        p.stall_s += stall_new;
        session.images += p.images - self.images_seen;
        session.loop_s += secs;
        session.stall_s += stall_new;
        *self = Self {
            segment: Instant::now(),
            stall_seen: stall,
            images_seen: p.images,
        };
    }
}

/// This invocation's totals (a resumed run reports its own speed).
#[derive(Default)]
struct Session {
    images: usize,
    loop_s: f64,
    stall_s: f64,
}

#[allow(clippy::too_many_arguments)]
fn save_checkpoint(
    run: &RunDir,
    net: &Net,
    opt: &PaperSgd,
    state: &State,
    val: Option<ValCounts>,
    best: bool,
    classes: &[String],
    recipe: &Recipe,
    keep_last: usize,
) -> Result<PathBuf, TrainError> {
    let meta = CheckpointMeta {
        format_version: checkpoint::FORMAT_VERSION,
        step: state.step,
        position: state.position,
        dropout: state.dropout.state(),
        schedule: state.schedule.clone(),
        progress: state.progress.clone(),
        val,
        classes: classes.to_vec(),
        model: recipe.model,
        input_size: recipe.data.crop_size,
    };
    let mut tensors = net.weight_tensors();
    tensors.extend(
        opt.velocity_tensors()
            .map_err(candle("reading the momentum"))?,
    );
    let path = checkpoint::step_file(&run.checkpoints(), state.step);
    checkpoint::save(&path, &tensors, &meta)?;
    if best {
        checkpoint::save(&run.best(), &tensors, &meta)?;
    }
    checkpoint::prune(&run.checkpoints(), keep_last)?;
    Ok(path)
}

fn bar(show: bool, total: u64, unit: &str) -> ProgressBar {
    if show {
        crate::progress::bar(total, unit)
    } else {
        ProgressBar::hidden()
    }
}

fn bar_for(show: bool, total: u64, prefix: &str) -> ProgressBar {
    let b = bar(show, total, "img");
    b.set_prefix(prefix.to_string());
    b
}

/// A learning rate for people: 0.01, 1.000e-4 (not 0.00010000000000000002).
fn fmt_lr(lr: f64) -> String {
    let plain = lr.to_string();
    if plain.len() <= 6 {
        plain
    } else {
        format!("{lr:.3e}")
    }
}

/// One stdout line per epoch.
/// A line on stdout that a reader who has gone (`train | head`) cannot turn into a panic:
/// training goes on and metrics.jsonl keeps every line.
fn say(line: std::fmt::Arguments) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

fn epoch_line(m: &EpochMetrics, epochs: usize) -> String {
    let val = match (m.val_top1_err, m.val_top5_err) {
        (Some(t1), Some(t5)) => format!(
            "val top-1 err {:6.2} %  top-5 err {:6.2} %",
            100.0 * t1,
            100.0 * t5
        ),
        _ => "val -".into(),
    };
    format!(
        "epoch {:>3}/{epochs}  step {:>7}  loss {:.4}  train err {:6.2} %  {val}  lr {}  {:.0} img/s  stall {:.1} %{}{}",
        m.epoch,
        m.step,
        m.train_loss,
        100.0 * m.train_top1_err,
        fmt_lr(m.lr),
        m.images_per_s,
        100.0 * m.data_stall_frac,
        if m.best { "  best" } else { "" },
        if m.lr_dropped { "  lr ÷" } else { "" },
    )
}
