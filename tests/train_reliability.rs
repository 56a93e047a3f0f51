//! `pipeline train` when something goes wrong, through the CLI as a user meets it: a
//! damaged checkpoint is named and skipped on resume, SIGTERM checkpoints like Ctrl-C,
//! `--stop-after-steps` counts from the resume point, a bad recipe is refused before
//! anything is written, and a panic in an augment worker ends the run with a checkpoint.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;
use serde_json::Value;

/// 30 train / 10 val images per class at the sample recipe's 72 px, made once.
fn small_dataset() -> &'static Path {
    static DATASET: OnceLock<PathBuf> = OnceLock::new();
    DATASET.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("train-reliability-small");
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

fn train_args<'a>(recipe: &'a Path, run: &'a Path) -> Vec<&'a str> {
    vec![
        "train",
        "--recipe",
        s(recipe),
        "--dataset",
        s(small_dataset()),
        "--out",
        s(run),
        "--quiet",
    ]
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// An uninterrupted 2-epoch run (18 steps), made once and never changed: what every
/// interrupted and resumed run must end up equal to.
fn reference_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("train-reliability-reference");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let recipe = tiny_recipe_with(&root, 2, &[]);
        let run = root.join("run");
        common::run(&train_args(&recipe, &run));
        assert_eq!(
            step_checkpoints(&run),
            ["step-00000009.safetensors", "step-00000018.safetensors"]
        );
        run
    })
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Flips a few bytes in the tensor data of a checkpoint (its last kilobyte).
fn flip_bytes(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = bytes.len();
    for i in [n - 1000, n - 600, n - 7] {
        bytes[i] ^= 0x5a;
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_damaged_checkpoint_is_named_and_resume_falls_back_to_the_previous_good_one() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    copy_tree(reference_run(), &run);
    let newest = run.join("checkpoints/step-00000018.safetensors");
    let older = run.join("checkpoints/step-00000009.safetensors");
    flip_bytes(&newest);

    let out = common::run(&["train", "--resume", s(&run), "--quiet"]);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "checkpoint {}: damaged, its contents do not match the digest saved with it",
            s(&newest)
        )),
        "names the damaged checkpoint: {err}"
    );
    assert!(
        err.contains(&format!(
            "resuming from the previous good checkpoint {} (step 9)",
            s(&older)
        )),
        "{err}"
    );
    assert!(!err.contains("training loss is"), "{err}");
    assert!(
        run.join("checkpoints/step-00000018.safetensors.damaged")
            .exists()
    );
    // Epoch 2 was trained again from step 9, bit for bit as the first time.
    let want = tensors(&reference_run().join("checkpoints/step-00000018.safetensors"));
    assert_eq!(want.len(), 32, "16 weights + 16 velocities");
    assert!(tensors(&newest) == want, "the retrained step 18 differs");
    assert_eq!(
        metrics_without_timing(&run),
        metrics_without_timing(reference_run())
    );

    // With every checkpoint damaged there is nothing to resume from: a clear error.
    flip_bytes(&newest);
    flip_bytes(&older);
    let err = run_fails(&["train", "--resume", s(&run), "--quiet"]);
    assert!(err.contains("has no usable checkpoint"), "{err}");
    assert!(
        err.contains(s(&newest)) && err.contains(s(&older)),
        "names both: {err}"
    );
    assert!(newest.exists() && older.exists(), "left in place");
}

/// Removes the digest from a checkpoint's header: what versions before it wrote.
fn strip_digest(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta = header["__metadata__"].as_object_mut().unwrap();
    assert!(meta.remove("pipeline.digest").is_some(), "had a digest");
    let mut header = serde_json::to_vec(&header).unwrap();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

#[test]
fn a_checkpoint_without_a_digest_still_resumes_and_says_so_once() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe_with(tmp.path(), 2, &[]);
    let run = tmp.path().join("run");
    let mut args = train_args(&recipe, &run);
    args.extend(["--stop-after-steps", "2"]);
    common::run(&args);
    strip_digest(&run.join("checkpoints/step-00000002.safetensors"));
    let out = common::run(&[
        "train",
        "--resume",
        s(&run),
        "--stop-after-steps",
        "1",
        "--quiet",
    ]);
    let err = stderr(&out);
    assert_eq!(err.matches("carries no digest").count(), 1, "{err}");
    assert_eq!(last_json(&out)["step"], 3);
}

