//! The one compatibility check: does this dataset fit this recipe, and this run's model
//! card? Train (new and resumed), eval, export-features, neighbors and classify all open
//! the dataset they read through [`open_split`], so they refuse the same misfits with the
//! same error ([`Incompatible`]), which names both sides.

use std::path::Path;

use super::card::ModelCard;
use super::dir::RunDir;
use super::error::{Incompatible, Mismatch, RunError};
use crate::dataset::Split;
use crate::recipe::Recipe;
use crate::stream::DataSource;

/// What a dataset is checked against.
#[derive(Clone, Copy)]
pub enum Against<'a> {
    /// A recipe alone (a new run, or a stage that streams a dataset).
    Recipe(&'a Recipe),
    /// A trained run: the card of the checkpoint being read, and the run's recipe (which
    /// `--resume` trains on, so it must still describe the card's network).
    Run {
        dir: &'a RunDir,
        recipe: &'a Recipe,
        card: &'a ModelCard,
        checkpoint: &'a Path,
    },
}

impl Against<'_> {
    fn recipe(&self) -> &Recipe {
        match self {
            Against::Recipe(recipe) | Against::Run { recipe, .. } => recipe,
        }
    }
}

/// Opens `split` of `dataset` for streaming with the recipe's stream settings, and
/// refuses it if it does not fit `against`.
pub fn open_split(dataset: &Path, split: Split, against: Against) -> Result<DataSource, RunError> {
    let source = DataSource::open(dataset, split, against.recipe().stream.clone())?;
    check(&source, against)?;
    Ok(source)
}

/// The check itself, for a split already open (the trainer checks its training split
/// against the recipe, then, once the checkpoint is read, against the run).
pub fn check(source: &DataSource, against: Against) -> Result<(), Box<Incompatible>> {
    let refuse = |mismatch| {
        Err(Box::new(Incompatible {
            dataset: source.dataset.display().to_string(),
            mismatch,
        }))
    };
    let stored = source.image_size();
    let (dir, recipe, card, checkpoint) = match against {
        Against::Recipe(recipe) => {
            if stored != recipe.data.image_size {
                return refuse(Mismatch::RecipeImageSize {
                    stored,
                    recipe: recipe.data.image_size,
                });
            }
            return Ok(());
        }
        Against::Run {
            dir,
            recipe,
            card,
            checkpoint,
        } => (dir, recipe, card, checkpoint),
    };
    if stored != card.dataset.image_size {
        let own = &card.dataset.location;
        let own = if own.is_empty() || Path::new(own) == source.dataset {
            String::new()
        } else {
            format!(", or leave --dataset out to use the run's own ({own})")
        };
        return refuse(Mismatch::RunImageSize {
            stored,
            trained: card.dataset.image_size,
            run: dir.path.display().to_string(),
            own,
        });
    }
    let wnids: Vec<&str> = source
        .manifest
        .classes
        .iter()
        .map(|c| c.wnid.as_str())
        .collect();
    let trained = card.wnids();
    if wnids != trained {
        let differ = wnids
            .iter()
            .zip(&trained)
            .position(|(a, b)| a != b)
            .map_or(String::new(), |i| {
                format!("; class {i} is {} there but {} here", trained[i], wnids[i])
            });
        return refuse(Mismatch::Classes {
            found: wnids.len(),
            trained: trained.len(),
            checkpoint: checkpoint.display().to_string(),
            differ,
        });
    }
    if !card.model.same_network(&recipe.model) || card.input_size != recipe.data.crop_size {
        return refuse(Mismatch::Network {
            checkpoint: checkpoint.display().to_string(),
            card: Box::new(card.model),
            card_crop: card.input_size,
            recipe: dir.recipe().display().to_string(),
            recipe_model: Box::new(recipe.model),
            recipe_crop: recipe.data.crop_size,
        });
    }
    Ok(())
}
