//! Synchronous shard reading with schema checks (tools, tests, and the
//! checks the async stream runs before it starts).

use std::path::{Path, PathBuf};

use arrow::array::{Array, FixedSizeBinaryArray, Int32Array, StringArray};
use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::writer::ShardRow;
use super::{Split, checksum, schema, shard_file_name};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a readable Parquet shard: {source}")]
    Parquet {
        path: String,
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: not a readable Arrow batch: {source}")]
    Arrow {
        path: String,
        source: arrow::error::ArrowError,
    },
    #[error("{path}: wrong schema: expected {expected}, found {found}")]
    Schema {
        path: String,
        expected: String,
        found: String,
    },
    #[error("{path}: {message}")]
    Footer { path: String, message: String },
    #[error(transparent)]
    Corrupt(Box<checksum::CorruptRow>),
}

/// Paths of a split's shards, in order.
pub fn shard_paths(dataset: &Path, split: Split, shards: usize) -> Vec<PathBuf> {
    (0..shards)
        .map(|i| dataset.join(split.name()).join(shard_file_name(i)))
        .collect()
}

/// Renders a schema's fields compactly for error messages.
fn describe(schema: &Schema) -> String {
    let fields: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect();
    format!("[{}]", fields.join(", "))
}

/// Checks that a file's Arrow schema is the shard schema for `image_size`
/// (names, types, nullability; metadata is ignored).
pub fn check_schema(path: &Path, found: &Schema, image_size: usize) -> Result<(), ReadError> {
    let expected = schema::shard_schema(image_size);
    let same = found.fields().len() == expected.fields().len()
        && found.fields().iter().zip(expected.fields()).all(|(a, b)| {
            a.name() == b.name()
                && a.data_type() == b.data_type()
                && a.is_nullable() == b.is_nullable()
        });
    if same {
        Ok(())
    } else {
        Err(ReadError::Schema {
            path: path.display().to_string(),
            expected: describe(&expected),
            found: describe(found),
        })
    }
}

/// Reads a whole shard into rows (small datasets, tests, verification), checking
/// each row's pixels against the CRC in the footer where there is one.
pub fn read_shard(path: &Path, image_size: usize) -> Result<Vec<ShardRow>, ReadError> {
    let shown = || path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| ReadError::Io {
        path: shown(),
        source,
    })?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|source| ReadError::Parquet {
            path: shown(),
            source,
        })?;
    check_schema(path, builder.schema(), image_size)?;
    let metadata = builder.metadata().clone();
    let crcs = checksum::recorded(
        metadata.file_metadata().key_value_metadata(),
        metadata.file_metadata().num_rows() as usize,
    )
    .map_err(|message| ReadError::Footer {
        path: shown(),
        message,
    })?;
    let reader = builder.build().map_err(|source| ReadError::Parquet {
        path: shown(),
        source,
    })?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|source| ReadError::Arrow {
            path: shown(),
            source,
        })?;
        append_rows(&batch, &mut rows);
    }
    if let Some(crcs) = crcs {
        let groups = metadata.row_groups().iter().enumerate();
        let group_of_row =
            groups.flat_map(|(g, meta)| std::iter::repeat_n(g, meta.num_rows() as usize));
        for (row, ((shard_row, &recorded), row_group)) in
            rows.iter().zip(&crcs).zip(group_of_row).enumerate()
        {
            let found = checksum::pixels_crc32(&shard_row.pixels);
            if found != recorded {
                return Err(ReadError::Corrupt(Box::new(checksum::CorruptRow {
                    path: shown(),
                    row,
                    row_group,
                    key: shard_row.key.clone(),
                    found,
                    recorded,
                })));
            }
        }
    }
    Ok(rows)
}

/// Converts a full-schema batch to rows.
pub fn append_rows(batch: &RecordBatch, rows: &mut Vec<ShardRow>) {
    let keys = batch
        .column(schema::Column::Key.index())
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("key is utf8");
    let labels = batch
        .column(schema::Column::Label.index())
        .as_any()
        .downcast_ref::<Int32Array>()
        .expect("label is int32");
    let pixels = batch
        .column(schema::Column::Pixels.index())
        .as_any()
        .downcast_ref::<FixedSizeBinaryArray>()
        .expect("pixels is fixed binary");
    for i in 0..batch.num_rows() {
        rows.push(ShardRow {
            key: keys.value(i).to_string(),
            label: labels.value(i),
            pixels: pixels.value(i).to_vec(),
        });
    }
}
