//! Ingest in parts: `--part K/N` writes the whole shards part K owns of each
//! split, exactly as a one-shot ingest writes them, and keeps its progress and
//! exact training sums in its own folder, `DIR/.ingest/part-K-of-N/`, so parts
//! running at once (a job array on a shared disk) never write the same file.
//! `--merge` (or the last part to finish) checks every part is complete and
//! made from the same listing and settings, adds their sums, saves the state a
//! one-shot ingest ends with, and finishes through the one-shot's own
//! [`run::finish`]: the dataset is byte-identical to a one-shot ingest's,
//! whatever N.
//!
//! Part K of N owns shard i of a split with S shards when
//! `floor(i·N / S) = K − 1`: contiguous ranges, sizes differing by at most one,
//! empty for some parts when N > S (such a part completes at once).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::run::{self, IngestError, IngestOptions, IngestSummary, OwnedShards, Plan, ThisRun};
use super::state::{IngestState, STATE_DIR};
use super::stats::StatsAccumulator;
use crate::dataset::{MANIFEST_FILE, Split};

/// Part `index` (1-based) of `count`, as `--part K/N` gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub index: usize,
    pub count: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PartParseError {
    #[error("{0:?} is not K/N (part K of N parts, e.g. 2/8)")]
    NotAFraction(String),
    #[error("{0:?}: the number of parts N must be at least 1")]
    NoParts(String),
    #[error("{given:?}: the part K must be between 1 and {count}")]
    OutOfRange { given: String, count: usize },
}

