//! Datasets read straight from S3-compatible object storage, against a real S3
//! server on loopback (moto): the same batches and the same training as from the
//! local copy, and clear, bounded failures for a deleted object, a stalled server
//! and a missing dataset.

mod common;
#[path = "common/moto.rs"]
mod moto;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use moto::Moto;

/// Images at the sample recipe's size, so `train` runs the tiny sample recipe.
const S: usize = 72;
/// The test's own guard against a hung child (not a speed claim): waits poll this
/// often, at most `HANG_POLLS` times (60 s), counting polls rather than reading a clock.
const POLL: Duration = Duration::from_millis(20);
const HANG_POLLS: u32 = 3_000;
/// The same guard as a span, for the one loop that polls as fast as it can.
const HANG_GUARD: Duration = POLL.saturating_mul(HANG_POLLS);

/// The rendered source tree and the rows-per-shard / row-group flags of [`dataset`].
const SHARDING: [&str; 4] = ["--rows-per-shard", "32", "--rows-per-row-group", "8"];

/// A small source tree (10 train / 2 val images per class) and its dataset (32-row
/// shards of 8-row row groups, so several shards and row groups are in flight),
/// ingested once.
fn fixture() -> &'static (PathBuf, PathBuf) {
    static FIXTURE: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("object-store");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let source = render_sample(&root, "folders", 10, 2);
        let dataset = root.join("dataset");
        ingest(&source, &dataset, S, &SHARDING);
        (source, dataset)
    })
}

fn dataset() -> &'static Path {
    &fixture().1
}

/// moto with the dataset uploaded as `s3://BUCKET/ds`.
fn moto_with_dataset(test: &str, bucket: &str) -> Option<Moto> {
    let moto = Moto::start(test)?;
    moto.create_bucket(bucket);
    moto.upload_dir(bucket, "ds", dataset());
    Some(moto)
}

/// `pipeline ARGS` with `env` added to its environment, killed if it outlives the
/// hang guard (then the test fails).
fn pipeline_with_env(args: &[&str], env: &[(&str, String)]) -> Output {
    let child = bin()
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_within_guard(child, HANG_POLLS, &format!("pipeline {args:?}"))
}

