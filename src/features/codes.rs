//! Short binary codes for fc7 vectors (beyond the paper: §6.1 suggests "training an
//! auto-encoder to compress these vectors to short binary codes" for efficient
//! retrieval). Hinton & Salakhutdinov's semantic hashing made the bottleneck binary with
//! noisy sigmoids; here it is **sign + straight-through estimator**:
//!
//! ```text
//! x̂ = (x − mean) / scale                     standardised features (D)
//! h = relu(enc1 x̂)                            D → hidden
//! t = tanh(enc2 h)                            hidden → bits, in (−1, 1)
//! b = t + (sign(t) − t).detach()              forward: ±1; backward: identity into tanh
//! y = dec2 relu(dec1 b)                       bits → hidden → D
//! loss = mean (y − x̂)²                        MSE reconstruction, AdamW
//! ```
//!
//! The decoder only ever sees ±1 codes, so the code alone must carry what is needed to
//! rebuild the vector; similar vectors get codes a few bits apart, which Hamming search
//! exploits. A code is bit j = (enc2 h)_j ≥ 0, packed least-significant bit first
//! (bit j in byte j / 8, position j % 8).
//!
//! Standardisation is per-dimension centring with **one global scale** (the RMS of the
//! centred values) by default: that keeps fc7's Euclidean geometry — the distance the
//! codes should preserve — up to a constant, where per-dimension scaling would magnify
//! rarely active units. [`Standardise::PerDimension`] is the textbook alternative.
//!
//! Every initial weight is drawn from our own `ChaCha8Rng` (candle's CPU RNG cannot be
//! seeded in 0.11), so a seed gives the same codes on every device.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{AdamW, Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Uniform};
use serde::{Deserialize, Serialize};

use super::FeaturesError;
use super::reader::FeatureTable;
use crate::dataset::atomic;

/// Bumped when the saved codes model changes; loading refuses other versions.
pub const CODES_FORMAT_VERSION: u32 = 1;
/// Files of a saved codes model directory (the JSON is written last).
pub const WEIGHTS_FILE: &str = "codes.safetensors";
pub const CONFIG_FILE: &str = "codes.json";

/// How the features are standardised before the auto-encoder sees them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Standardise {
    /// Centre each dimension; divide everything by one scale (keeps Euclidean geometry).
    #[default]
    Global,
    /// Centre and divide each dimension by its own standard deviation.
    PerDimension,
}

/// How to train the auto-encoder. `Default` is the setting the tests and the sample use.
#[derive(Clone, Debug)]
pub struct CodeOptions {
    /// Width of the encoder's and the decoder's hidden layer.
    pub hidden: usize,
    /// Passes over the training features.
    pub epochs: usize,
    /// Vectors per AdamW step.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    pub standardise: Standardise,
    /// Seed of the initial weights and of the batch order.
    pub seed: u64,
    /// Where to train (the features are copied there once).
    pub device: Device,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

impl Default for CodeOptions {
    fn default() -> Self {
        Self {
            hidden: 1024,
            epochs: 50,
            batch_size: 128,
            lr: 1e-3,
            weight_decay: 1e-4,
            standardise: Standardise::Global,
            seed: 0,
            device: Device::Cpu,
            progress: false,
        }
    }
}

/// What a saved codes model is (`codes.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeConfig {
    pub format_version: u32,
    /// Feature width the model encodes.
    pub dim: usize,
    pub hidden: usize,
    /// Code length in bits (a multiple of 8).
    pub bits: usize,
    pub standardise: Standardise,
    /// How it was trained.
    pub training: CodeTraining,
}

/// The training run a codes model came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeTraining {
    pub rows: usize,
    pub epochs: usize,
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
    /// Mean reconstruction loss of the first and the last epoch (standardised units).
    pub first_epoch_loss: f64,
    pub last_epoch_loss: f64,
    /// Free-form provenance the caller sets (e.g. the features file trained on).
    pub source: String,
}

