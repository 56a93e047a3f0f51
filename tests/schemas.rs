//! The code's Arrow schemas equal the documented contracts in `schemas/`.

use arrow::datatypes::{DataType, Field, Schema};
use pipeline::dataset::shard_schema;

/// Builds the Arrow schema `schemas/shard.schema.json` documents, for image size `s`.
fn documented_shard_schema(s: usize) -> Schema {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/shard.schema.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(
        doc["format_version"],
        pipeline::dataset::manifest::FORMAT_VERSION
    );
    let fields = doc["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let data_type = match f["type"].as_str().unwrap() {
                "utf8" => DataType::Utf8,
                "int32" => DataType::Int32,
                "fixed_size_binary" => {
                    assert_eq!(f["byte_width"], "S*S*3");
                    DataType::FixedSizeBinary((s * s * 3) as i32)
                }
                other => panic!("undocumented type {other}"),
            };
            Field::new(
                f["name"].as_str().unwrap(),
                data_type,
                f["nullable"].as_bool().unwrap(),
            )
        })
        .collect::<Vec<_>>();
    Schema::new(fields)
}

#[test]
fn shard_schema_equals_the_documented_one() {
    for s in [32, 224, 256] {
        assert_eq!(
            *shard_schema(s),
            documented_shard_schema(s),
            "image size {s}"
        );
    }
}
