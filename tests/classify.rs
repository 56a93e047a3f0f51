//! `pipeline classify` on the sample's val JPEGs: the same predictions `eval` counts
//! from the shards (centre crop and ten crops), named classes, unreadable files listed
//! while the others go on.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

/// Top-1 and top-5 errors of `classify --json` lines, the true class being the file's
/// folder (the sample's val images sit in class folders).
fn errors(lines: &[Value]) -> (usize, usize) {
    let (mut top1, mut top5) = (0, 0);
    for line in lines {
        let path = Path::new(line["path"].as_str().unwrap());
        let truth = path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        let wnids: Vec<&str> = line["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["wnid"].as_str().unwrap())
            .collect();
        assert_eq!(wnids.len(), 5, "{line}");
        top1 += usize::from(wnids[0] != truth);
        top5 += usize::from(!wnids.contains(&truth));
    }
    (top1, top5)
}

fn json_lines(output: &std::process::Output) -> Vec<Value> {
    stdout(output)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

#[test]
fn classify_predicts_what_eval_counts_and_names_the_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let source = render_sample(tmp.path(), "folders", 20, 6);
    let dataset = tmp.path().join("dataset");
    ingest(&source, &dataset, 72, &[]);
    let recipe = tiny_recipe(tmp.path(), 2, "");
    let run = tmp.path().join("run");
    let (r, d, o) = (path_str(&recipe), path_str(&dataset), path_str(&run));
    common::run(&[
        "train",
        "--recipe",
        r,
        "--dataset",
        d,
        "--out",
        o,
        "--quiet",
    ]);

    let val = source.join("val");
    let mut top_probabilities = Vec::new();
    for ten_crop in [false, true] {
        let mut eval = vec!["eval", "--run", o, "--dataset", d];
        let mut classify = vec!["classify", "--run", o, "--json"];
        if ten_crop {
            eval.push("--ten-crop");
            classify.push("--ten-crop");
        }
        classify.push(path_str(&val));
        let report = last_json(&common::run(&eval));
        let lines = json_lines(&common::run(&classify));
        let images = report["images"].as_u64().unwrap() as usize;
        assert_eq!(lines.len(), images, "every val image classified");
        let (top1, top5) = errors(&lines);
        let rate = |n: usize| n as f64 / images as f64;
        assert_eq!(rate(top1), report["top1_err"].as_f64().unwrap(), "{report}");
        assert_eq!(rate(top5), report["top5_err"].as_f64().unwrap(), "{report}");
        // Probabilities: most probable first, summing to at most 1 over the top five.
        for line in &lines {
            let p: Vec<f64> = line["top"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["probability"].as_f64().unwrap())
                .collect();
            assert!(p.windows(2).all(|w| w[0] >= w[1]), "{line}");
            assert!(p.iter().sum::<f64>() <= 1.0 + 1e-5, "{line}");
        }
        top_probabilities.push(
            lines
                .iter()
                .map(|l| l["top"][0]["probability"].as_f64().unwrap())
                .collect::<Vec<_>>(),
        );
    }
    // Ten crops are really averaged: no image scores exactly as its centre crop alone.
    let (centre, ten) = (&top_probabilities[0], &top_probabilities[1]);
    assert!(
        centre.iter().zip(ten).all(|(c, t)| c != t),
        "{centre:?} {ten:?}"
    );

    // The table names each class by wnid and name from synset_words.txt.
    let first = val.read_dir().unwrap().next().unwrap().unwrap().path();
    let image = first.read_dir().unwrap().next().unwrap().unwrap().path();
    let table = stdout(&common::run(&["classify", "--run", o, path_str(&image)]));
    let synsets = std::fs::read_to_string(source.join("synset_words.txt")).unwrap();
    let first_class = table.lines().nth(1).expect("a class line");
    assert!(
        synsets.lines().any(|l| {
            let (wnid, name) = l.split_once(' ').unwrap();
            first_class.ends_with(&format!("{wnid}  {name}"))
        }),
        "{table}"
    );

    // An unreadable file is listed with its reason; the others are still classified.
    let broken = tmp.path().join("broken.jpg");
    std::fs::write(&broken, b"\xff\xd8\xff not a jpeg").unwrap();
    let out = common::run(&[
        "classify",
        "--run",
        o,
        "--json",
        path_str(&broken),
        path_str(&image),
    ]);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["path"], path_str(&broken));
    assert!(lines[0]["error"].is_string(), "{}", lines[0]);
    assert!(lines[1]["top"].is_array());
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of 2 files could not be read"));
    // Nothing classifiable, or a path that does not exist: an error naming it.
    let err = run_fails(&["classify", "--run", o, path_str(&broken)]);
    assert!(
        err.contains("no file could be classified (1 given)"),
        "{err}"
    );
    let missing = tmp.path().join("missing.jpg");
    let err = run_fails(&["classify", "--run", o, path_str(&missing)]);
    assert!(err.contains(path_str(&missing)), "{err}");
}
