//! The stream on a real ingested sample: exact augmentation values, ten-crop
//! geometry, determinism across worker counts, mid-epoch resume, rank
//! disjointness, class mixing, clean shutdown, bad shards, and the CLI.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;
use pipeline::dataset::reader::{read_shard, shard_paths};
use pipeline::dataset::writer::{ShardRow, write_shard};
use pipeline::dataset::{Manifest, Split, npy};
use pipeline::stream::plan::{PURPOSE_SAMPLE, derive_seed};
use pipeline::stream::{Batch, DataSource, EpochOptions, StreamConfig, StreamPosition, ViewMode};
use rand::SeedableRng;

const S: usize = 40;
const C: usize = 32;

/// One small ingested sample shared by every test in this file.
fn dataset() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join("src");
        let options = pipeline::sample::SampleOptions {
            out: source.clone(),
            train_per_class: 30,
            val_per_class: 5,
            ..Default::default()
        };
        pipeline::sample::render(&options).unwrap();
        let out = tmp.path().join("ds");
        ingest(
            &source,
            &out,
            S,
            &["--rows-per-shard", "64", "--rows-per-row-group", "16"],
        );
        (tmp, out)
    })
    .1
}

fn config(workers: usize, seed: u64) -> StreamConfig {
    StreamConfig {
        shuffle_buffer: 64,
        workers,
        seed,
        ..StreamConfig::default()
    }
}

fn options(mode: ViewMode, batch_size: usize) -> EpochOptions {
    EpochOptions {
        with_keys: true,
        ..EpochOptions::new(mode, C, batch_size)
    }
}

/// One batch's images, labels and keys.
type CollectedBatch = (Vec<f32>, Vec<i64>, Vec<String>);

fn collect(source: &DataSource, options: EpochOptions) -> Vec<CollectedBatch> {
    let mut stream = source.epoch(options).unwrap();
    let mut out = Vec::new();
    while let Some(batch) = stream.next_batch() {
        let batch = batch.unwrap();
        out.push((
            batch.images.clone(),
            batch.labels.clone(),
            batch.keys.clone(),
        ));
    }
    out
}

fn rows_by_key(split: Split) -> HashMap<String, ShardRow> {
    let manifest = Manifest::load(dataset()).unwrap();
    shard_paths(dataset(), split, manifest.split(split).unwrap().shards)
        .iter()
        .flat_map(|p| read_shard(p, S).unwrap())
        .map(|r| (r.key.clone(), r))
        .collect()
}

#[test]
fn training_batches_equal_a_direct_computation_of_crop_flip_mean_and_lighting() {
    let seed = 11;
    let source = DataSource::open(dataset(), Split::Train, config(2, seed)).unwrap();
    let manifest = Manifest::load(dataset()).unwrap();
    let mean = npy::read_f32(&dataset().join("mean.npy"), &[S as u64, S as u64, 3]).unwrap();
    let pca = &manifest.stats.pca;
    let rows = rows_by_key(Split::Train);
    let batch_size = 16;
    let batches = collect(&source, options(ViewMode::Train, batch_size));
    let mut flips = 0;
    for (b, (images, labels, keys)) in batches.iter().take(3).enumerate() {
        for (i, key) in keys.iter().enumerate() {
            let row = &rows[key];
            assert_eq!(labels[i], row.label as i64);
            // Replay the documented draws: x, y, flip, then α1..α3 ~ N(0, 0.1).
            let position = (b * batch_size + i) as u64;
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(derive_seed(
                seed,
                &[0, 0, PURPOSE_SAMPLE, position],
            ));
            use rand::RngExt;
            let x0 = rng.random_range(0..=S - C);
            let y0 = rng.random_range(0..=S - C);
            let flip = rng.random_bool(0.5);
            flips += flip as usize;
            let normal = rand_distr::Normal::new(0.0f32, 0.1).unwrap();
            use rand_distr::Distribution;
            let alphas: Vec<f32> = (0..3).map(|_| normal.sample(&mut rng)).collect();
            let offset: Vec<f32> = (0..3)
                .map(|c| {
                    255.0
                        * (0..3)
                            .map(|k| {
                                pca.eigenvectors[c][k] as f32
                                    * (alphas[k] * pca.eigenvalues[k] as f32)
                            })
                            .sum::<f32>()
                })
                .collect();
            let image = &images[i * 3 * C * C..(i + 1) * 3 * C * C];
            for c in 0..3 {
                for y in 0..C {
                    for x in 0..C {
                        let sx = if flip { x0 + C - 1 - x } else { x0 + x };
                        let at = ((y0 + y) * S + sx) * 3 + c;
                        let expected = (row.pixels[at] as f32 - mean[at]) + offset[c];
                        let got = image[c * C * C + y * C + x];
                        assert!(
                            (got - expected).abs() <= 1e-4,
                            "{key} c{c} y{y} x{x}: {got} vs {expected}"
                        );
                    }
                }
            }
        }
    }
    assert!(
        flips > 0 && flips < 48,
        "flips happen about half the time ({flips}/48)"
    );
}

