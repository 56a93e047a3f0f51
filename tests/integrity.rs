//! Bad data is caught and named, through the CLI as a user meets it: a flipped pixel
//! byte names its shard, row group, row and key, shards without checksums still stream (with a
//! note), a label outside the classes names its shard, row and key before training
//! creates a run, eval's advice names flags eval has, and a dataset without a val
//! split trains without pretending to validate and is refused by eval.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, FixedSizeBinaryArray, Int32Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use common::*;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use pipeline::dataset::reader::{ReadError, read_shard};
use pipeline::dataset::writer::{ShardRow, write_shard};
use pipeline::dataset::{Manifest, shard_schema};
use serde_json::Value;

/// The sample recipe's image size (its crop of 64 is the smallest AlexNet input).
const S: usize = 72;

/// A rendered sample: 8 train / 2 val images per class.
fn sample() -> &'static Path {
    static SOURCE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &SOURCE
        .get_or_init(|| {
            let tmp = tempfile::tempdir().unwrap();
            let source = render_sample(tmp.path(), "folders", 8, 2);
            (tmp, source)
        })
        .1
}

/// The sample ingested at S: shards of 64 rows in row groups of 16.
fn shared_dataset() -> &'static Path {
    static DATASET: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DATASET
        .get_or_init(|| {
            let tmp = tempfile::tempdir().unwrap();
            let out = tmp.path().join("dataset");
            ingest(sample(), &out, S, &[]);
            (tmp, out)
        })
        .1
}

/// A private copy of `shared_dataset()` to damage.
fn copy_dataset(dir: &Path) -> PathBuf {
    let to = dir.join("dataset");
    for (rel, bytes) in tree_bytes(shared_dataset()) {
        let path = to.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    to
}

fn s(path: &Path) -> &str {
    path_str(path)
}

fn stream_args<'a>(recipe: &'a Path, dataset: &'a Path) -> Vec<&'a str> {
    vec![
        "stream",
        "--dataset",
        s(dataset),
        "--recipe",
        s(recipe),
        "--batch-size",
        "16",
        "--views",
        "centre",
    ]
}

/// The JSON object on the last line of stdout.
fn last_json(output: &std::process::Output) -> Value {
    let out = stdout(output);
    serde_json::from_str(out.lines().last().expect("some output"))
        .unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Rewrites a shard with arrow's own writer: the same rows, but no pixel checksums in
/// the footer (as every shard written before they existed), label statistics only when
/// `label_statistics`, and with `int32_labels` the non-null int32 label of shards
/// written before the label became int64 (else the current schema).
fn rewrite_with_arrow_writer(
    path: &Path,
    rows: &[ShardRow],
    label_statistics: bool,
    int32_labels: bool,
) {
    let (schema, labels): (_, ArrayRef) = if int32_labels {
        let mut fields: Vec<Field> = shard_schema(S)
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields[1] = Field::new("label", DataType::Int32, false);
        (
            Arc::new(Schema::new(fields)),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.label))),
        )
    } else {
        (
            shard_schema(S),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| i64::from(r.label)),
            )),
        )
    };
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.key))),
            labels,
            Arc::new(FixedSizeBinaryArray::try_from_iter(rows.iter().map(|r| &r.pixels)).unwrap()),
        ],
    )
    .unwrap();
    let statistics = if label_statistics {
        EnabledStatistics::Page
    } else {
        EnabledStatistics::None
    };
    let properties = WriterProperties::builder()
        .set_statistics_enabled(statistics)
        .set_max_row_group_row_count(Some(16))
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, schema, Some(properties)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

