//! End-to-end tests: render small samples into temp folders and read the files back.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::layout::{DEVKIT_GROUND_TRUTH, KAGGLE_VAL_SOLUTION, SYNSET_WORDS};
use super::quirks::{GRAYSCALE_WHAT, Quirk};
use super::*;
use crate::ingest::devkit::devkit_id_to_wnid;

/// Small and fast: 3 train + 2 val images per class, short sides 40..=64.
fn small(out: &Path, layout: SampleLayout, seed: u64) -> SampleOptions {
    SampleOptions {
        out: out.to_path_buf(),
        layout,
        seed,
        train_per_class: 3,
        val_per_class: 2,
        min_short_side: 40,
        max_short_side: 64,
        colour_share: 0.5,
    }
}

/// Every file under `root`, relative path → bytes.
fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, files: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, files);
            } else {
                files.insert(
                    path.strip_prefix(root).unwrap().to_path_buf(),
                    fs::read(&path).unwrap(),
                );
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(root, root, &mut files);
    files
}

fn images(tree: &BTreeMap<PathBuf, Vec<u8>>) -> impl Iterator<Item = (&PathBuf, &Vec<u8>)> {
    tree.iter()
        .filter(|(path, _)| path.extension().is_some_and(|e| e == "JPEG"))
}

/// JPEG marker segments before the first scan: (marker byte, payload).
fn jpeg_segments(bytes: &[u8]) -> Vec<(u8, &[u8])> {
    assert_eq!(&bytes[..2], [0xFF, 0xD8], "not a JPEG (no SOI)");
    let mut segments = Vec::new();
    let mut at = 2;
    while at + 4 <= bytes.len() && bytes[at] == 0xFF {
        let marker = bytes[at + 1];
        let length = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
        segments.push((marker, &bytes[at + 4..at + 2 + length]));
        if marker == 0xDA {
            break; // start of scan: entropy-coded data follows
        }
        at += 2 + length;
    }
    segments
}

/// Component count from the SOF0/SOF1/SOF2 header.
fn sof_components(bytes: &[u8]) -> u8 {
    let (_, sof) = jpeg_segments(bytes)
        .into_iter()
        .find(|(marker, _)| matches!(marker, 0xC0..=0xC2))
        .expect("JPEG has a SOF header");
    sof[5] // precision(1) height(2) width(2) components(1)
}

/// The Adobe APP14 colour transform byte, if the JPEG has the marker.
fn adobe_transform(bytes: &[u8]) -> Option<u8> {
    jpeg_segments(bytes)
        .into_iter()
        .find(|(marker, payload)| *marker == 0xEE && payload.starts_with(b"Adobe"))
        .map(|(_, payload)| payload[11])
}

/// Mean over pixels of (max channel - min channel): 0 for gray, large for colour.
fn mean_chroma(rgb: &image::RgbImage) -> f64 {
    let total: u64 = rgb
        .pixels()
        .map(|p| (*p.0.iter().max().unwrap() - *p.0.iter().min().unwrap()) as u64)
        .sum();
    total as f64 / (rgb.width() * rgb.height()) as f64
}

fn quirk_path(summary: &SampleSummary, what: &str) -> PathBuf {
    let matching: Vec<_> = summary.quirks.iter().filter(|(_, w)| *w == what).collect();
    assert_eq!(matching.len(), 1, "exactly one file with quirk {what:?}");
    matching[0].0.clone()
}

#[test]
fn same_seed_gives_identical_trees_and_another_seed_does_not() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    render(&small(dirs[0].path(), SampleLayout::Kaggle, 5)).unwrap();
    render(&small(dirs[1].path(), SampleLayout::Kaggle, 5)).unwrap();
    render(&small(dirs[2].path(), SampleLayout::Kaggle, 6)).unwrap();
    let (a, b, c) = (
        tree(dirs[0].path()),
        tree(dirs[1].path()),
        tree(dirs[2].path()),
    );
    assert_eq!(a.len(), 30 + 20 + 3);
    assert!(a == b, "same seed must give byte-identical trees");
    // Same file names (val numbers are a permutation either way), different pixels.
    assert_eq!(a.keys().collect::<Vec<_>>(), c.keys().collect::<Vec<_>>());
    let differing = images(&a)
        .filter(|(path, bytes)| c[*path] != **bytes)
        .count();
    assert_eq!(differing, 50, "another seed must change every image");
}

