//! `retrieval-eval`: the paper's §6.1 claim as numbers. Every image of a features file
//! is a query against all the others (leave-one-out); a neighbour is relevant when it
//! has the query's label. Reported per method, for each k: mean precision@k (the share
//! of the k nearest — the query itself excluded — with the query's label), and
//! queries/s of the search (index build included, encoding not: each method searches
//! its stored representation).
//!
//! Methods: raw pixels (the same centre crop the network saw, Euclidean — the mean
//! image is the same for every image, so subtracting it would not change a distance),
//! the file's features (fc7, Euclidean), and binary codes (Hamming) when the file has a
//! `code` column or a codes model is given.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::FeaturesError;
use super::codes::CodeModel;
use super::hamming::HammingIndex;
use super::images::{centre_crop, for_each_row_by_key};
use super::reader::FeatureTable;
use super::schema::{META_CROP, META_IMAGE_SIZE, META_LAYER};
use super::search::ExactIndex;
use crate::dataset::schema::PixelLayout;

/// What to evaluate.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalOptions {
    /// The k of precision@k (the 1, 5, 10).
    pub ks: Vec<usize>,
    /// Evaluate only the first rows of the file. The pixel baseline holds every
    /// evaluated image's crop as f32 (rows · crop² · 12 bytes: 6 GB for 10 000 images at
    /// 224), so a large split needs a cap.
    pub max_rows: Option<usize>,
    /// Skip the raw-pixel baseline (no dataset needed).
    pub skip_pixels: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            ks: vec![1, 5, 10],
            max_rows: None,
            skip_pixels: false,
        }
    }
}

/// One method's results.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MethodResult {
    /// `pixels`, the feature layer's name (`fc7`), or `codes`.
    pub method: String,
    /// `euclidean` or `hamming`.
    pub metric: String,
    /// Stored size of one item's representation.
    pub bytes_per_item: usize,
    /// Mean precision@k, one per `ks` entry.
    pub precision: Vec<f64>,
    pub queries_per_s: f64,
    pub seconds: f64,
}

/// The evaluation, ready to print as a table or JSON.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RetrievalReport {
    pub features: String,
    /// Queries = database rows (leave-one-out).
    pub rows: usize,
    pub classes: usize,
    pub ks: Vec<usize>,
    /// Expected precision of a random ranking: Σ_c (n_c/N)·(n_c − 1)/(N − 1).
    pub chance: f64,
    pub methods: Vec<MethodResult>,
}

impl RetrievalReport {
    /// Mean precision@k of `method`, if both were evaluated.
    pub fn precision(&self, method: &str, k: usize) -> Option<f64> {
        let col = self.ks.iter().position(|&x| x == k)?;
        self.methods
            .iter()
            .find(|m| m.method == method)
            .map(|m| m.precision[col])
    }

    pub fn method(&self, method: &str) -> Option<&MethodResult> {
        self.methods.iter().find(|m| m.method == method)
    }

    /// A fixed-width text table, one method per line.
    pub fn table(&self) -> String {
        let mut out = format!(
            "retrieval on {}: {} (leave-one-out), {}, chance precision {:.3}\n",
            self.features,
            crate::progress::count(self.rows, "query", "queries"),
            crate::progress::count(self.classes, "class", "classes"),
            self.chance
        );
        out += &format!("{:<8} {:<10} {:>10}", "method", "metric", "bytes/item");
        for k in &self.ks {
            out += &format!(" {:>7}", format!("P@{k}"));
        }
        out += &format!(" {:>11}\n", "queries/s");
        for m in &self.methods {
            out += &format!("{:<8} {:<10} {:>10}", m.method, m.metric, m.bytes_per_item);
            for p in &m.precision {
                out += &format!(" {p:>7.3}");
            }
            out += &format!(" {:>11.0}\n", m.queries_per_s);
        }
        out
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises")
    }
}

/// Mean over queries of the share of each query's first k neighbours that carry its
/// label (`neighbours[i]` lists database rows for query i; queries and database are the
/// same rows). A list shorter than k counts its missing entries as misses.
pub fn precision_at_k<D>(labels: &[i32], neighbours: &[Vec<(usize, D)>], ks: &[usize]) -> Vec<f64> {
    ks.iter()
        .map(|&k| {
            let total: f64 = neighbours
                .iter()
                .enumerate()
                .map(|(i, list)| {
                    list.iter()
                        .take(k)
                        .filter(|(row, _)| labels[*row] == labels[i])
                        .count() as f64
                        / k as f64
                })
                .sum();
            total / neighbours.len().max(1) as f64
        })
        .collect()
}