#[test]
fn a_flipped_pixel_byte_is_caught_naming_the_shard_row_group_row_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = copy_dataset(tmp.path());
    let recipe = tiny_recipe(tmp.path(), 1, "");
    let shard = dataset.join("train/part-00000.parquet");
    // Row 37 is in row group 2 (16 rows a group); flip one byte in the middle of its
    // pixels, found in the file by its bytes.
    let rows = read_shard(&shard, S).unwrap();
    let pixels = &rows[37].pixels;
    let mut bytes = std::fs::read(&shard).unwrap();
    let at = bytes
        .windows(pixels.len())
        .position(|w| w == pixels.as_slice())
        .expect("the row's pixels are stored verbatim");
    bytes[at + pixels.len() / 2] ^= 0x10;
    std::fs::write(&shard, &bytes).unwrap();

    let named = format!(
        "part-00000.parquet: row 37 (row group 2, key {}): pixel data is corrupt",
        rows[37].key
    );
    let err = run_fails(&stream_args(&recipe, &dataset));
    assert!(err.contains(&named), "{err}");
    // The library's whole-shard reader checks the same CRCs.
    match read_shard(&shard, S) {
        Err(ReadError::Corrupt(corrupt))
            if (corrupt.row, corrupt.row_group) == (37, 2) && corrupt.key == rows[37].key => {}
        other => panic!("expected a corrupt row 37 in row group 2, got {other:?}"),
    }
    // Training checks each row as it augments it, but drops the epoch's last partial
    // batch, which may hold row 37: damage every row of row group 2 so that some are
    // trained on.
    let mut bytes = std::fs::read(&shard).unwrap();
    for row in rows[32..48].iter().filter(|r| r.key != rows[37].key) {
        let at = bytes
            .windows(row.pixels.len())
            .position(|w| w == row.pixels.as_slice())
            .expect("the row's pixels are stored verbatim");
        bytes[at + 7] ^= 0x01;
    }
    std::fs::write(&shard, &bytes).unwrap();
    let err = run_fails(&train_args(&recipe, &dataset, &tmp.path().join("run")));
    assert!(
        err.contains("part-00000.parquet: row ")
            && err.contains(" (row group 2, key train/")
            && err.contains("): pixel data is corrupt"),
        "{err}"
    );
    // The undamaged copy streams with no checksum note.
    let output = run(&stream_args(&recipe, shared_dataset()));
    let notes = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!notes.contains("checksums"), "{notes}");
}

#[test]
fn shards_without_checksums_still_stream_and_say_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = copy_dataset(tmp.path());
    let recipe = tiny_recipe(tmp.path(), 1, "");
    let manifest = Manifest::load(&dataset).unwrap();
    let shards = manifest.splits[&pipeline::dataset::Split::Train].shards;
    assert_eq!(shards, 2, "the sample fills two training shards");
    for i in 0..shards {
        let shard = dataset.join(format!("train/part-{i:05}.parquet"));
        let rows = read_shard(&shard, S).unwrap();
        rewrite_with_arrow_writer(&shard, &rows, true, true);
    }
    let expected = last_json(&run(&stream_args(&recipe, shared_dataset())))["images"].clone();
    let output = run(&stream_args(&recipe, &dataset));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        stderr.contains(&format!(
            "note: {} train: 2 of 2 shards have no pixel checksums",
            dataset.display()
        )),
        "{stderr}"
    );
    assert_eq!(stderr.matches("note:").count(), 1, "{stderr}");
    assert_eq!(last_json(&output)["images"], expected);
}

