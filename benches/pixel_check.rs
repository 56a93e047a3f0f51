//! What the stream's pixel check adds to the augmentation pass, measured alone: the same
//! random crops, flips and mean subtraction over images that are not in cache (as a
//! row's first read in an epoch is), with and without the CRC-32 riding on the pass.
//!
//! `cargo bench --bench pixel_check` (one thread; rounds alternate the two modes so
//! drift in the machine's speed hits both).

use std::hint::black_box;
use std::time::Instant;

use pipeline::augment::{Geometry, MeanSubtraction, random_view, write_chw_visiting};
use pipeline::dataset::checksum::{PixelsCrc, pixels_crc32};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const IMAGES: usize = 4096; // 805 MB of 256×256 sources: far beyond any cache
const BATCH: usize = 128;
const ROUNDS: usize = 15;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    /// The check as the stream runs it: the CRC fed by the pass's own read.
    Fused,
    /// The check as a separate pass over the row right before the crop.
    Separate,
}

fn main() {
    let g = Geometry::new(256, 224).expect("valid geometry");
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let sources: Vec<u8> = (0..IMAGES * g.source_len())
        .map(|_| rng.random::<u8>())
        .collect();
    let crcs: Vec<u32> = sources.chunks(g.source_len()).map(pixels_crc32).collect();
    let mean = MeanSubtraction::PerChannel([123.68, 116.779, 103.939]);
    let mut batch = vec![0.0f32; BATCH * g.output_len()];

    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        for (slot, mode) in [Mode::Plain, Mode::Fused, Mode::Separate]
            .into_iter()
            .enumerate()
        {
            let mut rng = ChaCha8Rng::seed_from_u64(round as u64);
            let started = Instant::now();
            for (i, (src, &crc)) in sources.chunks(g.source_len()).zip(&crcs).enumerate() {
                let view = random_view(g, &mut rng);
                let out = &mut batch[(i % BATCH) * g.output_len()..][..g.output_len()];
                let offset = [0.5, -0.25, 0.125];
                match mode {
                    Mode::Plain => {
                        write_chw_visiting(src, g, view, &mean, offset, out, None::<fn(&[u8])>)
                    }
                    Mode::Fused => {
                        let mut hasher = PixelsCrc::new();
                        let visit = |b: &[u8]| hasher.update(b);
                        write_chw_visiting(src, g, view, &mean, offset, out, Some(visit));
                        assert_eq!(hasher.finalize(), crc);
                    }
                    Mode::Separate => {
                        assert_eq!(pixels_crc32(src), crc);
                        write_chw_visiting(src, g, view, &mean, offset, out, None::<fn(&[u8])>)
                    }
                }
            }
            black_box(&batch);
            times[slot].push(started.elapsed().as_secs_f64() / IMAGES as f64 * 1e6);
        }
    }
    // Each round's modes run back to back, so the ratio within a round is what drift in
    // the machine's speed disturbs least.
    let ratios = |mode: usize| -> Vec<f64> {
        times[mode]
            .iter()
            .zip(&times[0])
            .map(|(t, plain)| t / plain)
            .collect()
    };
    let (fused, separate) = (median(ratios(1)), median(ratios(2)));
    let plain = median(times[0].clone());
    println!("augmentation pass, 256 → 224, one thread, {ROUNDS} rounds (medians):");
    println!("  unchecked             {plain:6.1} µs/image");
    println!("  CRC in the pass       +{:.1} %", (fused - 1.0) * 100.0);
    println!("  CRC as its own pass   +{:.1} %", (separate - 1.0) * 100.0);
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
