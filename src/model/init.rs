//! The paper's initialisation (§5), drawn from our own seeded RNG.
//!
//! Why not candle's: `Device::Cpu.set_seed` is unsupported in candle 0.11, candle-nn's
//! layer builders default to Kaiming-uniform, and a CUDA RNG would give different weights
//! than the CPU one. Here every value comes from one `ChaCha8Rng::seed_from_u64(seed)` on
//! the host, so a seed means the same network on every device.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::alexnet::{ParamInit, param_specs};
use super::config::ModelConfig;

/// A `VarMap` holding every AlexNet parameter, initialised as in the paper:
/// weights ~ N(0, init_std²), biases 1 in conv2/4/5, fc6, fc7 (if `init_bias_one`) and
/// 0 elsewhere. Build the model with
/// `alexnet(cfg, input_size, num_classes, VarBuilder::from_varmap(&varmap, dtype, device))`
/// and hand `varmap.all_vars()` (or the named vars) to the optimiser.
///
/// Same `seed` → bit-identical weights on every device (drawn on the host, then moved).
/// The draw order is part of that contract (changing it changes every seeded run):
/// parameters in network order `conv1.weight, conv1.bias, conv2.weight, …, fc8.weight,
/// fc8.bias`; within a weight, row-major over its shape (`(out, in, kh, kw)` for convs,
/// `(out, in)` for fc layers); one `Normal<f64>(0, init_std)` draw per entry from
/// `ChaCha8Rng::seed_from_u64(seed)`, rounded to the target dtype. Biases are constants
/// and draw nothing.
pub fn init_paper(
    cfg: &ModelConfig,
    input_size: usize,
    num_classes: usize,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<VarMap> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().expect("fresh VarMap lock");
        for spec in param_specs(cfg, input_size, num_classes)? {
            let n: usize = spec.shape.iter().product();
            let values: Vec<f64> = match spec.init {
                ParamInit::Normal { std } => {
                    let normal = Normal::new(0.0, std).map_err(candle_core::Error::wrap)?;
                    (0..n).map(|_| normal.sample(&mut rng)).collect()
                }
                ParamInit::Constant(c) => vec![c; n],
            };
            let t = Tensor::from_vec(values, spec.shape.as_slice(), &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(device)?;
            data.insert(spec.name, Var::from_tensor(&t)?);
        }
    }
    Ok(varmap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ModelConfig {
        ModelConfig {
            width: 0.0625,
            ..Default::default()
        }
    }

    #[test]
    fn seeded_and_distributed_as_the_paper() -> Result<()> {
        let a = init_paper(&cfg(), 95, 10, 42, DType::F32, &Device::Cpu)?;
        let b = init_paper(&cfg(), 95, 10, 42, DType::F32, &Device::Cpu)?;
        let c = init_paper(&cfg(), 95, 10, 43, DType::F32, &Device::Cpu)?;
        let get = |m: &VarMap, n: &str| {
            m.data().lock().unwrap()[n]
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(get(&a, "fc7.weight"), get(&b, "fc7.weight"));
        assert_ne!(get(&a, "fc7.weight"), get(&c, "fc7.weight"));
        // 65,536 draws: mean ~0, std ~0.01.
        let w = get(&a, "fc7.weight");
        let n = w.len() as f64;
        let mean = w.iter().map(|&v| v as f64).sum::<f64>() / n;
        let std = (w.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(
            mean.abs() < 2e-4 && (std - 0.01).abs() < 2e-4,
            "mean {mean} std {std}"
        );
        // Biases: 1 in conv2/4/5, fc6, fc7; 0 in conv1, conv3, fc8.
        for (name, want) in [
            ("conv1", 0.),
            ("conv2", 1.),
            ("conv3", 0.),
            ("conv4", 1.),
            ("conv5", 1.),
            ("fc6", 1.),
            ("fc7", 1.),
            ("fc8", 0.),
        ] {
            assert!(
                get(&a, &format!("{name}.bias")).iter().all(|&v| v == want),
                "{name}"
            );
        }
        let zero = init_paper(
            &ModelConfig {
                init_bias_one: false,
                ..cfg()
            },
            95,
            10,
            42,
            DType::F32,
            &Device::Cpu,
        )?;
        assert!(get(&zero, "fc6.bias").iter().all(|&v| v == 0.0));
        // The first draw of the stream is conv1.weight[0,0,0,0] (order contract).
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let first = Normal::new(0.0, 0.01).unwrap().sample(&mut rng) as f32;
        assert_eq!(get(&a, "conv1.weight")[0], first);
        Ok(())
    }
}