#[test]
fn sigterm_saves_a_checkpoint_exits_143_and_the_run_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    // Far more epochs than the signal lets it train.
    let recipe = tiny_recipe_with(tmp.path(), 50, &[]);
    let run = tmp.path().join("run");
    let Signalled {
        rest,
        stderr: err,
        status,
    } = train_signalled(&train_args(&recipe, &run), &["-TERM"]);
    assert_eq!(status.code(), Some(143), "{rest:?}\n{err}");
    assert!(err.contains("SIGTERM: finishing the current step"), "{err}");
    let summary: Value = serde_json::from_str(rest.last().unwrap()).unwrap();
    assert_eq!(summary["finish"], "interrupted");
    assert_eq!(summary["signal"], 15);
    assert!(
        rest.iter()
            .any(|l| l.contains("interrupted (SIGTERM)") && l.contains(s(&run))),
        "{rest:?}"
    );
    let step = summary["step"].as_u64().unwrap();
    let saved = format!("step-{step:08}.safetensors");
    assert_eq!(step_checkpoints(&run).last(), Some(&saved));

    let out = common::run(&[
        "train",
        "--resume",
        s(&run),
        "--stop-after-steps",
        "1",
        "--quiet",
    ]);
    assert!(stdout(&out).contains("resuming"), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(&format!("step {step},")),
        "{}",
        stdout(&out)
    );
    assert_eq!(last_json(&out)["step"], step + 1);
}

#[test]
fn a_second_signal_quits_at_once_without_waiting_for_the_step() {
    let tmp = tempfile::tempdir().unwrap();
    // The full-width net: a step takes far longer than the two signals are apart, so
    // the second one lands while the first step after the first signal still runs.
    let recipe = tiny_recipe_with(tmp.path(), 50, &[("width", "1.0")]);
    let run = tmp.path().join("run");
    let Signalled { rest, status, .. } =
        train_signalled(&train_args(&recipe, &run), &["-TERM", "-INT"]);
    // Quit at once with a signal's status (128 + 2 or 128 + 15: when both signals are
    // pending together, either may be taken as the second), and without the summary
    // that the graceful stop after the step always prints.
    assert!(
        matches!(status.code(), Some(130 | 143)),
        "{status:?}: {rest:?}"
    );
    assert!(
        !rest.iter().any(|l| l.contains("interrupted")),
        "quit without the graceful summary: {rest:?}"
    );
}

#[test]
fn stop_after_steps_on_resume_counts_from_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe_with(tmp.path(), 2, &[]);
    let run = tmp.path().join("run");
    let mut args = train_args(&recipe, &run);
    args.extend(["--stop-after-steps", "5"]);
    let out = common::run(&args);
    assert_eq!(last_json(&out)["step"], 5);
    // Two more steps, not "stop at step 2" (already passed, so it used to run to the end).
    let out = common::run(&[
        "train",
        "--resume",
        s(&run),
        "--stop-after-steps",
        "2",
        "--quiet",
    ]);
    assert_eq!(last_json(&out)["finish"], "stopped");
    assert_eq!(last_json(&out)["step"], 7);
    assert_eq!(
        step_checkpoints(&run).last().unwrap(),
        "step-00000007.safetensors"
    );
    let help = stdout(&common::run(&["train", "--help"]));
    assert!(help.contains("from its checkpoint with --resume"), "{help}");
}

#[test]
fn a_bad_stream_key_is_refused_before_any_run_folder_is_made() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe_with(tmp.path(), 1, &[("lighting_std", "-0.1")]);
    let run = tmp.path().join("run");
    let err = run_fails(&train_args(&recipe, &run));
    assert!(
        err.contains("stream.lighting_std") && err.contains("-0.1") && err.contains("tiny.toml"),
        "{err}"
    );
    assert!(!run.exists(), "no run folder is left behind");
    // Nor a numbered one under runs/.
    let output = bin()
        .current_dir(tmp.path())
        .args([
            "train",
            "--recipe",
            s(&recipe),
            "--dataset",
            s(small_dataset()),
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(stderr(&output).contains("stream.lighting_std"));
    assert!(!tmp.path().join("runs").exists());
}

#[test]
fn a_panic_in_an_augment_worker_ends_the_run_with_a_checkpoint_and_a_named_error() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe_with(tmp.path(), 2, &[]);
    let run = tmp.path().join("run");
    let output = bin()
        .args(train_args(&recipe, &run))
        .env("PIPELINE_FAULT_INJECT", "augment-panic-at-batch:4")
        .output()
        .unwrap();
    let err = stderr(&output);
    // An error exit, not an abort by signal.
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the augment stage panicked while preparing batch 5 of epoch 1"),
        "{err}"
    );
    let saved = run.join("checkpoints/step-00000004.safetensors");
    assert!(
        err.contains(&format!(
            "training stopped after step 4, saved in {}",
            s(&saved)
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("pipeline train --resume {}", s(&run))),
        "{err}"
    );
    assert_eq!(step_checkpoints(&run), ["step-00000004.safetensors"]);

    // Without the fault the run resumes from there and ends as if nothing happened.
    common::run(&["train", "--resume", s(&run), "--quiet"]);
    let step18 = "checkpoints/step-00000018.safetensors";
    assert!(tensors(&run.join(step18)) == tensors(&reference_run().join(step18)));
    assert_eq!(
        metrics_without_timing(&run),
        metrics_without_timing(reference_run())
    );
}
