//! Timing of the custom CPU ops against candle's own (or our reference composites) at
//! AlexNet's full layer sizes, f32, best of three: LRN and 3/2 max-pool at conv1's
//! output (batch 128, 96×55×55), every conv layer at batch 32. Report only.
//!
//! `cargo bench --bench ops` (`OPS=lrn,pool,conv` picks some).

use std::time::Instant;

use candle_core::{Device, Result, Tensor, Var};
use pipeline::model::conv::{ConvParams, conv2d};
use pipeline::model::lrn::{lrn, lrn_composite};
use pipeline::model::max_pool::max_pool2d;
use pipeline::model::{LrnConfig, PoolConfig};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(shape: &[usize], seed: u64, scale: f32) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Best wall time of three runs of `f`, in seconds.
fn best(f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    let mut b = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        f()?;
        b = b.min(t.elapsed().as_secs_f64());
    }
    Ok(b)
}

/// Forward, and forward + backward of `sum(op(x) · g)` (so backward ≈ the difference).
fn forward_backward(
    op: &dyn Fn(&Tensor) -> Result<Tensor>,
    x: &Var,
    g: &Tensor,
) -> Result<(f64, f64)> {
    let forward = best(&mut || op(x.as_tensor()).map(|_| ()))?;
    let both = best(&mut || (op(x.as_tensor())? * g)?.sum_all()?.backward().map(|_| ()))?;
    Ok((forward, both))
}

fn lrn_bench() -> Result<()> {
    let cfg = LrnConfig::default();
    let shape = [128usize, 96, 55, 55];
    let x = Var::from_tensor(&random(&shape, 3, 2.0)?)?;
    let g = random(&shape, 4, 1.0)?;
    let (f, fb) = forward_backward(&|x| lrn(x, cfg), &x, &g)?;
    let (cf, cfb) = forward_backward(&|x| lrn_composite(x, cfg), &x, &g)?;
    println!(
        "lrn {shape:?}: forward custom {f:.3}s composite {cf:.3}s | forward+backward custom {fb:.3}s composite {cfb:.3}s"
    );
    Ok(())
}

fn pool_bench() -> Result<()> {
    let cfg = PoolConfig::default();
    let shape = [128usize, 96, 55, 55];
    let x = Var::from_tensor(&random(&shape, 1, 1.0)?)?;
    let g = random(&[128, 96, 27, 27], 2, 1.0)?;
    let (f, fb) = forward_backward(&|x| max_pool2d(x, cfg), &x, &g)?;
    // candle 0.11's own pooling has no usable backward: its forward only.
    let candle = best(&mut || x.as_tensor().max_pool2d_with_stride(3, 2).map(|_| ()))?;
    println!(
        "max-pool 3/2 {shape:?}: forward ours {f:.3}s candle {candle:.3}s | forward+backward ours {fb:.3}s"
    );
    Ok(())
}

fn conv_bench() -> Result<()> {
    let p = |stride, padding, groups| ConvParams {
        stride,
        padding,
        groups,
    };
    let layers: [(&str, [usize; 4], [usize; 4], ConvParams); 5] = [
        ("conv1", [32, 3, 224, 224], [96, 3, 11, 11], p(4, 2, 1)),
        ("conv2", [32, 96, 27, 27], [256, 48, 5, 5], p(1, 2, 2)),
        ("conv3", [32, 256, 13, 13], [384, 256, 3, 3], p(1, 1, 1)),
        ("conv4", [32, 384, 13, 13], [384, 192, 3, 3], p(1, 1, 2)),
        ("conv5", [32, 384, 13, 13], [256, 192, 3, 3], p(1, 1, 2)),
    ];
    for (name, xs, ks, p) in layers {
        let x0 = random(&xs, 1, 1.0)?;
        // conv1's input is the image batch: no gradient for it (as in training).
        let x = if name == "conv1" {
            x0.clone()
        } else {
            Var::from_tensor(&x0)?.as_tensor().clone()
        };
        let w = Var::from_tensor(&random(&ks, 2, 1.0)?)?;
        let ours = |x: &Tensor| conv2d(x, w.as_tensor(), p);
        let theirs = |x: &Tensor| x.conv2d(w.as_tensor(), p.padding, p.stride, 1, p.groups);
        let run = |f: &dyn Fn(&Tensor) -> Result<Tensor>| -> Result<(f64, f64)> {
            let forward = best(&mut || f(&x).map(|_| ()))?;
            let both = best(&mut || f(&x)?.sum_all()?.backward().map(|_| ()))?;
            Ok((forward, both))
        };
        let (of, ob) = run(&ours)?;
        let (tf, tb) = run(&theirs)?;
        println!(
            "{name}: forward ours {of:.3}s candle {tf:.3}s | forward+backward ours {ob:.3}s candle {tb:.3}s"
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let wanted = std::env::var("OPS").unwrap_or_else(|_| "lrn,pool,conv".into());
    for op in wanted.split(',') {
        match op.trim() {
            "lrn" => lrn_bench()?,
            "pool" => pool_bench()?,
            "conv" => conv_bench()?,
            other => candle_core::bail!("OPS: unknown op {other:?} (lrn, pool, conv)"),
        }
    }
    Ok(())
}
