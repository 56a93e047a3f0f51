//! The shard schema: the single definition both the writer and the reader use.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};

/// Column names, in file order.
pub const KEY: &str = "key";
pub const LABEL: &str = "label";
pub const PIXELS: &str = "pixels";

/// A shard column by position, for the Parquet-level readers and writers that address
/// columns by index rather than by name: the order is the one [`shard_schema`] lays out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Key = 0,
    Label = 1,
    Pixels = 2,
}

impl Column {
    /// Every column, in file order.
    pub const ALL: [Column; 3] = [Column::Key, Column::Label, Column::Pixels];

    /// Position in the file (and in every record batch of the full schema).
    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn name(self) -> &'static str {
        match self {
            Column::Key => KEY,
            Column::Label => LABEL,
            Column::Pixels => PIXELS,
        }
    }

    /// The column at `index`, if the schema has one there.
    pub fn at(index: usize) -> Option<Column> {
        Column::ALL.get(index).copied()
    }

    fn data_type(self, image_size: usize) -> DataType {
        match self {
            Column::Key => DataType::Utf8,
            Column::Label => DataType::Int32,
            Column::Pixels => {
                DataType::FixedSizeBinary(PixelLayout::new(image_size).bytes() as i32)
            }
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

    /// Where pixel (x, y)'s first channel sits.
    pub const fn offset(self, x: usize, y: usize) -> usize {
        y * self.row_bytes() + x * Self::CHANNELS
    }
}

/// `key` utf8 (source path relative to the ImageNet root), `label` int32
/// (position of the wnid in sorted order), `pixels` fixed_size_binary(S·S·3).
///
/// Pixels stay u8: the mean is subtracted on the fly in the augmentation stage,
/// which is exact and half the bytes of storing signed values.
pub fn shard_schema(image_size: usize) -> Arc<Schema> {
    let fields: Vec<Field> = Column::ALL
        .iter()
        .map(|c| Field::new(c.name(), c.data_type(image_size), false))
        .collect();
    Arc::new(Schema::new(fields))
}
