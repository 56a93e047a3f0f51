//! Mean subtraction (paper §2: "subtracting the mean activity over the training set from
//! each pixel"). The per-pixel mean is indexed by *source* pixel, so it is cropped and
//! mirrored together with the image.

use super::AugmentError;

/// The training-set mean image, `side × side × 3`, in 0–255 units.
///
/// Stored planar (CHW) rather than as read (HWC): the fused pass then reads each
/// channel's mean row as one contiguous slice, next to the output plane it feeds.
#[derive(Clone, Debug, PartialEq)]
pub struct MeanImage {
    side: usize,
    planes: Vec<f32>,
}

impl MeanImage {
    /// Builds from HWC values as stored in `mean.npy`; errors, naming both sizes, unless
    /// there are exactly `side·side·3` of them.
    pub fn from_hwc(side: usize, hwc: Vec<f32>) -> Result<Self, AugmentError> {
        let expected = crate::dataset::schema::PixelLayout::new(side).bytes();
        if hwc.len() != expected {
            return Err(AugmentError::MeanImageSize {
                side,
                expected,
                actual: hwc.len(),
            });
        }
        let plane = side * side;
        let mut planes = vec![0.0; expected];
        for (i, px) in hwc.chunks_exact(3).enumerate() {
            for (c, &v) in px.iter().enumerate() {
                planes[c * plane + i] = v;
            }
        }
        Ok(Self { side, planes })
    }

    /// Side of the square this mean was computed over.
    pub fn side(&self) -> usize {
        self.side
    }

    /// Mean of channel `c` at source pixel `(x, y)`.
    pub fn at(&self, c: usize, y: usize, x: usize) -> f32 {
        self.planes[(c * self.side + y) * self.side + x]
    }

    /// Average over all pixels, per channel — the `PerChannel` variant's value when only
    /// a mean image is at hand. Accumulated in f64 so 65 536 terms lose no precision.
    pub fn channel_means(&self) -> [f32; 3] {
        let plane = self.side * self.side;
        std::array::from_fn(|c| {
            let sum: f64 = self.planes[c * plane..(c + 1) * plane]
                .iter()
                .map(|&v| v as f64)
                .sum();
            (sum / plane as f64) as f32
        })
    }

    /// `len` consecutive means of channel `c` on source row `y`, starting at column `x`.
    pub(super) fn row(&self, c: usize, y: usize, x: usize, len: usize) -> &[f32] {
        let start = (c * self.side + y) * self.side + x;
        &self.planes[start..start + len]
    }
}

/// What is subtracted from every raw RGB value before the network sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum MeanSubtraction {
    /// The paper's choice: the mean image, at the same source pixel.
    PerPixel(MeanImage),
    /// One value per RGB channel (the common modern simplification).
    PerChannel([f32; 3]),
}

impl MeanSubtraction {
    /// The mean subtracted from channel `c` of source pixel `(x, y)`.
    pub fn at(&self, c: usize, y: usize, x: usize) -> f32 {
        match self {
            Self::PerPixel(image) => image.at(c, y, x),
            Self::PerChannel(means) => means[c],
        }
    }

    /// A per-pixel mean only applies to sources of its own side.
    pub fn check_source_side(&self, source_side: usize) -> Result<(), AugmentError> {
        match self {
            Self::PerPixel(image) if image.side() != source_side => {
                Err(AugmentError::MeanSideMismatch {
                    mean_side: image.side(),
                    source_side,
                })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_length_is_an_error_naming_both_sizes() {
        let err = MeanImage::from_hwc(4, vec![0.0; 47]).unwrap_err();
        assert_eq!(
            err,
            AugmentError::MeanImageSize {
                side: 4,
                expected: 48,
                actual: 47
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains("48") && msg.contains("47") && msg.contains("4×4"),
            "{msg}"
        );
    }

    #[test]
    fn values_are_indexed_by_channel_row_column() {
        // 2×2 image, value = 100·c + 10·y + x.
        let hwc: Vec<f32> = (0..2)
            .flat_map(|y| {
                (0..2).flat_map(move |x| (0..3).map(move |c| (100 * c + 10 * y + x) as f32))
            })
            .collect();
        let m = MeanImage::from_hwc(2, hwc).unwrap();
        assert_eq!(m.at(0, 0, 1), 1.0);
        assert_eq!(m.at(2, 1, 0), 210.0);
        assert_eq!(m.at(1, 1, 1), 111.0);
        assert_eq!(m.row(1, 1, 0, 2), &[110.0, 111.0]);
        assert_eq!(m.channel_means(), [5.5, 105.5, 205.5]);
    }

    #[test]
    fn per_pixel_mean_must_match_the_source_side() {
        let mean = MeanSubtraction::PerPixel(MeanImage::from_hwc(2, vec![0.0; 12]).unwrap());
        assert_eq!(
            mean.check_source_side(3),
            Err(AugmentError::MeanSideMismatch {
                mean_side: 2,
                source_side: 3
            })
        );
        assert_eq!(mean.check_source_side(2), Ok(()));
        assert_eq!(
            MeanSubtraction::PerChannel([1.0, 2.0, 3.0]).check_source_side(9),
            Ok(())
        );
        assert_eq!(
            MeanSubtraction::PerChannel([1.0, 2.0, 3.0]).at(2, 5, 5),
            3.0
        );
    }
}
