//! The feature commands as the CLI runs them: load a trained run, export, search,
//! train codes, evaluate retrieval. Each is one call from `main.rs`.

use std::path::{Path, PathBuf};

use candle_core::Device;

use super::{
    CodeModel, CodeOptions, EvalOptions, ExportOptions, ExportSummary, FeatureTable, FeaturesError,
    RetrievalReport,
};
use super::{
    export_features, features_of_images, hamming, retrieval_eval, schema, search, sheet,
    train_codes,
};
use crate::dataset::Split;
use crate::model::AlexNet;
use crate::recipe::Recipe;
use crate::stream::{DataSource, StreamError};
use crate::train::TrainError;
use crate::train::run_dir::RunDir;
use crate::train::{checkpoint, device, eval::check_classes, net};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Features(#[from] FeaturesError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("{0}")]
    Invalid(String),
}

/// A trained network with the dataset split it will see.
pub struct LoadedRun {
    pub model: AlexNet,
    pub source: DataSource,
    pub recipe: Recipe,
    pub checkpoint: PathBuf,
    pub input_size: usize,
    pub device: Device,
}

/// The newest run under `root` (`runs/run-NNNN`, highest number).
pub fn newest_run(root: &Path) -> Result<PathBuf, CommandError> {
    let newest = std::fs::read_dir(root)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("recipe.toml").exists())
        .map(|e| e.path())
        .max();
    newest.ok_or_else(|| {
        CommandError::Invalid(format!(
            "no run under {}; train one with `pipeline train`",
            root.display()
        ))
    })
}

/// Loads a run's best checkpoint and opens `split` of its dataset (or `dataset`),
/// refusing a dataset whose image size or classes differ from the run's.
pub fn load_run(
    run: &Path,
    dataset: Option<&Path>,
    split: Split,
    device_name: Option<&str>,
) -> Result<LoadedRun, CommandError> {
    let run_dir = RunDir::open(run)?;
    let recipe = run_dir.load_recipe()?;
    let checkpoint = run_dir.best();
    if !checkpoint.exists() {
        return Err(CommandError::Invalid(format!(
            "{}: no best checkpoint yet (has it finished an epoch?)",
            run.display()
        )));
    }
    let dataset = match dataset {
        Some(d) => d.to_path_buf(),
        None => run_dir.load_info()?.dataset,
    };
    let device = device::open(device_name.unwrap_or(&recipe.train.device))?;
    let source = DataSource::open(&dataset, split, recipe.stream.clone())?;
    recipe
        .check_dataset(&dataset, source.image_size())
        .map_err(CommandError::Invalid)?;
    let (tensors, meta) = checkpoint::load(&checkpoint, &device)?;
    check_classes(&dataset, &source, &meta, &checkpoint)?;
    let net = net::from_checkpoint(
        &meta.model,
        meta.input_size,
        meta.classes.len(),
        &tensors,
        &checkpoint,
        &device,
    )?;
    Ok(LoadedRun {
        model: net.model,
        source,
        recipe,
        checkpoint,
        input_size: meta.input_size,
        device,
    })
}

/// `pipeline export-features`.
pub fn export(
    loaded: &LoadedRun,
    layer: &str,
    codes: Option<&Path>,
    out: &Path,
    batch_size: usize,
    progress: bool,
) -> Result<ExportSummary, CommandError> {
    let layer = schema::parse_layer(layer).ok_or_else(|| {
        CommandError::Invalid(format!("--layer {layer}: expected fc6, fc7 or fc8"))
    })?;
    let codes = codes
        .map(|dir| CodeModel::load(dir, &loaded.device))
        .transpose()?;
    let metadata = vec![
        (
            "checkpoint".to_string(),
            loaded.checkpoint.display().to_string(),
        ),
        ("recipe".to_string(), loaded.recipe.to_toml()),
    ];
    let options = ExportOptions {
        layer,
        crop: loaded.input_size,
        batch_size,
        metadata: &metadata,
        codes: codes.as_ref(),
        progress,
    };
    Ok(export_features(
        &loaded.source,
        &loaded.model,
        &loaded.device,
        out,
        &options,
    )?)
}

/// `pipeline train-codes`: trains the binary-code auto-encoder on a features file.
pub fn train_codes_command(
    features: &Path,
    bits: usize,
    epochs: usize,
    out: &Path,
) -> Result<CodeModel, CommandError> {
    let table = FeatureTable::read(features)?;
    let options = CodeOptions {
        epochs,
        progress: true,
        ..CodeOptions::default()
    };
    let mut model = train_codes(
        &table.features,
        table.len(),
        table.dim,
        bits,
        &options,
        &features.display().to_string(),
    )?;
    model.save(out)?;
    Ok(model)
}

