//! One sample picture: a 28×28 Fashion-MNIST image grown to an ImageNet-like size,
//! optionally tinted into real colour, then encoded the way its file should look.
//!
//! Every function here is pure; the randomness comes in through the `rng` the caller
//! derived for this one image, so the same image always renders to the same bytes.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeError, ResizeOptions, Resizer};
use image::ImageEncoder;
use jpeg_encoder::{ColorType, Encoder, EncodingError};
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use super::idx::{PIXELS, SIDE};

/// ImageNet photos are roughly as wide as tall; this bounds w/h to [3/4, 4/3].
const MIN_ASPECT: f64 = 3.0 / 4.0;
const MAX_ASPECT: f64 = 4.0 / 3.0;

/// JPEG quality of every sample file: high enough that decoders agree closely on pixels.
pub const JPEG_QUALITY: u8 = 90;

/// Pixels at or below this gray level count as background when boxing the object
/// (Fashion-MNIST backgrounds are 0 with faint noise).
const OBJECT_THRESHOLD: u8 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub width: u32,
    pub height: u32,
}

/// Draws an ImageNet-like size: the shorter side uniform in `[min_short, max_short]`,
/// the aspect ratio w/h uniform in [3/4, 4/3].
pub fn draw_size(rng: &mut ChaCha8Rng, min_short: u32, max_short: u32) -> Size {
    let short = rng.random_range(min_short..=max_short);
    let aspect = rng.random_range(MIN_ASPECT..=MAX_ASPECT);
    // Rounding the long side can never make it shorter than the short one: aspect >= 1
    // scales up, and 1/aspect >= 1 for the portrait case.
    if aspect >= 1.0 {
        Size {
            width: (short as f64 * aspect).round() as u32,
            height: short,
        }
    } else {
        Size {
            width: short,
            height: (short as f64 / aspect).round() as u32,
        }
    }
}

/// Upscales the 28×28 gray image to `size` with Catmull-Rom (sharp, like a photo).
pub fn upscale(pixels: &[u8; PIXELS], size: Size) -> Result<Vec<u8>, ResizeError> {
    let source = ImageRef::new(SIDE as u32, SIDE as u32, pixels, PixelType::U8)
        .expect("a 28x28 buffer holds 28x28 U8 pixels");
    let mut target = Image::new(size.width, size.height, PixelType::U8);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
    Resizer::new().resize(&source, &mut target, &options)?;
    Ok(target.into_vec())
}

/// A two-colour tint map: gray `g` becomes `lerp(dark, light, g / 255)`.
///
/// Fashion-MNIST objects are bright on black, so `dark` paints the background and
/// `light` the object; both are saturated, so the result has genuine chroma.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tint {
    pub dark: [u8; 3],
    pub light: [u8; 3],
}

/// Draws a tint: a saturated dark colour and a saturated light one of a contrasting hue.
pub fn draw_tint(rng: &mut ChaCha8Rng) -> Tint {
    let dark_hue = rng.random_range(0.0..360.0);
    // At least a quarter turn apart, so object and background differ in hue, not just tone.
    let light_hue = (dark_hue + rng.random_range(90.0..270.0)) % 360.0;
    let dark = hsv_to_rgb(
        dark_hue,
        rng.random_range(0.6..=1.0),
        rng.random_range(0.15..=0.45),
    );
    let light = hsv_to_rgb(
        light_hue,
        rng.random_range(0.5..=1.0),
        rng.random_range(0.75..=1.0),
    );
    Tint { dark, light }
}

impl Tint {
    /// Tints a gray buffer into interleaved RGB.
    pub fn apply(&self, gray: &[u8]) -> Vec<u8> {
        let lookup: Vec<[u8; 3]> = (0..=255u32)
            .map(|g| {
                std::array::from_fn(|c| {
                    let (dark, light) = (self.dark[c] as u32, self.light[c] as u32);
                    ((dark * (255 - g) + light * g + 127) / 255) as u8
                })
            })
            .collect();
        gray.iter().flat_map(|&g| lookup[g as usize]).collect()
    }
}

/// HSV (hue in degrees, saturation and value in [0, 1]) to 8-bit RGB.
fn hsv_to_rgb(hue: f64, saturation: f64, value: f64) -> [u8; 3] {
    let chroma = value * saturation;
    let sector = hue / 60.0;
    let x = chroma * (1.0 - (sector % 2.0 - 1.0).abs());
    let (r, g, b) = match sector as u32 {
        0 => (chroma, x, 0.0),
        1 => (x, chroma, 0.0),
        2 => (0.0, chroma, x),
        3 => (0.0, x, chroma),
        4 => (x, 0.0, chroma),
        _ => (chroma, 0.0, x),
    };
    let floor = value - chroma;
    [r, g, b].map(|channel| ((channel + floor) * 255.0).round().clamp(0.0, 255.0) as u8)
}

