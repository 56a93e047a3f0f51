//! `pipeline preview`: a grid of augmented training samples with the mean added
//! back, so a person can see what the network sees.

use std::path::Path;

use super::Batch;
use crate::augment::MeanSubtraction;

/// Draws up to `columns × rows` images of `batch` into one RGB image, adding the
/// mean back. A batch keeps no crop positions, so the per-pixel mean cannot be
/// put back exactly: stream the preview with `MeanMode::Channel` (crops, mirrors
/// and lighting are drawn identically) and the display is exact.
pub fn grid(batch: &Batch, mean: &MeanSubtraction, columns: usize, rows: usize) -> image::RgbImage {
    let crop = batch.crop;
    let gap = 2;
    let channel_means = match mean {
        MeanSubtraction::PerPixel(image) => image.channel_means(),
        MeanSubtraction::PerChannel(means) => *means,
    };
    let count = (columns * rows).min(batch.len() * batch.views);
    let (width, height) = (columns * (crop + gap) + gap, rows * (crop + gap) + gap);
    let mut out =
        image::RgbImage::from_pixel(width as u32, height as u32, image::Rgb([32, 32, 32]));
    let plane = crop * crop;
    for n in 0..count {
        let (gx, gy) = (
            gap + (n % columns) * (crop + gap),
            gap + (n / columns) * (crop + gap),
        );
        let image = &batch.images[n * 3 * plane..(n + 1) * 3 * plane];
        for y in 0..crop {
            for x in 0..crop {
                let rgb: [u8; 3] = std::array::from_fn(|c| {
                    (image[c * plane + y * crop + x] + channel_means[c])
                        .round()
                        .clamp(0.0, 255.0) as u8
                });
                out.put_pixel((gx + x) as u32, (gy + y) as u32, image::Rgb(rgb));
            }
        }
    }
    out
}

pub fn save(path: &Path, image: &image::RgbImage) -> Result<(), image::ImageError> {
    image.save(path)
}
