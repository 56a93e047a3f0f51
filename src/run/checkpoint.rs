//! Checkpoints: one safetensors file holding the weights (`conv1.weight` …, loadable by
//! any candle `VarBuilder`), optionally the momentum (`velocity.conv1.weight` …), and in
//! the header's metadata two JSON documents kept apart:
//!
//! - under [`CARD_KEY`], the [`ModelCard`]: what the network is (all inference needs);
//! - under [`TRAINER_KEY`], the trainer's state (stream position, dropout RNG, step,
//!   schedule, the partial sums of the epoch in progress): what `--resume` needs to
//!   continue bit for bit. Its shape belongs to `train/`; here it is opaque text.
//!
//! The metadata also holds, under [`DIGEST_KEY`], a SHA-256 digest of both documents,
//! the tensor table and every tensor byte, written in the same file (so atomically with
//! it) and checked on load: a checkpoint with flipped bytes is refused by name instead of
//! training on (or predicting) from damaged weights.
//!
//! Checkpoints of format version 1 (one JSON object under [`LEGACY_META_KEY`] mixing card
//! and trainer state) still load: the card is rebuilt from that object and the run's
//! `recipe.toml` and `run.json`, and the object itself is the trainer state (its field
//! names are the trainer's). Those written before the digest existed load unverified.
//!
//! Files are written atomically (temp + fsync + rename), so a crash leaves either the old
//! file or the new one. `RUN/checkpoints/step-NNNNNNNN.safetensors` are the last
//! `keep_last` checkpoints; `best.safetensors` is the one with the lowest validation
//! top-1 error.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::safetensors::Load;
use candle_core::{Device, Tensor};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::card::{CARD_FORMAT_VERSION, DatasetIdentity, ModelCard, TrainedFor};
use super::dir::RunDir;
use super::error::{RunError, io};
use crate::dataset::atomic;
use crate::dataset::manifest::ClassInfo;
use crate::model::ModelConfig;

/// The safetensors metadata key holding the JSON [`ModelCard`].
pub const CARD_KEY: &str = "pipeline.card";
/// The safetensors metadata key holding the trainer's state (JSON, owned by `train/`).
pub const TRAINER_KEY: &str = "pipeline.trainer";
/// The safetensors metadata key holding `sha256:HEX`, the digest of the file.
pub const DIGEST_KEY: &str = "pipeline.digest";
/// The metadata key of format version 1: card and trainer state in one object.
pub const LEGACY_META_KEY: &str = "pipeline.checkpoint";
/// Name of the best checkpoint inside `RUN/checkpoints/`.
pub const BEST_FILE: &str = "best.safetensors";
/// Prefix of the momentum tensors, which only training reads.
pub const VELOCITY_PREFIX: &str = "velocity.";

/// Which tensors to bring onto the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tensors {
    /// The network's weights only (inference): the momentum stays on disk.
    Weights,
    /// Weights and momentum (resuming training).
    WeightsAndMomentum,
}

/// A checkpoint as read.
pub struct Checkpoint {
    pub path: PathBuf,
    pub card: ModelCard,
    /// The trainer's state as saved (JSON), if the checkpoint carries one.
    pub trainer: Option<String>,
    pub tensors: HashMap<String, Tensor>,
}

/// `RUN/checkpoints/step-00001234.safetensors`.
pub fn step_file(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("step-{step:08}.safetensors"))
}

/// The step checkpoints in `dir`, oldest first.
pub fn list_steps(dir: &Path) -> Result<Vec<(u64, PathBuf)>, RunError> {
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
pub fn prune(dir: &Path, keep: usize) -> Result<(), RunError> {
    let steps = list_steps(dir)?;
    for (_, path) in steps.iter().take(steps.len().saturating_sub(keep)) {
        std::fs::remove_file(path).map_err(io(path))?;
    }
    Ok(())
}

fn failure(path: &Path) -> impl Fn(String) -> RunError + '_ {
    move |message| RunError::Checkpoint {
        path: path.display().to_string(),
        message,
    }
}

