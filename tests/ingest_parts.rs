//! `pipeline ingest --part K/N` and `--merge`: parts run in any order, merged by
//! the last part or by `--merge`, leave every file byte-identical to a one-shot
//! ingest, whatever N; a missing, unfinished or mismatched part is named.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;

/// 440 images (one of them corrupt) at 32 px in 32-row shards: 13 training
/// shards and 2 validation shards, so some parts own no validation shard.
const SETTINGS: [&str; 6] = [
    "--image-size",
    "32",
    "--rows-per-shard",
    "32",
    "--rows-per-row-group",
    "8",
];

/// The sample source and its one-shot dataset, made once for every test.
fn fixture() -> &'static (PathBuf, BTreeMap<String, Vec<u8>>) {
    static FIXTURE: OnceLock<(PathBuf, BTreeMap<String, Vec<u8>>)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let source = render_sample(&dir, "folders", 40, 4);
        let one_shot = dir.join("one-shot");
        run(&ingest_args(&source, &one_shot, &[]));
        (source, tree_bytes(&one_shot))
    })
}

fn ingest_args<'a>(source: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "ingest",
        path_str(source),
        "--out",
        path_str(out),
        "--quiet",
    ];
    args.extend(SETTINGS);
    args.extend_from_slice(extra);
    args
}

fn run_part(source: &Path, out: &Path, part: &str) -> String {
    stdout(&run(&ingest_args(source, out, &["--part", part])))
}

/// Every file equal, byte for byte, to the one-shot dataset's.
fn assert_same_as_one_shot(out: &Path, what: &str) {
    let expected = &fixture().1;
    let found = tree_bytes(out);
    assert_eq!(
        found.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{what}: not the one-shot's files"
    );
    for (name, bytes) in expected {
        assert!(
            found[name] == *bytes,
            "{what}: {name} differs from one-shot"
        );
    }
}

#[test]
fn parts_in_any_order_merge_into_the_one_shot_dataset_for_any_part_count() {
    let (source, _) = fixture();
    let tmp = tempfile::tempdir().unwrap();
    // 8 parts for 13 + 2 shards: six parts own no validation shard.
    for order in [&[1][..], &[2, 1], &[3, 1, 2], &[5, 8, 1, 3, 7, 2, 6, 4]] {
        let n = order.len();
        let (last, first) = order.split_last().unwrap();

        // The last part to finish merges by itself.
        let out = tmp.path().join(format!("auto-{n}"));
        for k in first {
            let printed = run_part(source, &out, &format!("{k}/{n}"));
            assert!(printed.contains("waiting for part"), "{printed}");
            assert!(
                !out.join("dataset.json").exists(),
                "merged before part {last}"
            );
        }
        let printed = run_part(source, &out, &format!("{last}/{n}"));
        assert!(
            printed.contains("train       399 images in 13 shards"),
            "{printed}"
        );
        assert_same_as_one_shot(&out, &format!("{n} parts, merged by the last"));

        // A merge claimed already (a merging part killed): the last part
        // leaves the merge to `--merge`.
        let out = tmp.path().join(format!("explicit-{n}"));
        for k in first {
            run_part(source, &out, &format!("{k}/{n}"));
        }
        std::fs::create_dir_all(out.join(".ingest")).unwrap();
        std::fs::write(out.join(".ingest/merging"), b"").unwrap();
        let printed = run_part(source, &out, &format!("{last}/{n}"));
        assert!(printed.contains("another part is merging"), "{printed}");
        assert!(!out.join("dataset.json").exists());
        run(&ingest_args(source, &out, &["--merge"]));
        assert_same_as_one_shot(&out, &format!("{n} parts, then --merge"));

        // Merging or re-running a part again changes nothing.
        run(&ingest_args(source, &out, &["--merge"]));
        let printed = run_part(source, &out, &format!("1/{n}"));
        assert!(
            printed.contains("already holds the merged dataset"),
            "{printed}"
        );
        assert_same_as_one_shot(&out, &format!("{n} parts, merged twice"));
    }
}

