//! Queries/s of exact search on a 10 000 × 4096 database (the size), the
//! blocked-gemm index against the scalar brute force (f64, one loop per pair), and of
//! Hamming search over 256-bit codes; `benches/retrieval_peer.py` runs it beside numpy.
//!
//! `cargo bench --bench search`; `SEARCH_SPEED="n:dim:queries:k:bits"` changes the sizes
//! (default 10000:4096:1000:10:256).

use std::time::Instant;

use pipeline::features::hamming::HammingIndex;
use pipeline::features::search::{self, ExactIndex};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0f32, 1f32).expect("a valid normal");
    (0..n).map(|_| normal.sample(&mut rng)).collect()
}

fn main() {
    let spec = std::env::var("SEARCH_SPEED").unwrap_or_else(|_| "10000:4096:1000:10:256".into());
    let f: Vec<usize> = spec
        .split(':')
        .map(|v| v.parse().expect("SEARCH_SPEED number"))
        .collect();
    let (n, dim, q, k, bits) = (f[0], f[1], f[2], f[3], f[4]);
    let database = gaussian(n * dim, 11);
    let queries = gaussian(q * dim, 12);
    let threads = rayon::current_num_threads();
    let started = Instant::now();
    let index = ExactIndex::new(&database, n, dim).unwrap();
    let build = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let fast = index.search(&queries, q, k, None).unwrap();
    let blocked = q as f64 / started.elapsed().as_secs_f64();
    let sample = 20.min(q);
    let started = Instant::now();
    let reference =
        search::brute_force(&database, n, dim, &queries[..sample * dim], sample, k, None).unwrap();
    let scalar = sample as f64 / started.elapsed().as_secs_f64();
    assert_eq!(
        fast[..sample].iter().map(|l| l[0].0).collect::<Vec<_>>(),
        reference.iter().map(|l| l[0].0).collect::<Vec<_>>()
    );
    println!(
        "exact n={n} dim={dim} queries={q} k={k} threads={threads}: blocked {blocked:.1} queries/s (index build {build:.3} s)"
    );
    println!(
        "exact n={n} dim={dim} queries={sample} k={k} threads={threads}: scalar {scalar:.1} queries/s"
    );
    println!("ratio blocked/scalar: {:.1}", blocked / scalar);
    let bytes = bits / 8;
    let q = q.min(n);
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let codes: Vec<u8> = (0..n * bytes)
        .map(|_| rand::RngExt::random::<u8>(&mut rng))
        .collect();
    let started = Instant::now();
    let index = HammingIndex::new(&codes, n, bytes).unwrap();
    let found = index.search(&codes[..q * bytes], q, k, None).unwrap();
    let hamming = q as f64 / started.elapsed().as_secs_f64();
    assert!(found.iter().enumerate().all(|(i, l)| l[0] == (i, 0)));
    println!(
        "hamming n={n} bits={} queries={q} k={k} threads={threads}: {hamming:.1} queries/s",
        bytes * 8
    );
}
