//! PCA colour augmentation, "lighting" (paper §4.1): to every pixel of an image add
//! `[p1 p2 p3] · [α1 λ1, α2 λ2, α3 λ3]ᵀ`, with `αᵢ ~ N(0, 0.1)` drawn once per image.

use rand::Rng;
use rand_distr::{Distribution, Normal};

/// The eigendecomposition was computed on pixels scaled to [0, 1]; images here are in
/// 0–255 units, so the RGB shift is scaled by 255 (eigenvectors are unit-free, the
/// eigenvalue-weighted shift carries the pixel unit).
const PIXEL_SCALE: f32 = 255.0;

/// Eigenpairs of the 3×3 RGB covariance of the training pixels, in [0, 1] units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pca {
    /// λ1 ≥ λ2 ≥ λ3.
    pub eigenvalues: [f32; 3],
    /// `eigenvectors[row][col]`; eigenvector i is **column** i, paired with λi
    /// (the layout of fb.resnet.torch's widely copied constants).
    pub eigenvectors: [[f32; 3]; 3],
}

/// Draws `α1, α2, α3 ~ N(0, std)`, in that order (the paper uses std = 0.1).
///
/// Panics if `std` is not finite; `Augmenter::new` validates it up front.
pub fn draw_alphas<R: Rng + ?Sized>(std: f32, rng: &mut R) -> [f32; 3] {
    let normal = Normal::new(0.0, std).expect("lighting std must be finite");
    [normal.sample(rng), normal.sample(rng), normal.sample(rng)]
}

/// The RGB shift added to every pixel, in 0–255 units:
/// `offset[c] = 255 · Σᵢ eigenvectors[c][i] · αᵢ · λᵢ`.
pub fn lighting_offset(pca: &Pca, alphas: [f32; 3]) -> [f32; 3] {
    let weights: [f32; 3] = std::array::from_fn(|i| alphas[i] * pca.eigenvalues[i]);
    std::array::from_fn(|c| {
        let row = pca.eigenvectors[c];
        PIXEL_SCALE * (row[0] * weights[0] + row[1] * weights[1] + row[2] * weights[2])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-4 * b.abs().max(1.0)
    }

    #[test]
    fn offset_is_the_matrix_product() {
        let pca = Pca {
            eigenvalues: [2.0, 3.0, 5.0],
            eigenvectors: [[1.0, 0.0, 1.0], [0.0, 1.0, -1.0], [2.0, 0.0, 0.5]],
        };
        // α ⊙ λ = (0.5·2, −1·3, 0.25·5) = (1, −3, 1.25)
        // P·(α⊙λ) = (1 + 0 + 1.25, 0 − 3 − 1.25, 2 + 0 + 0.625) = (2.25, −4.25, 2.625)
        let offset = lighting_offset(&pca, [0.5, -1.0, 0.25]);
        assert_eq!(offset, [2.25 * 255.0, -4.25 * 255.0, 2.625 * 255.0]);
        assert_eq!(lighting_offset(&pca, [0.0; 3]), [0.0; 3]);
    }

    #[test]
    fn fb_resnet_constants_give_the_known_shift() {
        let pca = Pca {
            eigenvalues: [0.2175, 0.0188, 0.0045],
            eigenvectors: [
                [-0.5675, 0.7192, 0.4009],
                [-0.5808, -0.0045, -0.8140],
                [-0.5836, -0.6948, 0.4203],
            ],
        };
        // α = (0.1, −0.2, 0.05): α⊙λ = (0.02175, −0.00376, 0.000225)
        // R = −0.5675·0.02175 + 0.7192·(−0.00376) + 0.4009·0.000225 = −0.0149571… → ×255 = −3.81406
        let offset = lighting_offset(&pca, [0.1, -0.2, 0.05]);
        let expected = [-3.814064, -3.263651, -2.546503];
        for c in 0..3 {
            assert!(
                close(offset[c], expected[c]),
                "channel {c}: {} vs {}",
                offset[c],
                expected[c]
            );
        }
    }

    #[test]
    fn alphas_have_mean_zero_and_the_requested_std() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let n = 30_000;
        let mut sum = [0.0f64; 3];
        let mut sq = [0.0f64; 3];
        for _ in 0..n {
            let a = draw_alphas(0.1, &mut rng);
            for i in 0..3 {
                sum[i] += a[i] as f64;
                sq[i] += (a[i] as f64).powi(2);
            }
        }
        for i in 0..3 {
            let mean = sum[i] / n as f64;
            let std = (sq[i] / n as f64 - mean * mean).sqrt();
            // Standard error of the mean is 0.1/√30000 ≈ 0.00058; of the std ≈ 0.0004.
            assert!(mean.abs() < 0.003, "α{} mean {mean}", i + 1);
            assert!((std - 0.1).abs() < 0.003, "α{} std {std}", i + 1);
        }
    }

    #[test]
    fn alphas_are_deterministic_for_a_seed() {
        let a = draw_alphas(0.1, &mut ChaCha8Rng::seed_from_u64(9));
        let b = draw_alphas(0.1, &mut ChaCha8Rng::seed_from_u64(9));
        assert_eq!(a, b);
        assert_eq!(
            draw_alphas(0.0, &mut ChaCha8Rng::seed_from_u64(9)),
            [0.0; 3]
        );
    }
}
