//! The training loop (paper §5), top to bottom: [`train`] sets up the run, then for
//! every epoch trains ([`Trainer::train_epoch`]: each step is forward → cross-entropy →
//! backward → all-reduce → the paper's SGD update), validates, and closes the epoch
//! (schedule, metrics, checkpoint). Each phase is one method of [`Trainer`]; the
//! data-parallel seam is [`Ranks`].
//!
//! Everything random is seeded and saved (stream position, dropout RNG), and every
//! decision depends only on saved state, so `--resume` continues bit for bit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use indicatif::ProgressBar;
use serde::Serialize;

use super::eval::evaluate;
use super::metrics::{self, EpochMetrics};
use super::schedule::{ScheduleState, ValCounts};
use super::sgd::PaperSgd;
use super::state::{EpochProgress, TrainerState};
use super::{TrainError, error::candle, interrupt};
use crate::dataset::Split;
use crate::model::{DropoutRng, param_specs};
use crate::recipe::{Recipe, TrainConfig};
use crate::run::card::{CARD_FORMAT_VERSION, DatasetIdentity, ModelCard, TrainedFor};
use crate::run::checkpoint::{self, Checkpoint, Tensors};
use crate::run::compat::{self, Against};
use crate::run::net::{self, Net};
use crate::run::{RUNS_ROOT, RunDir, RunError, RunInfo};
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
                "network      AlexNet, {} parameters, on {}{}",
                self.parameters,
                self.device,
                // Which CPU kernels ran: a run without libdnnl2 is several times slower.
                if self.device == "cpu" {
                    format!(" ({})", crate::model::onednn::describe())
                } else {
                    String::new()
                }
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

/// Trains (or resumes) a run; returns its summary. See [`TrainOptions`].
pub fn train(options: &TrainOptions) -> Result<TrainSummary, TrainError> {
    // ------------------------------------------------------------------ setup
    // The recipe, the device and the data are checked before anything is written; then
    // the run directory, the network, the optimiser and the state (fresh or resumed).
    let mut trainer = Trainer::set_up(options)?;
    trainer.announce();

    // ------------------------------------------------------------------ epochs
    let finish = loop {
        if trainer.state.position.epoch as usize >= trainer.cfg.epochs {
            break Finish::Completed;
        }
        // -- train: every step forward, backward, update (stops early on request)
        if let Some(stopped) = trainer.train_epoch()? {
            break stopped;
        }
        // -- evaluation (centre crop)
        let val = match trainer.validate()? {
            Validation::Done(counts, seconds) => Some((counts, seconds)),
            Validation::Skipped => None,
            Validation::Interrupted => {
                // Ctrl-C during validation: save the finished epoch; resume validates.
                trainer.checkpoint(None, false)?;
                break Finish::Interrupted;
            }
        };
        // -- end of epoch: schedule, metrics, checkpoint
        trainer.close_epoch(val)?;
    };

    // ------------------------------------------------------------------ summary
    trainer.summary(finish)
}

/// The data-parallel seam. One rank runs today; with N ranks each would stream its own
/// slice of every epoch (the stream already splits an epoch by `rank`/`world_size`),
/// [`Ranks::all_reduce`] would average the gradients before every update, and only the
/// rank for which [`Ranks::writes`] holds would write checkpoints and metrics.
struct Ranks {
    rank: usize,
    world_size: usize,
}

impl Ranks {
    fn single() -> Self {
        Self {
            rank: 0,
            world_size: 1,
        }
    }

    /// The gradients of every rank's batch, averaged (one rank: its own).
    fn all_reduce(&self, grads: GradStore) -> Result<GradStore, TrainError> {
        debug_assert_eq!(self.world_size, 1, "no collective backend yet");
        Ok(grads)
    }

    /// Whether this rank writes the run's files (rank 0 only).
    fn writes(&self) -> bool {
        self.rank == 0
    }
}

/// Everything the loop mutates: what a checkpoint saves ([`LoopState::saved`]) and what
/// the summary reports.
struct LoopState {
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

impl LoopState {
    fn restored(saved: TrainerState) -> Self {
        Self {
            step: saved.step,
            position: saved.position,
            dropout: DropoutRng::from_state(saved.dropout),
            schedule: saved.schedule,
            progress: saved.progress,
            last_val: None,
            last_train_loss: None,
            last_checkpoint: None,
        }
    }

