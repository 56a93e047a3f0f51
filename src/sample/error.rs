//! Everything that can stop a sample render, each naming the file or option at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// The Fashion-MNIST files compiled into the binary do not parse.
    #[error("bundled sample file src/sample/{file} is corrupt: {reason}")]
    BundledData { file: &'static str, reason: String },

    /// A `SampleOptions` field is out of range.
    #[error("sample option `{key}` = {value} is invalid: {reason}")]
    BadOption {
        key: &'static str,
        value: String,
        reason: &'static str,
    },

    /// `out` holds files that a previous sample render did not write.
    #[error(
        "refusing to render the sample into {path}: it is not empty and has no {marker} \
         file from an earlier sample render (pick an empty or new folder)"
    )]
    OutNotEmpty { path: PathBuf, marker: &'static str },

    #[error("sample render: I/O error at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("sample render: could not resize the image for {path}: {source}")]
    Resize {
        path: PathBuf,
        source: fast_image_resize::ResizeError,
    },

    #[error("sample render: could not encode {path} as JPEG: {source}")]
    Jpeg {
        path: PathBuf,
        source: jpeg_encoder::EncodingError,
    },

    #[error("sample render: could not encode {path} as PNG: {source}")]
    Png {
        path: PathBuf,
        source: image::ImageError,
    },
}

impl SampleError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> SampleError {
        let path = path.into();
        move |source| SampleError::Io { path, source }
    }
}
