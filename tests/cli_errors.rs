//! What a user meets at the command line of stream, preview, eval, export-features,
//! neighbors and train: zero counts refused before they reach the stream's
//! arithmetic, the dataset's own image size used without a recipe, the batch size a
//! recipe names, neighbours with their classes, the way on from a CPU build, and
//! summaries whose nouns agree with their counts.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use common::*;
use pipeline::dataset::Manifest;
use pipeline::features::FeatureWriter;
use pipeline::features::schema::{META_DATASET, META_LAYER};

/// The stored image side of the shared dataset.
const S: usize = 40;
/// The crop `stream` and `preview` take without a recipe: the paper's 224/256 of S.
const PAPER_CROP_OF_S: usize = 35;
/// Rendered images per class (ten classes).
const TRAIN_PER_CLASS: usize = 4;
const VAL_PER_CLASS: usize = 2;

/// One small ingested sample (40 train / 20 val images at 40 px) for every test here.
fn dataset() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let source = render_sample(tmp.path(), "folders", TRAIN_PER_CLASS, VAL_PER_CLASS);
        let out = tmp.path().join("ds");
        ingest(&source, &out, S, &[]);
        (tmp, out)
    })
    .1
}

/// Train rows that ingest kept (the sample plants one truncated file, skipped).
fn train_rows() -> usize {
    Manifest::load(dataset())
        .unwrap()
        .split(pipeline::dataset::Split::Train)
        .unwrap()
        .rows
}

