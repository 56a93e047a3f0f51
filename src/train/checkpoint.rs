//! Checkpoints: one safetensors file holding the weights (`conv1.weight` …, loadable by
//! any candle `VarBuilder`), the momentum (`velocity.conv1.weight` …) and, in the
//! header's metadata under [`META_KEY`], a JSON [`CheckpointMeta`]: everything else a
//! run needs to continue bit for bit (stream position, dropout RNG, step, schedule, the
//! partial sums of the epoch in progress).
//!
//! The metadata also holds, under [`DIGEST_KEY`], a SHA-256 digest of the metadata JSON,
//! the tensor table and every tensor byte, written in the same file (so atomically with
//! it) and checked on load: a checkpoint with flipped bytes is refused by name instead of
//! training on from damaged weights. Checkpoints written before the digest existed still
//! load (unverified, said once on stderr).
//!
//! Files are written atomically (temp + fsync + rename), so a crash leaves either the old
//! file or the new one. `RUN/checkpoints/step-NNNNNNNN.safetensors` are the last
//! `keep_last` checkpoints; `best.safetensors` is the one with the lowest validation
//! top-1 error.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::schedule::{ScheduleState, ValCounts};
use super::{TrainError, error::io};
use crate::dataset::atomic;
use crate::model::{DropoutState, ModelConfig};
use crate::stream::StreamPosition;

/// Version of the checkpoint layout; a different one is refused.
pub const FORMAT_VERSION: u32 = 1;
/// The safetensors metadata key holding the JSON [`CheckpointMeta`].
pub const META_KEY: &str = "pipeline.checkpoint";
/// The safetensors metadata key holding `sha256:HEX`, the [`digest`] of the file.
pub const DIGEST_KEY: &str = "pipeline.digest";
/// Name of the best checkpoint inside `RUN/checkpoints/`.
pub const BEST_FILE: &str = "best.safetensors";

/// Everything but the tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format_version: u32,
    /// Optimiser steps applied so far.
    pub step: u64,
    /// The next training batch: reopening the stream here yields exactly the rest.
    pub position: StreamPosition,
    /// The dropout RNG, positioned for the next step.
    pub dropout: DropoutState,
    pub schedule: ScheduleState,
    /// Partial sums of the epoch in progress (zero at an epoch boundary).
    pub progress: EpochProgress,
    /// The validation result this checkpoint was saved after, if it closes an epoch.
    pub val: Option<ValCounts>,
    /// wnids of the classes, in class-index order (the dataset's).
    pub classes: Vec<String>,
    /// The network: architecture and the input side it was built for.
    pub model: ModelConfig,
    pub input_size: usize,
}

/// Running sums over the batches of the current epoch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochProgress {
    /// Sum of the batch losses (a decimal string that parses back to the same f64).
    #[serde(with = "exact_f64")]
    pub loss_sum: f64,
    pub batches: usize,
    pub images: usize,
    /// Training images whose top prediction (with dropout) was wrong.
    pub top1_errors: usize,
    /// Wall seconds spent in the training loop this epoch (not bit-exact across resumes).
    pub train_s: f64,
    /// Of which waiting for the data stream.
    pub stall_s: f64,
}

/// f64 as its shortest round-tripping decimal string: JSON number parsing is not
/// guaranteed to be correctly rounded, `str::parse::<f64>` is.
mod exact_f64 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e| D::Error::custom(format!("{s:?}: {e}")))
    }
}

/// `RUN/checkpoints/step-00001234.safetensors`.
pub fn step_file(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("step-{step:08}.safetensors"))
}

