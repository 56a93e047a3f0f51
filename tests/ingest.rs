//! `pipeline ingest` end to end on the bundled sample: every layout, every quirk,
//! resume after `kill -9`, determinism across worker counts, and the statistics.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::*;
use pipeline::dataset::reader::{read_shard, shard_paths};
use pipeline::dataset::writer::ShardRow;
use pipeline::dataset::{Manifest, Split, npy};
use pipeline::sample::{SampleLayout, SampleOptions};

const SIZE: usize = 64;

fn render(
    dir: &Path,
    layout: SampleLayout,
    train: usize,
    val: usize,
) -> (std::path::PathBuf, pipeline::sample::SampleSummary) {
    let out = dir.join(format!("src-{layout:?}"));
    let options = SampleOptions {
        out: out.clone(),
        layout,
        train_per_class: train,
        val_per_class: val,
        ..SampleOptions::default()
    };
    let summary = pipeline::sample::render(&options).expect("sample renders");
    (out, summary)
}

fn rows(dataset: &Path, split: Split) -> Vec<ShardRow> {
    let manifest = Manifest::load(dataset).unwrap();
    let shards = manifest.split(split).unwrap().shards;
    shard_paths(dataset, split, shards)
        .iter()
        .flat_map(|p| read_shard(p, manifest.image_size).unwrap())
        .collect()
}

fn file_name(key: &str) -> String {
    key.rsplit('/').next().unwrap().to_string()
}

#[test]
fn folders_layout_ingests_every_image_and_quirk_with_its_label() {
    let tmp = tempfile::tempdir().unwrap();
    let (source, summary) = render(tmp.path(), SampleLayout::Folders, 20, 5);
    let out = tmp.path().join("ds");
    let output = ingest(&source, &out, SIZE, &[]);
    assert!(
        stdout(&output).contains("train       199 images"),
        "{}",
        stdout(&output)
    );

    let manifest = Manifest::load(&out).unwrap();
    assert_eq!(manifest.image_size, SIZE);
    let wnids: Vec<&str> = manifest.classes.iter().map(|c| c.wnid.as_str()).collect();
    let mut sorted = wnids.clone();
    sorted.sort();
    assert_eq!(wnids, sorted, "class index = sorted wnid order");
    assert_eq!(wnids.len(), 10);
    let jersey = manifest
        .classes
        .iter()
        .find(|c| c.wnid == "n03595614")
        .unwrap();
    assert!(
        jersey.name.contains("T-shirt"),
        "names come from synset_words.txt: {jersey:?}"
    );

    // Exactly the truncated file is skipped, with its reason.
    assert_eq!(manifest.skipped.len(), 1, "{:?}", manifest.skipped);
    assert!(
        manifest.skipped[0].reason.contains("truncated"),
        "{:?}",
        manifest.skipped
    );
    let quirk_keys: BTreeMap<String, String> = summary
        .quirks
        .iter()
        .map(|(path, what)| (path.to_string_lossy().replace('\\', "/"), what.to_string()))
        .collect();
    let truncated: Vec<&String> = quirk_keys
        .iter()
        .filter(|(_, w)| w.contains("truncat"))
        .map(|(k, _)| k)
        .collect();
    assert_eq!(truncated, vec![&manifest.skipped[0].path]);

    let train = rows(&out, Split::Train);
    assert_eq!(train.len(), 199);
    assert_eq!(manifest.split(Split::Train).unwrap().rows, 199);
    assert_eq!(manifest.split(Split::Train).unwrap().shards, 4);
    let keys: BTreeSet<&str> = train.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys.len(), 199, "keys are unique");
    for row in &train {
        let wnid = row.key.split('/').nth(1).unwrap();
        assert_eq!(wnids[row.label as usize], wnid, "label of {}", row.key);
        assert_eq!(row.pixels.len(), SIZE * SIZE * 3);
    }
    // The PNG-named-.JPEG and the CMYK JPEG are ingested, in colour where colourful.
    for (key, what) in &quirk_keys {
        if what.contains("truncat") {
            continue;
        }
        assert!(
            keys.contains(key.as_str()),
            "quirk {what} ({key}) was not ingested"
        );
    }
    // Training rows are shuffled: the first shard mixes classes.
    let first_shard = read_shard(&out.join("train/part-00000.parquet"), SIZE).unwrap();
    let classes_in_first: BTreeSet<i32> = first_shard.iter().map(|r| r.label).collect();
    assert!(
        classes_in_first.len() >= 8,
        "first shard holds classes {classes_in_first:?}"
    );

    // Val: in file order, labelled by folder.
    let val = rows(&out, Split::Val);
    assert_eq!(val.len(), 50);
    let val_keys: Vec<&str> = val.iter().map(|r| r.key.as_str()).collect();
    let mut sorted_val = val_keys.clone();
    sorted_val.sort();
    assert_eq!(val_keys, sorted_val);
    for row in &val {
        assert_eq!(
            wnids[row.label as usize],
            row.key.split('/').nth(1).unwrap()
        );
    }
}