/// One neighbour as printed.
pub struct Found {
    pub key: String,
    pub label: i32,
    pub distance: f32,
}

/// `pipeline neighbors --key KEY`: the k nearest rows by Euclidean distance (or
/// Hamming, on the `code` column), the query itself excluded; optional contact sheet.
pub fn neighbours_of_key(
    table: &FeatureTable,
    key: &str,
    k: usize,
    use_hamming: bool,
    dataset: Option<&Path>,
    sheet_out: Option<&Path>,
) -> Result<Vec<Found>, CommandError> {
    let row = table.row_of(key).ok_or_else(|| {
        CommandError::Invalid(format!("{}: no row with key {key}", table.path.display()))
    })?;
    let found: Vec<(usize, f32)> = if use_hamming {
        let codes = table.codes.as_ref().ok_or_else(|| {
            CommandError::Invalid(format!(
                "{}: has no code column; export with --codes",
                table.path.display()
            ))
        })?;
        let query = table.code(row).expect("codes present");
        hamming::nearest(
            codes,
            table.len(),
            table.code_bytes,
            query,
            1,
            k,
            Some(&[row]),
        )?
        .remove(0)
        .into_iter()
        .map(|(r, d)| (r, d as f32))
        .collect()
    } else {
        search::nearest(
            &table.features,
            table.len(),
            table.dim,
            table.row(row),
            1,
            k,
            Some(&[row]),
        )?
        .remove(0)
    };
    if let Some(out) = sheet_out {
        let dataset = dataset_of(table, dataset)?;
        let rows = sheet::sheet_rows(&dataset, table, &[row], std::slice::from_ref(&found))?;
        sheet::contact_sheet(&rows, out, sheet::SheetStyle::default())?;
    }
    Ok(found
        .into_iter()
        .map(|(r, distance)| Found {
            key: table.keys[r].clone(),
            label: table.labels[r],
            distance,
        })
        .collect())
}

/// `pipeline neighbors --image PATH`: a new image through the same preprocessing
/// (decode, shorter side → S, centre crop) and the run's network.
pub fn neighbours_of_image(
    table: &FeatureTable,
    loaded: &LoadedRun,
    image: &Path,
    k: usize,
) -> Result<Vec<Found>, CommandError> {
    let bytes = std::fs::read(image)
        .map_err(|e| CommandError::Invalid(format!("{}: {e}", image.display())))?;
    let decoded = crate::ingest::decode::decode(&bytes, loaded.recipe.ingest.max_pixels)
        .map_err(|e| CommandError::Invalid(format!("{}: {e}", image.display())))?;
    let crop = crate::ingest::resize::CentreCropper::new(
        loaded.source.image_size(),
        loaded.recipe.ingest.filter,
    )
    .crop(&decoded);
    let recorded = table.meta(schema::META_LAYER)?;
    let layer = schema::parse_layer(recorded).ok_or_else(|| {
        CommandError::Invalid(format!(
            "{}: unknown layer {recorded}",
            table.path.display()
        ))
    })?;
    let query = features_of_images(
        &loaded.source,
        &loaded.model,
        &loaded.device,
        layer,
        loaded.input_size,
        &[crop],
    )?;
    let found =
        search::nearest(&table.features, table.len(), table.dim, &query, 1, k, None)?.remove(0);
    Ok(found
        .into_iter()
        .map(|(r, distance)| Found {
            key: table.keys[r].clone(),
            label: table.labels[r],
            distance,
        })
        .collect())
}

fn dataset_of(table: &FeatureTable, dataset: Option<&Path>) -> Result<PathBuf, CommandError> {
    match dataset {
        Some(d) => Ok(d.to_path_buf()),
        None => Ok(PathBuf::from(table.meta(schema::META_DATASET)?)),
    }
}

/// `pipeline retrieval-eval`: precision@k for raw pixels, fc7 and (if present) codes.
pub fn retrieval_eval_command(
    features: &Path,
    codes: Option<&Path>,
    max_rows: Option<usize>,
) -> Result<RetrievalReport, CommandError> {
    let table = FeatureTable::read(features)?;
    let dataset = dataset_of(&table, None)?;
    let codes = codes
        .map(|dir| CodeModel::load(dir, &Device::Cpu))
        .transpose()?;
    let options = EvalOptions {
        max_rows,
        ..EvalOptions::default()
    };
    Ok(retrieval_eval(&table, &dataset, codes.as_ref(), &options)?)
}