/// Waits for `child` through at most `polls` polls, killing it and failing the test
/// if it is still running after them.
fn wait_within_guard(mut child: Child, polls: u32, what: &str) -> Output {
    for _ in 0..polls {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(POLL);
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    panic!(
        "{what} still ran after {polls} polls and was killed; stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn succeeded(args: &[&str], output: &Output) {
    assert!(
        output.status.success(),
        "pipeline {args:?} failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn recipe(dir: &Path) -> PathBuf {
    let path = dir.join("recipe.toml");
    std::fs::write(&path, format!("[data]\nimage_size = {S}\ncrop_size = 64\n")).unwrap();
    path
}

/// `pipeline stream` of `dataset` with `extra` flags, dumping its first batches
/// into `dump`; returns the dump's files (the model inputs, byte for byte).
fn stream_dump(
    dataset: &str,
    recipe: &Path,
    dump: &Path,
    extra: &[&str],
    env: &[(&str, String)],
) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut args = vec![
        "stream",
        "--dataset",
        dataset,
        "--recipe",
        path_str(recipe),
        "--batch-size",
        "8",
        "--dump",
        path_str(dump),
        "--dump-batches",
        "100",
        "--workers",
        "2",
    ];
    args.extend_from_slice(extra);
    let output = pipeline_with_env(&args, env);
    succeeded(&args, &output);
    tree_bytes(dump)
}

#[test]
fn streaming_from_s3_gives_the_local_batches_byte_for_byte() {
    let test = "streaming_from_s3_gives_the_local_batches_byte_for_byte";
    let Some(moto) = moto_with_dataset(test, "stream") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let recipe = recipe(tmp.path());
    for (i, extra) in [
        &["--seed", "3"][..],
        &[
            "--seed",
            "3",
            "--epoch",
            "1",
            "--rank",
            "1",
            "--world-size",
            "2",
        ][..],
        &["--views", "ten-crop", "--split", "val"][..],
    ]
    .into_iter()
    .enumerate()
    {
        let local = stream_dump(
            path_str(dataset()),
            &recipe,
            &tmp.path().join(format!("local-{i}")),
            extra,
            &[],
        );
        let remote = stream_dump(
            "s3://stream/ds",
            &recipe,
            &tmp.path().join(format!("s3-{i}")),
            extra,
            &moto.env(),
        );
        assert!(
            local.keys().any(|k| k.starts_with("images-")),
            "{extra:?}: the local stream dumped batches: {:?}",
            local.keys()
        );
        assert_eq!(
            local.keys().collect::<Vec<_>>(),
            remote.keys().collect::<Vec<_>>(),
            "{extra:?}: the same batches"
        );
        for (name, bytes) in &local {
            assert!(remote[name] == *bytes, "{extra:?}: {name} differs from S3");
        }
    }
}

/// Trains the tiny recipe for one epoch on `dataset` into `run`; the metrics
/// without their timings.
fn train_one_epoch(
    recipe: &Path,
    dataset: &str,
    run: &Path,
    env: &[(&str, String)],
) -> Vec<serde_json::Value> {
    let args = [
        "train",
        "--recipe",
        path_str(recipe),
        "--dataset",
        dataset,
        "--out",
        path_str(run),
        "--quiet",
    ];
    let output = pipeline_with_env(&args, env);
    succeeded(&args, &output);
    assert_eq!(last_json(&output)["finish"], "completed");
    let metrics = metrics_without_timing(run);
    assert_eq!(metrics.len(), 1, "one epoch");
    assert!(metrics[0]["train_loss"].is_number());
    metrics
}

#[test]
fn training_from_s3_gives_the_local_metrics() {
    let test = "training_from_s3_gives_the_local_metrics";
    let Some(moto) = moto_with_dataset(test, "train") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe_with(tmp.path(), 1, &[("shuffle_buffer", "64")]);
    let local = train_one_epoch(&recipe, path_str(dataset()), &tmp.path().join("local"), &[]);
    let remote = train_one_epoch(
        &recipe,
        "s3://train/ds",
        &tmp.path().join("s3"),
        &moto.env(),
    );
    assert_eq!(local, remote);
}

/// `pipeline ingest` of the fixture's source into `out` (a folder or URL), with
/// the fixture's settings and `extra` flags; the child, not waited for.
fn spawn_ingest(out: &str, env: &[(&str, String)], extra: &[&str]) -> Child {
    let size = S.to_string();
    let default_size = ["--image-size", &size];
    bin()
        .args(["ingest", path_str(&fixture().0), "--out", out, "--quiet"])
        .args(if extra.contains(&"--image-size") {
            &[][..]
        } else {
            &default_size[..]
        })
        .args(if extra.contains(&"--rows-per-shard") {
            &[][..]
        } else {
            &SHARDING[..]
        })
        .args(extra)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn ingest_to(out: &str, env: &[(&str, String)], extra: &[&str]) -> Output {
    let child = spawn_ingest(out, env, extra);
    let output = wait_within_guard(child, HANG_POLLS, &format!("ingest --out {out}"));
    succeeded(&["ingest", "--out", out], &output);
    output
}

#[test]
fn ingesting_to_s3_publishes_the_local_dataset_and_trains_from_it() {
    let test = "ingesting_to_s3_publishes_the_local_dataset_and_trains_from_it";
    let Some(moto) = Moto::start(test) else {
        return;
    };
    moto.create_bucket("out");
    let output = ingest_to("s3://out/ds", &moto.env(), &[]);
    assert!(
        stdout(&output).contains("s3://out/ds"),
        "the summary names the URL, not the staging folder:\n{}",
        stdout(&output)
    );
    // Every file of the local ingest, the resume state included, byte for byte.
    assert_eq!(
        moto.objects("out", "ds"),
        tree_bytes(dataset()),
        "the published dataset differs from the local ingest"
    );
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe_with(tmp.path(), 1, &[("shuffle_buffer", "64")]);
    let local = train_one_epoch(&recipe, path_str(dataset()), &tmp.path().join("local"), &[]);
    let remote = train_one_epoch(&recipe, "s3://out/ds", &tmp.path().join("s3"), &moto.env());
    assert_eq!(local, remote);
    // Ingesting again finds the complete dataset and changes nothing.
    ingest_to("s3://out/ds", &moto.env(), &[]);
    assert_eq!(moto.objects("out", "ds"), tree_bytes(dataset()));
}

#[test]
fn a_shard_larger_than_a_part_goes_up_in_parts() {
    let test = "a_shard_larger_than_a_part_goes_up_in_parts";
    let Some(moto) = Moto::start(test) else {
        return;
    };
    moto.create_bucket("big");
    // 100 rows of 72×72×3 in one shard: ~1.5 MB. At 256 px a 48-row shard is
    // ~9.4 MB, more than one 8 MiB part.
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    let flags = ["--rows-per-shard", "48", "--rows-per-row-group", "16"];
    let image_size = ["--image-size", "256"];
    let extra: Vec<&str> = flags.iter().chain(&image_size).copied().collect();
    ingest_to(path_str(&local), &[], &extra);
    ingest_to("s3://big/ds", &moto.env(), &extra);
    let shard = "train/part-00000.parquet";
    assert!(
        std::fs::metadata(local.join(shard)).unwrap().len() > pipeline::store::PART_BYTES as u64,
        "the test's shard must be larger than one part"
    );
    let e_tag = moto.e_tag("big", &format!("ds/{shard}"));
    assert!(
        e_tag.trim_matches('"').ends_with("-2"),
        "a two-part upload's ETag ends in -2, got {e_tag}"
    );
    assert_eq!(moto.objects("big", "ds"), tree_bytes(&local));
}

#[test]
fn a_killed_ingest_to_s3_resumes_from_the_published_shards() {
    let test = "a_killed_ingest_to_s3_resumes_from_the_published_shards";
    let Some(moto) = Moto::start(test) else {
        return;
    };
    moto.create_bucket("resume");
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    // 4-row shards: 25 train shards, so the kill lands mid-ingest.
    let flags = [
        "--rows-per-shard",
        "4",
        "--rows-per-row-group",
        "2",
        "--workers",
        "1",
    ];
    ingest_to(path_str(&local), &[], &flags);
    let child = spawn_ingest("s3://resume/ds", &moto.env(), &flags);
    let mut published = 0;
    let started = Instant::now();
    while published < 3 && started.elapsed() < HANG_GUARD {
        if let Some(state) = moto.get("resume", "ds/.ingest/state.json") {
            let state: serde_json::Value = serde_json::from_slice(&state).unwrap();
            published = state["train"]["shards_done"].as_u64().unwrap();
        }
    }
    let mut child = child;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        (3..25).contains(&published),
        "killed after {published} of 25 train shards"
    );
    // A reader never sees the half dataset: there is no dataset.json yet.
    assert_eq!(moto.get("resume", "ds/dataset.json"), None);
    // A kill between publishing a state and deleting the sums the previous state
    // named leaves those behind (the state now names train-sums-0000N, N >= 3): the
    // resumed run must remove them, or the final comparison below fails.
    moto.put(
        "resume",
        "ds/.ingest/train-sums-00001.npy",
        b"stale".to_vec(),
    );
    let recipe = recipe(tmp.path());
    let args = [
        "stream",
        "--dataset",
        "s3://resume/ds",
        "--recipe",
        path_str(&recipe),
    ];
    let output = pipeline_with_env(&args, &moto.env());
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("s3://resume/ds: no dataset here (dataset.json is missing)"),
        "{}",
        stderr(&output)
    );
    let output = ingest_to("s3://resume/ds", &moto.env(), &flags);
    assert!(
        stdout(&output).contains("already done"),
        "the second run resumes:\n{}",
        stdout(&output)
    );
    assert_eq!(moto.objects("resume", "ds"), tree_bytes(&local));
}

#[test]
fn ingest_refuses_a_prefix_holding_other_objects() {
    let test = "ingest_refuses_a_prefix_holding_other_objects";
    let Some(moto) = moto_with_dataset(test, "taken") else {
        return;
    };
    // `ds` holds an uploaded dataset without ingest state, `ds/train` only shards.
    for (out, named) in [
        ("s3://taken/ds", "s3://taken/ds"),
        ("s3://taken/ds/train", "part-00000"),
    ] {
        let output = pipeline_with_env(
            &[
                "ingest",
                path_str(&fixture().0),
                "--out",
                out,
                "--image-size",
                "72",
            ],
            &moto.env(),
        );
        assert!(
            !output.status.success(),
            "ingest into {out} must be refused"
        );
        assert!(stderr(&output).contains(named), "{}", stderr(&output));
    }
    assert_eq!(
        moto.objects("taken", "ds"),
        tree_bytes(dataset()),
        "nothing written"
    );
}

#[test]
fn a_shard_deleted_while_streaming_fails_naming_its_url() {
    let test = "a_shard_deleted_while_streaming_fails_naming_its_url";
    let Some(moto) = moto_with_dataset(test, "deleted") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let recipe = recipe(tmp.path());
    let dump = tmp.path().join("dump");
    // Many epochs: the first batch's dump shows the dataset is open and streaming;
    // every epoch reads every shard again, so a later one meets the deletion.
    let mut child = bin()
        .args([
            "stream",
            "--dataset",
            "s3://deleted/ds",
            "--recipe",
            path_str(&recipe),
            "--batch-size",
            "8",
            "--epochs",
            "100000",
            "--dump",
            path_str(&dump),
            "--dump-batches",
            "1",
            "--workers",
            "1",
        ])
        .envs(moto.env())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut polls = 0;
    while !dump.join("images-0.npy").exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the stream ended before its first batch"
        );
        assert!(polls < HANG_POLLS, "no first batch after {polls} polls");
        polls += 1;
        std::thread::sleep(POLL);
    }
    moto.delete("deleted", "ds/train/part-00001.parquet");
    let output = wait_within_guard(child, HANG_POLLS - polls, "the stream after the deletion");
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{err}");
    assert!(
        err.contains("s3://deleted/ds/train/part-00001.parquet") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn a_stalled_server_times_out_naming_the_url() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let mut env = moto::s3_env(&format!("http://127.0.0.1:{port}"));
    env.push(("PIPELINE_STORE_TIMEOUT_S", "0.5".to_string()));
    let recipe = recipe(tmp.path());
    let args = [
        "stream",
        "--dataset",
        "s3://stalled/ds",
        "--recipe",
        path_str(&recipe),
    ];
    let output = pipeline_with_env(&args, &env);
    let err = stderr(&output);
    assert!(!output.status.success(), "{err}");
    assert!(
        err.contains("s3://stalled/ds/dataset.json") && err.contains("did not answer within 0.5 s"),
        "{err}"
    );
}