impl std::str::FromStr for Part {
    type Err = PartParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let not_fraction = || PartParseError::NotAFraction(text.to_string());
        let (index, count) = text.split_once('/').ok_or_else(not_fraction)?;
        let number = |s: &str| s.trim().parse::<usize>().map_err(|_| not_fraction());
        let (index, count) = (number(index)?, number(count)?);
        if count == 0 {
            return Err(PartParseError::NoParts(text.to_string()));
        }
        if !(1..=count).contains(&index) {
            return Err(PartParseError::OutOfRange {
                given: text.to_string(),
                count,
            });
        }
        Ok(Self { index, count })
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Part {
    /// The shard indices this part owns of a split with `shards` shards.
    pub fn owned(self, shards: usize) -> Range<usize> {
        // In u128: K·S cannot overflow, whatever N a user gives.
        let bound = |k: usize| {
            let bound = (k as u128 * shards as u128).div_ceil(self.count as u128);
            bound as usize // at most `shards`
        };
        bound(self.index - 1)..bound(self.index)
    }

    fn folder_name(self) -> String {
        format!("part-{}-of-{}", self.index, self.count)
    }

    /// `part-K-of-N`, as [`Self::folder_name`] writes it.
    fn from_folder_name(name: &str) -> Option<Self> {
        let (index, count) = name.strip_prefix("part-")?.split_once("-of-")?;
        let part = Self {
            index: index.parse().ok()?,
            count: count.parse().ok()?,
        };
        (part.index >= 1 && part.index <= part.count && part.folder_name() == name).then_some(part)
    }

    /// Where this part keeps its progress and sums.
    pub fn state_dir(self, out: &Path) -> PathBuf {
        IngestState::dir(out).join(self.folder_name())
    }

    fn owned_shards(self, plan: &Plan, opts: &IngestOptions) -> OwnedShards {
        OwnedShards {
            train: self.owned(plan.shard_count(Split::Train, &opts.config)),
            val: self.owned(plan.shard_count(Split::Val, &opts.config)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PartsError {
    #[error(
        "{out} holds no ingest parts (no {STATE_DIR}/part-K-of-N folder); run \
         `pipeline ingest SRC --out {out} --part K/N` for every K first"
    )]
    NoParts { out: String },
    #[error(
        "{out} holds parts of two different splits, {first} and {other}; remove the \
         folders of the one not wanted from {out}/{STATE_DIR}"
    )]
    MixedCounts {
        out: String,
        first: String,
        other: String,
    },
    #[error(
        "part {part} is missing ({dir} does not exist); run `pipeline ingest SRC --out {out} \
         --part {part}` with the same settings, then merge again"
    )]
    Missing {
        part: Part,
        dir: String,
        out: String,
    },
    #[error(
        "part {part} is not finished ({done} of {total} shards, in {dir}); re-run \
         `--part {part}` to finish it, then merge again"
    )]
    Unfinished {
        part: Part,
        dir: String,
        done: usize,
        total: usize,
    },
    #[error(
        "part {part} ({dir}) was made with other settings or another source listing than \
         this merge{detail}; merge with the settings and source the parts were run with"
    )]
    Mismatch {
        part: Part,
        dir: String,
        detail: String,
    },
    #[error(
        "{out} holds an unfinished ingest in parts ({folder}); finish it with \
         `--part K/N` and `--merge`, or choose another --out"
    )]
    InProgress { out: String, folder: String },
    #[error(
        "--part and --merge write to a folder all the parts share (a network file system); \
         {out} is an object store: ingest the parts into a shared folder and upload it, or \
         ingest to {out} in one run"
    )]
    ObjectStore { out: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Parts claim the merge with an exclusive file create in the shared folder.
fn refuse_object_store(opts: &IngestOptions) -> Result<(), PartsError> {
    if crate::store::is_url(&opts.out) {
        return Err(PartsError::ObjectStore {
            out: opts.out.display().to_string(),
        });
    }
    Ok(())
}

/// The part folders in `out`'s state folder (none when it has none).
fn part_folders(out: &Path) -> Vec<Part> {
    let mut parts: Vec<Part> = std::fs::read_dir(IngestState::dir(out))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| Part::from_folder_name(&e.file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default();
    parts.sort_by_key(|p| (p.count, p.index));
    parts
}

/// A one-shot ingest does not start over the parts of another.
pub(super) fn refuse_parts_in_progress(out: &Path) -> Result<(), PartsError> {
    match part_folders(out).first() {
        None => Ok(()),
        Some(part) => Err(PartsError::InProgress {
            out: out.display().to_string(),
            folder: format!("{STATE_DIR}/{}", part.folder_name()),
        }),
    }
}

/// The state folder of `out` as a one-shot ingest would judge it: `Ok(true)`
/// when it already holds the finished dataset of this listing and settings.
fn check_out(opts: &IngestOptions, plan: &Plan) -> Result<bool, IngestError> {
    let out = &opts.out;
    let shown = out.display().to_string();
    let complete = out.join(MANIFEST_FILE).exists();
    match IngestState::load(&IngestState::dir(out))? {
        Some(state) if state.fingerprint == plan.fingerprint => Ok(complete),
        Some(state) if complete => Err(IngestError::CompleteDatasetMismatch {
            out: shown,
            detail: state.encoding_differs(&run::encoding_label(&opts.config)),
        }),
        Some(state) => Err(IngestError::FingerprintMismatch {
            out: shown,
            detail: state.encoding_differs(&run::encoding_label(&opts.config)),
        }),
        None if complete => Err(IngestError::ForeignDataset {
            out: shown,
            state: STATE_DIR,
        }),
        None => Ok(false),
    }
}

/// What `--part K/N` did.
#[derive(Debug)]
pub enum PartOutcome {
    /// The part's shards are written; `merged` is the dataset's summary when
    /// this part was the last and merged them all.
    Done {
        summary: PartSummary,
        merged: Option<Box<IngestSummary>>,
    },
    /// The parts had already been merged into the dataset: nothing to do.
    AlreadyMerged { out: PathBuf, part: Part },
}

#[derive(Debug)]
pub struct PartSummary {
    pub out: PathBuf,
    pub part: Part,
    pub owned: (Range<usize>, Range<usize>),
    pub images_this_run: usize,
    pub shards_resumed: usize,
    pub seconds: f64,
    pub workers: usize,
    /// Why the parts were not merged by this one (parts still missing, or
    /// another part merging), when they were not.
    pub not_merged: Option<String>,
}

/// Runs (or resumes) part `part` of an ingest; the last part to finish merges.
pub fn ingest_part(opts: &IngestOptions, part: Part) -> Result<PartOutcome, IngestError> {
    refuse_object_store(opts)?;
    let started = Instant::now();
    let plan = Plan::new(opts)?;
    let out = &opts.out;
    if check_out(opts, &plan)? {
        return Ok(PartOutcome::AlreadyMerged {
            out: out.clone(),
            part,
        });
    }
    let dir = part.state_dir(out);
    let mut state = match IngestState::load(&dir)? {
        Some(state) if state.fingerprint == plan.fingerprint => state,
        Some(state) => {
            return Err(IngestError::FingerprintMismatch {
                out: dir.display().to_string(),
                detail: state.encoding_differs(&run::encoding_label(&opts.config)),
            });
        }
        None => {
            // Other parts may be writing their shards here already.
            run::refuse_out_holding_others(out, &[Split::Train.name(), Split::Val.name()])?;
            IngestState::new(plan.fingerprint.clone(), run::encoding_label(&opts.config))
        }
    };
    state.save(&dir)?;
    let mut sums = state.load_sums(&dir, opts.image_size)?;
    let owned = part.owned_shards(&plan, opts);
    let this_run = run::write_shards(opts, &plan, &owned, &dir, &mut state, &mut sums, started)?;
    let mut summary = PartSummary {
        out: out.clone(),
        part,
        owned: (owned.train, owned.val),
        images_this_run: this_run.images,
        shards_resumed: this_run.shards_resumed,
        seconds: started.elapsed().as_secs_f64(),
        workers: this_run.workers,
        not_merged: None,
    };
    let merged = match merge_if_last(opts, &plan, part, this_run)? {
        Ok(merged) => Some(Box::new(merged)),
        Err(why) => {
            summary.not_merged = Some(why);
            None
        }
    };
    Ok(PartOutcome::Done { summary, merged })
}

/// Marks a merge started by a finishing part, so two parts finishing at once
/// do not both merge. `--merge` proceeds whatever it finds.
const MERGE_CLAIM: &str = "merging";

/// Merges when every part of `part.count` is complete; otherwise says why not.
fn merge_if_last(
    opts: &IngestOptions,
    plan: &Plan,
    part: Part,
    this_run: ThisRun,
) -> Result<Result<IngestSummary, String>, IngestError> {
    if let Err(why) = complete_parts(opts, plan, Some(part.count)) {
        if opts.out.join(MANIFEST_FILE).exists() {
            return Ok(Err(
                "merged by another part that finished at the same time".into()
            ));
        }
        return Ok(Err(waiting_for(why)));
    }
    let claim = IngestState::dir(&opts.out).join(MERGE_CLAIM);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&claim)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Ok(Err(format!(
                "another part is merging ({} exists; if no part is running, run --merge)",
                claim.display()
            )));
        }
        Err(source) => {
            return Err(PartsError::Io {
                path: claim.display().to_string(),
                source,
            }
            .into());
        }
    }
    // Checked again under the claim: a part that finished at the same time
    // may have merged and removed the parts in between.
    let result = match complete_parts(opts, plan, Some(part.count)) {
        Ok(count) => merge_parts(opts, plan, count, this_run).map(Ok),
        Err(why) => Ok(Err(waiting_for(why))),
    };
    let _ = std::fs::remove_file(&claim);
    result
}

