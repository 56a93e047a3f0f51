//! `pipeline train` and `pipeline eval` end to end on the rendered sample, through the
//! CLI as a user runs them: the loss falls, the run directory holds what it promises,
//! an interrupted run resumes bit for bit, a NaN stops cleanly, misfits are refused,
//! and the sample recipe reaches its accuracy target.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use common::*;
use serde_json::Value;

/// A small dataset (30 train / 10 val images per class, one truncated file skipped) at
/// the sample recipe's 72 px, rendered and ingested once for every test of this file.
fn small_dataset() -> &'static Path {
    static DATASET: OnceLock<PathBuf> = OnceLock::new();
    DATASET.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("train-small");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let source = render_sample(&root, "folders", 30, 10);
        let dataset = root.join("dataset");
        ingest(&source, &dataset, 72, &[]);
        dataset
    })
}

fn s(path: &Path) -> &str {
    path_str(path)
}

fn newest_checkpoint(run: &Path) -> PathBuf {
    run.join("checkpoints")
        .join(step_checkpoints(run).last().expect("a step checkpoint"))
}

#[test]
fn training_lowers_the_loss_and_writes_the_run_that_eval_reads() {
    let dataset = small_dataset();
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(tmp.path(), 4, "");
    let run = tmp.path().join("run");
    let output = run_ok(&[
        "train",
        "--recipe",
        s(&recipe),
        "--dataset",
        s(dataset),
        "--out",
        s(&run),
        "--quiet",
    ]);
    let summary = last_json(&output);
    assert_eq!(summary["finish"], "completed");
    assert_eq!(summary["epochs_done"], 4);
    assert_eq!(
        summary["step"],
        4 * 9,
        "299 images / 32 = 9 full batches per epoch"
    );

    // metrics.jsonl: one line per epoch with the promised fields; the loss falls.
    let lines = metrics(&run);
    assert_eq!(lines.len(), 4);
    for (i, m) in lines.iter().enumerate() {
        assert_eq!(m["epoch"], i + 1);
        for key in [
            "train_loss",
            "val_top1_err",
            "val_top5_err",
            "lr",
            "images_per_s",
            "data_stall_frac",
        ] {
            assert!(m[key].is_number(), "epoch {}: {key} = {}", i + 1, m[key]);
        }
        for key in ["val_top1_err", "val_top5_err", "data_stall_frac"] {
            let v = m[key].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{key} = {v}");
        }
        assert_eq!(m["val_images"], 100);
    }
    let loss = |i: usize| lines[i]["train_loss"].as_f64().unwrap();
    // Falls steadily (measured 4.72, 4.14, 3.24, 3.04: the large initial logits of
    // init_std 0.05 shrink first).
    let losses: Vec<f64> = (0..4).map(loss).collect();
    assert!(
        losses.windows(2).all(|w| w[1] < w[0]) && losses[3] < losses[0] - 1.0,
        "the loss does not fall: {losses:?}"
    );

    // The run directory: recipe (reloadable), last K step checkpoints + best.
    let saved = std::fs::read_to_string(run.join("recipe.toml")).unwrap();
    assert!(
        saved.contains("width = 0.125") && saved.contains("[train]"),
        "{saved}"
    );
    assert_eq!(
        step_checkpoints(&run),
        [
            "step-00000018.safetensors",
            "step-00000027.safetensors",
            "step-00000036.safetensors"
        ]
    );
    assert!(run.join("checkpoints/best.safetensors").exists());
    assert!(run.join("summary.json").exists());
    let names = tensors(&run.join("checkpoints/step-00000036.safetensors"));
    assert!(
        names.contains_key("conv1.weight") && names.contains_key("velocity.fc8.bias"),
        "{:?}",
        names.keys()
    );

    // eval: centre and ten-crop, best and last; errors are fractions, every image counted.
    let best_epoch = summary["best_epoch"].as_u64().unwrap();
    let centre = last_json(&run_ok(&["eval", "--run", s(&run), "--quiet"]));
    assert_eq!(centre["images"], 100);
    assert_eq!(centre["views"], "centre");
    assert_eq!(centre["epoch"], best_epoch);
    // The best checkpoint's centre-crop error is the one training recorded.
    assert_eq!(
        centre["top1_err"],
        lines[best_epoch as usize - 1]["val_top1_err"]
    );
    let ten = last_json(&run_ok(&[
        "eval",
        "--run",
        s(&run),
        "--dataset",
        s(dataset),
        "--ten-crop",
        "--checkpoint",
        "last",
        "--quiet",
    ]));
    assert_eq!(ten["images"], 100);
    assert_eq!(ten["views"], "ten-crop");
    assert_eq!(ten["step"], 36);
    for report in [&centre, &ten] {
        let (t1, t5) = (
            report["top1_err"].as_f64().unwrap(),
            report["top5_err"].as_f64().unwrap(),
        );
        assert!(
            (0.0..=1.0).contains(&t1) && (0.0..=t1).contains(&t5),
            "{report}"
        );
    }
    assert!(
        centre["top1_err"].as_f64().unwrap() < 0.8,
        "better than chance (0.9): {centre}"
    );
}

