//! The confusion matrix `pipeline eval` writes beside its scores: how often each true
//! class (row) was predicted as each class (column), as JSON and as a PNG heat map
//! with the class names.
//!
//! A prediction is the top-1 class under the rule [`count_errors`](super::eval::count_errors)
//! counts by (highest score, ties to the lower index), so the diagonal sums to exactly
//! the images `eval` counts as right.

use std::path::Path;

use image::ImageEncoder;
use plotters::prelude::*;
use serde::Serialize;

use super::TrainError;
use crate::dataset::atomic;
use crate::dataset::manifest::ClassInfo;

use crate::fonts::FAMILY as FONT_FAMILY;

/// Heat map layout, in pixels: each class a `CELL`-sided square (shrunk for many
/// classes to keep the grid within [`MAX_GRID`]), its top-left corner at
/// (`MARGIN + LABEL_SPACE`, `TITLE_SPACE + LABEL_SPACE`), names left of and above it,
/// `MARGIN` right of and below it: 682 × 706 for 10 classes.
const CELL: u32 = 48;
const MAX_GRID: u32 = 1600;
const LABEL_SPACE: u32 = 170;
const TITLE_SPACE: u32 = 40;
const MARGIN: u32 = 16;
/// Below this cell size names and counts would not fit; the grid is drawn alone.
const MIN_LABELLED_CELL: u32 = 10;

/// Counts of (true class, predicted class) over a split.
#[derive(Clone, Debug)]
pub struct ConfusionMatrix {
    classes: Vec<ClassInfo>,
    /// `classes² counts`, row-major: row = true class, column = predicted.
    counts: Vec<u64>,
    /// Images whose scores held a NaN: no prediction (count_errors counts them wrong).
    unscored: u64,
}

/// `confusion-*.json`.
#[derive(Debug, Serialize)]
struct ConfusionFile<'a> {
    checkpoint: String,
    /// "centre" or "ten-crop".
    views: &'a str,
    images: u64,
    /// The diagonal's sum: images whose top-1 class is right.
    correct: u64,
    top1_err: f64,
    unscored: u64,
    rows: &'static str,
    columns: &'static str,
    classes: &'a [ClassInfo],
    counts: Vec<&'a [u64]>,
}

impl ConfusionMatrix {
    pub fn new(classes: Vec<ClassInfo>) -> Self {
        let n = classes.len();
        Self {
            classes,
            counts: vec![0; n * n],
            unscored: 0,
        }
    }

    /// Adds one batch: `scores` one row per image, `labels` its true classes.
    pub fn add(&mut self, scores: &[Vec<f32>], labels: &[i64]) {
        let n = self.classes.len();
        for (row, &label) in scores.iter().zip(labels) {
            let Some(predicted) = top1(row) else {
                self.unscored += 1;
                continue;
            };
            // Labels are checked against the manifest's classes when the split is read.
            if let Ok(label) = usize::try_from(label)
                && label < n
                && predicted < n
            {
                self.counts[label * n + predicted] += 1;
            }
        }
    }

    pub fn count(&self, truth: usize, predicted: usize) -> u64 {
        self.counts[truth * self.classes.len() + predicted]
    }

    pub fn images(&self) -> u64 {
        self.counts.iter().sum::<u64>() + self.unscored
    }

    pub fn correct(&self) -> u64 {
        (0..self.classes.len()).map(|i| self.count(i, i)).sum()
    }

    /// Writes the matrix as JSON to `path`, atomically.
    pub fn write_json(
        &self,
        path: &Path,
        checkpoint: &Path,
        views: &str,
    ) -> Result<(), TrainError> {
        let n = self.classes.len().max(1);
        let images = self.images();
        let file = ConfusionFile {
            checkpoint: checkpoint.display().to_string(),
            views,
            images,
            correct: self.correct(),
            top1_err: if images == 0 {
                0.0
            } else {
                1.0 - self.correct() as f64 / images as f64
            },
            unscored: self.unscored,
            rows: "true class",
            columns: "predicted class",
            classes: &self.classes,
            counts: self.counts.chunks(n).collect(),
        };
        let mut bytes = serde_json::to_vec_pretty(&file).expect("plain data serialises");
        bytes.push(b'\n');
        atomic::write_file(path, &bytes).map_err(|e| io_error(path, e))
    }

    /// Writes the heat map to `path` (PNG), atomically: a cell's shade is the share of
    /// its row (the true class's images) predicted as its column, so the diagonal reads
    /// as each class's recall whatever the class sizes.
    pub fn write_png(&self, path: &Path, title: &str) -> Result<(), TrainError> {
        let layout = Layout::for_classes(self.classes.len());
        let (width, height) = layout.size();
        let mut pixels = vec![0u8; width as usize * height as usize * 3];
        self.draw(&layout, title, &mut pixels).map_err(|message| {
            run_error(
                path.display().to_string(),
                format!("cannot draw the confusion matrix: {message}"),
            )
        })?;
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(&pixels, width, height, image::ExtendedColorType::Rgb8)
            .map_err(|e| {
                run_error(
                    path.display().to_string(),
                    format!("cannot encode the confusion matrix: {e}"),
                )
            })?;
        atomic::write_file(path, &png).map_err(|e| io_error(path, e))
    }

    /// The share of true class `truth`'s images predicted as `predicted` (0 for an
    /// empty row).
    pub fn rate(&self, truth: usize, predicted: usize) -> f64 {
        let n = self.classes.len();
        let row: u64 = self.counts[truth * n..(truth + 1) * n].iter().sum();
        if row == 0 {
            0.0
        } else {
            self.count(truth, predicted) as f64 / row as f64
        }
    }

