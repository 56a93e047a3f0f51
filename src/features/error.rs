//! What can go wrong in export, search, codes, evaluation and drawing — each error
//! names the file, key, option or tensor at fault.

/// Errors of the `features` module.
#[derive(Debug, thiserror::Error)]
pub enum FeaturesError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a readable Parquet file: {source}")]
    Parquet {
        path: String,
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: not a readable Arrow batch: {source}")]
    Arrow {
        path: String,
        source: arrow::error::ArrowError,
    },
    #[error("{path}: not a features file: expected columns {expected}, found {found}")]
    Schema {
        path: String,
        expected: String,
        found: String,
    },
    #[error("{path}: key-value metadata {key}: {reason}")]
    Metadata {
        path: String,
        key: String,
        reason: String,
    },
    #[error("{path}: format_version {found} is not the supported version {supported}")]
    Version {
        path: String,
        found: String,
        supported: u32,
    },
    /// Two things that must agree on a size do not (a codes model and a features file,
    /// a model and a dataset, a buffer and its declared shape).
    #[error("{what}: {left} has {left_value}, but {right} has {right_value}")]
    Mismatch {
        what: String,
        left: String,
        left_value: String,
        right: String,
        right_value: String,
    },
    #[error("{dataset}: no image with key {key} in the {splits} shards")]
    KeyNotFound {
        dataset: String,
        key: String,
        splits: String,
    },
    #[error("invalid option {key}: {reason}")]
    InvalidOption { key: &'static str, reason: String },
    #[error("{context}: {source}")]
    Candle {
        context: String,
        source: candle_core::Error,
    },
    #[error("{path}: {source}")]
    Image {
        path: String,
        source: image::ImageError,
    },
    #[error(transparent)]
    Stream(#[from] crate::stream::StreamError),
    #[error(transparent)]
    Manifest(#[from] crate::dataset::manifest::ManifestError),
    #[error(transparent)]
    Shard(#[from] crate::dataset::reader::ReadError),
}

impl FeaturesError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        FeaturesError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    pub(crate) fn parquet(path: &std::path::Path, source: parquet::errors::ParquetError) -> Self {
        FeaturesError::Parquet {
            path: path.display().to_string(),
            source,
        }
    }

    pub(crate) fn arrow(path: &std::path::Path, source: arrow::error::ArrowError) -> Self {
        FeaturesError::Arrow {
            path: path.display().to_string(),
            source,
        }
    }

    /// Wraps a candle error with what was being done (`"codes: training step 12"`).
    pub(crate) fn candle(context: impl Into<String>) -> impl FnOnce(candle_core::Error) -> Self {
        let context = context.into();
        move |source| FeaturesError::Candle { context, source }
    }

    pub(crate) fn mismatch(
        what: impl Into<String>,
        left: impl Into<String>,
        left_value: impl std::fmt::Display,
        right: impl Into<String>,
        right_value: impl std::fmt::Display,
    ) -> Self {
        FeaturesError::Mismatch {
            what: what.into(),
            left: left.into(),
            left_value: left_value.to_string(),
            right: right.into(),
            right_value: right_value.to_string(),
        }
    }
}
