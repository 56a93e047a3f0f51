//! Ingest's pixels agree with what a PyTorch user gets from Pillow.
//!
//! `tests/fixtures/pillow/src/` holds a few real source files rendered by
//! `pipeline sample` (colour landscape and portrait, progressive, grayscale,
//! CMYK, a PNG named .JPEG, a large 1737×2265 source, a 4:2:0 re-encode, and a
//! synthetic zone plate — the sample's smooth upscales would pass even with a
//! one-pixel crop shift, the zone plate would not: MAD ≈ 32 for a shift, 4–15
//! for a wrong filter or a resize without antialiasing);
//! `tests/fixtures/pillow/golden/` holds Pillow's `resize(BILINEAR)` + centre
//! crop of each at S = 256, made by `benches/make_pillow_goldens.py`.
//! The bound: mean absolute difference ≤ 2 (of 255) per image.

use std::path::{Path, PathBuf};

use pipeline::ingest::ResizeFilter;
use pipeline::ingest::decode::{self, DecodeError};
use pipeline::ingest::resize::CentreCropper;

const SIZE: usize = 256;
/// Issue 2: mean absolute difference to Pillow ≤ 2 of 255, per image.
const MAX_MEAN_ABS_DIFF: f64 = 2.0;
/// Pillow's default `Image.MAX_IMAGE_PIXELS`, the ingest default.
const DEFAULT_MAX_PIXELS: u64 = 89_478_485;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pillow")
}

/// Every source file with its golden, sorted by name.
fn sources_and_goldens() -> Vec<(PathBuf, PathBuf)> {
    let mut sources: Vec<PathBuf> = std::fs::read_dir(fixtures().join("src"))
        .expect("tests/fixtures/pillow/src exists")
        .map(|entry| entry.expect("readable fixture dir").path())
        .collect();
    sources.sort();
    sources
        .into_iter()
        .map(|src| {
            let stem = src
                .file_stem()
                .expect("fixture has a name")
                .to_str()
                .expect("utf-8 name")
                .to_owned();
            (src, fixtures().join("golden").join(format!("{stem}.png")))
        })
        .collect()
}

/// Mean and max absolute difference between two equally long u8 buffers.
fn differences(ours: &[u8], pillow: &[u8]) -> (f64, u8) {
    assert_eq!(ours.len(), pillow.len());
    let (mut sum, mut max) = (0u64, 0u8);
    for (&a, &b) in ours.iter().zip(pillow) {
        let d = a.abs_diff(b);
        sum += u64::from(d);
        max = max.max(d);
    }
    (sum as f64 / ours.len() as f64, max)
}

#[test]
fn centre_crops_agree_with_pillow_goldens() {
    let cases = sources_and_goldens();
    assert!(
        cases.len() >= 6,
        "expected the Pillow fixtures, found {cases:?}"
    );
    let mut cropper = CentreCropper::new(SIZE, ResizeFilter::Bilinear);
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for (src, golden) in &cases {
        let bytes = std::fs::read(src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        let decoded = decode::decode(&bytes, DEFAULT_MAX_PIXELS)
            .unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        let ours = cropper.crop(&decoded);
        let pillow = image::open(golden)
            .unwrap_or_else(|e| panic!("{}: {e}", golden.display()))
            .into_rgb8();
        assert_eq!(
            pillow.dimensions(),
            (SIZE as u32, SIZE as u32),
            "{}",
            golden.display()
        );
        let (mad, max) = differences(&ours, pillow.as_raw());
        let name = src.file_name().unwrap().to_string_lossy().into_owned();
        let line = format!(
            "{name} ({}x{}, {} ch): mean abs diff {mad:.3}, max abs diff {max}",
            decoded.width, decoded.height, decoded.channels
        );
        if mad > MAX_MEAN_ABS_DIFF {
            failures.push(line.clone());
        }
        report.push(line);
    }
    // Visible with `cargo test -- --nocapture`: the agreement per image.
    println!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "mean abs diff to Pillow over {MAX_MEAN_ABS_DIFF} for:\n{}\nall images:\n{}",
        failures.join("\n"),
        report.join("\n")
    );
}

#[test]
fn grayscale_sources_come_out_with_equal_channels() {
    // Pillow's convert("RGB") of an L image repeats the gray value; so must we.
    let mut cropper = CentreCropper::new(SIZE, ResizeFilter::Bilinear);
    for name in ["gray.JPEG", "gray_progressive.JPEG", "png_named.JPEG"] {
        let bytes = std::fs::read(fixtures().join("src").join(name)).unwrap();
        let decoded = decode::decode(&bytes, DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(decoded.channels, 1, "{name} decodes to one channel");
        let crop = cropper.crop(&decoded);
        assert_eq!(crop.len(), SIZE * SIZE * 3);
        assert!(
            crop.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]),
            "{name}: channels differ"
        );
        // Not a blank image: the test must be able to fail.
        assert!(crop.iter().any(|&v| v != crop[0]), "{name}: crop is flat");
    }
}

#[test]
fn the_truncated_sample_jpeg_is_rejected() {
    // The sample's planted truncated file: the first 60% of a JPEG's bytes.
    let bytes = std::fs::read(fixtures().join("truncated.JPEG")).unwrap();
    let err =
        decode::decode(&bytes, DEFAULT_MAX_PIXELS).expect_err("a truncated JPEG must not decode");
    assert_eq!(err, DecodeError::TruncatedJpeg);
    assert!(err.to_string().contains("truncated"), "reason: {err}");
}

#[test]
fn sources_over_the_pixel_limit_are_refused_with_their_size() {
    // The large fixture is 1737×2265 = 3_934_305 pixels (JPEG); the PNG is 389×341.
    for (name, width, height) in [
        ("large_colour.JPEG", 1737u64, 2265u64),
        ("png_named.JPEG", 389, 341),
    ] {
        let bytes = std::fs::read(fixtures().join("src").join(name)).unwrap();
        let pixels = width * height;
        let limit = pixels - 1;
        let err = decode::decode(&bytes, limit).expect_err("over the limit must be refused");
        assert_eq!(
            err,
            DecodeError::TooLarge {
                width,
                height,
                limit
            },
            "{name}"
        );
        let reason = err.to_string();
        assert!(
            reason.contains(&format!("{width}x{height}")),
            "{name}: reason names the size: {reason}"
        );
        assert!(
            reason.contains(&limit.to_string()),
            "{name}: reason names the limit: {reason}"
        );
        // Exactly at the limit is fine.
        let ok = decode::decode(&bytes, pixels)
            .unwrap_or_else(|e| panic!("{name} at its own size: {e}"));
        assert_eq!((u64::from(ok.width), u64::from(ok.height)), (width, height));
    }
}
