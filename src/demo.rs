//! `pipeline demo`: the whole pipeline on the bundled sample, as the commands a
//! user would type, each printed before it runs.

use std::path::Path;

/// The demo's steps (arguments to `pipeline`), with everything under `dir`.
/// `query_key` is a validation image to show the neighbours of.
pub fn steps(dir: &Path, query_key: &str) -> Vec<Vec<String>> {
    let at = |name: &str| dir.join(name).display().to_string();
    let (sample, dataset, run) = (at("sample"), at("dataset"), at("run"));
    let in_run = |name: &str| dir.join("run").join(name).display().to_string();
    let recipe = "pipeline/sample.toml".to_string();
    let steps: Vec<Vec<&str>> = vec![
        vec!["sample", "--out", &sample],
        vec![
            "ingest", &sample, "--out", &dataset, "--recipe", &recipe, "--quiet",
        ],
        vec![
            "train",
            "--recipe",
            &recipe,
            "--dataset",
            &dataset,
            "--out",
            &run,
        ],
        vec!["eval", "--run", &run, "--ten-crop", "--quiet"],
    ];
    let train_features = in_run("train-fc7.parquet");
    let val_features = in_run("val-fc7.parquet");
    let codes = in_run("codes");
    let sheet = in_run("neighbours.png");
    let report = at("report");
    let retrieval: Vec<Vec<&str>> = vec![
        vec![
            "export-features",
            "--run",
            &run,
            "--split",
            "train",
            "--out",
            &train_features,
            "--quiet",
        ],
        vec![
            "train-codes",
            "--features",
            &train_features,
            "--bits",
            "64",
            "--epochs",
            "10",
            "--out",
            &codes,
        ],
        vec![
            "export-features",
            "--run",
            &run,
            "--codes",
            &codes,
            "--out",
            &val_features,
            "--quiet",
        ],
        vec![
            "neighbors",
            "--features",
            &val_features,
            "--key",
            query_key,
            "-k",
            "8",
            "--sheet",
            &sheet,
        ],
        vec![
            "retrieval-eval",
            "--features",
            &val_features,
            "--codes",
            &codes,
        ],
        vec![
            "report", "--runs", &run, "--sheet", &sheet, "--out", &report,
        ],
    ];
    steps
        .into_iter()
        .chain(retrieval)
        .map(|s| s.into_iter().map(String::from).collect())
        .collect()
}

/// The first validation image of the sample's "cowboy boot" class, as a row key.
pub fn query_key(dir: &Path) -> Option<String> {
    let class = "n03124043";
    let folder = dir.join("sample/val").join(class);
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .ok()?
        .filter_map(|e| Some(e.ok()?.file_name().to_str()?.to_string()))
        .collect();
    names.sort();
    names.first().map(|name| format!("val/{class}/{name}"))
}