/// Evaluates `table` (its first `options.max_rows` rows): pixels from `dataset` (the
/// dataset the features were exported from), the features, and codes (the file's, or
/// `codes` applied to the features). Fails when a key is not in the dataset, the file
/// lacks the crop metadata the pixel baseline needs, or a codes model's width differs
/// from the file's (naming both).
pub fn retrieval_eval(
    table: &FeatureTable,
    dataset: &Path,
    codes: Option<&CodeModel>,
    options: &EvalOptions,
) -> Result<RetrievalReport, FeaturesError> {
    let ks = &options.ks;
    if ks.is_empty() || ks.contains(&0) {
        return Err(FeaturesError::InvalidOption {
            key: "ks",
            reason: format!("need k values of at least 1, got {ks:?}"),
        });
    }
    let n = options.max_rows.map_or(table.len(), |m| m.min(table.len()));
    if n < 2 {
        return Err(FeaturesError::InvalidOption {
            key: "rows",
            reason: format!(
                "{} has {n} rows; leave-one-out needs 2",
                table.path.display()
            ),
        });
    }
    let k_max = *ks.iter().max().expect("non-empty");
    let labels = &table.labels[..n];
    let own_rows: Vec<usize> = (0..n).collect();
    let mut methods = Vec::new();

    if !options.skip_pixels {
        let crop = table.meta_usize(META_CROP)?;
        let side = table.meta_usize(META_IMAGE_SIZE)?;
        let dim = PixelLayout::new(crop).bytes();
        // Only the crops are kept, as they are read: the whole images of a large split
        // would not fit in memory.
        let mut pixels = vec![0f32; n * dim];
        let mut failure = None;
        for_each_row_by_key(dataset, &table.keys[..n], |i, row| {
            if failure.is_some() {
                return;
            }
            if row.pixels.len() != PixelLayout::new(side).bytes() {
                failure = Some(FeaturesError::mismatch(
                    "pixel baseline image size",
                    format!("features file {}", table.path.display()),
                    format!("{META_IMAGE_SIZE} {side}"),
                    format!("dataset {}", dataset.display()),
                    format!("{} bytes per image", row.pixels.len()),
                ));
                return;
            }
            match centre_crop(&row.pixels, side, crop) {
                Ok(bytes) => pixels[i * dim..(i + 1) * dim]
                    .iter_mut()
                    .zip(bytes)
                    .for_each(|(p, b)| *p = f32::from(b)),
                Err(e) => failure = Some(e),
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        methods.push(euclidean_method(
            "pixels", &pixels, n, dim, dim, labels, &own_rows, k_max, ks,
        )?);
    }

    let layer = table
        .metadata
        .get(META_LAYER)
        .cloned()
        .unwrap_or_else(|| "features".into());
    let features = &table.features[..n * table.dim];
    methods.push(euclidean_method(
        &layer,
        features,
        n,
        table.dim,
        table.dim * 4,
        labels,
        &own_rows,
        k_max,
        ks,
    )?);

    let code_bytes;
    let encoded = match (table.codes.as_ref(), codes) {
        (Some(stored), _) => {
            code_bytes = table.code_bytes;
            Some(stored[..n * code_bytes].to_vec())
        }
        (None, Some(model)) => {
            model.check_table(table)?;
            code_bytes = model.code_bytes();
            Some(model.encode(features, n)?)
        }
        (None, None) => {
            code_bytes = 0;
            None
        }
    };
    if let Some(encoded) = encoded {
        let started = Instant::now();
        let neighbours = HammingIndex::new(&encoded, n, code_bytes)?.search(
            &encoded,
            n,
            k_max,
            Some(&own_rows),
        )?;
        let seconds = started.elapsed().as_secs_f64();
        methods.push(MethodResult {
            method: "codes".into(),
            metric: "hamming".into(),
            bytes_per_item: code_bytes,
            precision: precision_at_k(labels, &neighbours, ks),
            queries_per_s: n as f64 / seconds.max(1e-9),
            seconds,
        });
    }

    let mut counts = std::collections::BTreeMap::<i32, usize>::new();
    for &l in labels {
        *counts.entry(l).or_default() += 1;
    }
    let chance = counts
        .values()
        .map(|&c| c as f64 / n as f64 * (c as f64 - 1.0) / (n as f64 - 1.0))
        .sum();
    Ok(RetrievalReport {
        features: table.path.display().to_string(),
        rows: n,
        classes: counts.len(),
        ks: ks.clone(),
        chance,
        methods,
    })
}

#[allow(clippy::too_many_arguments)]
fn euclidean_method(
    name: &str,
    vectors: &[f32],
    n: usize,
    dim: usize,
    bytes_per_item: usize,
    labels: &[i32],
    own_rows: &[usize],
    k: usize,
    ks: &[usize],
) -> Result<MethodResult, FeaturesError> {
    let started = Instant::now();
    let neighbours = ExactIndex::new(vectors, n, dim)?.search(vectors, n, k, Some(own_rows))?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(MethodResult {
        method: name.into(),
        metric: "euclidean".into(),
        bytes_per_item,
        precision: precision_at_k(labels, &neighbours, ks),
        queries_per_s: n as f64 / seconds.max(1e-9),
        seconds,
    })
}
