//! Where each file goes under `out` for the three ways ImageNet is distributed, and the
//! label files each one ships. Paths here are relative to `out`.

use std::path::PathBuf;

use super::classes::{SampleClass, classes_by_wnid};
use crate::ingest::devkit::devkit_id_of;

/// The ImageNet distribution whose folder layout the sample copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SampleLayout {
    /// `train/<wnid>/…`, `val/<wnid>/…` (val sorted into class folders, as most
    /// training repos prepare it) plus the devkit-style `synset_words.txt`.
    Folders,
    /// Kaggle's ImageNet Object Localization Challenge: `ILSVRC/Data/CLS-LOC/{train,val}`,
    /// a flat val folder, `LOC_val_solution.csv` and `LOC_synset_mapping.txt`.
    Kaggle,
    /// The ILSVRC2012 tarballs + devkit: `train/<wnid>/…`, a flat `val/`, and
    /// `ILSVRC2012_validation_ground_truth.txt` in devkit (meta.mat) class ids.
    Devkit,
}

/// `wnid name` lines in sorted-wnid order (Folders layout).
pub const SYNSET_WORDS: &str = "synset_words.txt";
/// Kaggle's val labels: `ImageId,PredictionString` with `wnid x_min y_min x_max y_max`.
pub const KAGGLE_VAL_SOLUTION: &str = "LOC_val_solution.csv";
/// Kaggle's class list: `wnid name` lines in sorted-wnid order.
pub const KAGGLE_SYNSET_MAPPING: &str = "LOC_synset_mapping.txt";
/// The devkit's val labels: one ILSVRC2012_ID per line, line k for val image k.
pub const DEVKIT_GROUND_TRUTH: &str = "ILSVRC2012_validation_ground_truth.txt";
/// Kaggle nests both splits under this folder.
const KAGGLE_DATA: &str = "ILSVRC/Data/CLS-LOC";

/// Every top-level entry any layout writes; re-rendering over an earlier sample clears
/// these (and only these) so no stale file from another layout or size survives.
pub const TOP_LEVEL_ENTRIES: [&str; 7] = [
    "train",
    "val",
    "ILSVRC",
    SYNSET_WORDS,
    KAGGLE_VAL_SOLUTION,
    KAGGLE_SYNSET_MAPPING,
    DEVKIT_GROUND_TRUTH,
];

/// ImageNet's val file name for 1-based val number `number`.
pub fn val_file_name(number: usize) -> String {
    format!("ILSVRC2012_val_{number:08}.JPEG")
}

/// `<wnid>_<n>.JPEG` in the class's train folder; `n` is the 1-based bundled index.
pub fn train_path(layout: SampleLayout, wnid: &str, n: usize) -> PathBuf {
    split_root(layout, "train")
        .join(wnid)
        .join(format!("{wnid}_{n}.JPEG"))
}

/// The val file for val number `number` of class `wnid`.
pub fn val_path(layout: SampleLayout, wnid: &str, number: usize) -> PathBuf {
    let val = split_root(layout, "val");
    match layout {
        SampleLayout::Folders => val.join(wnid).join(val_file_name(number)),
        SampleLayout::Kaggle | SampleLayout::Devkit => val.join(val_file_name(number)),
    }
}

/// Folders to create before any image is written.
pub fn folders(layout: SampleLayout) -> Vec<PathBuf> {
    let wnids = classes_by_wnid().into_iter().map(|class| class.wnid);
    let mut folders: Vec<PathBuf> = wnids
        .clone()
        .map(|w| split_root(layout, "train").join(w))
        .collect();
    match layout {
        SampleLayout::Folders => folders.extend(wnids.map(|w| split_root(layout, "val").join(w))),
        SampleLayout::Kaggle | SampleLayout::Devkit => folders.push(split_root(layout, "val")),
    }
    folders
}

fn split_root(layout: SampleLayout, split: &str) -> PathBuf {
    match layout {
        SampleLayout::Folders | SampleLayout::Devkit => PathBuf::from(split),
        SampleLayout::Kaggle => PathBuf::from(KAGGLE_DATA).join(split),
    }
}

