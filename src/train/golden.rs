//! The candle AlexNet and the paper's SGD against PyTorch on the golden fixture that
//! `benches/torch_golden.py` writes (reduced width 0.0625, 95x95 inputs, 10 classes,
//! batch 4; PyTorch computed in float64, stored as float32): logits, loss, every
//! parameter gradient, and the weights and logits after two SGD steps.
//!
//! One implementation for every device and precision: `tests/model_golden.rs` runs it
//! on the CPU in f64 and f32, `pipeline check golden --device cuda` on a GPU in f32 and
//! bf16 (`benches/gpu/check.sh`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use super::sgd::PaperSgd;
use crate::model::{Kernels, ModelConfig, alexnet};
use crate::recipe::train::Precision;

/// The fixture shipped in the repository.
pub fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden/alexnet_w0.0625_s95.safetensors")
}

/// How one tensor compares: the worst error relative to the tensor's largest magnitude,
/// and the first element (if any) outside `atol * scale + rtol * |want| + slack`.
#[derive(Debug, Clone)]
pub struct GoldenRow {
    pub tensor: String,
    pub rel_err: f64,
    pub failure: Option<String>,
}

/// The tolerances of a check.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    pub rtol: f64,
    pub atol: f64,
}

impl Tolerance {
    /// f64: our ops reproduce PyTorch up to the fixture's f32 rounding; f32 (training's
    /// dtype, on every device): 1e-4 relative plus 1e-5 of each tensor's scale for
    /// entries near zero; bf16 (8-bit mantissa, forward and backward): 2 % plus 2 % of
    /// the scale.
    pub fn of(dtype: DType) -> Self {
        match dtype {
            DType::F64 => Self {
                rtol: 1e-5,
                atol: 1e-6,
            },
            DType::BF16 => Self {
                rtol: 2e-2,
                atol: 2e-2,
            },
            _ => Self {
                rtol: 1e-4,
                atol: 1e-5,
            },
        }
    }
}

struct Golden {
    t: HashMap<String, Tensor>,
    meta: HashMap<String, String>,
}

impl Golden {
    fn load(path: &Path) -> Result<Golden> {
        let bytes = std::fs::read(path).map_err(|e| {
            candle_core::Error::Msg(format!(
                "{}: {e} (run benches/torch_golden.py)",
                path.display()
            ))
        })?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(candle_core::Error::wrap)?;
        let meta = header.metadata().clone().unwrap_or_default();
        let t = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
        Ok(Golden { t, meta })
    }

    fn get(&self, name: &str) -> Result<&Tensor> {
        self.t
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("the fixture has no tensor {name}")))
    }

    fn meta<T: std::str::FromStr>(&self, key: &str) -> Result<T> {
        self.meta
            .get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| candle_core::Error::Msg(format!("the fixture has no metadata {key}")))
    }

    fn param_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .t
            .keys()
            .filter_map(|k| k.strip_prefix("weight.").map(String::from))
            .collect();
        v.sort();
        v
    }
}

fn compare(
    name: &str,
    got: &Tensor,
    want: &Tensor,
    tol: Tolerance,
    slack: Option<&[f64]>,
) -> Result<GoldenRow> {
    if got.dims() != want.dims() {
        candle_core::bail!(
            "{name}: shape {:?}, the fixture has {:?}",
            got.dims(),
            want.dims()
        )
    }
    let g = got.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let w = want.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let scale = w.iter().fold(0f64, |m, v| m.max(v.abs()));
    if scale == 0.0 {
        candle_core::bail!("{name}: the fixture's tensor is all zero")
    }
    let mut worst = 0f64;
    let mut failure = None;
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let err = (a - b).abs();
        let allowed = tol.atol * scale + tol.rtol * b.abs() + slack.map_or(0.0, |s| s[i]);
        if (err.is_nan() || err > allowed) && failure.is_none() {
            failure = Some(format!(
                "{name}[{i}]: got {a:e}, want {b:e} (scale {scale:e})"
            ));
        }
        worst = worst.max(if err.is_nan() {
            f64::INFINITY
        } else {
            err / scale
        });
    }
    Ok(GoldenRow {
        tensor: name.into(),
        rel_err: worst,
        failure,
    })
}

