//! Decoding source files to 8-bit pixels: JPEG (baseline, progressive,
//! grayscale, CMYK/YCCK) and PNG, whatever the file's extension says.
//!
//! A decoder that quietly fills a truncated scan with grey corrupts the dataset,
//! so decoding is strict: truncated or corrupt files are errors with a reason,
//! and the caller skips and lists them.
//!
//! A JPEG cut short and given a new end-of-image marker still parses: the
//! decoder reads zero bits past the end and paints the missing rows flat. So the
//! scan is handed over followed by a run of one bits: a complete scan never
//! reaches them, while a short one must decode them, and no Huffman code is all
//! ones (the JPEG standard reserves it), so it fails. Bytes after the image's
//! end-of-image marker (motion-photo videos, padding) are not the image's and
//! are left out, as libjpeg and Pillow do.

use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// A decoded image: 1 channel (gray) or 3 (RGB), row-major interleaved.
/// Gray stays 1 channel until after the resize (a third of the work).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedImage {
    pub width: u32,
    pub height: u32,
    pub channels: u8,
    pub pixels: Vec<u8>,
}

/// Why a file was skipped; the text goes into the manifest's `skipped` list.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty file")]
    Empty,
    #[error("unsupported format (first bytes {0})")]
    UnsupportedFormat(String),
    #[error("truncated JPEG: no end-of-image marker")]
    TruncatedJpeg,
    #[error("truncated JPEG: the scan ends before the frame is filled")]
    ScanEndsEarly,
    #[error("corrupt JPEG: {0}")]
    CorruptJpeg(String),
    #[error("corrupt PNG: {0}")]
    CorruptPng(String),
    #[error(
        "image too large: {width}x{height} is over the limit of {limit} pixels (decompression bomb?)"
    )]
    TooLarge { width: u64, height: u64, limit: u64 },
    #[error("unsupported JPEG colour space {0:?}")]
    UnsupportedColourSpace(String),
}

const JPEG_MAGIC: &[u8] = &[0xFF, 0xD8, 0xFF];
const PNG_MAGIC: &[u8] = &[0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1A, b'\n'];
/// Stuffed 0xFF bytes: one bits to the entropy decoder (see the module docs).
/// 256 one bits hold several of the longest codes (16 bits) with their extra
/// bits, so a short scan meets a whole all-ones code.
const ONES: [u8; 64] = {
    let mut ones = [0u8; 64];
    let mut i = 0;
    while i < ones.len() {
        ones[i] = 0xFF;
        i += 2;
    }
    ones
};
const END_OF_IMAGE: [u8; 2] = [0xFF, 0xD9];

thread_local! {
    /// The scan as handed to the decoder (reused: one per decode thread).
    static PREPARED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Decodes a file's bytes by sniffing its format (never trusting the extension).
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<DecodedImage, DecodeError> {
    decode_reusing(bytes, max_pixels, Vec::new())
}

/// [`decode`], with a JPEG's pixels written into `buffer` (a previous image's
/// `pixels`, say), so a worker does not allocate and page-fault a fresh
/// buffer for every image.
pub fn decode_reusing(
    bytes: &[u8],
    max_pixels: u64,
    buffer: Vec<u8>,
) -> Result<DecodedImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.starts_with(JPEG_MAGIC) {
        decode_jpeg(bytes, max_pixels, buffer)
    } else if bytes.starts_with(PNG_MAGIC) {
        decode_png(bytes, max_pixels)
    } else {
        let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        Err(DecodeError::UnsupportedFormat(head.join(" ")))
    }
}

fn check_size(width: u64, height: u64, limit: u64) -> Result<(), DecodeError> {
    if width.saturating_mul(height) > limit {
        return Err(DecodeError::TooLarge {
            width,
            height,
            limit,
        });
    }
    Ok(())
}