/// Runs `pipeline ARGS`, panicking with its output if it fails.
fn run_ok(args: &[&str]) -> std::process::Output {
    run(args)
}

#[test]
fn an_interrupted_run_resumes_bit_for_bit() {
    let dataset = small_dataset();
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(tmp.path(), 2, "");
    let train = |run: &Path, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--recipe",
            s(&recipe),
            "--dataset",
            s(dataset),
            "--out",
            s(run),
            "--quiet",
        ];
        args.extend_from_slice(extra);
        run_ok(&args)
    };

    // Uninterrupted: 2 epochs of 9 steps.
    let whole = tmp.path().join("whole");
    train(&whole, &[]);

    // Stopped mid-epoch 2 (step 13 = batch 4 of 9), then resumed.
    let stopped = tmp.path().join("stopped");
    let out = train(&stopped, &["--stop-after-steps", "13"]);
    assert_eq!(last_json(&out)["finish"], "stopped");
    assert_eq!(
        step_checkpoints(&stopped).last().unwrap(),
        "step-00000013.safetensors"
    );
    assert_eq!(metrics(&stopped).len(), 1);
    let out = run_ok(&["train", "--resume", s(&stopped), "--quiet"]);
    assert!(stdout(&out).contains("resuming"), "{}", stdout(&out));

    // Stopped by Ctrl-C (SIGINT) wherever it lands, then resumed.
    let interrupted = tmp.path().join("interrupted");
    let Signalled { rest, status, .. } = train_signalled(
        &[
            "train",
            "--recipe",
            s(&recipe),
            "--dataset",
            s(dataset),
            "--out",
            s(&interrupted),
            "--quiet",
        ],
        &["-INT"],
    );
    let summary: Value = serde_json::from_str(rest.last().unwrap()).unwrap();
    // SIGINT normally lands mid-training (exit 130, checkpoint saved); on a very fast
    // machine the run may have finished first (exit 0).
    if summary["finish"] == "interrupted" {
        assert_eq!(status.code(), Some(130), "{rest:?}");
        assert!(
            rest.iter().any(|l| l.contains("pipeline train --resume")),
            "{rest:?}"
        );
        run_ok(&["train", "--resume", s(&interrupted), "--quiet"]);
    } else {
        assert!(status.success(), "{rest:?}");
    }

    let want = tensors(&whole.join("checkpoints/step-00000018.safetensors"));
    assert!(
        want.len() == 32,
        "16 weights + 16 velocities, got {}",
        want.len()
    );
    for run in [&stopped, &interrupted] {
        assert_eq!(
            newest_checkpoint(run),
            run.join("checkpoints/step-00000018.safetensors")
        );
        let got = tensors(&newest_checkpoint(run));
        for (name, bytes) in &want {
            assert!(
                got[name] == *bytes,
                "{}: {name} differs from the uninterrupted run",
                run.display()
            );
        }
        assert_eq!(
            metrics_without_timing(run),
            metrics_without_timing(&whole),
            "{}",
            run.display()
        );
        assert_eq!(
            tensors(&run.join("checkpoints/best.safetensors")),
            tensors(&whole.join("checkpoints/best.safetensors"))
        );
    }

    // A finished run resumed with more epochs continues from where it ended.
    let out = run_ok(&["train", "--resume", s(&whole), "--epochs", "3", "--quiet"]);
    assert_eq!(last_json(&out)["step"], 27);
    assert_eq!(metrics(&whole).len(), 3);
}