/// Decoded pixels of one picture, before encoding.
pub enum Pixels {
    /// One byte per pixel.
    Gray(Vec<u8>),
    /// Interleaved RGB, three bytes per pixel.
    Rgb(Vec<u8>),
}

/// Encodes a JPEG: gray pictures as 1-component (Luma) JPEGs, colour ones as YCbCr.
pub fn encode_jpeg(
    pixels: &Pixels,
    size: Size,
    progressive: bool,
) -> Result<Vec<u8>, EncodingError> {
    let mut bytes = Vec::new();
    let mut encoder = Encoder::new(&mut bytes, JPEG_QUALITY);
    encoder.set_progressive(progressive);
    let (data, colour) = match pixels {
        Pixels::Gray(data) => (data, ColorType::Luma),
        Pixels::Rgb(data) => (data, ColorType::Rgb),
    };
    encoder.encode(data, dimension(size.width), dimension(size.height), colour)?;
    Ok(bytes)
}

/// Encodes RGB as a 4-component CMYK JPEG the way Photoshop writes them.
///
/// jpeg-encoder's `CmykAsYcck` takes plain CMYK (0 = no ink), inverts K, runs the CMY
/// through the YCbCr transform and writes an Adobe APP14 marker with transform = 2
/// (YCCK): what Photoshop saves. A decoder honouring the marker recovers
/// R = (255 - C)(255 - K)/255, which `rgb_to_cmyk` makes equal to the original RGB.
pub fn encode_cmyk_jpeg(rgb: &[u8], size: Size) -> Result<Vec<u8>, EncodingError> {
    let cmyk: Vec<u8> = rgb
        .chunks_exact(3)
        .flat_map(|p| rgb_to_cmyk([p[0], p[1], p[2]]))
        .collect();
    let mut bytes = Vec::new();
    let encoder = Encoder::new(&mut bytes, JPEG_QUALITY);
    encoder.encode(
        &cmyk,
        dimension(size.width),
        dimension(size.height),
        ColorType::CmykAsYcck,
    )?;
    Ok(bytes)
}

/// The naive RGB → CMYK split (K = 1 - max(R, G, B)) that round-trips exactly through
/// R = (1 - C)(1 - K).
fn rgb_to_cmyk(rgb: [u8; 3]) -> [u8; 4] {
    let max = *rgb.iter().max().expect("three channels") as u32;
    if max == 0 {
        return [0, 0, 0, 255];
    }
    let [c, m, y] = rgb.map(|channel| (((max - channel as u32) * 255 + max / 2) / max) as u8);
    [c, m, y, (255 - max) as u8]
}

/// Encodes a PNG (8-bit gray or RGB).
pub fn encode_png(pixels: &Pixels, size: Size) -> Result<Vec<u8>, image::ImageError> {
    let mut bytes = Vec::new();
    let (data, colour) = match pixels {
        Pixels::Gray(data) => (data, image::ExtendedColorType::L8),
        Pixels::Rgb(data) => (data, image::ExtendedColorType::Rgb8),
    };
    image::codecs::png::PngEncoder::new(&mut bytes).write_image(
        data,
        size.width,
        size.height,
        colour,
    )?;
    Ok(bytes)
}

/// The object's bounding box `[x_min, y_min, x_max, y_max]` (inclusive, in `size`'s
/// pixels): the box of non-background pixels in the 28×28 source, scaled up.
pub fn object_box(pixels: &[u8; PIXELS], size: Size) -> [u32; 4] {
    let mut bounds: Option<[usize; 4]> = None;
    for (index, _) in pixels
        .iter()
        .enumerate()
        .filter(|(_, p)| **p > OBJECT_THRESHOLD)
    {
        let (x, y) = (index % SIDE, index / SIDE);
        let b = bounds.get_or_insert([x, y, x, y]);
        *b = [b[0].min(x), b[1].min(y), b[2].max(x), b[3].max(y)];
    }
    let [x0, y0, x1, y1] = bounds.unwrap_or([0, 0, SIDE - 1, SIDE - 1]);
    let scale = |v: usize, extent: u32| (v as u64 * extent as u64 / SIDE as u64) as u32;
    let scale_end = |v: usize, extent: u32| {
        (((v as u64 + 1) * extent as u64).div_ceil(SIDE as u64) as u32).saturating_sub(1)
    };
    [
        scale(x0, size.width),
        scale(y0, size.height),
        scale_end(x1, size.width),
        scale_end(y1, size.height),
    ]
}

