//! `pipeline export --format torch`: a folder PyTorch loads the run from.
//!
//! Our parameters already have PyTorch's names and layouts (conv weights
//! `(c_out, c_in/groups, k, k)` with the groups split the same way, fc weights
//! `(out, in)`, fc6 reading the pooled maps flattened channel-major: the golden test
//! loads PyTorch's tensors as they are), so the weights are written unchanged; what the
//! module needs besides is each layer's stride, padding and groups, in `config.json`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::ExportError;
use crate::dataset::{Split, atomic, npy};
use crate::features::commands::LoadedRun;
use crate::stream::{EpochOptions, ViewMode};

/// The module file, copied into every export.
const MODULE_SOURCE: &str = include_str!("alexnet.py");

/// The files an export holds (`sample_*` only with `--with-sample`).
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const MODULE_FILE: &str = "alexnet.py";
pub const CONFIG_FILE: &str = "config.json";
pub const CLASSES_FILE: &str = "classes.json";
pub const MEAN_FILE: &str = "mean.npy";
pub const SAMPLE_INPUT_FILE: &str = "sample_input.npy";
pub const SAMPLE_LOGITS_FILE: &str = "sample_logits.npy";
pub const SAMPLE_IMAGES_FILE: &str = "sample.json";

/// `config.json`: everything `alexnet.AlexNet(config)` builds the network from.
#[derive(Debug, Serialize)]
struct ModuleConfig {
    /// Side of the network's input (the crop).
    input_size: usize,
    /// Side of the dataset's stored images, which `mean.npy` and `preprocess` use.
    image_size: usize,
    num_classes: usize,
    convs: Vec<ConvLayer>,
    fcs: Vec<FcLayer>,
    lrn: Lrn,
    pool: Pool,
    dropout: f32,
    /// The checkpoint the weights come from.
    checkpoint: String,
}

#[derive(Debug, Serialize)]
struct ConvLayer {
    name: &'static str,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    groups: usize,
}

#[derive(Debug, Serialize)]
struct FcLayer {
    name: &'static str,
    in_features: usize,
    out_features: usize,
}

/// The paper's LRN constants (alpha not divided by size; the module converts).
#[derive(Debug, Serialize)]
struct Lrn {
    size: usize,
    alpha: f64,
    beta: f64,
    k: f64,
}

#[derive(Debug, Serialize)]
struct Pool {
    size: usize,
    stride: usize,
}

/// One image of the reference sample.
#[derive(Debug, Serialize)]
struct SampleImage {
    key: String,
    label: i64,
}

/// What an export wrote.
#[derive(Debug, Serialize)]
pub struct TorchExport {
    pub out: PathBuf,
    pub checkpoint: PathBuf,
    pub parameters: usize,
    /// Images in `sample_input.npy` (0 without `--with-sample`).
    pub sample_images: usize,
    pub files: Vec<String>,
}

impl fmt::Display for TorchExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "exported {} ({} parameters) to {}",
            self.checkpoint.display(),
            self.parameters,
            self.out.display()
        )?;
        writeln!(f, "files    {}", self.files.join(", "))?;
        write!(
            f,
            "load     cd {} && python3 -c 'import alexnet; model = alexnet.load()'",
            self.out.display()
        )
    }
}

