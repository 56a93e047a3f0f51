//! `export-features`: a split through the trained network in eval mode (centre crop,
//! no dropout), batch by batch, into a features file — optionally with binary codes.
//!
//! Atomic, not resumable: rows go to `OUT.tmp`, renamed to `OUT` only when every row is
//! written, so `OUT` is either the complete export or (after a failure or Ctrl-C) the
//! file that was there before; a rerun starts over and overwrites any stale `OUT.tmp`.
//! Export is one inference pass over the split — the cost of a validation pass — so
//! resuming would save little and need the row order to survive between runs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::FeaturesError;
use super::codes::CodeModel;
use super::reader::FeatureTable;
use super::schema::{
    META_CLASSES, META_CODE_BITS, META_CODES_MODEL, META_CROP, META_DATASET, META_DIM,
    META_FORMAT_VERSION, META_IMAGE_SIZE, META_LAYER, META_PREFIX, META_SPLIT, layer_name,
};
use super::writer::FeatureWriter;
use crate::augment::{Augmenter, Geometry, centre_view};
use crate::model::{AlexNet, FeatureLayer};
use crate::stream::{DataSource, EpochOptions, ViewMode};

/// What to export and how.
#[derive(Clone, Copy)]
pub struct ExportOptions<'a> {
    /// fc7 (the paper's "last hidden layer") by default; fc6 or fc8 on request.
    pub layer: FeatureLayer,
    /// Side of the centre crop fed to the network; must be the model's input size.
    pub crop: usize,
    /// Images per forward pass.
    pub batch_size: usize,
    /// Extra key-value metadata for the file (the CLI: checkpoint, recipe hash). Keys
    /// must not start with `pipeline.features.` (the exporter's own).
    pub metadata: &'a [(String, String)],
    /// Also write a `code` column with this model's codes.
    pub codes: Option<&'a CodeModel>,
    /// Show a progress bar (images/s, ETA) on stderr.
    pub progress: bool,
}

impl Default for ExportOptions<'_> {
    fn default() -> Self {
        Self {
            layer: FeatureLayer::Fc7,
            crop: 224,
            batch_size: 128,
            metadata: &[],
            codes: None,
            progress: false,
        }
    }
}

/// The one-screen summary of an export.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ExportSummary {
    pub path: PathBuf,
    pub rows: usize,
    pub layer: String,
    pub dim: usize,
    pub code_bits: Option<usize>,
    pub seconds: f64,
    pub images_per_s: f64,
}

impl std::fmt::Display for ExportSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} of {} ({}-d",
            self.path.display(),
            crate::progress::count(self.rows, "row", "rows"),
            self.layer,
            self.dim
        )?;
        if let Some(bits) = self.code_bits {
            write!(f, ", {bits}-bit codes")?;
        }
        write!(
            f,
            ") in {:.1} s, {:.0} images/s",
            self.seconds, self.images_per_s
        )
    }
}