/// Val labels by file name, from any layout.
fn val_labels_by_name(dataset: &Path) -> BTreeMap<String, i32> {
    rows(dataset, Split::Val)
        .iter()
        .map(|r| (file_name(&r.key), r.label))
        .collect()
}

#[test]
fn kaggle_devkit_and_label_file_layouts_label_val_like_class_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let (folders, _) = render(tmp.path(), SampleLayout::Folders, 3, 4);
    let (kaggle, _) = render(tmp.path(), SampleLayout::Kaggle, 3, 4);
    let (devkit, _) = render(tmp.path(), SampleLayout::Devkit, 3, 4);
    let expected = {
        let out = tmp.path().join("ds-folders");
        ingest(&folders, &out, 32, &[]);
        val_labels_by_name(&out)
    };
    assert_eq!(expected.len(), 40);

    let out = tmp.path().join("ds-kaggle");
    let output = ingest(&kaggle, &out, 32, &[]);
    assert!(stdout(&output).contains("Kaggle"));
    assert_eq!(val_labels_by_name(&out), expected);
    let keys: Vec<String> = rows(&out, Split::Train)
        .iter()
        .map(|r| r.key.clone())
        .collect();
    assert!(
        keys.iter()
            .all(|k| k.starts_with("ILSVRC/Data/CLS-LOC/train/")),
        "{keys:?}"
    );
    let jersey = Manifest::load(&out)
        .unwrap()
        .classes
        .into_iter()
        .find(|c| c.wnid == "n03595614")
        .unwrap();
    assert_ne!(
        jersey.name, jersey.wnid,
        "names come from LOC_synset_mapping.txt"
    );

    let out = tmp.path().join("ds-devkit");
    let output = ingest(&devkit, &out, 32, &[]);
    assert!(stdout(&output).contains("devkit"));
    assert_eq!(
        val_labels_by_name(&out),
        expected,
        "devkit ILSVRC2012_IDs map through meta.mat order"
    );

    // The same flat val labelled by a `filename wnid` file instead.
    std::fs::remove_file(devkit.join("ILSVRC2012_validation_ground_truth.txt")).unwrap();
    let manifest = Manifest::load(&tmp.path().join("ds-folders")).unwrap();
    let label_file = tmp.path().join("val-labels.txt");
    let lines: Vec<String> = expected
        .iter()
        .map(|(name, label)| format!("{name} {}", manifest.classes[*label as usize].wnid))
        .collect();
    std::fs::write(&label_file, lines.join("\n")).unwrap();
    let out = tmp.path().join("ds-labels");
    ingest(&devkit, &out, 32, &["--val-labels", path_str(&label_file)]);
    assert_eq!(val_labels_by_name(&out), expected);
}

#[test]
fn missing_pieces_are_named_in_the_error() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = run_fails(&[
        "ingest",
        path_str(&empty),
        "--out",
        path_str(&tmp.path().join("o1")),
        "--quiet",
    ]);
    assert!(
        err.contains("train/<wnid>") && err.contains("ILSVRC/Data/CLS-LOC"),
        "{err}"
    );

    let (devkit, _) = render(tmp.path(), SampleLayout::Devkit, 1, 1);
    std::fs::remove_file(devkit.join("ILSVRC2012_validation_ground_truth.txt")).unwrap();
    let err = run_fails(&[
        "ingest",
        path_str(&devkit),
        "--out",
        path_str(&tmp.path().join("o2")),
        "--quiet",
    ]);
    assert!(
        err.contains("ILSVRC2012_validation_ground_truth.txt") && err.contains("--val-labels"),
        "{err}"
    );

    let (kaggle, _) = render(tmp.path(), SampleLayout::Kaggle, 1, 1);
    std::fs::remove_file(kaggle.join("LOC_val_solution.csv")).unwrap();
    let err = run_fails(&[
        "ingest",
        path_str(&kaggle),
        "--out",
        path_str(&tmp.path().join("o3")),
        "--quiet",
    ]);
    assert!(err.contains("LOC_val_solution.csv"), "{err}");
}

