//! Augmentation (paper §4.1): random crops and mirrors for training, ten-crop views for
//! testing, mean subtraction, and PCA colour ("lighting") noise.
//!
//! Input: one stored image, row-major HWC RGB u8, `S×S` (256 in the paper). Output: one
//! `3×C×C` f32 slot of an NCHW batch (224 in the paper), in 0–255 units.
//!
//! Each operation lives in its own file as a pure function; `write_chw` fuses them into
//! one pass over the pixels, and `Augmenter` bundles the per-run configuration.

mod augmenter;
mod chw;
mod crop;
mod error;
mod flip;
mod lighting;
mod mean;
mod ten_crop;
mod view;

pub use augmenter::{Augmenter, TrainViews};
pub use chw::{write_chw, write_chw_visiting};
pub use crop::{centre_view, random_view};
pub use error::AugmentError;
pub use flip::{mirrored, source_column};
pub use lighting::{Pca, draw_alphas, lighting_offset};
pub use mean::{MeanImage, MeanSubtraction};
pub use ten_crop::ten_crop_views;
pub use view::{Geometry, View};