/// The step checkpoints in `dir`, oldest first.
pub fn list_steps(dir: &Path) -> Result<Vec<(u64, PathBuf)>, TrainError> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(io(dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(Ok(step)) = name
            .strip_prefix("step-")
            .and_then(|n| n.strip_suffix(".safetensors"))
            .map(str::parse)
        {
            found.push((step, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Deletes all but the newest `keep` step checkpoints.
pub fn prune(dir: &Path, keep: usize) -> Result<(), TrainError> {
    let steps = list_steps(dir)?;
    for (_, path) in steps.iter().take(steps.len().saturating_sub(keep)) {
        std::fs::remove_file(path).map_err(io(path))?;
    }
    Ok(())
}

/// Writes `tensors` and `meta` to `path` atomically, with their digest.
pub fn save(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    meta: &CheckpointMeta,
) -> Result<(), TrainError> {
    let fail = |message: String| TrainError::Checkpoint {
        path: path.display().to_string(),
        message,
    };
    let json = serde_json::to_string(meta).map_err(|e| fail(e.to_string()))?;
    let metadata = HashMap::from([(META_KEY.to_string(), json.clone())]);
    let bytes = safetensors::serialize(tensors, Some(metadata)).map_err(|e| fail(e.to_string()))?;
    // The digest goes into the header, which does not move the data section (its
    // offsets are relative to it): rewrite the header only, never copy the tensors.
    let (n, table) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| fail(e.to_string()))?;
    let data = &bytes[8 + n..];
    let mut header: serde_json::Value =
        serde_json::from_slice(&bytes[8..8 + n]).map_err(|e| fail(format!("header: {e}")))?;
    header["__metadata__"][DIGEST_KEY] =
        serde_json::Value::String(format!("sha256:{}", digest(&json, &table, data)));
    let mut header = serde_json::to_vec(&header).map_err(|e| fail(e.to_string()))?;
    // safetensors pads the header with spaces to a multiple of 8 (aligned data).
    header.resize(header.len().next_multiple_of(8), b' ');
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let temp = atomic::temp_path(path);
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(&(header.len() as u64).to_le_bytes())?;
        file.write_all(&header)?;
        file.write_all(data)?;
        file.sync_all()?;
        atomic::commit(&temp, path)
    };
    write().map_err(io(path))
}

/// SHA-256 (hex) over the metadata JSON, the tensor table (names, dtypes, shapes,
/// offsets) and the data section: every byte a resumed run depends on.
pub fn digest(meta_json: &str, table: &safetensors::tensor::Metadata, data: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(b"pipeline checkpoint digest v1\n");
    hash.update(meta_json.as_bytes());
    hash.update(b"\n");
    let mut names: Vec<(String, &safetensors::tensor::TensorInfo)> =
        table.tensors().into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, info) in names {
        hash.update(
            format!(
                "{name} {:?} {:?} {}..{}\n",
                info.dtype, info.shape, info.data_offsets.0, info.data_offsets.1
            )
            .as_bytes(),
        );
    }
    hash.update(data);
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a checkpoint: its tensors (on `device`) and its metadata.
pub fn load(
    path: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, CheckpointMeta), TrainError> {
    let fail = |message: String| TrainError::Checkpoint {
        path: path.display().to_string(),
        message,
    };
    let bytes = std::fs::read(path).map_err(io(path))?;
    let damaged = |what: String| fail(format!("damaged, {what}"));
    let (n, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| damaged(format!("its safetensors header is unreadable: {e}")))?;
    let metadata = header.metadata().as_ref();
    let json = metadata.and_then(|m| m.get(META_KEY)).ok_or_else(|| {
        fail(format!(
            "no {META_KEY:?} metadata: not a checkpoint written by `pipeline train`"
        ))
    })?;
    match metadata.and_then(|m| m.get(DIGEST_KEY)) {
        Some(saved) => {
            let actual = format!("sha256:{}", digest(json, &header, &bytes[8 + n..]));
            if *saved != actual {
                return Err(damaged(format!(
                    "its contents do not match the digest saved with it ({saved} was \
                     written, the bytes now hash to {actual})"
                )));
            }
        }
        None => {
            static SAID: AtomicBool = AtomicBool::new(false);
            if !SAID.swap(true, Ordering::SeqCst) {
                eprintln!(
                    "note: checkpoint {} carries no digest (written by an older version); \
                     loading it unverified. Checkpoints written from now on are verified.",
                    path.display()
                );
            }
        }
    }
    let meta: CheckpointMeta = serde_json::from_str(json)
        .map_err(|e| damaged(format!("its metadata is unreadable: {e}")))?;
    if meta.format_version != FORMAT_VERSION {
        return Err(fail(format!(
            "format_version {} is not the supported version {FORMAT_VERSION}",
            meta.format_version
        )));
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| damaged(format!("its tensors are unreadable: {e}")))?;
    Ok((tensors, meta))
}

/// Reads only the metadata (cheap: the header).
pub fn load_meta(path: &Path) -> Result<CheckpointMeta, TrainError> {
    // The header is at most a few kB but its length is in the first 8 bytes.
    use std::io::Read;
    let fail = |message: String| TrainError::Checkpoint {
        path: path.display().to_string(),
        message,
    };
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(io(path))?;
    let n = u64::from_le_bytes(len) as usize;
    if n > 100 << 20 {
        return Err(fail(format!("header of {n} bytes: not a safetensors file")));
    }
    let mut header = vec![0u8; n];
    file.read_exact(&mut header).map_err(io(path))?;
    let value: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| fail(format!("header: {e}")))?;
    let json = value
        .get("__metadata__")
        .and_then(|m| m.get(META_KEY))
        .and_then(|j| j.as_str())
        .ok_or_else(|| {
            fail(format!(
                "no {META_KEY:?} metadata: not a checkpoint written by `pipeline train`"
            ))
        })?;
    let meta: CheckpointMeta =
        serde_json::from_str(json).map_err(|e| fail(format!("metadata: {e}")))?;
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn meta() -> CheckpointMeta {
        CheckpointMeta {
            format_version: FORMAT_VERSION,
            step: 7,
            position: StreamPosition { epoch: 1, batch: 3 },
            dropout: crate::model::DropoutRng::new(3).state(),
            schedule: ScheduleState::default(),
            progress: EpochProgress {
                loss_sum: 0.1 + 0.2,
                batches: 3,
                images: 96,
                top1_errors: 5,
                train_s: 1.5,
                stall_s: 0.1,
            },
            val: None,
            classes: vec!["n01".into(), "n02".into()],
            model: ModelConfig::default(),
            input_size: 64,
        }
    }

    #[test]
    fn round_trips_tensors_and_metadata_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = step_file(dir.path(), 7);
        let w = Tensor::new(&[1.5f32, -2.25, 3.0], &Device::Cpu).unwrap();
        let tensors = HashMap::from([("fc8.weight".to_string(), w.clone())]);
        save(&path, &tensors, &meta()).unwrap();
        let (back, m) = load(&path, &Device::Cpu).unwrap();
        assert_eq!(m, meta());
        assert_eq!(m.progress.loss_sum.to_bits(), (0.1f64 + 0.2).to_bits());
        assert_eq!(
            back["fc8.weight"].to_vec1::<f32>().unwrap(),
            w.to_vec1::<f32>().unwrap()
        );
        assert_eq!(back["fc8.weight"].dtype(), DType::F32);
        assert_eq!(load_meta(&path).unwrap(), meta());
        assert!(!atomic::temp_path(&path).exists());
    }

    #[test]
    fn keeps_the_newest_and_refuses_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let t = HashMap::from([("x".to_string(), Tensor::new(&[0f32], &Device::Cpu).unwrap())]);
        for step in [3, 10, 7, 12] {
            save(&step_file(dir.path(), step), &t, &meta()).unwrap();
        }
        prune(dir.path(), 2).unwrap();
        let left: Vec<u64> = list_steps(dir.path())
            .unwrap()
            .iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(left, [10, 12]);
        let foreign = dir.path().join("plain.safetensors");
        candle_core::safetensors::save(&t, &foreign).unwrap();
        let err = load(&foreign, &Device::Cpu).unwrap_err().to_string();
        assert!(
            err.contains("plain.safetensors") && err.contains(META_KEY),
            "{err}"
        );
    }

    #[test]
    fn a_flipped_byte_anywhere_in_the_tensors_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = step_file(dir.path(), 7);
        let w = Tensor::new(&[1.5f32, -2.25, 3.0, 4.0], &Device::Cpu).unwrap();
        save(&path, &HashMap::from([("w".to_string(), w)]), &meta()).unwrap();
        let good = std::fs::read(&path).unwrap();
        // The last byte of the file is the last byte of the tensor data.
        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 0x40;
        std::fs::write(&path, &bad).unwrap();
        let err = load(&path, &Device::Cpu).unwrap_err().to_string();
        assert!(
            err.contains("step-00000007.safetensors: damaged, its contents"),
            "{err}"
        );
        std::fs::write(&path, &good).unwrap();
        assert!(load(&path, &Device::Cpu).is_ok());
    }
}
