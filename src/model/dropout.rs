//! Dropout (paper §4.2) driven by our own seeded RNG, so a training run can be resumed
//! bit-exactly from a checkpoint and gives the same masks on any device.
//!
//! Inverted dropout: at train time each unit is kept with probability 1-p and kept
//! units are scaled by 1/(1-p); at test time the layer is the identity. The paper
//! instead multiplies by 0.5 at test time; the two give the same expected activations,
//! and this way eval/feature export need no special case.

use candle_core::{DType, Device, Result, Tensor};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Where a [`DropoutRng`] stands: its seed and how many 32-bit words it has produced.
/// Small, plain data: store it in a checkpoint (JSON/TOML/safetensors metadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropoutState {
    /// Seed given to `ChaCha8Rng::seed_from_u64`.
    pub seed: u64,
    /// ChaCha8 word position (`get_word_pos`) at the time of the snapshot. Serialised
    /// as a decimal string: TOML and JSON integers cannot hold every u128.
    #[serde(with = "u128_string")]
    pub word_pos: u128,
}

mod u128_string {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e| D::Error::custom(format!("word_pos {s:?}: {e}")))
    }
}

/// The RNG that draws dropout masks: a ChaCha8 stream with a resumable position.
#[derive(Debug, Clone)]
pub struct DropoutRng {
    seed: u64,
    rng: ChaCha8Rng,
}

impl DropoutRng {
    /// A fresh stream for `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Snapshot to store in a checkpoint.
    pub fn state(&self) -> DropoutState {
        DropoutState {
            seed: self.seed,
            word_pos: self.rng.get_word_pos(),
        }
    }

    /// Continues exactly where [`state`](Self::state) was taken.
    pub fn from_state(state: DropoutState) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(state.seed);
        rng.set_word_pos(state.word_pos);
        Self {
            seed: state.seed,
            rng,
        }
    }

    /// A mask shaped like `shape`: each entry is 1/(1-p) with probability 1-p, else 0.
    /// One `f32` draw per entry in row-major order (the order is part of the resume
    /// contract). Built on the CPU, returned on `device` in `dtype`.
    pub fn mask(
        &mut self,
        shape: &[usize],
        p: f32,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let scale = 1.0 / (1.0 - p);
        let values: Vec<f32> = (0..n)
            .map(|_| {
                if self.rng.random::<f32>() < p {
                    0.0
                } else {
                    scale
                }
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)
    }
}

/// Training-mode dropout: `x * mask`. p = 0 returns `x` unchanged without drawing.
pub fn dropout(x: &Tensor, p: f32, rng: &mut DropoutRng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let mask = rng.mask(x.dims(), p, x.dtype(), x.device())?;
    x.mul(&mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumes_bit_exactly() -> Result<()> {
        let dev = Device::Cpu;
        let mut a = DropoutRng::new(7);
        let _ = a.mask(&[3, 5], 0.5, DType::F32, &dev)?; // advance part-way into a block
        let snap = a.state();
        let want = a
            .mask(&[4, 33], 0.5, DType::F32, &dev)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        // Round-trip through serde, as a checkpoint would.
        let json = toml::to_string(&snap).map_err(candle_core::Error::wrap)?;
        let snap2: DropoutState = toml::from_str(&json).map_err(candle_core::Error::wrap)?;
        let mut b = DropoutRng::from_state(snap2);
        let got = b
            .mask(&[4, 33], 0.5, DType::F32, &dev)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(want, got);
        assert_eq!(a.state(), b.state());
        Ok(())
    }

    #[test]
    fn mask_is_inverted_dropout() -> Result<()> {
        let mut rng = DropoutRng::new(1);
        let m = rng
            .mask(&[100_000], 0.5, DType::F32, &Device::Cpu)?
            .to_vec1::<f32>()?;
        assert!(m.iter().all(|&v| v == 0.0 || v == 2.0));
        let kept = m.iter().filter(|&&v| v > 0.0).count() as f64 / m.len() as f64;
        assert!((kept - 0.5).abs() < 0.01, "kept fraction {kept}");
        // Expected value preserved: mean of the mask is ~1.
        let mean = m.iter().map(|&v| v as f64).sum::<f64>() / m.len() as f64;
        assert!((mean - 1.0).abs() < 0.02);
        // Different seeds, different masks.
        let other = DropoutRng::new(2)
            .mask(&[64], 0.5, DType::F32, &Device::Cpu)?
            .to_vec1::<f32>()?;
        assert_ne!(other, m[..64].to_vec());
        Ok(())
    }
}