#[test]
fn a_nan_loss_stops_and_keeps_the_last_good_checkpoint() {
    let dataset = small_dataset();
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(tmp.path(), 1, "");
    let run = tmp.path().join("run");
    run_ok(&[
        "train",
        "--recipe",
        s(&recipe),
        "--dataset",
        s(dataset),
        "--out",
        s(&run),
        "--quiet",
    ]);
    let good = newest_checkpoint(&run);
    let good_bytes = std::fs::read(&good).unwrap();

    // A learning rate that blows the weights up, then continue for another epoch.
    let recipe_path = run.join("recipe.toml");
    let text = std::fs::read_to_string(&recipe_path).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("lr = ") {
                "lr = 1e30".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&recipe_path, text).unwrap();
    let err = run_fails(&["train", "--resume", s(&run), "--epochs", "2", "--quiet"]);
    assert!(
        err.contains("training loss is NaN") || err.contains("training loss is inf"),
        "{err}"
    );
    assert!(
        err.contains(s(&good)),
        "names the last good checkpoint: {err}"
    );
    assert_eq!(
        step_checkpoints(&run),
        [good.file_name().unwrap().to_str().unwrap()]
    );
    assert!(
        std::fs::read(&good).unwrap() == good_bytes,
        "the last good checkpoint is untouched"
    );
    assert_eq!(metrics(&run).len(), 1);
}

