//! `pipeline classify`: a trained run's most probable classes for image files.
//!
//! An image takes the path a dataset image took to the network: ingest's decode and
//! resize (shorter side → S, centre S×S crop, the run's recipe), then evaluation's view
//! (the centre crop, or the ten crops of paper §4.1 with their softmaxes averaged) and
//! the dataset's mean. So a val image classified from its JPEG gets the prediction
//! `eval` counted for it.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::augment::{Augmenter, Geometry, centre_view, ten_crop_views};
use crate::dataset::manifest::ClassInfo;
use crate::features::commands::{CommandError, LoadedRun};
use crate::ingest::resize::CentreCropper;

/// Images sent through the network at once.
const BATCH: usize = 32;

/// One class and its probability.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassScore {
    pub index: usize,
    pub wnid: String,
    pub name: String,
    pub probability: f32,
}

/// What became of one input file.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Outcome {
    /// The `top` classes, most probable first.
    Classified { path: String, top: Vec<ClassScore> },
    /// A file that could not be decoded, with the reason (the others go on).
    Unreadable { path: String, error: String },
}

/// The image files named by `inputs`: files as given, folders walked recursively in name
/// order, keeping `.jpg`, `.jpeg` and `.png` (any case).
pub fn image_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, CommandError> {
    let mut files = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input)
            .map_err(|e| CommandError::Invalid(format!("{}: {e}", input.display())))?;
        if meta.is_dir() {
            walk(input, &mut files)?;
        } else {
            files.push(input.clone());
        }
    }
    Ok(files)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), CommandError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| CommandError::Invalid(format!("{}: {e}", dir.display())))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            walk(&path, files)?;
        } else if is_image_name(&path) {
            files.push(path);
        }
    }
    Ok(())
}

fn is_image_name(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    ["jpg", "jpeg", "png"]
        .iter()
        .any(|known| ext.eq_ignore_ascii_case(known))
}

/// Classifies `files` with the run's network, keeping the `top` most probable classes.
pub fn classify(
    loaded: &LoadedRun,
    files: &[PathBuf],
    ten_crop: bool,
    top: usize,
) -> Result<Vec<Outcome>, CommandError> {
    let side = loaded.source.image_size();
    let geometry = Geometry::new(side, loaded.run.input_size())
        .map_err(|e| CommandError::Invalid(format!("the run's input size: {e}")))?;
    let augmenter = Augmenter::new(geometry, loaded.source.mean().clone(), None, 0.0)
        .map_err(|e| CommandError::Invalid(format!("the dataset's mean: {e}")))?;
    let views = if ten_crop {
        ten_crop_views(geometry).to_vec()
    } else {
        vec![centre_view(geometry)]
    };
    let classes = &loaded.source.manifest.classes;
    let recipe = loaded.run.recipe();
    let mut cropper = CentreCropper::new(side, recipe.ingest.filter);
    let max_pixels = recipe.ingest.max_pixels;

    let mut outcomes = Vec::with_capacity(files.len());
    for chunk in files.chunks(BATCH) {
        let mut inputs = Vec::new();
        let mut paths = Vec::new();
        for file in chunk {
            let path = file.display().to_string();
            match cropper.crop_file(file, max_pixels) {
                Ok(pixels) => {
                    for view in &views {
                        let start = inputs.len();
                        inputs.resize(start + augmenter.output_len(), 0.0);
                        augmenter.eval_image(&pixels, *view, &mut inputs[start..]);
                    }
                    paths.push(path);
                }
                Err(error) => outcomes.push(Outcome::Unreadable { path, error }),
            }
        }
        if paths.is_empty() {
            continue;
        }
        let probabilities = probabilities(loaded, inputs, paths.len(), views.len())?;
        let per_image = probabilities.chunks(classes.len());
        for (path, probabilities) in paths.into_iter().zip(per_image) {
            let top = most_probable(probabilities, classes, top);
            outcomes.push(Outcome::Classified { path, top });
        }
    }
    Ok(outcomes)
}

/// Each image's class probabilities (the mean over its views of the softmax, as `eval`
/// scores ten crops), `images × classes` in a row-major vector.
fn probabilities(
    loaded: &LoadedRun,
    inputs: Vec<f32>,
    images: usize,
    views: usize,
) -> Result<Vec<f32>, CommandError> {
    let crop = loaded.run.input_size();
    let failed = |e: candle_core::Error| CommandError::Invalid(format!("the network: {e}"));
    let x = Tensor::from_vec(inputs, (images * views, 3, crop, crop), loaded.run.device())
        .map_err(failed)?;
    let logits = loaded.run.model().forward(&x, None).map_err(failed)?;
    let classes = logits.dim(1).map_err(failed)?;
    candle_nn::ops::softmax_last_dim(&logits)
        .and_then(|p| p.reshape((images, views, classes)))
        .and_then(|p| p.mean(1))
        .and_then(|p| p.to_device(&Device::Cpu))
        .and_then(|p| p.flatten_all())
        .and_then(|p| p.to_vec1::<f32>())
        .map_err(failed)
}

/// The `top` classes by probability; equal probabilities keep the lower index first,
/// as `eval`'s arg-max does.
fn most_probable(probabilities: &[f32], classes: &[ClassInfo], top: usize) -> Vec<ClassScore> {
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|&a, &b| {
        probabilities[b]
            .total_cmp(&probabilities[a])
            .then(a.cmp(&b))
    });
    order
        .into_iter()
        .take(top)
        .map(|index| ClassScore {
            index,
            wnid: classes[index].wnid.clone(),
            name: classes[index].name.clone(),
            probability: probabilities[index],
        })
        .collect()
}

/// The terminal form: each file, then its classes with their probabilities.
pub fn lines(outcomes: &[Outcome]) -> Vec<String> {
    let mut lines = Vec::new();
    for outcome in outcomes {
        match outcome {
            Outcome::Classified { path, top } => {
                lines.push(path.clone());
                for (rank, class) in top.iter().enumerate() {
                    lines.push(format!(
                        "  {}. {:>6.2} %  {}  {}",
                        rank + 1,
                        class.probability * 100.0,
                        class.wnid,
                        class.name
                    ));
                }
            }
            Outcome::Unreadable { path, error } => {
                lines.push(format!("{path}: cannot classify: {error}"));
            }
        }
    }
    lines
}
