//! Jpeg shards (`[ingest] encoding = "jpeg"`): what ingest writes, what the stream
//! decodes, what Python (pyarrow + Pillow, Hugging Face `datasets`) reads from them, and
//! how a resume, a merge in parts, an object store and a corrupt row treat them.

mod common;
#[allow(dead_code)] // the helpers other test files use
#[path = "common/moto.rs"]
mod moto;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;
use pipeline::dataset::reader::{read_shard, shard_paths};
use pipeline::dataset::writer::ShardWriter;
use pipeline::dataset::{Encoding, Manifest, Split, npy};
use pipeline::stream::{DataSource, EpochOptions, StreamConfig, ViewMode};

const S: usize = 32;
const C: usize = 28;
/// The most a pixel of the JPEG (quality 90, 4:4:4) of a 32 px Fashion-MNIST crop may
/// differ from the raw crop, and the most the mean difference may be: measured 0.9 mean
/// and 60 worst (the sharp edges of the garments ring); the bounds leave room for other
/// sample seeds, not for a wrong decode (a swapped channel or a shifted row costs ≥ 20 mean).
const JPEG_MEAN_ERROR: f64 = 2.5;
const JPEG_WORST_ERROR: u8 = 110;

/// The sample source (12 training and 3 validation images a class) ingested raw and
/// jpeg into 64-row shards of 16-row row groups: (source, raw, jpeg).
fn fixture() -> &'static (PathBuf, PathBuf, PathBuf) {
    static FIXTURE: OnceLock<(PathBuf, PathBuf, PathBuf)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let source = render_sample(&dir, "folders", 12, 3);
        let (raw, jpeg) = (dir.join("raw"), dir.join("jpeg"));
        ingest(&source, &raw, S, &[]);
        ingest(&source, &jpeg, S, &["--encoding", "jpeg"]);
        (source, raw, jpeg)
    })
}

/// Every row of a split, decoded (`read_shard` goes through the same door as the stream).
fn rows(dataset: &Path, split: Split) -> Vec<pipeline::dataset::writer::ShardRow> {
    let manifest = Manifest::load(dataset).unwrap();
    shard_paths(dataset, split, manifest.split(split).unwrap().shards)
        .iter()
        .flat_map(|p| read_shard(p, S).unwrap())
        .collect()
}

fn first_shard(dataset: &Path) -> PathBuf {
    dataset.join("train/part-00000.parquet")
}

#[test]
fn jpeg_rows_hold_the_crops_within_jpeg_error_and_the_mean_is_of_the_decoded_pixels() {
    let (_, raw, jpeg) = fixture();
    let manifest = Manifest::load(jpeg).unwrap();
    assert_eq!(manifest.encoding, Encoding::Jpeg);
    assert_eq!(manifest.jpeg_quality, Some(90));
    assert_eq!(Manifest::load(raw).unwrap().encoding, Encoding::Raw);

    let (raw_rows, jpeg_rows) = (rows(raw, Split::Train), rows(jpeg, Split::Train));
    assert_eq!(raw_rows.len(), jpeg_rows.len());
    let mut total = 0u64;
    let mut worst = 0u8;
    for (r, j) in raw_rows.iter().zip(&jpeg_rows) {
        assert_eq!((&r.key, r.label), (&j.key, j.label));
        assert_eq!(j.pixels.len(), S * S * 3);
        for (a, b) in r.pixels.iter().zip(&j.pixels) {
            total += u64::from(a.abs_diff(*b));
            worst = worst.max(a.abs_diff(*b));
        }
    }
    let mean_error = total as f64 / (raw_rows.len() * S * S * 3) as f64;
    println!("jpeg vs raw: mean |error| {mean_error:.3}, worst {worst}");
    assert!(mean_error > 0.0, "a lossy JPEG differs from the raw crop");
    assert!(mean_error < JPEG_MEAN_ERROR, "mean |error| {mean_error}");
    assert!(worst <= JPEG_WORST_ERROR, "worst error {worst}");

    // mean.npy is the mean of the decoded training pixels, which the stream subtracts.
    let mean = npy::read_f32(&jpeg.join("mean.npy"), &[S as u64, S as u64, 3]).unwrap();
    let mut sums = vec![0u64; S * S * 3];
    for row in &jpeg_rows {
        for (sum, &v) in sums.iter_mut().zip(&row.pixels) {
            *sum += u64::from(v);
        }
    }
    let n = jpeg_rows.len() as f64;
    for (i, (&sum, &m)) in sums.iter().zip(&mean).enumerate() {
        assert!(
            (sum as f64 / n - f64::from(m)).abs() < 1e-3,
            "mean.npy[{i}] = {m}, the decoded rows' mean is {}",
            sum as f64 / n
        );
    }
}