/// Runs `pipeline ARGS` expecting the argument parser to refuse it (exit status 2,
/// clap's usage error), with no panic; returns stderr.
fn refused_by_parser(args: &[&str]) -> String {
    let output = bin().args(args).output().expect("pipeline binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(2),
        "pipeline {args:?} should be a usage error:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// A recipe that fits the shared dataset (crop 32 of 40), so a command reaches the
/// stream whatever else it checks.
fn fitting_recipe(dir: &Path) -> PathBuf {
    let path = dir.join("fits.toml");
    std::fs::write(&path, format!("[data]\nimage_size = {S}\ncrop_size = 32\n")).unwrap();
    path
}

fn json_of(output: &Output) -> serde_json::Value {
    let text = stdout(output);
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

#[test]
fn zero_batch_sizes_grid_sides_counts_and_k_are_refused_before_running() {
    let ds = path_str(dataset());
    let tmp = tempfile::tempdir().unwrap();
    let recipe = fitting_recipe(tmp.path());
    let recipe = path_str(&recipe);
    let at_least_one = "must be at least 1";
    let expect = |err: &str, value: &str, flag: &str, why: &str| {
        assert!(
            err.contains(&format!("invalid value '{value}' for '{flag}")) && err.contains(why),
            "{err}"
        );
    };
    for (flag, value) in [
        ("--batch-size", "0"),
        ("--epochs", "0"),
        ("--batches", "0"),
        ("--world-size", "0"),
    ] {
        let err = refused_by_parser(&["stream", "--dataset", ds, "--recipe", recipe, flag, value]);
        expect(&err, value, flag, at_least_one);
    }
    let grid = dataset().parent().unwrap().join("never.png");
    for (flag, value, why) in [
        ("--columns", "0", at_least_one),
        ("--rows", "0", at_least_one),
        ("--columns", "65", "must be at most 64"),
    ] {
        let args = [
            "preview",
            "--dataset",
            ds,
            "--recipe",
            recipe,
            "--out",
            path_str(&grid),
        ];
        let err = refused_by_parser(&[&args[..], &[flag, value]].concat());
        expect(&err, value, flag, why);
    }
    assert!(!grid.exists());
    let err = refused_by_parser(&["eval", "--run", "runs/none", "--batch-size", "0"]);
    expect(&err, "0", "--batch-size", at_least_one);
    let err = refused_by_parser(&["export-features", "--run", "runs/none", "--batch-size", "0"]);
    expect(&err, "0", "--batch-size", at_least_one);
    let neighbors = ["neighbors", "--features", "f.parquet", "--key", "a"];
    let err = refused_by_parser(&[&neighbors[..], &["-k", "0"]].concat());
    expect(&err, "0", "--k", at_least_one);
}

#[test]
fn stream_and_preview_take_the_image_size_from_the_dataset_without_a_recipe() {
    let tmp = tempfile::tempdir().unwrap();
    let dump = tmp.path().join("dump");
    let output = run(&[
        "stream",
        "--dataset",
        path_str(dataset()),
        "--batch-size",
        "8",
        "--batches",
        "1",
        "--workers",
        "1",
        "--dump",
        path_str(&dump),
    ]);
    assert_eq!(json_of(&output)["images"], 8);
    let c = PAPER_CROP_OF_S as u64;
    let images = pipeline::dataset::npy::read_f32(&dump.join("images-0.npy"), &[8, 3, c, c]);
    assert!(images.is_ok(), "crops of {c} px: {images:?}");

    let grid = tmp.path().join("grid.png");
    run(&[
        "preview",
        "--dataset",
        path_str(dataset()),
        "--out",
        path_str(&grid),
        "--columns",
        "3",
        "--rows",
        "2",
    ]);
    let png = image::open(&grid).unwrap().to_rgb8();
    let (cell, gap) = (PAPER_CROP_OF_S as u32, 2);
    assert_eq!(
        (png.width(), png.height()),
        (3 * (cell + gap) + gap, 2 * (cell + gap) + gap)
    );

    // A recipe, when given, must still fit the dataset.
    let paper = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline/paper.toml");
    let err = run_fails(&[
        "stream",
        "--dataset",
        path_str(dataset()),
        "--recipe",
        path_str(&paper),
    ]);
    assert!(
        err.contains("data.image_size is 256") && err.contains("stores 40×40"),
        "{err}"
    );
}

#[test]
fn stream_batches_default_to_the_recipes_batch_size_else_128() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tmp.path().join("recipe.toml");
    std::fs::write(
        &recipe,
        format!("[data]\nimage_size = {S}\ncrop_size = 32\n\n[train]\nbatch_size = 8\n"),
    )
    .unwrap();
    let rows = train_rows();
    // Centre views keep the last partial batch, so batches = ⌈rows / batch size⌉.
    let stream = |extra: &[&str]| {
        let mut args = vec![
            "stream",
            "--dataset",
            path_str(dataset()),
            "--views",
            "centre",
            "--workers",
            "1",
        ];
        args.extend_from_slice(extra);
        json_of(&run(&args))
    };
    let with_recipe = stream(&["--recipe", path_str(&recipe)]);
    assert_eq!(with_recipe["images"], rows);
    assert_eq!(with_recipe["batches"], rows.div_ceil(8));
    let bare = stream(&[]);
    assert_eq!(bare["batches"], rows.div_ceil(128));
    let overridden = stream(&["--recipe", path_str(&recipe), "--batch-size", "16"]);
    assert_eq!(overridden["batches"], rows.div_ceil(16));

    let help = stdout(&run(&["stream", "--help"]));
    assert!(
        help.contains("default: the recipe's train.batch_size; 128 without --recipe"),
        "{help}"
    );
}

#[test]
fn summaries_count_one_thing_in_the_singular() {
    let rows = train_rows();
    let tmp = tempfile::tempdir().unwrap();
    let recipe = fitting_recipe(tmp.path());
    let output = run(&[
        "stream",
        "--dataset",
        path_str(dataset()),
        "--recipe",
        path_str(&recipe),
        "--views",
        "centre",
        "--batch-size",
        &rows.to_string(),
        "--workers",
        "1",
    ]);
    let text = stdout(&output);
    let first = text.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("{rows} images in 1 batch over 1 epoch, ")),
        "{first}"
    );
    assert!(first.ends_with("(1 augment worker)"), "{first}");

    let grid = tmp.path().join("one.png");
    let output = run(&[
        "preview",
        "--dataset",
        path_str(dataset()),
        "--recipe",
        path_str(&recipe),
        "--out",
        path_str(&grid),
        "--columns",
        "1",
        "--rows",
        "1",
    ]);
    assert!(
        stdout(&output).contains("(1 augmented sample)"),
        "{}",
        stdout(&output)
    );
}

/// A features file naming the shared dataset, 20 rows, label = row % 10, whose
/// vectors are (label², row / 100): a row's nearest neighbour is the other row of its
/// class, then the lower-numbered row of the class below.
fn features_file(dir: &Path) -> (PathBuf, Vec<(String, i32)>) {
    let path = dir.join("features.parquet");
    let rows: Vec<(String, i32)> = (0..20i32)
        .map(|i| (format!("val/img-{i:02}.JPEG"), i % 10))
        .collect();
    let metadata = vec![
        (META_LAYER.to_string(), "fc7".to_string()),
        (META_DATASET.to_string(), dataset().display().to_string()),
    ];
    let mut writer = FeatureWriter::try_new(&path, 2, None, &metadata).unwrap();
    let keys: Vec<String> = rows.iter().map(|(k, _)| k.clone()).collect();
    let labels: Vec<i32> = rows.iter().map(|(_, l)| *l).collect();
    let features: Vec<f32> = rows
        .iter()
        .enumerate()
        .flat_map(|(i, (_, l))| [(l * l) as f32, 0.01 * i as f32])
        .collect();
    writer.write(&keys, &labels, &features, None).unwrap();
    writer.close().unwrap();
    (path, rows)
}

