//! Figures are drawn into an RGB buffer and saved as PNG, atomically.

use std::path::Path;

use image::{ExtendedColorType, ImageEncoder, codecs::png::PngEncoder};

use super::ReportError;
use crate::dataset::atomic;

/// A `width × height` RGB8 canvas (row-major, 3 bytes a pixel).
pub struct Canvas {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

impl Canvas {
    /// A white canvas.
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            rgb: vec![255; width as usize * height as usize * 3],
        }
    }

    pub fn put(&mut self, x: u32, y: u32, rgb: [u8; 3]) {
        if x < self.width && y < self.height {
            let at = (y as usize * self.width as usize + x as usize) * 3;
            self.rgb[at..at + 3].copy_from_slice(&rgb);
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), ReportError> {
        let mut bytes = Vec::new();
        PngEncoder::new(&mut bytes)
            .write_image(&self.rgb, self.width, self.height, ExtendedColorType::Rgb8)
            .map_err(|e| ReportError::Draw {
                figure: path.display().to_string(),
                message: e.to_string(),
            })?;
        atomic::write_file(path, &bytes).map_err(|source| ReportError::Io {
            path: path.display().to_string(),
            source,
        })
    }
}
