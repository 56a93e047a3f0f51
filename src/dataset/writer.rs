//! Shard writer: one Parquet file per shard, written to a temporary sibling and
//! renamed into place, so a shard either exists complete or not at all.
//!
//! Row groups are written one at a time from one contiguous pixel buffer that
//! the caller hands over as `Bytes` (a recycled buffer comes back to its owner
//! when the group is written). The file is built with parquet's column writers
//! directly, one data page per image, so each row is copied once into its page
//! and written; going through Arrow arrays copied every 196 KB row three more
//! times. The Arrow schema is stored in the footer as `ArrowWriter` stores it,
//! so readers see exactly [`schema::shard_schema`], and each row's pixel CRC-32
//! is stored beside it (see [`checksum`]).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parquet::arrow::{ArrowSchemaConverter, add_encoded_arrow_schema_to_metadata};
use parquet::basic::Compression;
use parquet::data_type::{
    ByteArray, ByteArrayType, FixedLenByteArray, FixedLenByteArrayType, Int64Type,
};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::{SerializedColumnWriter, SerializedFileWriter};
use parquet::schema::types::ColumnPath;

use super::encoding::Encoding;
use super::{atomic, checksum, schema};

/// One stored image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardRow {
    pub key: String,
    pub label: i32,
    /// S·S·3 bytes, row-major HWC RGB (decoded, for a jpeg shard).
    pub pixels: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parquet {
        path: String,
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: row {key} has {found} pixel bytes, expected {expected}")]
    PixelSize {
        path: String,
        key: String,
        found: usize,
        expected: usize,
    },
    #[error(
        "{path}: a row group of {keys} keys, {labels} labels and {pixel_bytes} pixel bytes (expected {expected} per row)"
    )]
    RowGroupShape {
        path: String,
        keys: usize,
        labels: usize,
        pixel_bytes: usize,
        expected: usize,
    },
    #[error(
        "{path}: a row group of {keys} keys, {labels} labels and {images} encoded images \
         for a {encoding} shard (a jpeg shard takes one image a row)"
    )]
    EncodedRowGroupShape {
        path: String,
        encoding: Encoding,
        keys: usize,
        labels: usize,
        images: usize,
    },
}

/// Writer settings: pixels are incompressible JPEG-born noise as far as
/// general-purpose codecs go (and JPEG bytes are compressed already), so they are
/// stored plain (fast to stream).
fn properties(image_size: usize, encoding: Encoding, class_names: &[String]) -> WriterProperties {
    let builder = WriterProperties::builder()
        .set_compression(Compression::UNCOMPRESSED)
        .set_dictionary_enabled(false);
    let builder = match encoding {
        Encoding::Raw => {
            let pixels = ColumnPath::from(schema::PIXELS);
            builder
                // Min/max of 196 KB blobs is meaningless and costly.
                .set_column_statistics_enabled(pixels.clone(), EnabledStatistics::None)
                // One page per image: a page sized for many 196 KB values would grow
                // (and re-copy) its buffer several times before it is written.
                .set_column_data_page_size_limit(pixels, 1)
        }
        Encoding::Jpeg => {
            let bytes = ColumnPath::new(vec![schema::IMAGE.into(), schema::IMAGE_BYTES.into()]);
            builder.set_column_statistics_enabled(bytes, EnabledStatistics::None)
        }
    };
    let features = schema::huggingface_features(encoding, class_names);
    let mut properties = builder
        .set_key_value_metadata(Some(vec![KeyValue::new(
            schema::HUGGINGFACE_KEY.to_string(),
            features.clone(),
        )]))
        .build();
    let arrow = schema::shard_schema_for(image_size, encoding);
    let arrow = arrow
        .as_ref()
        .clone()
        .with_metadata(std::collections::HashMap::from([(
            schema::HUGGINGFACE_KEY.to_string(),
            features,
        )]));
    add_encoded_arrow_schema_to_metadata(&arrow, &mut properties);
    properties
}

/// One shard being written: open with [`ShardWriter::create`], add row groups,
/// then [`ShardWriter::finish`] renames it into place. Dropped unfinished, it
/// leaves only its temporary file (which a rerun overwrites).
pub struct ShardWriter {
    path: PathBuf,
    encoding: Encoding,
    row_bytes: usize,
    writer: SerializedFileWriter<BufWriter<File>>,
    /// CRC-32 of each row's pixels, written into the footer by `finish`.
    pixel_crcs: Vec<u32>,
}

