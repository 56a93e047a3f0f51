//! `index.html`: static (no script, no network), images by relative path, so the folder
//! opens from disk anywhere it is copied.

use super::{Figure, RunData};
use crate::experiment::{ExperimentSummary, Spread};

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{:.2}", 100.0 * v))
}

fn spread_pct(s: &Option<Spread>) -> String {
    match s {
        Some(s) if s.n > 1 => format!("{:.1} ± {:.1}", 100.0 * s.mean, 100.0 * s.std),
        Some(s) => format!("{:.1}", 100.0 * s.mean),
        None => "–".into(),
    }
}

fn spread_num(s: &Option<Spread>, digits: usize) -> String {
    match s {
        Some(s) if s.n > 1 => format!("{:.digits$} ± {:.digits$}", s.mean, s.std),
        Some(s) => format!("{:.digits$}", s.mean),
        None => "never".into(),
    }
}

fn experiment_table(s: &ExperimentSummary) -> String {
    let t = 100.0 * s.threshold;
    let mut html = format!(
        "<h2>Experiment</h2>\n<p>Mean ± sample standard deviation over seeds. Epochs to \
         threshold: the (interpolated) epoch at which training top-1 error first reaches \
         {t:.0} %; seconds: training-loop time until then (noisy on a shared machine). \
         Ratios are against <b>{}</b>.</p>\n<table>\n<tr><th>recipe</th><th>seeds</th>\
         <th>val top-1 err %</th><th>val top-5 err %</th><th>Δ top-1 (points)</th>\
         <th>final train err %</th><th>epochs to {t:.0} %</th><th>× baseline epochs</th>\
         <th>seconds to {t:.0} %</th></tr>\n",
        escape(&s.baseline)
    );
    for r in &s.rows {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(&r.recipe),
            r.seeds,
            spread_pct(&r.val_top1_err),
            spread_pct(&r.val_top5_err),
            r.val_top1_vs_baseline.map_or("–".into(), |d| format!("{:+.1}", 100.0 * d)),
            spread_pct(&r.train_top1_err),
            spread_num(&r.epochs_to_threshold, 2),
            r.epochs_vs_baseline.map_or("–".into(), |x| format!("{x:.2}")),
            spread_num(&r.seconds_to_threshold, 0),
        ));
    }
    html.push_str("</table>\n");
    html
}

fn runs_table(runs: &[RunData]) -> String {
    let mut html = String::from(
        "<h2>Runs</h2>\n<table>\n<tr><th>run</th><th>folder</th><th>epochs</th>\
         <th>final train loss</th><th>final train err %</th><th>final val top-1 err %</th>\
         <th>final val top-5 err %</th><th>best val top-1 err %</th><th>training s</th></tr>\n",
    );
    for r in runs {
        let last = r.metrics.last();
        let best = r
            .metrics
            .iter()
            .filter_map(|m| m.val_top1_err)
            .fold(None, |b: Option<f64>, v| Some(b.map_or(v, |b| b.min(v))));
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td></tr>\n",
            escape(&r.label),
            escape(&r.dir.display().to_string()),
            r.metrics.len(),
            last.map_or("–".into(), |m| format!("{:.4}", m.train_loss)),
            pct(last.map(|m| m.train_top1_err)),
            pct(last.and_then(|m| m.val_top1_err)),
            pct(last.and_then(|m| m.val_top5_err)),
            pct(best),
            r.metrics.iter().map(|m| m.train_s).sum::<f64>(),
        ));
    }
    html.push_str("</table>\n");
    html
}

/// The whole page.
pub fn page(
    runs: &[RunData],
    experiment: Option<&ExperimentSummary>,
    figures: &[Figure],
    notes: &[String],
) -> String {
    let mut html = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>AlexNet reproduction report</title>\n<style>\n\
         body { font-family: serif; margin: 2em; max-width: 1600px; }\n\
         table { border-collapse: collapse; margin-bottom: 1em; }\n\
         th, td { border: 1px solid #999; padding: 0.25em 0.6em; text-align: right; }\n\
         td:first-child, th:first-child { text-align: left; }\n\
         img { max-width: 100%; border: 1px solid #ccc; }\n\
         </style>\n</head>\n<body>\n<h1>AlexNet reproduction report</h1>\n",
    );
    if let Some(s) = experiment {
        html.push_str(&experiment_table(s));
    }
    html.push_str(&runs_table(runs));
    for f in figures {
        html.push_str(&format!(
            "<h2>{}</h2>\n<p><img src=\"{}\" width=\"{}\" height=\"{}\" alt=\"{}\"></p>\n",
            escape(&f.title),
            f.file,
            f.width,
            f.height,
            escape(&f.title)
        ));
    }
    if !notes.is_empty() {
        html.push_str("<h2>Not shown</h2>\n<ul>\n");
        for n in notes {
            html.push_str(&format!("<li>{}</li>\n", escape(n)));
        }
        html.push_str("</ul>\n");
    }
    html.push_str("</body>\n</html>\n");
    html
}
