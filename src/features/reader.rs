//! Reading a features file whole, with schema and version checks that name the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::array::{
    Array, FixedSizeBinaryArray, FixedSizeListArray, Float32Array, Int32Array, StringArray,
};
use arrow::datatypes::{DataType, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::FeaturesError;
use super::schema::{self, CODE, FEATURES, FORMAT_VERSION, KEY, LABEL, META_FORMAT_VERSION};

/// A whole features file in memory: row i is `keys[i]`, `labels[i]`,
/// `features[i·dim .. (i+1)·dim]` and, with codes, `codes[i·code_bytes ..]`.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureTable {
    pub path: PathBuf,
    pub keys: Vec<String>,
    pub labels: Vec<i32>,
    /// Row-major `len() × dim`.
    pub features: Vec<f32>,
    pub dim: usize,
    /// Packed binary codes, `len() × code_bytes`, when the file has a `code` column.
    pub codes: Option<Vec<u8>>,
    /// Bytes per code (bits / 8); 0 without codes.
    pub code_bytes: usize,
    /// The file's key-value metadata (the exporter's `pipeline.features.*` keys and the
    /// caller's, such as the checkpoint), without Arrow's embedded schema.
    pub metadata: BTreeMap<String, String>,
}

impl FeatureTable {
    /// Reads `path`. Fails, naming the file, when it is missing, not Parquet, not the
    /// features schema (columns, types, nullability), or of another format version.
    pub fn read(path: &Path) -> Result<Self, FeaturesError> {
        let file = std::fs::File::open(path).map_err(|e| FeaturesError::io(path, e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| FeaturesError::parquet(path, e))?;
        let (dim, code_bytes) = check_schema(path, builder.schema())?;
        let metadata: BTreeMap<String, String> = builder
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .into_iter()
            .flatten()
            .filter(|kv| kv.key != "ARROW:schema")
            .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
            .collect();
        match metadata.get(META_FORMAT_VERSION) {
            Some(v) if v == &FORMAT_VERSION.to_string() => {}
            Some(v) => {
                return Err(FeaturesError::Version {
                    path: path.display().to_string(),
                    found: v.clone(),
                    supported: FORMAT_VERSION,
                });
            }
            None => {
                return Err(FeaturesError::Metadata {
                    path: path.display().to_string(),
                    key: META_FORMAT_VERSION.into(),
                    reason: "missing: not written by `pipeline export-features`".into(),
                });
            }
        }
        let rows = builder.metadata().file_metadata().num_rows() as usize;
        let reader = builder
            .build()
            .map_err(|e| FeaturesError::parquet(path, e))?;
        let mut table = FeatureTable {
            path: path.to_path_buf(),
            keys: Vec::with_capacity(rows),
            labels: Vec::with_capacity(rows),
            features: Vec::with_capacity(rows * dim),
            dim,
            codes: code_bytes.map(|b| Vec::with_capacity(rows * b)),
            code_bytes: code_bytes.unwrap_or(0),
            metadata,
        };
        for batch in reader {
            let batch = batch.map_err(|e| FeaturesError::arrow(path, e))?;
            let column = |i: usize| batch.column(i).as_any();
            let keys = column(0)
                .downcast_ref::<StringArray>()
                .expect("schema checked: key is utf8");
            let labels = column(1)
                .downcast_ref::<Int32Array>()
                .expect("schema checked: label is int32");
            let list = column(2)
                .downcast_ref::<FixedSizeListArray>()
                .expect("schema checked: features is a list");
            table
                .keys
                .extend(keys.iter().map(|k| k.unwrap_or_default().to_string()));
            table.labels.extend_from_slice(labels.values());
            let values = list
                .values()
                .as_any()
                .downcast_ref::<Float32Array>()
                .expect("schema checked: float32 items");
            // Slicing a fixed-size list slices its child values, so they start at row 0.
            table
                .features
                .extend_from_slice(&values.values()[..list.len() * dim]);
            if let Some(codes) = table.codes.as_mut() {
                let code = column(3)
                    .downcast_ref::<FixedSizeBinaryArray>()
                    .expect("schema checked: code is binary");
                for i in 0..code.len() {
                    codes.extend_from_slice(code.value(i));
                }
            }
        }
        Ok(table)
    }

    /// Rows in the table.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Row `i`'s feature vector.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.dim..(i + 1) * self.dim]
    }

    /// Row `i`'s packed code, when the file has codes.
    pub fn code(&self, i: usize) -> Option<&[u8]> {
        self.codes
            .as_ref()
            .map(|c| &c[i * self.code_bytes..(i + 1) * self.code_bytes])
    }

    /// Bits per code (0 without codes).
    pub fn code_bits(&self) -> usize {
        self.code_bytes * 8
    }

    /// The row holding `key`, if any.
    pub fn row_of(&self, key: &str) -> Option<usize> {
        self.keys.iter().position(|k| k == key)
    }

    /// A metadata value, or an error naming the file and the key.
    pub fn meta(&self, key: &str) -> Result<&str, FeaturesError> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| FeaturesError::Metadata {
                path: self.path.display().to_string(),
                key: key.into(),
                reason: "missing".into(),
            })
    }

    /// A numeric metadata value, or an error naming the file and the key.
    pub fn meta_usize(&self, key: &str) -> Result<usize, FeaturesError> {
        let value = self.meta(key)?;
        value.parse().map_err(|_| FeaturesError::Metadata {
            path: self.path.display().to_string(),
            key: key.into(),
            reason: format!("{value:?} is not a whole number"),
        })
    }
}

/// Checks a file's Arrow schema against [`schema::feature_schema`] for the `dim` and code
/// width it declares; returns them. Field metadata is ignored.
pub fn check_schema(path: &Path, found: &Schema) -> Result<(usize, Option<usize>), FeaturesError> {
    let dim = match found.field_with_name(FEATURES).map(|f| f.data_type()) {
        Ok(DataType::FixedSizeList(_, d)) if *d > 0 => *d as usize,
        _ => 1,
    };
    let code_bytes = match found.field_with_name(CODE).map(|f| f.data_type()) {
        Ok(DataType::FixedSizeBinary(b)) if *b > 0 => Some(*b as usize),
        Ok(_) => Some(1),
        Err(_) => None,
    };
    let expected = schema::feature_schema(dim, code_bytes);
    let same = found.fields().len() == expected.fields().len()
        && found.fields().iter().zip(expected.fields()).all(|(a, b)| {
            a.name() == b.name()
                && a.is_nullable() == b.is_nullable()
                && same_type(a.data_type(), b.data_type())
        });
    if same {
        Ok((dim, code_bytes))
    } else {
        Err(FeaturesError::Schema {
            path: path.display().to_string(),
            expected: format!(
                "[{KEY}: Utf8, {LABEL}: Int32, {FEATURES}: FixedSizeList(D x non-null Float32), optional {CODE}: FixedSizeBinary(bits/8)]"
            ),
            found: schema::describe(found),
        })
    }
}

/// Type equality that ignores the list item's name and metadata but not its type or
/// nullability.
fn same_type(a: &DataType, b: &DataType) -> bool {
    match (a, b) {
        (DataType::FixedSizeList(x, n), DataType::FixedSizeList(y, m)) => {
            n == m && x.data_type() == y.data_type() && x.is_nullable() == y.is_nullable()
        }
        _ => a == b,
    }
}
