//! Training-step throughput on synthetic batches: forward (train mode, dropout on) +
//! mean cross-entropy + backward + the paper's SGD update, timed after one warm-up step,
//! with a device sync before every clock read. `pipeline check step` prints it (the GPU
//! bench compares it with PyTorch + cuDNN); `benches/train_step_peer.py` runs the CPU case.

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};

use super::sgd::PaperSgd;
use crate::model::{DropoutRng, Kernels, ModelConfig};

/// One configuration to time.
#[derive(Debug, Clone, Copy)]
pub struct StepCase {
    pub width: f64,
    pub input: usize,
    pub batch: usize,
    pub classes: usize,
    /// Timed steps (after one warm-up step).
    pub steps: usize,
    /// The dtype of forward and backward (f32 or bf16; the weights and update stay f32).
    pub dtype: DType,
    pub kernels: Kernels,
}

/// Mean seconds per step, split into its phases.
#[derive(Debug, Clone, Copy)]
pub struct StepTiming {
    pub forward_s: f64,
    pub backward_s: f64,
    pub sgd_s: f64,
}

impl StepTiming {
    pub fn step_s(&self) -> f64 {
        self.forward_s + self.backward_s + self.sgd_s
    }

    pub fn line(&self, c: &StepCase) -> String {
        format!(
            "candle width={} input={} batch={} classes={} dtype={:?}: {:.1} images/s \
             (per step {:.4}s: forward {:.4}s, backward {:.4}s, sgd {:.4}s)",
            c.width,
            c.input,
            c.batch,
            c.classes,
            c.dtype,
            c.batch as f64 / self.step_s(),
            self.step_s(),
            self.forward_s,
            self.backward_s,
            self.sgd_s
        )
    }
}

/// Times `case.steps` steps on `device`.
pub fn time_steps(device: &Device, case: &StepCase) -> Result<StepTiming> {
    let cfg = ModelConfig {
        width: case.width,
        kernels: case.kernels,
        ..Default::default()
    };
    let net = crate::run::net::fresh(&cfg, case.input, case.classes, 1, device)
        .map_err(candle_core::Error::wrap)?;
    let model = net.model;
    let mut opt = PaperSgd::new(net.vars, 0.9, 0.0005)?;
    let mut rng = DropoutRng::new(2);
    // Inputs on the scale of centred raw RGB; fixed labels.
    let x = Tensor::rand(0f32, 1f32, (case.batch, 3, case.input, case.input), device)?
        .affine(255.0, -128.0)?;
    let labels: Vec<u32> = (0..case.batch as u32)
        .map(|i| i % case.classes as u32)
        .collect();
    let labels = Tensor::from_vec(labels, case.batch, device)?;
    let sync = || device.synchronize();
    let (mut fwd, mut bwd, mut sgd) = (0.0, 0.0, 0.0);
    for s in 0..=case.steps {
        sync()?;
        let t0 = Instant::now();
        let net = model.cast(case.dtype)?;
        let logits = net
            .forward(&x.to_dtype(case.dtype)?, Some(&mut rng))?
            .to_dtype(DType::F32)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
        sync()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        sync()?;
        let t2 = Instant::now();
        opt.step(&grads, 0.01)?;
        sync()?;
        let t3 = Instant::now();
        if s > 0 {
            // step 0 is the warm-up (allocator, kernel loading, cuDNN's algorithm choice)
            fwd += (t1 - t0).as_secs_f64();
            bwd += (t2 - t1).as_secs_f64();
            sgd += (t3 - t2).as_secs_f64();
        }
    }
    let n = case.steps.max(1) as f64;
    Ok(StepTiming {
        forward_s: fwd / n,
        backward_s: bwd / n,
        sgd_s: sgd / n,
    })
}
