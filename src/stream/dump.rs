//! `--dump OUT`: the first batches exactly as the model receives them, as files
//! a Python user can open: `images-K.npy` f32 [B,3,H,W], `labels-K.npy` int64 [B],
//! `keys-K.txt` one key per line.

use std::path::Path;

use super::Batch;
use crate::dataset::npy::{self, NpyError};

pub fn write_batch(dir: &Path, k: usize, batch: &Batch) -> Result<(), NpyError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| NpyError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let shape = batch.shape().map(|d| d as u64);
    npy::write_plain(&dir.join(format!("images-{k}.npy")), &shape, &batch.images)?;
    npy::write_plain(
        &dir.join(format!("labels-{k}.npy")),
        &[batch.labels.len() as u64],
        &batch.labels,
    )?;
    let keys_path = dir.join(format!("keys-{k}.txt"));
    let mut text = batch.keys.join("\n");
    text.push('\n');
    std::fs::write(&keys_path, text).map_err(io(&keys_path))
}