#[test]
fn neighbors_names_the_query_and_each_neighbours_class() {
    let tmp = tempfile::tempdir().unwrap();
    let (features, rows) = features_file(tmp.path());
    let classes = Manifest::load(dataset()).unwrap().classes;
    let class = |label: i32| {
        let c = &classes[label as usize];
        assert_ne!(c.name, c.wnid, "the sample names its classes");
        format!("{label} {} {}", c.wnid, c.name)
    };
    let (query, label) = &rows[3];
    let output = run(&[
        "neighbors",
        "--features",
        path_str(&features),
        "--key",
        query,
        "-k",
        "2",
    ]);
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "2 nearest neighbours of {query} (label {}) by Euclidean distance on fc7:",
            class(*label)
        )
    );
    assert!(
        lines[1].starts_with("rank") && lines[1].contains("distance") && lines[1].ends_with("key"),
        "{}",
        lines[1]
    );
    // Row 13 shares row 3's label at distance 0.1; row 2 (label 2) is next, at 5.
    let first: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(&first[..2], ["1", "0.100"], "{}", lines[2]);
    assert!(
        lines[2].contains(&format!("  {}  ", class(*label))) && lines[2].ends_with(&rows[13].0),
        "{}",
        lines[2]
    );
    assert!(lines[3].trim_start().starts_with("2 "), "{}", lines[3]);
    let (second, second_label) = &rows[2];
    assert!(
        lines[3].contains(&class(*second_label)) && lines[3].ends_with(second.as_str()),
        "{}",
        lines[3]
    );
    assert_eq!(lines.len(), 4, "{text}");
}

#[test]
fn bare_train_on_a_cpu_build_says_how_to_go_on() {
    if cfg!(feature = "cuda") {
        return; // the paper's recipe runs there
    }
    // A user's checkout: the paper's recipe where bare `train` looks for it.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("pipeline")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline/paper.toml"),
        tmp.path().join("pipeline/paper.toml"),
    )
    .unwrap();
    let output = bin().arg("train").current_dir(tmp.path()).output().unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("train.device = \"cuda\" in pipeline/paper.toml")
            && err.contains("this build has no CUDA"),
        "{err}"
    );
    assert!(
        err.contains("--device cpu") && err.contains("--recipe pipeline/sample.toml"),
        "{err}"
    );
    assert!(
        err.contains("cargo build --release --features cuda"),
        "{err}"
    );
    assert!(
        !tmp.path().join("runs").exists(),
        "nothing written before the refusal"
    );
}

#[test]
fn the_stream_refuses_an_empty_batch_or_a_rank_outside_the_world_with_an_error() {
    use pipeline::stream::{DataSource, EpochOptions, StreamConfig, ViewMode};
    let source = DataSource::open(
        dataset(),
        pipeline::dataset::Split::Train,
        StreamConfig::default(),
    )
    .unwrap();
    let options = EpochOptions::new(ViewMode::Train, 32, 8);
    let err = source
        .epoch(EpochOptions {
            batch_size: 0,
            ..options
        })
        .err()
        .expect("an empty batch is refused")
        .to_string();
    assert!(err.contains("batch size must be at least 1"), "{err}");
    for (rank, world_size) in [(0, 0), (2, 2)] {
        let err = source
            .epoch(EpochOptions {
                rank,
                world_size,
                ..options
            })
            .err()
            .expect("a rank outside the world is refused")
            .to_string();
        assert!(
            err.contains(&format!("rank {rank} is outside a world of {world_size}")),
            "{err}"
        );
    }
    assert!(source.epoch(options).is_ok());
}

#[test]
fn a_stream_too_small_for_one_batch_is_an_error_not_an_empty_report() {
    let rows = train_rows();
    let err = run_fails(&["stream", "--dataset", path_str(dataset()), "--workers", "1"]);
    assert!(
        err.contains(&format!(
            "the train split holds {rows} images for rank 0, fewer than one full batch of 128"
        )),
        "{err}"
    );
}

#[test]
fn a_reader_that_has_gone_ends_the_output_quietly_not_with_a_panic() {
    // `pipeline stream | head -1`: the pipe is closed before the report is written.
    let mut child = bin()
        .args(["stream", "--dataset", path_str(dataset())])
        .args(["--batch-size", "8"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        output.status.signal(),
        Some(libc_sigpipe()),
        "ends as a Unix tool does on a closed pipe: {:?}\n{stderr}",
        output.status
    );
}

/// SIGPIPE's number on Linux and macOS.
fn libc_sigpipe() -> i32 {
    13
}