/// What the label files need to know about one val image.
pub struct ValRecord {
    /// 1-based val number: the `<8-digit>` in its file name.
    pub number: usize,
    pub class: &'static SampleClass,
    /// `[x_min, y_min, x_max, y_max]` of the object in the rendered image.
    pub object_box: [u32; 4],
}

/// The label files of `layout` as (path, contents); `val` must be in val-number order.
pub fn label_files(layout: SampleLayout, val: &[ValRecord]) -> Vec<(PathBuf, String)> {
    match layout {
        SampleLayout::Folders => vec![(SYNSET_WORDS.into(), synset_lines())],
        SampleLayout::Kaggle => vec![
            (KAGGLE_VAL_SOLUTION.into(), kaggle_val_solution(val)),
            (KAGGLE_SYNSET_MAPPING.into(), synset_lines()),
        ],
        SampleLayout::Devkit => vec![(DEVKIT_GROUND_TRUTH.into(), devkit_ground_truth(val))],
    }
}

/// `wnid name` per line, sorted by wnid: the format of both the devkit's
/// `synset_words.txt` and Kaggle's `LOC_synset_mapping.txt`.
fn synset_lines() -> String {
    classes_by_wnid()
        .iter()
        .map(|class| format!("{} {}\n", class.wnid, class.name))
        .collect()
}

fn kaggle_val_solution(val: &[ValRecord]) -> String {
    let mut csv = String::from("ImageId,PredictionString\n");
    for record in val {
        let [x0, y0, x1, y1] = record.object_box;
        let image_id = val_file_name(record.number);
        let image_id = image_id.trim_end_matches(".JPEG");
        csv.push_str(&format!(
            "{image_id},{} {x0} {y0} {x1} {y1}\n",
            record.class.wnid
        ));
    }
    csv
}

fn devkit_ground_truth(val: &[ValRecord]) -> String {
    val.iter()
        .map(|record| {
            let id =
                devkit_id_of(record.class.wnid).expect("sample classes are ILSVRC2012 classes");
            format!("{id}\n")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::classes::CLASSES;
    use super::*;

    fn records() -> Vec<ValRecord> {
        vec![
            ValRecord {
                number: 1,
                class: &CLASSES[7],
                object_box: [1, 2, 30, 40],
            },
            ValRecord {
                number: 2,
                class: &CLASSES[0],
                object_box: [0, 0, 9, 9],
            },
        ]
    }

    #[test]
    fn paths_follow_each_layout() {
        assert_eq!(
            train_path(SampleLayout::Kaggle, "n03124043", 7),
            PathBuf::from("ILSVRC/Data/CLS-LOC/train/n03124043/n03124043_7.JPEG")
        );
        assert_eq!(
            val_path(SampleLayout::Folders, "n03124043", 12),
            PathBuf::from("val/n03124043/ILSVRC2012_val_00000012.JPEG")
        );
        assert_eq!(
            val_path(SampleLayout::Devkit, "n03124043", 12),
            PathBuf::from("val/ILSVRC2012_val_00000012.JPEG")
        );
        assert_eq!(folders(SampleLayout::Folders).len(), 20);
        assert_eq!(
            folders(SampleLayout::Kaggle).last().unwrap(),
            &PathBuf::from("ILSVRC/Data/CLS-LOC/val")
        );
    }

    #[test]
    fn kaggle_solution_rows_name_wnid_then_box() {
        let files = label_files(SampleLayout::Kaggle, &records());
        let (path, csv) = &files[0];
        assert_eq!(path, &PathBuf::from(KAGGLE_VAL_SOLUTION));
        assert_eq!(
            csv,
            "ImageId,PredictionString\n\
             ILSVRC2012_val_00000001,n04120489 1 2 30 40\n\
             ILSVRC2012_val_00000002,n03595614 0 0 9 9\n"
        );
        let mapping = &files[1].1;
        assert!(mapping.starts_with("n02769748 backpack, back pack,"));
        assert_eq!(mapping.lines().count(), 10);
    }

    #[test]
    fn devkit_ground_truth_uses_meta_mat_ids_not_sorted_indices() {
        let files = label_files(SampleLayout::Devkit, &records());
        // running shoe is ILSVRC2012_ID 760, jersey 961 (sorted indices would be 770, 610).
        assert_eq!(files[0].1, "760\n961\n");
    }
}