/// Writes the run's network into `out` (created if needed; files there from an earlier
/// export are replaced, each atomically). `sample`: also the centre crops of the first
/// `sample` val images and the logits candle computes for them.
pub fn export(
    loaded: &LoadedRun,
    out: &Path,
    sample: Option<usize>,
) -> Result<TorchExport, ExportError> {
    let model = loaded.run.model();
    let lrn = model.lrn_config();
    // PyTorch pads the channel window by size/2 before and (size-1)/2 after: for an
    // even size that is not the paper's centred window.
    if lrn.n.is_multiple_of(2) {
        return Err(ExportError::Unsupported {
            key: "model.lrn.n",
            value: lrn.n.to_string(),
            reason: "PyTorch's LocalResponseNorm centres only an odd window".into(),
        });
    }
    std::fs::create_dir_all(out).map_err(ExportError::io(out))?;
    let mut files = Vec::new();

    let mut tensors = HashMap::new();
    let mut convs = Vec::new();
    let mut fcs = Vec::new();
    for layer in model.layers() {
        let on_cpu = |t: &Tensor, what: &str| {
            t.to_device(&Device::Cpu)
                .and_then(|t| t.to_dtype(DType::F32))
                .and_then(|t| t.contiguous())
                .map_err(ExportError::network(format!("{}.{what}", layer.name)))
        };
        let weight = on_cpu(layer.weight, "weight")?;
        let dims = weight.dims().to_vec();
        match (layer.conv, dims.as_slice()) {
            (Some(p), &[c_out, c_in_per_group, k, _]) => convs.push(ConvLayer {
                name: layer.name,
                in_channels: c_in_per_group * p.groups,
                out_channels: c_out,
                kernel: k,
                stride: p.stride,
                padding: p.padding,
                groups: p.groups,
            }),
            (None, &[out_features, in_features]) => fcs.push(FcLayer {
                name: layer.name,
                in_features,
                out_features,
            }),
            _ => {
                return Err(ExportError::Unsupported {
                    key: "model",
                    value: format!("{}.weight of shape {dims:?}", layer.name),
                    reason: "not a conv or fully connected weight".into(),
                });
            }
        }
        tensors.insert(format!("{}.weight", layer.name), weight);
        tensors.insert(format!("{}.bias", layer.name), on_cpu(layer.bias, "bias")?);
    }
    let parameters = tensors.values().map(Tensor::elem_count).sum();
    // "format": "pt" tells Hugging Face's loaders these are PyTorch tensors.
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let weights_path = out.join(WEIGHTS_FILE);
    let bytes =
        safetensors::serialize(&tensors, Some(metadata)).map_err(|e| ExportError::Write {
            path: weights_path.display().to_string(),
            message: e.to_string(),
        })?;
    write(out, WEIGHTS_FILE, &bytes, &mut files)?;
    drop(bytes);

    let classes = &loaded.source.manifest.classes;
    let side = loaded.source.image_size();
    let config = ModuleConfig {
        input_size: loaded.run.input_size(),
        image_size: side,
        num_classes: classes.len(),
        convs,
        fcs,
        lrn: Lrn {
            size: lrn.n,
            alpha: lrn.alpha,
            beta: lrn.beta,
            k: lrn.k,
        },
        pool: Pool {
            size: model.pool_config().size,
            stride: model.pool_config().stride,
        },
        dropout: model.dropout_probability(),
        checkpoint: loaded.run.checkpoint().display().to_string(),
    };
    write(out, CONFIG_FILE, &pretty_json(&config), &mut files)?;
    write(out, CLASSES_FILE, &pretty_json(classes), &mut files)?;
    write(out, MODULE_FILE, MODULE_SOURCE.as_bytes(), &mut files)?;

    let mean = loaded.source.mean();
    let mut planes = Vec::with_capacity(3 * side * side);
    for c in 0..3 {
        for y in 0..side {
            for x in 0..side {
                planes.push(mean.at(c, y, x));
            }
        }
    }
    let mean_path = out.join(MEAN_FILE);
    npy::write(&mean_path, &[3, side as u64, side as u64], &planes).map_err(|e| {
        ExportError::Write {
            path: mean_path.display().to_string(),
            message: e.to_string(),
        }
    })?;
    files.push(MEAN_FILE.to_string());

    let sample_images = match sample {
        Some(n) => {
            let written = write_sample(loaded, out, n)?;
            files.extend(
                [SAMPLE_INPUT_FILE, SAMPLE_LOGITS_FILE, SAMPLE_IMAGES_FILE].map(String::from),
            );
            written
        }
        None => {
            // A sample left by an earlier export would not match these weights.
            for name in [SAMPLE_INPUT_FILE, SAMPLE_LOGITS_FILE, SAMPLE_IMAGES_FILE] {
                let path = out.join(name);
                if path.exists() {
                    std::fs::remove_file(&path).map_err(ExportError::io(&path))?;
                }
            }
            0
        }
    };
    Ok(TorchExport {
        out: out.to_path_buf(),
        checkpoint: loaded.run.checkpoint().to_path_buf(),
        parameters,
        sample_images,
        files,
    })
}

/// The centre crops of the first `n` val images (as `eval` feeds them), the logits the
/// run's network gives them, and their keys and labels; returns how many were written.
fn write_sample(loaded: &LoadedRun, out: &Path, n: usize) -> Result<usize, ExportError> {
    let options = EpochOptions {
        with_keys: true,
        ..EpochOptions::new(ViewMode::Centre, loaded.run.input_size(), n.max(1))
    };
    let mut stream = loaded.source.epoch(options)?;
    let Some(batch) = stream.next_batch() else {
        return Err(ExportError::Write {
            path: out.join(SAMPLE_INPUT_FILE).display().to_string(),
            message: format!(
                "--with-sample needs images, but the {} split is empty",
                Split::Val.name()
            ),
        });
    };
    let batch = batch?;
    let shape = batch.shape();
    let x = Tensor::from_slice(&batch.images, shape.as_slice(), loaded.run.device())
        .map_err(ExportError::network("the sample input"))?;
    let logits = loaded
        .run
        .model()
        .forward(&x, None)
        .and_then(|l| l.to_device(&Device::Cpu))
        .and_then(|l| l.flatten_all())
        .and_then(|l| l.to_vec1::<f32>())
        .map_err(ExportError::network("the sample logits"))?;
    let npy_error = |name: &str| {
        let path = out.join(name).display().to_string();
        move |e: npy::NpyError| ExportError::Write {
            path,
            message: e.to_string(),
        }
    };
    let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    npy::write(&out.join(SAMPLE_INPUT_FILE), &dims, &batch.images)
        .map_err(npy_error(SAMPLE_INPUT_FILE))?;
    let classes = logits.len() / batch.len().max(1);
    npy::write(
        &out.join(SAMPLE_LOGITS_FILE),
        &[batch.len() as u64, classes as u64],
        &logits,
    )
    .map_err(npy_error(SAMPLE_LOGITS_FILE))?;
    let images: Vec<SampleImage> = batch
        .keys
        .iter()
        .zip(&batch.labels)
        .map(|(key, &label)| SampleImage {
            key: key.clone(),
            label,
        })
        .collect();
    let path = out.join(SAMPLE_IMAGES_FILE);
    atomic::write_file(&path, &pretty_json(&images)).map_err(ExportError::io(&path))?;
    Ok(batch.len())
}

/// Writes `out/name` atomically and lists it.
fn write(out: &Path, name: &str, bytes: &[u8], files: &mut Vec<String>) -> Result<(), ExportError> {
    let path = out.join(name);
    atomic::write_file(&path, bytes).map_err(ExportError::io(&path))?;
    files.push(name.to_string());
    Ok(())
}

fn pretty_json(value: &impl Serialize) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("plain data serialises");
    bytes.push(b'\n');
    bytes
}
