//! The one font every figure's text is drawn with (the report's figures, eval's
//! confusion matrix), embedded in the binary so a machine without system fonts (CI)
//! draws the same figures: DejaVu Sans, subset to Latin-1 (`LICENSE-DejaVu.txt`).

use std::sync::OnceLock;

use plotters::style::FontStyle;

static FONT: &[u8] = include_bytes!("DejaVuSans-Latin1.ttf");

/// The family name figures ask for (plotters' default family, so every default label
/// finds the font too).
pub const FAMILY: &str = "sans-serif";

/// Registers the font with plotters once per process; the error says why it failed.
pub fn register() -> Result<(), String> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err("the embedded font does not parse".to_string())
    }
}
