//! Line figures from `metrics.jsonl`: the training curves of several runs, and the
//! Figure 1 analogue (training error against epochs, ReLU against tanh).

use plotters::coord::Shift;
use plotters::prelude::*;

use super::png::Canvas;
use super::{ReportError, RunData};
use crate::fonts::FAMILY;
use crate::train::metrics::EpochMetrics;

/// Three panels side by side: loss, train top-1 error, val top-1 error.
pub const CURVES_SIZE: (u32, u32) = (1500, 460);
/// The Figure 1 analogue.
pub const FIGURE1_SIZE: (u32, u32) = (900, 560);

/// Ten colours that stay apart (Tableau 10); runs beyond ten reuse them.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// What the horizontal axis of the training curves measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axis {
    Epoch,
    /// Seconds of training and validation, cumulated over the run.
    WallTime,
}

fn draw_err(figure: &str) -> impl Fn(String) -> ReportError + '_ {
    move |message| ReportError::Draw {
        figure: figure.to_string(),
        message,
    }
}

/// The x value of each epoch of a run.
fn xs(metrics: &[EpochMetrics], axis: Axis) -> Vec<f64> {
    let mut t = 0.0;
    metrics
        .iter()
        .map(|m| match axis {
            Axis::Epoch => m.epoch as f64,
            Axis::WallTime => {
                t += m.train_s + m.val_s.unwrap_or(0.0);
                t
            }
        })
        .collect()
}

type Measure = (&'static str, fn(&EpochMetrics) -> Option<f64>);

/// Every run on one plot per measure (one colour per run, the same in each panel).
pub fn training_curves(runs: &[RunData], axis: Axis, figure: &str) -> Result<Canvas, ReportError> {
    let (w, h) = CURVES_SIZE;
    let mut canvas = Canvas::new(w, h);
    {
        let root = BitMapBackend::with_buffer(&mut canvas.rgb, (w, h)).into_drawing_area();
        let fail = draw_err(figure);
        root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
        let measures: [Measure; 3] = [
            ("training loss (cross-entropy)", |m| Some(m.train_loss)),
            ("training top-1 error %", |m| Some(100.0 * m.train_top1_err)),
            ("validation top-1 error %", |m| {
                m.val_top1_err.map(|e| 100.0 * e)
            }),
        ];
        let panels = root.split_evenly((1, measures.len()));
        for (panel, (title, value)) in panels.iter().zip(measures) {
            draw_panel(panel, runs, axis, title, value).map_err(&fail)?;
        }
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    Ok(canvas)
}

fn draw_panel(
    panel: &DrawingArea<BitMapBackend<'_>, Shift>,
    runs: &[RunData],
    axis: Axis,
    title: &str,
    value: fn(&EpochMetrics) -> Option<f64>,
) -> Result<(), String> {
    let series: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|r| {
            xs(&r.metrics, axis)
                .into_iter()
                .zip(&r.metrics)
                .filter_map(|(x, m)| value(m).map(|y| (x, y)))
                .collect()
        })
        .collect();
    let x_max = series.iter().flatten().map(|p| p.0).fold(1.0, f64::max);
    let y_max = series.iter().flatten().map(|p| p.1).fold(1e-6, f64::max) * 1.05;
    let x_desc = match axis {
        Axis::Epoch => "epoch",
        Axis::WallTime => "seconds (training + validation)",
    };
    let mut chart = ChartBuilder::on(panel)
        .caption(title, (FAMILY, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        // No minor grid: it carries no reading and triples the PNG size.
        .light_line_style(WHITE)
        .x_desc(x_desc)
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 15))
        .draw()
        .map_err(|e| e.to_string())?;
    // One colour and one legend entry per recipe: an experiment's seeds of a recipe
    // share them, so sixteen runs read as eight curves with their spread.
    let mut recipes: Vec<&str> = Vec::new();
    for (run, points) in runs.iter().zip(series) {
        let first = !recipes.contains(&run.recipe_name.as_str());
        if first {
            recipes.push(&run.recipe_name);
        }
        let index = recipes
            .iter()
            .position(|r| *r == run.recipe_name)
            .unwrap_or(0);
        let colour = COLOURS[index % COLOURS.len()];
        let drawn = chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(|e| e.to_string())?;
        if first {
            drawn.label(run.recipe_name.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
            });
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FAMILY, 13))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// One recipe's runs in Figure 1, with the epochs (mean over its runs, None unless
/// every run got there) at which training error reaches the threshold.
pub struct Side<'a> {
    pub recipe: String,
    pub runs: Vec<&'a RunData>,
    pub epochs: Option<f64>,
}

