//! Ingest is strict and says why: files that would put wrong pixels in a shard
//! are skipped and listed with their true reason, quirks Pillow reads are read,
//! every file of a class folder is found, and an --out that would do harm is
//! refused before anything is written.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Output;

use common::*;
use pipeline::dataset::reader::{read_shard, shard_paths};
use pipeline::dataset::writer::ShardRow;
use pipeline::dataset::{Manifest, Split};

const SIZE: usize = 32;

/// A textured RGB JPEG (busy enough that its scan is long).
fn jpeg(width: u16, height: u16, seed: u32, progressive: bool) -> Vec<u8> {
    let mut pixels = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..u32::from(height) {
        for x in 0..u32::from(width) {
            let v = (x * 7 + y * 13 + seed * 31) ^ (x * y + seed);
            pixels.extend([v as u8, (v >> 3) as u8 ^ (x as u8), (y * 5 + seed) as u8]);
        }
    }
    let mut bytes = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut bytes, 90);
    encoder.set_progressive(progressive);
    encoder
        .encode(&pixels, width, height, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    bytes
}

/// Offset of the first byte of the first scan's entropy-coded data.
fn scan_start(bytes: &[u8]) -> usize {
    let sos = bytes.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    let length = u16::from_be_bytes([bytes[sos + 2], bytes[sos + 3]]) as usize;
    sos + 2 + length
}