/// JPEG dimensions are u16; `SampleOptions` validation keeps sizes far below that.
fn dimension(extent: u32) -> u16 {
    u16::try_from(extent).expect("sample sizes are validated to fit a JPEG")
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn rng(stream: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        rng.set_stream(stream);
        rng
    }

    #[test]
    fn sizes_keep_short_side_and_aspect_in_bounds() {
        let mut rng = rng(0);
        let mut shorts = Vec::new();
        for _ in 0..2000 {
            let size = draw_size(&mut rng, 256, 500);
            let short = size.width.min(size.height);
            let long = size.width.max(size.height);
            assert!((256..=500).contains(&short), "{size:?}");
            assert!(long as f64 <= short as f64 * MAX_ASPECT + 0.5, "{size:?}");
            shorts.push(short);
        }
        // Uniform, not stuck at one end.
        assert!(shorts.iter().any(|&s| s < 280) && shorts.iter().any(|&s| s > 476));
    }

    #[test]
    fn upscale_keeps_the_picture() {
        let mut pixels = [0u8; PIXELS];
        // A bright square in the middle of the 28x28 source.
        for y in 10..18 {
            for x in 10..18 {
                pixels[y * SIDE + x] = 250;
            }
        }
        let size = Size {
            width: 280,
            height: 336,
        };
        let big = upscale(&pixels, size).unwrap();
        assert_eq!(big.len(), 280 * 336);
        assert!(big[168 * 280 + 140] > 240, "centre stays bright");
        assert!(big[5 * 280 + 5] < 10, "corner stays dark");
        assert_eq!(object_box(&pixels, size), [100, 120, 179, 215]);
    }

    #[test]
    fn tints_have_real_chroma() {
        let mut rng = rng(1);
        for _ in 0..100 {
            let tint = draw_tint(&mut rng);
            let spread =
                |c: [u8; 3]| *c.iter().max().unwrap() as i32 - *c.iter().min().unwrap() as i32;
            assert!(spread(tint.light) >= 90, "{tint:?}");
            assert!(spread(tint.dark) >= 20, "{tint:?}");
            let rgb = tint.apply(&[0, 255]);
            assert_eq!(&rgb[..3], &tint.dark);
            assert_eq!(&rgb[3..], &tint.light);
        }
    }

    #[test]
    fn cmyk_split_round_trips_to_rgb() {
        for rgb in [
            [0u8, 0, 0],
            [255, 255, 255],
            [200, 30, 90],
            [1, 2, 3],
            [17, 240, 128],
        ] {
            let [c, m, y, k] = rgb_to_cmyk(rgb).map(|v| v as f64);
            let back = [c, m, y].map(|v| ((255.0 - v) * (255.0 - k) / 255.0).round() as i32);
            for (original, recovered) in rgb.iter().zip(back) {
                assert!(
                    (*original as i32 - recovered).abs() <= 1,
                    "{rgb:?} -> {back:?}"
                );
            }
        }
    }

    #[test]
    fn cmyk_jpeg_decodes_back_to_the_rgb_it_encodes() {
        let size = Size {
            width: 64,
            height: 48,
        };
        let rgb: Vec<u8> = (0..64 * 48)
            .flat_map(|i| {
                let (x, y) = ((i % 64) as u8, (i / 64) as u8);
                [x * 3, 200 - y * 2, 40 + x + y]
            })
            .collect();
        let jpeg = encode_cmyk_jpeg(&rgb, size).unwrap();
        let decoded = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg).unwrap();
        let decoded = decoded.to_rgb8();
        assert_eq!(decoded.dimensions(), (64, 48));
        let mean_error = decoded
            .as_raw()
            .iter()
            .zip(&rgb)
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .sum::<i32>() as f64
            / rgb.len() as f64;
        assert!(mean_error < 4.0, "mean abs error {mean_error}");
    }

    #[test]
    fn gray_jpeg_is_one_component_and_png_is_png() {
        let size = Size {
            width: 30,
            height: 20,
        };
        let gray = Pixels::Gray(vec![128; 600]);
        let jpeg = encode_jpeg(&gray, size, true).unwrap();
        let decoded = image::load_from_memory(&jpeg).unwrap();
        assert_eq!(decoded.color(), image::ColorType::L8);
        let png = encode_png(&gray, size).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
}
