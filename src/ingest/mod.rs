//! `pipeline ingest`: ImageNet folders → a dataset directory of Parquet shards of
//! S×S centre crops, with the training-set mean image and RGB PCA.
//!
//! Stages: [`layout`] finds images and labels, [`decode`] turns bytes into
//! pixels, [`resize`] makes the centre crop, [`stats`] accumulates the mean and
//! covariance, [`run`] orchestrates shards with resume, [`state`] remembers
//! what is finished, [`parts`] splits the shards among independent runs and merges them,
//! [`publish`] uploads a dataset to an object store as it is written.

pub mod decode;
pub mod devkit;
pub mod layout;
pub mod parts;
pub mod publish;
pub mod resize;
pub mod run;
pub mod state;
pub mod stats;

use serde::{Deserialize, Serialize};

pub use crate::dataset::Encoding;
pub use resize::ResizeFilter;
pub use run::{IngestError, IngestOptions, IngestSummary, ingest};

/// `[ingest]`: how shards are laid out and images decoded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Rows per Parquet shard. At S = 256 a row is 192 KiB, so 1024 rows ≈ 200 MB:
    /// big enough for sequential reads, small enough to redo after a crash.
    pub rows_per_shard: usize,
    /// Rows per row group, the unit the stream reads and shuffles (64 ≈ 12.6 MB at S = 256).
    pub rows_per_row_group: usize,
    /// Resampling filter for the shorter-side resize (Pillow's BILINEAR by default).
    pub filter: ResizeFilter,
    /// Seed of the order training rows are written in (so every shard mixes classes).
    pub seed: u64,
    /// Images with more pixels than this are refused as decompression bombs
    /// (Pillow's default limit).
    pub max_pixels: u64,
    /// How each S×S crop is stored: "raw" (S·S·3 bytes, no decode when streamed) or
    /// "jpeg" (encoded once here; decoded by the stream's augmentation workers).
    pub encoding: Encoding,
    /// JPEG quality, 1–100 (jpeg only; 4:2:0 chroma below 90, 4:4:4 from 90 on).
    pub quality: u8,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            rows_per_shard: 1024,
            rows_per_row_group: 64,
            filter: ResizeFilter::Bilinear,
            seed: 0,
            max_pixels: 89_478_485,
            encoding: Encoding::Raw,
            quality: DEFAULT_JPEG_QUALITY,
        }
    }
}

/// The default `[ingest] quality` (see the recipes and README for the measured
/// size/accuracy trade-off behind it).
pub const DEFAULT_JPEG_QUALITY: u8 = 90;

impl IngestConfig {
    /// The quality the manifest records: only a jpeg dataset has one.
    pub fn jpeg_quality(&self) -> Option<u8> {
        (self.encoding == Encoding::Jpeg).then_some(self.quality)
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(1..=100).contains(&self.quality) {
            return Err(format!(
                "ingest.quality = {} is outside 1-100",
                self.quality
            ));
        }
        if self.rows_per_shard == 0 || self.rows_per_row_group == 0 {
            return Err(
                "ingest.rows_per_shard and ingest.rows_per_row_group must be positive".into(),
            );
        }
        if self.rows_per_row_group > self.rows_per_shard {
            return Err(format!(
                "ingest.rows_per_row_group ({}) is larger than ingest.rows_per_shard ({})",
                self.rows_per_row_group, self.rows_per_shard
            ));
        }
        Ok(())
    }
}