    /// The trainer state a checkpoint taken now holds (`val`: the validation it closes).
    fn saved(&self, val: Option<ValCounts>) -> TrainerState {
        TrainerState {
            step: self.step,
            position: self.position,
            dropout: self.dropout.state(),
            schedule: self.schedule.clone(),
            progress: self.progress.clone(),
            val,
        }
    }
}

/// The two splits a run reads.
struct Data {
    dataset: PathBuf,
    train: DataSource,
    /// None: the dataset has no val images, so there is nothing to validate on.
    val: Option<DataSource>,
    batches_per_epoch: usize,
}

/// The result of an epoch's validation.
enum Validation {
    /// The counts, and the seconds validation took.
    Done(ValCounts, f64),
    /// Not an epoch to validate (`train.eval_every`), or no val split.
    Skipped,
    Interrupted,
}

/// One run being trained: set up once, then driven by [`train`]'s loop.
struct Trainer<'o> {
    options: &'o TrainOptions,
    recipe: Recipe,
    cfg: TrainConfig,
    device: Device,
    data: Data,
    run: RunDir,
    /// The card every checkpoint carries (its `trained` is set as each is saved).
    card: ModelCard,
    parameters: usize,
    net: Net,
    opt: PaperSgd,
    state: LoopState,
    ranks: Ranks,
    resuming: bool,
    interrupted: Arc<AtomicBool>,
    /// `--stop-after-steps`, as the step to stop after.
    stop_at: Option<u64>,
    started: Instant,
    session: Session,
}

impl<'o> Trainer<'o> {
    // ------------------------------------------------------------------ setup

    fn set_up(options: &'o TrainOptions) -> Result<Self, TrainError> {
        let (recipe, existing) = resolve_recipe(options)?;
        let cfg = recipe.train.clone();
        let device = crate::device::open(&cfg.device)?;
        crate::device::check_precision(&device, cfg.precision.dtype())?;
        let data = open_data(options, &recipe, existing.as_ref())?;
        let crop = recipe.data.crop_size;
        let classes = &data.train.manifest.classes;
        let parameters = check_fits(&recipe, classes.len())?;
        let dataset_abs =
            std::fs::canonicalize(&data.dataset).unwrap_or_else(|_| data.dataset.clone());
        let card = ModelCard {
            format_version: CARD_FORMAT_VERSION,
            model: recipe.model,
            input_size: crop,
            classes: classes.clone(),
            dataset: DatasetIdentity {
                location: dataset_abs.display().to_string(),
                image_size: data.train.image_size(),
            },
            recipe: recipe.to_toml(),
            trained: TrainedFor::default(),
        };

        // The run directory: created, or the resumed one with its newest good checkpoint.
        let (run, resume_from) = match (existing, &options.start) {
            (Some(run), _) => {
                let usable = newest_usable_checkpoint(&run, &device)?;
                (run, usable)
            }
            (None, Start::New { out: Some(out), .. }) => (RunDir::create(out)?, None),
            (None, _) => (RunDir::create_numbered(Path::new(RUNS_ROOT))?, None),
        };
        let resuming = resume_from.is_some();
        let (net, opt, state) = match resume_from {
            // (Also a --resume of a run stopped before its first checkpoint: start over.)
            None => start_fresh(&run, &recipe, &card, &dataset_abs, parameters, &device)?,
            Some(read) => resume(&run, &recipe, &data.train, read, &device)?,
        };
        let interrupted = if options.handle_signals {
            interrupt::stop_flag()
        } else {
            Arc::new(AtomicBool::new(false))
        };
        // Counted from here: on --resume, N more steps after the checkpoint.
        let stop_at = options.stop_after_steps.map(|n| state.step + n);
        Ok(Self {
            options,
            recipe,
            cfg,
            device,
            data,
            run,
            card,
            parameters,
            net,
            opt,
            state,
            ranks: Ranks::single(),
            resuming,
            interrupted,
            stop_at,
            started: Instant::now(),
            session: Session::default(),
        })
    }

