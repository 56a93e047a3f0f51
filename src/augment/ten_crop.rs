//! The paper's test-time views (§4.1): the four corner patches and the centre patch,
//! and their horizontal reflections; the network's softmax outputs over the ten are
//! averaged.

use super::flip::mirrored;
use super::{Geometry, View, centre_view};

/// Order: top-left, top-right, bottom-left, bottom-right, centre; then the same five
/// mirrored. Callers that average predictions may ignore the order; callers that log
/// per-view results rely on it.
pub fn ten_crop_views(g: Geometry) -> [View; 10] {
    let far = g.max_offset();
    let corner = |x, y| View { x, y, flip: false };
    let five = [
        corner(0, 0),
        corner(far, 0),
        corner(0, far),
        corner(far, far),
        centre_view(g),
    ];
    std::array::from_fn(|i| {
        if i < 5 {
            five[i]
        } else {
            mirrored(five[i - 5])
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_geometry_gives_the_expected_origins() {
        let views = ten_crop_views(Geometry::new(256, 224).unwrap());
        let origins = [(0, 0), (32, 0), (0, 32), (32, 32), (16, 16)];
        for (i, v) in views.iter().enumerate() {
            let (x, y) = origins[i % 5];
            assert_eq!(*v, View { x, y, flip: i >= 5 }, "view {i}");
        }
    }
}
