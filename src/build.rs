//! Build script: under the `cuda` feature, compiles the model's CUDA kernels
//! (`src/model/*.cu`) to PTX with nvcc; the crate embeds the PTX and the driver loads it
//! on first use. Without the feature it does nothing, so CPU builds need no CUDA toolchain.
//!
//! Why nvcc at build time rather than NVRTC at run time: a kernel that does not compile
//! fails the build on the machine that builds (which has no GPU), not the first training
//! step on the machine that has one; and the GPU machine needs no NVRTC.
//!
//! Environment: `NVCC` (default `$CUDA_HOME/bin/nvcc`, else `nvcc` on PATH) and
//! `CUDA_COMPUTE_CAP` (default 90: H100/H200). The PTX is for `compute_<cap>`, which the
//! driver JIT-compiles for that GPU and any later one.

use std::path::{Path, PathBuf};
use std::process::Command;

const KERNELS: [&str; 3] = ["max_pool", "lrn", "conv"];

fn main() {
    println!("cargo::rerun-if-changed=src/build.rs");
    for var in ["NVCC", "CUDA_HOME", "CUDA_COMPUTE_CAP"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = std::env::var_os("NVCC")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CUDA_HOME")
                .map(|home| Path::new(&home).join("bin/nvcc"))
                .filter(|p| p.exists())
                .unwrap_or_else(|| PathBuf::from("nvcc"))
        });
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let cap = cap.trim_end_matches(['a', 'f']);
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo::rerun-if-changed=src/model/float_io.cuh");
    for name in KERNELS {
        let src = format!("src/model/{name}.cu");
        println!("cargo::rerun-if-changed={src}");
        let ptx = out.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args([
                "--ptx",
                "-O3",
                "-std=c++17",
                &format!("-arch=compute_{cap}"),
            ])
            .arg(&src)
            .arg("-o")
            .arg(&ptx)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "running {} for {src}: {e} (set NVCC or CUDA_HOME)",
                    nvcc.display()
                )
            });
        assert!(status.success(), "nvcc failed on {src}");
    }
}