/// Streams `source`'s split through `model` on `device` and writes `out`.
///
/// Fails before writing anything when the crop is not the model's input size, the
/// model's classifier does not have the dataset's class count, a caller metadata key is
/// reserved, or the codes model expects another feature width; fails mid-way (leaving
/// any earlier `out` untouched and no temporary file) on a stream, model or write error.
pub fn export_features(
    source: &DataSource,
    model: &AlexNet,
    device: &Device,
    out: &Path,
    options: &ExportOptions,
) -> Result<ExportSummary, FeaturesError> {
    let started = Instant::now();
    let crop = options.crop;
    let dataset = source.dataset.display().to_string();
    if crop != model.input_size() {
        return Err(FeaturesError::mismatch(
            "export-features input size",
            "the model",
            format!("input {}", model.input_size()),
            "the requested crop",
            crop,
        ));
    }
    if crop > source.image_size() {
        return Err(FeaturesError::mismatch(
            "export-features input size",
            format!("dataset {dataset}"),
            format!("images of {}", source.image_size()),
            "the model",
            format!("input {crop}"),
        ));
    }
    if let Some((key, _)) = options
        .metadata
        .iter()
        .find(|(k, _)| k.starts_with(META_PREFIX))
    {
        return Err(FeaturesError::Metadata {
            path: out.display().to_string(),
            key: key.clone(),
            reason: format!("keys under {META_PREFIX} are the exporter's own"),
        });
    }
    // One zero image through the network: the classifier's width must be the dataset's
    // class count, and the layer's width is the file's D.
    let probe = Tensor::zeros((1, 3, crop, crop), DType::F32, device)
        .map_err(FeaturesError::candle("export-features: probe"))?;
    let width = |layer: FeatureLayer| -> Result<usize, FeaturesError> {
        let out = model
            .forward_features(&probe, layer)
            .map_err(FeaturesError::candle("export-features: probe forward"))?;
        Ok(out.dims()[1])
    };
    let classes = width(FeatureLayer::Fc8)?;
    if classes != source.manifest.num_classes() {
        return Err(FeaturesError::mismatch(
            "export-features classes",
            "the model",
            format!("{classes} outputs"),
            format!("dataset {dataset}"),
            format!("{} classes", source.manifest.num_classes()),
        ));
    }
    let dim = width(options.layer)?;
    let layer = layer_name(options.layer);
    if let Some(codes) = options.codes
        && codes.dim() != dim
    {
        return Err(FeaturesError::mismatch(
            "feature width",
            format!("the model's {layer}"),
            format!("dim {dim}"),
            codes.path.as_ref().map_or("the codes model".into(), |p| {
                format!("codes model {}", p.display())
            }),
            format!("dim {}", codes.dim()),
        ));
    }
    let mut metadata: Vec<(String, String)> = vec![
        (META_LAYER.into(), layer.into()),
        (META_CROP.into(), crop.to_string()),
        (META_IMAGE_SIZE.into(), source.image_size().to_string()),
        (META_CLASSES.into(), classes.to_string()),
        (META_DATASET.into(), dataset.clone()),
        (META_SPLIT.into(), source.split.name().into()),
    ];
    if let Some(codes) = options.codes {
        metadata.push((
            META_CODES_MODEL.into(),
            codes
                .path
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string()),
        ));
    }
    metadata.extend(options.metadata.iter().cloned());
    let mut writer =
        FeatureWriter::try_new(out, dim, options.codes.map(|c| c.code_bytes()), &metadata)?;

    let mut stream =
        source.epoch(EpochOptions::new(ViewMode::Centre, crop, options.batch_size).keyed(true))?;
    let total = source.manifest.split(source.split).map_or(0, |s| s.rows);
    let bar = options
        .progress
        .then(|| crate::progress::bar(total as u64, "img"));
    if let Some(bar) = &bar {
        bar.set_prefix(format!("export {layer}"));
    }
    while let Some(batch) = stream.next_batch() {
        let batch = batch?;
        let context = || format!("export-features: batch {}", batch.index);
        // Sync point: the features come back to the host for writing.
        let features = Tensor::from_slice(&batch.images, batch.shape().as_slice(), device)
            .and_then(|x| model.forward_features(&x, options.layer))
            .and_then(|f| f.to_device(&Device::Cpu))
            .and_then(|f| f.flatten_all())
            .and_then(|f| f.to_vec1::<f32>())
            .map_err(FeaturesError::candle(context()))?;
        let labels: Vec<i32> = batch.labels.iter().map(|&l| l as i32).collect();
        let codes = options
            .codes
            .map(|c| c.encode(&features, batch.len()))
            .transpose()?;
        writer.write(&batch.keys, &labels, &features, codes.as_deref())?;
        if let Some(bar) = &bar {
            bar.inc(batch.len() as u64);
        }
    }
    let rows = writer.close()?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(ExportSummary {
        path: out.to_path_buf(),
        rows,
        layer: layer.into(),
        dim,
        code_bits: options.codes.map(|c| c.bits()),
        seconds,
        images_per_s: rows as f64 / seconds.max(1e-9),
    })
}

