//! The code's Arrow schemas equal the documented contracts in `schemas/`.

use std::collections::HashMap;

use arrow::datatypes::{DataType, Field, Schema};
use pipeline::dataset::Encoding;
use pipeline::dataset::schema::shard_schema_for;
use pipeline::dataset::shard_schema;

/// One documented field as an Arrow field, for image size `s`.
fn documented_field(f: &serde_json::Value, s: usize) -> Field {
    let data_type = match f["type"].as_str().unwrap() {
        "utf8" => DataType::Utf8,
        "int32" => DataType::Int32,
        "int64" => DataType::Int64,
        "binary" => DataType::Binary,
        "fixed_size_binary" => {
            assert_eq!(f["byte_width"], "S*S*3");
            DataType::FixedSizeBinary((s * s * 3) as i32)
        }
        "struct" => DataType::Struct(
            f["fields"]
                .as_array()
                .unwrap()
                .iter()
                .map(|child| documented_field(child, s))
                .collect(),
        ),
        other => panic!("undocumented type {other}"),
    };
    let field = Field::new(
        f["name"].as_str().unwrap(),
        data_type,
        f["nullable"].as_bool().unwrap(),
    );
    match f["metadata"].as_object() {
        Some(metadata) => field.with_metadata(
            metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().replace('S', &s.to_string())))
                .collect::<HashMap<_, _>>(),
        ),
        None => field,
    }
}

/// Builds the Arrow schema `schemas/shard.schema.json` documents for image size `s`:
/// `fields` (raw shards) or `jpeg_fields`.
fn documented_shard_schema(s: usize, list: &str) -> Schema {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/shard.schema.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(
        doc["format_version"],
        pipeline::dataset::manifest::FORMAT_VERSION
    );
    let fields = doc[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| documented_field(f, s))
        .collect::<Vec<_>>();
    Schema::new(fields)
}

#[test]
fn shard_schema_equals_the_documented_one() {
    for s in [32, 224, 256] {
        assert_eq!(
            *shard_schema(s),
            documented_shard_schema(s, "fields"),
            "image size {s}"
        );
        assert_eq!(
            *shard_schema_for(s, Encoding::Jpeg),
            documented_shard_schema(s, "jpeg_fields"),
            "jpeg, image size {s}"
        );
    }
}
