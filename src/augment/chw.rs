//! The fused per-image pass: crop, mirror, subtract the mean, add the lighting shift and
//! convert HWC u8 to CHW f32 — one read of the source window, one write of the output,
//! no allocation. Run on every training image, so it is the stage's hot loop.
//!
//! The pass can also show every source byte, in order, to a visitor (the stream's pixel
//! checksum): the cropped rows are visited right after they are converted, so the check
//! and the crop share one read of the image from memory instead of two.

use super::flip::mirror_row;
use super::{Geometry, MeanSubtraction, View};
use crate::dataset::schema::PixelLayout;

/// Writes one image's slot of an NCHW batch:
///
/// `out[c·C·C + y·C + x] = (src[((view.y+y)·S + sx)·3 + c] − mean(c, view.y+y, sx)) + offset[c]`
///
/// where `sx = view.x + x`, or `view.x + C−1−x` when `view.flip` (see
/// `flip::source_column`). The mean is taken at the same *source* pixel, so it is cropped
/// and mirrored with the image. Values stay in 0–255 units. The order of operations
/// (subtract the mean, then add the offset) is part of the contract: it makes results
/// bit-for-bit reproducible.
///
/// `src` is one `S×S×3` HWC RGB image; `out` holds `3·C·C` floats.
///
/// Panics if a buffer has the wrong length, the view does not fit, or a per-pixel mean
/// has a different side from the source: these are programming errors, and the
/// stream stage sizes every buffer from the same `Geometry`.
pub fn write_chw(
    src: &[u8],
    g: Geometry,
    view: View,
    mean: &MeanSubtraction,
    offset: [f32; 3],
    out: &mut [f32],
) {
    write_chw_visiting(src, g, view, mean, offset, out, None::<fn(&[u8])>);
}

/// `write_chw`, also calling `visit` (when given) on consecutive pieces of `src` that
/// together are all of it, in order: the rows above the crop, the cropped rows a few at a
/// time (each piece right after it is converted, while it is in L1), then the rows below.
pub fn write_chw_visiting(
    src: &[u8],
    g: Geometry,
    view: View,
    mean: &MeanSubtraction,
    offset: [f32; 3],
    out: &mut [f32],
    mut visit: Option<impl FnMut(&[u8])>,
) {
    let (s, c) = (g.source, g.crop);
    assert_eq!(
        src.len(),
        g.source_len(),
        "source image must be {s}×{s}×3 bytes"
    );
    assert_eq!(
        out.len(),
        g.output_len(),
        "output slot must be 3×{c}×{c} floats"
    );
    assert!(
        g.contains(view),
        "{view:?} does not fit a {c}×{c} crop in a {s}×{s} source"
    );
    if let MeanSubtraction::PerPixel(image) = mean {
        assert_eq!(
            image.side(),
            s,
            "mean image side must equal the source side"
        );
    }

    let layout = PixelLayout::new(s);
    let row_bytes = layout.row_bytes();
    if let Some(visit) = visit.as_mut() {
        visit(&src[..view.y * row_bytes]);
    }
    let (red, rest) = out.split_at_mut(c * c);
    let (green, blue) = rest.split_at_mut(c * c);
    let rows = red
        .chunks_exact_mut(c)
        .zip(green.chunks_exact_mut(c))
        .zip(blue.chunks_exact_mut(c));
    for (y, ((r, gr), b)) in rows.enumerate() {
        let sy = view.y + y;
        let start = layout.offset(view.x, sy);
        let pixels = src[start..start + 3 * c].as_chunks::<3>().0;
        // Each output row is computed in source order — contiguous reads and writes that
        // the compiler vectorises — then reversed in place for mirrored views, while it
        // is still in L1. Storing right to left directly measured ~25 % slower when the
        // output is a large batch buffer (the usual case).
        match mean {
            MeanSubtraction::PerPixel(image) => {
                let means = [0, 1, 2].map(|ch| image.row(ch, sy, view.x, c));
                row_minus_pixel_mean(pixels, means, offset, [&mut *r, &mut *gr, &mut *b]);
            }
            MeanSubtraction::PerChannel(means) => {
                row_minus_channel_mean(pixels, *means, offset, [&mut *r, &mut *gr, &mut *b]);
            }
        }
        if view.flip {
            mirror_row(r);
            mirror_row(gr);
            mirror_row(b);
        }
        if let Some(visit) = visit.as_mut()
            && ((y + 1) % VISIT_ROWS == 0 || y + 1 == c)
        {
            let first = view.y + y / VISIT_ROWS * VISIT_ROWS;
            visit(&src[first * row_bytes..(sy + 1) * row_bytes]);
        }
    }
    if let Some(visit) = visit.as_mut() {
        visit(&src[(view.y + c) * row_bytes..]);
    }
}

