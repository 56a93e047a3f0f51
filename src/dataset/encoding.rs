//! How a shard stores each image: the raw S×S×3 crop, or that crop JPEG-encoded once at
//! ingest. [`Encoding::pixels`] is the one door every reader of pixels goes through, so
//! a reader never needs to know which of the two a dataset holds.

use jpeg_encoder::{ColorType, Encoder};
use serde::{Deserialize, Serialize};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use super::schema::PixelLayout;

/// The encoding of a dataset's images (`[ingest] encoding`, recorded in `dataset.json`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// S·S·3 bytes of HWC RGB in a `pixels` column: no decode at all.
    #[default]
    Raw,
    /// A baseline JPEG of the S×S crop in an `image` column (Hugging Face's image
    /// struct), encoded once at ingest at `[ingest] quality`.
    Jpeg,
}

/// A stored image value that does not hold an S×S RGB image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PixelsError {
    #[error("holds {found} pixel bytes, expected {expected}")]
    RawSize { found: usize, expected: usize },
    #[error("is not a decodable JPEG: {0}")]
    CorruptJpeg(String),
    #[error("is a {width}x{height} JPEG, expected {side}x{side}")]
    JpegSize {
        width: usize,
        height: usize,
        side: usize,
    },
    #[error("cannot be JPEG-encoded: {0}")]
    Encode(String),
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Raw => "raw",
            Encoding::Jpeg => "jpeg",
        }
    }

    /// The S·S·3 HWC RGB pixels of one stored value: the value itself when raw (no
    /// copy), else its decode into `buffer`, which is reused from call to call.
    ///
    /// zune-jpeg cannot decode a window of an image, so a crop of a JPEG row costs the
    /// decode of the whole S×S image.
    pub fn pixels<'a>(
        self,
        stored: &'a [u8],
        side: usize,
        buffer: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], PixelsError> {
        let expected = PixelLayout::new(side).bytes();
        match self {
            Encoding::Raw if stored.len() == expected => Ok(stored),
            Encoding::Raw => Err(PixelsError::RawSize {
                found: stored.len(),
                expected,
            }),
            Encoding::Jpeg => {
                decode_jpeg(stored, side, buffer)?;
                Ok(buffer)
            }
        }
    }

    /// The value stored for the S×S crop `pixels`: a copy when raw, its JPEG at
    /// `quality` (1–100) when jpeg. jpeg-encoder subsamples chroma 4:2:0 below
    /// quality 90 and keeps it 4:4:4 from 90 on.
    pub fn encode(
        self,
        pixels: &[u8],
        side: usize,
        quality: u8,
        out: &mut Vec<u8>,
    ) -> Result<(), PixelsError> {
        out.clear();
        match self {
            Encoding::Raw => out.extend_from_slice(pixels),
            Encoding::Jpeg => {
                let dimension = u16::try_from(side)
                    .map_err(|_| PixelsError::Encode(format!("side {side} is over 65535")))?;
                Encoder::new(&mut *out, quality)
                    .encode(pixels, dimension, dimension, ColorType::Rgb)
                    .map_err(|e| PixelsError::Encode(e.to_string()))?;
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Encoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Decodes a stored JPEG that must be `side`×`side` into `buffer` as RGB.
fn decode_jpeg(bytes: &[u8], side: usize, buffer: &mut Vec<u8>) -> Result<(), PixelsError> {
    let corrupt = |e: zune_jpeg::errors::DecodeErrors| PixelsError::CorruptJpeg(e.to_string());
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(corrupt)?;
    let (width, height) = decoder
        .dimensions()
        .ok_or_else(|| PixelsError::CorruptJpeg("no frame header".into()))?;
    if (width, height) != (side, side) {
        return Err(PixelsError::JpegSize {
            width,
            height,
            side,
        });
    }
    // Every byte is written by a successful decode, so the buffer is only sized.
    buffer.resize(PixelLayout::new(side).bytes(), 0);
    decoder.decode_into(buffer).map_err(corrupt)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(side: usize) -> Vec<u8> {
        (0..side * side * 3).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn raw_is_the_value_itself_and_checks_its_length() {
        let pixels = gradient(4);
        let mut buffer = Vec::new();
        let out = Encoding::Raw.pixels(&pixels, 4, &mut buffer).unwrap();
        assert_eq!(out.as_ptr(), pixels.as_ptr());
        assert_eq!(
            Encoding::Raw.pixels(&pixels[1..], 4, &mut buffer),
            Err(PixelsError::RawSize {
                found: 47,
                expected: 48
            })
        );
    }

    #[test]
    fn jpeg_round_trips_near_the_crop_and_refuses_bad_bytes() {
        let side = 16;
        let pixels: Vec<u8> = (0..side * side * 3)
            .map(|i| (i / 3 % side * 8) as u8)
            .collect();
        let jpeg = Encoding::Jpeg;
        let mut stored = Vec::new();
        jpeg.encode(&pixels, side, 95, &mut stored).unwrap();
        let mut buffer = Vec::new();
        let decoded = jpeg.pixels(&stored, side, &mut buffer).unwrap();
        let worst = decoded
            .iter()
            .zip(&pixels)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(worst <= 12, "worst pixel error {worst}");
        assert!(matches!(
            jpeg.pixels(&stored[..stored.len() / 2], side, &mut buffer),
            Err(PixelsError::CorruptJpeg(_))
        ));
        assert_eq!(
            jpeg.pixels(&stored, 8, &mut buffer),
            Err(PixelsError::JpegSize {
                width: 16,
                height: 16,
                side: 8
            })
        );
    }
}
