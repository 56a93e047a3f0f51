//! `pipeline experiment` and `pipeline report` end to end on a tiny sample: an
//! experiment of two tiny recipes (ReLU and its tanh diff) trains, resumes an unfinished
//! run, skips finished ones on a rerun, refuses a run whose recipe changed; the report
//! renders every figure as a PNG of the expected size that is not blank, and an
//! index.html that shows them and the tables.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use common::*;

/// The sample, ingested at the sample recipe's 72 px (30 train, 10 val per class).
fn dataset(root: &Path) -> PathBuf {
    let source = render_sample(root, "folders", 30, 10);
    let dataset = root.join("dataset");
    ingest(&source, &dataset, 72, &[]);
    dataset
}

/// `relu.toml` (the tiny sample recipe) and `tanh.toml`, a diff of it by `base`.
fn recipes(root: &Path, epochs: usize) -> (PathBuf, PathBuf) {
    let folder = root.join("recipes");
    std::fs::create_dir_all(&folder).unwrap();
    let tiny = tiny_recipe(&root.join("recipes"), epochs, "");
    let relu = folder.join("relu.toml");
    std::fs::rename(tiny, &relu).unwrap();
    let tanh = folder.join("tanh.toml");
    std::fs::write(
        &tanh,
        "base = \"relu.toml\"\n[model]\nactivation = \"tanh\"\n",
    )
    .unwrap();
    (relu, tanh)
}

fn experiment_args<'a>(
    relu: &'a Path,
    tanh: &'a Path,
    data: &'a Path,
    exp: &'a Path,
) -> Vec<&'a str> {
    vec![
        "experiment",
        "--recipes",
        path_str(relu),
        path_str(tanh),
        "--dataset",
        path_str(data),
        "--out",
        path_str(exp),
        "--threshold",
        "0.85",
        "--quiet",
    ]
}

/// The PNG's size, and whether it shows something: several colours, and a good share
/// of pixels that are not the background (its most common colour).
fn decode(path: &Path) -> ((u32, u32), usize, f64) {
    let image = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    let mut counts = std::collections::HashMap::new();
    for p in image.pixels() {
        *counts.entry(p.0).or_insert(0usize) += 1;
    }
    let background = counts.values().copied().max().unwrap_or(0);
    let total = (image.width() * image.height()) as f64;
    (
        image.dimensions(),
        counts.len(),
        1.0 - background as f64 / total,
    )
}