#[test]
fn output_is_byte_identical_for_any_worker_count() {
    let tmp = tempfile::tempdir().unwrap();
    let (source, _) = render(tmp.path(), SampleLayout::Folders, 8, 2);
    let one = tmp.path().join("w1");
    let two = tmp.path().join("w2");
    ingest(&source, &one, SIZE, &["--workers", "1"]);
    ingest(&source, &two, SIZE, &["--workers", "2"]);
    assert_eq!(tree_bytes(&one), tree_bytes(&two));
}

#[test]
fn killed_ingest_resumes_without_redoing_shards_and_ends_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (source, _) = render(tmp.path(), SampleLayout::Folders, 40, 5);
    let reference = tmp.path().join("reference");
    ingest(&source, &reference, 128, &["--rows-per-shard", "16"]);

    let out = tmp.path().join("killed");
    let child = bin()
        .args([
            "ingest",
            path_str(&source),
            "--out",
            path_str(&out),
            "--image-size",
            "128",
        ])
        .args([
            "--rows-per-shard",
            "16",
            "--rows-per-row-group",
            "16",
            "--quiet",
            "--workers",
            "1",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let shards_at_kill = kill_after_train_shards(child, &out.join(".ingest/state.json"), 2);
    assert!(
        shards_at_kill >= 2,
        "the ingest did not get far enough to be killed mid-run"
    );
    assert!(
        !out.join("dataset.json").exists(),
        "killed before the manifest, so the run was really cut short"
    );

    let output = ingest(&source, &out, 128, &["--rows-per-shard", "16"]);
    assert!(
        stdout(&output).contains("shards already done"),
        "{}",
        stdout(&output)
    );
    let mut resumed = tree_bytes(&out);
    let mut expected = tree_bytes(&reference);
    // Leftover temp files of the killed run may remain; every real output must be identical.
    resumed.retain(|k, _| !k.ends_with(".tmp"));
    expected.retain(|k, _| !k.ends_with(".tmp"));
    assert_eq!(
        resumed.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &expected {
        assert!(resumed[name] == *bytes, "{name} differs after resume");
    }
}

#[test]
fn mean_image_and_pca_match_an_independent_computation() {
    let tmp = tempfile::tempdir().unwrap();
    let (source, _) = render(tmp.path(), SampleLayout::Folders, 10, 1);
    let out = tmp.path().join("ds");
    ingest(&source, &out, 32, &[]);
    let manifest = Manifest::load(&out).unwrap();
    let train = rows(&out, Split::Train);

    let n = train.len() as f64;
    let mut mean = vec![0f64; 32 * 32 * 3];
    let mut rgb = Vec::new();
    for row in &train {
        for (m, &v) in mean.iter_mut().zip(&row.pixels) {
            *m += v as f64 / n;
        }
        rgb.extend(row.pixels.chunks(3).map(|p| {
            [
                p[0] as f64 / 255.0,
                p[1] as f64 / 255.0,
                p[2] as f64 / 255.0,
            ]
        }));
    }
    let stored = npy::read_f32(&out.join("mean.npy"), &[32, 32, 3]).unwrap();
    for (a, b) in stored.iter().zip(&mean) {
        assert!((*a as f64 - b).abs() < 1e-3, "{a} vs {b}");
    }
    let count = rgb.len() as f64;
    let mu: Vec<f64> = (0..3)
        .map(|c| rgb.iter().map(|p| p[c]).sum::<f64>() / count)
        .collect();
    for (stored, mu) in manifest.stats.mean_rgb.iter().zip(&mu) {
        assert!((stored - mu * 255.0).abs() < 1e-6);
    }
    let cov: Vec<Vec<f64>> = (0..3)
        .map(|i| {
            (0..3)
                .map(|j| {
                    rgb.iter()
                        .map(|p| (p[i] - mu[i]) * (p[j] - mu[j]))
                        .sum::<f64>()
                        / count
                })
                .collect()
        })
        .collect();
    let pca = &manifest.stats.pca;
    assert!(pca.eigenvalues[0] > pca.eigenvalues[1] && pca.eigenvalues[1] > pca.eigenvalues[2]);
    let trace: f64 = (0..3).map(|i| cov[i][i]).sum();
    assert!((pca.eigenvalues.iter().sum::<f64>() - trace).abs() < 1e-9);
    for k in 0..3 {
        for (row, cov_row) in cov.iter().enumerate() {
            let cv: f64 = (0..3).map(|j| cov_row[j] * pca.eigenvectors[j][k]).sum();
            assert!(
                (cv - pca.eigenvalues[k] * pca.eigenvectors[row][k]).abs() < 1e-9,
                "eigenpair {k}"
            );
        }
    }
}
