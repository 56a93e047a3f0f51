//! Per-layer timing of our CPU ops at AlexNet's full size (224 px, batch 32, f32): each
//! layer as the network runs it (conv + bias + ReLU, LRN, 3/2 max-pool, fc + bias (+ ReLU)),
//! forward, and the backward of `sum(layer(x) · g)`, best of three. Report only;
//! `benches/train_step_peer.py` runs it next to the same layers in PyTorch.
//!
//! `cargo bench --bench ops` (`OPS=conv1,fc6` picks some; `OPS_SIZE=sample` times the
//! sample recipe's net instead: width 0.25, 64 px, batch 128). One line per layer:
//! `layer NAME forward 0.0123s backward 0.0456s`.

use std::time::Instant;

use candle_core::{Device, Module, Result, Tensor, Var};
use pipeline::model::conv::{Conv2d, ConvParams};
use pipeline::model::linear::Linear;
use pipeline::model::lrn::lrn;
use pipeline::model::max_pool::max_pool2d;
use pipeline::model::{LrnConfig, PoolConfig};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The layers' sizes: AlexNet at full size, batch 32, or the sample recipe's net.
struct Sizes {
    batch: usize,
    input: usize,
    /// conv1..conv5 output channels.
    c: [usize; 5],
    /// conv1's, conv2's and conv3's output sides.
    side: [usize; 3],
    fc: [usize; 4],
}

const FULL: Sizes = Sizes {
    batch: 32,
    input: 224,
    c: [96, 256, 384, 384, 256],
    side: [55, 27, 13],
    fc: [9216, 4096, 4096, 1000],
};

const SAMPLE: Sizes = Sizes {
    batch: 128,
    input: 64,
    c: [24, 64, 96, 96, 64],
    side: [15, 7, 3],
    fc: [64, 1024, 1024, 10],
};

fn random(shape: &[usize], seed: u64, scale: f32) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Best forward time and best backward time of three runs.
fn time_layer(
    layer: &dyn Fn(&Tensor) -> Result<Tensor>,
    x: &Tensor,
    g: &Tensor,
) -> Result<(f64, f64)> {
    let (mut fwd, mut bwd) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        let t0 = Instant::now();
        let y = layer(x)?;
        let t1 = Instant::now();
        (y * g)?.sum_all()?.backward()?;
        let t2 = Instant::now();
        fwd = fwd.min((t1 - t0).as_secs_f64());
        bwd = bwd.min((t2 - t1).as_secs_f64());
    }
    Ok((fwd, bwd))
}

/// A layer's input: a `Var` (so its gradient is computed, as inside the net) unless
/// `image` (conv1's input is the image batch, which needs no gradient).
fn input(shape: &[usize], image: bool) -> Result<Tensor> {
    let x = random(shape, 1, 1.0)?;
    Ok(if image {
        x
    } else {
        Var::from_tensor(&x)?.as_tensor().clone()
    })
}

fn conv(
    name: &str,
    xs: [usize; 4],
    ks: [usize; 4],
    stride: usize,
    padding: usize,
    groups: usize,
) -> Result<(f64, f64)> {
    let p = ConvParams {
        stride,
        padding,
        groups,
    };
    let w = Var::from_tensor(&random(&ks, 2, 0.05)?)?;
    let b = Var::from_tensor(&random(&[ks[0]], 3, 0.1)?)?;
    let layer = Conv2d::new(w.as_tensor().clone(), b.as_tensor().clone(), p);
    let x = input(&xs, name == "conv1")?;
    let y = layer.forward_relu(&x)?;
    let g = random(y.dims(), 4, 1.0)?;
    time_layer(&|x| layer.forward_relu(x), &x, &g)
}

fn fc(batch: usize, fan_in: usize, fan_out: usize, relu: bool) -> Result<(f64, f64)> {
    let w = Var::from_tensor(&random(&[fan_out, fan_in], 2, 0.01)?)?;
    let b = Var::from_tensor(&random(&[fan_out], 3, 0.1)?)?;
    let layer = Linear::new(w.as_tensor().clone(), b.as_tensor().clone());
    let x = input(&[batch, fan_in], false)?;
    let g = random(&[batch, fan_out], 4, 1.0)?;
    if relu {
        time_layer(&|x| layer.forward_relu(x), &x, &g)
    } else {
        time_layer(&|x| layer.forward(x), &x, &g)
    }
}

/// Huge pages for the large activation and gradient buffers (see `huge_pages`).
#[global_allocator]
static ALLOC: pipeline::huge_pages::HugePages = pipeline::huge_pages::HugePages;

fn main() -> Result<()> {
    let names = [
        "conv1", "lrn1", "pool1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8",
    ];
    let z = match std::env::var("OPS_SIZE").as_deref() {
        Ok("sample") => &SAMPLE,
        Ok("full") | Err(_) => &FULL,
        Ok(other) => candle_core::bail!("OPS_SIZE: {other:?} is not full or sample"),
    };
    let (b, c, side) = (z.batch, z.c, z.side);
    let wanted = std::env::var("OPS").unwrap_or_else(|_| names.join(","));
    for name in wanted.split(',').map(str::trim) {
        let plane1 = [b, c[0], side[0], side[0]];
        let pooled1 = [b, c[0], side[1], side[1]];
        let (f, bw) = match name {
            "conv1" => conv(name, [b, 3, z.input, z.input], [c[0], 3, 11, 11], 4, 2, 1)?,
            "conv2" => conv(name, pooled1, [c[1], c[0] / 2, 5, 5], 1, 2, 2)?,
            "conv3" => conv(
                name,
                [b, c[1], side[2], side[2]],
                [c[2], c[1], 3, 3],
                1,
                1,
                1,
            )?,
            "conv4" => conv(
                name,
                [b, c[2], side[2], side[2]],
                [c[3], c[2] / 2, 3, 3],
                1,
                1,
                2,
            )?,
            "conv5" => conv(
                name,
                [b, c[3], side[2], side[2]],
                [c[4], c[3] / 2, 3, 3],
                1,
                1,
                2,
            )?,
            "lrn1" => {
                let x = input(&plane1, false)?;
                let g = random(&plane1, 4, 1.0)?;
                time_layer(&|x| lrn(x, LrnConfig::default()), &x, &g)?
            }
            "pool1" => {
                let x = input(&plane1, false)?;
                let g = random(&pooled1, 4, 1.0)?;
                time_layer(&|x| max_pool2d(x, PoolConfig::default()), &x, &g)?
            }
            "fc6" => fc(b, z.fc[0], z.fc[1], true)?,
            "fc7" => fc(b, z.fc[1], z.fc[2], true)?,
            "fc8" => fc(b, z.fc[2], z.fc[3], false)?,
            other => candle_core::bail!("OPS: unknown layer {other:?} (one of {names:?})"),
        };
        println!("layer {name} forward {f:.4}s backward {bw:.4}s");
    }
    Ok(())
}
