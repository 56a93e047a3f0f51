//! Runs as `src/run/` opens them, end to end through the CLI: a run directory written in
//! checkpoint format 1 (model card and trainer state in one object, `tests/fixtures/old_run`)
//! still evaluates, classifies and resumes exactly as the binary that wrote it did, and
//! the one compatibility check refuses a dataset the run cannot read with one message
//! naming both sides, in every command that opens a run.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;
use serde_json::Value;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/old_run")
}

/// The sample the fixture was trained on, rendered and ingested as its README says,
/// once for every test of this file: (source tree, dataset).
fn sample() -> &'static (PathBuf, PathBuf) {
    static SAMPLE: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    SAMPLE.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("run-compat");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let source = render_sample(&root, "folders", 10, 3);
        let dataset = root.join("dataset");
        ingest(&source, &dataset, 72, &[]);
        (source, dataset)
    })
}

/// A copy of the fixture's run directory under `dir` (commands write into it).
fn old_run(dir: &Path) -> PathBuf {
    let to = dir.join("run");
    for (rel, bytes) in tree_bytes(&fixture().join("run")) {
        let path = to.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    to
}

fn s(path: &Path) -> &str {
    path_str(path)
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `classify --json` lines with each path made the key relative to the source tree,
/// as the fixture records them.
fn keyed(output: &str, source: &Path) -> Vec<Value> {
    let prefix = format!("{}/", source.display());
    output
        .lines()
        .map(|line| {
            let mut v: Value = serde_json::from_str(line).unwrap();
            let path = v["path"].as_str().unwrap().to_string();
            let o = v.as_object_mut().unwrap();
            o.remove("path");
            o.insert(
                "key".into(),
                path.strip_prefix(&prefix).unwrap_or(&path).into(),
            );
            v
        })
        .collect()
}

fn fixture_lines(name: &str) -> Vec<Value> {
    std::fs::read_to_string(fixture().join(name))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The same JSON, numbers equal to 1e-5 relative: the same keys, classes and order, the
/// probabilities as the fixture's binary computed them up to f32 rounding (the CPU
/// kernels' summation order changes with the library that runs them, oneDNN or ours).
fn same_up_to_rounding(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Number(g), Value::Number(w)) => {
            let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
            (g - w).abs() <= 1e-5 * w.abs().max(1e-3)
        }
        (Value::Array(g), Value::Array(w)) => {
            g.len() == w.len() && g.iter().zip(w).all(|(g, w)| same_up_to_rounding(g, w))
        }
        (Value::Object(g), Value::Object(w)) => {
            g.len() == w.len()
                && g.iter()
                    .all(|(k, g)| w.get(k).is_some_and(|w| same_up_to_rounding(g, w)))
        }
        _ => got == want,
    }
}

/// The metadata keys of a checkpoint's safetensors header.
fn metadata_keys(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut keys: Vec<String> = header.metadata().clone().unwrap().into_keys().collect();
    keys.sort();
    keys
}

#[test]
fn a_format_1_run_evaluates_classifies_and_resumes_as_the_binary_that_wrote_it() {
    let (source, dataset) = sample();
    let tmp = tempfile::tempdir().unwrap();
    let run = old_run(tmp.path());
    let expected = expected();
    let best = run.join("checkpoints/best.safetensors");
    assert_eq!(
        metadata_keys(&best),
        ["pipeline.checkpoint", "pipeline.digest"]
    );

    for (views, flag) in [("eval_centre", None), ("eval_ten_crop", Some("--ten-crop"))] {
        let mut args = vec!["eval", "--run", s(&run), "--dataset", s(dataset), "--quiet"];
        args.extend(flag);
        let output = common::run(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("is in format version 1"), "{stderr}");
        let report = last_json(&output);
        for key in ["epoch", "step", "images", "top1_err", "top5_err"] {
            assert_eq!(report[key], expected[views][key], "{views} {key}: {report}");
        }
    }

    for (name, flag) in [
        ("classify_centre.jsonl", None),
        ("classify_ten_crop.jsonl", Some("--ten-crop")),
    ] {
        let val = source.join("val");
        let mut args = vec!["classify", "--run", s(&run), "--dataset", s(dataset)];
        args.extend(["--json", "--top", "3"]);
        args.extend(flag);
        args.push(s(&val));
        let lines = keyed(&stdout(&common::run(&args)), source);
        let want = fixture_lines(name);
        assert_eq!(lines.len(), want.len(), "{name}: one line per image");
        for (got, want) in lines.iter().zip(&want) {
            assert!(same_up_to_rounding(got, want), "{name}: {got} vs {want}");
        }
    }

    // Resuming continues the old run: epoch 2 is the epoch 2 of its uninterrupted run,
    // and the checkpoint it writes is format 2 (card and trainer state apart). The loss
    // is compared to 1e-6 relative, not bit for bit: the CPU GEMMs have changed kernels
    // (AVX-512, then oneDNN) since the fixture was written, and with them the summation
    // order; bit for bit within one build is `tests/train.rs`'s resume test.
    common::run(&[
        "train",
        "--resume",
        s(&run),
        "--dataset",
        s(dataset),
        "--epochs",
        "2",
        "--quiet",
    ]);
    let lines = metrics_without_timing(&run);
    assert_eq!(lines.len(), 2);
    for (key, want) in expected["resumed_epoch_2"].as_object().unwrap() {
        let got = &lines[1][key];
        match (key.as_str(), got.as_f64(), want.as_f64()) {
            ("train_loss", Some(g), Some(w)) => {
                assert!((g - w).abs() <= 1e-6 * w.abs(), "epoch 2 {key}: {g} vs {w}")
            }
            _ => assert_eq!(got, want, "epoch 2 {key}"),
        }
    }
    let newest = run.join("checkpoints/step-00000012.safetensors");
    assert_eq!(
        metadata_keys(&newest),
        ["pipeline.card", "pipeline.digest", "pipeline.trainer"]
    );
    let report = last_json(&common::run(&[
        "eval",
        "--run",
        s(&run),
        "--dataset",
        s(dataset),
        "--checkpoint",
        "last",
        "--quiet",
    ]));
    assert_eq!(
        (report["epoch"].as_u64(), report["step"].as_u64()),
        (Some(2), Some(12))
    );
}

/// The sample without its first class (9 classes), and the sample at 64 px.
fn misfits(dir: &Path) -> (PathBuf, PathBuf) {
    let (source, _) = sample();
    let nine_source = dir.join("nine-src");
    for (rel, bytes) in tree_bytes(source) {
        if rel.contains("n02769748") {
            continue;
        }
        let path = nine_source.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let nine = dir.join("nine");
    ingest(&nine_source, &nine, 72, &[]);
    let small = dir.join("small");
    ingest(source, &small, 64, &[]);
    (nine, small)
}

#[test]
fn every_command_that_opens_a_run_refuses_a_misfit_dataset_naming_both_sides() {
    let (_, dataset) = sample();
    let tmp = tempfile::tempdir().unwrap();
    let run = old_run(tmp.path());
    // Epoch 2 in format 2, so both card readers meet the check.
    common::run(&[
        "train",
        "--resume",
        s(&run),
        "--dataset",
        s(dataset),
        "--epochs",
        "2",
        "--quiet",
    ]);
    let (nine, small) = misfits(tmp.path());
    let features = tmp.path().join("features.parquet");
    let image = sample().0.join("val/n03124043");

    for (checkpoint, file) in [
        ("best", "best.safetensors"),
        ("last", "step-00000012.safetensors"),
    ] {
        let named = run.join("checkpoints").join(file);
        let classes = format!(
            "dataset {}: has 9 classes but the run was trained on 10 (the classes recorded in {}); \
             class 0 is n02769748 there but n03124043 here",
            nine.display(),
            named.display()
        );
        let err = run_fails(&[
            "eval",
            "--run",
            s(&run),
            "--dataset",
            s(&nine),
            "--checkpoint",
            checkpoint,
            "--quiet",
        ]);
        assert!(err.contains(&classes), "{err}");
        let err = run_fails(&[
            "eval",
            "--run",
            s(&run),
            "--dataset",
            s(&small),
            "--checkpoint",
            checkpoint,
            "--quiet",
        ]);
        let size = format!(
            "dataset {}: stores 64×64 images but the run was trained on 72×72 (data.image_size \
             of run {})",
            small.display(),
            run.display()
        );
        assert!(err.contains(&size), "{err}");
    }

    // The same check, the same words, wherever a run is opened (best checkpoint).
    let best = run.join("checkpoints/best.safetensors");
    let classes = format!(
        "dataset {}: has 9 classes but the run was trained on 10 (the classes recorded in {})",
        nine.display(),
        best.display()
    );
    let commands: [Vec<&str>; 3] = [
        vec![
            "classify",
            "--run",
            s(&run),
            "--dataset",
            s(&nine),
            s(&image),
        ],
        vec![
            "export-features",
            "--run",
            s(&run),
            "--dataset",
            s(&nine),
            "--out",
            s(&features),
        ],
        vec![
            "train",
            "--resume",
            s(&run),
            "--dataset",
            s(&nine),
            "--epochs",
            "3",
            "--quiet",
        ],
    ];
    for args in &commands {
        let err = run_fails(args);
        let want = if args[0] == "train" {
            // Resume reads the newest checkpoint.
            classes.replace("best.safetensors", "step-00000012.safetensors")
        } else {
            classes.clone()
        };
        assert!(err.contains(&want), "{}: {err}", args[0]);
    }
    assert!(!features.exists(), "nothing written for a misfit");
}
