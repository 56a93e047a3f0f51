//! Helpers shared by the integration tests: run the `pipeline` binary as a user would.
#![allow(dead_code)]

pub mod python;
pub mod runs;

#[allow(unused_imports)] // not every test binary reads runs
pub use runs::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pipeline"))
}

/// Runs `pipeline ARGS`, panicking with its output if it fails.
pub fn run(args: &[&str]) -> Output {
    let output = bin().args(args).output().expect("pipeline binary runs");
    assert!(
        output.status.success(),
        "pipeline {args:?} failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs `pipeline ARGS` expecting failure; returns stderr.
pub fn run_fails(args: &[&str]) -> String {
    let output = bin().args(args).output().expect("pipeline binary runs");
    assert!(
        !output.status.success(),
        "pipeline {args:?} unexpectedly succeeded"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// Renders a small sample tree (per-class counts kept low for speed).
pub fn render_sample(
    dir: &Path,
    layout: &str,
    train_per_class: usize,
    val_per_class: usize,
) -> PathBuf {
    let out = dir.join(format!("src-{layout}"));
    run(&[
        "sample",
        "--out",
        path_str(&out),
        "--layout",
        layout,
        "--train-per-class",
        &train_per_class.to_string(),
        "--val-per-class",
        &val_per_class.to_string(),
    ]);
    out
}

/// Ingests `source` into `out` at image size `size` with small shards
/// (64 rows, 16 per row group, unless `extra` sets them).
pub fn ingest(source: &Path, out: &Path, size: usize, extra: &[&str]) -> Output {
    let size = size.to_string();
    let mut args = vec![
        "ingest",
        path_str(source),
        "--out",
        path_str(out),
        "--image-size",
        &size,
        "--quiet",
    ];
    if !extra.contains(&"--rows-per-shard") {
        args.extend(["--rows-per-shard", "64"]);
    }
    if !extra.contains(&"--rows-per-row-group") {
        args.extend(["--rows-per-row-group", "16"]);
    }
    args.extend_from_slice(extra);
    run(&args)
}

/// Every file under `dir` (relative path → bytes), for byte-identity checks.
pub fn tree_bytes(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// Kills `child` with SIGKILL (no chance to clean up) once the ingest state file
/// `state` records at least `shards` finished train shards; returns how many it had
/// recorded (fewer when the ingest finished or stalled first).
pub fn kill_after_train_shards(mut child: std::process::Child, state: &Path, shards: u64) -> u64 {
    let mut done = 0;
    for _ in 0..20_000 {
        if let Ok(text) = std::fs::read_to_string(state) {
            let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            done = value["train"]["shards_done"].as_u64().unwrap_or(0);
            if done >= shards {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    done
}