    fn draw(&self, layout: &Layout, title: &str, pixels: &mut [u8]) -> Result<(), String> {
        crate::fonts::register()?;
        let failed = |e: DrawingAreaErrorKind<_>| e.to_string();
        let root = BitMapBackend::with_buffer(pixels, layout.size()).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let text = |size: u32| (FONT_FAMILY, size as f64).into_font().color(&BLACK);
        root.draw(&Text::new(
            title.to_string(),
            (MARGIN as i32, (MARGIN / 2) as i32),
            text(16),
        ))
        .map_err(failed)?;
        let n = self.classes.len();
        let cell = layout.cell as i32;
        let (left, top) = (layout.grid_left() as i32, layout.grid_top() as i32);
        let labelled = layout.cell >= MIN_LABELLED_CELL;
        let label_size = layout.cell.clamp(MIN_LABELLED_CELL, 14);
        for truth in 0..n {
            for predicted in 0..n {
                let rate = self.rate(truth, predicted);
                let (x, y) = (left + predicted as i32 * cell, top + truth as i32 * cell);
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    shade(rate).filled(),
                ))
                .map_err(failed)?;
                if labelled {
                    // Faint cell edges, so empty cells still read as a grid.
                    root.draw(&Rectangle::new(
                        [(x, y), (x + cell, y + cell)],
                        RGBColor(225, 225, 225).stroke_width(1),
                    ))
                    .map_err(failed)?;
                }
                let count = self.count(truth, predicted);
                if labelled && layout.cell >= 24 && count > 0 {
                    let ink = if rate > 0.5 { WHITE } else { BLACK };
                    let style = (FONT_FAMILY, 12.0).into_font().color(&ink).pos(
                        plotters::style::text_anchor::Pos::new(
                            plotters::style::text_anchor::HPos::Center,
                            plotters::style::text_anchor::VPos::Center,
                        ),
                    );
                    root.draw(&Text::new(
                        count.to_string(),
                        (x + cell / 2, y + cell / 2),
                        style,
                    ))
                    .map_err(failed)?;
                }
            }
        }
        if labelled {
            for (i, class) in self.classes.iter().enumerate() {
                let name = short(&class.name, &class.wnid);
                let middle = i as i32 * cell + cell / 2;
                let right = plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Right,
                    plotters::style::text_anchor::VPos::Center,
                );
                root.draw(&Text::new(
                    name.clone(),
                    (left - 6, top + middle),
                    text(label_size).pos(right),
                ))
                .map_err(failed)?;
                // Column names read bottom to top, ending just above their column.
                root.draw(&Text::new(
                    name,
                    (left + middle - label_size as i32 / 2, top - 6),
                    text(label_size).transform(FontTransform::Rotate270),
                ))
                .map_err(failed)?;
            }
        }
        root.present().map_err(failed)?;
        Ok(())
    }
}

/// Where the grid sits in the picture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    classes: u32,
    cell: u32,
}

impl Layout {
    fn for_classes(classes: usize) -> Self {
        let classes = classes.max(1) as u32;
        Self {
            classes,
            cell: (MAX_GRID / classes).clamp(1, CELL),
        }
    }

    fn grid_left(&self) -> u32 {
        MARGIN + LABEL_SPACE
    }

    fn grid_top(&self) -> u32 {
        TITLE_SPACE + LABEL_SPACE
    }

    fn size(&self) -> (u32, u32) {
        let grid = self.classes * self.cell;
        (
            self.grid_left() + grid + MARGIN,
            self.grid_top() + grid + MARGIN,
        )
    }
}

/// White (0) to dark blue (1).
fn shade(rate: f64) -> RGBColor {
    let t = rate.clamp(0.0, 1.0);
    let mix = |from: f64, to: f64| (from + (to - from) * t).round() as u8;
    RGBColor(mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 107.0))
}

/// A class's label: its name (the wnid when it has none), cut to fit the label space.
fn short(name: &str, wnid: &str) -> String {
    const MAX_CHARS: usize = 22;
    let name = if name.is_empty() { wnid } else { name };
    // ImageNet names list synonyms ("tench, Tinca tinca"): the first says enough.
    let first = name.split(',').next().unwrap_or(name).trim();
    if first.chars().count() > MAX_CHARS {
        let cut: String = first.chars().take(MAX_CHARS - 1).collect();
        format!("{cut}…")
    } else {
        first.to_string()
    }
}

/// The highest-scoring class, ties to the lower index; `None` when a score is NaN.
fn top1(row: &[f32]) -> Option<usize> {
    if row.iter().any(|s| s.is_nan()) {
        return None;
    }
    let mut best = 0;
    for (i, &s) in row.iter().enumerate() {
        if s > row[best] {
            best = i;
        }
    }
    (!row.is_empty()).then_some(best)
}

fn io_error(path: &Path, e: std::io::Error) -> TrainError {
    run_error(path.display().to_string(), e.to_string())
}

/// A file of the run that could not be written.
fn run_error(path: String, message: String) -> TrainError {
    TrainError::Run(Box::new(crate::run::RunError::Run { path, message }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prediction_is_the_top_score_with_ties_to_the_lower_index() {
        assert_eq!(top1(&[0.1, 0.5, 0.5, 0.2]), Some(1));
        assert_eq!(top1(&[0.1, f32::NAN]), None);
        let classes = (0..3)
            .map(|index| ClassInfo {
                index,
                wnid: format!("n{index}"),
                name: String::new(),
            })
            .collect();
        let mut m = ConfusionMatrix::new(classes);
        m.add(&[vec![0.9, 0.1, 0.0], vec![0.2, 0.7, 0.1]], &[0, 0]);
        assert_eq!((m.count(0, 0), m.count(0, 1), m.correct()), (1, 1, 1));
        assert_eq!(m.rate(0, 1), 0.5);
    }
}
