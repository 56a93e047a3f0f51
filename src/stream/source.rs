//! Source stage: the split's shards, checked up front, and async reads of one
//! row group at a time with column projection.

use std::path::{Path, PathBuf};

use arrow::array::{Array, FixedSizeBinaryArray, Int32Array, StringArray};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use futures::TryStreamExt;
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;

use super::StreamError;
use super::plan::RowGroupRef;
use crate::dataset::reader::{check_schema, shard_paths};
use crate::dataset::{Manifest, Split};

/// One shard's footer, parsed once.
pub struct Shard {
    pub path: PathBuf,
    metadata: ArrowReaderMetadata,
}

/// Every shard of a split, validated (present, readable footer, right schema).
pub struct ShardIndex {
    pub shards: Vec<Shard>,
    pub image_size: usize,
}

/// The columns of one row group that the stream needs; the pixel buffer is the
/// Arrow buffer itself (no copy until the shuffle buffer takes a row).
pub struct RowGroupData {
    pub labels: Int32Array,
    pub pixels: FixedSizeBinaryArray,
    pub keys: Option<StringArray>,
}

impl RowGroupData {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

fn shard_error(path: &Path, message: impl std::fmt::Display) -> StreamError {
    StreamError::Shard { path: path.display().to_string(), message: message.to_string() }
}

impl ShardIndex {
    /// Opens every shard's footer and checks its schema; errors name the file.
    pub async fn open(dataset: &Path, split: Split, manifest: &Manifest) -> Result<Self, StreamError> {
        let info = manifest.split(split).ok_or_else(|| StreamError::NoSplit {
            dataset: dataset.display().to_string(),
            split: split.name(),
        })?;
        let mut shards = Vec::with_capacity(info.shards);
        for path in shard_paths(dataset, split, info.shards) {
            let mut file = tokio::fs::File::open(&path).await.map_err(|e| shard_error(&path, format!("cannot open: {e}")))?;
            let metadata = ArrowReaderMetadata::load_async(&mut file, ArrowReaderOptions::new())
                .await
                .map_err(|e| shard_error(&path, format!("not a readable Parquet file (truncated?): {e}")))?;
            check_schema(&path, metadata.schema(), manifest.image_size)
                .map_err(|e| shard_error(&path, e.to_string().trim_start_matches(&format!("{}: ", path.display()))))?;
            shards.push(Shard { path, metadata });
        }
        let rows: usize = shards.iter().map(|s| s.metadata.metadata().file_metadata().num_rows() as usize).sum();
        if rows != info.rows {
            return Err(StreamError::RowCount { dataset: dataset.display().to_string(), split: split.name(), expected: info.rows, found: rows });
        }
        Ok(Self { shards, image_size: manifest.image_size })
    }

    /// Every row group of the split, in file order.
    pub fn row_groups(&self) -> Vec<RowGroupRef> {
        self.shards
            .iter()
            .enumerate()
            .flat_map(|(shard, s)| {
                s.metadata.metadata().row_groups().iter().enumerate().map(move |(row_group, rg)| RowGroupRef {
                    shard,
                    row_group,
                    rows: rg.num_rows() as usize,
                })
            })
            .collect()
    }

    /// Reads one row group: `label` and `pixels`, plus `key` when asked.
    pub async fn read(&self, group: RowGroupRef, with_keys: bool) -> Result<RowGroupData, StreamError> {
        let shard = &self.shards[group.shard];
        let path = &shard.path;
        let file = tokio::fs::File::open(path).await.map_err(|e| shard_error(path, format!("cannot open: {e}")))?;
        let columns: &[usize] = if with_keys { &[0, 1, 2] } else { &[1, 2] };
        let mask = ProjectionMask::roots(shard.metadata.parquet_schema(), columns.iter().copied());
        let stream = ParquetRecordBatchStreamBuilder::new_with_metadata(file, shard.metadata.clone())
            .with_row_groups(vec![group.row_group])
            .with_projection(mask)
            .with_batch_size(group.rows.max(1))
            .build()
            .map_err(|e| shard_error(path, e))?;
        let batches: Vec<_> = stream
            .try_collect()
            .await
            .map_err(|e| shard_error(path, format!("row group {}: {e}", group.row_group)))?;
        // One batch per row group (batch size = its rows); concat covers any split.
        let batch = match batches.as_slice() {
            [one] => one.clone(),
            [first, ..] => arrow::compute::concat_batches(&first.schema(), &batches).map_err(|e| shard_error(path, e))?,
            [] => return Err(shard_error(path, format!("row group {} is empty", group.row_group))),
        };
        let column = |name: &str| batch.column_by_name(name).cloned();
        let labels = column("label").and_then(|c| c.as_any().downcast_ref::<Int32Array>().cloned());
        let pixels = column("pixels").and_then(|c| c.as_any().downcast_ref::<FixedSizeBinaryArray>().cloned());
        let keys = column("key").and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned());
        match (labels, pixels) {
            (Some(labels), Some(pixels)) if labels.len() == group.rows => Ok(RowGroupData { labels, pixels, keys }),
            _ => Err(shard_error(path, format!("row group {} is missing rows or columns", group.row_group))),
        }
    }
}