#[test]
fn output_does_not_depend_on_thread_count() {
    let (one, many) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| render(&small(one.path(), SampleLayout::Devkit, 9)))
        .unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    pool.install(|| render(&small(many.path(), SampleLayout::Devkit, 9)))
        .unwrap();
    assert!(tree(one.path()) == tree(many.path()));
}

#[test]
fn default_sizes_stay_within_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SampleOptions {
        out: dir.path().to_path_buf(),
        train_per_class: 2,
        val_per_class: 2,
        ..SampleOptions::default()
    };
    render(&opts).unwrap();
    let files = tree(dir.path());
    let mut shorts = Vec::new();
    for (path, _) in images(&files) {
        let (width, height) = image::ImageReader::open(dir.path().join(path))
            .unwrap()
            .with_guessed_format()
            .unwrap()
            .into_dimensions()
            .unwrap();
        let (short, long) = (width.min(height), width.max(height));
        assert!((256..=500).contains(&short), "{path:?} is {width}x{height}");
        assert!(
            long as f64 <= short as f64 * 4.0 / 3.0 + 0.5,
            "{path:?} is {width}x{height}"
        );
        shorts.push(short);
    }
    assert_eq!(shorts.len(), 40);
    assert!(shorts.iter().min() != shorts.iter().max(), "sizes vary");
}

#[test]
fn quirk_files_are_what_they_claim() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SampleOptions {
        colour_share: 0.0,
        ..small(dir.path(), SampleLayout::Folders, 3)
    };
    let summary = render(&opts).unwrap();
    assert_eq!(summary.quirks.len(), 4);
    let read = |path: &Path| fs::read(dir.path().join(path)).unwrap();

    // The PNG under a .JPEG name: first T-shirt of the subset (bundled index 1 -> _2).
    let png = quirk_path(&summary, Quirk::PngNamedJpeg.what());
    assert_eq!(png, PathBuf::from("train/n03595614/n03595614_2.JPEG"));
    assert_eq!(&read(&png)[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(
        image::guess_format(&read(&png)).unwrap(),
        image::ImageFormat::Png
    );

    // The CMYK JPEG: 4 components, Adobe marker with transform 2, decodes to colour.
    let cmyk_path = quirk_path(&summary, Quirk::Cmyk.what());
    assert!(cmyk_path.starts_with("train/n04479046"), "{cmyk_path:?}");
    let cmyk = read(&cmyk_path);
    assert_eq!(sof_components(&cmyk), 4);
    assert_eq!(adobe_transform(&cmyk), Some(2));
    let decoded = image::load_from_memory(&cmyk).unwrap().to_rgb8();
    assert!(
        mean_chroma(&decoded) > 20.0,
        "CMYK image should decode to real colour"
    );

    // The truncated JPEG: a real JPEG start, but no EOI marker anywhere.
    let cut_path = quirk_path(&summary, Quirk::Truncated.what());
    assert!(cut_path.starts_with("train/n04120489"), "{cut_path:?}");
    let cut = read(&cut_path);
    assert_eq!(&cut[..2], [0xFF, 0xD8]);
    assert!(
        !cut.windows(2).any(|w| w == [0xFF, 0xD9]),
        "truncated file must lack EOI"
    );
    assert!(!jpeg_segments(&cut).is_empty());

    // Grayscale: with colour_share 0 every other train and val JPEG has one component.
    let gray = quirk_path(&summary, GRAYSCALE_WHAT);
    assert_eq!(
        image::load_from_memory(&read(&gray)).unwrap().color(),
        image::ColorType::L8
    );
    let quirk_files = [png, cmyk_path, cut_path];
    for (path, bytes) in images(&tree(dir.path())).filter(|(p, _)| !quirk_files.contains(*p)) {
        assert_eq!(sof_components(bytes), 1, "{path:?}");
        assert_eq!(adobe_transform(bytes), None, "{path:?}");
        assert!(bytes.ends_with(&[0xFF, 0xD9]), "{path:?} is complete");
    }
}

#[test]
fn class_counts_and_train_names_follow_the_subset() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SampleOptions {
        train_per_class: 4,
        val_per_class: 3,
        ..small(dir.path(), SampleLayout::Folders, 1)
    };
    let summary = render(&opts).unwrap();
    assert_eq!((summary.train_images, summary.val_images), (40, 30));
    for class in CLASSES {
        let count = |split: &str| {
            fs::read_dir(dir.path().join(split).join(class.wnid))
                .unwrap()
                .count()
        };
        assert_eq!(count("train"), 4, "{}", class.wnid);
        assert_eq!(count("val"), 3, "{}", class.wnid);
    }
    // Bundled image 1 is an ankle boot, so it is the cowboy boot class's `_1`.
    assert!(
        dir.path()
            .join("train/n03124043/n03124043_1.JPEG")
            .is_file()
    );
    let words = fs::read_to_string(dir.path().join(SYNSET_WORDS)).unwrap();
    let wnids: Vec<&str> = words
        .lines()
        .map(|line| line.split_once(' ').unwrap().0)
        .collect();
    assert_eq!(wnids.len(), 10);
    assert!(wnids.is_sorted());
    assert!(words.contains("n04479046 trench coat\n"));
}

