//! Geometry of the paper's preprocessing: shorter side → S with an antialiased
//! convolution resize, then the central S×S patch.
//!
//! Only the pixels of the central patch are computed: the resize samples a
//! source crop box that maps exactly onto the S×S window of the full resize,
//! so the result equals resize-then-crop at a fraction of the work.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use serde::{Deserialize, Serialize};

use super::decode::DecodedImage;
use crate::dataset::schema::PixelLayout;

/// The resampling filter (Pillow's names). Bilinear matches Pillow's
/// `resize(BILINEAR)`, the usual ImageNet preprocessing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ResizeFilter {
    Box,
    #[default]
    Bilinear,
    Hamming,
    Bicubic,
    Lanczos,
}

impl ResizeFilter {
    fn algorithm(self) -> ResizeAlg {
        ResizeAlg::Convolution(match self {
            ResizeFilter::Box => FilterType::Box,
            ResizeFilter::Bilinear => FilterType::Bilinear,
            ResizeFilter::Hamming => FilterType::Hamming,
            ResizeFilter::Bicubic => FilterType::CatmullRom,
            ResizeFilter::Lanczos => FilterType::Lanczos3,
        })
    }
}

/// Where the centre crop sits in the resized image, in resized pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropPlan {
    /// The full resize target (shorter side = S).
    pub resized_width: u32,
    pub resized_height: u32,
    /// Top-left corner of the S×S crop inside the resized image.
    pub left: u32,
    pub top: u32,
}

/// Shorter side → `size` (the longer side scaled and truncated, as torchvision's
/// `Resize(int)` does), crop offset = floor of half the excess.
pub fn plan(width: u32, height: u32, size: u32) -> CropPlan {
    let (w, h, s) = (u64::from(width), u64::from(height), u64::from(size));
    let (resized_width, resized_height) = if w <= h {
        (s, (h * s / w).max(s))
    } else {
        ((w * s / h).max(s), s)
    };
    CropPlan {
        resized_width: resized_width as u32,
        resized_height: resized_height as u32,
        left: ((resized_width - s) / 2) as u32,
        top: ((resized_height - s) / 2) as u32,
    }
}

/// Reusable resize state (scratch buffers live in the `Resizer`), one per worker thread.
pub struct CentreCropper {
    size: u32,
    options: ResizeOptions,
    resizer: Resizer,
    /// The resized gray plane of a grayscale source, reused.
    gray: Vec<u8>,
}

impl CentreCropper {
    pub fn new(size: usize, filter: ResizeFilter) -> Self {
        Self {
            size: size as u32,
            options: ResizeOptions::new().resize_alg(filter.algorithm()),
            resizer: Resizer::new(),
            gray: Vec::new(),
        }
    }

    /// The S×S×3 RGB centre crop of `image`, row-major HWC.
    /// An image file outside a dataset, as ingest would store it: decoded (refusing more
    /// than `max_pixels`), then cropped. Errors are the reason, without the path.
    pub fn crop_file(
        &mut self,
        path: &std::path::Path,
        max_pixels: u64,
    ) -> Result<Vec<u8>, String> {
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        let image = super::decode::decode(&bytes, max_pixels).map_err(|e| e.to_string())?;
        Ok(self.crop(&image))
    }

    pub fn crop(&mut self, image: &DecodedImage) -> Vec<u8> {
        let mut out = vec![0; PixelLayout::new(self.size as usize).bytes()];
        self.crop_into(image, &mut out);
        out
    }

