//! The bundled real sample: a Fashion-MNIST subset rendered as a small ImageNet.
//!
//! `render` writes 10 classes (Fashion-MNIST labels under real ImageNet wnids, see
//! `classes.rs`) in any of the three layouts ImageNet ships in, with ImageNet-like image
//! sizes, a mix of gray and colour JPEGs, and the file quirks real ImageNet has (see
//! `quirks.rs`). Same options, same bytes: the tree is a reproducible test fixture.
//!
//! Files: `idx.rs` the embedded data, `picture.rs` one image, `render.rs` the tree,
//! `layout.rs` paths and label files; the devkit's class ids live in `ingest::devkit`.

mod classes;
mod error;
mod idx;
mod layout;
mod picture;
mod quirks;
mod render;

use std::path::PathBuf;

pub use classes::{CLASSES, SampleClass};
pub use error::SampleError;
pub use layout::SampleLayout;
pub use render::render;

/// Most train images per class the bundled subset holds.
pub const MAX_TRAIN_PER_CLASS: usize = 600;
/// Most val images per class the bundled subset holds.
pub const MAX_VAL_PER_CLASS: usize = 100;
/// Largest short side accepted: keeps the long side (4/3 of it) far inside JPEG's 65535
/// limit and one image's buffers in the tens of megabytes.
pub const MAX_SHORT_SIDE_LIMIT: u32 = 4096;

/// What to render and where.
#[derive(Clone, Debug)]
pub struct SampleOptions {
    /// Folder to render into: missing, empty, or an earlier sample render.
    pub out: PathBuf,
    /// Which ImageNet distribution's folder layout to copy.
    pub layout: SampleLayout,
    /// Everything random (sizes, tints, val order) follows from this.
    pub seed: u64,
    /// Train images per class, 1..=600 (the first ones of each class in the subset).
    pub train_per_class: usize,
    /// Val images per class, 1..=100.
    pub val_per_class: usize,
    /// Shorter image side is drawn uniformly from `min_short_side..=max_short_side`;
    /// 256..=500 spans what AlexNet's 256-pixel rescale meets in ImageNet.
    pub min_short_side: u32,
    pub max_short_side: u32,
    /// Share of images tinted into colour (RGB JPEGs); the rest stay 1-channel gray.
    pub colour_share: f64,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            out: PathBuf::from("sample"),
            layout: SampleLayout::Folders,
            seed: 0,
            train_per_class: MAX_TRAIN_PER_CLASS,
            val_per_class: MAX_VAL_PER_CLASS,
            min_short_side: 256,
            max_short_side: 500,
            colour_share: 0.5,
        }
    }
}

impl SampleOptions {
    /// Checks every field's range; the error names the field.
    pub fn validate(&self) -> Result<(), SampleError> {
        let bad = |key, value: String, reason| Err(SampleError::BadOption { key, value, reason });
        if !(1..=MAX_TRAIN_PER_CLASS).contains(&self.train_per_class) {
            return bad(
                "train_per_class",
                self.train_per_class.to_string(),
                "must be 1..=600",
            );
        }
        if !(1..=MAX_VAL_PER_CLASS).contains(&self.val_per_class) {
            return bad(
                "val_per_class",
                self.val_per_class.to_string(),
                "must be 1..=100",
            );
        }
        if self.min_short_side == 0 {
            return bad("min_short_side", "0".into(), "must be at least 1");
        }
        if self.max_short_side < self.min_short_side {
            return bad(
                "max_short_side",
                self.max_short_side.to_string(),
                "must be >= min_short_side",
            );
        }
        if self.max_short_side > MAX_SHORT_SIDE_LIMIT {
            return bad(
                "max_short_side",
                self.max_short_side.to_string(),
                "must be <= 4096",
            );
        }
        if !(0.0..=1.0).contains(&self.colour_share) {
            return bad(
                "colour_share",
                self.colour_share.to_string(),
                "must be within 0..=1",
            );
        }
        Ok(())
    }
}

/// What a render produced.
#[derive(Clone, Debug)]
pub struct SampleSummary {
    pub train_images: usize,
    pub val_images: usize,
    /// Files with a planted quirk (paths relative to `out`) and what the quirk is.
    pub quirks: Vec<(PathBuf, &'static str)>,
}

/// The lines the CLI prints after a render.
pub fn main_summary_lines(summary: &SampleSummary) -> Vec<String> {
    let mut lines = vec![format!(
        "sample: {} train + {} val images in {} classes",
        summary.train_images,
        summary.val_images,
        CLASSES.len()
    )];
    lines.push("planted quirks (train split, labels kept):".into());
    lines.extend(
        summary
            .quirks
            .iter()
            .map(|(path, what)| format!("  {}  {what}", path.display())),
    );
    lines
}

#[cfg(test)]
mod tests;