/// Cropped rows handed to the visitor at once, right after the conversion has read them
/// (so the visitor finds them in L1). A CRC call on one 768-byte row runs at half the
/// speed of one on 3 KB (crc32fast, in cache: 23 against 50 GB/s); prefetching rows ahead
/// of the visitor instead measured slower (`benches/pixel_check.rs`).
const VISIT_ROWS: usize = 4;

/// De-interleaves one row of RGB pixels into three plane rows, subtracting the mean of
/// the same source pixel. Zipped iterators over equal-length slices: no bounds checks in
/// the loop.
#[inline(always)]
fn row_minus_pixel_mean(
    pixels: &[[u8; 3]],
    [mr, mg, mb]: [&[f32]; 3],
    offset: [f32; 3],
    [r, g, b]: [&mut [f32]; 3],
) {
    let planes = r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut());
    let means = mr.iter().zip(mg).zip(mb);
    for ((px, ((r, g), b)), ((mr, mg), mb)) in pixels.iter().zip(planes).zip(means) {
        *r = (px[0] as f32 - mr) + offset[0];
        *g = (px[1] as f32 - mg) + offset[1];
        *b = (px[2] as f32 - mb) + offset[2];
    }
}

/// As `row_minus_pixel_mean`, with one mean per channel.
#[inline(always)]
fn row_minus_channel_mean(
    pixels: &[[u8; 3]],
    mean: [f32; 3],
    offset: [f32; 3],
    [r, g, b]: [&mut [f32]; 3],
) {
    let planes = r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut());
    for (px, ((r, g), b)) in pixels.iter().zip(planes) {
        *r = (px[0] as f32 - mean[0]) + offset[0];
        *g = (px[1] as f32 - mean[1]) + offset[1];
        *b = (px[2] as f32 - mean[2]) + offset[2];
    }
}

#[cfg(test)]
mod tests {
    use super::super::flip::source_column;
    use super::super::{MeanImage, random_view, ten_crop_views};
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_image(side: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
        (0..side * side * 3).map(|_| rng.random::<u8>()).collect()
    }

    fn random_mean(side: usize, rng: &mut ChaCha8Rng) -> MeanImage {
        let hwc = (0..side * side * 3)
            .map(|_| rng.random::<f32>() * 255.0)
            .collect();
        MeanImage::from_hwc(side, hwc).unwrap()
    }