    fn announce(&self) {
        let dataset = self.data.dataset.display();
        if self.data.val.is_none() {
            say(format_args!(
                "{dataset} has no val split: training without validation (metrics.jsonl \
                 records no val errors and no best.safetensors is kept)"
            ));
        }
        let crop = self.recipe.data.crop_size;
        let rows = |split| self.data.train.manifest.split(split).map_or(0, |s| s.rows);
        say(format_args!(
            "training {} on {dataset} ({} train / {} val images, {}): AlexNet width {} at \
             {crop}×{crop}, {} parameters, {} on {}; epoch {}/{}, step {}, {} per epoch",
            self.run.path.display(),
            rows(Split::Train),
            rows(Split::Val),
            crate::progress::count(self.card.classes.len(), "class", "classes"),
            self.recipe.model.width,
            self.parameters,
            if self.resuming {
                "resuming"
            } else {
                "starting"
            },
            self.cfg.device,
            self.state.position.epoch,
            self.cfg.epochs,
            self.state.step,
            crate::progress::count(self.data.batches_per_epoch, "step", "steps"),
        ));
    }

    /// What this rank streams of the training split, from `position` on.
    fn epoch_options(&self, position: StreamPosition) -> EpochOptions {
        EpochOptions::new(
            ViewMode::Train,
            self.recipe.data.crop_size,
            self.cfg.batch_size,
        )
        .from_position(position)
        .for_rank(self.ranks.rank, self.ranks.world_size)
    }

    // ------------------------------------------------------------------ the epoch

    /// Trains the rest of the current epoch. Some: training stops here (a checkpoint
    /// was saved); None: the epoch is done, to be validated and closed.
    fn train_epoch(&mut self) -> Result<Option<Finish>, TrainError> {
        let epoch = self.state.position.epoch as usize + 1; // 1-based, as reported
        let lr = self.state.schedule.lr(&self.cfg, epoch - 1);
        let batch_size = self.cfg.batch_size;
        let mut stream = self
            .data
            .train
            .epoch(self.epoch_options(self.state.position))?;
        let total = stream.total_batches();
        let bar = bar(self.options.progress, (total * batch_size) as u64, "img");
        bar.set_prefix(format!("epoch {epoch}/{}", self.cfg.epochs));
        bar.set_position((self.state.position.batch * batch_size) as u64);
        let mut clock = Accounting::start(&self.state.progress);

        let (mut upcoming, mut stream_failure) =
            Staged::next_or_failure(&mut stream, &self.device)?;
        while let Some(batch) = upcoming.take() {
            // -- forward and loss, queued on the device
            let forward = self.forward(&batch)?;
            // -- the next batch onto the device while this forward runs (a stream that
            //    fails here still lets this step finish, so its checkpoint holds it)
            (upcoming, stream_failure) = Staged::next_or_failure(&mut stream, &self.device)?;
            // -- backward and update
            let loss = match self.backward_and_update(forward, &batch, lr) {
                Ok(loss) => loss,
                Err(e) => {
                    bar.abandon();
                    return Err(e.at(epoch, batch.index, total));
                }
            };

            // -- timing and logging
            let step = self.state.step;
            crate::progress::advance(
                &bar,
                batch.len() as u64,
                format!("step {step} loss {loss:.4} lr {}", fmt_lr(lr)),
            );

            // -- checkpoint / stop on request
            if stream_failure.is_some() {
                break;
            }
            let stop = self.stop_at == Some(step);
            let ctrl_c = self.interrupted.load(Ordering::SeqCst);
            let every = self.cfg.checkpoint_every_steps;
            let periodic = every > 0 && step.is_multiple_of(every);
            if stop || ctrl_c || periodic {
                clock.account(&mut self.state.progress, &mut self.session, &stream);
                self.checkpoint(None, false)?;
                if stop || ctrl_c {
                    bar.abandon();
                    return Ok(Some(if ctrl_c {
                        Finish::Interrupted
                    } else {
                        Finish::Stopped
                    }));
                }
            }
        }
        clock.account(&mut self.state.progress, &mut self.session, &stream);
        drop(stream);
        if let Some(cause) = stream_failure {
            // The data stopped mid-epoch (a damaged shard, a bug in a stage): keep the
            // work done so far, then report the cause.
            bar.abandon();
            let checkpoint = self.checkpoint(None, false)?;
            return Err(TrainError::StreamFailed {
                cause: Box::new(cause),
                step: self.state.step,
                checkpoint: checkpoint.display().to_string(),
                run: self.run.path.display().to_string(),
            });
        }
        bar.finish_and_clear();
        Ok(None)
    }

