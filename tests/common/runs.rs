//! Reading what `pipeline train` leaves behind: its stdout's JSON line, `metrics.jsonl`,
//! and the checkpoints of a run directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

/// The JSON object on the last line of stdout.
pub fn last_json(output: &Output) -> Value {
    let out = super::stdout(output);
    serde_json::from_str(out.lines().last().expect("some output"))
        .unwrap_or_else(|e| panic!("{e}: {out}"))
}

pub fn metrics(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Metrics without the wall-clock fields, which differ between any two runs.
pub fn metrics_without_timing(run: &Path) -> Vec<Value> {
    metrics(run)
        .into_iter()
        .map(|mut m| {
            let o = m.as_object_mut().unwrap();
            for key in ["images_per_s", "data_stall_frac", "train_s", "val_s"] {
                assert!(o.remove(key).is_some(), "metrics line lacks {key}");
            }
            m
        })
        .collect()
}

/// The step checkpoints of a run, oldest first (a damaged one moved aside is not one).
pub fn step_checkpoints(run: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("step-") && n.ends_with(".safetensors"))
        .collect();
    names.sort();
    names
}

/// Every tensor of a checkpoint as raw bytes (weights and momentum).
pub fn tensors(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().to_vec()))
        .collect()
}

/// What a training run stopped by signals left on its way out.
pub struct Signalled {
    /// stdout after the first line ("training …").
    pub rest: Vec<String>,
    pub stderr: String,
    pub status: std::process::ExitStatus,
}

/// Starts `pipeline ARGS` (a `train` command), waits for its first stdout line, which it
/// prints once training starts, sends it each of `signals` (`kill` options such as
/// `-TERM`) in order, and waits for it to end.
pub fn train_signalled(args: &[&str], signals: &[&str]) -> Signalled {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;

    let mut child = super::bin()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("training "), "{first}");
    for signal in signals {
        let sent = std::process::Command::new("kill")
            .args([*signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill {signal}");
    }
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    Signalled {
        rest,
        stderr,
        status,
    }
}

/// The sample recipe, shrunk for speed: width 1/8, batches of 32 (9 steps per epoch on
/// the small dataset), `epochs` epochs. `extra` is appended to `[train]`.
pub fn tiny_recipe(dir: &Path, epochs: usize, extra: &str) -> PathBuf {
    let path = tiny_recipe_with(dir, epochs, &[]);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(extra);
    std::fs::write(&path, text).unwrap();
    path
}

/// The sample recipe shrunk for speed (width 1/8, batches of 32: 9 steps per epoch on
/// the small dataset), with `epochs` epochs and `lines` replacing lines by key.
pub fn tiny_recipe_with(dir: &Path, epochs: usize, lines: &[(&str, &str)]) -> PathBuf {
    let sample =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline/sample.toml"))
            .unwrap();
    let mut text = String::new();
    for line in sample.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        let given = lines.iter().find(|(k, _)| *k == key);
        let replaced = match (key, given) {
            (_, Some((k, v))) => Some(format!("{k} = {v}")),
            ("width", None) => Some("width = 0.125".to_string()),
            ("epochs", None) => Some(format!("epochs = {epochs}")),
            ("batch_size", None) => Some("batch_size = 32".to_string()),
            ("shuffle_buffer", None) => Some("shuffle_buffer = 128".to_string()),
            _ => None,
        };
        text.push_str(replaced.as_deref().unwrap_or(line));
        text.push('\n');
    }
    let path = dir.join("tiny.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `pipeline train` of `recipe` on `dataset` into `run`, quietly.
pub fn train_args<'a>(recipe: &'a Path, dataset: &'a Path, run: &'a Path) -> Vec<&'a str> {
    vec![
        "train",
        "--recipe",
        super::path_str(recipe),
        "--dataset",
        super::path_str(dataset),
        "--out",
        super::path_str(run),
        "--quiet",
    ]
}
