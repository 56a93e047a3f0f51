//! Construction errors of the augmentation stage. Each names the sizes involved, so a
//! recipe or a `mean.npy` that does not match the dataset is diagnosed from the message.

/// Why an augmentation component could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AugmentError {
    /// The training crop must fit inside the stored square image.
    #[error("crop side {crop} is larger than the source side {source_side}")]
    CropLargerThanSource { crop: usize, source_side: usize },

    /// A zero-sized crop would produce empty batches and hide a config mistake.
    #[error("crop side must be at least 1 pixel, got 0")]
    EmptyCrop,

    /// `mean.npy` must hold one RGB value per source pixel (H×W×3).
    #[error(
        "mean image for a {side}×{side} source must hold {expected} values ({side}×{side}×3), got {actual}"
    )]
    MeanImageSize {
        side: usize,
        expected: usize,
        actual: usize,
    },

    /// The per-pixel mean is indexed by source pixel, so it must have the source's side.
    #[error(
        "mean image is {mean_side}×{mean_side} but source images are {source_side}×{source_side}"
    )]
    MeanSideMismatch {
        mean_side: usize,
        source_side: usize,
    },

    /// αᵢ ~ N(0, std) needs a finite, non-negative std.
    #[error("lighting std must be finite and ≥ 0, got {0}")]
    LightingStd(f32),
}
