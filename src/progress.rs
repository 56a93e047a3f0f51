//! Progress bars shared by every long job: count, rate, ETA.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over `total` items of `unit` (e.g. "img"), drawn on stderr (hidden when
/// stderr is not a terminal, so logs stay clean).
pub fn bar(total: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let template = format!(
        "{{prefix}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} {{per_sec}} ETA {{eta}} {{msg}}"
    );
    bar.set_style(ProgressStyle::with_template(&template).expect("valid template"));
    bar
}