#[test]
fn ten_crop_gives_corners_centre_and_their_mirrors() {
    let source = DataSource::open(dataset(), Split::Val, config(1, 0)).unwrap();
    let mean = npy::read_f32(&dataset().join("mean.npy"), &[S as u64, S as u64, 3]).unwrap();
    let rows = rows_by_key(Split::Val);
    let mut stream = source.epoch(options(ViewMode::TenCrop, 4)).unwrap();
    let batch: Batch = stream.next_batch().unwrap().unwrap();
    assert_eq!(batch.shape(), [40, 3, C, C]);
    let plane = C * C;
    let m = S - C;
    let origins = [(0, 0), (m, 0), (0, m), (m, m), (m / 2, m / 2)];
    for (i, key) in batch.keys.iter().enumerate() {
        let row = &rows[key];
        for v in 0..10 {
            let (x0, y0) = origins[v % 5];
            let flip = v >= 5;
            let view = &batch.images[(i * 10 + v) * 3 * plane..(i * 10 + v + 1) * 3 * plane];
            for c in 0..3 {
                for y in [0, C / 2, C - 1] {
                    for x in [0, 7, C - 1] {
                        let sx = if flip { x0 + C - 1 - x } else { x0 + x };
                        let at = ((y0 + y) * S + sx) * 3 + c;
                        assert_eq!(
                            view[c * plane + y * C + x],
                            row.pixels[at] as f32 - mean[at],
                            "view {v} of {key}"
                        );
                    }
                }
            }
        }
    }
    // Validation streams in file order and keeps the last partial batch.
    let all = collect(&source, options(ViewMode::Centre, 16));
    let keys: Vec<String> = all.iter().flat_map(|b| b.2.clone()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert_eq!(keys.len(), 50);
}

#[test]
fn same_seed_gives_the_same_batches_whatever_the_worker_count() {
    let one = DataSource::open(dataset(), Split::Train, config(1, 5)).unwrap();
    let two = DataSource::open(dataset(), Split::Train, config(2, 5)).unwrap();
    let a = collect(&one, options(ViewMode::Train, 16));
    let b = collect(&two, options(ViewMode::Train, 16));
    assert_eq!(a.len(), 299 / 16);
    assert!(a == b, "batches differ between 1 and 2 workers");
    let other = DataSource::open(dataset(), Split::Train, config(2, 6)).unwrap();
    assert!(
        collect(&other, options(ViewMode::Train, 16)) != a,
        "another seed gives other batches"
    );
    let next_epoch = EpochOptions {
        position: StreamPosition { epoch: 1, batch: 0 },
        ..options(ViewMode::Train, 16)
    };
    assert!(collect(&one, next_epoch) != a, "each epoch reshuffles");
}

#[test]
fn resuming_mid_epoch_yields_exactly_the_remaining_batches() {
    let source = DataSource::open(dataset(), Split::Train, config(2, 3)).unwrap();
    let epoch = 2;
    let full = collect(
        &source,
        EpochOptions {
            position: StreamPosition { epoch, batch: 0 },
            ..options(ViewMode::Train, 16)
        },
    );
    let k = 7;
    let mut stream = source
        .epoch(EpochOptions {
            position: StreamPosition { epoch, batch: 0 },
            ..options(ViewMode::Train, 16)
        })
        .unwrap();
    for _ in 0..k {
        stream.next_batch().unwrap().unwrap();
    }
    let saved = stream.position();
    assert_eq!(saved, StreamPosition { epoch, batch: k });
    drop(stream); // "the job was interrupted"
    let resumed = collect(
        &source,
        EpochOptions {
            position: saved,
            ..options(ViewMode::Train, 16)
        },
    );
    assert_eq!(resumed.len(), full.len() - k);
    assert!(
        resumed == full[k..],
        "resumed batches differ from the uninterrupted run"
    );
}

#[test]
fn ranks_read_disjoint_rows_and_yield_equal_batch_counts() {
    let source = DataSource::open(dataset(), Split::Train, config(2, 9)).unwrap();
    let per_rank: Vec<Vec<CollectedBatch>> = (0..3)
        .map(|rank| {
            collect(
                &source,
                EpochOptions {
                    rank,
                    world_size: 3,
                    ..options(ViewMode::Train, 8)
                },
            )
        })
        .collect();
    let counts: Vec<usize> = per_rank.iter().map(|b| b.len()).collect();
    assert!(
        counts.iter().all(|&n| n == counts[0] && n > 0),
        "{counts:?}"
    );
    let key_sets: Vec<BTreeSet<String>> = per_rank
        .iter()
        .map(|b| b.iter().flat_map(|x| x.2.clone()).collect())
        .collect();
    for i in 0..3 {
        assert_eq!(
            key_sets[i].len(),
            counts[i] * 8,
            "no duplicates within a rank"
        );
        for j in i + 1..3 {
            assert!(
                key_sets[i].is_disjoint(&key_sets[j]),
                "ranks {i} and {j} share rows"
            );
        }
    }
}

#[test]
fn batches_mix_classes_even_when_each_shard_holds_one_class() {
    // A dataset whose shards are single-class (the worst case for a streaming shuffle).
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rows = rows_by_key(Split::Train);
    let mut by_label: Vec<Vec<ShardRow>> = vec![Vec::new(); 10];
    for row in rows.into_values() {
        by_label[row.label as usize].push(row);
    }
    std::fs::create_dir_all(dir.join("train")).unwrap();
    let mut manifest = Manifest::load(dataset()).unwrap();
    let mut total = 0;
    for (label, rows) in by_label.iter_mut().enumerate() {
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        total += rows.len();
        write_shard(
            &dir.join(format!("train/part-{label:05}.parquet")),
            S,
            8,
            rows,
        )
        .unwrap();
    }
    manifest.splits.insert(
        Split::Train,
        pipeline::dataset::SplitInfo {
            rows: total,
            shards: 10,
        },
    );
    manifest.save(dir).unwrap();
    std::fs::copy(dataset().join("mean.npy"), dir.join("mean.npy")).unwrap();
    let source = DataSource::open(
        dir,
        Split::Train,
        StreamConfig {
            shuffle_buffer: 128,
            ..config(2, 1)
        },
    )
    .unwrap();
    for (_, labels, _) in collect(&source, options(ViewMode::Train, 32)) {
        let classes: BTreeSet<i64> = labels.iter().copied().collect();
        assert!(
            classes.len() >= 5,
            "a batch of 32 holds only classes {classes:?}"
        );
    }
}

#[test]
fn dropping_the_consumer_early_stops_every_stage() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let source = DataSource::open(
            dataset(),
            Split::Train,
            StreamConfig {
                prefetch: 2,
                ..config(2, 0)
            },
        )
        .unwrap();
        for _ in 0..20 {
            let mut stream = source.epoch(options(ViewMode::Train, 8)).unwrap();
            stream.next_batch().unwrap().unwrap();
            drop(stream); // quit after one batch, with the pipeline full behind it
        }
        drop(source);
        done_tx.send(()).unwrap();
    });
    // A hang guard, not a performance bound: the work itself takes well under a second.
    done_rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("stream shutdown hung");
}

