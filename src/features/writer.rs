//! Features writer: `try_new → write → close`, like arrow-rs's `ArrowWriter`, into a
//! temporary sibling that `close` renames into place. A features file therefore exists
//! complete or not at all; an export that fails or is interrupted leaves any earlier
//! file at the same path untouched (and a failed writer removes its temporary file).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, FixedSizeBinaryArray, FixedSizeListArray, Float32Array, Int32Array, StringArray,
};
use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use super::FeaturesError;
use super::schema::{
    self, FORMAT_VERSION, META_CODE_BITS, META_DIM, META_FORMAT_VERSION, META_PREFIX,
};
use crate::dataset::atomic;

/// Streams rows into a features file.
pub struct FeatureWriter {
    path: PathBuf,
    temp: PathBuf,
    writer: Option<ArrowWriter<File>>,
    schema: SchemaRef,
    dim: usize,
    code_bytes: Option<usize>,
    rows: usize,
}

impl FeatureWriter {
    /// Starts `path` (written as `path.tmp` until [`close`](Self::close)) for `dim`-wide
    /// features and, with `code_bytes`, a `code` column. `metadata` pairs go into the
    /// file's key-value metadata next to the format version, `dim` and `code_bits`.
    ///
    /// Fails when a caller key uses the reserved `pipeline.features.` prefix for a key
    /// the writer owns, when `dim` is 0, or when the temporary file cannot be created.
    pub fn try_new(
        path: &Path,
        dim: usize,
        code_bytes: Option<usize>,
        metadata: &[(String, String)],
    ) -> Result<Self, FeaturesError> {
        if dim == 0 {
            return Err(FeaturesError::InvalidOption {
                key: "features dim",
                reason: "must be at least 1".into(),
            });
        }
        if code_bytes == Some(0) {
            return Err(FeaturesError::InvalidOption {
                key: "code bytes",
                reason: "must be at least 1".into(),
            });
        }
        let owned = [META_FORMAT_VERSION, META_DIM, META_CODE_BITS];
        if let Some((key, _)) = metadata.iter().find(|(k, _)| owned.contains(&k.as_str())) {
            return Err(FeaturesError::Metadata {
                path: path.display().to_string(),
                key: key.clone(),
                reason: "is written by the features writer itself".into(),
            });
        }
        let mut pairs = vec![
            KeyValue::new(META_FORMAT_VERSION.into(), FORMAT_VERSION.to_string()),
            KeyValue::new(META_DIM.into(), dim.to_string()),
        ];
        if let Some(bytes) = code_bytes {
            pairs.push(KeyValue::new(
                META_CODE_BITS.into(),
                (bytes * 8).to_string(),
            ));
        }
        pairs.extend(
            metadata
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        );
        debug_assert!(pairs.iter().all(|p| !p.key.is_empty()) && META_PREFIX.ends_with('.'));
        let properties = WriterProperties::builder()
            // Activations are dense floats that general-purpose codecs barely shrink;
            // plain pages stream fastest.
            .set_compression(Compression::UNCOMPRESSED)
            .set_dictionary_enabled(false)
            .set_statistics_enabled(EnabledStatistics::None)
            .set_max_row_group_row_count(Some(schema::rows_per_row_group(dim)))
            .set_key_value_metadata(Some(pairs))
            .build();
        let temp = atomic::temp_path(path);
        // Truncates any temporary file an interrupted run left behind.
        let file = File::create(&temp).map_err(|e| FeaturesError::io(&temp, e))?;
        let schema = schema::feature_schema(dim, code_bytes);
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(properties))
            .map_err(|e| FeaturesError::parquet(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            temp,
            writer: Some(writer),
            schema,
            dim,
            code_bytes,
            rows: 0,
        })
    }

    /// Appends rows: `features` is row-major `keys.len() × dim`; `codes` (required
    /// exactly when the file has a `code` column) is `keys.len() × code_bytes`.
    pub fn write(
        &mut self,
        keys: &[String],
        labels: &[i32],
        features: &[f32],
        codes: Option<&[u8]>,
    ) -> Result<(), FeaturesError> {
        let n = keys.len();
        let shown = self.path.display().to_string();
        if labels.len() != n {
            return Err(FeaturesError::mismatch(
                format!("{shown}: write"),
                "keys",
                n,
                "labels",
                labels.len(),
            ));
        }
        if features.len() != n * self.dim {
            return Err(FeaturesError::mismatch(
                format!("{shown}: write"),
                format!("{n} rows × dim {}", self.dim),
                n * self.dim,
                "the features buffer",
                features.len(),
            ));
        }
        let code_column = match (self.code_bytes, codes) {
            (Some(bytes), Some(codes)) if codes.len() == n * bytes => Some(
                FixedSizeBinaryArray::new(bytes as i32, Buffer::from(codes.to_vec()), None),
            ),
            (Some(bytes), found) => {
                return Err(FeaturesError::mismatch(
                    format!("{shown}: write"),
                    format!("the code column ({n} rows × {bytes} bytes)"),
                    n * bytes,
                    "the codes given",
                    found.map_or(0, |c| c.len()),
                ));
            }
            (None, Some(_)) => {
                return Err(FeaturesError::InvalidOption {
                    key: "codes",
                    reason: format!("{shown} was opened without a code column"),
                });
            }
            (None, None) => None,
        };
        let values = Float32Array::from(features.to_vec());
        let list = FixedSizeListArray::try_new(
            Arc::new(schema::item_field()),
            self.dim as i32,
            Arc::new(values),
            None,
        )
        .map_err(|e| FeaturesError::arrow(&self.path, e))?;
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                keys.iter().map(String::as_str),
            )),
            Arc::new(Int32Array::from(labels.to_vec())),
            Arc::new(list),
        ];
        if let Some(code) = code_column {
            columns.push(Arc::new(code));
        }
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| FeaturesError::arrow(&self.path, e))?;
        let writer = self.writer.as_mut().expect("writer is open until close");
        writer
            .write(&batch)
            .map_err(|e| FeaturesError::parquet(&self.path, e))?;
        self.rows += n;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Finishes the file, syncs it and renames it into place. Returns the row count.
    pub fn close(mut self) -> Result<usize, FeaturesError> {
        let writer = self.writer.take().expect("writer is open until close");
        let file = writer
            .into_inner()
            .map_err(|e| FeaturesError::parquet(&self.path, e))?;
        file.sync_all()
            .map_err(|e| FeaturesError::io(&self.temp, e))?;
        drop(file);
        atomic::commit(&self.temp, &self.path).map_err(|e| FeaturesError::io(&self.path, e))?;
        Ok(self.rows)
    }
}

impl Drop for FeatureWriter {
    /// A writer dropped before `close` (an error, a panic) removes its temporary file,
    /// so a failed export leaves nothing half-written behind.
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}
