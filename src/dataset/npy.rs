//! `.npy` arrays (the mean image, dumped batches): written atomically, read with shape checks.

use std::io::Write;
use std::path::Path;

use npyz::WriterBuilder;

use super::atomic;

#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: expected shape {expected:?}, found {found:?}")]
    Shape {
        path: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
}

/// Serialises a C-order array of `shape` to `.npy` bytes.
pub fn to_bytes<T: npyz::Serialize + npyz::AutoSerialize + Copy>(
    shape: &[u64],
    data: &[T],
) -> Vec<u8> {
    assert_eq!(
        shape.iter().product::<u64>() as usize,
        data.len(),
        "npy shape does not match data"
    );
    let mut bytes = Vec::with_capacity(128 + std::mem::size_of_val(data));
    {
        let mut writer = npyz::WriteOptions::new()
            .default_dtype()
            .shape(shape)
            .writer(&mut bytes)
            .begin_nd()
            .expect("writing to memory cannot fail");
        writer
            .extend(data.iter().copied())
            .expect("writing to memory cannot fail");
        writer.finish().expect("writing to memory cannot fail");
    }
    bytes
}

/// Writes a C-order array to `path` atomically.
pub fn write<T: npyz::Serialize + npyz::AutoSerialize + Copy>(
    path: &Path,
    shape: &[u64],
    data: &[T],
) -> Result<(), NpyError> {
    let bytes = to_bytes(shape, data);
    atomic::write_file(path, &bytes).map_err(|source| NpyError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Writes without the temp+rename dance, for outputs that are not resumable state.
pub fn write_plain<T: npyz::Serialize + npyz::AutoSerialize + Copy>(
    path: &Path,
    shape: &[u64],
    data: &[T],
) -> Result<(), NpyError> {
    let bytes = to_bytes(shape, data);
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(&bytes))
        .map_err(|source| NpyError::Io {
            path: path.display().to_string(),
            source,
        })
}

/// Reads an f32 array, checking its shape.
pub fn read_f32(path: &Path, expected_shape: &[u64]) -> Result<Vec<f32>, NpyError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
        path: shown.clone(),
        source,
    })?;
    parse_f32(&bytes, &shown, expected_shape)
}

/// Parses the bytes of an f32 `.npy` file (named `shown` in errors), checking its shape.
pub fn parse_f32(bytes: &[u8], shown: &str, expected_shape: &[u64]) -> Result<Vec<f32>, NpyError> {
    let io = |source: std::io::Error| NpyError::Io {
        path: shown.to_string(),
        source,
    };
    let array = npyz::NpyFile::new(bytes).map_err(io)?;
    if array.shape() != expected_shape {
        return Err(NpyError::Shape {
            path: shown.to_string(),
            expected: expected_shape.to_vec(),
            found: array.shape().to_vec(),
        });
    }
    array.into_vec::<f32>().map_err(io)
}
