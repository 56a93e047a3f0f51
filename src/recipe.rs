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

/// The key naming the recipe a recipe is a diff of (`base = "../sample.toml"`, relative
/// to the file that says it). It is consumed while loading: resolved recipes have none.
const BASE_KEY: &str = "base";
/// A chain of bases longer than this is a loop.
const MAX_BASE_DEPTH: usize = 8;

impl Recipe {
    /// Reads and validates a recipe file; errors name the file and the offending key.
    /// A recipe with `base = "FILE"` is that recipe with this file's keys laid over it.
    pub fn load(path: &Path) -> Result<Self, RecipeError> {
        Self::load_with_overlays(path, &[])
    }

    /// `load`, then each overlay (a recipe fragment: only the keys it changes) laid over
    /// the result in order, before the whole is checked. An experiment's protocol (fewer
    /// epochs for every recipe) is such an overlay.
    pub fn load_with_overlays(path: &Path, overlays: &[&Path]) -> Result<Self, RecipeError> {
        // An error names the recipe and the overlays laid over it.
        let shown = std::iter::once(path)
            .chain(overlays.iter().copied())
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" + ");
        let text = read_text(path)?;
        let plain = overlays.is_empty() && !text_has_base(&text);
        let recipe: Recipe = if plain {
            // The direct parse keeps toml's line-and-column messages.
            toml::from_str(&text).map_err(|source| RecipeError::Parse {
                path: shown.clone(),
                source,
            })?
        } else {
            let mut table = load_table(path, 0)?;
            for overlay in overlays {
                let mut layer = load_table(overlay, 0)?;
                layer.remove(BASE_KEY);
                merge_into(&mut table, layer);
            }
            toml::Value::Table(table)
                .try_into()
                .map_err(|source| RecipeError::Parse {
                    path: shown.clone(),
                    source,
                })?
        };
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

fn read_text(path: &Path) -> Result<String, RecipeError> {
    std::fs::read_to_string(path).map_err(|source| RecipeError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Whether the file names a base (a cheap look before the full table walk).
fn text_has_base(text: &str) -> bool {
    text.lines()
        .take_while(|l| !l.trim_start().starts_with('['))
        .any(|l| l.trim_start().starts_with(BASE_KEY))
}

/// The file as a TOML table with its base (if any) resolved underneath it.
fn load_table(path: &Path, depth: usize) -> Result<toml::Table, RecipeError> {
    let shown = path.display().to_string();
    let mut table: toml::Table =
        toml::from_str(&read_text(path)?).map_err(|source| RecipeError::Parse {
            path: shown.clone(),
            source,
        })?;
    let Some(base) = table.remove(BASE_KEY) else {
        return Ok(table);
    };
    let invalid = |message: String| RecipeError::Invalid {
        path: shown.clone(),
        message,
    };
    let base = base
        .as_str()
        .ok_or_else(|| invalid(format!("{BASE_KEY} must be a file name, got {base}")))?;
    if depth >= MAX_BASE_DEPTH {
        return Err(invalid(format!(
            "{BASE_KEY} = {base:?}: more than {MAX_BASE_DEPTH} bases deep (a loop?)"
        )));
    }
    let base_path = path.parent().unwrap_or(Path::new(".")).join(base);
    let mut merged = load_table(&base_path, depth + 1)?;
    merge_into(&mut merged, table);
    Ok(merged)
}

/// Lays `top` over `bottom`: tables merge key by key, any other value replaces.
fn merge_into(bottom: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        match (bottom.get_mut(&key), value) {
            (Some(toml::Value::Table(below)), toml::Value::Table(above)) => {
                merge_into(below, above)
            }
            (_, value) => {
                bottom.insert(key, value);
            }
        }
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

    /// Every ablation is sample.toml plus its own keys, and nothing else.
    #[test]
    fn ablations_are_the_sample_with_their_keys() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline");
        let sample = Recipe::load(&root.join("sample.toml")).unwrap();
        let load = |name: &str| Recipe::load(&root.join("ablations").join(name)).unwrap();
        let tanh = load("tanh.toml");
        assert_eq!(tanh.model.activation, crate::model::Activation::Tanh);
        assert_eq!(
            Recipe {
                model: sample.model,
                ..tanh.clone()
            },
            sample
        );
        let tanh0 = load("tanh-bias0.toml").model;
        assert_eq!(
            (tanh0.activation, tanh0.init_bias_one),
            (tanh.model.activation, false)
        );
        assert!(!load("no-lrn.toml").model.lrn.enabled);
        assert_eq!(load("no-dropout.toml").model.dropout, 0.0);
        assert_eq!(load("no-pca.toml").stream.lighting_std, 0.0);
        let crops = load("no-crops.toml").stream;
        assert!(!crops.random_crop && !crops.flip);
        let pool = load("pool-2x2.toml").model.pool;
        assert_eq!((pool.size, pool.stride), (2, 2));
        let one = load("one-group.toml").model;
        assert_eq!((one.groups, one.conv_scale), (1, [0.5, 0.5, 0.5, 0.5, 1.0]));
    }

    #[test]
    fn overlays_and_bases_merge_and_still_refuse_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.toml");
        std::fs::write(&base, "[train]\nepochs = 7\nlr = 0.5\n").unwrap();
        let diff = dir.path().join("diff.toml");
        std::fs::write(&diff, "base = \"base.toml\"\n[train]\nlr = 0.25\n").unwrap();
        let overlay = dir.path().join("protocol.toml");
        std::fs::write(&overlay, "[train]\nepochs = 2\n").unwrap();
        let r = Recipe::load(&diff).unwrap();
        assert_eq!((r.train.epochs, r.train.lr), (7, 0.25));
        let r = Recipe::load_with_overlays(&diff, &[overlay.as_path()]).unwrap();
        assert_eq!((r.train.epochs, r.train.lr), (2, 0.25));
        std::fs::write(&overlay, "[train]\nepoch = 2\n").unwrap();
        let err = Recipe::load_with_overlays(&diff, &[overlay.as_path()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("epoch") && err.contains("diff.toml"), "{err}");
        std::fs::write(&diff, "base = \"diff.toml\"\n").unwrap();
        let err = Recipe::load(&diff).unwrap_err().to_string();
        assert!(err.contains("loop"), "{err}");
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