#[test]
fn a_missing_dataset_or_bucket_fails_at_once_naming_the_url() {
    let test = "a_missing_dataset_or_bucket_fails_at_once_naming_the_url";
    let Some(moto) = moto_with_dataset(test, "present") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let recipe = recipe(tmp.path());
    for (command, url) in [
        ("stream", "s3://present/nothing-here"),
        ("stream", "s3://no-such-bucket/ds"),
        ("train", "s3://no-such-bucket/ds"),
    ] {
        let out = tmp.path().join("run");
        let args = [
            command,
            "--dataset",
            url,
            "--recipe",
            path_str(&recipe),
            "--out",
            path_str(&out),
            "--device",
            "cpu",
        ];
        let args = if command == "train" {
            &args[..]
        } else {
            &args[..5]
        };
        let output = pipeline_with_env(args, &moto.env());
        let err = stderr(&output);
        assert!(!output.status.success(), "{args:?}: {err}");
        assert!(
            err.contains(&format!("{url}: no dataset here")),
            "{args:?}: {err}"
        );
    }

    // A shard missing from a dataset whose manifest is there: named at open.
    moto.delete("present", "ds/val/part-00000.parquet");
    let args = [
        "stream",
        "--dataset",
        "s3://present/ds",
        "--recipe",
        path_str(&recipe),
        "--split",
        "val",
    ];
    let output = pipeline_with_env(&args, &moto.env());
    let err = stderr(&output);
    assert!(!output.status.success(), "{err}");
    assert!(
        err.contains("s3://present/ds/val/part-00000.parquet: not found"),
        "{err}"
    );
}

