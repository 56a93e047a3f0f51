//! `pipeline eval` writes the confusion matrix of its predictions: JSON whose diagonal
//! is eval's top-1 count and whose rows are the val split's classes, and a PNG heat map
//! whose cells are shaded by those counts, with the class names drawn.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Images per class in the source's val folders that ingest kept.
fn val_class_counts(source: &Path, manifest: &Value) -> Vec<u64> {
    let skipped: Vec<&str> = manifest["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap())
        .collect();
    manifest["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|class| {
            let wnid = class["wnid"].as_str().unwrap();
            std::fs::read_dir(source.join("val").join(wnid))
                .unwrap()
                .filter(|e| {
                    let name = e.as_ref().unwrap().file_name();
                    let key = format!("val/{wnid}/{}", name.to_str().unwrap());
                    !skipped.contains(&key.as_str())
                })
                .count() as u64
        })
        .collect()
}

#[test]
fn eval_writes_a_confusion_matrix_that_adds_up_to_its_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let source = render_sample(tmp.path(), "folders", 40, 6);
    let dataset = tmp.path().join("dataset");
    ingest(&source, &dataset, 72, &[]);
    let recipe = tiny_recipe(tmp.path(), 6, "");
    let run = tmp.path().join("run");
    common::run(&train_args(&recipe, &dataset, &run));
    let manifest = json(&dataset.join("dataset.json"));
    let class_counts = val_class_counts(&source, &manifest);
    let classes = class_counts.len();

    for (flag, views) in [(None, "centre"), (Some("--ten-crop"), "ten-crop")] {
        let mut args = vec!["eval", "--run", path_str(&run), "--quiet"];
        args.extend(flag);
        let report = last_json(&common::run(&args));
        let json_path = run.join(format!("confusion-best-{views}.json"));
        let png_path = run.join(format!("confusion-best-{views}.png"));
        assert_eq!(report["confusion_json"], path_str(&json_path));
        assert_eq!(report["confusion_png"], path_str(&png_path));

        let matrix = json(&json_path);
        assert_eq!(matrix["views"], views);
        assert_eq!(matrix["classes"], manifest["classes"]);
        let counts: Vec<Vec<u64>> = matrix["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_u64().unwrap())
                    .collect()
            })
            .collect();
        assert_eq!(counts.len(), classes);
        let row_sums: Vec<u64> = counts.iter().map(|r| r.iter().sum()).collect();
        assert_eq!(row_sums, class_counts, "rows are the true classes of val");
        let images = report["images"].as_u64().unwrap();
        assert_eq!(row_sums.iter().sum::<u64>(), images);
        let diagonal: u64 = (0..classes).map(|i| counts[i][i]).sum();
        let top1_err = report["top1_err"].as_f64().unwrap();
        assert_eq!(
            diagonal,
            ((1.0 - top1_err) * images as f64).round() as u64,
            "the diagonal is what eval counted right ({views})"
        );
        assert!(
            counts.iter().flatten().filter(|&&c| c > 0).count() > classes,
            "six epochs leave the net confusing classes: {counts:?}"
        );

        // The heat map: 48-px cells below and right of 170 px of names (a 40 px title
        // band and 16 px margins), shaded darker the larger a cell's share of its row.
        let png = image::open(&png_path).unwrap().to_rgb8();
        let cell = 48;
        let (left, top) = (16 + 170, 40 + 170);
        let grid = classes as u32 * cell;
        assert_eq!(png.dimensions(), (left + grid + 16, top + grid + 16));
        let darkness = |truth: usize, predicted: usize| {
            // A quarter into the cell: clear of its edge and of the count in its middle.
            let p = png.get_pixel(
                left + predicted as u32 * cell + cell / 4,
                top + truth as u32 * cell + cell / 4,
            );
            765 - p.0.iter().map(|&c| u32::from(c)).sum::<u32>()
        };
        let mut cells = Vec::new();
        for (t, row) in counts.iter().enumerate() {
            for (p, &count) in row.iter().enumerate() {
                cells.push((count as f64 / row_sums[t] as f64, darkness(t, p)));
            }
        }
        for &(rate, dark) in &cells {
            assert_eq!(rate == 0.0, dark == 0, "empty cells are white: {cells:?}");
            for &(other_rate, other_dark) in &cells {
                if rate > other_rate {
                    assert!(dark > other_dark, "shade follows the share: {cells:?}");
                }
            }
        }
        // The class names left of the grid are drawn (dark text on white).
        let inked = (16..left - 6)
            .flat_map(|x| (top..top + grid).map(move |y| (x, y)))
            .filter(|&(x, y)| png.get_pixel(x, y).0.iter().all(|&c| c < 128))
            .count();
        assert!(inked > 100 * classes, "{inked} dark pixels of names");
    }
}
