//! The ten sample classes: Fashion-MNIST labels dressed up as ImageNet synsets.
//!
//! The wnids below are real ImageNet-1k (ILSVRC2012) synsets, chosen to stand for the
//! Fashion-MNIST classes so the rendered tree looks like a ten-class slice of ImageNet.
//! Sorting them by wnid (what every ImageNet loader does to number classes) gives a
//! genuine permutation of the Fashion label order, so a loader that numbers classes by
//! file order instead of sorted wnid order is caught by the tests downstream.

/// One sample class: where it comes from and what ImageNet calls it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleClass {
    /// The Fashion-MNIST label (0..=9) the images come from.
    pub fashion_label: u8,
    /// The ImageNet WordNet id that stands for it.
    pub wnid: &'static str,
    /// The synset's words, as in the devkit's `synset_words.txt`.
    pub name: &'static str,
}

/// Indexed by Fashion-MNIST label: `CLASSES[l].fashion_label == l`.
pub const CLASSES: [SampleClass; 10] = [
    SampleClass {
        fashion_label: 0,
        wnid: "n03595614",
        name: "jersey, T-shirt, tee shirt",
    },
    SampleClass {
        fashion_label: 1,
        wnid: "n03594734",
        name: "jean, blue jean, denim",
    },
    SampleClass {
        fashion_label: 2,
        wnid: "n04370456",
        name: "sweatshirt",
    },
    SampleClass {
        fashion_label: 3,
        wnid: "n03450230",
        name: "gown",
    },
    SampleClass {
        fashion_label: 4,
        wnid: "n04479046",
        name: "trench coat",
    },
    SampleClass {
        fashion_label: 5,
        wnid: "n04133789",
        name: "sandal",
    },
    SampleClass {
        fashion_label: 6,
        wnid: "n04350905",
        name: "suit, suit of clothes",
    },
    SampleClass {
        fashion_label: 7,
        wnid: "n04120489",
        name: "running shoe",
    },
    SampleClass {
        fashion_label: 8,
        wnid: "n02769748",
        name: "backpack, back pack, knapsack, packsack, rucksack, haversack",
    },
    SampleClass {
        fashion_label: 9,
        wnid: "n03124043",
        name: "cowboy boot",
    },
];

/// The classes in sorted-wnid order: the order ImageNet tools number classes in.
pub fn classes_by_wnid() -> Vec<&'static SampleClass> {
    let mut sorted: Vec<&SampleClass> = CLASSES.iter().collect();
    sorted.sort_by_key(|class| class.wnid);
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_indexed_by_their_fashion_label() {
        for (index, class) in CLASSES.iter().enumerate() {
            assert_eq!(class.fashion_label as usize, index);
        }
    }

    #[test]
    fn sorted_wnid_order_is_a_real_permutation_of_fashion_order() {
        let order: Vec<u8> = classes_by_wnid().iter().map(|c| c.fashion_label).collect();
        assert_eq!(order, [8, 9, 3, 1, 0, 7, 5, 6, 2, 4]);
        let mut unique: Vec<&str> = classes_by_wnid().iter().map(|c| c.wnid).collect();
        unique.dedup(); // sorted, so dedup removes every repeat
        assert_eq!(unique.len(), 10);
    }
}