/// Why a finishing part did not merge, in the words of a part that finished.
fn waiting_for(why: PartsError) -> String {
    match why {
        PartsError::Missing { part, .. } => {
            format!("waiting for part {part} (not started); the last part to finish merges")
        }
        PartsError::Unfinished { part, .. } => {
            format!("waiting for part {part} (not finished); the last part to finish merges")
        }
        other => other.to_string(),
    }
}

/// `pipeline ingest SRC --out DIR --merge`: merges every part into the dataset.
pub fn merge(opts: &IngestOptions) -> Result<IngestSummary, IngestError> {
    refuse_object_store(opts)?;
    let started = Instant::now();
    let plan = Plan::new(opts)?;
    if check_out(opts, &plan)? && part_folders(&opts.out).is_empty() {
        // Merged already: finishing again, as a one-shot re-run does, writes the same files.
        return run::ingest(opts);
    }
    let count = complete_parts(opts, &plan, None)?;
    let this_run = ThisRun {
        started,
        images: 0,
        shards_resumed: 0,
        workers: 0,
    };
    let summary = merge_parts(opts, &plan, count, this_run)?;
    let _ = std::fs::remove_file(IngestState::dir(&opts.out).join(MERGE_CLAIM));
    Ok(summary)
}

/// Checks that parts 1..=N (N as given, else as the folders say) are all
/// there, finished, and of this listing and settings; returns N.
fn complete_parts(
    opts: &IngestOptions,
    plan: &Plan,
    count: Option<usize>,
) -> Result<usize, PartsError> {
    let out = &opts.out;
    let shown = out.display().to_string();
    let folders = part_folders(out);
    let count = match (count, folders.first()) {
        (Some(count), _) => count,
        (None, Some(first)) => first.count,
        (None, None) => return Err(PartsError::NoParts { out: shown }),
    };
    if let Some(other) = folders.iter().find(|p| p.count != count) {
        let first = folders.iter().find(|p| p.count == count);
        return Err(PartsError::MixedCounts {
            out: shown,
            first: first.map_or(format!("{count} parts"), |p| p.folder_name()),
            other: other.folder_name(),
        });
    }
    for index in 1..=count {
        let part = Part { index, count };
        let dir = part.state_dir(out);
        let dir_shown = dir.display().to_string();
        let state = match IngestState::load(&dir) {
            Ok(Some(state)) => state,
            // A state being replaced or removed right now reads as missing.
            _ => {
                return Err(PartsError::Missing {
                    part,
                    dir: dir_shown,
                    out: shown,
                });
            }
        };
        if state.fingerprint != plan.fingerprint {
            return Err(PartsError::Mismatch {
                part,
                dir: dir_shown,
                detail: state.encoding_differs(&run::encoding_label(&opts.config)),
            });
        }
        let owned = part.owned_shards(plan, opts);
        let total = owned.train.len() + owned.val.len();
        let done = state.train.shards_done + state.val.shards_done;
        if state.train.shards_done != owned.train.len() || state.val.shards_done != owned.val.len()
        {
            return Err(PartsError::Unfinished {
                part,
                dir: dir_shown,
                done,
                total,
            });
        }
    }
    Ok(count)
}