#[test]
fn datasets_recipes_and_devices_that_do_not_fit_are_refused() {
    let dataset = small_dataset();
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(tmp.path(), 1, "");
    let train = |recipe: &Path, dataset: &Path, out: &Path, extra: &[&str]| {
        let mut args = train_args(recipe, dataset, out);
        args.extend_from_slice(extra);
        run_fails(&args)
    };
    let out = tmp.path().join("run");

    // The paper's recipe (256 px) on a 72 px dataset.
    let paper = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline/paper.toml");
    let err = train(&paper, dataset, &out, &["--device", "cpu"]);
    assert!(
        err.contains("data.image_size") && err.contains("72"),
        "{err}"
    );

    // CUDA in a CPU build; an unknown device; an unknown recipe key.
    let err = train(&recipe, dataset, &out, &["--device", "cuda"]);
    assert!(err.contains("built without the `cuda` feature"), "{err}");
    let err = train(&recipe, dataset, &out, &["--device", "tpu"]);
    assert!(
        err.contains("train.device") || err.contains("\"tpu\""),
        "{err}"
    );
    let typo = tmp.path().join("typo.toml");
    std::fs::write(
        &typo,
        std::fs::read_to_string(&recipe).unwrap() + "learning_rate = 0.1\n",
    )
    .unwrap();
    let err = train(&typo, dataset, &out, &[]);
    assert!(
        err.contains("learning_rate") && err.contains("typo.toml"),
        "{err}"
    );
    assert!(!out.exists(), "a refused run writes nothing");

    // A batch larger than the training split.
    let big = tmp.path().join("big.toml");
    std::fs::write(
        &big,
        std::fs::read_to_string(&recipe)
            .unwrap()
            .replace("batch_size = 32", "batch_size = 4096"),
    )
    .unwrap();
    let err = train(&big, dataset, &tmp.path().join("big"), &[]);
    assert!(
        err.contains("train.batch_size") && err.contains("299"),
        "{err}"
    );

    // A run trained on 10 classes refuses a dataset with 9, on resume and in eval.
    run(&[
        "train",
        "--recipe",
        s(&recipe),
        "--dataset",
        s(dataset),
        "--out",
        s(&out),
        "--quiet",
        "--stop-after-steps",
        "2",
    ]);
    let source = tmp.path().join("src");
    let sample = render_sample(&source, "folders", 10, 3);
    let dropped = std::fs::read_dir(sample.join("train"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .min()
        .unwrap();
    std::fs::remove_dir_all(sample.join("train").join(&dropped)).unwrap();
    std::fs::remove_dir_all(sample.join("val").join(&dropped)).unwrap();
    let nine = tmp.path().join("nine");
    ingest(&sample, &nine, 72, &[]);
    let err = run_fails(&[
        "train",
        "--resume",
        s(&out),
        "--dataset",
        s(&nine),
        "--quiet",
    ]);
    assert!(
        err.contains("9 classes") && err.contains("trained on 10"),
        "{err}"
    );
    let err = run_fails(&[
        "eval",
        "--run",
        s(&out),
        "--dataset",
        s(&nine),
        "--checkpoint",
        "last",
        "--quiet",
    ]);
    assert!(
        err.contains("9 classes") && err.contains("trained on 10"),
        "{err}"
    );
    // A new run over an existing one is refused; so is resuming a directory that is no run.
    let err = train(&recipe, dataset, &out, &[]);
    assert!(
        err.contains("already holds a run") && err.contains("--resume"),
        "{err}"
    );
    let err = run_fails(&["train", "--resume", s(tmp.path()), "--quiet"]);
    assert!(err.contains("not a run directory"), "{err}");
    let err = run_fails(&["eval", "--run", s(&out), "--quiet"]);
    assert!(
        err.contains("best.safetensors"),
        "no epoch finished, so no best yet: {err}"
    );
}

#[test]
fn bare_train_reads_dataset_and_pipeline_paper_toml_and_numbers_its_runs() {
    let dataset = small_dataset();
    let tmp = tempfile::tempdir().unwrap();
    // A working directory laid out like the repository: dataset/ and pipeline/paper.toml.
    std::os::unix::fs::symlink(dataset, tmp.path().join("dataset")).unwrap();
    std::fs::create_dir(tmp.path().join("pipeline")).unwrap();
    let recipe = tiny_recipe(tmp.path(), 1, "");
    std::fs::rename(&recipe, tmp.path().join("pipeline/paper.toml")).unwrap();
    for n in 1..=2 {
        let output = bin()
            .current_dir(tmp.path())
            .args(["train", "--stop-after-steps", "1", "--quiet"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let run = tmp.path().join(format!("runs/run-{n:04}"));
        assert!(
            run.join("checkpoints/step-00000001.safetensors").exists(),
            "{}",
            stdout(&output)
        );
        assert!(
            std::fs::read_to_string(run.join("recipe.toml"))
                .unwrap()
                .contains("width = 0.125")
        );
    }
}

/// `pipeline/sample.toml` on the full sample (600 train / 100 val images per class)
/// reaches ≥ 80 % validation top-1 accuracy at its last epoch, as the mean of its seeds
/// 0, 1 and 2 (`pipeline experiment --seeds 3`), and no seed falls below 78 %. One seed is
/// not the recipe: seeds spread by up to ±0.8 points, and which seed lands lowest moves
/// with the CPU kernels' summation order (measured at 36 epochs under oneDNN: 18.7, 19.3,
/// 19.1 % error, 81.0 % mean; with the built-in kernels 20.0, 18.8, 19.1 %, 80.7 %).
/// Takes ~8–9 minutes on 2 cores with oneDNN (~12 without): render and ingest under a
/// minute, each seed's 36 epochs ~2.5 min; `--nocapture` prints the summary and the
/// times.
#[test]
fn sample_recipe_reaches_80_percent_on_the_full_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline/sample.toml");
    let started = Instant::now();
    let source = render_sample(tmp.path(), "folders", 600, 100);
    let dataset = tmp.path().join("dataset");
    run_ok(&[
        "ingest",
        s(&source),
        "--out",
        s(&dataset),
        "--recipe",
        s(&recipe),
        "--quiet",
    ]);
    let prepared = started.elapsed().as_secs_f64();
    let exp = tmp.path().join("exp");
    run_ok(&[
        "experiment",
        "--recipes",
        s(&recipe),
        "--dataset",
        s(&dataset),
        "--out",
        s(&exp),
        "--seeds",
        "3",
        "--quiet",
    ]);
    let trained = started.elapsed().as_secs_f64() - prepared;
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(exp.join("summary.json")).unwrap()).unwrap();
    eprintln!(
        "{}",
        std::fs::read_to_string(exp.join("summary.md")).unwrap()
    );
    eprintln!("sample + ingest {prepared:.0} s, 3 seeds trained {trained:.0} s");
    let mean = summary["rows"][0]["val_top1_err"]["mean"].as_f64().unwrap();
    assert!(
        mean <= 0.20,
        "sample.toml reached only {:.1} % val top-1 accuracy (mean of 3 seeds)",
        100.0 * (1.0 - mean)
    );
    let runs = summary["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    for r in runs {
        let err = r["val_top1_err"].as_f64().unwrap();
        assert!(
            err <= 0.22,
            "seed {}: {:.1} % val top-1 accuracy",
            r["seed"],
            100.0 * (1.0 - err)
        );
        // The recorded error is what `eval` recomputes from the last checkpoint.
        let run = exp.join(format!("sample-s{}", r["seed"]));
        let centre = last_json(&run_ok(&[
            "eval",
            "--run",
            s(&run),
            "--checkpoint",
            "last",
            "--quiet",
        ]));
        assert_eq!(centre["images"], 1000);
        assert_eq!(
            centre["top1_err"].as_f64().unwrap(),
            err,
            "eval recomputes the recorded error"
        );
    }
}

/// `[model] kernels = "reference"` (compositions of candle ops) trains the same network
/// as the custom ops: after three steps from the same seed every weight and momentum
/// tensor agrees to float rounding (the op order differs, so not bit for bit).
#[test]
fn reference_kernels_train_the_same_network() {
    let dataset = small_dataset();
    let tmp = tempfile::tempdir().unwrap();
    let custom = tiny_recipe(tmp.path(), 1, "");
    let text = std::fs::read_to_string(&custom).unwrap();
    assert!(
        text.contains("\nkernels = \"custom\""),
        "the sample recipe names its kernels"
    );
    let reference = tmp.path().join("reference.toml");
    std::fs::write(
        &reference,
        text.replace("\nkernels = \"custom\"", "\nkernels = \"reference\""),
    )
    .unwrap();
    let mut weights = Vec::new();
    for (recipe, name) in [(&custom, "custom"), (&reference, "reference")] {
        let out = tmp.path().join(name);
        run(&[
            "train",
            "--recipe",
            s(recipe),
            "--dataset",
            s(dataset),
            "--out",
            s(&out),
            "--stop-after-steps",
            "3",
            "--quiet",
        ]);
        let saved = std::fs::read_to_string(out.join("recipe.toml")).unwrap();
        assert_eq!(
            saved.contains("kernels = \"reference\""),
            name == "reference",
            "{saved}"
        );
        weights.push(tensors(&newest_checkpoint(&out)));
    }
    let floats = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    assert_eq!(weights[0].len(), weights[1].len());
    for (name, a) in &weights[0] {
        let (a, b) = (floats(a), floats(&weights[1][name]));
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        let worst = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale;
        assert!(
            worst < 1e-4,
            "{name}: custom and reference differ by {worst:e} of the scale"
        );
    }
}

/// `pipeline check kernels` on the CPU compares our CPU ops with the reference
/// composites (a GPU build runs the same check on CUDA); bf16 is refused on the CPU with
/// the reason, before anything is written.
#[test]
fn check_kernels_passes_on_the_cpu_and_bf16_is_cuda_only() {
    let out = stdout(&run(&[
        "check", "kernels", "--batch", "2", "--width", "0.125", "--input", "67",
    ]));
    assert!(out.contains("46 passed, 0 failed"), "{out}");
    let out = stdout(&run(&["check", "golden", "--reference"]));
    assert!(out.contains("35 passed, 0 failed"), "{out}");
    let err = run_fails(&["check", "step", "--precision", "bf16", "--steps", "1"]);
    assert!(err.contains("CUDA only"), "{err}");

    let dataset = small_dataset();
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(tmp.path(), 1, "");
    let text = std::fs::read_to_string(&recipe).unwrap();
    assert!(
        text.contains("\nprecision = \"f32\""),
        "the sample recipe names its precision"
    );
    std::fs::write(
        &recipe,
        text.replace("\nprecision = \"f32\"", "\nprecision = \"bf16\""),
    )
    .unwrap();
    let run_dir = tmp.path().join("run");
    let err = run_fails(&[
        "train",
        "--recipe",
        s(&recipe),
        "--dataset",
        s(dataset),
        "--out",
        s(&run_dir),
        "--quiet",
    ]);
    assert!(err.contains("bf16") && err.contains("CUDA only"), "{err}");
    assert!(
        !run_dir.exists(),
        "a refused recipe leaves no run directory"
    );
}
