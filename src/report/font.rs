//! The one font every figure's text is drawn with, embedded in the binary so a machine
//! without system fonts (CI) draws the same figures. Libertinus Serif Regular, SIL Open
//! Font License 1.1 (`fonts/README.md`).

use std::sync::OnceLock;

use plotters::style::FontStyle;

use super::ReportError;

static FONT: &[u8] = include_bytes!("fonts/LibertinusSerif-Regular.otf");

/// The family name figures ask for (plotters' default family, so every default label
/// finds the font too).
pub const FAMILY: &str = "sans-serif";

/// Registers the font with plotters once per process.
pub fn register() -> Result<(), ReportError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(ReportError::Draw {
            figure: "(every figure)".into(),
            message: "the embedded font does not parse".into(),
        })
    }
}
