//! The shard schema: the single definition both the writer and the reader use.

use std::collections::HashMap;
use std::sync::Arc;

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
            (Column::Label, _) => Field::new(name, DataType::Int32, false),
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
/// `label` int32 (position of the wnid in sorted order), `pixels`
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
/// labels. Without class names the label is a plain int32.
pub fn huggingface_features(encoding: Encoding, class_names: &[String]) -> String {
    // Written by hand to keep the features in column order (serde_json's map sorts).
    let label = if class_names.is_empty() {
        r#"{"dtype": "int32", "_type": "Value"}"#.to_string()
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