    // ------------------------------------------------------------------ the step

    /// Forward in train mode (dropout from our RNG) and the loss, queued on the device;
    /// bf16 casts the f32 weights and the batch (the gradients come back in f32).
    fn forward(&mut self, batch: &Staged) -> Result<Forward, TrainError> {
        let dtype = self.cfg.precision.dtype();
        let dropout_before = self.state.dropout.clone();
        let model = self
            .net
            .model
            .cast(dtype)
            .map_err(candle("casting the weights"))?;
        let x = batch.x.to_dtype(dtype).map_err(candle("input batch"))?;
        let logits = model
            .forward(&x, Some(&mut self.state.dropout))
            .map_err(candle("forward"))?;
        let logits = logits
            .to_dtype(candle_core::DType::F32)
            .map_err(candle("logits"))?;
        let loss =
            candle_nn::loss::cross_entropy(&logits, &batch.y).map_err(candle("cross-entropy"))?;
        Ok(Forward {
            logits,
            loss,
            dropout_before,
        })
    }

    /// Backward, all-reduce and the paper's update `v ← m·v − wd·ε·w − ε·g; w ← w + v`
    /// (queued; the next forward follows them on the device's stream), then the epoch's
    /// sums. Returns the batch's loss. A non-finite loss applies nothing of this step.
    fn backward_and_update(
        &mut self,
        forward: Forward,
        batch: &Staged,
        lr: f64,
    ) -> Result<f32, StepError> {
        let Forward {
            logits,
            loss,
            dropout_before,
        } = forward;
        let loss_value = loss.to_scalar::<f32>().map_err(candle("loss"))?; // sync point with the GPU
        let predicted = logits
            .argmax(1)
            .and_then(|p| p.to_vec1::<u32>())
            .map_err(candle("predictions"))?;
        if !loss_value.is_finite() {
            // Nothing of this step is applied or saved: the last checkpoint stays the
            // last good one.
            self.state.dropout = dropout_before;
            return Err(StepError::NonFinite {
                loss: loss_value,
                step: self.state.step + 1,
                resume_hint: self.resume_hint(),
            });
        }
        let grads = loss.backward().map_err(candle("backward"))?;
        let grads = self.ranks.all_reduce(grads)?;
        self.opt.step(&grads, lr).map_err(candle("SGD step"))?;
        self.state.step += 1;
        self.state.position = batch.position;

        // -- bookkeeping (all exact: sums of the same f32 values in the same order)
        let wrong = predicted
            .iter()
            .zip(&batch.labels)
            .filter(|&(&p, &l)| p as i64 != l)
            .count();
        let p = &mut self.state.progress;
        p.loss_sum += loss_value as f64;
        p.batches += 1;
        p.images += batch.len();
        p.top1_errors += wrong;
        Ok(loss_value)
    }

    fn resume_hint(&self) -> String {
        match &self.state.last_checkpoint {
            Some(c) => format!(
                "The last good checkpoint is {}; lower train.lr in {} and continue with \
                 `pipeline train --resume {}`.",
                c.display(),
                self.run.recipe().display(),
                self.run.path.display()
            ),
            None => "No checkpoint was saved yet; lower train.lr and start again.".into(),
        }
    }

    // ------------------------------------------------------------------ evaluation

    /// The centre-crop validation of the epoch just trained, when one is due.
    fn validate(&mut self) -> Result<Validation, TrainError> {
        let epoch = self.state.position.epoch as usize + 1;
        let due = epoch.is_multiple_of(self.cfg.eval_every) || epoch == self.cfg.epochs;
        let Some(val_src) = self.data.val.as_ref().filter(|_| due) else {
            return Ok(Validation::Skipped);
        };
        let images = val_src.manifest.split(Split::Val).map_or(0, |s| s.rows);
        let vbar = bar_for(self.options.progress, images as u64, "val");
        let started = Instant::now();
        let counts = evaluate(
            &self.net.model,
            val_src,
            EpochOptions::new(
                ViewMode::Centre,
                self.recipe.data.crop_size,
                self.cfg.batch_size,
            ),
            &self.device,
            &vbar,
            Some(&self.interrupted),
        )?;
        vbar.finish_and_clear();
        let seconds = started.elapsed().as_secs_f64();
        Ok(counts.map_or(Validation::Interrupted, |c| Validation::Done(c, seconds)))
    }

