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
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            rows_per_shard: 1024,
            rows_per_row_group: 64,
            filter: ResizeFilter::Bilinear,
            seed: 0,
            max_pixels: 89_478_485,
        }
    }
}

impl IngestConfig {
    pub fn validate(&self) -> Result<(), String> {
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
