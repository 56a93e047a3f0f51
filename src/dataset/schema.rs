//! The shard schema: the single definition both the writer and the reader use.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};

/// Column names, in file order.
pub const KEY: &str = "key";
pub const LABEL: &str = "label";
pub const PIXELS: &str = "pixels";

/// Bytes of one stored image: S·S·3, row-major HWC RGB u8.
pub fn pixel_bytes(image_size: usize) -> usize {
    image_size * image_size * 3
}

/// `key` utf8 (source path relative to the ImageNet root), `label` int32
/// (position of the wnid in sorted order), `pixels` fixed_size_binary(S·S·3).
///
/// Pixels stay u8: the mean is subtracted on the fly in the augmentation stage,
/// which is exact and half the bytes of storing signed values.
pub fn shard_schema(image_size: usize) -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new(KEY, DataType::Utf8, false),
        Field::new(LABEL, DataType::Int32, false),
        Field::new(
            PIXELS,
            DataType::FixedSizeBinary(pixel_bytes(image_size) as i32),
            false,
        ),
    ]))
}
