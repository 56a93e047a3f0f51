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
use crate::dataset::manifest::ClassInfo;
use crate::dataset::{Manifest, Split};
use crate::device::DeviceError;
use crate::run::{RunDir, RunError, TrainedRun, WhichCheckpoint};
use crate::stream::{DataSource, StreamError};

pub use crate::run::{newest_run, run_or_newest};

/// The big errors are boxed so every `Result` of these commands stays small.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Run(Box<RunError>),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Features(Box<FeaturesError>),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("{0}")]
    Invalid(String),
}

impl From<RunError> for CommandError {
    fn from(e: RunError) -> Self {
        Self::Run(Box::new(e))
    }
}

impl From<FeaturesError> for CommandError {
    fn from(e: FeaturesError) -> Self {
        Self::Features(Box::new(e))
    }
}

/// A trained network with the dataset split it will see.
pub struct LoadedRun {
    pub run: TrainedRun,
    pub source: DataSource,
}

/// Opens a run's best checkpoint for inference and `split` of its dataset (or
/// `dataset`), refusing a dataset the network cannot read. The device is the one named,
/// else the run's `train.device`.
pub fn load_run(
    run: &Path,
    dataset: Option<&Path>,
    split: Split,
    device_name: Option<&str>,
) -> Result<LoadedRun, CommandError> {
    let device = match device_name {
        Some(name) => crate::device::open(name)?,
        None => crate::device::open(&RunDir::open(run)?.load_recipe()?.train.device)?,
    };
    let run = TrainedRun::open(run, WhichCheckpoint::Best, &device)?;
    let source = run.open_dataset(dataset, split)?;
    Ok(LoadedRun { run, source })
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
        .map(|dir| CodeModel::load(dir, loaded.run.device()))
        .transpose()?;
    let metadata = vec![
        (
            "checkpoint".to_string(),
            loaded.run.checkpoint().display().to_string(),
        ),
        ("recipe".to_string(), loaded.run.recipe().to_toml()),
    ];
    let options = ExportOptions {
        layer,
        crop: loaded.run.input_size(),
        batch_size,
        metadata: &metadata,
        codes: codes.as_ref(),
        progress,
    };
    Ok(export_features(
        &loaded.source,
        loaded.run.model(),
        loaded.run.device(),
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

/// What `pipeline neighbors` prints: the query, how it was searched, and its
/// neighbours with their classes.
pub struct Neighbours {
    /// The query's key, or the path of a new image.
    pub query: String,
    /// The query's label when it is a row of the features file.
    pub query_label: Option<i32>,
    /// How distance was measured, e.g. "Euclidean distance on fc7".
    pub metric: String,
    pub found: Vec<Found>,
    /// The dataset's classes by label (empty when they could not be read).
    pub classes: Vec<ClassInfo>,
    /// Why the classes could not be read, for a note.
    pub classes_unknown: Option<String>,
}

impl Neighbours {
    /// A header naming the query, then one line per neighbour: rank, distance,
    /// label, class, key.
    pub fn lines(&self) -> Vec<String> {
        let query = match self.query_label {
            Some(label) => format!("{} (label {})", self.query, self.class_of(label)),
            None => format!("{} (a new image, no label)", self.query),
        };
        let noun = if self.found.len() == 1 {
            "neighbour"
        } else {
            "neighbours"
        };
        let classes: Vec<String> = self.found.iter().map(|f| self.class_of(f.label)).collect();
        let width = classes.iter().map(|c| c.chars().count()).max().unwrap_or(0);
        let width = width.max("label class".len());
        let mut lines = vec![
            format!(
                "{} nearest {noun} of {query} by {}:",
                self.found.len(),
                self.metric
            ),
            format!("rank    distance  {:<width$}  key", "label class"),
        ];
        for (rank, (f, class)) in self.found.iter().zip(&classes).enumerate() {
            lines.push(format!(
                "{:>4}  {:>10.3}  {class:<width$}  {}",
                rank + 1,
                f.distance,
                f.key
            ));
        }
        lines
    }

    /// "3 n03450230 gown": the label, its wnid and (when it says more) its name.
    fn class_of(&self, label: i32) -> String {
        let info = usize::try_from(label)
            .ok()
            .and_then(|l| self.classes.get(l));
        match info {
            Some(c) if c.name.is_empty() || c.name == c.wnid => format!("{label} {}", c.wnid),
            Some(c) => format!("{label} {} {}", c.wnid, c.name),
            None if self.classes.is_empty() => label.to_string(),
            None => format!("{label} (not a class of the dataset)"),
        }
    }
}

/// The dataset's classes for naming labels; a features file outlives its dataset, so a
/// dataset that cannot be read leaves the labels bare, with the reason.
fn classes_of(table: &FeatureTable, dataset: Option<&Path>) -> (Vec<ClassInfo>, Option<String>) {
    let loaded = dataset_of(table, dataset)
        .map_err(|e| e.to_string())
        .and_then(|d| Manifest::load(&d).map_err(|e| e.to_string()));
    match loaded {
        Ok(manifest) => (manifest.classes, None),
        Err(why) => (Vec::new(), Some(why)),
    }
}

/// How the features file's rows were compared, for the header.
fn metric_of(table: &FeatureTable, use_hamming: bool) -> String {
    if use_hamming {
        match table.meta(schema::META_CODE_BITS) {
            Ok(bits) => format!("Hamming distance on {bits}-bit codes"),
            Err(_) => "Hamming distance on binary codes".into(),
        }
    } else {
        format!(
            "Euclidean distance on {}",
            table.meta(schema::META_LAYER).unwrap_or("features")
        )
    }
}

fn found_rows(table: &FeatureTable, found: Vec<(usize, f32)>) -> Vec<Found> {
    found
        .into_iter()
        .map(|(r, distance)| Found {
            key: table.keys[r].clone(),
            label: table.labels[r],
            distance,
        })
        .collect()
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
) -> Result<Neighbours, CommandError> {
    let row = table.row_of(key).ok_or_else(|| {
        CommandError::Invalid(format!("{}: no row with key {key}", table.path.display()))
    })?;
    // More neighbours than rows would only size buffers for nothing.
    let k = k.min(table.len());
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
    let (classes, classes_unknown) = classes_of(table, dataset);
    Ok(Neighbours {
        query: key.to_string(),
        query_label: Some(table.labels[row]),
        metric: metric_of(table, use_hamming),
        found: found_rows(table, found),
        classes,
        classes_unknown,
    })
}

/// `pipeline neighbors --image PATH`: a new image through the same preprocessing
/// (decode, shorter side → S, centre crop) and the run's network.
pub fn neighbours_of_image(
    table: &FeatureTable,
    loaded: &LoadedRun,
    image: &Path,
    k: usize,
    dataset: Option<&Path>,
) -> Result<Neighbours, CommandError> {
    let k = k.min(table.len());
    let crop = crate::ingest::resize::CentreCropper::new(
        loaded.source.image_size(),
        loaded.run.recipe().ingest.filter,
    )
    .crop_file(image, loaded.run.recipe().ingest.max_pixels)
    .map_err(|e| CommandError::Invalid(format!("{}: {e}", image.display())))?;
    let recorded = table.meta(schema::META_LAYER)?;
    let layer = schema::parse_layer(recorded).ok_or_else(|| {
        CommandError::Invalid(format!(
            "{}: unknown layer {recorded}",
            table.path.display()
        ))
    })?;
    let query = features_of_images(
        &loaded.source,
        loaded.run.model(),
        loaded.run.device(),
        layer,
        loaded.run.input_size(),
        &[crop],
    )?;
    let found =
        search::nearest(&table.features, table.len(), table.dim, &query, 1, k, None)?.remove(0);
    // The classes of the dataset the features came from (the file's rows), which
    // may differ from the run's when --dataset points elsewhere.
    let (classes, classes_unknown) = classes_of(table, dataset);
    Ok(Neighbours {
        query: image.display().to_string(),
        query_label: None,
        metric: metric_of(table, false),
        found: found_rows(table, found),
        classes,
        classes_unknown,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn class(index: usize, wnid: &str, name: &str) -> ClassInfo {
        ClassInfo {
            index,
            wnid: wnid.into(),
            name: name.into(),
        }
    }

    fn found(key: &str, label: i32, distance: f32) -> Found {
        Found {
            key: key.into(),
            label,
            distance,
        }
    }

    #[test]
    fn neighbour_lines_name_the_query_and_every_class() {
        let neighbours = Neighbours {
            query: "val/n03450230/a.JPEG".into(),
            query_label: Some(1),
            metric: "Euclidean distance on fc7".into(),
            found: vec![found("val/b.JPEG", 1, 2.5), found("val/c.JPEG", 0, 3.25)],
            classes: vec![
                class(0, "n03595614", "jersey, T-shirt, tee shirt"),
                class(1, "n03450230", "n03450230"),
            ],
            classes_unknown: None,
        };
        let lines = neighbours.lines();
        assert_eq!(
            lines[0],
            "2 nearest neighbours of val/n03450230/a.JPEG (label 1 n03450230) by Euclidean distance on fc7:"
        );
        assert!(
            lines[1].starts_with("rank    distance  label class"),
            "{}",
            lines[1]
        );
        assert_eq!(lines.len(), 4);
        assert!(
            lines[2].starts_with("   1       2.500  1 n03450230 ")
                && lines[2].ends_with("  val/b.JPEG"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].contains("  0 n03595614 jersey, T-shirt, tee shirt  val/c.JPEG"),
            "{}",
            lines[3]
        );
    }

    #[test]
    fn one_neighbour_of_a_new_image_without_classes() {
        let neighbours = Neighbours {
            query: "cat.png".into(),
            query_label: None,
            metric: "Euclidean distance on fc7".into(),
            found: vec![found("val/b.JPEG", 7, 1.0)],
            classes: Vec::new(),
            classes_unknown: Some("gone".into()),
        };
        let lines = neighbours.lines();
        assert_eq!(
            lines[0],
            "1 nearest neighbour of cat.png (a new image, no label) by Euclidean distance on fc7:"
        );
        assert!(lines[2].contains("  7  "), "{}", lines[2]);
    }
}
