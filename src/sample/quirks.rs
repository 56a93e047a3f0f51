//! The real-world file quirks the sample plants in its train split, so ingest is tested
//! against what ImageNet actually contains: one PNG named `.JPEG`, one Adobe CMYK JPEG,
//! one truncated JPEG, and grayscale (1-component) JPEGs.
//!
//! Each planted quirk lives in the FIRST train image (bundled order) of one class, so the
//! quirk files are the same whatever `train_per_class` is. Quirk images keep their label.

/// A deliberate defect in one train file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quirk {
    /// PNG bytes under a `.JPEG` name (ImageNet has one: n02105855_2933.JPEG).
    PngNamedJpeg,
    /// A 4-component CMYK JPEG as Photoshop writes it: Adobe APP14 marker with
    /// transform = 2 (YCCK), K inverted. Always a colourised picture.
    Cmyk,
    /// A baseline JPEG cut to `TRUNCATED_SHARE` of its bytes: no end-of-image marker.
    Truncated,
}

/// Which class's first train image carries each quirk (by Fashion-MNIST label).
pub const QUIRK_PLAN: [(Quirk, u8); 3] = [
    (Quirk::PngNamedJpeg, 0), // T-shirt/top, n03595614
    (Quirk::Cmyk, 4),         // Coat, n04479046
    (Quirk::Truncated, 7),    // Sneaker, n04120489
];

/// How much of the truncated JPEG survives: enough for a decoder to find the headers
/// and some scan data, so it fails (or half-decodes) rather than rejecting the header.
pub const TRUNCATED_SHARE: f64 = 0.6;

/// How the summary describes the grayscale quirk; it points at one example file.
pub const GRAYSCALE_WHAT: &str =
    "grayscale JPEG, 1 component (one example: every uncoloured image is one)";

impl Quirk {
    /// What the summary says about the file.
    pub fn what(self) -> &'static str {
        match self {
            Quirk::PngNamedJpeg => "PNG data under a .JPEG name",
            Quirk::Cmyk => "CMYK JPEG, Adobe APP14 transform=2 (YCCK), 4 components",
            Quirk::Truncated => "truncated JPEG (first 60% of its bytes, no EOI marker)",
        }
    }

    /// The quirk planted in the train image with this label, if this is the class's first.
    pub fn planted_in(label: u8, first_of_class: bool) -> Option<Quirk> {
        if !first_of_class {
            return None;
        }
        QUIRK_PLAN
            .iter()
            .find(|(_, planted)| *planted == label)
            .map(|(quirk, _)| *quirk)
    }
}

/// Cuts a JPEG to its first `TRUNCATED_SHARE` of bytes.
pub fn truncate(mut jpeg: Vec<u8>) -> Vec<u8> {
    let keep = (jpeg.len() as f64 * TRUNCATED_SHARE) as usize;
    jpeg.truncate(keep);
    jpeg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_quirk_is_planted_once_in_a_distinct_class() {
        let mut labels: Vec<u8> = QUIRK_PLAN.iter().map(|(_, label)| *label).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), QUIRK_PLAN.len());
        assert_eq!(Quirk::planted_in(4, true), Some(Quirk::Cmyk));
        assert_eq!(Quirk::planted_in(4, false), None);
        assert_eq!(Quirk::planted_in(1, true), None);
    }

    #[test]
    fn truncation_keeps_sixty_percent() {
        let cut = truncate((0..100u8).collect());
        assert_eq!(cut.len(), 60);
        assert_eq!(cut[59], 59);
    }
}