/// The JPEG cut in the middle of its scan data, given a new end-of-image marker.
fn cut_with_end_marker(bytes: &[u8]) -> Vec<u8> {
    let start = scan_start(bytes);
    let mut cut = bytes[..start + (bytes.len() - start) / 2].to_vec();
    // Never leave a dangling 0xFF that would pair with the new marker oddly.
    while cut.last() == Some(&0xFF) {
        cut.pop();
    }
    cut.extend([0xFF, 0xD9]);
    cut
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Runs `pipeline ingest SRC --out OUT` at a small size (unless `extra` sets
/// the sizes); success not required.
fn ingest_output(source: &Path, out: &Path, extra: &[&str]) -> Output {
    let size = SIZE.to_string();
    let mut args = vec![
        "ingest",
        path_str(source),
        "--out",
        path_str(out),
        "--quiet",
    ];
    for (flag, default) in [
        ("--image-size", size.as_str()),
        ("--rows-per-shard", "64"),
        ("--rows-per-row-group", "16"),
    ] {
        if !extra.contains(&flag) {
            args.extend([flag, default]);
        }
    }
    args.extend_from_slice(extra);
    bin().args(args).output().unwrap()
}

fn ingest_ok(source: &Path, out: &Path) -> String {
    let output = ingest_output(source, out, &[]);
    assert!(
        output.status.success(),
        "ingest failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout(&output)
}

fn rows(dataset: &Path, split: Split) -> Vec<ShardRow> {
    let manifest = Manifest::load(dataset).unwrap();
    let shards = manifest.split(split).unwrap().shards;
    shard_paths(dataset, split, shards)
        .iter()
        .flat_map(|p| read_shard(p, manifest.image_size).unwrap())
        .collect()
}

fn rows_by_key(dataset: &Path, split: Split) -> BTreeMap<String, ShardRow> {
    rows(dataset, split)
        .into_iter()
        .map(|r| (r.key.clone(), r))
        .collect()
}

fn skipped(dataset: &Path) -> BTreeMap<String, String> {
    Manifest::load(dataset)
        .unwrap()
        .skipped
        .into_iter()
        .map(|s| (s.path, s.reason))
        .collect()
}

/// Every file under `dir` (relative path), to prove nothing was written.
fn listing(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = tree_bytes(dir).into_keys().collect();
    files.sort();
    files
}

/// Two classes with two good images each.
fn good_tree(root: &Path) {
    for (c, wnid) in ["n01", "n02"].iter().enumerate() {
        for i in 0..2u32 {
            let name = format!("train/{wnid}/{wnid}_{i}.JPEG");
            write(&root.join(name), &jpeg(64, 48, c as u32 * 10 + i, false));
        }
    }
}

#[test]
fn a_jpeg_cut_mid_scan_with_an_end_marker_appended_is_skipped_as_truncated() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    good_tree(&src);
    write(
        &src.join("train/n01/cut.JPEG"),
        &cut_with_end_marker(&jpeg(64, 48, 7, false)),
    );
    write(
        &src.join("train/n02/cut_progressive.JPEG"),
        &cut_with_end_marker(&jpeg(64, 48, 8, true)),
    );
    let out = tmp.path().join("ds");
    let summary = ingest_ok(&src, &out);

    let skipped = skipped(&out);
    let expected = "truncated JPEG: the scan ends before the frame is filled";
    assert_eq!(
        skipped.get("train/n01/cut.JPEG").map(String::as_str),
        Some(expected),
        "{skipped:?}"
    );
    assert_eq!(
        skipped
            .get("train/n02/cut_progressive.JPEG")
            .map(String::as_str),
        Some(expected),
        "{skipped:?}"
    );
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    let keys: Vec<String> = rows_by_key(&out, Split::Train).into_keys().collect();
    assert_eq!(keys.len(), 4, "only the good images are rows: {keys:?}");
    assert!(
        summary.contains(&format!("  train/n01/cut.JPEG: {expected}")),
        "{summary}"
    );
}

#[test]
fn a_frame_header_claiming_more_pixels_than_its_scan_holds_is_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    good_tree(&src);
    let mut bytes = jpeg(300, 400, 3, false);
    // SOF0: FF C0, length (2), precision (1), height (2), width (2).
    let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    bytes[sof + 5..sof + 9].copy_from_slice(&[0x0B, 0xB8, 0x0B, 0xB8]); // 3000×3000
    write(&src.join("train/n01/patched.JPEG"), &bytes);
    let out = tmp.path().join("ds");
    ingest_ok(&src, &out);

    let skipped = skipped(&out);
    assert_eq!(
        skipped.get("train/n01/patched.JPEG").map(String::as_str),
        Some("truncated JPEG: the scan ends before the frame is filled"),
        "{skipped:?}"
    );
    assert_eq!(rows(&out, Split::Train).len(), 4);
}

#[test]
fn bytes_after_the_end_of_image_marker_are_ignored_as_pillow_does() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let plain = jpeg(64, 48, 5, false);
    // A motion-photo-like trailer: a megabyte holding markers and a second JPEG
    // first, then video-like bytes, so no end-of-image marker sits near the end.
    let mut trailer = b"\0\0\0\x18ftypmp42".to_vec();
    trailer.extend([0xFF, 0xD9, 0xFF, 0xD8, 0x13, 0x37, 0xFF, 0x00]);
    trailer.extend(jpeg(16, 16, 9, false));
    let mut state = 1u32;
    while trailer.len() < 1 << 20 {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        trailer.push((state >> 24) as u8 & 0x7F);
    }
    assert!(
        !trailer[trailer.len() - 65_536..]
            .windows(2)
            .any(|w| w == [0xFF, 0xD9]),
        "the trailer's tail holds no end-of-image marker"
    );
    let mut with_trailer = plain.clone();
    with_trailer.extend(&trailer);
    write(&src.join("train/n01/plain.JPEG"), &plain);
    write(&src.join("train/n02/motion.JPEG"), &with_trailer);
    let out = tmp.path().join("ds");
    ingest_ok(&src, &out);

    assert!(skipped(&out).is_empty(), "{:?}", skipped(&out));
    let rows = rows_by_key(&out, Split::Train);
    let plain = &rows["train/n01/plain.JPEG"];
    let motion = &rows["train/n02/motion.JPEG"];
    assert_eq!(motion.label, 1);
    assert!(
        plain.pixels == motion.pixels,
        "the trailer changed the pixels"
    );
}

