//! The run directory: everything one training run writes.
//!
//! ```text
//! RUN/recipe.toml          the resolved recipe (command-line overrides applied)
//! RUN/run.json             the dataset trained on and its classes (the checkpoints'
//!                          model cards say it too; `--resume` reads this one)
//! RUN/metrics.jsonl        one JSON object per finished epoch
//! RUN/checkpoints/step-NNNNNNNN.safetensors   the last `train.keep_last` checkpoints
//! RUN/checkpoints/best.safetensors            the lowest validation top-1 error
//! RUN/checkpoints/step-….safetensors.damaged  one that failed its digest, moved aside by --resume
//! RUN/summary.json         written when the run finishes its last epoch
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::card::ModelCard;
use super::checkpoint::{self, BEST_FILE};
use super::error::{RunError, io};
use super::trained::WhichCheckpoint;
use crate::dataset::atomic;
use crate::recipe::Recipe;

/// Where bare `pipeline train` creates its numbered runs.
pub const RUNS_ROOT: &str = "runs";

/// What a run was trained on, so `--resume` and `eval` can find and check the data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The dataset directory (absolute when it could be resolved).
    pub dataset: PathBuf,
    /// wnids in class-index order.
    pub classes: Vec<String>,
    /// Learned parameters of the network.
    pub parameters: usize,
}

/// Paths inside one run directory.
#[derive(Clone, Debug)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn recipe(&self) -> PathBuf {
        self.path.join("recipe.toml")
    }

    pub fn info(&self) -> PathBuf {
        self.path.join("run.json")
    }

    pub fn metrics(&self) -> PathBuf {
        self.path.join("metrics.jsonl")
    }

    pub fn summary(&self) -> PathBuf {
        self.path.join("summary.json")
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.path.join("checkpoints")
    }

    pub fn best(&self) -> PathBuf {
        self.checkpoints().join(BEST_FILE)
    }

    /// The newest step checkpoint, if any.
    pub fn last_checkpoint(&self) -> Result<Option<PathBuf>, RunError> {
        Ok(checkpoint::list_steps(&self.checkpoints())?
            .pop()
            .map(|(_, p)| p))
    }

    /// The file of `which` checkpoint; an error naming it when there is none yet.
    pub fn checkpoint(&self, which: WhichCheckpoint) -> Result<PathBuf, RunError> {
        let path = match which {
            WhichCheckpoint::Best => self.best(),
            WhichCheckpoint::Last => self
                .last_checkpoint()?
                .unwrap_or_else(|| self.checkpoints().join("step-*.safetensors")),
        };
        if !path.exists() {
            return Err(RunError::Run {
                path: self.path.display().to_string(),
                message: format!(
                    "has no checkpoint {} yet (has it finished an epoch?)",
                    path.display()
                ),
            });
        }
        Ok(path)
    }

    /// The dataset the run was trained on: `run.json`'s (written when the run began),
    /// else the one `card` names.
    pub fn trained_dataset(&self, card: &ModelCard) -> Result<PathBuf, RunError> {
        if self.info().exists() || card.dataset.location.is_empty() {
            return Ok(self.load_info()?.dataset);
        }
        Ok(PathBuf::from(&card.dataset.location))
    }

    /// Refuses a `path` that already holds a run (resume it instead).
    pub fn ensure_free(path: &Path) -> Result<(), RunError> {
        let run = Self::new(path);
        if run.recipe().exists() || run.last_checkpoint()?.is_some() {
            return Err(RunError::Run {
                path: path.display().to_string(),
                message: format!(
                    "already holds a run; continue it with `pipeline train --resume {}` or pick another --out",
                    path.display()
                ),
            });
        }
        Ok(())
    }

    /// A fresh run at `path`: refused if it already holds a run.
    pub fn create(path: &Path) -> Result<Self, RunError> {
        Self::ensure_free(path)?;
        let run = Self::new(path);
        std::fs::create_dir_all(run.checkpoints()).map_err(io(path))?;
        Ok(run)
    }

    /// The next free `ROOT/run-NNNN`, created (so two concurrent runs cannot take it).
    pub fn create_numbered(root: &Path) -> Result<Self, RunError> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        let mut n = std::fs::read_dir(root)
            .map_err(io(root))?
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_prefix("run-")?
                    .parse::<u32>()
                    .ok()
            })
            .max()
            .unwrap_or(0);
        loop {
            n += 1;
            let path = root.join(format!("run-{n:04}"));
            match std::fs::create_dir(&path) {
                Ok(()) => return Self::create(&path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io(&path)(e)),
            }
        }
    }

    /// An existing run (for `--resume` and `eval`): it must have its recipe.
    pub fn open(path: &Path) -> Result<Self, RunError> {
        let run = Self::new(path);
        if !run.recipe().exists() {
            return Err(RunError::Run {
                path: path.display().to_string(),
                message: "is not a run directory (no recipe.toml); start one with `pipeline train --out DIR`".into(),
            });
        }
        Ok(run)
    }

    pub fn write_recipe(&self, recipe: &Recipe) -> Result<(), RunError> {
        let path = self.recipe();
        let text = format!(
            "# The resolved recipe of this run (command-line overrides applied); `--resume` reads it.\n{}",
            recipe.to_toml()
        );
        atomic::write_file(&path, text.as_bytes()).map_err(io(&path))
    }

    pub fn load_recipe(&self) -> Result<Recipe, RunError> {
        Ok(Recipe::load(&self.recipe())?)
    }

    pub fn write_info(&self, info: &RunInfo) -> Result<(), RunError> {
        let path = self.info();
        let json = serde_json::to_string_pretty(info).expect("run info serialises");
        atomic::write_file(&path, json.as_bytes()).map_err(io(&path))
    }

    pub fn load_info(&self) -> Result<RunInfo, RunError> {
        let path = self.info();
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        serde_json::from_str(&text).map_err(|e| RunError::Run {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }
}

/// The run given, or else the newest under `runs/`.
pub fn run_or_newest(run: Option<PathBuf>) -> Result<PathBuf, RunError> {
    match run {
        Some(run) => Ok(run),
        None => newest_run(Path::new(RUNS_ROOT)),
    }
}

/// The newest run under `root` (`runs/run-NNNN`, highest number).
pub fn newest_run(root: &Path) -> Result<PathBuf, RunError> {
    let newest = std::fs::read_dir(root)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| RunDir::new(e.path()).recipe().exists())
        .map(|e| e.path())
        .max();
    newest.ok_or_else(|| RunError::Run {
        path: root.display().to_string(),
        message: "holds no run; train one with `pipeline train`".into(),
    })
}