#[test]
fn flat_val_labels_agree_with_the_class_folders() {
    let seed = 11;
    let (folders, kaggle, devkit) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    render(&small(folders.path(), SampleLayout::Folders, seed)).unwrap();
    render(&small(kaggle.path(), SampleLayout::Kaggle, seed)).unwrap();
    render(&small(devkit.path(), SampleLayout::Devkit, seed)).unwrap();

    // Truth: Folders sorts val into class folders; the layout does not change any pixel.
    let truth: BTreeMap<String, (String, Vec<u8>)> = images(&tree(folders.path()))
        .filter(|(path, _)| path.starts_with("val"))
        .map(|(path, bytes)| {
            let wnid = path
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, (wnid, bytes.clone()))
        })
        .collect();
    assert_eq!(truth.len(), 20);
    let in_val_order: Vec<&str> = truth.values().map(|(wnid, _)| wnid.as_str()).collect();
    assert!(
        in_val_order[..10].iter().any(|w| *w != in_val_order[0]),
        "val numbers interleave classes"
    );

    // Kaggle: one CSV row per flat val image, naming the right wnid first.
    let csv = fs::read_to_string(kaggle.path().join(KAGGLE_VAL_SOLUTION)).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("ImageId,PredictionString"));
    let rows: Vec<(&str, &str)> = lines.map(|line| line.split_once(',').unwrap()).collect();
    assert_eq!(rows.len(), truth.len());
    let kaggle_val = kaggle.path().join("ILSVRC/Data/CLS-LOC/val");
    for (name, (wnid, bytes)) in &truth {
        let id = name.trim_end_matches(".JPEG");
        let matching: Vec<_> = rows.iter().filter(|(row_id, _)| row_id == &id).collect();
        assert_eq!(matching.len(), 1, "{id}");
        let fields: Vec<&str> = matching[0].1.split(' ').collect();
        assert_eq!(fields[0], wnid, "{id}");
        let numbers: Vec<u32> = fields[1..].iter().map(|f| f.parse().unwrap()).collect();
        assert!(
            numbers.len() == 4 && numbers[0] <= numbers[2] && numbers[1] <= numbers[3],
            "{id} box"
        );
        assert_eq!(&fs::read(kaggle_val.join(name)).unwrap(), bytes, "{id}");
    }

    // Devkit: line k holds the meta.mat ILSVRC2012_ID of val image k.
    let ids = fs::read_to_string(devkit.path().join(DEVKIT_GROUND_TRUTH)).unwrap();
    let table = devkit_id_to_wnid();
    let ids: Vec<usize> = ids.lines().map(|line| line.parse().unwrap()).collect();
    assert_eq!(ids.len(), truth.len());
    for (line, ((name, (wnid, bytes)), id)) in truth.iter().zip(&ids).enumerate() {
        assert_eq!(name, &format!("ILSVRC2012_val_{:08}.JPEG", line + 1));
        assert_eq!(table[id - 1], wnid, "{name}");
        assert_eq!(
            &fs::read(devkit.path().join("val").join(name)).unwrap(),
            bytes,
            "{name}"
        );
    }
}

