//! [`TrainedRun`]: a run opened for inference.

use std::path::{Path, PathBuf};

use candle_core::Device;

use super::card::ModelCard;
use super::checkpoint::{self, Tensors};
use super::compat::{self, Against};
use super::dir::RunDir;
use super::error::RunError;
use super::net;
use crate::dataset::Split;
use crate::model::AlexNet;
use crate::recipe::Recipe;
use crate::stream::DataSource;

/// Which checkpoint of a run to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WhichCheckpoint {
    /// The lowest validation top-1 error seen during training.
    Best,
    /// The newest.
    Last,
}

/// A trained network ready to predict: the run's card and weights on a device. Built
/// by [`TrainedRun::open`] only; never holds the momentum or the trainer's state.
pub struct TrainedRun {
    dir: RunDir,
    recipe: Recipe,
    checkpoint: PathBuf,
    card: ModelCard,
    model: AlexNet,
    device: Device,
}

impl TrainedRun {
    /// Opens `which` checkpoint of the run in `run` for inference on `device`: reads its
    /// card and its weights (verified by the checkpoint's digest), not the momentum.
    ///
    /// Fails, naming the path, when `run` is not a run directory, has no such
    /// checkpoint yet, or the checkpoint is damaged or does not match its card.
    /// Checkpoints of format version 1 open too (see [`checkpoint`]).
    pub fn open(run: &Path, which: WhichCheckpoint, device: &Device) -> Result<Self, RunError> {
        let dir = RunDir::open(run)?;
        let recipe = dir.load_recipe()?;
        let path = dir.checkpoint(which)?;
        let read = checkpoint::load(&dir, &path, Tensors::Weights, device)?;
        let card = read.card;
        let net = net::from_checkpoint(
            &card.model,
            card.input_size,
            card.classes.len(),
            &read.tensors,
            &path,
            device,
        )?;
        Ok(Self {
            dir,
            recipe,
            checkpoint: path,
            card,
            model: net.model,
            device: device.clone(),
        })
    }

    /// The network, in eval mode when called with no dropout RNG.
    pub fn model(&self) -> &AlexNet {
        &self.model
    }

    /// What the network is: architecture, input side, classes, dataset, recipe.
    pub fn card(&self) -> &ModelCard {
        &self.card
    }

    /// The run's recipe (`RUN/recipe.toml`): how its images were decoded and streamed.
    pub fn recipe(&self) -> &Recipe {
        &self.recipe
    }

    /// The checkpoint file the weights came from.
    pub fn checkpoint(&self) -> &Path {
        &self.checkpoint
    }

    pub fn dir(&self) -> &RunDir {
        &self.dir
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The side of the network's square input.
    pub fn input_size(&self) -> usize {
        self.card.input_size
    }

    /// Opens `split` of `dataset` (None: the one the run was trained on), refusing a
    /// dataset the network cannot read ([`compat::check`]).
    pub fn open_dataset(
        &self,
        dataset: Option<&Path>,
        split: Split,
    ) -> Result<DataSource, RunError> {
        let dataset = match dataset {
            Some(d) => d.to_path_buf(),
            None => self.dir.trained_dataset(&self.card)?,
        };
        compat::open_split(&dataset, split, self.against())
    }

    /// This run as the other side of the compatibility check.
    pub fn against(&self) -> Against<'_> {
        Against::Run {
            dir: &self.dir,
            recipe: &self.recipe,
            card: &self.card,
            checkpoint: &self.checkpoint,
        }
    }
}