/// Writes the label column chunk: the in-memory i32 labels stored as the schema's
/// nullable int64, every value present (definition level 1).
fn write_labels(
    column: &mut SerializedColumnWriter<'_>,
    labels: &[i32],
) -> parquet::errors::Result<usize> {
    let wide: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
    let present = vec![1i16; labels.len()];
    column
        .typed::<Int64Type>()
        .write_batch(&wide, Some(&present), None)
}

impl ShardWriter {
    /// A raw shard without class names (tests and tools).
    pub fn create(path: &Path, image_size: usize) -> Result<Self, WriteError> {
        Self::create_for(path, image_size, Encoding::Raw, &[])
    }

    /// A shard of `encoding` whose `huggingface` metadata names the classes.
    pub fn create_for(
        path: &Path,
        image_size: usize,
        encoding: Encoding,
        class_names: &[String],
    ) -> Result<Self, WriteError> {
        let shown = path.display().to_string();
        let temp = atomic::temp_path(path);
        let file = File::create(&temp).map_err(|source| WriteError::Io {
            path: shown.clone(),
            source,
        })?;
        let parquet_schema = ArrowSchemaConverter::new()
            .convert(&schema::shard_schema_for(image_size, encoding))
            .map_err(|source| WriteError::Parquet {
                path: shown.clone(),
                source,
            })?;
        // Pages are written whole; the buffer only gathers the small headers.
        let sink = BufWriter::with_capacity(1 << 16, file);
        let writer = SerializedFileWriter::new(
            sink,
            parquet_schema.root_schema_ptr(),
            Arc::new(properties(image_size, encoding, class_names)),
        )
        .map_err(|source| WriteError::Parquet {
            path: shown,
            source,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            encoding,
            row_bytes: schema::PixelLayout::new(image_size).bytes(),
            writer,
            pixel_crcs: Vec::new(),
        })
    }

    /// Appends one row group: row i is `keys[i]`, `labels[i]` and bytes
    /// `i·S²·3 .. (i+1)·S²·3` of `pixels` (not copied: each value is a slice).
    pub fn write_row_group<K: AsRef<str>>(
        &mut self,
        keys: &[K],
        labels: &[i32],
        pixels: Bytes,
    ) -> Result<(), WriteError> {
        let rows = labels.len();
        if self.encoding != Encoding::Raw
            || keys.len() != rows
            || pixels.len() != rows * self.row_bytes
        {
            return Err(WriteError::RowGroupShape {
                path: self.path.display().to_string(),
                keys: keys.len(),
                labels: rows,
                pixel_bytes: pixels.len(),
                expected: self.row_bytes,
            });
        }
        let keys: Vec<ByteArray> = keys.iter().map(|k| ByteArray::from(k.as_ref())).collect();
        let values: Vec<FixedLenByteArray> = (0..rows)
            .map(|i| {
                FixedLenByteArray::from(ByteArray::from(
                    pixels.slice(i * self.row_bytes..(i + 1) * self.row_bytes),
                ))
            })
            .collect();
        let pixel_crcs: Vec<u32> = pixels
            .chunks(self.row_bytes)
            .map(checksum::pixels_crc32)
            .collect();
        drop(pixels);

        let path = &self.path;
        let parquet_error = |source| WriteError::Parquet {
            path: path.display().to_string(),
            source,
        };
        let mut group = self.writer.next_row_group().map_err(parquet_error)?;
        let mut written = 0;
        while let Some(mut column) = group.next_column().map_err(parquet_error)? {
            // The file's columns come in the schema's order (the writer was made from it).
            let result = match schema::Column::at(written) {
                Some(schema::Column::Key) => column
                    .typed::<ByteArrayType>()
                    .write_batch(&keys, None, None)
                    .map(drop),
                Some(schema::Column::Label) => write_labels(&mut column, labels).map(drop),
                Some(schema::Column::Pixels) | None => {
                    let writer = column.typed::<FixedLenByteArrayType>();
                    // A value per call: with the page limit above, a page per value.
                    values
                        .chunks(1)
                        .try_for_each(|value| writer.write_batch(value, None, None).map(drop))
                }
            };
            result.map_err(parquet_error)?;
            column.close().map_err(parquet_error)?;
            written += 1;
        }
        group.close().map_err(parquet_error)?;
        self.pixel_crcs.extend(pixel_crcs);
        Ok(())
    }

