//! The network and its parameters, fresh (the paper's init) or from a checkpoint's
//! weights: the one place both training and inference build an AlexNet.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use super::error::{RunError, candle};
use crate::model::{AlexNet, ModelConfig, alexnet, init_paper, param_specs};

/// Training and checkpoints are f32 throughout.
pub const DTYPE: DType = DType::F32;

/// AlexNet with its named parameters (the optimiser's and the checkpoint's view).
pub struct Net {
    pub model: AlexNet,
    /// `(name, var)` for every parameter: `conv1.weight` … `fc8.bias`.
    pub vars: Vec<(String, Var)>,
}

fn build(
    cfg: &ModelConfig,
    input_size: usize,
    num_classes: usize,
    varmap: VarMap,
    device: &Device,
) -> Result<Net, RunError> {
    let model = alexnet(
        cfg,
        input_size,
        num_classes,
        VarBuilder::from_varmap(&varmap, DTYPE, device),
    )
    .map_err(candle("building the model"))?;
    let vars = varmap
        .data()
        .lock()
        .expect("VarMap lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(Net { model, vars })
}

/// A new network initialised as in the paper from `seed`.
pub fn fresh(
    cfg: &ModelConfig,
    input_size: usize,
    num_classes: usize,
    seed: u64,
    device: &Device,
) -> Result<Net, RunError> {
    let varmap = init_paper(cfg, input_size, num_classes, seed, DTYPE, device)
        .map_err(candle("initialising the weights"))?;
    build(cfg, input_size, num_classes, varmap, device)
}

/// The network with the weights of a checkpoint (`tensors` as loaded from `path`):
/// every parameter must be there with the shape the config gives.
pub fn from_checkpoint(
    cfg: &ModelConfig,
    input_size: usize,
    num_classes: usize,
    tensors: &HashMap<String, Tensor>,
    path: &Path,
    device: &Device,
) -> Result<Net, RunError> {
    let fail = |message: String| RunError::Checkpoint {
        path: path.display().to_string(),
        message,
    };
    let specs = param_specs(cfg, input_size, num_classes).map_err(|e| fail(e.to_string()))?;
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().expect("fresh VarMap lock");
        for spec in specs {
            let t = tensors
                .get(&spec.name)
                .ok_or_else(|| fail(format!("has no tensor {}", spec.name)))?;
            if t.dims() != spec.shape.as_slice() {
                return Err(fail(format!(
                    "{} has shape {:?}, the recipe's [model] gives {:?}",
                    spec.name,
                    t.dims(),
                    spec.shape
                )));
            }
            let t = t
                .to_dtype(DTYPE)
                .and_then(|t| t.to_device(device))
                .map_err(candle(format!("loading {}", spec.name)))?;
            data.insert(
                spec.name.clone(),
                Var::from_tensor(&t).map_err(candle(format!("loading {}", spec.name)))?,
            );
        }
    }
    build(cfg, input_size, num_classes, varmap, device)
}

impl Net {
    /// Weights keyed by parameter name, as saved in a checkpoint.
    pub fn weight_tensors(&self) -> HashMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }
}
