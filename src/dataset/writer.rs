//! Shard writer: one Parquet file per shard, written whole to a temporary
//! sibling and renamed into place, so a shard either exists complete or not at all.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeBinaryArray, Int32Array, StringArray};
use arrow::buffer::Buffer;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::{atomic, schema};

/// One stored image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardRow {
    pub key: String,
    pub label: i32,
    /// S·S·3 bytes, row-major HWC RGB.
    pub pixels: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Parquet { path: String, source: parquet::errors::ParquetError },
    #[error("{path}: row {key} has {found} pixel bytes, expected {expected}")]
    PixelSize { path: String, key: String, found: usize, expected: usize },
}

/// Writer settings: pixels are incompressible JPEG-born noise as far as
/// general-purpose codecs go, so they are stored plain (fast to stream).
fn properties(rows_per_group: usize) -> WriterProperties {
    let pixels = ColumnPath::from(schema::PIXELS);
    WriterProperties::builder()
        .set_compression(Compression::UNCOMPRESSED)
        .set_dictionary_enabled(false)
        .set_max_row_group_row_count(Some(rows_per_group))
        // Min/max of 196 KB blobs is meaningless and costly.
        .set_column_statistics_enabled(pixels, EnabledStatistics::None)
        .build()
}

/// Writes `rows` as one shard at `path` atomically, `rows_per_group` rows per row group.
pub fn write_shard(
    path: &Path,
    image_size: usize,
    rows_per_group: usize,
    rows: &[ShardRow],
) -> Result<(), WriteError> {
    let shown = || path.display().to_string();
    let expected = schema::pixel_bytes(image_size);
    if let Some(bad) = rows.iter().find(|r| r.pixels.len() != expected) {
        return Err(WriteError::PixelSize { path: shown(), key: bad.key.clone(), found: bad.pixels.len(), expected });
    }
    let temp = atomic::temp_path(path);
    let file = std::fs::File::create(&temp).map_err(|source| WriteError::Io { path: shown(), source })?;
    let parquet_err = |source| WriteError::Parquet { path: shown(), source };
    let schema = schema::shard_schema(image_size);
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(properties(rows_per_group))).map_err(parquet_err)?;
    for group in rows.chunks(rows_per_group.max(1)) {
        let keys = StringArray::from_iter_values(group.iter().map(|r| r.key.as_str()));
        let labels = Int32Array::from_iter_values(group.iter().map(|r| r.label));
        let mut pixels = Vec::with_capacity(expected * group.len());
        for row in group {
            pixels.extend_from_slice(&row.pixels);
        }
        let pixels = FixedSizeBinaryArray::new(expected as i32, Buffer::from_vec(pixels), None);
        let columns: Vec<ArrayRef> = vec![Arc::new(keys), Arc::new(labels), Arc::new(pixels)];
        let batch = RecordBatch::try_new(schema.clone(), columns).expect("columns match the schema");
        writer.write(&batch).map_err(parquet_err)?;
        // One row group per chunk, whatever the writer's buffering heuristics.
        writer.flush().map_err(parquet_err)?;
    }
    let file = writer.into_inner().map_err(parquet_err)?;
    file.sync_all().map_err(|source| WriteError::Io { path: shown(), source })?;
    drop(file);
    atomic::commit(&temp, path).map_err(|source| WriteError::Io { path: shown(), source })
}
