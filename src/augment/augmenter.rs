//! Everything the stream stage needs to turn one stored image into one network input,
//! bundled so the per-image call is a single line.

use rand::Rng;

use super::{
    AugmentError, Geometry, MeanSubtraction, Pca, View, centre_view, draw_alphas, lighting_offset,
    random_view, write_chw_visiting,
};

/// Which parts of the paper's random view a training sample gets (`[stream] random_crop`
/// and `flip`); both on is the paper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrainViews {
    pub random_crop: bool,
    pub flip: bool,
}

impl Default for TrainViews {
    fn default() -> Self {
        Self {
            random_crop: true,
            flip: true,
        }
    }
}

/// The paper's augmentation, configured once per run.
#[derive(Clone, Debug, PartialEq)]
pub struct Augmenter {
    geometry: Geometry,
    mean: MeanSubtraction,
    /// `None` turns PCA lighting off (and then no α is drawn).
    pca: Option<Pca>,
    /// Standard deviation of the αᵢ (0.1 in the paper).
    lighting_std: f32,
    views: TrainViews,
}

impl Augmenter {
    /// Errors if a per-pixel mean does not match the source side, or the lighting std is
    /// negative or not finite.
    pub fn new(
        geometry: Geometry,
        mean: MeanSubtraction,
        pca: Option<Pca>,
        lighting_std: f32,
    ) -> Result<Self, AugmentError> {
        mean.check_source_side(geometry.source)?;
        if !(lighting_std.is_finite() && lighting_std >= 0.0) {
            return Err(AugmentError::LightingStd(lighting_std));
        }
        Ok(Self {
            geometry,
            mean,
            pca,
            lighting_std,
            views: TrainViews::default(),
        })
    }