/// Runs the fixture at `path` on `device`: the parameters are held in `master` (f32, or
/// f64 for an f64 check), the network computes in `dtype` (f32, f64, or bf16 through
/// [`AlexNet::cast`](crate::model::AlexNet::cast), as `[train] precision = "bf16"` does).
pub fn check(
    path: &Path,
    device: &Device,
    dtype: DType,
    kernels: Kernels,
) -> Result<Vec<GoldenRow>> {
    let master = if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let tol = Tolerance::of(dtype);
    let g = Golden::load(path)?;
    let cfg = ModelConfig {
        width: g.meta("width")?,
        groups: g.meta("groups")?,
        kernels,
        ..Default::default()
    };
    let varmap = VarMap::new();
    let mut named = Vec::new();
    {
        let mut data = varmap.data().lock().expect("fresh VarMap lock");
        for name in g.param_names() {
            let var = Var::from_tensor(
                &g.get(&format!("weight.{name}"))?
                    .to_dtype(master)?
                    .to_device(device)?,
            )?;
            named.push((name.clone(), var.clone()));
            data.insert(name, var);
        }
    }
    let model = alexnet(
        &cfg,
        g.meta("input_size")?,
        g.meta("num_classes")?,
        VarBuilder::from_varmap(&varmap, master, device),
    )?;
    let x = g.get("input")?.to_dtype(dtype)?.to_device(device)?;
    let labels = g.get("labels")?.to_device(device)?;
    let logits_of = || -> Result<Tensor> { model.cast(dtype)?.forward(&x, None)?.to_dtype(master) };
    let mut rows = Vec::new();

    // Forward: logits and mean cross-entropy at the initial weights.
    let logits = logits_of()?;
    rows.push(compare("logits", &logits, g.get("logits")?, tol, None)?);
    let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
    rows.push(compare(
        "loss",
        &loss.reshape(1)?,
        &g.get("loss")?.reshape(1)?,
        tol,
        None,
    )?);

    // Backward: every parameter gradient.
    let grads = loss.backward()?;
    for (name, var) in &named {
        let got = grads
            .get(var.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg(format!("no gradient for {name}")))?;
        rows.push(compare(
            &format!("grad.{name}"),
            got,
            g.get(&format!("grad.{name}"))?,
            tol,
            None,
        )?);
    }

    // Two steps of the paper's SGD (the second from fresh gradients at the new weights).
    let mut opt = PaperSgd::new(named.clone(), g.meta("momentum")?, g.meta("weight_decay")?)?;
    let lr: f64 = g.meta("lr")?;
    opt.step(&grads, lr)?;
    for _ in 1..g.meta::<usize>("steps")? {
        let grads = candle_nn::loss::cross_entropy(&logits_of()?, &labels)?.backward()?;
        opt.step(&grads, lr)?;
    }
    for (name, var) in &named {
        let w0 = g.get(&format!("weight.{name}"))?.to_dtype(master)?;
        let delta = (var.as_tensor().to_device(&Device::Cpu)? - &w0)?;
        // In f32 the weights themselves carry the update only to within their own ulp
        // (w ~ 0.1, two steps move it ~1e-5): allow 2 ulps of |w| per element on top.
        let ulps = if master == DType::F32 {
            2.0 * f32::EPSILON as f64
        } else {
            0.0
        };
        let slack: Vec<f64> = w0
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?
            .iter()
            .map(|w| ulps * w.abs())
            .collect();
        rows.push(compare(
            &format!("delta2.{name}"),
            &delta,
            g.get(&format!("delta2.{name}"))?,
            tol,
            Some(&slack),
        )?);
    }
    rows.push(compare(
        "logits2",
        &logits_of()?,
        g.get("logits2")?,
        tol,
        None,
    )?);
    Ok(rows)
}

/// The dtype a `--precision` name stands for in the checks (f64 is a check-only choice).
pub fn check_dtype(precision: &str) -> std::result::Result<DType, String> {
    match precision {
        "f64" => Ok(DType::F64),
        other => toml::Value::String(other.into())
            .try_into::<Precision>()
            .map(Precision::dtype)
            .map_err(|_| format!("unknown precision {other:?}: use f32, bf16 or f64")),
    }
}
