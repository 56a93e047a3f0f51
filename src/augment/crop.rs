//! Training and single-view evaluation crops (paper §4.1: a random 224×224 patch of the
//! 256×256 image, mirrored with probability ½).

// rand 0.10: `Rng` is the generator trait callers name in bounds; `RngExt` adds
// `random_range` and `random_bool`.
use rand::{Rng, RngExt};

use super::{Geometry, View};

/// A uniformly random window, mirrored with probability ½.
///
/// Draw order is fixed — `x`, then `y`, then `flip` — so a seeded RNG reproduces the
/// same views on every run and platform.
pub fn random_view<R: Rng + ?Sized>(g: Geometry, rng: &mut R) -> View {
    let max = g.max_offset();
    let x = rng.random_range(0..=max);
    let y = rng.random_range(0..=max);
    let flip = rng.random_bool(0.5);
    View { x, y, flip }
}

/// The centred, unmirrored window (rounded towards the top-left when `source − crop`
/// is odd). Used for single-crop validation.
pub fn centre_view(g: Geometry) -> View {
    let c = g.max_offset() / 2;
    View {
        x: c,
        y: c,
        flip: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn random_views_cover_the_range_and_flip_half_the_time() {
        let g = Geometry::new(256, 224).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut seen_x = [false; 33];
        let mut seen_y = [false; 33];
        let mut flips = 0usize;
        let draws = 20_000;
        for _ in 0..draws {
            let v = random_view(g, &mut rng);
            assert!(g.contains(v), "{v:?} out of range");
            seen_x[v.x] = true;
            seen_y[v.y] = true;
            flips += v.flip as usize;
        }
        assert!(seen_x.iter().all(|&s| s), "some x never drawn: {seen_x:?}");
        assert!(seen_y.iter().all(|&s| s), "some y never drawn: {seen_y:?}");
        // Binomial(20000, ½) has sd ≈ 71; ±500 is a 7-sd bound.
        assert!((flips as i64 - 10_000).abs() < 500, "flips = {flips}");
    }

    #[test]
    fn random_views_are_deterministic_for_a_seed() {
        let g = Geometry::new(256, 224).unwrap();
        let a: Vec<View> = {
            let mut rng = ChaCha8Rng::seed_from_u64(42);
            (0..100).map(|_| random_view(g, &mut rng)).collect()
        };
        let b: Vec<View> = {
            let mut rng = ChaCha8Rng::seed_from_u64(42);
            (0..100).map(|_| random_view(g, &mut rng)).collect()
        };
        let c: Vec<View> = {
            let mut rng = ChaCha8Rng::seed_from_u64(43);
            (0..100).map(|_| random_view(g, &mut rng)).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn random_view_of_an_exact_fit_is_the_origin() {
        let g = Geometry::new(224, 224).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..50 {
            let v = random_view(g, &mut rng);
            assert_eq!((v.x, v.y), (0, 0));
        }
    }

    #[test]
    fn centre_view_is_centred() {
        assert_eq!(
            centre_view(Geometry::new(256, 224).unwrap()),
            View {
                x: 16,
                y: 16,
                flip: false
            }
        );
        assert_eq!(
            centre_view(Geometry::new(7, 4).unwrap()),
            View {
                x: 1,
                y: 1,
                flip: false
            }
        );
    }
}