#[test]
fn a_label_outside_the_classes_is_named_before_training_creates_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(tmp.path(), 1, "");

    // A shard holding label -3 (the "gather invalid index 18446744073709551613" of old),
    // written by the pipeline's own shard writer (footer statistics present) ...
    let dataset = copy_dataset(&tmp.path().join("a"));
    let shard = dataset.join("train/part-00000.parquet");
    let mut rows = read_shard(&shard, S).unwrap();
    rows[37].label = -3;
    write_shard(&shard, S, 16, &rows).unwrap();
    let run_dir = tmp.path().join("run-a");
    let err = run_fails(&train_args(&recipe, &dataset, &run_dir));
    let expected = format!(
        "part-00000.parquet: row 37 (row group 2, key {}) has label -3, but dataset.json lists 10 classes",
        rows[37].key
    );
    assert!(err.contains(&expected), "{err}");
    assert!(!run_dir.exists(), "a refused dataset leaves no run behind");
    // ... and by a writer without label statistics (the labels themselves are read),
    // int64 labels as now and int32 as in shards written before.
    for int32_labels in [false, true] {
        rewrite_with_arrow_writer(&shard, &rows, false, int32_labels);
        let err = run_fails(&train_args(&recipe, &dataset, &run_dir));
        assert!(
            err.contains(&expected),
            "int32 labels {int32_labels}: {err}"
        );
        assert!(!run_dir.exists());
    }

    // A dataset.json whose class list is shorter than the shards' labels.
    let dataset = copy_dataset(&tmp.path().join("b"));
    let path = dataset.join("dataset.json");
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    manifest["classes"].as_array_mut().unwrap().truncate(5);
    std::fs::write(&path, manifest.to_string()).unwrap();
    let rows = read_shard(&dataset.join("train/part-00000.parquet"), S).unwrap();
    let (row, bad) = rows
        .iter()
        .enumerate()
        .find(|(_, r)| r.label >= 5)
        .expect("the sample mixes every class into each shard");
    let run_dir = tmp.path().join("run-b");
    let err = run_fails(&train_args(&recipe, &dataset, &run_dir));
    let expected = format!(
        "part-00000.parquet: row {row} (row group {}, key {}) has label {}, but dataset.json lists 5 classes",
        row / 16,
        bad.key,
        bad.label
    );
    assert!(err.contains(&expected), "{err}");
    assert!(!run_dir.exists(), "a refused dataset leaves no run behind");
    // The rerun with the manifest put right trains into the same folder.
    let mut fixed = manifest.clone();
    fixed["classes"] = serde_json::from_str::<Value>(
        &std::fs::read_to_string(shared_dataset().join("dataset.json")).unwrap(),
    )
    .unwrap()["classes"]
        .clone();
    std::fs::write(&path, fixed.to_string()).unwrap();
    run(&train_args(&recipe, &dataset, &run_dir));
}

#[test]
fn eval_with_another_image_size_advises_flags_eval_has() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(tmp.path(), 1, "");
    let run_dir = tmp.path().join("run");
    run(&train_args(&recipe, shared_dataset(), &run_dir));
    let other = tmp.path().join("dataset-64");
    ingest(sample(), &other, 64, &[]);
    let err = run_fails(&[
        "eval",
        "--run",
        s(&run_dir),
        "--dataset",
        s(&other),
        "--quiet",
    ]);
    assert!(
        err.contains("stores 64×64 images but the run was trained on 72×72")
            && err.contains("pass --dataset with a dataset ingested at that size")
            && err.contains("--image-size 72"),
        "{err}"
    );
    assert!(!err.contains("--recipe"), "eval has no --recipe: {err}");
}

#[test]
fn without_a_val_split_training_skips_validation_and_eval_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(tmp.path(), 2, "");
    // A source with only its train folder: ingest records an empty val split.
    let source = tmp.path().join("train-only");
    for (rel, bytes) in tree_bytes(sample()) {
        if rel.starts_with("val/") {
            continue;
        }
        let path = source.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let empty_val = tmp.path().join("empty-val");
    ingest(&source, &empty_val, S, &[]);
    // A dataset.json without the val split at all.
    let no_val = copy_dataset(tmp.path());
    let path = no_val.join("dataset.json");
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    manifest["splits"].as_object_mut().unwrap().remove("val");
    std::fs::write(&path, manifest.to_string()).unwrap();

    for (name, dataset) in [("empty-val", &empty_val), ("no-val", &no_val)] {
        let run_dir = tmp.path().join(format!("run-{name}"));
        let output = run(&train_args(&recipe, dataset, &run_dir));
        let out = stdout(&output);
        let note = format!(
            "{} has no val split: training without validation",
            dataset.display()
        );
        assert_eq!(out.matches(&note).count(), 1, "{out}");
        assert_eq!(out.matches("  val -  ").count(), 2, "{out}");
        let metrics: Vec<Value> = std::fs::read_to_string(run_dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(metrics.len(), 2);
        for m in &metrics {
            for key in ["val_top1_err", "val_top5_err", "val_images", "val_s"] {
                assert!(m[key].is_null(), "{key} recorded without validation: {m}");
            }
        }
        assert!(!run_dir.join("checkpoints/best.safetensors").exists());

        for checkpoint in ["best", "last"] {
            let err = run_fails(&[
                "eval",
                "--run",
                s(&run_dir),
                "--checkpoint",
                checkpoint,
                "--quiet",
            ]);
            assert!(
                err.contains(&format!(
                    "dataset {}: has no val split",
                    std::fs::canonicalize(dataset).unwrap().display()
                )) && err.contains("nothing to evaluate"),
                "{err}"
            );
        }
    }
}