#[test]
fn the_stream_decodes_jpeg_rows_alike_for_any_worker_count_and_subtracts_the_mean() {
    let (_, _, jpeg) = fixture();
    let config = |workers| StreamConfig {
        shuffle_buffer: 64,
        workers,
        seed: 3,
        ..StreamConfig::default()
    };
    let options = |mode| EpochOptions {
        with_keys: true,
        ..EpochOptions::new(mode, C, 16)
    };
    let collect = |source: &DataSource, mode| {
        let mut stream = source.epoch(options(mode)).unwrap();
        let mut batches = Vec::new();
        while let Some(batch) = stream.next_batch() {
            let batch = batch.unwrap();
            batches.push((batch.images.clone(), batch.keys.clone()));
        }
        batches
    };
    let one = DataSource::open(jpeg, Split::Train, config(1)).unwrap();
    let three = DataSource::open(jpeg, Split::Train, config(3)).unwrap();
    assert!(
        collect(&one, ViewMode::Train) == collect(&three, ViewMode::Train),
        "jpeg batches differ between 1 and 3 workers"
    );

    // The centre view of a validation row is its decoded pixels minus the mean.
    let val = DataSource::open(jpeg, Split::Val, config(2)).unwrap();
    let mean = npy::read_f32(&jpeg.join("mean.npy"), &[S as u64, S as u64, 3]).unwrap();
    let rows = rows(jpeg, Split::Val);
    let (plane, offset) = (C * C, (S - C) / 2);
    let mut checked = 0;
    for (images, keys) in collect(&val, ViewMode::Centre) {
        for (i, key) in keys.iter().enumerate() {
            let row = rows.iter().find(|r| &r.key == key).unwrap();
            for c in 0..3 {
                for y in 0..C {
                    for x in 0..C {
                        let at = ((offset + y) * S + offset + x) * 3 + c;
                        assert_eq!(
                            images[i * 3 * plane + c * plane + y * C + x],
                            f32::from(row.pixels[at]) - mean[at],
                            "{key} at ({x}, {y}, {c})"
                        );
                    }
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, rows.len());
}

/// Runs `tests/jpeg_check.py` on the first training shard; the report and the pixels
/// Pillow (and `datasets`, when asked) decoded.
fn python_check(python: &Path, with_datasets: bool) -> (serde_json::Value, Vec<u8>, Vec<u8>) {
    let (_, _, jpeg) = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pixels");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/jpeg_check.py");
    let mut command = std::process::Command::new(python);
    command.arg(script).arg(first_shard(jpeg)).arg(&out);
    if with_datasets {
        // No network, no cache outside the test's folder.
        command
            .arg("--datasets")
            .env("HF_HOME", tmp.path().join("hf"))
            .env("HF_DATASETS_OFFLINE", "1")
            .env("HF_HUB_OFFLINE", "1");
    }
    let output = command.output().expect("python3 runs");
    assert!(
        output.status.success(),
        "jpeg_check.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = serde_json::from_slice(&output.stdout).unwrap();
    let pixels = std::fs::read(&out).unwrap();
    let from_datasets = std::fs::read(out.with_extension("datasets")).unwrap_or_default();
    (report, pixels, from_datasets)
}

#[test]
fn pillow_decodes_the_jpeg_rows_to_the_pixels_the_stream_uses() {
    let test = "pillow_decodes_the_jpeg_rows_to_the_pixels_the_stream_uses";
    let packages = [python::PYARROW, python::NUMPY, python::PILLOW];
    let Some(python) = python::python_with(test, &packages) else {
        return;
    };
    let (_, _, jpeg) = fixture();
    let (report, pillow, _) = python_check(&python, false);
    let ours = read_shard(&first_shard(jpeg), S).unwrap();
    assert_eq!(report["rows"], ours.len());
    assert_eq!(report["paths_are_keys"], true);
    assert_eq!(report["sizes"], serde_json::json!([[S, S]]));
    assert_eq!(report["modes"], serde_json::json!(["RGB"]));
    let ours: Vec<u8> = ours.iter().flat_map(|r| r.pixels.iter().copied()).collect();
    assert_eq!(pillow.len(), ours.len());
    // Same bytes, nearly the same pixels: zune-jpeg's integer IDCT and Pillow's
    // libjpeg-turbo (islow) round differently now and then: measured 1.1 % of the values
    // differing, by 3 at most (a wrong decode is off by tens).
    let differing = pillow.iter().zip(&ours).filter(|(a, b)| a != b).count();
    let worst = pillow.iter().zip(&ours).map(|(a, b)| a.abs_diff(*b)).max();
    println!(
        "Pillow vs the stream's decode: {differing} of {} values differ, worst {worst:?}",
        ours.len()
    );
    assert!(worst <= Some(4), "worst difference {worst:?}");
    assert!(
        differing * 20 < ours.len(),
        "{differing} of {} values differ",
        ours.len()
    );

    // The labels are named by the wnids in label order.
    let manifest = Manifest::load(jpeg).unwrap();
    let wnids: Vec<&str> = manifest.classes.iter().map(|c| c.wnid.as_str()).collect();
    assert_eq!(
        report["features"]["label"]["names"],
        serde_json::json!(wnids)
    );
    assert_eq!(report["features"]["image"]["_type"], "Image");
}

#[test]
fn hugging_face_datasets_opens_a_jpeg_shard_as_images_and_named_labels() {
    let test = "hugging_face_datasets_opens_a_jpeg_shard_as_images_and_named_labels";
    let packages = [
        python::PYARROW,
        python::NUMPY,
        python::PILLOW,
        python::Package {
            pip: "datasets",
            module: "datasets",
        },
    ];
    let Some(python) = python::python_with(test, &packages) else {
        return;
    };
    let (_, _, jpeg) = fixture();
    let (report, pillow, from_datasets) = python_check(&python, true);
    let manifest = Manifest::load(jpeg).unwrap();
    let wnids: Vec<&str> = manifest.classes.iter().map(|c| c.wnid.as_str()).collect();
    let features = &report["datasets_features"];
    assert_eq!(features["image"], "Image");
    assert_eq!(
        features["label"], "ClassLabel",
        "datasets takes the label's ClassLabel from the shard's metadata"
    );
    assert_eq!(features["label_names"], serde_json::json!(wnids));
    let first = &read_shard(&first_shard(jpeg), S).unwrap()[0];
    assert_eq!(report["datasets_first"]["key"], first.key.as_str());
    assert_eq!(
        report["datasets_first"]["label_name"],
        wnids[first.label as usize]
    );
    assert!(
        report["datasets_first"]["image_type"]
            .as_str()
            .unwrap()
            .starts_with("PIL."),
        "{}",
        report["datasets_first"]
    );
    assert!(
        from_datasets == pillow,
        "datasets' images differ from Pillow's decode"
    );
}

/// The fixture's ingest command line into `out`, with `extra` flags.
fn ingest_line(out: &Path, extra: &[&str]) -> Vec<String> {
    let source = &fixture().0;
    let mut args: Vec<String> = [
        "ingest",
        path_str(source),
        "--out",
        path_str(out),
        "--quiet",
    ]
    .map(String::from)
    .to_vec();
    args.extend(["--image-size", "32", "--rows-per-shard", "64"].map(String::from));
    args.extend(["--rows-per-row-group", "16"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn ingest_fails(out: &Path, extra: &[&str]) -> String {
    let args = ingest_line(out, extra);
    run_fails(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn parts_merge_jpeg_shards_into_the_one_shot_dataset_and_another_encoding_is_refused() {
    let (source, _, jpeg) = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("parts");
    for k in ["2/2", "1/2"] {
        ingest(source, &out, S, &["--encoding", "jpeg", "--part", k]);
    }
    assert!(
        tree_bytes(&out) == tree_bytes(jpeg),
        "jpeg parts merged differ from the one-shot jpeg ingest"
    );
    // The complete jpeg dataset ingested again raw: refused, naming both encodings.
    let message = ingest_fails(&out, &[]);
    assert!(
        message.contains("its shards are jpeg at quality 90; these settings ask for raw"),
        "{message}"
    );
    assert!(message.contains(path_str(&out)), "{message}");

    // A part rerun at another quality, and a merge at it, name both qualities.
    let other = tmp.path().join("other");
    ingest(source, &other, S, &["--encoding", "jpeg", "--part", "1/2"]);
    let quality_80 = ["--encoding", "jpeg", "--quality", "80"];
    let expected = "its shards are jpeg at quality 90; these settings ask for jpeg at quality 80";
    let message = ingest_fails(&other, &[&quality_80[..], &["--part", "1/2"]].concat());
    assert!(message.contains(expected), "{message}");
    let message = ingest_fails(&other, &[&quality_80[..], &["--merge"]].concat());
    assert!(message.contains(expected), "{message}");
    assert!(message.contains("part 1/2"), "{message}");
}

#[test]
fn ingest_to_an_object_store_publishes_the_jpeg_dataset_unchanged() {
    let test = "ingest_to_an_object_store_publishes_the_jpeg_dataset_unchanged";
    let Some(moto) = moto::Moto::start(test) else {
        return;
    };
    let (source, _, jpeg) = fixture();
    moto.create_bucket("jpeg");
    let output = bin()
        .args([
            "ingest",
            path_str(source),
            "--out",
            "s3://jpeg/ds",
            "--quiet",
        ])
        .args(["--image-size", "32", "--rows-per-shard", "64"])
        .args(["--rows-per-row-group", "16", "--encoding", "jpeg"])
        .envs(moto.env().iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        moto.objects("jpeg", "ds") == tree_bytes(jpeg),
        "the published jpeg dataset differs from the local one"
    );
}

#[test]
fn a_corrupt_jpeg_row_is_an_error_naming_shard_row_and_key() {
    let (_, _, jpeg) = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("ds");
    copy_dir(jpeg, &copy);
    let shard = first_shard(&copy);
    let manifest = Manifest::load(&copy).unwrap();
    let names: Vec<String> = manifest.classes.iter().map(|c| c.wnid.clone()).collect();

    // Rewritten with row 5's JPEG cut short: its CRC is of the bytes as written, so it
    // is the decoder that must refuse it, with the row named.
    let stored = stored_rows(&shard);
    let mut writer = ShardWriter::create_for(&shard, S, Encoding::Jpeg, &names).unwrap();
    for (g, group) in stored.chunks(16).enumerate() {
        let keys: Vec<&str> = group.iter().map(|r| r.key.as_str()).collect();
        let labels: Vec<i32> = group.iter().map(|r| r.label).collect();
        let images: Vec<bytes::Bytes> = group
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let bytes = if g * 16 + i == 5 {
                    &r.stored[..r.stored.len() / 2]
                } else {
                    &r.stored[..]
                };
                bytes::Bytes::copy_from_slice(bytes)
            })
            .collect();
        writer
            .write_encoded_row_group(&keys, &labels, &images)
            .unwrap();
    }
    writer.finish().unwrap();
    // One epoch over the copied dataset, which must fail.
    let stream_fails = || {
        run_fails(&[
            "stream",
            "--dataset",
            path_str(&copy),
            "--epochs",
            "1",
            "--batch-size",
            "16",
        ])
    };
    let message = stream_fails();
    let expected = format!(
        "{}: row 5 (row group 0, key {}): the image is not a decodable JPEG",
        shard.display(),
        stored[5].key
    );
    assert!(message.contains(&expected), "{message}");
    match read_shard(&shard, S) {
        Err(e) => assert!(
            e.to_string()
                .contains(&format!("row 5 (key {})", stored[5].key)),
            "{e}"
        ),
        Ok(_) => panic!("read_shard read a corrupt JPEG row"),
    }

    // A byte changed on disk after ingest: caught by the CRC before any decoder sees it.
    let (_, _, jpeg) = fixture();
    std::fs::copy(first_shard(jpeg), &shard).unwrap();
    let mut bytes = std::fs::read(&shard).unwrap();
    let first = stored_rows(&shard);
    let at = find(&bytes, &first[0].stored).expect("row 0's JPEG is in the file") + 200;
    bytes[at] ^= 0x55;
    std::fs::write(&shard, bytes).unwrap();
    let message = stream_fails();
    let expected = format!(
        "{}: row 0 (row group 0, key {}): pixel data is corrupt",
        shard.display(),
        first[0].key
    );
    assert!(message.contains(&expected), "{message}");
}

/// The rows of a shard as stored (JPEG bytes), through the Arrow reader.
fn stored_rows(shard: &Path) -> Vec<pipeline::dataset::reader::StoredRow> {
    let file = std::fs::File::open(shard).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for batch in reader {
        pipeline::dataset::reader::append_rows(&batch.unwrap(), &mut rows).unwrap();
    }
    rows
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn copy_dir(from: &Path, to: &Path) {
    for (name, bytes) in tree_bytes(from) {
        let path = to.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}