#[test]
fn files_in_sub_folders_of_a_class_folder_are_ingested_in_sorted_order() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for split in ["train", "val"] {
        for (i, name) in [
            "n01/z.JPEG",
            "n01/sub/b.JPEG",
            "n01/a.JPEG",
            "n01/sub/deeper/c.JPEG",
            "n02/x.JPEG",
        ]
        .iter()
        .enumerate()
        {
            write(&src.join(split).join(name), &jpeg(48, 40, i as u32, false));
        }
    }
    let out = tmp.path().join("ds");
    let summary = ingest_ok(&src, &out);
    assert!(
        summary.contains("train       5 images in 1 shard"),
        "{summary}"
    );
    assert!(skipped(&out).is_empty(), "{:?}", skipped(&out));

    // Val rows keep the listing order: a folder's files, then its sub-folders.
    let val: Vec<(String, i32)> = rows(&out, Split::Val)
        .into_iter()
        .map(|r| (r.key, r.label))
        .collect();
    let expected = [
        ("val/n01/a.JPEG", 0),
        ("val/n01/z.JPEG", 0),
        ("val/n01/sub/b.JPEG", 0),
        ("val/n01/sub/deeper/c.JPEG", 0),
        ("val/n02/x.JPEG", 1),
    ];
    let expected: Vec<(String, i32)> = expected.iter().map(|(k, l)| (k.to_string(), *l)).collect();
    assert_eq!(val, expected);
    let train = rows_by_key(&out, Split::Train);
    assert_eq!(train["train/n01/sub/deeper/c.JPEG"].label, 0);
    assert_eq!(train["train/n02/x.JPEG"].label, 1);
}

#[test]
fn a_file_name_that_is_not_utf8_is_ingested_under_an_escaped_unique_key() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    good_tree(&src);
    let class = src.join("train/n01");
    let ff = class.join(OsStr::from_bytes(b"caf\xff.JPEG"));
    let fe = class.join(OsStr::from_bytes(b"caf\xfe.JPEG"));
    write(&ff, &jpeg(64, 48, 40, false));
    write(&fe, &jpeg(64, 48, 41, false));
    let out = tmp.path().join("ds");
    ingest_ok(&src, &out);

    assert!(skipped(&out).is_empty(), "{:?}", skipped(&out));
    let rows = rows_by_key(&out, Split::Train);
    assert_eq!(rows.len(), 6, "{:?}", rows.keys().collect::<Vec<_>>());
    let ff_row = &rows[r"train/n01/caf\xff.JPEG"];
    let fe_row = &rows[r"train/n01/caf\xfe.JPEG"];
    assert_eq!(ff_row.label, 0);
    assert!(
        ff_row.pixels != fe_row.pixels,
        "two files, two different images"
    );
}

#[test]
fn dangling_symlinks_and_symlink_loops_are_skipped_and_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    good_tree(&src);
    let class = src.join("train/n01");
    std::os::unix::fs::symlink("missing.JPEG", class.join("dangling.JPEG")).unwrap();
    std::os::unix::fs::symlink("loop.JPEG", class.join("loop.JPEG")).unwrap();
    std::os::unix::fs::symlink("n01_0.JPEG", class.join("linked.JPEG")).unwrap();
    let out = tmp.path().join("ds");
    ingest_ok(&src, &out);

    let skipped = skipped(&out);
    assert_eq!(
        skipped.get("train/n01/dangling.JPEG").map(String::as_str),
        Some("dangling symlink: missing.JPEG does not exist"),
        "{skipped:?}"
    );
    assert_eq!(
        skipped.get("train/n01/loop.JPEG").map(String::as_str),
        Some("symlink loop: loop.JPEG leads back to itself"),
        "{skipped:?}"
    );
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    let rows = rows_by_key(&out, Split::Train);
    assert_eq!(
        rows.keys().cloned().collect::<Vec<_>>(),
        [
            "train/n01/linked.JPEG",
            "train/n01/n01_0.JPEG",
            "train/n01/n01_1.JPEG",
            "train/n02/n02_0.JPEG",
            "train/n02/n02_1.JPEG",
        ]
    );
}

#[test]
fn a_symlink_back_to_a_folder_being_walked_is_listed_as_a_loop() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    good_tree(&src);
    std::os::unix::fs::symlink(".", src.join("train/n01/again")).unwrap();
    let out = tmp.path().join("ds");
    ingest_ok(&src, &out);
    let skipped = skipped(&out);
    assert_eq!(
        skipped.get("train/n01/again").map(String::as_str),
        Some("symlink loop: leads back to train/n01"),
        "{skipped:?}"
    );
    assert_eq!(rows(&out, Split::Train).len(), 4);
}