    /// Writes the S×S×3 RGB centre crop of `image` into `out` (S·S·3 bytes),
    /// straight into the caller's buffer (a slot of a shard's row group).
    pub fn crop_into(&mut self, image: &DecodedImage, out: &mut [u8]) {
        let s = self.size;
        assert_eq!(
            out.len(),
            PixelLayout::new(s as usize).bytes(),
            "output must hold S·S·3 bytes"
        );
        let plan = plan(image.width, image.height, s);
        // Source pixels per resized pixel, per axis (exactly Pillow's scale).
        let sx = f64::from(image.width) / f64::from(plan.resized_width);
        let sy = f64::from(image.height) / f64::from(plan.resized_height);
        // Rounding can push left + width a hair past the source edge (e.g.
        // 333·(100/333)·…); clamp to the image so the box is always valid.
        let (width, height) = (f64::from(image.width), f64::from(image.height));
        let (left, top) = (
            (f64::from(plan.left) * sx).min(width),
            (f64::from(plan.top) * sy).min(height),
        );
        let options = self.options.crop(
            left,
            top,
            (f64::from(s) * sx).min(width - left),
            (f64::from(s) * sy).min(height - top),
        );
        let pixel_type = if image.channels == 1 {
            PixelType::U8
        } else {
            PixelType::U8x3
        };
        let src = ImageRef::new(image.width, image.height, &image.pixels, pixel_type)
            .expect("decoded buffer matches its dimensions");
        if image.channels == 1 {
            // Resize the one gray plane (a third of the work), then spread it to RGB.
            let gray = &mut self.gray;
            gray.resize((s * s) as usize, 0);
            let mut dst = Image::from_slice_u8(s, s, gray, PixelType::U8).expect("sized above");
            self.resizer
                .resize(&src, &mut dst, &options)
                .expect("same pixel type, non-empty crop");
            gray_to_rgb(gray, out);
        } else {
            let mut dst = Image::from_slice_u8(s, s, out, PixelType::U8x3).expect("sized above");
            self.resizer
                .resize(&src, &mut dst, &options)
                .expect("same pixel type, non-empty crop");
        }
    }
}

/// Spreads each gray byte to three RGB bytes (one pixel at a time this was
/// scalar byte stores, ~2 % of the ingest; with SSSE3 it is three shuffles per
/// sixteen pixels).
fn gray_to_rgb(gray: &[u8], rgb: &mut [u8]) {
    assert_eq!(rgb.len(), gray.len() * 3, "three RGB bytes per gray byte");
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("ssse3") {
        // SAFETY: the CPU supports SSSE3, checked just above.
        done = unsafe { gray_to_rgb_ssse3(gray, rgb) };
    }
    for (&g, o) in gray[done..]
        .iter()
        .zip(rgb[3 * done..].as_chunks_mut::<3>().0)
    {
        *o = [g, g, g];
    }
}