/// Features of images outside the stream — `neighbors --image`: each image given as the
/// dataset stores it (S×S×3 HWC u8; for a JPEG, `ingest::decode::decode` then
/// `ingest::resize::CentreCropper::new(S, filter).crop`), then exactly what export does:
/// the centre `crop`, minus `source`'s mean, through `model` in eval mode. Returns
/// row-major `images.len() × D`.
pub fn features_of_images(
    source: &DataSource,
    model: &AlexNet,
    device: &Device,
    layer: FeatureLayer,
    crop: usize,
    images: &[Vec<u8>],
) -> Result<Vec<f32>, FeaturesError> {
    let side = source.image_size();
    let geometry = Geometry::new(side, crop).map_err(|e| FeaturesError::InvalidOption {
        key: "crop",
        reason: e.to_string(),
    })?;
    let augmenter = Augmenter::new(geometry, source.mean().clone(), None, 0.0).map_err(|e| {
        FeaturesError::InvalidOption {
            key: "crop",
            reason: e.to_string(),
        }
    })?;
    let len = augmenter.output_len();
    let mut chw = vec![0f32; images.len() * len];
    for (i, image) in images.iter().enumerate() {
        let expected = crate::dataset::schema::PixelLayout::new(side).bytes();
        if image.len() != expected {
            return Err(FeaturesError::mismatch(
                "image size",
                format!("dataset {}", source.dataset.display()),
                format!("{side}×{side}×3 = {expected} bytes"),
                format!("image {i}"),
                format!("{} bytes", image.len()),
            ));
        }
        augmenter.eval_image(
            image,
            centre_view(geometry),
            &mut chw[i * len..(i + 1) * len],
        );
    }
    Tensor::from_vec(chw, (images.len(), 3, crop, crop), device)
        .and_then(|x| model.forward_features(&x, layer))
        .and_then(|f| f.to_device(&Device::Cpu))
        .and_then(|f| f.flatten_all())
        .and_then(|f| f.to_vec1::<f32>())
        .map_err(FeaturesError::candle("features of images"))
}

/// Rewrites the features file `features_in` as `out` (may be the same path) with a
/// `code` column from `codes`, keeping every row and the metadata. Fails naming both
/// files when the feature widths differ.
pub fn add_codes(
    features_in: &Path,
    codes: &CodeModel,
    out: &Path,
) -> Result<ExportSummary, FeaturesError> {
    let started = Instant::now();
    let table = FeatureTable::read(features_in)?;
    let encoded = codes.encode_table(&table)?;
    let owned = [
        META_FORMAT_VERSION,
        META_DIM,
        META_CODE_BITS,
        META_CODES_MODEL,
    ];
    let mut metadata: Vec<(String, String)> = table
        .metadata
        .iter()
        .filter(|(k, _)| !owned.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.push((
        META_CODES_MODEL.into(),
        codes
            .path
            .as_ref()
            .map_or(String::new(), |p| p.display().to_string()),
    ));
    let mut writer = FeatureWriter::try_new(out, table.dim, Some(codes.code_bytes()), &metadata)?;
    let rows_per_write = super::schema::rows_per_row_group(table.dim);
    let b = codes.code_bytes();
    for start in (0..table.len()).step_by(rows_per_write) {
        let end = (start + rows_per_write).min(table.len());
        writer.write(
            &table.keys[start..end],
            &table.labels[start..end],
            &table.features[start * table.dim..end * table.dim],
            Some(&encoded[start * b..end * b]),
        )?;
    }
    let rows = writer.close()?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(ExportSummary {
        path: out.to_path_buf(),
        rows,
        layer: table
            .metadata
            .get(META_LAYER)
            .cloned()
            .unwrap_or_else(|| "features".into()),
        dim: table.dim,
        code_bits: Some(codes.bits()),
        seconds,
        images_per_s: rows as f64 / seconds.max(1e-9),
    })
}
