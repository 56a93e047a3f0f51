//! The Figure 3 analogue: conv1's learned kernels as colour patches.
//!
//! Each kernel is stretched to its own min..max (a shared scale would leave the
//! low-contrast ones grey), drawn `SCALE`× with nearest-neighbour pixels. With two towers
//! the first half of conv1's maps feeds the first group of conv2 and the second half the
//! second (the paper's GPU 1 and GPU 2), so the halves are drawn apart, one above the
//! other, as the paper shows them.

use candle_core::{DType, Tensor};

use super::ReportError;
use super::png::Canvas;

/// Pixels per kernel weight.
const SCALE: u32 = 5;
/// Space between kernels, between the groups, and around the grid.
const GAP: u32 = 3;
const GROUP_GAP: u32 = 18;
const MARGIN: u32 = 8;
/// Kernels per row at most.
const MAX_COLUMNS: usize = 16;
const BACKGROUND: [u8; 3] = [255, 255, 255];

/// Kernels per row and rows per group for `per_group` kernels.
fn grid(per_group: usize) -> (usize, usize) {
    let columns = per_group.clamp(1, MAX_COLUMNS);
    (columns, per_group.div_ceil(columns))
}

/// The image size of `kernels` kernels of side `side` in `groups` groups.
pub fn grid_size(kernels: usize, groups: usize, side: usize) -> (u32, u32) {
    let groups = groups.max(1);
    let (columns, rows) = grid(kernels.div_ceil(groups));
    let patch = side as u32 * SCALE;
    let block_w = columns as u32 * (patch + GAP) - GAP;
    let block_h = rows as u32 * (patch + GAP) - GAP;
    (
        2 * MARGIN + block_w,
        2 * MARGIN + groups as u32 * block_h + (groups as u32 - 1) * GROUP_GAP,
    )
}

/// Draws `weight` (`(kernels, 3, k, k)`) split into `groups` halves of its maps.
pub fn kernel_grid(weight: &Tensor, groups: usize, figure: &str) -> Result<Canvas, ReportError> {
    let fail = |message: String| ReportError::Draw {
        figure: figure.to_string(),
        message,
    };
    let dims = weight.dims().to_vec();
    let &[kernels, 3, side, side_w] = dims.as_slice() else {
        return Err(fail(format!(
            "conv1.weight has shape {dims:?}, not (kernels, 3, k, k)"
        )));
    };
    if side != side_w || kernels == 0 {
        return Err(fail(format!("conv1.weight has shape {dims:?}")));
    }
    // conv1 has one group itself; the towers start after it. A single-tower net (or one
    // whose maps do not split evenly) is drawn as one block.
    let groups = if groups > 1 && kernels % groups == 0 {
        groups
    } else {
        1
    };
    let values: Vec<f32> = weight
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .map_err(|e| fail(e.to_string()))?;
    let (w, h) = grid_size(kernels, groups, side);
    let mut canvas = Canvas::new(w, h);
    canvas
        .rgb
        .chunks_exact_mut(3)
        .for_each(|p| p.copy_from_slice(&BACKGROUND));
    let per_group = kernels / groups;
    let (columns, rows) = grid(per_group);
    let patch = side as u32 * SCALE;
    let block_h = rows as u32 * (patch + GAP) - GAP;
    let plane = side * side;
    for k in 0..kernels {
        let kernel = &values[k * 3 * plane..(k + 1) * 3 * plane];
        let (lo, hi) = kernel
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        let range = if hi > lo { hi - lo } else { 1.0 };
        let (group, index) = (k / per_group, k % per_group);
        let x0 = MARGIN + (index % columns) as u32 * (patch + GAP);
        let y0 = MARGIN
            + group as u32 * (block_h + GROUP_GAP)
            + (index / columns) as u32 * (patch + GAP);
        for y in 0..side {
            for x in 0..side {
                let channel = |c: usize| {
                    let v = (kernel[c * plane + y * side + x] - lo) / range;
                    (v * 255.0).round().clamp(0.0, 255.0) as u8
                };
                let rgb = [channel(0), channel(1), channel(2)];
                for dy in 0..SCALE {
                    for dx in 0..SCALE {
                        canvas.put(x0 + x as u32 * SCALE + dx, y0 + y as u32 * SCALE + dy, rgb);
                    }
                }
            }
        }
    }
    Ok(canvas)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn each_kernel_spans_black_to_white_and_the_groups_stack() {
        // 4 kernels of side 2 whose values grow along the kernel: after per-kernel
        // stretching every kernel has a 0 and a 255 whatever its own scale.
        let values: Vec<f32> = (0..4 * 3 * 4)
            .map(|i| (i / 12) as f32 * 10.0 + (i % 12) as f32)
            .collect();
        let weight = Tensor::from_vec(values, (4, 3, 2, 2), &Device::Cpu).unwrap();
        let canvas = kernel_grid(&weight, 2, "test").unwrap();
        assert_eq!((canvas.width, canvas.height), grid_size(4, 2, 2));
        // Two groups of two, one row each: 2 patches wide, 2 blocks high.
        let patch = 2 * SCALE;
        assert_eq!(canvas.width, 2 * MARGIN + 2 * patch + GAP);
        assert_eq!(canvas.height, 2 * MARGIN + 2 * patch + GROUP_GAP);
        let at = |x: u32, y: u32| {
            let i = ((y * canvas.width + x) * 3) as usize;
            [canvas.rgb[i], canvas.rgb[i + 1], canvas.rgb[i + 2]]
        };
        // Kernel 0's first pixel is its minimum in red (0), kernel 3 (second group,
        // second column) has its maximum in the blue channel of its last pixel.
        assert_eq!(at(MARGIN, MARGIN)[0], 0);
        // Kernel 1 (values 10..21) is stretched on its own: its minimum is 0 too, and its
        // maximum 255 (a scale shared by all kernels would give 62 and 131).
        let x1 = MARGIN + patch + GAP;
        assert_eq!(at(x1, MARGIN)[0], 0);
        assert_eq!(at(x1 + patch - 1, MARGIN + patch - 1)[2], 255);
        let (x3, y3) = (MARGIN + patch + GAP, MARGIN + patch + GROUP_GAP);
        assert_eq!(at(x3 + patch - 1, y3 + patch - 1)[2], 255);
    }
}
