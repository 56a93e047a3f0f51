//! What an interrupted ingest has finished, kept in `DIR/.ingest/`.
//!
//! `state.json` is the single source of truth: a shard counts as done only once
//! `state.json` says so. Shards are renamed into place before `state.json` is
//! updated, so a crash in between only redoes that shard (with identical bytes).
//! The training sums are versioned by the number of shards they cover
//! (`train-sums-00005.npy`) so `state.json` always names a consistent file.
//! A part of an ingest in parts keeps the same files in its own folder
//! (`.ingest/part-K-of-N/`), counting the shards of its own range.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::stats::StatsAccumulator;
use crate::dataset::{SkippedImage, atomic, npy};

pub const STATE_DIR: &str = ".ingest";
pub const STATE_FILE: &str = "state.json";

/// Progress of one split.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitProgress {
    pub shards_done: usize,
    pub rows_done: usize,
    pub skipped: Vec<SkippedImage>,
}

/// The training sums without the big per-pixel array (that lives in a `.npy`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SmallSums {
    images: u64,
    channel_sums: [u64; 3],
    product_sums: [u64; 6],
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestState {
    /// Hash of everything that determines the output; a resume with other
    /// settings or another source listing is refused.
    pub fingerprint: String,
    /// The encoding the shards are written in ("raw", "jpeg at quality 90"), to say
    /// what differs when a resume or a merge is refused (absent in older states).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    pub train: SplitProgress,
    pub val: SplitProgress,
    train_sums: SmallSums,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: unreadable ingest state: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("{source}")]
    Npy { path: String, source: npy::NpyError },
}

fn sums_file(shards: usize) -> String {
    format!("train-sums-{shards:05}.npy")
}

impl IngestState {
    /// What a refusal to resume or merge this state with settings of `encoding` should
    /// add: the two encodings when they differ, else nothing.
    pub fn encoding_differs(&self, encoding: &str) -> String {
        match &self.encoding {
            Some(stored) if stored != encoding => {
                format!(" (its shards are {stored}; these settings ask for {encoding})")
            }
            _ => String::new(),
        }
    }

    pub fn new(fingerprint: String, encoding: String) -> Self {
        Self {
            fingerprint,
            encoding: Some(encoding),
            train: SplitProgress::default(),
            val: SplitProgress::default(),
            train_sums: SmallSums::default(),
        }
    }

    /// The training sums file this state names, and the one the state before
    /// its last train shard named; `None` before the first train shard.
    pub fn sums_file_names(&self) -> Option<(String, Option<String>)> {
        let done = self.train.shards_done;
        (done > 0).then(|| {
            let previous = (done > 1).then(|| sums_file(done - 1));
            (sums_file(done), previous)
        })
    }

    pub fn dir(dataset: &Path) -> PathBuf {
        dataset.join(STATE_DIR)
    }

    /// The state saved in `dir` (a dataset's [`Self::dir`], or one part's
    /// folder inside it), or `None` when it holds no ingest in progress.
    pub fn load(dir: &Path) -> Result<Option<Self>, StateError> {
        let path = dir.join(STATE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| StateError::Parse {
                path: path.display().to_string(),
                source,
            })
    }

    /// Whether `name` (a file of the state folder) is a sums file this state does not
    /// name: one a run killed between saving a state and deleting the sums the
    /// previous state named left behind.
    pub fn is_stale_sums(&self, name: &str) -> bool {
        name.starts_with("train-sums-") && name != sums_file(self.train.shards_done)
    }

    /// The training sums covering `self.train.shards_done` shards. Sums files a
    /// killed run left behind (any but the live one) are removed.
    pub fn load_sums(&self, dir: &Path, image_size: usize) -> Result<StatsAccumulator, StateError> {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if self.is_stale_sums(&name) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let mut acc = StatsAccumulator::new(image_size);
        if self.train.shards_done == 0 {
            return Ok(acc);
        }
        let path = dir.join(sums_file(self.train.shards_done));
        let shown = path.display().to_string();
        let bytes = std::fs::read(&path).map_err(|source| StateError::Io {
            path: shown.clone(),
            source,
        })?;
        let io = |source| StateError::Io {
            path: shown.clone(),
            source,
        };
        let array = npyz::NpyFile::new(&bytes[..]).map_err(io)?;
        acc.pixel_sums = array.into_vec::<u64>().map_err(io)?;
        let expected = crate::dataset::schema::PixelLayout::new(image_size).bytes();
        if acc.pixel_sums.len() != expected {
            return Err(StateError::Npy {
                path: shown,
                source: npy::NpyError::Shape {
                    path: String::new(),
                    expected: vec![expected as u64],
                    found: vec![acc.pixel_sums.len() as u64],
                },
            });
        }
        acc.images = self.train_sums.images;
        acc.channel_sums = self.train_sums.channel_sums;
        acc.product_sums = self.train_sums.product_sums;
        Ok(acc)
    }

    /// Records the training sums after `self.train.shards_done` shards and saves
    /// the state; the previous sums file is removed only after the new state is in place.
    pub fn save_with_sums(
        &mut self,
        dir: &Path,
        sums: &mut StatsAccumulator,
    ) -> Result<(), StateError> {
        sums.settle();
        std::fs::create_dir_all(dir).map_err(|source| StateError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let path = dir.join(sums_file(self.train.shards_done));
        npy::write(&path, &[sums.pixel_sums.len() as u64], &sums.pixel_sums).map_err(|source| {
            StateError::Npy {
                path: path.display().to_string(),
                source,
            }
        })?;
        self.train_sums = SmallSums {
            images: sums.images,
            channel_sums: sums.channel_sums,
            product_sums: sums.product_sums,
        };
        self.save(dir)?;
        if let Some(previous) = self.train.shards_done.checked_sub(1) {
            // Best effort: a leftover from a crash is harmless, state.json names the live file.
            let _ = std::fs::remove_file(dir.join(sums_file(previous)));
        }
        Ok(())
    }

    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        std::fs::create_dir_all(dir).map_err(|source| StateError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let path = dir.join(STATE_FILE);
        let json = serde_json::to_string_pretty(self).expect("state always serialises");
        atomic::write_file(&path, json.as_bytes()).map_err(|source| StateError::Io {
            path: path.display().to_string(),
            source,
        })
    }
}