    /// Appends one row group of a jpeg shard: row i is `keys[i]`, `labels[i]` and the
    /// JPEG `images[i]` (its `image.path` is the key, as Hugging Face's image struct
    /// names where the bytes came from).
    pub fn write_encoded_row_group<K: AsRef<str>>(
        &mut self,
        keys: &[K],
        labels: &[i32],
        images: &[Bytes],
    ) -> Result<(), WriteError> {
        let rows = labels.len();
        if self.encoding != Encoding::Jpeg || keys.len() != rows || images.len() != rows {
            return Err(WriteError::EncodedRowGroupShape {
                path: self.path.display().to_string(),
                encoding: self.encoding,
                keys: keys.len(),
                labels: rows,
                images: images.len(),
            });
        }
        let keys: Vec<ByteArray> = keys.iter().map(|k| ByteArray::from(k.as_ref())).collect();
        let values: Vec<ByteArray> = images.iter().cloned().map(ByteArray::from).collect();
        let crcs: Vec<u32> = images.iter().map(|i| checksum::pixels_crc32(i)).collect();
        let path = &self.path;
        let parquet_error = |source| WriteError::Parquet {
            path: path.display().to_string(),
            source,
        };
        // `image` and its fields are nullable (see the schema): every value present is
        // definition level 2.
        let present = vec![2i16; rows];
        let mut group = self.writer.next_row_group().map_err(parquet_error)?;
        let mut written = 0;
        while let Some(mut column) = group.next_column().map_err(parquet_error)? {
            // Leaves in schema order: key, label, image.bytes, image.path.
            let result = match written {
                0 => column
                    .typed::<ByteArrayType>()
                    .write_batch(&keys, None, None),
                1 => write_labels(&mut column, labels),
                2 => column
                    .typed::<ByteArrayType>()
                    .write_batch(&values, Some(&present), None),
                _ => column
                    .typed::<ByteArrayType>()
                    .write_batch(&keys, Some(&present), None),
            };
            result.map_err(parquet_error)?;
            column.close().map_err(parquet_error)?;
            written += 1;
        }
        group.close().map_err(parquet_error)?;
        self.pixel_crcs.extend(crcs);
        Ok(())
    }

    /// Writes the footer, syncs, and renames the file into place.
    pub fn finish(mut self) -> Result<(), WriteError> {
        let shown = || self.path.display().to_string();
        self.writer
            .append_key_value_metadata(checksum::footer_entry(&self.pixel_crcs));
        let sink = self
            .writer
            .into_inner()
            .map_err(|source| WriteError::Parquet {
                path: shown(),
                source,
            })?;
        let file = sink.into_inner().map_err(|e| WriteError::Io {
            path: shown(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(|source| WriteError::Io {
            path: shown(),
            source,
        })?;
        drop(file);
        atomic::commit(&atomic::temp_path(&self.path), &self.path).map_err(|source| {
            WriteError::Io {
                path: shown(),
                source,
            }
        })
    }
}

/// Writes `rows` as one shard at `path` atomically, `rows_per_group` rows per row group.
pub fn write_shard(
    path: &Path,
    image_size: usize,
    rows_per_group: usize,
    rows: &[ShardRow],
) -> Result<(), WriteError> {
    let expected = schema::PixelLayout::new(image_size).bytes();
    if let Some(bad) = rows.iter().find(|r| r.pixels.len() != expected) {
        let path = path.display().to_string();
        return Err(WriteError::PixelSize {
            path,
            key: bad.key.clone(),
            found: bad.pixels.len(),
            expected,
        });
    }
    let mut writer = ShardWriter::create(path, image_size)?;
    for group in rows.chunks(rows_per_group.max(1)) {
        let keys: Vec<&str> = group.iter().map(|r| r.key.as_str()).collect();
        let labels: Vec<i32> = group.iter().map(|r| r.label).collect();
        let pixels: Vec<u8> = group
            .iter()
            .flat_map(|r| r.pixels.iter().copied())
            .collect();
        writer.write_row_group(&keys, &labels, Bytes::from(pixels))?;
    }
    writer.finish()
}