/// Where the image ends: the offset of the end-of-image marker after its last
/// scan. Walks the marker segments by their lengths (so a thumbnail's markers
/// inside an APP segment are passed over) and each scan's entropy-coded data
/// to the marker that closes it. Anything after this marker is not the image's.
fn end_of_image(bytes: &[u8]) -> Result<usize, DecodeError> {
    let mut pos = JPEG_MAGIC.len() - 1;
    loop {
        // The next marker: 0xFF, any fill 0xFF bytes, then the code.
        // Stray bytes before it are the decoder's to judge.
        pos = find_ff(bytes, pos).ok_or(DecodeError::TruncatedJpeg)?;
        let at = pos;
        while bytes.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let code = *bytes.get(pos).ok_or(DecodeError::TruncatedJpeg)?;
        pos += 1;
        match code {
            0xD9 => return Ok(at),
            // Markers without a length.
            0x00 | 0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let length = match bytes.get(pos..pos + 2) {
            Some(&[hi, lo]) => usize::from(u16::from_be_bytes([hi, lo])),
            _ => return Err(DecodeError::TruncatedJpeg),
        };
        if length < 2 {
            return Err(DecodeError::CorruptJpeg(format!(
                "marker FF{code:02X} at byte {at} has length {length}"
            )));
        }
        pos += length;
        if pos > bytes.len() {
            return Err(DecodeError::TruncatedJpeg);
        }
        if code == 0xDA {
            pos = end_of_scan(bytes, pos);
        }
    }
}

/// The offset of the marker that ends the entropy-coded data starting at `pos`
/// (in there 0xFF is followed by 0x00, a stuffed byte, or RST0–7), or the
/// file's length when none does.
fn end_of_scan(bytes: &[u8], mut pos: usize) -> usize {
    loop {
        match find_ff(bytes, pos) {
            None => return bytes.len(),
            Some(at) => pos = at,
        }
        let mut next = pos + 1;
        while bytes.get(next) == Some(&0xFF) {
            next += 1;
        }
        match bytes.get(next) {
            None => return bytes.len(),
            Some(0x00 | 0xD0..=0xD7) => pos = next + 1,
            Some(_) => return pos,
        }
    }
}

/// The offset of the first 0xFF at or after `from`. Eight bytes at a time:
/// the scan is most of a file and 0xFF is rare in it (a byte at a time cost
/// ~80 µs on a 110 KB file, 3 % of its decode; this ~6 µs).
fn find_ff(bytes: &[u8], from: usize) -> Option<usize> {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut offset = from;
    for chunk in bytes.get(from..)?.chunks_exact(8) {
        let word: [u8; 8] = chunk.try_into().expect("chunks of 8 bytes");
        // 0xFF bytes are the zero bytes of the inverted word.
        let inverted = !u64::from_le_bytes(word);
        if inverted.wrapping_sub(LOW) & !inverted & HIGH != 0 {
            break;
        }
        offset += 8;
    }
    bytes[offset..]
        .iter()
        .position(|&b| b == 0xFF)
        .map(|p| offset + p)
}

fn decode_jpeg(
    bytes: &[u8],
    max_pixels: u64,
    pixels: Vec<u8>,
) -> Result<DecodedImage, DecodeError> {
    let end = end_of_image(bytes)?;
    PREPARED.with_borrow_mut(|prepared| {
        prepared.clear();
        prepared.extend_from_slice(&bytes[..end]);
        prepared.extend_from_slice(&ONES);
        prepared.extend_from_slice(&END_OF_IMAGE);
        let reason = match decode_jpeg_stream(prepared, max_pixels, pixels) {
            Err(DecodeError::CorruptJpeg(reason)) => reason,
            other => return other,
        };
        // Failed: was it the one bits (a short scan) or the file's own bytes?
        // Only failures pay for this second decode, ending the scan as the file does.
        prepared.truncate(end);
        prepared.extend_from_slice(&END_OF_IMAGE);
        match decode_jpeg_stream(prepared, max_pixels, Vec::new()) {
            Ok(_) => Err(DecodeError::ScanEndsEarly),
            Err(_) => Err(DecodeError::CorruptJpeg(reason)),
        }
    })
}

/// Strictly decodes one JPEG stream (headers, scans, end-of-image marker).
fn decode_jpeg_stream(
    bytes: &[u8],
    max_pixels: u64,
    mut pixels: Vec<u8>,
) -> Result<DecodedImage, DecodeError> {
    let corrupt = |e: zune_jpeg::errors::DecodeErrors| DecodeError::CorruptJpeg(e.to_string());
    // One decoder per image: headers first (to refuse a bomb before allocating
    // for it), then the output colour space that the input calls for, then the scan.
    let options = DecoderOptions::default()
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX)
        .set_strict_mode(true)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(corrupt)?;
    let info = decoder
        .info()
        .ok_or_else(|| DecodeError::CorruptJpeg("no frame header".into()))?;
    check_size(u64::from(info.width), u64::from(info.height), max_pixels)?;
    let input = decoder
        .input_colorspace()
        .ok_or_else(|| DecodeError::CorruptJpeg("no colour space".into()))?;
    let channels = match input {
        ColorSpace::Luma => {
            decoder.set_options(options.jpeg_set_out_colorspace(ColorSpace::Luma));
            1
        }
        ColorSpace::YCbCr | ColorSpace::RGB | ColorSpace::CMYK | ColorSpace::YCCK => 3,
        other => return Err(DecodeError::UnsupportedColourSpace(format!("{other:?}"))),
    };
    let size = decoder
        .output_buffer_size()
        .ok_or_else(|| DecodeError::CorruptJpeg("no output size".into()))?;
    // Not cleared: a successful strict decode writes every byte, and a failed one
    // is skipped whole, so a previous image's bytes never reach a shard (zeroing
    // the buffer first cost ~1 % of the ingest).
    pixels.resize(size, 0);
    decoder.decode_into(&mut pixels).map_err(corrupt)?;
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    if pixels.len() != width as usize * height as usize * channels as usize {
        return Err(DecodeError::CorruptJpeg(format!(
            "decoder returned {} bytes for {width}x{height}",
            pixels.len()
        )));
    }
    Ok(DecodedImage {
        width,
        height,
        channels,
        pixels,
    })
}

