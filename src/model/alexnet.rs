//! The network of paper §3 / Figure 2, built from a [`ModelConfig`].
//!
//! One table, [`param_specs`], lists every parameter with its path, shape and initial
//! distribution; the builder, the initialiser and [`parameter_count`] all read it, so
//! they cannot disagree.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::ModelError;
use super::config::{Activation, Kernels, LrnConfig, ModelConfig, PoolConfig};
use super::conv::{Conv2d, ConvParams};
use super::dropout::{DropoutRng, dropout};
use super::linear::Linear;
use super::lrn::{lrn, lrn_composite};
use super::max_pool::{max_pool2d, max_pool2d_reference};

/// Which activations [`AlexNet::forward_features`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureLayer {
    /// fc6 after its ReLU (4096-d at width 1).
    Fc6,
    /// fc7 after its ReLU: the "last hidden layer" of §6.1 used for retrieval.
    Fc7,
    /// fc8: the logits, before softmax.
    Fc8,
}

/// How a parameter starts out (paper §5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamInit {
    /// Zero-mean Gaussian with this standard deviation (every weight).
    Normal { std: f64 },
    /// Every entry equal to this value (biases: 0 or 1).
    Constant(f64),
}

/// One learned tensor: its path (`conv2.weight`), shape and initial distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: ParamInit,
}

/// The fixed part of a conv layer: the paper's channel count at width 1, and whether the
/// layer is split into `cfg.groups` towers and starts its bias at 1.
struct ConvLayer {
    name: &'static str,
    base_out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    grouped: bool,
    bias_one: bool,
}

/// Paper §3.5 / Figure 2. conv3 takes all maps of conv2 (one group); conv2/4/5 are split.
#[rustfmt::skip]
const CONVS: [ConvLayer; 5] = [
    ConvLayer { name: "conv1", base_out: 96,  kernel: 11, stride: 4, padding: 2, grouped: false, bias_one: false },
    ConvLayer { name: "conv2", base_out: 256, kernel: 5,  stride: 1, padding: 2, grouped: true,  bias_one: true },
    ConvLayer { name: "conv3", base_out: 384, kernel: 3,  stride: 1, padding: 1, grouped: false, bias_one: false },
    ConvLayer { name: "conv4", base_out: 384, kernel: 3,  stride: 1, padding: 1, grouped: true,  bias_one: true },
    ConvLayer { name: "conv5", base_out: 256, kernel: 3,  stride: 1, padding: 1, grouped: true,  bias_one: true },
];
/// Hidden fc width at width 1 (fc6, fc7).
const FC_HIDDEN: usize = 4096;

/// Conv channel count at `width`, rounded to a multiple of `groups` (at least `groups`).
fn conv_channels(base: usize, width: f64, groups: usize) -> usize {
    let g = groups as f64;
    (((base as f64 * width) / g).round() as usize).max(1) * groups
}

/// Side of the feature map after conv5's pool, or the layer at which it vanishes.
fn final_side(cfg: &ModelConfig, input_size: usize) -> std::result::Result<usize, &'static str> {
    let conv = |side: usize, l: &ConvLayer| {
        let padded = side + 2 * l.padding;
        if padded < l.kernel {
            None
        } else {
            Some((padded - l.kernel) / l.stride + 1)
        }
    };
    let pool = |side: usize, p: PoolConfig| {
        if side < p.size {
            None
        } else {
            Some((side - p.size) / p.stride + 1)
        }
    };
    let mut s = input_size;
    for (i, l) in CONVS.iter().enumerate() {
        s = conv(s, l).ok_or(l.name)?;
        // Pools follow conv1, conv2 and conv5.
        if matches!(i, 0 | 1 | 4) {
            s = pool(s, cfg.pool).ok_or(["pool1", "pool2", "", "", "pool5"][i])?;
        }
    }
    if s == 0 { Err("pool5") } else { Ok(s) }
}