#[test]
fn bad_shards_fail_with_an_error_naming_the_file() {
    let copy = |name: &str| {
        let tmp = tempfile::tempdir().unwrap();
        for entry in ["dataset.json", "mean.npy"] {
            std::fs::copy(dataset().join(entry), tmp.path().join(entry)).unwrap();
        }
        std::fs::create_dir_all(tmp.path().join("train")).unwrap();
        for shard in std::fs::read_dir(dataset().join("train")).unwrap() {
            let shard = shard.unwrap().path();
            std::fs::copy(
                &shard,
                tmp.path().join("train").join(shard.file_name().unwrap()),
            )
            .unwrap();
        }
        let target = tmp.path().join("train").join(name);
        (tmp, target)
    };
    let error = |dir: &Path| match DataSource::open(dir, Split::Train, config(1, 0)) {
        Ok(_) => panic!("a bad shard was accepted"),
        Err(e) => e.to_string(),
    };

    let (tmp, shard) = copy("part-00002.parquet");
    std::fs::remove_file(&shard).unwrap();
    let message = error(tmp.path());
    assert!(
        message.contains("part-00002.parquet") && message.contains("cannot open"),
        "{message}"
    );

    let (tmp, shard) = copy("part-00001.parquet");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    let message = error(tmp.path());
    assert!(
        message.contains("part-00001.parquet") && message.contains("truncated"),
        "{message}"
    );

    let (tmp, shard) = copy("part-00000.parquet");
    let rows = read_shard(&shard, S).unwrap();
    write_shard(
        &shard,
        S - 1,
        16,
        &rows
            .iter()
            .map(|r| ShardRow {
                pixels: r.pixels[..(S - 1) * (S - 1) * 3].to_vec(),
                ..r.clone()
            })
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let message = error(tmp.path());
    assert!(
        message.contains("part-00000.parquet") && message.contains("wrong schema"),
        "{message}"
    );
}

#[test]
fn the_stream_command_reports_json_and_dumps_model_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tmp.path().join("recipe.toml");
    std::fs::write(
        &recipe,
        format!("[data]\nimage_size = {S}\ncrop_size = {C}\n"),
    )
    .unwrap();
    let dump = tmp.path().join("dump");
    let output = run(&[
        "stream",
        "--dataset",
        path_str(dataset()),
        "--recipe",
        path_str(&recipe),
        "--batch-size",
        "16",
        "--batches",
        "5",
        "--dump",
        path_str(&dump),
        "--workers",
        "2",
    ]);
    let text = stdout(&output);
    let json: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(json["images"], 80);
    assert!(
        json["images_per_s"].as_f64().unwrap() > 0.0 && json["seconds"].as_f64().unwrap() > 0.0
    );
    assert!(
        text.contains("augment") && text.contains("peak RSS"),
        "{text}"
    );
    let images = npy::read_f32(&dump.join("images-0.npy"), &[16, 3, C as u64, C as u64]).unwrap();
    assert!(
        images.iter().any(|&v| v < 0.0) && images.iter().any(|&v| v > 0.0),
        "mean-subtracted values"
    );
    let labels = std::fs::read(dump.join("labels-1.npy")).unwrap();
    let labels: Vec<i64> = npyz::NpyFile::new(&labels[..]).unwrap().into_vec().unwrap();
    let keys = std::fs::read_to_string(dump.join("keys-1.txt")).unwrap();
    let rows = rows_by_key(Split::Train);
    for (key, label) in keys.lines().zip(&labels) {
        assert_eq!(rows[key].label as i64, *label);
    }

    let grid = tmp.path().join("grid.png");
    run(&[
        "preview",
        "--dataset",
        path_str(dataset()),
        "--recipe",
        path_str(&recipe),
        "--out",
        path_str(&grid),
    ]);
    let png = image::open(&grid).unwrap().to_rgb8();
    assert_eq!(png.width() as usize, 8 * (C + 2) + 2);

    // A dataset that does not fit the recipe is refused with the reason.
    let paper = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline/paper.toml");
    let err = run_fails(&[
        "stream",
        "--dataset",
        path_str(dataset()),
        "--recipe",
        path_str(&paper),
    ]);
    assert!(err.contains("image_size") && err.contains("256"), "{err}");
}