    // ------------------------------------------------------------------ end of epoch

    /// Steps the schedule, appends the epoch's metrics line, and checkpoints the epoch.
    /// `validated`: the epoch's validation and its seconds, if it had one.
    fn close_epoch(&mut self, validated: Option<(ValCounts, f64)>) -> Result<(), TrainError> {
        let val = validated.map(|v| v.0);
        let epoch = self.state.position.epoch as usize + 1;
        let lr = self.state.schedule.lr(&self.cfg, epoch - 1);
        let observed = val
            .map(|v| self.state.schedule.observe(&self.cfg, epoch, v))
            .unwrap_or_default();
        let p = std::mem::take(&mut self.state.progress);
        let line = EpochMetrics {
            epoch,
            step: self.state.step,
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
            val_s: validated.map(|v| v.1),
        };
        if self.ranks.writes() {
            metrics::append(&self.run.metrics(), &line)?;
        }
        say(format_args!("{}", epoch_line(&line, self.cfg.epochs)));
        self.state.last_train_loss = Some(line.train_loss);
        if let Some(v) = val {
            self.state.last_val = Some((epoch, v.top1_err(), v.top5_err()));
        }
        self.state.position = StreamPosition {
            epoch: self.state.position.epoch + 1,
            batch: 0,
        };
        self.checkpoint(val, observed.best)?;
        Ok(())
    }

    // ------------------------------------------------------------------ checkpointing

    /// Saves the weights, the momentum, the card and the trainer's state as the newest
    /// step checkpoint (and as `best.safetensors` when `best`), keeping the last
    /// `train.keep_last`. Only the writing rank writes.
    fn checkpoint(&mut self, val: Option<ValCounts>, best: bool) -> Result<PathBuf, TrainError> {
        let path = checkpoint::step_file(&self.run.checkpoints(), self.state.step);
        self.state.last_checkpoint = Some(path.clone());
        if !self.ranks.writes() {
            return Ok(path);
        }
        let trainer =
            serde_json::to_string(&self.state.saved(val)).map_err(|e| RunError::Checkpoint {
                path: path.display().to_string(),
                message: format!("the trainer state does not serialise: {e}"),
            })?;
        self.card.trained = TrainedFor {
            epochs: self.state.position.epoch,
            steps: self.state.step,
        };
        let mut tensors = self.net.weight_tensors();
        tensors.extend(
            self.opt
                .velocity_tensors()
                .map_err(candle("reading the momentum"))?,
        );
        checkpoint::save(&path, &self.card, Some(&trainer), &tensors)?;
        if best {
            checkpoint::save(&self.run.best(), &self.card, Some(&trainer), &tensors)?;
        }
        checkpoint::prune(&self.run.checkpoints(), self.cfg.keep_last)?;
        Ok(path)
    }

    // ------------------------------------------------------------------ summary

    fn summary(self, finish: Finish) -> Result<TrainSummary, TrainError> {
        let Session {
            images,
            loop_s,
            stall_s,
        } = self.session;
        let state = &self.state;
        let best = state.schedule.best;
        let summary = TrainSummary {
            run: self.run.path.clone(),
            finish,
            signal: (finish == Finish::Interrupted)
                .then(|| interrupt::received().unwrap_or(interrupt::SIGINT)),
            epochs_done: state.position.epoch,
            epochs: self.cfg.epochs,
            step: state.step,
            parameters: self.parameters,
            device: self.cfg.device.clone(),
            wall_s: self.started.elapsed().as_secs_f64(),
            images,
            images_per_s: images as f64 / loop_s.max(1e-9),
            data_stall_frac: stall_s / loop_s.max(1e-9),
            lr: state.schedule.lr(&self.cfg, state.position.epoch as usize),
            last_train_loss: state.last_train_loss,
            best_epoch: best.map(|b| b.0),
            best_top1_err: best.map(|b| b.1.top1_err()),
            best_top5_err: best.map(|b| b.1.top5_err()),
            last_top1_err: state.last_val.map(|v| v.1),
            last_top5_err: state.last_val.map(|v| v.2),
            checkpoint: state.last_checkpoint.clone(),
        };
        if finish == Finish::Completed && self.ranks.writes() {
            let json = serde_json::to_string_pretty(&summary).expect("summary serialises");
            crate::dataset::atomic::write_file(&self.run.summary(), json.as_bytes())
                .map_err(super::error::io(&self.run.summary()))?;
        }
        Ok(summary)
    }
}

