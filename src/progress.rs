//! Progress bars shared by every long job: count, rate, ETA; and the counted nouns
//! of the summaries they end with.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// A bar over `total` items of `unit` (e.g. "img"), drawn on stderr (hidden when
/// stderr is not a terminal, so logs stay clean).
pub fn bar(total: u64, unit: &str) -> ProgressBar {
    bar_on(total, unit, ProgressDrawTarget::stderr())
}

/// [`bar`] drawn on `target` (a captured terminal in tests).
pub fn bar_on(total: u64, unit: &str, target: ProgressDrawTarget) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), target);
    let template = format!(
        "{{prefix}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} {{rate}} ETA {{eta}} {{msg}}"
    );
    let unit = unit.to_string();
    // indicatif's own `{per_sec}` prints four decimals ("812.3456/s"), noise that
    // flickers at every redraw.
    let rate_key = move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = w.write_str(&rate(state.per_sec(), &unit));
    };
    bar.set_style(
        ProgressStyle::with_template(&template)
            .expect("valid template")
            .with_key("rate", rate_key),
    );
    bar
}

/// Advances `bar` by `delta` and sets its message in one redraw: indicatif's
/// `set_message` draws by itself, so `inc` followed by `set_message` drew every
/// step twice.
pub fn advance(bar: &ProgressBar, delta: u64, message: String) {
    // `with_message` stores the message without drawing; `inc` then draws once.
    let _ = bar.clone().with_message(message);
    bar.inc(delta);
}

/// A rate as a person reads it: whole units from 10/s up ("812 img/s"), one
/// decimal below ("3.4 img/s"), so the number does not flicker in its last digits.
pub fn rate(per_second: f64, unit: &str) -> String {
    if !per_second.is_finite() || per_second < 0.0 {
        return format!("- {unit}/s");
    }
    if per_second >= 9.95 {
        format!("{per_second:.0} {unit}/s")
    } else {
        format!("{per_second:.1} {unit}/s")
    }
}

/// `n` and its noun in the right number: "1 shard", "3 shards", "0 images".
pub fn count(n: usize, singular: &str, plural: &str) -> String {
    if n == 1 {
        format!("{n} {singular}")
    } else {
        format!("{n} {plural}")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn rates_have_sensible_precision() {
        assert_eq!(rate(812.3456, "img"), "812 img/s");
        assert_eq!(rate(12_345.6, "img"), "12346 img/s");
        assert_eq!(rate(10.4, "img"), "10 img/s");
        assert_eq!(rate(9.96, "img"), "10 img/s");
        assert_eq!(rate(3.4321, "img"), "3.4 img/s");
        assert_eq!(rate(0.0, "steps"), "0.0 steps/s");
        assert_eq!(rate(f64::INFINITY, "img"), "- img/s");
        assert_eq!(rate(f64::NAN, "img"), "- img/s");
    }

    #[test]
    fn counts_agree_in_number() {
        assert_eq!(count(1, "image", "images"), "1 image");
        assert_eq!(count(0, "image", "images"), "0 images");
        assert_eq!(count(2, "batch", "batches"), "2 batches");
    }

    /// A terminal that counts frames (every draw ends with one flush) and keeps the
    /// last one's text.
    #[derive(Debug, Clone, Default)]
    struct Captured {
        frames: Arc<AtomicUsize>,
        text: Arc<Mutex<String>>,
    }

    impl indicatif::TermLike for Captured {
        fn width(&self) -> u16 {
            160
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(s)
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            if !s.trim().is_empty() {
                *self.text.lock().unwrap() = s.to_string();
            }
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            self.frames.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn each_update_redraws_once_and_shows_its_message() {
        let term = Captured::default();
        // No rate limit on this target: every requested draw reaches the terminal.
        let bar = bar_on(
            100,
            "img",
            ProgressDrawTarget::term_like(Box::new(term.clone())),
        );
        let before = term.frames.load(Ordering::SeqCst);
        let updates = 5;
        for step in 1..=updates {
            advance(&bar, 4, format!("step {step} loss 1.5"));
            // indicatif lets a burst of position updates through, then one per ms.
            std::thread::sleep(std::time::Duration::from_millis(3));
        }
        let frames = term.frames.load(Ordering::SeqCst) - before;
        assert_eq!(frames, updates, "one redraw per update");
        let text = term.text.lock().unwrap().clone();
        assert!(text.contains("20/100 img"), "{text}");
        assert!(text.contains(&format!("step {updates} loss 1.5")), "{text}");
        let shown_rate = text
            .split(" img/s")
            .next()
            .and_then(|before| before.rsplit(' ').next())
            .unwrap_or_default();
        let decimals = shown_rate.split('.').nth(1).map_or(0, str::len);
        assert!(
            shown_rate.parse::<f64>().is_ok() && decimals <= 1,
            "rate {shown_rate:?} in {text}"
        );
    }
}
