//! The model card: what a trained network *is*, apart from how far its training got.
//!
//! Everything a reader of the weights needs and nothing the optimiser needs: the
//! architecture, the input side it was built for, its outputs (the classes, with names),
//! the dataset it learned from, and the recipe that trained it. Inference (eval,
//! classify, export-features, neighbors) reads only this and the weights.

use serde::{Deserialize, Serialize};

use crate::dataset::manifest::ClassInfo;
use crate::model::ModelConfig;

/// Version of the checkpoint layout that carries a card: model card and trainer state
/// apart. Version 1 held both in one JSON object (read by [`super::checkpoint`]'s
/// reader of the old format).
pub const CARD_FORMAT_VERSION: u32 = 2;

/// What a trained network is. Saved in every checkpoint (so a checkpoint file alone
/// can be used) under [`super::checkpoint::CARD_KEY`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub format_version: u32,
    /// The architecture (`[model]` of the recipe).
    pub model: ModelConfig,
    /// The side of the square input the network was built for (`data.crop_size`).
    pub input_size: usize,
    /// The network's outputs in order: output `i` is `classes[i]`.
    pub classes: Vec<ClassInfo>,
    /// The dataset the weights learned from.
    pub dataset: DatasetIdentity,
    /// The resolved recipe the run was trained with, as TOML.
    pub recipe: String,
    /// How much training these weights have had.
    pub trained: TrainedFor,
}

/// Which dataset a run learned from: enough to find it again and to refuse another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetIdentity {
    /// Its folder (absolute when it could be resolved) or URL.
    pub location: String,
    /// S: the side of its stored images.
    pub image_size: usize,
}

/// The training behind a set of weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainedFor {
    /// Finished epochs.
    pub epochs: u64,
    /// Optimiser steps.
    pub steps: u64,
}

impl ModelCard {
    /// The classes' wnids in output order.
    pub fn wnids(&self) -> Vec<&str> {
        self.classes.iter().map(|c| c.wnid.as_str()).collect()
    }
}