#[test]
fn a_file_url_reads_the_local_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = recipe(tmp.path());
    let url = format!("file://{}", dataset().display());
    let local = stream_dump(
        path_str(dataset()),
        &recipe,
        &tmp.path().join("local"),
        &[],
        &[],
    );
    let file = stream_dump(&url, &recipe, &tmp.path().join("file"), &[], &[]);
    assert!(local == file, "file:// streams the local batches");
}

#[test]
fn a_corrupt_row_in_s3_is_named_by_its_url_row_and_key() {
    let test = "a_corrupt_row_in_s3_is_named_by_its_url_row_and_key";
    let Some(moto) = Moto::start(test) else {
        return;
    };
    // A copy of the dataset with one pixel byte of row 9 (row group 1) flipped.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("ds");
    for (name, bytes) in tree_bytes(dataset()) {
        let path = copy.join(&name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let shard = copy.join("train/part-00000.parquet");
    let rows = pipeline::dataset::reader::read_shard(&shard, S).unwrap();
    let mut bytes = std::fs::read(&shard).unwrap();
    let at = bytes
        .windows(rows[9].pixels.len())
        .position(|w| w == rows[9].pixels.as_slice())
        .expect("the row's pixels are stored verbatim");
    bytes[at + 100] ^= 0x10;
    std::fs::write(&shard, &bytes).unwrap();
    moto.create_bucket("corrupt");
    moto.upload_dir("corrupt", "ds", &copy);

    // Centre views use every row (training views drop the last partial batch).
    let recipe = recipe(tmp.path());
    let args = [
        "stream",
        "--dataset",
        "s3://corrupt/ds",
        "--recipe",
        path_str(&recipe),
        "--views",
        "centre",
    ];
    let output = pipeline_with_env(&args, &moto.env());
    let err = stderr(&output);
    assert!(!output.status.success(), "{err}");
    let named = format!(
        "s3://corrupt/ds/train/part-00000.parquet: row 9 (row group 1, key {}): pixel data is corrupt",
        rows[9].key
    );
    assert!(err.contains(&named), "{err}");
}

/// The sizes of the fixture's train shard files.
fn train_shard_sizes() -> Vec<u64> {
    tree_bytes(dataset())
        .iter()
        .filter(|(name, _)| name.starts_with("train/"))
        .map(|(_, bytes)| bytes.len() as u64)
        .collect()
}

/// `pipeline stream` of `s3://BUCKET/ds` for two epochs with `extra` flags; its
/// per-epoch store traffic (fetched bytes, bytes read from the cache).
fn two_epochs_traffic(moto: &Moto, bucket: &str, recipe: &Path, extra: &[&str]) -> Vec<(u64, u64)> {
    let url = format!("s3://{bucket}/ds");
    let mut args = vec!["stream", "--dataset", &url, "--recipe", path_str(recipe)];
    args.extend(["--batch-size", "8", "--epochs", "2"]);
    args.extend_from_slice(extra);
    let output = pipeline_with_env(&args, &moto.env());
    succeeded(&args, &output);
    let report = last_json(&output);
    report["store_per_epoch"]
        .as_array()
        .unwrap_or_else(|| panic!("no store_per_epoch in {report}"))
        .iter()
        .map(|t| {
            (
                t["fetched_bytes"].as_u64().unwrap(),
                t["cache_read_bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The files in the cache folder and their total size.
fn cache_bytes(dir: &Path) -> (usize, u64) {
    let files = tree_bytes(dir);
    (files.len(), files.values().map(|b| b.len() as u64).sum())
}

#[test]
fn a_cache_serves_later_epochs_from_disk_with_the_same_batches() {
    let test = "a_cache_serves_later_epochs_from_disk_with_the_same_batches";
    let Some(moto) = moto_with_dataset(test, "cached") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let recipe = recipe(tmp.path());
    let cache = tmp.path().join("cache");
    let shards: u64 = train_shard_sizes().iter().sum();

    // Without a cache every epoch streams the row groups again.
    let uncached = two_epochs_traffic(&moto, "cached", &recipe, &[]);
    assert!(
        uncached
            .iter()
            .all(|&(fetched, from_cache)| fetched > 0 && from_cache == 0)
    );

    // With one: the first epoch fetches each shard whole, once; the second reads disk.
    let flags = ["--cache", path_str(&cache)];
    let cached = two_epochs_traffic(&moto, "cached", &recipe, &flags);
    assert_eq!(
        cached[0].0, shards,
        "epoch 1 fetches every train shard whole, once"
    );
    assert_eq!(cached[1].0, 0, "epoch 2 fetches nothing");
    assert_eq!(
        cached[1].1, uncached[1].0,
        "epoch 2 reads from disk what it would fetch"
    );
    assert_eq!(
        cache_bytes(&cache),
        (4, shards),
        "the 4 train shards are kept"
    );
    // A later process starts warm.
    let warm = two_epochs_traffic(&moto, "cached", &recipe, &flags);
    assert!(warm.iter().all(|&(fetched, _)| fetched == 0), "{warm:?}");

    // The bytes served from the cache are the shards' own: the same batches.
    let local = stream_dump(
        path_str(dataset()),
        &recipe,
        &tmp.path().join("local"),
        &[],
        &[],
    );
    let from_cache = stream_dump(
        "s3://cached/ds",
        &recipe,
        &tmp.path().join("from-cache"),
        &flags,
        &moto.env(),
    );
    assert_eq!(local, from_cache);
}

#[test]
fn a_cache_smaller_than_the_dataset_stays_within_its_bound() {
    let test = "a_cache_smaller_than_the_dataset_stays_within_its_bound";
    let Some(moto) = moto_with_dataset(test, "bounded") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let recipe = recipe(tmp.path());
    let largest = *train_shard_sizes().iter().max().unwrap();
    // Room for two of the four shards (three 32-row ones, one of 4 rows).
    let limit = 2 * largest + 1000;
    let cache = tmp.path().join("cache");
    let size = limit.to_string();
    let flags = ["--cache", path_str(&cache), "--cache-size", &size];
    let traffic = two_epochs_traffic(&moto, "bounded", &recipe, &flags);
    let (files, bytes) = cache_bytes(&cache);
    assert!(
        bytes <= limit,
        "{bytes} cached bytes over the {limit} limit"
    );
    assert!((1..4).contains(&files), "{files} shards cached");
    assert!(
        traffic[1].0 > 0 && traffic[1].1 > 0,
        "epoch 2 mixes disk and fetches: {traffic:?}"
    );

    // Smaller than one shard: nothing is cached, every epoch reads by ranges.
    let tiny = tmp.path().join("tiny");
    let flags = ["--cache", path_str(&tiny), "--cache-size", "1K"];
    let traffic = two_epochs_traffic(&moto, "bounded", &recipe, &flags);
    assert_eq!(cache_bytes(&tiny), (0, 0));
    assert!(
        traffic
            .iter()
            .all(|&(fetched, from_cache)| fetched > 0 && from_cache == 0)
    );
}

#[test]
fn ingest_in_parts_refuses_an_object_store() {
    let out = "s3://bucket/ds";
    for flags in [&["--part", "1/2"][..], &["--merge"][..]] {
        let mut args = vec!["ingest", path_str(&fixture().0), "--out", out];
        args.extend_from_slice(flags);
        let message = run_fails(&args);
        assert!(
            message.contains("is an object store") && message.contains(out),
            "{flags:?}: {message}"
        );
    }
}

#[test]
fn features_and_a_contact_sheet_from_s3_equal_the_local_ones() {
    let test = "features_and_a_contact_sheet_from_s3_equal_the_local_ones";
    let Some(moto) = moto_with_dataset(test, "sheet") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe_with(tmp.path(), 1, &[("shuffle_buffer", "64")]);
    let run = tmp.path().join("run");
    train_one_epoch(&recipe, path_str(dataset()), &run, &[]);
    // Features of the val split, and a sheet of a query's neighbours whose pictures
    // are looked up by key in the shards: from the folder, then from S3 (the
    // features files differ only in the dataset they name).
    let sheets: Vec<Vec<u8>> = [(path_str(dataset()), "local"), ("s3://sheet/ds", "s3")]
        .into_iter()
        .map(|(data, name)| {
            let features = tmp.path().join(format!("{name}.parquet"));
            let sheet = tmp.path().join(format!("{name}.png"));
            let export = [
                "export-features",
                "--run",
                path_str(&run),
                "--dataset",
                data,
                "--out",
                path_str(&features),
            ];
            succeeded(&export, &pipeline_with_env(&export, &moto.env()));
            let neighbours = [
                "neighbors",
                "--features",
                path_str(&features),
                "--key",
                "val/n04370456/ILSVRC2012_val_00000006.JPEG",
                "-k",
                "4",
                "--sheet",
                path_str(&sheet),
                "--dataset",
                data,
            ];
            succeeded(&neighbours, &pipeline_with_env(&neighbours, &moto.env()));
            std::fs::read(&sheet).unwrap()
        })
        .collect();
    assert!(sheets[0].len() > 1000, "a real PNG");
    assert!(
        sheets[0] == sheets[1],
        "the sheet from S3 differs from the local one"
    );
}
