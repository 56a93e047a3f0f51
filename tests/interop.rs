//! The dataset opens as-is in pyarrow + numpy (a Python user's first move).
//! Needs Python with pyarrow and numpy: found, provisioned in a venv under `target/`, or the
//! test skips saying why (`.ci/run` installs them and forbids the skip).

mod common;

use std::process::Command;

use common::*;
use pipeline::dataset::reader::read_shard;
use pipeline::dataset::{Manifest, Split, npy};
use pipeline::sample::SampleOptions;

#[test]
fn pyarrow_reads_the_shards_and_numpy_the_mean() {
    let Some(python) = python::python_with(
        "pyarrow_reads_the_shards_and_numpy_the_mean",
        &[python::PYARROW, python::NUMPY],
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("src");
    let options = SampleOptions {
        out: source.clone(),
        train_per_class: 4,
        val_per_class: 2,
        ..SampleOptions::default()
    };
    pipeline::sample::render(&options).unwrap();
    let out = tmp.path().join("ds");
    ingest(&source, &out, 48, &[]);

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pyarrow_check.py");
    let output = Command::new(&python)
        .arg(script)
        .arg(&out)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "pyarrow could not read the dataset:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let manifest = Manifest::load(&out).unwrap();
    assert_eq!(
        report["train_rows"],
        manifest.split(Split::Train).unwrap().rows
    );
    assert_eq!(report["val_rows"], manifest.split(Split::Val).unwrap().rows);
    let first = &read_shard(&out.join("train/part-00000.parquet"), 48).unwrap()[0];
    assert_eq!(report["first_key"], first.key.as_str());
    assert_eq!(report["first_label"], first.label);
    assert_eq!(
        report["first_pixel_sum"],
        first.pixels.iter().map(|&v| v as u64).sum::<u64>()
    );
    let mean = npy::read_f32(&out.join("mean.npy"), &[48, 48, 3]).unwrap();
    let mean_of_mean = mean.iter().map(|&v| v as f64).sum::<f64>() / mean.len() as f64;
    assert!((report["mean_of_mean"].as_f64().unwrap() - mean_of_mean).abs() < 1e-3);
}