    /// The same augmenter with random crops and/or mirroring switched off in training.
    pub fn with_train_views(self, views: TrainViews) -> Self {
        Self { views, ..self }
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Floats written per image: the size of one slot in the batch buffer.
    pub fn output_len(&self) -> usize {
        self.geometry.output_len()
    }

    /// A training sample: random crop and mirror, mean subtraction, PCA lighting.
    ///
    /// RNG draw order is fixed — the view first (x, y, flip), then α1, α2, α3 when
    /// lighting is on — so a seeded RNG reproduces the exact sample. Returns the view
    /// used, for logging or replay.
    pub fn train_image<R: Rng + ?Sized>(&self, src: &[u8], rng: &mut R, out: &mut [f32]) -> View {
        self.train_image_visiting(src, rng, out, None::<fn(&[u8])>)
    }

    /// `train_image`, showing every byte of `src` to `visit` (when given) as the pass reads
    /// it (see `write_chw_visiting`).
    pub fn train_image_visiting<R: Rng + ?Sized>(
        &self,
        src: &[u8],
        rng: &mut R,
        out: &mut [f32],
        visit: Option<impl FnMut(&[u8])>,
    ) -> View {
        // The random view is always drawn, so switching crops or flips off leaves every
        // later draw (the αᵢ) where the paper's augmentation has it.
        let drawn = random_view(self.geometry, rng);
        let centre = centre_view(self.geometry);
        let view = View {
            x: if self.views.random_crop {
                drawn.x
            } else {
                centre.x
            },
            y: if self.views.random_crop {
                drawn.y
            } else {
                centre.y
            },
            flip: self.views.flip && drawn.flip,
        };
        let offset = match &self.pca {
            Some(pca) => lighting_offset(pca, draw_alphas(self.lighting_std, rng)),
            None => [0.0; 3],
        };
        write_chw_visiting(src, self.geometry, view, &self.mean, offset, out, visit);
        view
    }

    /// An evaluation sample for a chosen view (centre or one of the ten crops): no
    /// lighting, which the paper applies only in training.
    pub fn eval_image(&self, src: &[u8], view: View, out: &mut [f32]) {
        self.eval_image_visiting(src, view, out, None::<fn(&[u8])>);
    }

    /// `eval_image`, showing every byte of `src` to `visit` (when given) as the pass reads
    /// it.
    pub fn eval_image_visiting(
        &self,
        src: &[u8],
        view: View,
        out: &mut [f32],
        visit: Option<impl FnMut(&[u8])>,
    ) {
        write_chw_visiting(src, self.geometry, view, &self.mean, [0.0; 3], out, visit);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MeanImage, centre_view, write_chw};
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn pca() -> Pca {
        Pca {
            eigenvalues: [0.2175, 0.0188, 0.0045],
            eigenvectors: [
                [-0.5675, 0.7192, 0.4009],
                [-0.5808, -0.0045, -0.8140],
                [-0.5836, -0.6948, 0.4203],
            ],
        }
    }

    #[test]
    fn train_image_draws_the_view_then_the_alphas() {
        let g = Geometry::new(12, 8).unwrap();
        let mean = MeanSubtraction::PerChannel([100.0, 110.0, 120.0]);
        let aug = Augmenter::new(g, mean.clone(), Some(pca()), 0.1).unwrap();
        let src: Vec<u8> = (0..g.source_len()).map(|i| (i * 7 % 251) as u8).collect();

        let mut out = vec![0.0; aug.output_len()];
        let view = aug.train_image(&src, &mut ChaCha8Rng::seed_from_u64(21), &mut out);

        // Replay the documented draw order by hand.
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let expected_view = random_view(g, &mut rng);
        let offset = lighting_offset(&pca(), draw_alphas(0.1, &mut rng));
        let mut expected = vec![0.0; g.output_len()];
        write_chw(&src, g, expected_view, &mean, offset, &mut expected);

        assert_eq!(view, expected_view);
        assert_ne!(offset, [0.0; 3]);
        assert_eq!(out, expected);
    }

    #[test]
    fn train_views_off_give_the_centre_unmirrored_and_keep_the_alphas() {
        let g = Geometry::new(12, 8).unwrap();
        let mean = MeanSubtraction::PerChannel([100.0, 110.0, 120.0]);
        let off = TrainViews {
            random_crop: false,
            flip: false,
        };
        let aug = Augmenter::new(g, mean.clone(), Some(pca()), 0.1)
            .unwrap()
            .with_train_views(off);
        let src: Vec<u8> = (0..g.source_len()).map(|i| (i * 7 % 251) as u8).collect();
        let mut out = vec![0.0; aug.output_len()];
        for seed in 0..16 {
            let view = aug.train_image(&src, &mut ChaCha8Rng::seed_from_u64(seed), &mut out);
            assert_eq!(view, centre_view(g));
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            random_view(g, &mut rng);
            let offset = lighting_offset(&pca(), draw_alphas(0.1, &mut rng));
            let mut expected = vec![0.0; g.output_len()];
            write_chw(&src, g, centre_view(g), &mean, offset, &mut expected);
            assert_eq!(out, expected);
        }
    }

    #[test]
    fn eval_image_has_no_lighting_and_train_without_pca_none() {
        let g = Geometry::new(10, 6).unwrap();
        let mean = MeanSubtraction::PerPixel(MeanImage::from_hwc(10, vec![50.0; 300]).unwrap());
        let src = vec![80u8; g.source_len()];
        let with_pca = Augmenter::new(g, mean.clone(), Some(pca()), 0.1).unwrap();
        let mut out = vec![0.0; g.output_len()];
        with_pca.eval_image(&src, centre_view(g), &mut out);
        assert!(out.iter().all(|&v| v == 30.0));

        let without = Augmenter::new(g, mean, None, 0.1).unwrap();
        without.train_image(&src, &mut ChaCha8Rng::seed_from_u64(1), &mut out);
        assert!(out.iter().all(|&v| v == 30.0));
    }

    #[test]
    fn construction_validates_mean_side_and_std() {
        let g = Geometry::new(10, 6).unwrap();
        let mean = MeanSubtraction::PerPixel(MeanImage::from_hwc(8, vec![0.0; 192]).unwrap());
        assert_eq!(
            Augmenter::new(g, mean, None, 0.1),
            Err(AugmentError::MeanSideMismatch {
                mean_side: 8,
                source_side: 10
            })
        );
        let flat = MeanSubtraction::PerChannel([0.0; 3]);
        assert_eq!(
            Augmenter::new(g, flat.clone(), None, -0.1),
            Err(AugmentError::LightingStd(-0.1))
        );
        assert!(matches!(
            Augmenter::new(g, flat, None, f32::NAN),
            Err(AugmentError::LightingStd(v)) if v.is_nan()
        ));
    }
}