/// A forward pass queued on the device, awaiting its backward.
struct Forward {
    logits: Tensor,
    loss: Tensor,
    /// The dropout RNG before this step drew its masks (restored if the step is dropped).
    dropout_before: DropoutRng,
}

/// Why a step failed: a non-finite loss (reported with where in the epoch it was), or
/// anything else.
enum StepError {
    NonFinite {
        loss: f32,
        step: u64,
        resume_hint: String,
    },
    Other(Box<TrainError>),
}

impl From<TrainError> for StepError {
    fn from(e: TrainError) -> Self {
        StepError::Other(Box::new(e))
    }
}

impl StepError {
    /// The error, placed at (1-based) `epoch` and 0-based `batch` of `batches`.
    fn at(self, epoch: usize, batch: usize, batches: usize) -> TrainError {
        match self {
            StepError::NonFinite {
                loss,
                step,
                resume_hint,
            } => TrainError::NonFinite {
                loss,
                epoch: epoch as u64,
                step,
                batch: batch + 1,
                batches,
                resume_hint,
            },
            StepError::Other(e) => *e,
        }
    }
}

/// The recipe of the run (a new run's, or the resumed run's own) with the command
/// line's overrides, and the resumed run's directory.
fn resolve_recipe(options: &TrainOptions) -> Result<(Recipe, Option<RunDir>), TrainError> {
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
    Ok((recipe, existing))
}

/// Opens the train and val splits (the dataset given, else the resumed run's own, else
/// `dataset/`), checked against the recipe.
fn open_data(
    options: &TrainOptions,
    recipe: &Recipe,
    existing: Option<&RunDir>,
) -> Result<Data, TrainError> {
    let dataset = match (&options.dataset, existing) {
        (Some(d), _) => d.clone(),
        (None, Some(run)) if run.info().exists() => run.load_info()?.dataset,
        (None, _) => PathBuf::from(super::DEFAULT_DATASET),
    };
    let train = compat::open_split(&dataset, Split::Train, Against::Recipe(recipe))?;
    // Without val images there is nothing to validate on: skip it (said once, at the
    // start) rather than report 0 % error over 0 images.
    let val = if train.manifest.has_rows(Split::Val) {
        Some(compat::open_split(
            &dataset,
            Split::Val,
            Against::Recipe(recipe),
        )?)
    } else {
        None
    };
    let batch_size = recipe.train.batch_size;
    let options = EpochOptions::new(ViewMode::Train, recipe.data.crop_size, batch_size);
    let batches_per_epoch = train.plan(&options).batches;
    if batches_per_epoch == 0 {
        let rows = train.manifest.split(Split::Train).map_or(0, |s| s.rows);
        return Err(TrainError::Dataset {
            dataset: dataset.display().to_string(),
            message: format!(
                "the training split holds {rows} images, fewer than one batch \
                 (train.batch_size = {batch_size})"
            ),
        });
    }
    Ok(Data {
        dataset,
        train,
        val,
        batches_per_epoch,
    })
}

/// Checks the recipe's network fits the data (input side, classes), naming the recipe
/// key; returns its number of learned parameters.
fn check_fits(recipe: &Recipe, num_classes: usize) -> Result<usize, TrainError> {
    let input_size = recipe.data.crop_size;
    let specs = param_specs(&recipe.model, input_size, num_classes).map_err(|e| {
        TrainError::Config(format!("[model] with data.crop_size = {input_size}: {e}"))
    })?;
    Ok(specs
        .iter()
        .map(|s| s.shape.iter().product::<usize>())
        .sum())
}