fn decode_png(bytes: &[u8], max_pixels: u64) -> Result<DecodedImage, DecodeError> {
    use image::ImageDecoder;
    let corrupt = |e: image::ImageError| DecodeError::CorruptPng(e.to_string());
    let decoder =
        image::codecs::png::PngDecoder::new(std::io::Cursor::new(bytes)).map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    check_size(u64::from(width), u64::from(height), max_pixels)?;
    let image = image::DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    // PNGs may carry alpha or 16-bit samples: flatten to 8-bit gray or RGB
    // (alpha dropped, as Pillow's convert("RGB") does).
    Ok(match image.color().channel_count() {
        1 | 2 => DecodedImage {
            width,
            height,
            channels: 1,
            pixels: image.into_luma8().into_raw(),
        },
        _ => DecodedImage {
            width,
            height,
            channels: 3,
            pixels: image.into_rgb8().into_raw(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unknown_and_empty_files() {
        assert_eq!(decode(b"", 1000), Err(DecodeError::Empty));
        assert!(
            matches!(decode(b"GIF89a....", 1000), Err(DecodeError::UnsupportedFormat(s)) if s == "47 49 46 38")
        );
    }

    #[test]
    fn find_ff_finds_the_first_0xff_at_any_alignment() {
        for len in 0..40 {
            for at in 0..=len {
                let mut bytes = vec![0x7Fu8; len];
                if at < len {
                    bytes[at] = 0xFF;
                }
                for from in 0..=len {
                    let expected = (at < len && at >= from).then_some(at);
                    assert_eq!(
                        find_ff(&bytes, from),
                        expected,
                        "len {len} at {at} from {from}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_jpeg_without_its_end_marker_is_truncated() {
        let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE0];
        bytes.extend(std::iter::repeat_n(0x11, 10_000));
        assert_eq!(decode(&bytes, u64::MAX), Err(DecodeError::TruncatedJpeg));
    }
}