/// Parameter names and shapes, in a fixed order (also the initial draw order).
fn param_shapes(dim: usize, hidden: usize, bits: usize) -> [(&'static str, Vec<usize>); 8] {
    [
        ("enc1.weight", vec![hidden, dim]),
        ("enc1.bias", vec![hidden]),
        ("enc2.weight", vec![bits, hidden]),
        ("enc2.bias", vec![bits]),
        ("dec1.weight", vec![hidden, bits]),
        ("dec1.bias", vec![hidden]),
        ("dec2.weight", vec![dim, hidden]),
        ("dec2.bias", vec![dim]),
    ]
}

/// Names of the standardisation tensors in the weights file.
const MEAN: &str = "standardise.mean";
const SCALE: &str = "standardise.scale";

/// A trained encoder/decoder with its standardisation. Cloning shares the weights.
#[derive(Clone)]
pub struct CodeModel {
    pub config: CodeConfig,
    /// The directory it was loaded from or saved to (for error messages).
    pub path: Option<PathBuf>,
    enc1: Linear,
    enc2: Linear,
    dec1: Linear,
    dec2: Linear,
    /// (1, D) each.
    mean: Tensor,
    scale: Tensor,
    device: Device,
}

/// The straight-through binariser: forward `sign(t)` as ±1 (0 maps to +1), backward the
/// identity, so the gradient reaches `t` as if no rounding happened.
pub fn binarize_ste(t: &Tensor) -> candle_core::Result<Tensor> {
    let sign = t.ge(0.0)?.to_dtype(t.dtype())?.affine(2.0, -1.0)?;
    t + (sign - t)?.detach()
}

impl CodeModel {
    pub fn dim(&self) -> usize {
        self.config.dim
    }

    pub fn bits(&self) -> usize {
        self.config.bits
    }

    /// Bytes per packed code.
    pub fn code_bytes(&self) -> usize {
        self.config.bits / 8
    }

    fn name(&self) -> String {
        self.path.as_ref().map_or_else(
            || "the codes model".into(),
            |p| format!("codes model {}", p.display()),
        )
    }

    fn standardised(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.broadcast_sub(&self.mean)?.broadcast_div(&self.scale)
    }

    /// Encoder pre-activations (before tanh): the code's bits are their signs.
    fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.enc2
            .forward(&self.enc1.forward(&self.standardised(x)?)?.relu()?)
    }

    /// Standardised reconstruction and target, through the binary bottleneck.
    fn reconstruct(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let target = self.standardised(x)?;
        let t = self
            .enc2
            .forward(&self.enc1.forward(&target)?.relu()?)?
            .tanh()?;
        let b = binarize_ste(&t)?;
        let y = self.dec2.forward(&self.dec1.forward(&b)?.relu()?)?;
        Ok((y, target))
    }

    /// Packed codes of `n` feature vectors (row-major `n × dim`): `n × bits/8` bytes.
    pub fn encode(&self, features: &[f32], n: usize) -> Result<Vec<u8>, FeaturesError> {
        if features.len() != n * self.dim() {
            return Err(FeaturesError::mismatch(
                "encode",
                self.name(),
                format!("dim {}", self.dim()),
                format!("the features given ({n} rows)"),
                format!("{} values ≠ {n} × {}", features.len(), self.dim()),
            ));
        }
        const ROWS_PER_PASS: usize = 4096;
        let mut codes = Vec::with_capacity(n * self.code_bytes());
        for chunk in features.chunks(ROWS_PER_PASS * self.dim()) {
            let rows = chunk.len() / self.dim();
            let logits = Tensor::from_slice(chunk, (rows, self.dim()), &self.device)
                .and_then(|x| self.logits(&x))
                .and_then(|l| l.ge(0.0))
                .and_then(|b| b.flatten_all())
                .and_then(|b| b.to_vec1::<u8>())
                .map_err(FeaturesError::candle(format!(
                    "encode with {}",
                    self.name()
                )))?;
            codes.extend(logits.chunks_exact(self.bits()).flat_map(pack_bits));
        }
        Ok(codes)
    }

    /// Codes for every row of a features table; a width mismatch names both files.
    pub fn encode_table(&self, table: &FeatureTable) -> Result<Vec<u8>, FeaturesError> {
        self.check_table(table)?;
        self.encode(&table.features, table.len())
    }

    /// Checks that `table`'s features are as wide as this model expects.
    pub fn check_table(&self, table: &FeatureTable) -> Result<(), FeaturesError> {
        if table.dim != self.dim() {
            return Err(FeaturesError::mismatch(
                "feature width",
                format!("features file {}", table.path.display()),
                format!("dim {}", table.dim),
                self.name(),
                format!("dim {}", self.dim()),
            ));
        }
        Ok(())
    }

    /// Mean reconstruction loss (standardised units) over `n` vectors.
    pub fn reconstruction_loss(&self, features: &[f32], n: usize) -> Result<f64, FeaturesError> {
        let x = Tensor::from_slice(features, (n, self.dim()), &self.device)
            .map_err(FeaturesError::candle("reconstruction loss"))?;
        let loss = self
            .reconstruct(&x)
            .and_then(|(y, target)| candle_nn::loss::mse(&y, &target))
            .and_then(|l| l.to_scalar::<f32>())
            .map_err(FeaturesError::candle("reconstruction loss"))?;
        Ok(loss as f64)
    }

    /// Saves into directory `dir` (created if needed): `codes.safetensors` (weights and
    /// standardisation), then `codes.json` (the config), each written atomically.
    pub fn save(&mut self, dir: &Path) -> Result<(), FeaturesError> {
        std::fs::create_dir_all(dir).map_err(|e| FeaturesError::io(dir, e))?;
        let weights = dir.join(WEIGHTS_FILE);
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (name, layer) in [
            ("enc1", &self.enc1),
            ("enc2", &self.enc2),
            ("dec1", &self.dec1),
            ("dec2", &self.dec2),
        ] {
            tensors.insert(format!("{name}.weight"), layer.weight().clone());
            tensors.insert(
                format!("{name}.bias"),
                layer.bias().expect("every layer has a bias").clone(),
            );
        }
        tensors.insert(
            MEAN.into(),
            self.mean
                .squeeze(0)
                .map_err(FeaturesError::candle("save codes"))?,
        );
        tensors.insert(
            SCALE.into(),
            self.scale
                .squeeze(0)
                .map_err(FeaturesError::candle("save codes"))?,
        );
        let temp = atomic::temp_path(&weights);
        candle_core::safetensors::save(&tensors, &temp)
            .map_err(FeaturesError::candle(format!("save {}", weights.display())))?;
        atomic::commit(&temp, &weights).map_err(|e| FeaturesError::io(&weights, e))?;
        let json =
            serde_json::to_string_pretty(&self.config).expect("a codes config always serialises");
        let config = dir.join(CONFIG_FILE);
        atomic::write_file(&config, json.as_bytes()).map_err(|e| FeaturesError::io(&config, e))?;
        self.path = Some(dir.to_path_buf());
        Ok(())
    }

    /// Loads a directory written by [`save`](Self::save) onto `device`. Errors name the
    /// file and, for a wrong or missing tensor, the tensor.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, FeaturesError> {
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| FeaturesError::io(&config_path, e))?;
        let config: CodeConfig =
            serde_json::from_str(&text).map_err(|e| FeaturesError::Metadata {
                path: config_path.display().to_string(),
                key: "codes config".into(),
                reason: e.to_string(),
            })?;
        if config.format_version != CODES_FORMAT_VERSION {
            return Err(FeaturesError::Version {
                path: config_path.display().to_string(),
                found: config.format_version.to_string(),
                supported: CODES_FORMAT_VERSION,
            });
        }
        if config.bits == 0 || !config.bits.is_multiple_of(8) {
            return Err(FeaturesError::Metadata {
                path: config_path.display().to_string(),
                key: "bits".into(),
                reason: format!("{} is not a positive multiple of 8", config.bits),
            });
        }
        let weights = dir.join(WEIGHTS_FILE);
        let shown = weights.display().to_string();
        let tensors = candle_core::safetensors::load(&weights, device)
            .map_err(FeaturesError::candle(format!("load {shown}")))?;
        let get = |name: &str, shape: &[usize]| -> Result<Tensor, FeaturesError> {
            let t = tensors.get(name).ok_or_else(|| FeaturesError::Metadata {
                path: shown.clone(),
                key: name.into(),
                reason: "tensor missing".into(),
            })?;
            if t.dims() != shape {
                return Err(FeaturesError::mismatch(
                    format!("{shown}: tensor {name}"),
                    "the file",
                    format!("{:?}", t.dims()),
                    CONFIG_FILE,
                    format!("{shape:?}"),
                ));
            }
            t.to_dtype(DType::F32)
                .map_err(FeaturesError::candle(format!("load {shown}: {name}")))
        };
        let mut params = HashMap::new();
        for (name, shape) in param_shapes(config.dim, config.hidden, config.bits) {
            params.insert(name.to_string(), get(name, &shape)?);
        }
        let mean = get(MEAN, &[config.dim])?;
        let scale_len = match config.standardise {
            Standardise::Global => 1,
            Standardise::PerDimension => config.dim,
        };
        let scale = get(SCALE, &[scale_len])?;
        let mut model = build(config, params, mean, scale, device)
            .map_err(FeaturesError::candle(format!("load {shown}")))?;
        model.path = Some(dir.to_path_buf());
        Ok(model)
    }
}