/// Every parameter of the network in a fixed order (conv1..conv5, fc6..fc8; weight then
/// bias), which is also the order [`init_paper`](super::init_paper) draws them in.
///
/// Fails with [`ModelError::InvalidConfig`] or [`ModelError::InputTooSmall`]; a recipe
/// can be checked with this (typed) before any tensor is made.
pub fn param_specs(
    cfg: &ModelConfig,
    input_size: usize,
    num_classes: usize,
) -> std::result::Result<Vec<ParamSpec>, ModelError> {
    cfg.validate()?;
    if num_classes == 0 {
        return Err(ModelError::InvalidConfig {
            key: "num_classes",
            reason: "must be at least 1".into(),
        });
    }
    let side = final_side(cfg, input_size).map_err(|layer| {
        let min_input = (1..4096).find(|&s| final_side(cfg, s).is_ok()).unwrap_or(0);
        ModelError::InputTooSmall {
            input_size,
            layer,
            min_input,
        }
    })?;
    let bias = |one: bool| ParamInit::Constant(if one && cfg.init_bias_one { 1.0 } else { 0.0 });
    let normal = ParamInit::Normal { std: cfg.init_std };
    let mut specs = Vec::with_capacity(16);
    let mut c_in = 3;
    for (l, scale) in CONVS.iter().zip(cfg.conv_scale) {
        let groups = if l.grouped { cfg.groups } else { 1 };
        let c_out = conv_channels(l.base_out, cfg.width * scale, cfg.groups);
        specs.push(ParamSpec {
            name: format!("{}.weight", l.name),
            shape: vec![c_out, c_in / groups, l.kernel, l.kernel],
            init: normal,
        });
        specs.push(ParamSpec {
            name: format!("{}.bias", l.name),
            shape: vec![c_out],
            init: bias(l.bias_one),
        });
        c_in = c_out;
    }
    let hidden = ((FC_HIDDEN as f64 * cfg.width).round() as usize).max(1);
    let fcs = [
        ("fc6", c_in * side * side, hidden, true),
        ("fc7", hidden, hidden, true),
        ("fc8", hidden, num_classes, false),
    ];
    for (name, fan_in, fan_out, one) in fcs {
        specs.push(ParamSpec {
            name: format!("{name}.weight"),
            shape: vec![fan_out, fan_in],
            init: normal,
        });
        specs.push(ParamSpec {
            name: format!("{name}.bias"),
            shape: vec![fan_out],
            init: bias(one),
        });
    }
    Ok(specs)
}

/// Number of learned scalars (60,965,224 for the paper's network on 224x224 inputs
/// with 1000 classes).
pub fn parameter_count(
    cfg: &ModelConfig,
    input_size: usize,
    num_classes: usize,
) -> std::result::Result<usize, ModelError> {
    Ok(param_specs(cfg, input_size, num_classes)?
        .iter()
        .map(|p| p.shape.iter().product::<usize>())
        .sum())
}

/// One layer's learned tensors: `weight` is `(c_out, c_in/groups, k, k)` for a conv
/// (`conv` holds its stride, padding and groups) and `(out, in)` for a fully connected
/// layer, PyTorch's layouts; fc6 reads conv5's pooled maps flattened in (c, y, x) order.
#[derive(Debug, Clone, Copy)]
pub struct LayerParams<'a> {
    pub name: &'static str,
    pub weight: &'a Tensor,
    pub bias: &'a Tensor,
    pub conv: Option<ConvParams>,
}

/// AlexNet: five conv layers and three fully connected ones.
///
/// Ops (`[model] kernels = "custom"`): on the CPU (f32/f64) every layer is one of this
/// module's custom ops — conv + bias + ReLU ([`Conv2d::forward_relu`]), LRN, max-pool,
/// fc + bias (+ ReLU) — each with a hand-written backward; on CUDA LRN and max-pool run
/// our kernels, conv runs cuDNN (`cudnn` builds) and fc candle's cuBLAS matmul. With
/// `kernels = "reference"`, and wherever no custom op exists, conv, LRN and max-pool are
/// the reference composites of candle ops.
/// The image batch is not a `Var`, so no gradient is computed for it: candle's own conv
/// would compute (and discard) a full `conv_transpose2d` for conv1's input; ours checks
/// `Tensor::track_op` and skips it.
#[derive(Debug, Clone)]
pub struct AlexNet {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    conv4: Conv2d,
    conv5: Conv2d,
    fc6: Linear,
    fc7: Linear,
    fc8: Linear,
    lrn: LrnConfig,
    pool: PoolConfig,
    dropout: f32,
    kernels: Kernels,
    activation: Activation,
    input_size: usize,
}

