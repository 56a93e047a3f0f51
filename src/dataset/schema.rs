//! The shard schema: the single definition both the writer and the reader use.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, Int32Array, Int64Array};
use arrow::datatypes::{DataType, Field, Fields, Schema};

use super::encoding::Encoding;

/// Column names, in file order.
pub const KEY: &str = "key";
pub const LABEL: &str = "label";
/// The image column of a raw shard.
pub const PIXELS: &str = "pixels";
/// The image column of a jpeg shard: Hugging Face's image struct.
pub const IMAGE: &str = "image";
/// The fields of the `image` struct, in Hugging Face's order.
pub const IMAGE_BYTES: &str = "bytes";
pub const IMAGE_PATH: &str = "path";
/// The Arrow schema metadata key `datasets` reads its features from.
pub const HUGGINGFACE_KEY: &str = "huggingface";

/// A shard column by position, for the Parquet-level readers and writers that address
/// columns by index rather than by name: the order is the one [`shard_schema`] lays out.
/// `Pixels` is the image column whatever the encoding: `pixels` (raw) or `image` (jpeg),
/// whose first leaf (`image.bytes`) is also Parquet leaf column 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Key = 0,
    Label = 1,
    Pixels = 2,
}

/// Parquet leaf column of `image.path` in a jpeg shard (after `image.bytes`).
pub const IMAGE_PATH_LEAF: usize = 3;

impl Column {
    /// Every column, in file order.
    pub const ALL: [Column; 3] = [Column::Key, Column::Label, Column::Pixels];

    /// Position in the file (and in every record batch of the full schema).
    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn name(self, encoding: Encoding) -> &'static str {
        match (self, encoding) {
            (Column::Key, _) => KEY,
            (Column::Label, _) => LABEL,
            (Column::Pixels, Encoding::Raw) => PIXELS,
            (Column::Pixels, Encoding::Jpeg) => IMAGE,
        }
    }

    /// The column at `index`, if the schema has one there.
    pub fn at(index: usize) -> Option<Column> {
        Column::ALL.get(index).copied()
    }

    fn field(self, image_size: usize, encoding: Encoding) -> Field {
        let name = self.name(encoding);
        match (self, encoding) {
            (Column::Key, _) => Field::new(name, DataType::Utf8, false),
            // Nullable int64 as Hugging Face's `ClassLabel` is, or `datasets` would not
            // take the class names from the metadata; ingest writes no null.
            (Column::Label, _) => Field::new(name, DataType::Int64, true),
            (Column::Pixels, Encoding::Raw) => Field::new(
                name,
                DataType::FixedSizeBinary(PixelLayout::new(image_size).bytes() as i32),
                false,
            )
            .with_metadata(PixelLayout::new(image_size).field_metadata()),
            // Nullable as Hugging Face's `Image` feature is, or `datasets` would not
            // recognise the column (it compares the fields, nullability included);
            // ingest writes no null.
            (Column::Pixels, Encoding::Jpeg) => Field::new(
                name,
                DataType::Struct(Fields::from(vec![
                    Field::new(IMAGE_BYTES, DataType::Binary, true),
                    Field::new(IMAGE_PATH, DataType::Utf8, true),
                ])),
                true,
            ),
        }
    }
}

/// How a stored image lies in its `pixels` value: S×S pixels, row-major, each three u8
/// (R, G, B) — HWC. The one place the layout is spelled out; ingest writes it, the
/// stream, the mean image and the feature tools read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelLayout {
    /// S, the side of every stored image.
    pub side: usize,
}

impl PixelLayout {
    /// Bytes (or values) per pixel.
    pub const CHANNELS: usize = 3;

    pub const fn new(side: usize) -> Self {
        Self { side }
    }

    /// Bytes of one image: S·S·3.
    pub const fn bytes(self) -> usize {
        self.side * self.row_bytes()
    }

    /// Bytes of one image row: S·3.
    pub const fn row_bytes(self) -> usize {
        self.side * Self::CHANNELS
    }

    /// The raw column's Arrow field metadata, so a reader that knows nothing of this
    /// crate can tell that the 196,608 bytes are a 256×256×3 u8 HWC image.
    pub fn field_metadata(self) -> HashMap<String, String> {
        HashMap::from([
            (
                "shape".to_string(),
                format!("[{},{},{}]", self.side, self.side, Self::CHANNELS),
            ),
            ("layout".to_string(), "HWC".to_string()),
            ("dtype".to_string(), "uint8".to_string()),
        ])
    }

    /// Where pixel (x, y)'s first channel sits.
    pub const fn offset(self, x: usize, y: usize) -> usize {
        y * self.row_bytes() + x * Self::CHANNELS
    }
}

/// The schema of a raw shard: `key` utf8 (source path relative to the ImageNet root),
/// `label` int64 (position of the wnid in sorted order; nullable, never null), `pixels`
/// fixed_size_binary(S·S·3) with its shape in the field metadata.
///
/// Pixels stay u8: the mean is subtracted on the fly in the augmentation stage,
/// which is exact and half the bytes of storing signed values.
pub fn shard_schema(image_size: usize) -> Arc<Schema> {
    shard_schema_for(image_size, Encoding::Raw)
}

/// The schema of a shard of `encoding`: a jpeg shard has `image`
/// struct<bytes: binary, path: utf8> (Hugging Face's image column, `path` = the key)
/// where a raw one has `pixels`.
pub fn shard_schema_for(image_size: usize, encoding: Encoding) -> Arc<Schema> {
    let fields: Vec<Field> = Column::ALL
        .iter()
        .map(|c| c.field(image_size, encoding))
        .collect();
    Arc::new(Schema::new(fields))
}