/// Adds up parts 1..=count (checked complete) into the state a one-shot
/// ingest ends with, saves it, finishes the dataset as one-shot does, and
/// removes the part folders (a one-shot ingest leaves none).
fn merge_parts(
    opts: &IngestOptions,
    plan: &Plan,
    count: usize,
    this_run: ThisRun,
) -> Result<IngestSummary, IngestError> {
    let out = &opts.out;
    let mut state = IngestState::new(plan.fingerprint.clone(), run::encoding_label(&opts.config));
    let mut sums = StatsAccumulator::new(opts.image_size);
    for index in 1..=count {
        let dir = Part { index, count }.state_dir(out);
        let part = IngestState::load(&dir)?.ok_or_else(|| PartsError::Missing {
            part: Part { index, count },
            dir: dir.display().to_string(),
            out: out.display().to_string(),
        })?;
        // Parts hold consecutive shards, so their skips in part order are
        // the one-shot's skips in shard order.
        for (all, one) in [(&mut state.train, &part.train), (&mut state.val, &part.val)] {
            all.shards_done += one.shards_done;
            all.rows_done += one.rows_done;
            all.skipped.extend(one.skipped.iter().cloned());
        }
        sums.merge(&part.load_sums(&dir, opts.image_size)?);
    }
    let main = IngestState::dir(out);
    state.save_with_sums(&main, &mut sums)?;
    // Removes any sums file but the live one, as a one-shot resume does.
    state.load_sums(&main, opts.image_size)?;
    let summary = run::finish(opts, plan, &state, &sums, this_run)?;
    for part in part_folders(out) {
        let dir = part.state_dir(out);
        std::fs::remove_dir_all(&dir).map_err(|source| PartsError::Io {
            path: dir.display().to_string(),
            source,
        })?;
    }
    Ok(summary)
}

impl PartSummary {
    /// The part's one-screen summary.
    pub fn lines(&self) -> Vec<String> {
        let shards = |r: &Range<usize>| match r.len() {
            0 => "no shard".to_string(),
            1 => format!("shard {}", r.start),
            _ => format!("shards {}–{}", r.start, r.end - 1),
        };
        let mut lines = vec![
            format!("dataset     {}", self.out.display()),
            format!("part        {}", self.part),
            format!("train       {}", shards(&self.owned.0)),
            format!("val         {}", shards(&self.owned.1)),
            format!(
                "this run    {} images in {:.1} s ({:.0} images/s, {} workers{})",
                self.images_this_run,
                self.seconds,
                self.images_this_run as f64 / self.seconds.max(1e-9),
                self.workers,
                if self.shards_resumed > 0 {
                    format!(", {} shards already done", self.shards_resumed)
                } else {
                    String::new()
                }
            ),
        ];
        if let Some(why) = &self.not_merged {
            lines.push(format!("not merged  {why}"));
        }
        lines
    }
}
