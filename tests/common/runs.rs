//! Reading what `pipeline train` leaves behind: its stdout's JSON line, `metrics.jsonl`,
//! and the checkpoints of a run directory.

use std::collections::BTreeMap;
use std::path::Path;
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