/// The `huggingface` schema metadata value: the features `datasets` builds from a
/// shard, so `load_dataset("parquet", ...)` yields PIL images (jpeg shards) and named
/// labels. Without class names the label is a plain int64.
pub fn huggingface_features(encoding: Encoding, class_names: &[String]) -> String {
    // Written by hand to keep the features in column order (serde_json's map sorts).
    let label = if class_names.is_empty() {
        r#"{"dtype": "int64", "_type": "Value"}"#.to_string()
    } else {
        let names = serde_json::to_string(class_names).expect("strings serialise");
        format!(r#"{{"names": {names}, "_type": "ClassLabel"}}"#)
    };
    let image = match encoding {
        Encoding::Raw => r#"{"dtype": "binary", "_type": "Value"}"#,
        Encoding::Jpeg => r#"{"_type": "Image"}"#,
    };
    format!(
        r#"{{"info": {{"features": {{"{KEY}": {{"dtype": "string", "_type": "Value"}}, "{LABEL}": {label}, "{}": {image}}}}}}}"#,
        Column::Pixels.name(encoding)
    )
}

/// Whether `field` is a label column a reader accepts: the nullable int64 ingest writes,
/// or the non-null int32 of shards written before the label became int64.
pub fn is_label_field(field: &Field) -> bool {
    field.name() == LABEL
        && matches!(
            (field.data_type(), field.is_nullable()),
            (DataType::Int64, _) | (DataType::Int32, false)
        )
}

/// A label column that does not fit the in-memory i32. `row` counts from the start of
/// the values handed in; readers shift it to the row in the row group (see
/// [`LabelError::at`]) and name the shard and row group around it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LabelError {
    #[error("row {row}: {LABEL} {label} is outside i32")]
    OutOfRange { row: usize, label: i64 },
    #[error("row {row}: the {LABEL} is null")]
    Null { row: usize },
    #[error("the {LABEL} column is {0}, expected Int64 (or Int32 in older shards)")]
    Type(String),
}

impl LabelError {
    /// The same error with its row renumbered by `row_of` (e.g. batch row → row in the
    /// row group).
    pub fn at(self, row_of: impl FnOnce(usize) -> usize) -> Self {
        match self {
            LabelError::OutOfRange { row, label } => LabelError::OutOfRange {
                row: row_of(row),
                label,
            },
            LabelError::Null { row } => LabelError::Null { row: row_of(row) },
            other => other,
        }
    }

    /// The row it names, if any.
    pub fn row(&self) -> Option<usize> {
        match self {
            LabelError::OutOfRange { row, .. } | LabelError::Null { row } => Some(*row),
            LabelError::Type(_) => None,
        }
    }
}

/// The labels of a label column, int64 or (older shards) int32, as the in-memory i32:
/// the one place the stored width is narrowed.
pub fn labels_i32(column: &dyn Array) -> Result<Vec<i32>, LabelError> {
    if let Some(row) = (0..column.len()).find(|&i| column.is_null(i)) {
        return Err(LabelError::Null { row });
    }
    let any = column.as_any();
    if let Some(labels) = any.downcast_ref::<Int32Array>() {
        return Ok(labels.values().to_vec());
    }
    match any.downcast_ref::<Int64Array>() {
        Some(labels) => narrow_labels(labels.values()),
        None => Err(LabelError::Type(column.data_type().to_string())),
    }
}

/// Stored int64 labels as i32, failing at the first label outside i32.
pub fn narrow_labels(labels: &[i64]) -> Result<Vec<i32>, LabelError> {
    labels
        .iter()
        .enumerate()
        .map(|(row, &label)| {
            i32::try_from(label).map_err(|_| LabelError::OutOfRange { row, label })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use arrow::array::StringArray;

    use super::*;

    #[test]
    fn labels_of_either_width_come_back_as_i32_and_a_wider_one_names_its_row() {
        let old = Int32Array::from(vec![0, 7, 3]);
        assert_eq!(labels_i32(&old), Ok(vec![0, 7, 3]));
        let new = Int64Array::from(vec![0, 7, 3]);
        assert_eq!(labels_i32(&new), Ok(vec![0, 7, 3]));
        let wide = Int64Array::from(vec![1, i64::from(i32::MAX) + 1]);
        let err = labels_i32(&wide).unwrap_err();
        assert_eq!(
            err,
            LabelError::OutOfRange {
                row: 1,
                label: 2_147_483_648
            }
        );
        assert_eq!(
            err.at(|r| r + 16).to_string(),
            "row 17: label 2147483648 is outside i32"
        );
        let null = Int64Array::from(vec![Some(1), None]);
        assert_eq!(labels_i32(&null), Err(LabelError::Null { row: 1 }));
        let text = StringArray::from(vec!["n01440764"]);
        assert_eq!(
            labels_i32(&text).unwrap_err().to_string(),
            "the label column is Utf8, expected Int64 (or Int32 in older shards)"
        );
    }

    #[test]
    fn the_label_field_is_nullable_int64_and_old_int32_shards_are_accepted() {
        let field = shard_schema(8).field(Column::Label.index()).clone();
        assert_eq!(
            (field.data_type(), field.is_nullable()),
            (&DataType::Int64, true)
        );
        assert!(is_label_field(&field));
        assert!(is_label_field(&Field::new(LABEL, DataType::Int32, false)));
        assert!(!is_label_field(&Field::new(LABEL, DataType::Utf8, false)));
    }
}