#[test]
fn colourised_images_decode_to_rgb_with_real_chroma() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SampleOptions {
        train_per_class: 6,
        ..small(dir.path(), SampleLayout::Devkit, 2)
    };
    let summary = render(&opts).unwrap();
    let quirk_files: Vec<&PathBuf> = summary
        .quirks
        .iter()
        .filter(|(_, what)| *what != GRAYSCALE_WHAT)
        .map(|(path, _)| path)
        .collect();
    let (mut colour, mut gray) = (0, 0);
    for (path, bytes) in images(&tree(dir.path())).filter(|(p, _)| !quirk_files.contains(p)) {
        let decoded = image::load_from_memory(bytes).unwrap();
        match decoded.color() {
            image::ColorType::Rgb8 => {
                colour += 1;
                assert!(
                    mean_chroma(&decoded.to_rgb8()) > 20.0,
                    "{path:?} is coloured in name only"
                );
            }
            image::ColorType::L8 => gray += 1,
            other => panic!("{path:?} decoded as {other:?}"),
        }
    }
    assert_eq!(colour + gray, 80 - 3);
    // colour_share 0.5 over 77 images: both kinds, roughly half each.
    assert!((20..=57).contains(&colour), "{colour} coloured of 77");
}

#[test]
fn rerender_replaces_an_earlier_render_but_refuses_a_foreign_folder() {
    let foreign = tempfile::tempdir().unwrap();
    fs::write(foreign.path().join("holiday.jpg"), b"not ours").unwrap();
    let error = render(&small(foreign.path(), SampleLayout::Folders, 1)).unwrap_err();
    assert!(matches!(error, SampleError::OutNotEmpty { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains(&foreign.path().display().to_string())
    );

    let (reused, fresh) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    render(&SampleOptions {
        train_per_class: 5,
        ..small(reused.path(), SampleLayout::Folders, 1)
    })
    .unwrap();
    render(&small(reused.path(), SampleLayout::Devkit, 1)).unwrap();
    render(&small(fresh.path(), SampleLayout::Devkit, 1)).unwrap();
    assert!(
        tree(reused.path()) == tree(fresh.path()),
        "no file of the first render survives"
    );
}

#[test]
fn bad_options_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = small(dir.path(), SampleLayout::Folders, 0);
    let cases = [
        (
            SampleOptions {
                train_per_class: 601,
                ..base.clone()
            },
            "train_per_class",
        ),
        (
            SampleOptions {
                val_per_class: 0,
                ..base.clone()
            },
            "val_per_class",
        ),
        (
            SampleOptions {
                min_short_side: 80,
                max_short_side: 70,
                ..base.clone()
            },
            "max_short_side",
        ),
        (
            SampleOptions {
                colour_share: 1.5,
                ..base.clone()
            },
            "colour_share",
        ),
        (
            SampleOptions {
                colour_share: f64::NAN,
                ..base.clone()
            },
            "colour_share",
        ),
    ];
    for (opts, key) in cases {
        let error = render(&opts).unwrap_err();
        assert!(
            matches!(&error, SampleError::BadOption { key: k, .. } if *k == key),
            "{error}"
        );
        assert!(error.to_string().contains(key));
    }
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written for bad options"
    );
}

#[test]
fn summary_lines_name_counts_and_quirk_files() {
    let dir = tempfile::tempdir().unwrap();
    let summary = render(&small(dir.path(), SampleLayout::Kaggle, 4)).unwrap();
    let lines = main_summary_lines(&summary);
    assert_eq!(lines[0], "sample: 30 train + 20 val images in 10 classes");
    assert_eq!(lines.len(), 2 + summary.quirks.len());
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ILSVRC/Data/CLS-LOC/train/n04479046/") && l.contains("CMYK"))
    );
}
