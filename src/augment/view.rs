//! Where a crop sits in its source image. A `View` is all the randomness of the
//! geometric augmentation, so recording it is enough to reproduce an image exactly.

use super::AugmentError;

/// A `crop × crop` window of the source square: top-left corner `(x, y)` in source pixels,
/// and whether the window is mirrored horizontally (left-right) after cropping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub x: usize,
    pub y: usize,
    pub flip: bool,
}

/// Side of the stored square images (`source`, 256 in the paper) and of the network
/// input cut from them (`crop`, 224 in the paper).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub source: usize,
    pub crop: usize,
}

impl Geometry {
    /// Errors if the crop is empty or does not fit inside the source.
    pub fn new(source: usize, crop: usize) -> Result<Self, AugmentError> {
        if crop == 0 {
            return Err(AugmentError::EmptyCrop);
        }
        if crop > source {
            return Err(AugmentError::CropLargerThanSource {
                crop,
                source_side: source,
            });
        }
        Ok(Self { source, crop })
    }

    /// Largest valid crop origin along either axis (`source − crop`).
    pub fn max_offset(self) -> usize {
        self.source - self.crop
    }

    /// Bytes in one stored HWC RGB image.
    pub fn source_len(self) -> usize {
        crate::dataset::schema::PixelLayout::new(self.source).bytes()
    }

    /// Floats in one CHW output image (one slot of an NCHW batch).
    pub fn output_len(self) -> usize {
        3 * self.crop * self.crop
    }

    /// Whether the whole window of `view` lies inside the source.
    pub fn contains(self, view: View) -> bool {
        view.x + self.crop <= self.source && view.y + self.crop <= self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_rejects_crop_larger_than_source() {
        assert_eq!(
            Geometry::new(224, 256),
            Err(AugmentError::CropLargerThanSource {
                crop: 256,
                source_side: 224
            })
        );
        assert_eq!(Geometry::new(256, 0), Err(AugmentError::EmptyCrop));
        let g = Geometry::new(256, 224).unwrap();
        assert_eq!(
            (g.max_offset(), g.source_len(), g.output_len()),
            (32, 196_608, 150_528)
        );
        assert!(Geometry::new(5, 5).is_ok());
    }

    #[test]
    fn contains_checks_both_axes() {
        let g = Geometry::new(256, 224).unwrap();
        assert!(g.contains(View {
            x: 32,
            y: 32,
            flip: true
        }));
        assert!(!g.contains(View {
            x: 33,
            y: 0,
            flip: false
        }));
        assert!(!g.contains(View {
            x: 0,
            y: 33,
            flip: false
        }));
    }
}
