//! The features file's schema: the single definition the writer, the reader and the
//! schema test use (`schemas/features.schema.json` documents it).

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};

use crate::model::FeatureLayer;

/// Bumped whenever the on-disk contract changes; readers refuse other versions.
pub const FORMAT_VERSION: u32 = 1;

/// Column names, in file order (`code` is present only in files with binary codes).
pub const KEY: &str = "key";
pub const LABEL: &str = "label";
pub const FEATURES: &str = "features";
pub const CODE: &str = "code";
/// Name of the `features` list's child field (Arrow's conventional list item name).
pub const ITEM: &str = "item";

/// Key-value metadata written by the exporter. Keys under this prefix are reserved;
/// callers add their own (`checkpoint`, `recipe_hash`, …) next to them.
pub const META_PREFIX: &str = "pipeline.features.";
pub const META_FORMAT_VERSION: &str = "pipeline.features.format_version";
pub const META_LAYER: &str = "pipeline.features.layer";
pub const META_DIM: &str = "pipeline.features.dim";
pub const META_CROP: &str = "pipeline.features.crop";
pub const META_IMAGE_SIZE: &str = "pipeline.features.image_size";
pub const META_CLASSES: &str = "pipeline.features.classes";
pub const META_DATASET: &str = "pipeline.features.dataset";
pub const META_SPLIT: &str = "pipeline.features.split";
/// Present only with a `code` column: bits per code (a multiple of 8).
pub const META_CODE_BITS: &str = "pipeline.features.code_bits";
/// Present only with a `code` column: the codes model directory that encoded it.
pub const META_CODES_MODEL: &str = "pipeline.features.codes_model";

/// `key` utf8, `label` int32, `features` fixed_size_list<float32 non-null>[dim], and,
/// when `code_bytes` is given, `code` fixed_size_binary(code_bytes). Nothing nullable.
pub fn feature_schema(dim: usize, code_bytes: Option<usize>) -> Arc<Schema> {
    let mut fields = vec![
        Field::new(KEY, DataType::Utf8, false),
        Field::new(LABEL, DataType::Int32, false),
        Field::new(FEATURES, features_type(dim), false),
    ];
    if let Some(bytes) = code_bytes {
        fields.push(Field::new(
            CODE,
            DataType::FixedSizeBinary(bytes as i32),
            false,
        ));
    }
    Arc::new(Schema::new(fields))
}

/// The `features` column's type: a fixed-size list of non-null float32.
pub fn features_type(dim: usize) -> DataType {
    DataType::FixedSizeList(Arc::new(item_field()), dim as i32)
}

pub(crate) fn item_field() -> Field {
    Field::new(ITEM, DataType::Float32, false)
}

/// Rows per Parquet row group for `dim`-wide features: about [`ROW_GROUP_BYTES`] of
/// features, so a reader streams the file a few megabytes at a time (512 rows at
/// D = 4096), between 64 and 8192 rows.
pub fn rows_per_row_group(dim: usize) -> usize {
    (ROW_GROUP_BYTES / (dim.max(1) * 4)).clamp(64, 8192)
}

/// Target size of one row group's features.
pub const ROW_GROUP_BYTES: usize = 8 << 20;

/// The layer's name in files and on the command line: `fc6`, `fc7`, `fc8`.
pub fn layer_name(layer: FeatureLayer) -> &'static str {
    match layer {
        FeatureLayer::Fc6 => "fc6",
        FeatureLayer::Fc7 => "fc7",
        FeatureLayer::Fc8 => "fc8",
    }
}

/// Inverse of [`layer_name`].
pub fn parse_layer(name: &str) -> Option<FeatureLayer> {
    match name {
        "fc6" => Some(FeatureLayer::Fc6),
        "fc7" => Some(FeatureLayer::Fc7),
        "fc8" => Some(FeatureLayer::Fc8),
        _ => None,
    }
}

/// Renders a schema's fields compactly for error messages.
pub(crate) fn describe(schema: &Schema) -> String {
    let fields: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| {
            format!(
                "{}: {}{}",
                f.name(),
                f.data_type(),
                if f.is_nullable() { " (nullable)" } else { "" }
            )
        })
        .collect();
    format!("[{}]", fields.join(", "))
}
