//! Synchronous shard reading with schema checks (tools, tests, and the
//! checks the async stream runs before it starts).

use std::path::{Path, PathBuf};

use arrow::array::{Array, BinaryArray, FixedSizeBinaryArray, StringArray, StructArray};
use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::encoding::{Encoding, PixelsError};
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
    #[error("{path}: row group {row_group}: {source}")]
    Label {
        path: String,
        row_group: usize,
        source: schema::LabelError,
    },
    #[error(transparent)]
    Corrupt(Box<checksum::CorruptRow>),
    #[error("{path}: row {row} (key {key}): the image {source}")]
    Pixels {
        path: String,
        row: usize,
        key: String,
        source: PixelsError,
    },
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

/// Checks that a file's Arrow schema is a shard schema for `image_size` (names, types,
/// nullability; metadata is ignored) and says which encoding it stores.
pub fn check_schema(path: &Path, found: &Schema, image_size: usize) -> Result<Encoding, ReadError> {
    let same = |expected: &Schema| {
        found.fields().len() == expected.fields().len()
            && found.fields().iter().zip(expected.fields()).all(|(a, b)| {
                // Shards written before the label became int64 hold int32 labels.
                (b.name() == schema::LABEL && schema::is_label_field(a))
                    || (a.name() == b.name()
                        && a.data_type() == b.data_type()
                        && a.is_nullable() == b.is_nullable())
            })
    };
    let encodings = [Encoding::Raw, Encoding::Jpeg];
    if let Some(encoding) = encodings
        .into_iter()
        .find(|&e| same(&schema::shard_schema_for(image_size, e)))
    {
        return Ok(encoding);
    }
    // Named against the schema of the encoding whose image column the file has.
    let jpeg = found.fields().iter().any(|f| f.name() == schema::IMAGE);
    let expected = schema::shard_schema_for(
        image_size,
        if jpeg { Encoding::Jpeg } else { Encoding::Raw },
    );
    Err(ReadError::Schema {
        path: path.display().to_string(),
        expected: describe(&expected),
        found: describe(found),
    })
}

/// Like [`check_schema`], and the shard must store `encoding` (the manifest's).
pub fn check_schema_of(
    path: &Path,
    found: &Schema,
    image_size: usize,
    encoding: Encoding,
) -> Result<(), ReadError> {
    let stored = check_schema(path, found, image_size)?;
    if stored == encoding {
        return Ok(());
    }
    Err(ReadError::Schema {
        path: path.display().to_string(),
        expected: format!(
            "{} (a {encoding} shard, as dataset.json says)",
            describe(&schema::shard_schema_for(image_size, encoding))
        ),
        found: describe(found),
    })
}

/// Reads a whole shard into rows (small datasets, tests, verification), checking
/// each row's stored value against the CRC in the footer where there is one; a jpeg
/// shard's rows come back decoded, S·S·3 bytes each, like a raw shard's.
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
    let encoding = check_schema(path, builder.schema(), image_size)?;
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
        let before = rows.len();
        append_rows(&batch, &mut rows).map_err(|source| {
            let groups = metadata.row_groups().iter().map(|g| g.num_rows() as usize);
            let (row_group, start) = group_of_row(groups, before + source.row().unwrap_or(0));
            ReadError::Label {
                path: shown(),
                row_group,
                source: source.at(|r| before + r - start),
            }
        })?;
    }
    if let Some(crcs) = crcs {
        let groups = metadata.row_groups().iter().enumerate();
        let group_of_row =
            groups.flat_map(|(g, meta)| std::iter::repeat_n(g, meta.num_rows() as usize));
        for (row, ((shard_row, &recorded), row_group)) in
            rows.iter().zip(&crcs).zip(group_of_row).enumerate()
        {
            let found = checksum::pixels_crc32(&shard_row.stored);
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
    let mut buffer = Vec::new();
    rows.into_iter()
        .enumerate()
        .map(|(row, stored)| {
            let pixels = encoding
                .pixels(&stored.stored, image_size, &mut buffer)
                .map_err(|source| ReadError::Pixels {
                    path: shown(),
                    row,
                    key: stored.key.clone(),
                    source,
                })?
                .to_vec();
            Ok(ShardRow {
                key: stored.key,
                label: stored.label,
                pixels,
            })
        })
        .collect()
}

/// One row as a shard stores it: the image value still encoded.
pub struct StoredRow {
    pub key: String,
    pub label: i32,
    /// The raw pixels or the JPEG bytes (see [`image_values`]).
    pub stored: Vec<u8>,
}

/// The stored image value of each row of a batch's image column: `pixels`
/// (fixed_size_binary) or `image.bytes` (jpeg); `None` for any other column.
pub fn image_values(column: &dyn Array) -> Option<Vec<&[u8]>> {
    let any = column.as_any();
    if let Some(raw) = any.downcast_ref::<FixedSizeBinaryArray>() {
        return Some((0..raw.len()).map(|i| raw.value(i)).collect());
    }
    let bytes = any
        .downcast_ref::<StructArray>()?
        .column_by_name(schema::IMAGE_BYTES)?
        .as_any()
        .downcast_ref::<BinaryArray>()?;
    Some((0..bytes.len()).map(|i| bytes.value(i)).collect())
}

/// The row group holding shard row `row`, and that group's first shard row, given each
/// group's row count.
fn group_of_row(group_rows: impl IntoIterator<Item = usize>, row: usize) -> (usize, usize) {
    let mut start = 0;
    let mut last = (0, 0);
    for (group, rows) in group_rows.into_iter().enumerate() {
        last = (group, start);
        if row < start + rows {
            break;
        }
        start += rows;
    }
    last
}

/// Converts a full-schema batch (either encoding, checked by [`check_schema`]) to rows.
/// Fails only for a label that does not fit i32 (its row counted in the batch).
pub fn append_rows(
    batch: &RecordBatch,
    rows: &mut Vec<StoredRow>,
) -> Result<(), schema::LabelError> {
    let keys = batch
        .column(schema::Column::Key.index())
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("key is utf8");
    let labels = schema::labels_i32(batch.column(schema::Column::Label.index()).as_ref())?;
    let images = image_values(batch.column(schema::Column::Pixels.index()).as_ref())
        .expect("the image column is pixels or image");
    for (i, image) in images.into_iter().enumerate() {
        rows.push(StoredRow {
            key: keys.value(i).to_string(),
            label: labels[i],
            stored: image.to_vec(),
        });
    }
    Ok(())
}