#[test]
fn experiment_resumes_skips_and_the_report_draws_every_figure() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = dataset(root);
    let (relu, tanh) = recipes(root, 2);
    let exp = root.join("exp");

    // An unfinished run of relu seed 0 (stopped after 3 steps), as a killed experiment
    // leaves one: the experiment must resume it, not start it over or refuse it.
    let unfinished = exp.join("relu-s0");
    run(&[
        "train",
        "--recipe",
        path_str(&relu),
        "--dataset",
        path_str(&data),
        "--out",
        path_str(&unfinished),
        "--stop-after-steps",
        "3",
        "--quiet",
    ]);
    assert!(!unfinished.join("summary.json").exists());

    let first = stdout(&run(&experiment_args(&relu, &tanh, &data, &exp)));
    assert!(first.contains("1 trained, 1 resumed, 0 skipped"), "{first}");
    assert!(
        first.contains("relu seed 0") && first.contains("resuming"),
        "{first}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exp.join("summary.json")).unwrap()).unwrap();
    let rows = summary["rows"].as_array().unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| r["recipe"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["relu", "tanh"]
    );
    assert_eq!(summary["baseline"], "relu");
    // The summary's numbers are the runs' own last metrics lines.
    for recipe in ["relu", "tanh"] {
        let last = metrics(&exp.join(format!("{recipe}-s0"))).pop().unwrap();
        assert_eq!(last["epoch"], 2);
        let row = rows.iter().find(|r| r["recipe"] == recipe).unwrap();
        assert_eq!(
            row["val_top1_err"]["mean"], last["val_top1_err"],
            "{recipe}"
        );
        assert_eq!(
            row["train_top1_err"]["mean"], last["train_top1_err"],
            "{recipe}"
        );
    }
    // The tanh run's recipe is the ReLU recipe but for the activation.
    let tanh_recipe = std::fs::read_to_string(exp.join("tanh-s0/recipe.toml")).unwrap();
    assert!(
        tanh_recipe.contains("activation = \"tanh\""),
        "{tanh_recipe}"
    );
    let table = std::fs::read_to_string(exp.join("summary.md")).unwrap();
    assert!(
        table.contains("| relu | 1 |") && table.contains("| tanh | 1 |"),
        "{table}"
    );

    // A rerun trains nothing and leaves every run as it was.
    let before = tree_bytes(&exp.join("tanh-s0"));
    let again = stdout(&run(&experiment_args(&relu, &tanh, &data, &exp)));
    assert!(again.contains("0 trained, 0 resumed, 2 skipped"), "{again}");
    assert_eq!(tree_bytes(&exp.join("tanh-s0")), before);

    // The report: every figure, each of its size and not blank, and the page.
    let report = root.join("report");
    let sheet = root.join("sheet.png");
    image::RgbImage::from_fn(120, 80, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 3) as u8, 90])
    })
    .save(&sheet)
    .unwrap();
    let out = stdout(&run(&[
        "report",
        "--experiment",
        path_str(&exp),
        "--sheet",
        path_str(&sheet),
        "--out",
        path_str(&report),
    ]));
    // Tiny recipe: width 1/8 → conv1 has 12 kernels of 11×11, in two towers of 6.
    // grid: 6 per row, 11·5 px patches, 3 px apart, 8 px margins, 18 px between towers.
    let kernels = (2 * 8 + 6 * 55 + 5 * 3, 2 * 8 + 2 * 55 + 18);
    let expected = [
        ("curves-epoch.png", (1500, 460)),
        ("curves-time.png", (1500, 460)),
        ("figure1.png", (900, 560)),
        ("figure3-kernels.png", kernels),
        ("figure4-neighbours.png", (120, 80)),
    ];
    let page = std::fs::read_to_string(report.join("index.html")).unwrap();
    for (file, size) in expected {
        let (got, colours, drawn) = decode(&report.join(file));
        assert_eq!(got, size, "{file}");
        assert!(colours >= 8, "{file}: only {colours} colours");
        assert!(
            drawn > 0.02,
            "{file}: {:.1} % of pixels drawn",
            100.0 * drawn
        );
        assert!(out.contains(file), "{out}");
        assert!(
            page.contains(&format!("src=\"{file}\"")),
            "index.html lacks {file}"
        );
    }
    // Every kernel is stretched to its own range: some pixel of the grid is 0 and some
    // 255 in each channel.
    let grid = image::open(report.join("figure3-kernels.png"))
        .unwrap()
        .to_rgb8();
    for c in 0..3 {
        let values: HashSet<u8> = grid.pixels().map(|p| p.0[c]).collect();
        assert!(values.contains(&0) && values.contains(&255), "channel {c}");
    }
    for text in [
        "<table",
        "relu s0",
        "tanh s0",
        "Figure 1 analogue",
        "× baseline epochs",
    ] {
        assert!(page.contains(text), "index.html lacks {text:?}");
    }
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("<script"));

    // A recipe changed under a finished run is refused by name before any training.
    std::fs::write(
        &tanh,
        "base = \"relu.toml\"\n[model]\nactivation = \"tanh\"\ndropout = 0.25\n",
    )
    .unwrap();
    let err = run_fails(&experiment_args(&relu, &tanh, &data, &exp));
    assert!(
        err.contains("tanh-s0") && err.contains("another recipe"),
        "{err}"
    );
}

#[test]
fn report_refuses_a_folder_that_is_not_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let err = run_fails(&[
        "report",
        "--runs",
        path_str(tmp.path()),
        "--out",
        path_str(&tmp.path().join("r")),
    ]);
    assert!(
        err.contains(path_str(tmp.path())) && err.contains("recipe.toml"),
        "{err}"
    );
}
