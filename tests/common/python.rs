//! A Python with the packages a test needs, found or provisioned, so that
//! `cargo test --release` passes on a machine with nothing but Rust and a bare `python3`.
//!
//! Order: the `python3` on PATH if it already imports the modules; else a venv under
//! `target/test-python/` made once and reused by every test binary; else the test is
//! skipped with the reason printed. CI sets `PIPELINE_TEST_REQUIRE_PYTHON=1`, which turns
//! that skip into a failure, so a green CI means the interop checks really ran.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Set by `.ci/run`: a test that would skip for want of Python packages fails instead.
pub const REQUIRE_ENV: &str = "PIPELINE_TEST_REQUIRE_PYTHON";

/// One pip package and the module that proves it is installed.
#[derive(Clone, Copy)]
pub struct Package {
    pub pip: &'static str,
    pub module: &'static str,
}

pub const PYARROW: Package = Package {
    pip: "pyarrow",
    module: "pyarrow",
};
pub const NUMPY: Package = Package {
    pip: "numpy",
    module: "numpy",
};

pub const SAFETENSORS: Package = Package {
    pip: "safetensors",
    module: "safetensors",
};
pub const PILLOW: Package = Package {
    pip: "pillow",
    module: "PIL",
};
/// PyPI's torch for Linux brings its CUDA libraries (about 5 GB installed), so no test
/// installs it: `.ci/run` does, and a developer who wants the check installs it once.
pub const TORCH: Package = Package {
    pip: "torch",
    module: "torch",
};

/// Like [`python_with`], but never installs anything: for packages too big to fetch
/// behind a developer's back (see [`TORCH`]). Looks in the `python3` on PATH and in
/// the test venv (`target/test-python`).
pub fn python_with_installed(test: &str, packages: &[Package]) -> Option<PathBuf> {
    let found = [PathBuf::from("python3"), venv_root().join("bin/python3")]
        .into_iter()
        .find(|python| imports(python, packages));
    if found.is_none() {
        let names: Vec<&str> = packages.iter().map(|p| p.pip).collect();
        let needs = format!(
            "needs Python with {} installed (neither python3 nor {} imports them)",
            names.join(", "),
            venv_root().display()
        );
        if std::env::var_os(REQUIRE_ENV).is_some_and(|v| v != "0") {
            panic!("{test}: {needs}, and {REQUIRE_ENV} is set: this check must run here");
        }
        eprintln!(
            "{test}: skipped: {needs}; `python3 -m pip install {}` lets it run",
            names.join(" ")
        );
    }
    found
}

/// A `python3` that imports every module of `packages`, or `None` after printing why the
/// caller should skip (a panic instead when CI requires Python).
pub fn python_with(test: &str, packages: &[Package]) -> Option<PathBuf> {
    // One provisioning at a time within a test binary; across binaries the venv is built
    // in a temporary folder and renamed into place, so a half-made one is never used.
    static PROVISION: Mutex<()> = Mutex::new(());
    let _guard = PROVISION.lock().unwrap_or_else(|e| e.into_inner());
    match find_or_provision(packages) {
        Ok(python) => Some(python),
        Err(reason) => {
            let names: Vec<&str> = packages.iter().map(|p| p.pip).collect();
            let needs = format!("needs Python with {} ({reason})", names.join(", "));
            if std::env::var_os(REQUIRE_ENV).is_some_and(|v| v != "0") {
                panic!("{test}: {needs}, and {REQUIRE_ENV} is set: this check must run here");
            }
            let message = format!(
                "{test}: skipped: {needs}; `python3 -m pip install {}` lets it run",
                names.join(" ")
            );
            eprintln!("{message}");
            None
        }
    }
}

fn find_or_provision(packages: &[Package]) -> Result<PathBuf, String> {
    let system = PathBuf::from("python3");
    if !runs(&system, &["-c", "pass"]) {
        return Err("no python3 on PATH".into());
    }
    if imports(&system, packages) {
        return Ok(system);
    }
    let venv = venv_root();
    let python = venv.join("bin/python3");
    if python.exists() && imports(&python, packages) {
        return Ok(python);
    }
    if !python.exists() {
        make_venv(&venv)?;
    }
    let mut install = vec![
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ];
    install.extend(packages.iter().map(|p| p.pip));
    let output = Command::new(&python)
        .args(&install)
        .output()
        .map_err(|e| format!("pip did not start: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "pip install into {} failed: {}",
            venv.display(),
            last_line(&output.stderr)
        ));
    }
    if imports(&python, packages) {
        Ok(python)
    } else {
        Err(format!("{} still lacks a module after pip", venv.display()))
    }
}

/// `target/test-python`, beside the test binaries (ignored by git, removed by `cargo clean`).
fn venv_root() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("test-python")
}

fn make_venv(venv: &Path) -> Result<(), String> {
    let parent = venv.parent().expect("the venv lives inside target/");
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let building = parent.join(format!("test-python.building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    let output = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&building)
        .output()
        .map_err(|e| format!("python3 -m venv did not start: {e}"))?;
    if !output.status.success() {
        let _ = std::fs::remove_dir_all(&building);
        return Err(format!(
            "python3 -m venv failed (Debian: apt install python3-venv): {}",
            last_line(&output.stderr)
        ));
    }
    // Another test binary may have won the race; its venv is as good as ours.
    if std::fs::rename(&building, venv).is_err() {
        let _ = std::fs::remove_dir_all(&building);
    }
    Ok(())
}

fn imports(python: &Path, packages: &[Package]) -> bool {
    let modules: Vec<&str> = packages.iter().map(|p| p.module).collect();
    runs(python, &["-c", &format!("import {}", modules.join(", "))])
}

fn runs(python: &Path, args: &[&str]) -> bool {
    Command::new(python)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn last_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message")
        .trim()
        .to_string()
}