/// Builds AlexNet for `input_size`x`input_size` RGB images and `num_classes` outputs,
/// taking every parameter from `vb` by path (`conv1.weight` … `fc8.bias`).
///
/// The VarBuilder must already hold every parameter (from [`init_paper`](super::init_paper)
/// or a checkpoint): a missing one is [`ModelError::MissingParameter`] rather than
/// a silent default initialisation. Also fails when the config is invalid or the input
/// is too small for the conv/pool stack ([`ModelError::InputTooSmall`]).
pub fn alexnet(
    cfg: &ModelConfig,
    input_size: usize,
    num_classes: usize,
    vb: VarBuilder,
) -> Result<AlexNet> {
    let specs = param_specs(cfg, input_size, num_classes)?;
    let get = |name: &str| -> Result<Tensor> {
        let spec = specs
            .iter()
            .find(|s| s.name == name)
            .expect("name comes from CONVS/fc list");
        if !vb.contains_tensor(name) {
            return Err(ModelError::MissingParameter {
                name: name.into(),
                shape: spec.shape.clone(),
            }
            .into());
        }
        vb.get(spec.shape.as_slice(), name)
    };
    let conv = |i: usize| -> Result<Conv2d> {
        let l = &CONVS[i];
        let params = ConvParams {
            stride: l.stride,
            padding: l.padding,
            groups: if l.grouped { cfg.groups } else { 1 },
        };
        Ok(Conv2d::new(
            get(&format!("{}.weight", l.name))?,
            get(&format!("{}.bias", l.name))?,
            params,
        ))
    };
    let linear = |name: &str| -> Result<Linear> {
        Ok(Linear::new(
            get(&format!("{name}.weight"))?,
            get(&format!("{name}.bias"))?,
        ))
    };
    Ok(AlexNet {
        conv1: conv(0)?,
        conv2: conv(1)?,
        conv3: conv(2)?,
        conv4: conv(3)?,
        conv5: conv(4)?,
        fc6: linear("fc6")?,
        fc7: linear("fc7")?,
        fc8: linear("fc8")?,
        lrn: cfg.lrn,
        pool: cfg.pool,
        dropout: cfg.dropout,
        kernels: cfg.kernels,
        activation: cfg.activation,
        input_size,
    })
}

impl AlexNet {
    /// Logits `(batch, num_classes)` for images `(batch, 3, input_size, input_size)`.
    ///
    /// `dropout`: `Some(rng)` is training mode (dropout on fc6/fc7 drawn from `rng`);
    /// `None` is eval mode (every unit, no scaling: dropout is inverted at train time).
    pub fn forward(&self, x: &Tensor, dropout: Option<&mut DropoutRng>) -> Result<Tensor> {
        self.run(x, FeatureLayer::Fc8, dropout)
    }

    /// Eval-mode activations of fc6/fc7 (after ReLU) or fc8 (logits).
    pub fn forward_features(&self, x: &Tensor, layer: FeatureLayer) -> Result<Tensor> {
        self.run(x, layer, None)
    }