/// Writes `tensors`, the `card` and the trainer's state to `path` atomically, with
/// their digest.
pub fn save(
    path: &Path,
    card: &ModelCard,
    trainer: Option<&str>,
    tensors: &HashMap<String, Tensor>,
) -> Result<(), RunError> {
    let fail = failure(path);
    let card_json = serde_json::to_string(card).map_err(|e| fail(e.to_string()))?;
    let mut metadata = HashMap::from([(CARD_KEY.to_string(), card_json.clone())]);
    if let Some(trainer) = trainer {
        metadata.insert(TRAINER_KEY.to_string(), trainer.to_string());
    }
    let bytes = safetensors::serialize(tensors, Some(metadata)).map_err(|e| fail(e.to_string()))?;
    // The digest goes into the header, which does not move the data section (its
    // offsets are relative to it): rewrite the header only, never copy the tensors.
    let (n, table) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| fail(e.to_string()))?;
    let data = &bytes[8 + n..];
    let mut header: serde_json::Value =
        serde_json::from_slice(&bytes[8..8 + n]).map_err(|e| fail(format!("header: {e}")))?;
    header["__metadata__"][DIGEST_KEY] = serde_json::Value::String(format!(
        "sha256:{}",
        digest(&card_json, trainer, &table, data)
    ));
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