#[test]
fn an_out_folder_in_the_source_or_holding_other_files_is_refused_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    good_tree(&src);
    let before = listing(&src);

    for out in [src.clone(), src.join("out"), src.join("train/n01/ds")] {
        let output = ingest_output(&src, &out, &[]);
        assert!(!output.status.success(), "--out {out:?} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!(
                "--out {} is inside the source folder {}",
                out.display(),
                src.display()
            )),
            "{stderr}"
        );
        assert_eq!(listing(&src), before, "--out {out:?} wrote into the source");
        assert!(!out.exists() || out == src);
    }

    let busy = tmp.path().join("busy");
    write(&busy.join("notes.txt"), b"mine");
    let output = ingest_output(&src, &busy, &[]);
    assert!(!output.status.success(), "a non-empty folder was accepted");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "--out {} is a folder that is neither empty nor a dataset (it holds notes.txt)",
            busy.display()
        )),
        "{stderr}"
    );
    assert_eq!(listing(&busy), ["notes.txt"]);

    // The source is untouched, so it still ingests (into a new, or an empty, folder).
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    ingest_ok(&src, &empty);
    assert_eq!(rows(&empty, Split::Train).len(), 4);
}

#[test]
fn a_split_without_a_usable_image_is_an_error_naming_the_split_and_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write(&src.join("train/n01/a.JPEG"), b"not a jpeg");
    write(
        &src.join("train/n02/b.JPEG"),
        &cut_with_end_marker(&jpeg(64, 48, 1, false)),
    );
    let output = ingest_output(&src, &tmp.path().join("ds"), &[]);
    assert!(
        !output.status.success(),
        "an all-corrupt train split passed"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "{}: the train split has no usable image (2 files skipped):",
            src.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("  train/n01/a.JPEG: unsupported format (first bytes 6e 6f 74 20)"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "  train/n02/b.JPEG: truncated JPEG: the scan ends before the frame is filled"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{} holds this unfinished ingest; remove it before ingesting again",
            tmp.path().join("ds").display()
        )),
        "{stderr}"
    );

    // A val folder whose images are all corrupt: the same rule, naming val.
    let src = tmp.path().join("src-val");
    good_tree(&src);
    write(&src.join("val/n01/v.JPEG"), b"");
    let output = ingest_output(&src, &tmp.path().join("ds-val"), &[]);
    assert!(!output.status.success(), "an all-corrupt val split passed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "{}: the val split has no usable image (1 file skipped):\n  val/n01/v.JPEG: empty file",
            src.display()
        )),
        "{stderr}"
    );
}

#[test]
fn a_class_left_without_images_is_named_in_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    good_tree(&src);
    write(&src.join("train/n03/only.JPEG"), b"GIF89a");
    let out = tmp.path().join("ds");
    let summary = ingest_ok(&src, &out);
    assert!(
        summary.contains("warning     1 class without a train image: n03"),
        "{summary}"
    );
    good_tree(&tmp.path().join("src2"));
    let clean = ingest_ok(&tmp.path().join("src2"), &tmp.path().join("ds3"));
    assert!(!clean.contains("warning"), "{clean}");
}

#[test]
fn re_ingesting_a_complete_dataset_with_other_settings_says_it_is_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    good_tree(&src);
    let out = tmp.path().join("ds");
    ingest_ok(&src, &out);
    let before = tree_bytes(&out);
    let output = ingest_output(&src, &out, &["--image-size", "48"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "{} holds a complete dataset made with other settings or another source listing; \
             to ingest with these settings, remove {} or choose another --out",
            out.display(),
            out.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("unfinished"), "{stderr}");
    assert!(tree_bytes(&out) == before, "the dataset was changed");
    // The same settings still re-run cleanly over it.
    ingest_ok(&src, &out);
}

#[test]
fn the_summary_counts_in_the_singular_and_the_plural() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    good_tree(&src);
    write(&src.join("val/n01/v.JPEG"), &jpeg(64, 48, 99, false));
    let out = tmp.path().join("ds");
    let output = ingest_output(
        &src,
        &out,
        &[
            "--rows-per-shard",
            "2",
            "--rows-per-row-group",
            "2",
            "--workers",
            "1",
        ],
    );
    let summary = stdout(&output);
    assert!(output.status.success(), "{summary}");
    assert!(
        summary.contains("train       4 images in 2 shards\n"),
        "{summary}"
    );
    assert!(
        summary.contains("val         1 image in 1 shard\n"),
        "{summary}"
    );
    assert!(summary.contains("this run    5 images in "), "{summary}");
    assert!(summary.contains(", 1 worker)"), "{summary}");
}
