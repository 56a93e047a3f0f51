//! Which runs an experiment is made of: every recipe × seed, each in `EXP/NAME-sSEED/`.

use std::path::{Path, PathBuf};

use super::ExperimentError;
use crate::recipe::Recipe;
use crate::run::RunDir;

/// One run of the experiment.
#[derive(Clone, Debug)]
pub struct PlannedRun {
    /// The recipe's file stem (`sample`, `tanh`, …): the row of the comparison.
    pub name: String,
    pub seed: u64,
    /// The resolved recipe, the seed and the protocol applied.
    pub recipe: Recipe,
    pub dir: PathBuf,
}

/// How far a planned run has got on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Nothing there yet.
    New,
    /// Started and not finished: resumed from its newest checkpoint.
    Unfinished,
    /// Every epoch done (`summary.json` written): skipped.
    Finished,
}

/// Every recipe × seed: seed 0 of every recipe (in the order given), then seed 1 of
/// every recipe, …, so an experiment cut short still compares every recipe. Seed `s`
/// adds `s` to both `train.seed` (weights, dropout) and `stream.seed` (row order,
/// shuffle, augmentation draws): seed 0 is the recipe as written.
pub fn plan(
    recipes: &[PathBuf],
    protocol: Option<&Path>,
    seeds: u64,
    out: &Path,
) -> Result<Vec<PlannedRun>, ExperimentError> {
    if seeds == 0 {
        return Err(ExperimentError::Invalid(
            "--seeds must be at least 1".into(),
        ));
    }
    let overlays: Vec<&Path> = protocol.into_iter().collect();
    let mut names: Vec<String> = Vec::new();
    let mut bases = Vec::new();
    for path in recipes {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ExperimentError::Invalid(format!(
                    "{}: a recipe needs a UTF-8 file name (it names the run)",
                    path.display()
                ))
            })?
            .to_string();
        if names.contains(&name) {
            return Err(ExperimentError::Invalid(format!(
                "{}: two recipes are named {name:?}; each recipe's file name names its runs",
                path.display()
            )));
        }
        names.push(name.clone());
        bases.push((name, Recipe::load_with_overlays(path, &overlays)?));
    }
    let mut runs = Vec::new();
    for seed in 0..seeds {
        for (name, base) in &bases {
            let mut recipe = base.clone();
            recipe.train.seed = base.train.seed.wrapping_add(seed);
            recipe.stream.seed = base.stream.seed.wrapping_add(seed);
            runs.push(PlannedRun {
                dir: out.join(format!("{name}-s{seed}")),
                name: name.clone(),
                seed,
                recipe,
            });
        }
    }
    Ok(runs)
}

impl PlannedRun {
    /// Where the run stands, refusing one that was trained with another recipe (the
    /// recipe file changed since): its numbers would be compared under the wrong name.
    pub fn state(&self) -> Result<RunState, ExperimentError> {
        let run = RunDir::new(&self.dir);
        if !run.recipe().exists() {
            return Ok(RunState::New);
        }
        let mut recorded = run.load_recipe()?;
        // The device may differ between sessions (resumed on a GPU): the same run.
        recorded.train.device = self.recipe.train.device.clone();
        if recorded != self.recipe {
            return Err(ExperimentError::Invalid(format!(
                "{} was trained with another recipe than {}'s (seed {}) now resolves to; \
                 remove the run or choose another --out",
                self.dir.display(),
                self.name,
                self.seed
            )));
        }
        Ok(if run.summary().exists() {
            RunState::Finished
        } else {
            RunState::Unfinished
        })
    }
}
