//! The bundled Fashion-MNIST subset: embedded gzip'd IDX files and their parser.
//!
//! `data/make_subset.py` cut these files; `data/LICENSE` carries Fashion-MNIST's licence.
//! IDX is big-endian: a magic number (0x0000_0803 for u8 images with three dimensions,
//! 0x0000_0801 for u8 labels with one), then one u32 per dimension, then the bytes.

use std::io::Read;

use flate2::read::GzDecoder;

use super::SampleError;

/// Fashion-MNIST images are 28 pixels on a side.
pub const SIDE: usize = 28;
/// Pixels in one image.
pub const PIXELS: usize = SIDE * SIDE;

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;
const NUM_LABELS: u8 = 10;

/// One embedded gzip'd IDX file and the name errors call it by.
struct Bundled {
    name: &'static str,
    gz: &'static [u8],
}

const TRAIN_IMAGES: Bundled = Bundled {
    name: "data/train-images.gz",
    gz: include_bytes!("data/train-images.gz"),
};
const TRAIN_LABELS: Bundled = Bundled {
    name: "data/train-labels.gz",
    gz: include_bytes!("data/train-labels.gz"),
};
const VAL_IMAGES: Bundled = Bundled {
    name: "data/val-images.gz",
    gz: include_bytes!("data/val-images.gz"),
};
const VAL_LABELS: Bundled = Bundled {
    name: "data/val-labels.gz",
    gz: include_bytes!("data/val-labels.gz"),
};

/// A decoded split: `images[i]` has label `labels[i]`, in the bundled file's order.
pub struct FashionSplit {
    pub images: Vec<[u8; PIXELS]>,
    pub labels: Vec<u8>,
}

/// The bundled train split (600 images per class, in Fashion-MNIST file order).
pub fn bundled_train() -> Result<FashionSplit, SampleError> {
    load_split(&TRAIN_IMAGES, &TRAIN_LABELS)
}

/// The bundled val split (100 images per class, from Fashion-MNIST's test file).
pub fn bundled_val() -> Result<FashionSplit, SampleError> {
    load_split(&VAL_IMAGES, &VAL_LABELS)
}

fn load_split(images: &Bundled, labels: &Bundled) -> Result<FashionSplit, SampleError> {
    let split = FashionSplit {
        images: parse_images(images.name, &gunzip(images)?)?,
        labels: parse_labels(labels.name, &gunzip(labels)?)?,
    };
    if split.images.len() != split.labels.len() {
        return Err(corrupt(
            labels.name,
            format!(
                "{} labels for {} images in {}",
                split.labels.len(),
                split.images.len(),
                images.name
            ),
        ));
    }
    Ok(split)
}

fn gunzip(file: &Bundled) -> Result<Vec<u8>, SampleError> {
    let mut bytes = Vec::new();
    GzDecoder::new(file.gz)
        .read_to_end(&mut bytes)
        .map_err(|error| corrupt(file.name, format!("gzip: {error}")))?;
    Ok(bytes)
}

/// Parses an IDX u8 image file of 28×28 images.
pub fn parse_images(name: &'static str, bytes: &[u8]) -> Result<Vec<[u8; PIXELS]>, SampleError> {
    let magic = read_u32(name, bytes, 0)?;
    if magic != IMAGES_MAGIC {
        return Err(corrupt(
            name,
            format!("magic {magic:#010x}, expected {IMAGES_MAGIC:#010x}"),
        ));
    }
    let count = read_u32(name, bytes, 4)? as usize;
    let (rows, cols) = (
        read_u32(name, bytes, 8)? as usize,
        read_u32(name, bytes, 12)? as usize,
    );
    if (rows, cols) != (SIDE, SIDE) {
        return Err(corrupt(
            name,
            format!("images are {rows}x{cols}, expected {SIDE}x{SIDE}"),
        ));
    }
    let pixels = &bytes[16..];
    if pixels.len() != count * PIXELS {
        return Err(corrupt(
            name,
            format!(
                "header promises {count} images but {} pixel bytes follow",
                pixels.len()
            ),
        ));
    }
    Ok(pixels
        .chunks_exact(PIXELS)
        .map(|chunk| chunk.try_into().expect("chunks_exact yields PIXELS bytes"))
        .collect())
}

/// Parses an IDX u8 label file whose labels are Fashion-MNIST classes (0..=9).
pub fn parse_labels(name: &'static str, bytes: &[u8]) -> Result<Vec<u8>, SampleError> {
    let magic = read_u32(name, bytes, 0)?;
    if magic != LABELS_MAGIC {
        return Err(corrupt(
            name,
            format!("magic {magic:#010x}, expected {LABELS_MAGIC:#010x}"),
        ));
    }
    let count = read_u32(name, bytes, 4)? as usize;
    let labels = &bytes[8..];
    if labels.len() != count {
        return Err(corrupt(
            name,
            format!(
                "header promises {count} labels but {} bytes follow",
                labels.len()
            ),
        ));
    }
    if let Some(position) = labels.iter().position(|&label| label >= NUM_LABELS) {
        return Err(corrupt(
            name,
            format!(
                "label {} at index {position} is not 0..=9",
                labels[position]
            ),
        ));
    }
    Ok(labels.to_vec())
}

fn read_u32(name: &'static str, bytes: &[u8], offset: usize) -> Result<u32, SampleError> {
    bytes
        .get(offset..offset + 4)
        .map(|word| u32::from_be_bytes(word.try_into().expect("slice of 4")))
        .ok_or_else(|| corrupt(name, format!("header cut short at byte {offset}")))
}

fn corrupt(file: &'static str, reason: String) -> SampleError {
    SampleError::BundledData { file, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts_per_class(labels: &[u8]) -> [usize; 10] {
        let mut counts = [0; 10];
        labels.iter().for_each(|&label| counts[label as usize] += 1);
        counts
    }

    #[test]
    fn bundled_splits_hold_600_and_100_images_per_class() {
        let train = bundled_train().unwrap();
        assert_eq!(train.images.len(), 6000);
        assert_eq!(counts_per_class(&train.labels), [600; 10]);
        let val = bundled_val().unwrap();
        assert_eq!(val.images.len(), 1000);
        assert_eq!(counts_per_class(&val.labels), [100; 10]);
    }

    #[test]
    fn bundled_images_are_real_fashion_mnist() {
        // Fashion-MNIST's first training image is an ankle boot (label 9) and its first
        // test image is one too; both have black corners and a bright object.
        let train = bundled_train().unwrap();
        assert_eq!(train.labels[0], 9);
        let val = bundled_val().unwrap();
        assert_eq!(val.labels[0], 9);
        let first = &train.images[0];
        assert_eq!(first[0], 0);
        assert!(first.iter().any(|&pixel| pixel > 200));
    }

    #[test]
    fn bad_headers_are_named_errors() {
        let error = parse_images("x.gz", &[0, 0, 8, 1, 0, 0, 0, 0]).unwrap_err();
        assert!(error.to_string().contains("x.gz"), "{error}");
        assert!(error.to_string().contains("magic"), "{error}");

        let mut short = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28];
        short.extend([0u8; PIXELS]);
        let error = parse_images("y.gz", &short).unwrap_err();
        assert!(error.to_string().contains("promises 2 images"), "{error}");

        let error = parse_labels("z.gz", &[0, 0, 8, 1, 0, 0, 0, 1, 10]).unwrap_err();
        assert!(error.to_string().contains("label 10"), "{error}");

        let error = parse_labels("w.gz", &[0, 0, 8]).unwrap_err();
        assert!(error.to_string().contains("cut short"), "{error}");
    }
}