#[test]
fn merge_with_a_missing_part_names_it_and_writes_no_dataset() {
    let (source, _) = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    run_part(source, &out, "3/3");
    run_part(source, &out, "1/3");
    let error = run_fails(&ingest_args(source, &out, &["--merge"]));
    assert!(
        error.contains("part 2/3 is missing") && error.contains("--part 2/3"),
        "{error}"
    );
    assert!(!out.join("dataset.json").exists());
    assert!(!out.join("mean.npy").exists());

    // The missing part finishes the job, identical to one-shot.
    run_part(source, &out, "2/3");
    assert_same_as_one_shot(&out, "after the missing part ran");
}

#[test]
fn parts_of_other_settings_or_another_split_are_refused_by_name() {
    let (source, _) = fixture();
    let tmp = tempfile::tempdir().unwrap();

    // Part 2 made with another resize filter: part 1's merge refuses it.
    let out = tmp.path().join("settings");
    run(&ingest_args(
        source,
        &out,
        &["--part", "2/2", "--filter", "box"],
    ));
    let printed = run_part(source, &out, "1/2");
    assert!(
        printed.contains("part 2/2") && printed.contains("other settings"),
        "{printed}"
    );
    let error = run_fails(&ingest_args(source, &out, &["--merge"]));
    assert!(
        error.contains("part 2/2") && error.contains("other settings"),
        "{error}"
    );
    assert!(!out.join("dataset.json").exists());

    // Parts of 2 and of 3 in one folder.
    let out = tmp.path().join("counts");
    run_part(source, &out, "1/2");
    run_part(source, &out, "1/3");
    let error = run_fails(&ingest_args(source, &out, &["--merge"]));
    assert!(
        error.contains("part-1-of-2") && error.contains("part-1-of-3"),
        "{error}"
    );

    // A one-shot ingest does not start over unfinished parts.
    let error = run_fails(&ingest_args(source, &out, &[]));
    assert!(error.contains("unfinished ingest in parts"), "{error}");

    // --merge of a folder without parts.
    let error = run_fails(&ingest_args(
        source,
        &tmp.path().join("empty"),
        &["--merge"],
    ));
    assert!(error.contains("holds no ingest parts"), "{error}");
}

#[test]
fn bad_part_values_are_refused_with_a_clear_message() {
    let (source, _) = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    for (part, message) in [
        ("0/3", "between 1 and 3"),
        ("4/3", "between 1 and 3"),
        ("1/0", "at least 1"),
        ("garbage", "is not K/N"),
        ("2/", "is not K/N"),
        ("-1/3", "is not K/N"),
    ] {
        let flag = format!("--part={part}");
        let error = run_fails(&ingest_args(source, &out, &[&flag]));
        assert!(
            error.contains("--part") && error.contains(message),
            "{part}: {error}"
        );
        assert!(!error.contains("panicked"), "{part}: {error}");
    }
    let error = run_fails(&ingest_args(source, &out, &["--part", "1/2", "--merge"]));
    assert!(error.contains("cannot be used with"), "{error}");
    assert!(!out.exists(), "a refused command wrote {}", out.display());
}

#[test]
fn killed_part_resumes_and_the_merge_is_identical() {
    let (source, _) = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    run_part(source, &out, "2/2");
    let args = ingest_args(source, &out, &["--part", "1/2", "--workers", "1"]);
    let child = bin()
        .args(&args[..])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = out.join(".ingest/part-1-of-2/state.json");
    let shards_at_kill = kill_after_train_shards(child, &state, 2);
    assert!(shards_at_kill >= 2, "part 1 was not killed mid-run");
    assert!(
        !out.join("dataset.json").exists(),
        "killed before the merge, so the part was really cut short"
    );

    let printed = run_part(source, &out, "1/2");
    assert!(printed.contains("shards already done"), "{printed}");
    // Temp files of the killed run may remain; every other file is the one-shot's.
    for file in tree_bytes(&out).keys().filter(|f| f.ends_with(".tmp")) {
        std::fs::remove_file(out.join(file)).unwrap();
    }
    assert_same_as_one_shot(&out, "after a killed part resumed");
}
