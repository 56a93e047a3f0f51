//! Recipes: TOML files naming every knob of every stage (`pipeline/*.toml`).
//!
//! Each stage owns its section's struct and its `Default` (the paper's values);
//! this file only composes them. Unknown keys are errors, so a typo in a recipe
//! fails loudly instead of silently training something else.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ingest::IngestConfig;
use crate::model::ModelConfig;
use crate::stream::StreamConfig;

// The `[train]` section lives with the recipe rather than in `train/`: the trainer reads
// every section, so a recipe that reached back into `train/` would make the two import
// each other.
pub mod train;
pub use train::TrainConfig;

/// `[data]`: the geometry shared by ingest (what is stored) and training (what is fed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// S: the shorter side is resized to S, then the centre S×S patch is kept (paper: 256).
    pub image_size: usize,
    /// S': the side of the random training crop and of the evaluation crops (paper: 224).
    pub crop_size: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            image_size: 256,
            crop_size: 224,
        }
    }
}

/// A whole recipe: one section per stage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Recipe {
    pub data: DataConfig,
    pub ingest: IngestConfig,
    pub stream: StreamConfig,
    /// The network (AlexNet's architecture and initialisation).
    pub model: ModelConfig,
    /// The optimiser, schedule, device and checkpoints.
    pub train: TrainConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("cannot read recipe {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("recipe {path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("recipe {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Recipe {
    /// Reads and validates a recipe file; errors name the file and the offending key.
    pub fn load(path: &Path) -> Result<Self, RecipeError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Read {
            path: shown.clone(),
            source,
        })?;
        let recipe: Recipe = toml::from_str(&text).map_err(|source| RecipeError::Parse {
            path: shown.clone(),
            source,
        })?;
        recipe.validate().map_err(|message| RecipeError::Invalid {
            path: shown,
            message,
        })?;
        Ok(recipe)
    }

    /// Cross-section checks that serde cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.data.crop_size > self.data.image_size {
            return Err(format!(
                "data.crop_size ({}) is larger than data.image_size ({})",
                self.data.crop_size, self.data.image_size
            ));
        }
        if self.data.image_size == 0 {
            return Err("data.image_size must be positive".into());
        }
        self.ingest.validate()?;
        self.stream.validate()?;
        self.model.validate().map_err(|e| e.to_string())?;
        self.train.validate()
    }

    /// Loads `path`, or the built-in paper recipe when no path is given.
    pub fn load_or_default(path: Option<&Path>) -> Result<Self, RecipeError> {
        path.map_or_else(|| Ok(Recipe::default()), Recipe::load)
    }

    /// The resolved recipe as TOML, saved into every run and dataset.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a recipe always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped recipes parse, validate and round-trip through `to_toml`.
    #[test]
    fn shipped_recipes_load_and_round_trip() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline");
        let paper = Recipe::load(&root.join("paper.toml")).unwrap();
        assert_eq!(
            paper,
            Recipe::default(),
            "paper.toml must be the paper (the defaults)"
        );
        let sample = Recipe::load(&root.join("sample.toml")).unwrap();
        assert_eq!(sample.train.device, "cpu");
        for recipe in [paper, sample] {
            let back: Recipe = toml::from_str(&recipe.to_toml()).unwrap();
            assert_eq!(back, recipe);
        }
    }

    #[test]
    fn unknown_and_invalid_train_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.toml");
        std::fs::write(&path, "[train]\nepoch = 3\n").unwrap();
        let err = Recipe::load(&path).unwrap_err().to_string();
        assert!(err.contains("epoch") && err.contains("r.toml"), "{err}");
        std::fs::write(&path, "[train]\nlr = -1.0\n").unwrap();
        let err = Recipe::load(&path).unwrap_err().to_string();
        assert!(err.contains("train.lr"), "{err}");
        std::fs::write(&path, "[model]\nwidth = 0.0\n").unwrap();
        let err = Recipe::load(&path).unwrap_err().to_string();
        assert!(err.contains("model.width"), "{err}");
    }
}
