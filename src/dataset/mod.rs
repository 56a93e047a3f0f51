//! The on-disk dataset: one Arrow schema (used by writer and reader alike),
//! atomic shard writing, the `dataset.json` manifest and `mean.npy`.
//!
//! Layout of a dataset directory (the contract in `schemas/dataset.md`):
//! ```text
//! DIR/dataset.json            manifest, written last
//! DIR/mean.npy                float32 [S,S,3] mean training crop, 0–255
//! DIR/train/part-00000.parquet  key utf8 · label int64 · pixels fixed_size_binary(S·S·3)
//!                               (jpeg: image struct<bytes binary, path utf8>)
//! DIR/val/part-00000.parquet
//! ```

pub mod atomic;
pub mod checksum;
pub mod encoding;
pub mod manifest;
pub mod npy;
pub mod reader;
pub mod schema;
pub mod shard_bytes;
pub mod writer;

pub use encoding::Encoding;
pub use manifest::{ClassInfo, Manifest, PcaStats, SkippedImage, SplitInfo, Stats};
pub use schema::shard_schema;

/// The two splits a dataset holds.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// File name of shard `index` of a split, e.g. `part-00042.parquet`.
pub fn shard_file_name(index: usize) -> String {
    format!("part-{index:05}.parquet")
}

/// Name of the manifest inside a dataset directory.
pub const MANIFEST_FILE: &str = "dataset.json";
/// Name of the mean image inside a dataset directory.
pub const MEAN_FILE: &str = "mean.npy";