impl Side<'_> {
    fn last_epoch(&self) -> usize {
        self.runs.iter().map(|r| r.metrics.len()).max().unwrap_or(0)
    }
}

/// Figure 1: the ReLU baseline against every tanh recipe.
pub struct Figure1<'a> {
    pub relu: Side<'a>,
    pub tanh: Vec<Side<'a>>,
    pub threshold: f64,
}

impl Figure1<'_> {
    /// A tanh recipe's epochs ÷ ReLU's: the paper measured six on CIFAR-10.
    pub fn speed_up(&self, tanh: &Side<'_>) -> Option<f64> {
        match (self.relu.epochs, tanh.epochs) {
            (Some(r), Some(t)) if r > 0.0 => Some(t / r),
            _ => None,
        }
    }

    /// One line saying what was measured, also the figure's caption.
    pub fn verdict(&self) -> String {
        let reached = |side: &Side<'_>| match side.epochs {
            Some(e) => format!("{e:.2} epochs"),
            None => format!("not within {}", side.last_epoch()),
        };
        let mut line = format!(
            "{:.0} % training error: ReLU ({}) {}",
            100.0 * self.threshold,
            self.relu.recipe,
            reached(&self.relu)
        );
        for tanh in &self.tanh {
            line.push_str(&format!("; {} {}", tanh.recipe, reached(tanh)));
            if let Some(x) = self.speed_up(tanh) {
                line.push_str(&format!(" (ReLU {x:.2}× faster)"));
            }
        }
        line
    }
}

/// Training error against epochs: the ReLU runs blue, each tanh recipe's runs in a
/// colour of their own, the threshold as a horizontal black line; the caption gives the
/// measured factors.
pub fn figure1(fig: &Figure1<'_>, figure: &str) -> Result<Canvas, ReportError> {
    let (w, h) = FIGURE1_SIZE;
    let mut canvas = Canvas::new(w, h);
    let fail = draw_err(figure);
    {
        let root = BitMapBackend::with_buffer(&mut canvas.rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
        let sides: Vec<&Side<'_>> = std::iter::once(&fig.relu).chain(&fig.tanh).collect();
        let all = sides.iter().flat_map(|side| side.runs.iter());
        let x_max = all
            .clone()
            .map(|r| r.metrics.len())
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let y_max = all
            .flat_map(|r| r.metrics.iter().map(|m| 100.0 * m.train_top1_err))
            .fold(100.0 * fig.threshold, f64::max)
            * 1.05;
        let mut chart = ChartBuilder::on(&root)
            .caption(fig.verdict(), (FAMILY, 16))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(|e| fail(e.to_string()))?;
        chart
            .configure_mesh()
            // No minor grid: it carries no reading and triples the PNG size.
            .light_line_style(WHITE)
            .x_desc("epoch")
            .y_desc("training top-1 error %")
            .label_style((FAMILY, 15))
            .axis_desc_style((FAMILY, 16))
            .draw()
            .map_err(|e| fail(e.to_string()))?;
        for (index, side) in sides.iter().enumerate() {
            let colour = COLOURS[index % COLOURS.len()];
            for (i, run) in side.runs.iter().enumerate() {
                let points = run
                    .metrics
                    .iter()
                    .map(|m| (m.epoch as f64, 100.0 * m.train_top1_err));
                let drawn = chart
                    .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                    .map_err(|e| fail(e.to_string()))?;
                if i == 0 {
                    let unit = match run.recipe.model.activation {
                        crate::model::Activation::Relu => "ReLU",
                        crate::model::Activation::Tanh => "tanh",
                    };
                    drawn
                        .label(format!("{unit} ({})", side.recipe))
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                        });
                }
            }
        }
        let line = 100.0 * fig.threshold;
        chart
            .draw_series(LineSeries::new(
                [(0.0, line), (x_max, line)],
                BLACK.stroke_width(1),
            ))
            .map_err(|e| fail(e.to_string()))?
            .label(format!("threshold {line:.0} %"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FAMILY, 15))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| fail(e.to_string()))?;
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    Ok(canvas)
}
