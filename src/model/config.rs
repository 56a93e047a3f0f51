//! The `[model]` section of a recipe: every architectural knob of AlexNet, with the
//! paper's values as the one documented `Default` (PAPER.md, §3 and §5).

use serde::{Deserialize, Serialize};

/// AlexNet's architecture and initialisation (the `[model]` section of a TOML recipe).
///
/// `ModelConfig::default()` is the paper's network; every other value is a named,
/// documented departure from it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Width multiplier applied to every layer. 1.0 is the paper: conv maps
    /// 96-256-384-384-256 and 4096 units in fc6/fc7. Other values scale every conv and
    /// hidden fc layer; conv channel counts are rounded to a multiple of `groups`
    /// (at least `groups`), fc widths to at least 1. The classifier (fc8) always has
    /// `num_classes` outputs.
    pub width: f64,
    /// Number of groups in conv2, conv4 and conv5. 2 is the paper's two-GPU split
    /// (each half of those layers sees only the maps of its own GPU); 1 is the
    /// single-tower variant (torchvision's AlexNet). conv1 and conv3 always use 1.
    pub groups: usize,
    /// Dropout probability on the outputs of fc6 and fc7 (paper: 0.5). Inverted
    /// dropout: kept units are scaled by 1/(1-p) at train time, nothing at test time.
    pub dropout: f32,
    /// Local response normalisation after the ReLUs of conv1 and conv2.
    pub lrn: LrnConfig,
    /// Max-pooling after conv1, conv2 and conv5 (paper: overlapping 3x3, stride 2).
    pub pool: PoolConfig,
    /// Standard deviation of the zero-mean Gaussian every weight is drawn from
    /// (paper: 0.01, in every layer).
    pub init_std: f64,
    /// true (paper): biases of conv2, conv4, conv5, fc6 and fc7 start at 1, so the
    /// ReLUs start with positive inputs; conv1, conv3 and fc8 biases start at 0.
    /// false: every bias starts at 0.
    pub init_bias_one: bool,
    /// Which implementation of conv, LRN and max-pool runs: "custom" (our CPU ops on
    /// the CPU; our CUDA kernels and cuDNN on a GPU) or "reference" (compositions of
    /// candle ops, differentiated by candle, on any device: slower, and the oracle the
    /// custom ops are tested against). Both compute the same network.
    pub kernels: Kernels,
    /// The non-linearity after every conv layer and fc6/fc7: "relu" (paper §3.1) or
    /// "tanh", the saturating unit Figure 1 compares it against.
    pub activation: Activation,
    /// Multipliers of conv1..conv5's kernel counts on top of `width` (paper: all 1).
    /// The paper's one-GPU net (§3.5, footnote) is `groups = 1` with
    /// `[0.5, 0.5, 0.5, 0.5, 1.0]`: half the kernels in conv1-conv4, while conv5 and the
    /// fc layers keep their size so both nets have about the same parameter count.
    pub conv_scale: [f64; 5],
}

/// The non-linearity of the hidden layers (`[model] activation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// max(0, x): the paper's non-saturating unit.
    #[default]
    Relu,
    /// tanh(x): the saturating unit of Figure 1 (a candle op on every device).
    Tanh,
}

/// The implementation of the model's ops (`[model] kernels`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// Hand-written ops where the device has them (CPU: f32/f64; CUDA: f32/f64/bf16),
    /// the reference composition elsewhere.
    #[default]
    Custom,
    /// Compositions of candle ops on every device.
    Reference,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            width: 1.0,
            groups: 2,
            dropout: 0.5,
            lrn: LrnConfig::default(),
            pool: PoolConfig::default(),
            init_std: 0.01,
            init_bias_one: true,
            kernels: Kernels::Custom,
            activation: Activation::Relu,
            conv_scale: [1.0; 5],
        }
    }
}

/// Local response normalisation across channels (paper §3.3):
/// `b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LrnConfig {
    /// false removes both LRN layers (the ablation of §3.3); the other keys are then unused.
    pub enabled: bool,
    /// Additive constant in the denominator (paper: 2).
    pub k: f64,
    /// Number of adjacent channels summed over, centred on the channel itself
    /// (paper: 5; the window is i-n/2 ..= i+n/2 with integer division, so use an odd n).
    pub n: usize,
    /// Scale of the sum of squares (paper: 1e-4). NOT divided by n: PyTorch's
    /// `nn.LocalResponseNorm` and Caffe divide by n, so the same layer there has
    /// alpha = n * 1e-4 = 5e-4.
    pub alpha: f64,
    /// Exponent of the denominator (paper: 0.75).
    pub beta: f64,
}

impl Default for LrnConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            k: 2.0,
            n: 5,
            alpha: 1e-4,
            beta: 0.75,
        }
    }
}

/// Max-pooling window (no padding, windows that do not fit are dropped, like
/// PyTorch's `ceil_mode=False`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Side of the square window (paper: 3; z = s = 2 is the non-overlapping variant
    /// the paper compares against).
    pub size: usize,
    /// Step between windows (paper: 2, so neighbouring windows overlap by one row).
    pub stride: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self { size: 3, stride: 2 }
    }
}

impl ModelConfig {
    /// Whether both describe the same network (everything but `kernels`, which only
    /// chooses how it is computed): a run may resume with other kernels.
    pub fn same_network(&self, other: &ModelConfig) -> bool {
        ModelConfig {
            kernels: other.kernels,
            ..*self
        } == *other
    }

    /// Checks the values a recipe could get wrong, naming the offending key.
    pub fn validate(&self) -> Result<(), super::ModelError> {
        use super::ModelError::InvalidConfig;
        let bad = |key: &'static str, reason: String| Err(InvalidConfig { key, reason });
        if !(self.width.is_finite() && self.width > 0.0) {
            return bad(
                "model.width",
                format!("must be a positive number, got {}", self.width),
            );
        }
        if self.groups == 0 {
            return bad("model.groups", "must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(
                "model.dropout",
                format!("must be in [0, 1), got {}", self.dropout),
            );
        }
        if self.lrn.n == 0 {
            return bad("model.lrn.n", "must be at least 1".into());
        }
        if !(self.lrn.k > 0.0 && self.lrn.alpha >= 0.0 && self.lrn.beta >= 0.0) {
            return bad(
                "model.lrn",
                format!("needs k > 0, alpha >= 0, beta >= 0, got {:?}", self.lrn),
            );
        }
        if self.pool.size == 0 || self.pool.stride == 0 {
            return bad(
                "model.pool",
                format!("size and stride must be >= 1, got {:?}", self.pool),
            );
        }
        if let Some(scale) = self
            .conv_scale
            .iter()
            .find(|s| !(s.is_finite() && **s > 0.0))
        {
            return bad(
                "model.conv_scale",
                format!("every multiplier must be a positive number, got {scale}"),
            );
        }
        if !(self.init_std.is_finite() && self.init_std >= 0.0) {
            return bad(
                "model.init_std",
                format!("must be >= 0, got {}", self.init_std),
            );
        }
        Ok(())
    }
}
