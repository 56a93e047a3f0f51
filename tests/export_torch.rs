//! `pipeline export --format torch`: the run's weights unchanged under PyTorch's names,
//! and, where torch is installed, the exported module loading them with
//! `load_state_dict` and giving candle's logits on the val images it was shown.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::python::{NUMPY, PILLOW, SAFETENSORS, TORCH, python_with_installed};
use common::*;
use serde_json::Value;

/// One tiny trained run, exported with a sample of 8 val images (shared by the tests).
struct Exported {
    _tmp: tempfile::TempDir,
    source: PathBuf,
    dataset: PathBuf,
    run: PathBuf,
    out: PathBuf,
}

fn exported() -> &'static Exported {
    static EXPORTED: OnceLock<Exported> = OnceLock::new();
    EXPORTED.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let source = render_sample(tmp.path(), "folders", 12, 3);
        let dataset = tmp.path().join("dataset");
        ingest(&source, &dataset, 72, &[]);
        let recipe = tiny_recipe(tmp.path(), 1, "");
        let run = tmp.path().join("run");
        common::run(&train_args(&recipe, &dataset, &run));
        let out = tmp.path().join("export");
        let printed = stdout(&common::run(&[
            "export",
            "--run",
            path_str(&run),
            "--format",
            "torch",
            "--out",
            path_str(&out),
            "--with-sample",
            "8",
        ]));
        assert!(printed.contains("model.safetensors"), "{printed}");
        Exported {
            _tmp: tmp,
            source,
            dataset,
            run,
            out,
        }
    })
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn export_holds_the_best_checkpoints_weights_under_pytorch_names() {
    let e = exported();
    let exported = tensors(&e.out.join("model.safetensors"));
    let checkpoint = tensors(&e.run.join("checkpoints/best.safetensors"));
    let names: Vec<String> = [
        "conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8",
    ]
    .iter()
    .flat_map(|l| [format!("{l}.weight"), format!("{l}.bias")])
    .collect();
    assert_eq!(
        exported.keys().cloned().collect::<Vec<_>>(),
        {
            let mut sorted = names.clone();
            sorted.sort();
            sorted
        },
        "exactly the network's parameters, nothing of the trainer's"
    );
    for name in &names {
        assert_eq!(
            exported[name], checkpoint[name],
            "{name} differs from the checkpoint"
        );
    }

    let config = json(&e.out.join("config.json"));
    let groups: Vec<u64> = config["convs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["groups"].as_u64().unwrap())
        .collect();
    assert_eq!(
        groups,
        [1, 2, 1, 2, 2],
        "the paper's two towers in conv2/4/5"
    );
    assert_eq!(config["input_size"], 64);
    assert_eq!(config["image_size"], 72);

    let manifest = json(&e.dataset.join("dataset.json"));
    assert_eq!(json(&e.out.join("classes.json")), manifest["classes"]);
    let sample = json(&e.out.join("sample.json"));
    assert_eq!(sample.as_array().unwrap().len(), 8);
    assert!(sample[0]["key"].as_str().unwrap().starts_with("val/"));
}

#[test]
fn exported_module_gives_candles_logits_in_pytorch() {
    let test = "exported_module_gives_candles_logits_in_pytorch";
    let Some(python) = python_with_installed(test, &[TORCH, SAFETENSORS, NUMPY, PILLOW]) else {
        return;
    };
    let e = exported();
    // The documented load (AlexNet(config) + load_state_dict(load_file(...)), strict),
    // then the module's own `load` and `preprocess` on the sample's JPEGs.
    let script = r#"
import json, sys
import numpy as np, torch
from safetensors.torch import load_file
out, source = sys.argv[1], sys.argv[2]
sys.path.insert(0, out)
import alexnet
model = alexnet.AlexNet(alexnet.config(out))
model.load_state_dict(load_file(out + "/model.safetensors"))
model.eval()
x = torch.from_numpy(np.load(out + "/sample_input.npy"))
ref = np.load(out + "/sample_logits.npy")
with torch.no_grad():
    logits = model(x).numpy()
    again = alexnet.load(out)(x).numpy()
keys = [s["key"] for s in json.load(open(out + "/sample.json"))]
mine = torch.cat([alexnet.preprocess(source + "/" + k, out) for k in keys]).numpy()
print(json.dumps({
    "images": len(ref),
    "max_abs_diff": float(np.abs(logits - ref).max()),
    "load_max_abs_diff": float(np.abs(again - ref).max()),
    "logit_scale": float(np.abs(ref).max()),
    "same_top1": bool((logits.argmax(1) == ref.argmax(1)).all()),
    "preprocess_mean_abs_diff": float(np.abs(mine - x.numpy()).mean()),
}))
"#;
    let output = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&e.out)
        .arg(&e.source)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = last_json(&output);
    eprintln!("{test}: {report}");
    assert_eq!(report["images"], 8);
    assert!(report["logit_scale"].as_f64().unwrap() > 0.01, "{report}");
    for key in ["max_abs_diff", "load_max_abs_diff"] {
        assert!(report[key].as_f64().unwrap() < 1e-4, "{key}: {report}");
    }
    assert_eq!(report["same_top1"], true, "{report}");
    // Pillow's bilinear and ingest's agree to a mean of 2/255 of the pixel range.
    assert!(
        report["preprocess_mean_abs_diff"].as_f64().unwrap() < 2.0,
        "{report}"
    );
}
