//! Horizontal reflection: how a mirrored view maps output columns to source columns.
//! The fused pass (`write_chw`) implements the mapping as "compute the row unmirrored,
//! then reverse it" (`mirror_row`); its tests check that against `source_column`.

use super::View;

/// Source column read by output column `x` of a `crop`-wide view: mirrored views read
/// their window right to left.
pub fn source_column(view: View, crop: usize, x: usize) -> usize {
    debug_assert!(x < crop, "output column {x} outside crop width {crop}");
    if view.flip {
        view.x + crop - 1 - x
    } else {
        view.x + x
    }
}

/// The same window, reflected (or un-reflected).
pub fn mirrored(view: View) -> View {
    View {
        flip: !view.flip,
        ..view
    }
}

/// Turns an unmirrored output row into the mirrored one. Because the per-pixel mean is
/// subtracted at the same *source* pixel, mirroring after subtraction is exact.
pub(super) fn mirror_row(row: &mut [f32]) {
    row.reverse();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrored_view_reads_columns_right_to_left() {
        let v = View {
            x: 3,
            y: 7,
            flip: false,
        };
        let m = mirrored(v);
        assert_eq!(
            m,
            View {
                x: 3,
                y: 7,
                flip: true
            }
        );
        assert_eq!(mirrored(m), v);
        let plain: Vec<usize> = (0..4).map(|x| source_column(v, 4, x)).collect();
        let flipped: Vec<usize> = (0..4).map(|x| source_column(m, 4, x)).collect();
        assert_eq!(plain, [3, 4, 5, 6]);
        assert_eq!(flipped, [6, 5, 4, 3]);
    }

    #[test]
    fn mirror_row_reverses() {
        let mut row = [1.0, 2.0, 3.0, 4.5];
        mirror_row(&mut row);
        assert_eq!(row, [4.5, 3.0, 2.0, 1.0]);
    }
}