/// Packs ±-decisions (1 = bit set) least-significant bit first.
fn pack_bits(bits: &[u8]) -> Vec<u8> {
    bits.chunks(8)
        .map(|byte| {
            byte.iter()
                .enumerate()
                .fold(0u8, |acc, (i, &b)| acc | ((b & 1) << i))
        })
        .collect()
}

fn build(
    config: CodeConfig,
    mut params: HashMap<String, Tensor>,
    mean: Tensor,
    scale: Tensor,
    device: &Device,
) -> candle_core::Result<CodeModel> {
    let mut take = |name: &str| params.remove(name).expect("every parameter was checked");
    let mut linear = |name: &str| {
        Linear::new(
            take(&format!("{name}.weight")),
            Some(take(&format!("{name}.bias"))),
        )
    };
    Ok(CodeModel {
        enc1: linear("enc1"),
        enc2: linear("enc2"),
        dec1: linear("dec1"),
        dec2: linear("dec2"),
        mean: mean.unsqueeze(0)?,
        scale: scale.unsqueeze(0)?,
        config,
        path: None,
        device: device.clone(),
    })
}

/// Per-dimension mean and the scale(s) of `n × dim` features (f64 sums).
fn standardisation(
    features: &[f32],
    n: usize,
    dim: usize,
    how: Standardise,
) -> (Vec<f32>, Vec<f32>) {
    let mut mean = vec![0f64; dim];
    let mut sq = vec![0f64; dim];
    for row in features.chunks_exact(dim) {
        for (j, &v) in row.iter().enumerate() {
            mean[j] += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    for row in features.chunks_exact(dim) {
        for (j, &v) in row.iter().enumerate() {
            sq[j] += (v as f64 - mean[j]).powi(2);
        }
    }
    // A constant dimension (a unit that never fires) gets scale 1: it stays at 0.
    let floor = |s: f64| if s > 1e-12 { s } else { 1.0 };
    let scale = match how {
        Standardise::Global => {
            vec![floor((sq.iter().sum::<f64>() / (n * dim) as f64).sqrt()) as f32]
        }
        Standardise::PerDimension => sq
            .iter()
            .map(|s| floor((s / n as f64).sqrt()) as f32)
            .collect(),
    };
    (mean.into_iter().map(|m| m as f32).collect(), scale)
}

/// Trains an auto-encoder with a `bits`-wide binary bottleneck on `n` feature vectors
/// (row-major `n × dim`) and returns it with its training record.
///
/// Fails when `bits` is not a positive multiple of 8, an option is 0, the buffer does
/// not hold `n × dim` values, or a candle op fails (the error says which step).
pub fn train_codes(
    features: &[f32],
    n: usize,
    dim: usize,
    bits: usize,
    options: &CodeOptions,
    source: &str,
) -> Result<CodeModel, FeaturesError> {
    if bits == 0 || !bits.is_multiple_of(8) {
        return Err(FeaturesError::InvalidOption {
            key: "bits",
            reason: format!("must be a positive multiple of 8, got {bits}"),
        });
    }
    for (key, value) in [
        ("hidden", options.hidden),
        ("epochs", options.epochs),
        ("batch_size", options.batch_size),
        ("rows", n),
        ("dim", dim),
    ] {
        if value == 0 {
            return Err(FeaturesError::InvalidOption {
                key,
                reason: "must be at least 1".into(),
            });
        }
    }
    if features.len() != n * dim {
        return Err(FeaturesError::mismatch(
            "train-codes",
            format!("{n} rows × dim {dim}"),
            n * dim,
            "the features buffer",
            features.len(),
        ));
    }
    let device = &options.device;
    let err = |what: &str| FeaturesError::candle(format!("train-codes: {what}"));

    // Initial weights: U(−1/√fan_in, 1/√fan_in), biases 0, drawn in param_shapes order.
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().expect("fresh VarMap lock");
        for (name, shape) in param_shapes(dim, options.hidden, bits) {
            let count: usize = shape.iter().product();
            let values: Vec<f32> = if name.ends_with(".weight") {
                let bound = 1.0 / (shape[1] as f32).sqrt();
                let uniform = Uniform::new(-bound, bound).expect("a positive bound");
                (0..count).map(|_| uniform.sample(&mut rng)).collect()
            } else {
                vec![0.0; count]
            };
            let t = Tensor::from_vec(values, shape.as_slice(), device)
                .map_err(err("initial weights"))?;
            data.insert(
                name.to_string(),
                Var::from_tensor(&t).map_err(err("initial weights"))?,
            );
        }
    }
    let (mean, scale) = standardisation(features, n, dim, options.standardise);
    let scale_len = scale.len();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let mut params = HashMap::new();
    for (name, shape) in param_shapes(dim, options.hidden, bits) {
        params.insert(
            name.to_string(),
            vb.get(shape.as_slice(), name).map_err(err("parameters"))?,
        );
    }
    let config = CodeConfig {
        format_version: CODES_FORMAT_VERSION,
        dim,
        hidden: options.hidden,
        bits,
        standardise: options.standardise,
        training: CodeTraining {
            rows: n,
            epochs: options.epochs,
            steps: 0,
            batch_size: options.batch_size,
            lr: options.lr,
            weight_decay: options.weight_decay,
            seed: options.seed,
            first_epoch_loss: f64::NAN,
            last_epoch_loss: f64::NAN,
            source: source.into(),
        },
    };
    let mean = Tensor::from_vec(mean, dim, device).map_err(err("standardisation"))?;
    let scale = Tensor::from_vec(scale, scale_len, device).map_err(err("standardisation"))?;
    let mut model = build(config, params, mean, scale, device).map_err(err("model"))?;

    // The whole training set lives on the device; batches are gathered by index.
    let data = Tensor::from_slice(features, (n, dim), device).map_err(err("features tensor"))?;
    let mut optimiser = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: options.lr,
            weight_decay: options.weight_decay,
            ..Default::default()
        },
    )
    .map_err(err("optimiser"))?;
    let batch = options.batch_size.min(n);
    let steps_per_epoch = n.div_ceil(batch);
    let bar = options
        .progress
        .then(|| crate::progress::bar((options.epochs * steps_per_epoch) as u64, "steps"));
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut epoch_losses = Vec::with_capacity(options.epochs);
    for epoch in 0..options.epochs {
        order.shuffle(&mut rng);
        let mut sum = 0f64;
        for (step, rows) in order.chunks(batch).enumerate() {
            // forward backward update
            let context = || format!("train-codes: epoch {epoch} step {step}");
            let ids = Tensor::from_slice(rows, rows.len(), device)
                .map_err(FeaturesError::candle(context()))?;
            let loss = data
                .index_select(&ids, 0)
                .and_then(|x| model.reconstruct(&x))
                .and_then(|(y, target)| candle_nn::loss::mse(&y, &target))
                .map_err(FeaturesError::candle(context()))?;
            optimiser
                .backward_step(&loss)
                .map_err(FeaturesError::candle(context()))?;
            // Sync point with the device: one scalar per step for the epoch's mean loss.
            sum += loss
                .to_scalar::<f32>()
                .map_err(FeaturesError::candle(context()))? as f64
                * rows.len() as f64;
            if let Some(bar) = &bar {
                bar.inc(1);
            }
        }
        let epoch_loss = sum / n as f64;
        if let Some(bar) = &bar {
            bar.set_message(format!("loss {epoch_loss:.4}"));
        }
        epoch_losses.push(epoch_loss);
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    if !epoch_losses.iter().all(|l| l.is_finite()) {
        return Err(FeaturesError::InvalidOption {
            key: "lr",
            reason: format!(
                "train-codes diverged (losses per epoch {epoch_losses:?}); try a lower learning rate than {}",
                options.lr
            ),
        });
    }
    let training = &mut model.config.training;
    training.steps = options.epochs * steps_per_epoch;
    training.first_epoch_loss = epoch_losses[0];
    training.last_epoch_loss = *epoch_losses.last().expect("epochs >= 1");
    Ok(model)
}