/// SHA-256 (hex) over the card, the trainer's state, the tensor table (names, dtypes,
/// shapes, offsets) and the data section: every byte a reader depends on.
pub fn digest(
    card_json: &str,
    trainer: Option<&str>,
    table: &safetensors::tensor::Metadata,
    data: &[u8],
) -> String {
    let mut hash = Sha256::new();
    hash.update(b"pipeline checkpoint digest v2\n");
    hash.update(card_json.as_bytes());
    hash.update(b"\n");
    if let Some(trainer) = trainer {
        hash.update(b"trainer ");
        hash.update(trainer.as_bytes());
    }
    hash.update(b"\n");
    hash_tensors(&mut hash, table, data);
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The digest of format version 1, over its one metadata object.
fn legacy_digest(meta_json: &str, table: &safetensors::tensor::Metadata, data: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(b"pipeline checkpoint digest v1\n");
    hash.update(meta_json.as_bytes());
    hash.update(b"\n");
    hash_tensors(&mut hash, table, data);
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn hash_tensors(hash: &mut Sha256, table: &safetensors::tensor::Metadata, data: &[u8]) {
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
}

/// The part of a format-1 object the card is rebuilt from (the rest is trainer state).
#[derive(Deserialize)]
struct LegacyMeta {
    format_version: u32,
    step: u64,
    position: LegacyPosition,
    classes: Vec<String>,
    model: ModelConfig,
    input_size: usize,
}

#[derive(Deserialize)]
struct LegacyPosition {
    epoch: u64,
}

/// The card of a format-1 checkpoint: its object, with the recipe and the dataset from
/// the run directory (format 1 kept them there only). Class names were not kept: each
/// class is named by its wnid.
fn legacy_card(meta: LegacyMeta, run: &RunDir) -> Result<ModelCard, RunError> {
    let recipe_path = run.recipe();
    let recipe = std::fs::read_to_string(&recipe_path).map_err(io(&recipe_path))?;
    let image_size = crate::recipe::Recipe::load(&recipe_path)?.data.image_size;
    let location = if run.info().exists() {
        run.load_info()?.dataset.display().to_string()
    } else {
        String::new()
    };
    Ok(ModelCard {
        format_version: meta.format_version,
        model: meta.model,
        input_size: meta.input_size,
        classes: meta
            .classes
            .into_iter()
            .enumerate()
            .map(|(index, wnid)| ClassInfo {
                index,
                name: wnid.clone(),
                wnid,
            })
            .collect(),
        dataset: DatasetIdentity {
            location,
            image_size,
        },
        recipe,
        trained: TrainedFor {
            epochs: meta.position.epoch,
            steps: meta.step,
        },
    })
}

/// Reads the checkpoint at `path` of `run`: its card, its trainer state and the tensors
/// asked for (on `device`), after checking its digest.
pub fn load(
    run: &RunDir,
    path: &Path,
    which: Tensors,
    device: &Device,
) -> Result<Checkpoint, RunError> {
    let fail = failure(path);
    let bytes = std::fs::read(path).map_err(io(path))?;
    let damaged = |what: String| fail(format!("damaged, {what}"));
    let (n, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| damaged(format!("its safetensors header is unreadable: {e}")))?;
    let data = &bytes[8 + n..];
    let metadata = header.metadata().clone().unwrap_or_default();
    let (card, trainer, expected) = if let Some(card_json) = metadata.get(CARD_KEY) {
        let trainer = metadata.get(TRAINER_KEY).cloned();
        let expected = digest(card_json, trainer.as_deref(), &header, data);
        let card: ModelCard = serde_json::from_str(card_json)
            .map_err(|e| damaged(format!("its model card is unreadable: {e}")))?;
        if card.format_version != CARD_FORMAT_VERSION {
            return Err(fail(format!(
                "format_version {} is not the supported version {CARD_FORMAT_VERSION}",
                card.format_version
            )));
        }
        (card, trainer, expected)
    } else if let Some(meta_json) = metadata.get(LEGACY_META_KEY) {
        let expected = legacy_digest(meta_json, &header, data);
        let meta: LegacyMeta = serde_json::from_str(meta_json)
            .map_err(|e| damaged(format!("its metadata is unreadable: {e}")))?;
        if meta.format_version != 1 {
            return Err(fail(format!(
                "format_version {} is not a supported version (1 or {CARD_FORMAT_VERSION})",
                meta.format_version
            )));
        }
        note_once(
            &LEGACY_SAID,
            format_args!(
                "note: checkpoint {} is in format version 1 (model card and trainer state in \
                 one object); reading it as such. Checkpoints written from now on are version \
                 {CARD_FORMAT_VERSION}.",
                path.display()
            ),
        );
        (legacy_card(meta, run)?, Some(meta_json.clone()), expected)
    } else {
        return Err(fail(format!(
            "no {CARD_KEY:?} metadata: not a checkpoint written by `pipeline train`"
        )));
    };
    match metadata.get(DIGEST_KEY) {
        Some(saved) => {
            let actual = format!("sha256:{expected}");
            if *saved != actual {
                return Err(damaged(format!(
                    "its contents do not match the digest saved with it ({saved} was \
                     written, the bytes now hash to {actual})"
                )));
            }
        }
        None => note_once(
            &UNVERIFIED_SAID,
            format_args!(
                "note: checkpoint {} carries no digest (written by an older version); \
                 loading it unverified. Checkpoints written from now on are verified.",
                path.display()
            ),
        ),
    }
    let tensors = read_tensors(&bytes, which, device)
        .map_err(|e| damaged(format!("its tensors are unreadable: {e}")))?;
    Ok(Checkpoint {
        path: path.to_path_buf(),
        card,
        trainer,
        tensors,
    })
}

static LEGACY_SAID: AtomicBool = AtomicBool::new(false);
static UNVERIFIED_SAID: AtomicBool = AtomicBool::new(false);

/// A note on stderr, once per process (a resume may read several old checkpoints).
fn note_once(said: &AtomicBool, note: std::fmt::Arguments) {
    if !said.swap(true, Ordering::SeqCst) {
        eprintln!("{note}");
    }
}

/// The tensors of a safetensors file; the momentum only when asked for, so inference
/// never moves it to the device.
fn read_tensors(
    bytes: &[u8],
    which: Tensors,
    device: &Device,
) -> Result<HashMap<String, Tensor>, candle_core::Error> {
    let file = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    file.tensors()
        .into_iter()
        .filter(|(name, _)| {
            which == Tensors::WeightsAndMomentum || !name.starts_with(VELOCITY_PREFIX)
        })
        .map(|(name, view)| Ok((name, view.load(device)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn card() -> ModelCard {
        ModelCard {
            format_version: CARD_FORMAT_VERSION,
            model: ModelConfig::default(),
            input_size: 64,
            classes: vec![
                ClassInfo {
                    index: 0,
                    wnid: "n01".into(),
                    name: "one".into(),
                },
                ClassInfo {
                    index: 1,
                    wnid: "n02".into(),
                    name: "two".into(),
                },
            ],
            dataset: DatasetIdentity {
                location: "dataset".into(),
                image_size: 72,
            },
            recipe: "[train]\nseed = 3\n".into(),
            trained: TrainedFor {
                epochs: 1,
                steps: 7,
            },
        }
    }

    const TRAINER: &str = r#"{"step":7}"#;

    #[test]
    fn round_trips_card_state_and_tensors_and_leaves_the_momentum_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let path = step_file(dir.path(), 7);
        let w = Tensor::new(&[1.5f32, -2.25, 3.0], &Device::Cpu).unwrap();
        let v = Tensor::new(&[0.5f32, 0.25, 0.0], &Device::Cpu).unwrap();
        let tensors = HashMap::from([
            ("fc8.weight".to_string(), w.clone()),
            ("velocity.fc8.weight".to_string(), v),
        ]);
        save(&path, &card(), Some(TRAINER), &tensors).unwrap();
        let back = load(&run, &path, Tensors::WeightsAndMomentum, &Device::Cpu).unwrap();
        assert_eq!(back.card, card());
        assert_eq!(back.trainer.as_deref(), Some(TRAINER));
        assert_eq!(
            back.tensors["fc8.weight"].to_vec1::<f32>().unwrap(),
            w.to_vec1::<f32>().unwrap()
        );
        assert_eq!(back.tensors["fc8.weight"].dtype(), DType::F32);
        assert_eq!(back.tensors.len(), 2);
        let weights = load(&run, &path, Tensors::Weights, &Device::Cpu).unwrap();
        assert_eq!(
            weights.tensors.keys().collect::<Vec<_>>(),
            ["fc8.weight"],
            "inference reads no momentum"
        );
        assert!(!atomic::temp_path(&path).exists());
    }

    #[test]
    fn keeps_the_newest_and_refuses_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let t = HashMap::from([("x".to_string(), Tensor::new(&[0f32], &Device::Cpu).unwrap())]);
        for step in [3, 10, 7, 12] {
            save(&step_file(dir.path(), step), &card(), None, &t).unwrap();
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
        let err = load(
            &RunDir::new(dir.path()),
            &foreign,
            Tensors::Weights,
            &Device::Cpu,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("plain.safetensors") && err.contains(CARD_KEY),
            "{err}"
        );
    }

    #[test]
    fn a_flipped_byte_in_the_tensors_or_the_trainer_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let path = step_file(dir.path(), 7);
        let w = Tensor::new(&[1.5f32, -2.25, 3.0, 4.0], &Device::Cpu).unwrap();
        save(
            &path,
            &card(),
            Some(TRAINER),
            &HashMap::from([("w".to_string(), w)]),
        )
        .unwrap();
        let good = std::fs::read(&path).unwrap();
        // The last byte of the file is the last byte of the tensor data.
        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 0x40;
        std::fs::write(&path, &bad).unwrap();
        let err = load(&run, &path, Tensors::Weights, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("step-00000007.safetensors: damaged, its contents"),
            "{err}"
        );
        // The trainer state is covered too, though inference does not read it.
        let at = good.windows(9).position(|w| w == b"\\\"step\\\":").unwrap();
        let mut bad = good.clone();
        bad[at + 9] = b'8';
        std::fs::write(&path, &bad).unwrap();
        let err = load(&run, &path, Tensors::Weights, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("damaged, its contents"), "{err}");
        std::fs::write(&path, &good).unwrap();
        assert!(load(&run, &path, Tensors::Weights, &Device::Cpu).is_ok());
    }
}