/// The whole 16-pixel blocks of [`gray_to_rgb`]; returns the pixels done.
///
/// # Safety
/// The CPU must support SSSE3.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "ssse3")]
unsafe fn gray_to_rgb_ssse3(gray: &[u8], rgb: &mut [u8]) -> usize {
    use std::arch::x86_64::{
        __m128i, _mm_loadu_si128, _mm_setr_epi8, _mm_shuffle_epi8, _mm_storeu_si128,
    };
    let masks = [
        _mm_setr_epi8(0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5),
        _mm_setr_epi8(5, 5, 6, 6, 6, 7, 7, 7, 8, 8, 8, 9, 9, 9, 10, 10),
        _mm_setr_epi8(
            10, 11, 11, 11, 12, 12, 12, 13, 13, 13, 14, 14, 14, 15, 15, 15,
        ),
    ];
    let (blocks, _) = gray.as_chunks::<16>();
    let (out_blocks, _) = rgb.as_chunks_mut::<48>();
    for (g, o) in blocks.iter().zip(out_blocks.iter_mut()) {
        // SAFETY: `g` is 16 readable bytes and `o` 48 writable ones (unaligned
        // loads and stores).
        unsafe {
            let g = _mm_loadu_si128(g.as_ptr().cast::<__m128i>());
            for (k, mask) in masks.iter().enumerate() {
                _mm_storeu_si128(
                    o.as_mut_ptr().add(16 * k).cast::<__m128i>(),
                    _mm_shuffle_epi8(g, *mask),
                );
            }
        }
    }
    blocks.len().min(out_blocks.len()) * 16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_scales_the_shorter_side_and_centres_the_crop() {
        assert_eq!(
            plan(500, 375, 256),
            CropPlan {
                resized_width: 341,
                resized_height: 256,
                left: 42,
                top: 0
            }
        );
        assert_eq!(
            plan(300, 400, 256),
            CropPlan {
                resized_width: 256,
                resized_height: 341,
                left: 0,
                top: 42
            }
        );
        assert_eq!(
            plan(256, 256, 256),
            CropPlan {
                resized_width: 256,
                resized_height: 256,
                left: 0,
                top: 0
            }
        );
        // Upscaling a small image works the same way.
        assert_eq!(
            plan(28, 56, 64),
            CropPlan {
                resized_width: 64,
                resized_height: 128,
                left: 0,
                top: 32
            }
        );
    }

    #[test]
    fn a_flat_image_stays_flat_and_gray_expands_to_rgb() {
        let image = DecodedImage {
            width: 40,
            height: 30,
            channels: 1,
            pixels: vec![77; 1200],
        };
        let out = CentreCropper::new(16, ResizeFilter::Bilinear).crop(&image);
        assert_eq!(out.len(), 16 * 16 * 3);
        assert!(out.iter().all(|&v| v == 77));
    }

    #[test]
    fn gray_spreads_to_rgb_in_blocks_and_tail() {
        let gray: Vec<u8> = (0..37).collect();
        let mut rgb = vec![0; 37 * 3];
        gray_to_rgb(&gray, &mut rgb);
        let expected: Vec<u8> = gray.iter().flat_map(|&g| [g, g, g]).collect();
        assert_eq!(rgb, expected);
    }

    #[test]
    fn every_size_and_aspect_gives_a_valid_crop_box() {
        // Sizes where floating-point rounding once overshot the source edge.
        for size in [64, 72, 96, 100, 104, 108, 110, 112, 224, 256] {
            let mut cropper = CentreCropper::new(size, ResizeFilter::Bilinear);
            for (w, h) in [
                (333, 256),
                (256, 333),
                (500, 375),
                (375, 500),
                (301, 257),
                (257, 301),
                (499, 499),
            ] {
                let image = DecodedImage {
                    width: w,
                    height: h,
                    channels: 1,
                    pixels: vec![9; (w * h) as usize],
                };
                assert_eq!(
                    cropper.crop(&image).len(),
                    size * size * 3,
                    "{w}x{h} → {size}"
                );
            }
        }
    }

    #[test]
    fn crop_box_resize_equals_resize_then_crop() {
        // A horizontal ramp: after the centre crop the left edge must show the
        // source column that the full resize put at `left`.
        let (w, h) = (400u32, 200u32);
        let pixels: Vec<u8> = (0..h)
            .flat_map(|_| (0..w).flat_map(|x| [(x * 255 / (w - 1)) as u8; 3]))
            .collect();
        let image = DecodedImage {
            width: w,
            height: h,
            channels: 3,
            pixels: pixels.clone(),
        };
        let s = 100;
        let cropped = CentreCropper::new(s, ResizeFilter::Bilinear).crop(&image);
        let mut full = Image::new(200, 100, PixelType::U8x3);
        let src = ImageRef::new(w, h, &pixels, PixelType::U8x3).unwrap();
        Resizer::new()
            .resize(
                &src,
                &mut full,
                &ResizeOptions::new().resize_alg(ResizeFilter::Bilinear.algorithm()),
            )
            .unwrap();
        let full = full.into_vec();
        for y in 0..s {
            for x in 0..s {
                let a = cropped[(y * s + x) * 3] as i32;
                let b = full[(y * 200 + x + 50) * 3] as i32;
                assert!((a - b).abs() <= 1, "pixel ({x},{y}): {a} vs {b}");
            }
        }
    }
}