fn optimiser(net: &Net, cfg: &TrainConfig) -> Result<PaperSgd, TrainError> {
    Ok(
        PaperSgd::new(net.vars.clone(), cfg.momentum, cfg.weight_decay)
            .map_err(candle("creating the optimiser"))?
            .with_decay_biases(cfg.decay_biases),
    )
}

/// A new run: its recipe and `run.json` written, the paper's initial weights, zero
/// momentum, the state of step 0.
fn start_fresh(
    run: &RunDir,
    recipe: &Recipe,
    card: &ModelCard,
    dataset_abs: &Path,
    parameters: usize,
    device: &Device,
) -> Result<(Net, PaperSgd, LoopState), TrainError> {
    let cfg = &recipe.train;
    run.write_recipe(recipe)?;
    metrics::truncate_to(&run.metrics(), 0)?;
    run.write_info(&RunInfo {
        dataset: dataset_abs.to_path_buf(),
        classes: card.wnids().iter().map(|w| w.to_string()).collect(),
        parameters,
    })?;
    let crop = recipe.data.crop_size;
    let net = net::fresh(&recipe.model, crop, card.classes.len(), cfg.seed, device)?;
    let opt = optimiser(&net, cfg)?;
    let state = LoopState::restored(TrainerState {
        step: 0,
        position: StreamPosition::default(),
        dropout: DropoutRng::new(cfg.seed.wrapping_add(1)).state(),
        schedule: ScheduleState::default(),
        progress: EpochProgress::default(),
        val: None,
    });
    Ok((net, opt, state))
}

/// The resumed run from checkpoint `read`: checked against the dataset and the run's
/// recipe, its weights, momentum and state restored.
fn resume(
    run: &RunDir,
    recipe: &Recipe,
    train_src: &DataSource,
    read: Checkpoint,
    device: &Device,
) -> Result<(Net, PaperSgd, LoopState), TrainError> {
    let Checkpoint {
        path,
        card,
        trainer,
        tensors,
    } = read;
    compat::check(
        train_src,
        Against::Run {
            dir: run,
            recipe,
            card: &card,
            checkpoint: &path,
        },
    )
    .map_err(RunError::from)?;
    let bad = |message: String| RunError::Checkpoint {
        path: path.display().to_string(),
        message,
    };
    let trainer = trainer.ok_or_else(|| {
        bad("holds no trainer state (written for inference only), so training cannot continue from it".into())
    })?;
    let saved: TrainerState = serde_json::from_str(&trainer)
        .map_err(|e| bad(format!("damaged, its trainer state is unreadable: {e}")))?;
    let crop = recipe.data.crop_size;
    let net = net::from_checkpoint(
        &recipe.model,
        crop,
        card.classes.len(),
        &tensors,
        &path,
        device,
    )?;
    let mut opt = optimiser(&net, &recipe.train)?;
    opt.load_velocity_tensors(&tensors)
        .map_err(|e| bad(e.to_string()))?;
    drop(tensors);
    run.write_recipe(recipe)?; // keeps --epochs / --device overrides
    // Lines written after this checkpoint belong to work that is redone now.
    metrics::truncate_to(&run.metrics(), saved.position.epoch as usize)?;
    let last_val = metrics::read(&run.metrics())?
        .iter()
        .rev()
        .find_map(|m| Some((m.epoch, m.val_top1_err?, m.val_top5_err?)));
    let state = LoopState {
        last_val,
        last_checkpoint: Some(path),
        ..LoopState::restored(saved)
    };
    Ok((net, opt, state))
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
fn newest_usable_checkpoint(
    run: &RunDir,
    device: &Device,
) -> Result<Option<Checkpoint>, TrainError> {
    let steps = checkpoint::list_steps(&run.checkpoints())?;
    let mut damaged: Vec<(PathBuf, RunError)> = Vec::new();
    for (_, path) in steps.iter().rev() {
        match checkpoint::load(run, path, Tensors::WeightsAndMomentum, device) {
            Ok(read) => {
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
                        read.card.trained.steps
                    );
                }
                return Ok(Some(read));
            }
            Err(e @ RunError::Checkpoint { .. }) => {
                eprintln!("{e}");
                damaged.push((path.clone(), e));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if damaged.is_empty() {
        return Ok(None);
    }
    Err(RunError::Run {
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
    }
    .into())
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