    /// The contract written out plainly: one output value at a time, flip by index.
    fn naive(
        src: &[u8],
        g: Geometry,
        v: View,
        mean: &MeanSubtraction,
        offset: [f32; 3],
    ) -> Vec<f32> {
        let (s, c) = (g.source, g.crop);
        let mut out = vec![f32::NAN; 3 * c * c];
        for ch in 0..3 {
            for y in 0..c {
                for x in 0..c {
                    let sy = v.y + y;
                    let sx = if v.flip { v.x + c - 1 - x } else { v.x + x };
                    let pixel = src[(sy * s + sx) * 3 + ch] as f32;
                    out[ch * c * c + y * c + x] = (pixel - mean.at(ch, sy, sx)) + offset[ch];
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_naive_computation_bit_for_bit() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for (s, c) in [(256, 224), (13, 7), (9, 9), (5, 1)] {
            let g = Geometry::new(s, c).unwrap();
            let means = [
                MeanSubtraction::PerPixel(random_mean(s, &mut rng)),
                MeanSubtraction::PerChannel([123.68, 116.779, 103.939]),
            ];
            for mean in &means {
                for trial in 0..6 {
                    let src = random_image(s, &mut rng);
                    let mut view = random_view(g, &mut rng);
                    view.flip = trial % 2 == 1; // both flips for every mean and geometry
                    let offset = [rng.random::<f32>() * 20.0 - 10.0, -3.25, 7.5];
                    let mut out = vec![f32::NAN; g.output_len()];
                    write_chw(&src, g, view, mean, offset, &mut out);
                    let expected = naive(&src, g, view, mean, offset);
                    assert_eq!(out, expected, "S={s} C={c} {view:?} {mean:?}");
                }
            }
        }
    }

    #[test]
    fn the_visitor_sees_the_whole_source_in_order_and_the_output_is_unchanged() {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        for (s, c) in [(256, 224), (13, 7), (9, 9), (5, 1)] {
            let g = Geometry::new(s, c).unwrap();
            let mean = MeanSubtraction::PerPixel(random_mean(s, &mut rng));
            for _ in 0..6 {
                let src = random_image(s, &mut rng);
                let view = random_view(g, &mut rng);
                let mut seen = Vec::new();
                let mut out = vec![f32::NAN; g.output_len()];
                let visit = |b: &[u8]| seen.extend_from_slice(b);
                write_chw_visiting(
                    &src,
                    g,
                    view,
                    &mean,
                    [1.5, 0.0, -2.0],
                    &mut out,
                    Some(visit),
                );
                assert_eq!(seen, src, "S={s} C={c} {view:?}");
                let mut plain = vec![f32::NAN; g.output_len()];
                write_chw(&src, g, view, &mean, [1.5, 0.0, -2.0], &mut plain);
                assert_eq!(out, plain);
            }
        }
    }

    #[test]
    fn small_example_by_hand() {
        // 3×3 source, pixel (x, y) has RGB (10y + x, 100, 200); 2×2 crop at (1, 0), mirrored.
        let g = Geometry::new(3, 2).unwrap();
        let src: Vec<u8> = (0..3)
            .flat_map(|y| (0..3).flat_map(move |x| [10 * y + x, 100, 200]))
            .collect();
        let mut out = [0.0f32; 12];
        let view = View {
            x: 1,
            y: 0,
            flip: true,
        };
        write_chw(
            &src,
            g,
            view,
            &MeanSubtraction::PerChannel([1.0, 2.0, 3.0]),
            [0.5, 0.0, -1.0],
            &mut out,
        );
        // Red rows read source columns 2, 1: (2, 1) then (12, 11); minus 1, plus 0.5.
        assert_eq!(&out[0..4], &[1.5, 0.5, 11.5, 10.5]);
        assert_eq!(&out[4..8], &[98.0; 4]);
        assert_eq!(&out[8..12], &[196.0; 4]);
    }

    #[test]
    fn per_pixel_mean_moves_with_the_flip() {
        // Image equal to its own mean ⇒ output is exactly the offset, whatever the view.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let g = Geometry::new(16, 10).unwrap();
        let src = random_image(16, &mut rng);
        let mean = MeanImage::from_hwc(16, src.iter().map(|&v| v as f32).collect()).unwrap();
        let mean = MeanSubtraction::PerPixel(mean);
        for view in ten_crop_views(g) {
            let mut out = vec![f32::NAN; g.output_len()];
            write_chw(&src, g, view, &mean, [1.0, 2.0, 3.0], &mut out);
            for (ch, plane) in out.chunks_exact(100).enumerate() {
                assert!(
                    plane.iter().all(|&v| v == (ch + 1) as f32),
                    "{view:?} channel {ch}"
                );
            }
        }
    }

    #[test]
    fn mirrored_ten_crop_view_is_the_horizontal_reverse() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let g = Geometry::new(256, 224).unwrap();
        let src = random_image(256, &mut rng);
        let mean = MeanSubtraction::PerPixel(random_mean(256, &mut rng));
        let views = ten_crop_views(g);
        for i in 0..5 {
            let mut plain = vec![0.0; g.output_len()];
            let mut mirrored = vec![0.0; g.output_len()];
            write_chw(&src, g, views[i], &mean, [0.0; 3], &mut plain);
            write_chw(&src, g, views[i + 5], &mean, [0.0; 3], &mut mirrored);
            for (p, m) in plain.chunks_exact(224).zip(mirrored.chunks_exact(224)) {
                let reversed: Vec<f32> = p.iter().rev().copied().collect();
                assert_eq!(m, &reversed[..], "view {i}");
            }
            // And both agree with the flip module's column mapping.
            let v = views[i + 5];
            let (x, y, ch) = (3, 200, 1);
            let sx = source_column(v, 224, x);
            let want = src[((v.y + y) * 256 + sx) * 3 + ch] as f32 - mean.at(ch, v.y + y, sx);
            assert_eq!(mirrored[ch * 224 * 224 + y * 224 + x], want);
        }
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn rejects_a_view_outside_the_source() {
        let g = Geometry::new(8, 4).unwrap();
        let mut out = vec![0.0; g.output_len()];
        let view = View {
            x: 5,
            y: 0,
            flip: false,
        };
        write_chw(
            &[0; 192],
            g,
            view,
            &MeanSubtraction::PerChannel([0.0; 3]),
            [0.0; 3],
            &mut out,
        );
    }

    #[test]
    #[should_panic(expected = "output slot must be")]
    fn rejects_a_short_output_buffer() {
        let g = Geometry::new(8, 4).unwrap();
        let mut out = vec![0.0; g.output_len() - 1];
        let view = View {
            x: 0,
            y: 0,
            flip: false,
        };
        write_chw(
            &[0; 192],
            g,
            view,
            &MeanSubtraction::PerChannel([0.0; 3]),
            [0.0; 3],
            &mut out,
        );
    }
}