    /// Every layer's parameters in forward order (conv1..conv5, fc6..fc8), for writing
    /// them out in another framework's layout.
    pub fn layers(&self) -> Vec<LayerParams<'_>> {
        fn conv<'a>(name: &'static str, c: &'a Conv2d) -> LayerParams<'a> {
            LayerParams {
                name,
                weight: c.weight(),
                bias: c.bias(),
                conv: Some(c.params()),
            }
        }
        fn linear<'a>(name: &'static str, l: &'a Linear) -> LayerParams<'a> {
            LayerParams {
                name,
                weight: l.weight(),
                bias: l.bias(),
                conv: None,
            }
        }
        vec![
            conv("conv1", &self.conv1),
            conv("conv2", &self.conv2),
            conv("conv3", &self.conv3),
            conv("conv4", &self.conv4),
            conv("conv5", &self.conv5),
            linear("fc6", &self.fc6),
            linear("fc7", &self.fc7),
            linear("fc8", &self.fc8),
        ]
    }

    /// The LRN after conv1 and conv2.
    pub fn lrn_config(&self) -> LrnConfig {
        self.lrn
    }

    /// The max-pool after conv1, conv2 and conv5.
    pub fn pool_config(&self) -> PoolConfig {
        self.pool
    }

    /// Dropout probability on fc6's and fc7's outputs (training only).
    pub fn dropout_probability(&self) -> f32 {
        self.dropout
    }

    /// Input side this network was built for.
    pub fn input_size(&self) -> usize {
        self.input_size
    }

    fn run(
        &self,
        x: &Tensor,
        upto: FeatureLayer,
        mut rng: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        match x.dims() {
            &[_, 3, h, w] if h == self.input_size && w == self.input_size => {}
            d => {
                return Err(ModelError::BadInput {
                    got: d.to_vec(),
                    size: self.input_size,
                }
                .into());
            }
        }
        let mut drop = |t: Tensor| match rng.as_deref_mut() {
            Some(r) => dropout(&t, self.dropout, r),
            None => Ok(t),
        };
        // Shapes for the paper's network (width 1, groups 2) on 224x224 inputs.
        let x = self.conv_relu(&self.conv1, x)?; //               (b, 96, 55, 55)
        let x = self.pool(&self.lrn(&x)?)?; //                    (b, 96, 27, 27)
        let x = self.conv_relu(&self.conv2, &x)?; //              (b, 256, 27, 27)
        let x = self.pool(&self.lrn(&x)?)?; //                    (b, 256, 13, 13)
        let x = self.conv_relu(&self.conv3, &x)?; //              (b, 384, 13, 13)
        let x = self.conv_relu(&self.conv4, &x)?; //              (b, 384, 13, 13)
        let x = self.conv_relu(&self.conv5, &x)?; //              (b, 256, 13, 13)
        let x = self.pool(&x)?.flatten_from(1)?; //               (b, 9216)
        let x = self.fc_act(&self.fc6, &x)?; //                   (b, 4096)
        if upto == FeatureLayer::Fc6 {
            return Ok(x);
        }
        let x = self.fc_act(&self.fc7, &drop(x)?)?; //            (b, 4096)
        if upto == FeatureLayer::Fc7 {
            return Ok(x);
        }
        self.fc8.forward(&drop(x)?) //                            (b, num_classes)
    }

    /// conv + bias + the activation. Only ReLU is fused into our conv ops; tanh is
    /// candle's op on the conv's output (CPU and CUDA alike), which is all the ablation
    /// needs.
    fn conv_relu(&self, conv: &Conv2d, x: &Tensor) -> Result<Tensor> {
        match (self.activation, self.kernels) {
            (Activation::Relu, Kernels::Custom) => conv.forward_relu(x),
            (Activation::Relu, Kernels::Reference) => conv.forward_relu_reference(x),
            (Activation::Tanh, Kernels::Custom) => conv.forward(x)?.tanh(),
            (Activation::Tanh, Kernels::Reference) => conv.forward_reference(x)?.tanh(),
        }
    }

    /// fc6/fc7 with their activation (ReLU fused into our fc op; tanh a candle op).
    fn fc_act(&self, fc: &Linear, x: &Tensor) -> Result<Tensor> {
        match self.activation {
            Activation::Relu => fc.forward_relu(x),
            Activation::Tanh => fc.forward(x)?.tanh(),
        }
    }

    /// LRN, or the identity when the recipe switches it off.
    fn lrn(&self, x: &Tensor) -> Result<Tensor> {
        if !self.lrn.enabled {
            return Ok(x.clone());
        }
        match self.kernels {
            Kernels::Custom => lrn(x, self.lrn),
            Kernels::Reference => lrn_composite(x, self.lrn),
        }
    }

    fn pool(&self, x: &Tensor) -> Result<Tensor> {
        match self.kernels {
            Kernels::Custom => max_pool2d(x, self.pool),
            Kernels::Reference => max_pool2d_reference(x, self.pool),
        }
    }

    /// The same network computing in `dtype` (bf16 for mixed precision): every weight is
    /// cast with `to_dtype`, which candle differentiates, so the gradients of a step
    /// taken with the cast net arrive at the original (f32) parameters in their dtype.
    pub fn cast(&self, dtype: DType) -> Result<AlexNet> {
        if self.conv1.weight().dtype() == dtype {
            return Ok(self.clone());
        }
        let conv = |c: &Conv2d| -> Result<Conv2d> {
            Ok(Conv2d::new(
                c.weight().to_dtype(dtype)?,
                c.bias().to_dtype(dtype)?,
                c.params(),
            ))
        };
        let linear = |l: &Linear| -> Result<Linear> {
            Ok(Linear::new(
                l.weight().to_dtype(dtype)?,
                l.bias().to_dtype(dtype)?,
            ))
        };
        Ok(AlexNet {
            conv1: conv(&self.conv1)?,
            conv2: conv(&self.conv2)?,
            conv3: conv(&self.conv3)?,
            conv4: conv(&self.conv4)?,
            conv5: conv(&self.conv5)?,
            fc6: linear(&self.fc6)?,
            fc7: linear(&self.fc7)?,
            fc8: linear(&self.fc8)?,
            ..self.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn paper_network_has_60_965_224_parameters() -> Result<()> {
        let cfg = ModelConfig::default();
        assert_eq!(parameter_count(&cfg, 224, 1000)?, 60_965_224);
        let specs = param_specs(&cfg, 224, 1000)?;
        let shape = |n: &str| specs.iter().find(|s| s.name == n).unwrap().shape.clone();
        assert_eq!(shape("conv1.weight"), [96, 3, 11, 11]);
        assert_eq!(shape("conv2.weight"), [256, 48, 5, 5]);
        assert_eq!(shape("conv3.weight"), [384, 256, 3, 3]);
        assert_eq!(shape("conv4.weight"), [384, 192, 3, 3]);
        assert_eq!(shape("conv5.weight"), [256, 192, 3, 3]);
        assert_eq!(shape("fc6.weight"), [4096, 9216]);
        assert_eq!(shape("fc8.weight"), [1000, 4096]);
        // The single-tower variant has the ungrouped conv2/4/5 (torchvision-like count).
        let one = ModelConfig { groups: 1, ..cfg };
        assert_eq!(
            parameter_count(&one, 224, 1000)?,
            60_965_224 + 307_200 + 663_552 + 442_368
        );
        Ok(())
    }

    #[test]
    fn width_scales_and_rounds_to_groups() -> Result<()> {
        let cfg = ModelConfig {
            width: 0.3,
            ..Default::default()
        };
        let specs = param_specs(&cfg, 224, 10)?;
        let outs: Vec<usize> = specs.iter().step_by(2).map(|s| s.shape[0]).collect();
        // 96*0.3 = 28.8 -> 28 (14 per group), 256*.3 = 76.8 -> 76, 384*.3 = 115.2 -> 116.
        assert_eq!(outs, [28, 76, 116, 116, 76, 1229, 1229, 10]);
        assert!(outs[..5].iter().all(|c| c % 2 == 0));
        Ok(())
    }

    /// Errors are typed where they arise before any tensor exists.
    #[test]
    fn errors_are_typed() {
        match param_specs(&ModelConfig::default(), 40, 10) {
            Err(ModelError::InputTooSmall {
                input_size: 40,
                layer: "pool5",
                min_input: 63,
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
        match parameter_count(
            &ModelConfig {
                dropout: 1.0,
                ..Default::default()
            },
            224,
            10,
        ) {
            Err(ModelError::InvalidConfig {
                key: "model.dropout",
                ..
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn too_small_input_is_a_clear_error() {
        let err = param_specs(&ModelConfig::default(), 40, 10)
            .unwrap_err()
            .to_string();
        assert!(err.contains("too small") && err.contains("63"), "{err}");
        assert!(param_specs(&ModelConfig::default(), 63, 10).is_ok());
        let err = param_specs(
            &ModelConfig {
                groups: 0,
                ..Default::default()
            },
            224,
            10,
        )
        .unwrap_err();
        assert!(err.to_string().contains("model.groups"), "{err}");
    }

    fn small() -> Result<(ModelConfig, AlexNet, Tensor)> {
        let cfg = ModelConfig {
            width: 0.0625,
            ..Default::default()
        };
        let varmap = super::super::init_paper(&cfg, 95, 10, 3, DType::F32, &Device::Cpu)?;
        let model = alexnet(
            &cfg,
            95,
            10,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )?;
        let n = 2 * 3 * 95 * 95;
        let x = Tensor::from_vec(
            (0..n)
                .map(|i| ((i * 7919) % 255) as f32 - 128.0)
                .collect::<Vec<_>>(),
            (2, 3, 95, 95),
            &Device::Cpu,
        )?;
        Ok((cfg, model, x))
    }

    /// The ablation knobs: the one-GPU net's kernel counts, tanh units, no LRN.
    #[test]
    fn ablation_knobs_change_the_network() -> Result<()> {
        let one = ModelConfig {
            groups: 1,
            conv_scale: [0.5, 0.5, 0.5, 0.5, 1.0],
            ..Default::default()
        };
        let specs = param_specs(&one, 224, 1000)?;
        let shape = |n: &str| specs.iter().find(|s| s.name == n).unwrap().shape.clone();
        assert_eq!(shape("conv1.weight"), [48, 3, 11, 11]);
        assert_eq!(shape("conv2.weight"), [128, 48, 5, 5]);
        assert_eq!(shape("conv4.weight"), [192, 192, 3, 3]);
        assert_eq!(shape("conv5.weight"), [256, 192, 3, 3]);
        assert_eq!(shape("fc6.weight"), [4096, 9216]);

        let (cfg, relu, x) = small()?;
        let build = |cfg: ModelConfig| -> Result<AlexNet> {
            let varmap = super::super::init_paper(&cfg, 95, 10, 3, DType::F32, &Device::Cpu)?;
            alexnet(
                &cfg,
                95,
                10,
                VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
            )
        };
        // Zero biases, so tanh's outputs take both signs.
        let tanh = build(ModelConfig {
            activation: Activation::Tanh,
            init_bias_one: false,
            ..cfg
        })?;
        let fc7 = tanh
            .forward_features(&x, FeatureLayer::Fc7)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert!(fc7.iter().all(|v| v.abs() <= 1.0), "tanh is bounded");
        assert!(fc7.iter().any(|&v| v < 0.0) && fc7.iter().any(|&v| v > 0.0));
        let fc7 = relu
            .forward_features(&x, FeatureLayer::Fc7)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert!(fc7.iter().all(|&v| v >= 0.0));
        // Without LRN the same weights give other logits; the reference ops agree.
        let mut no_lrn = cfg;
        no_lrn.lrn.enabled = false;
        let plain = build(no_lrn)?.forward(&x, None)?;
        let with = relu.forward(&x, None)?;
        assert!((&plain - &with)?.abs()?.max_all()?.to_scalar::<f32>()? > 1e-6);
        let reference = build(ModelConfig {
            kernels: Kernels::Reference,
            ..no_lrn
        })?
        .forward(&x, None)?;
        assert!(
            (&plain - &reference)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?
                < 1e-4
        );
        Ok(())
    }

    #[test]
    fn train_and_eval_modes() -> Result<()> {
        let (_, model, x) = small()?;
        let eval = model.forward(&x, None)?;
        assert_eq!(eval.dims(), &[2, 10]);
        // Eval is deterministic; fc8 features are the logits.
        assert_eq!(
            eval.to_vec2::<f32>()?,
            model.forward(&x, None)?.to_vec2::<f32>()?
        );
        assert_eq!(
            eval.to_vec2::<f32>()?,
            model
                .forward_features(&x, FeatureLayer::Fc8)?
                .to_vec2::<f32>()?
        );
        // Training mode: dropout changes the output, reproducibly per RNG state.
        let mut a = DropoutRng::new(5);
        let mut b = DropoutRng::new(5);
        let ta = model.forward(&x, Some(&mut a))?.to_vec2::<f32>()?;
        assert_eq!(ta, model.forward(&x, Some(&mut b))?.to_vec2::<f32>()?);
        assert_ne!(ta, eval.to_vec2::<f32>()?);
        assert_ne!(ta, model.forward(&x, Some(&mut a))?.to_vec2::<f32>()?); // stream moved on
        // fc6/fc7 features: post-ReLU, hidden width.
        for layer in [FeatureLayer::Fc6, FeatureLayer::Fc7] {
            let f = model.forward_features(&x, layer)?;
            assert_eq!(f.dims(), &[2, 256]);
            assert!(f.flatten_all()?.to_vec1::<f32>()?.iter().all(|&v| v >= 0.0));
        }
        Ok(())
    }

    #[test]
    fn wrong_input_shape_is_an_error() -> Result<()> {
        let (_, model, _) = small()?;
        let err = model
            .forward(
                &Tensor::zeros((1, 3, 96, 96), DType::F32, &Device::Cpu)?,
                None,
            )
            .unwrap_err();
        assert!(err.to_string().contains("(batch, 3, 95, 95)"), "{err}");
        Ok(())
    }

    /// The `[model]` recipe section: defaults fill missing keys, unknown keys are errors.
    #[test]
    fn config_from_toml() {
        let cfg: ModelConfig = toml::from_str("width = 0.5\n[lrn]\nalpha = 2e-4\n").unwrap();
        assert_eq!(cfg.width, 0.5);
        assert_eq!(
            cfg.lrn,
            LrnConfig {
                alpha: 2e-4,
                ..Default::default()
            }
        );
        assert_eq!(cfg.groups, 2);
        assert!(toml::from_str::<ModelConfig>("widht = 0.5").is_err());
        assert!(toml::from_str::<ModelConfig>("[pool]\nsize = 3\nstrid = 2").is_err());
        let round: ModelConfig =
            toml::from_str(&toml::to_string(&ModelConfig::default()).unwrap()).unwrap();
        assert_eq!(round, ModelConfig::default());
    }

    #[test]
    fn missing_parameter_is_named() {
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let err = alexnet(&ModelConfig::default(), 224, 10, vb)
            .unwrap_err()
            .to_string();
        assert!(err.contains("conv1.weight"), "{err}");
    }
}
