//! The ILSVRC2012 devkit's class numbering (ILSVRC2012_ID → wnid).
//!
//! The devkit's `ILSVRC2012_validation_ground_truth.txt` holds one ILSVRC2012_ID per val
//! image, and those ids are NOT sorted-wnid order: they come from the devkit's
//! `data/meta.mat`. `devkit_ids.txt` holds that table (its header names the source), so
//! ingest can label a flat val folder and the sample's Devkit layout writes real ids.

const DEVKIT_IDS: &str = include_str!("devkit_ids.txt");

/// Number of leaf classes in ILSVRC2012.
pub const DEVKIT_CLASSES: usize = 1000;

/// The devkit table: index 0 holds the wnid of ILSVRC2012_ID 1, index 999 that of 1000.
///
/// The table is compiled in and checked by this module's tests, so a malformed line is a
/// build-time bug, not a runtime condition: it panics naming the line.
pub fn devkit_id_to_wnid() -> Vec<&'static str> {
    let mut wnids = Vec::with_capacity(DEVKIT_CLASSES);
    for (line_index, line) in DEVKIT_IDS.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(id), Some(wnid), None) = (fields.next(), fields.next(), fields.next()) else {
            panic!(
                "devkit_ids.txt line {}: expected `id wnid`, got {line:?}",
                line_index + 1
            );
        };
        let expected_id = wnids.len() + 1;
        assert_eq!(
            id.parse::<usize>().ok(),
            Some(expected_id),
            "devkit_ids.txt line {}: ids must run 1..=1000 in order",
            line_index + 1
        );
        wnids.push(wnid);
    }
    assert_eq!(
        wnids.len(),
        DEVKIT_CLASSES,
        "devkit_ids.txt must list {DEVKIT_CLASSES} classes"
    );
    wnids
}

/// The ILSVRC2012_ID (1-based) of `wnid`, if it is an ILSVRC2012 class.
pub fn devkit_id_of(wnid: &str) -> Option<usize> {
    devkit_id_to_wnid()
        .iter()
        .position(|&known| known == wnid)
        .map(|index| index + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::CLASSES;

    #[test]
    fn table_has_1000_distinct_wellformed_wnids() {
        let mut wnids = devkit_id_to_wnid();
        assert_eq!(wnids.len(), 1000);
        assert!(wnids.iter().all(|w| w.len() == 9
            && w.starts_with('n')
            && w[1..].bytes().all(|b| b.is_ascii_digit())));
        wnids.sort_unstable();
        wnids.dedup();
        assert_eq!(wnids.len(), 1000);
    }

    #[test]
    fn known_devkit_ids_match_meta_mat() {
        let wnids = devkit_id_to_wnid();
        // meta.mat's first synsets: kit fox, English setter, Siberian husky.
        assert_eq!(&wnids[..3], ["n02119789", "n02100735", "n02110185"]);
        assert_eq!(wnids[999], "n03255030"); // dumbbell
        assert_eq!(devkit_id_of("n01751748"), Some(490)); // sea snake, val image 1
        assert_eq!(devkit_id_of("n01440764"), Some(449)); // tench, sorted index 0
    }

    #[test]
    fn sorted_order_differs_from_devkit_order() {
        // The trap this table exists for: sorted wnid index != ILSVRC2012_ID - 1.
        let devkit = devkit_id_to_wnid();
        let mut sorted = devkit.clone();
        sorted.sort_unstable();
        assert_eq!(sorted[65], "n01751748"); // sea snake: sorted index 65, devkit id 490
        assert_ne!(sorted, devkit);
    }

    #[test]
    fn every_sample_class_has_a_devkit_id_that_maps_back() {
        let wnids = devkit_id_to_wnid();
        let expected = [961, 748, 837, 911, 825, 751, 794, 760, 847, 910];
        for (class, id) in CLASSES.iter().zip(expected) {
            assert_eq!(devkit_id_of(class.wnid), Some(id), "{}", class.wnid);
            assert_eq!(wnids[id - 1], class.wnid);
        }
    }
}
