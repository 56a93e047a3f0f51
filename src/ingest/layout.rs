//! Finding the images and their labels in the ImageNet folder layouts people have:
//!
//! - class folders: `SRC/train/<wnid>/*`, `SRC/val/<wnid>/*`;
//! - Kaggle: `SRC/ILSVRC/Data/CLS-LOC/{train/<wnid>/, val/}` with
//!   `SRC/LOC_val_solution.csv` and `SRC/LOC_synset_mapping.txt`;
//! - flat `val/` labelled by the devkit's `ILSVRC2012_validation_ground_truth.txt`
//!   or by a `filename wnid` file given with `--val-labels`.
//!
//! Class index = position of the wnid in sorted order (torchvision/timm). A class
//! folder is walked recursively, as torchvision's `ImageFolder` does: a folder's files
//! in name order, then its sub-folders in name order, depth first. Entries that cannot
//! be followed (dangling symlinks, symlink loops) are skipped and listed, never fatal.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::dataset::{ClassInfo, SkippedImage};

use super::devkit;

/// One source image and its class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceImage {
    /// Path relative to the source root, `/`-separated, in the escaped form of
    /// [`key_of`]: the row's `key`.
    pub key: String,
    /// The same path as the file system spells it (any bytes), for reading.
    pub path: PathBuf,
    pub label: i32,
}

/// Which layout was found, for the summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutKind {
    ClassFolders,
    Kaggle,
    FlatValDevkit,
    FlatValLabelFile,
    TrainOnly,
}

impl std::fmt::Display for LayoutKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LayoutKind::ClassFolders => "class folders (train/<wnid>, val/<wnid>)",
            LayoutKind::Kaggle => "Kaggle (ILSVRC/Data/CLS-LOC + LOC_val_solution.csv)",
            LayoutKind::FlatValDevkit => "class folders + flat val with the devkit ground truth",
            LayoutKind::FlatValLabelFile => "class folders + flat val with a label file",
            LayoutKind::TrainOnly => "train class folders, no val",
        })
    }
}

/// Everything ingest needs to know about a source tree.
#[derive(Clone, Debug)]
pub struct SourceTree {
    pub root: PathBuf,
    pub layout: LayoutKind,
    pub classes: Vec<ClassInfo>,
    /// In sorted path order.
    pub train: Vec<SourceImage>,
    /// In sorted path order.
    pub val: Vec<SourceImage>,
    /// Training entries that cannot be used (dangling symlinks, loops).
    pub train_skipped: Vec<SkippedImage>,
    /// Validation entries that cannot be used or labelled (e.g. missing from
    /// the val solution file).
    pub val_skipped: Vec<SkippedImage>,
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "{root}: no ImageNet layout found: expected class folders {root}/train/<wnid>/ \
         or the Kaggle layout {root}/ILSVRC/Data/CLS-LOC/train/<wnid>/"
    )]
    NotFound { root: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{dir}: no class folders inside")]
    NoClasses { dir: String },
    #[error(
        "{dir} holds images directly (flat val) but nothing labels them: expected {expected}, \
         or pass --val-labels FILE with `filename wnid` lines"
    )]
    FlatValUnlabelled { dir: String, expected: String },
    #[error("{path}:{line}: {message}")]
    BadLabelFile {
        path: String,
        line: usize,
        message: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Lists directories recursively, collecting what cannot be followed as skips.
struct Walker<'a> {
    root: &'a Path,
    skipped: Vec<SkippedImage>,
}

impl Walker<'_> {
    fn skip(&mut self, path: &Path, reason: String) {
        self.skipped.push(SkippedImage {
            path: key_of(self.root, path),
            reason,
        });
    }

    /// Non-hidden entries of a directory, sorted by name, split into (dirs, files).
    /// Symlinks are followed (people often link their ImageNet folders); one
    /// that leads nowhere is skipped with its reason.
    fn list_dir(&mut self, dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), LayoutError> {
        let mut dirs = Vec::new();
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            if entry.file_name().as_encoded_bytes().starts_with(b".") {
                continue;
            }
            let path = entry.path();
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_dir() => dirs.push(path),
                Ok(meta) if meta.is_file() => files.push(path),
                Ok(_) => self.skip(&path, "not a regular file or folder".into()),
                Err(error) => {
                    let reason = unfollowable(&path, &error);
                    self.skip(&path, reason);
                }
            }
        }
        dirs.sort();
        files.sort();
        Ok((dirs, files))
    }

    /// Every file under `dir`: its own files in name order, then each
    /// sub-folder's, depth first. A folder that leads back to one being walked
    /// (a symlink to an ancestor) is skipped rather than walked forever.
    fn files_under(&mut self, dir: &Path) -> Result<Vec<PathBuf>, LayoutError> {
        let real = std::fs::canonicalize(dir).map_err(io_err(dir))?;
        let mut ancestors = vec![real];
        let mut files = Vec::new();
        self.walk(dir, &mut ancestors, &mut files)?;
        Ok(files)
    }

    fn walk(
        &mut self,
        dir: &Path,
        ancestors: &mut Vec<PathBuf>,
        files: &mut Vec<PathBuf>,
    ) -> Result<(), LayoutError> {
        let (dirs, own) = self.list_dir(dir)?;
        files.extend(own);
        for sub in dirs {
            let real = std::fs::canonicalize(&sub).map_err(io_err(&sub))?;
            if ancestors.contains(&real) {
                let reason = format!(
                    "symlink loop: leads back to {}",
                    key_of(self.root, &real_in_root(self.root, &real))
                );
                self.skip(&sub, reason);
                continue;
            }
            ancestors.push(real);
            self.walk(&sub, ancestors, files)?;
            ancestors.pop();
        }
        Ok(())
    }
}

/// `real` relative to the source root when it lies inside it (for messages).
fn real_in_root(root: &Path, real: &Path) -> PathBuf {
    match std::fs::canonicalize(root) {
        Ok(root_real) => match real.strip_prefix(&root_real) {
            Ok(rel) => root.join(rel),
            Err(_) => real.to_path_buf(),
        },
        Err(_) => real.to_path_buf(),
    }
}

/// Why an entry whose metadata cannot be read is unusable: a symlink to
/// nothing, a chain of symlinks that comes back on itself, or the OS's error.
fn unfollowable(path: &Path, error: &std::io::Error) -> String {
    let is_symlink = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if !is_symlink {
        return format!("cannot read: {error}");
    }
    let target = std::fs::read_link(path)
        .map(|t| t.display().to_string())
        .unwrap_or_default();
    if error.kind() == std::io::ErrorKind::NotFound {
        return format!("dangling symlink: {target} does not exist");
    }
    // Follow the chain by hand: a link met twice is a loop.
    let mut seen = HashSet::new();
    let mut current = path.to_path_buf();
    while let Ok(next) = std::fs::read_link(&current) {
        let next = match current.parent() {
            Some(parent) => parent.join(next),
            None => next,
        };
        if !seen.insert(next.clone()) {
            return format!("symlink loop: {target} leads back to itself");
        }
        current = next;
    }
    format!("cannot follow symlink to {target}: {error}")
}

/// The row key of a path: relative to the source root, components joined by `/`.
/// File names are bytes, not always UTF-8: a byte that is not part of valid
/// UTF-8 is written `\xNN` and a backslash `\\`, so distinct files always get
/// distinct keys (a lossy conversion would merge names that differ only there).
pub fn key_of(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| escape_name(c.as_os_str()))
        .collect::<Vec<_>>()
        .join("/")
}

fn escape_name(name: &OsStr) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.as_encoded_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn source_image(root: &Path, path: &Path, label: i32) -> SourceImage {
    SourceImage {
        key: key_of(root, path),
        path: path.strip_prefix(root).unwrap_or(path).to_path_buf(),
        label,
    }
}

/// Finds the layout under `root` and lists every image with its label.
pub fn discover(root: &Path, val_labels: Option<&Path>) -> Result<SourceTree, LayoutError> {
    let kaggle_base = root.join("ILSVRC/Data/CLS-LOC");
    let (base, kaggle) = if kaggle_base.join("train").is_dir() {
        (kaggle_base, true)
    } else if root.join("train").is_dir() {
        (root.to_path_buf(), false)
    } else {
        return Err(LayoutError::NotFound {
            root: root.display().to_string(),
        });
    };

    // Classes: the train folders, in sorted wnid order.
    let train_dir = base.join("train");
    let mut walker = Walker {
        root,
        skipped: Vec::new(),
    };
    let (class_dirs, _) = walker.list_dir(&train_dir)?;
    if class_dirs.is_empty() {
        return Err(LayoutError::NoClasses {
            dir: train_dir.display().to_string(),
        });
    }
    let wnids: Vec<String> = class_dirs.iter().map(|d| file_name(d)).collect();
    let label_of: HashMap<&str, i32> = wnids
        .iter()
        .enumerate()
        .map(|(i, w)| (w.as_str(), i as i32))
        .collect();
    let names = class_names(root)?;
    let classes = wnids
        .iter()
        .enumerate()
        .map(|(index, wnid)| ClassInfo {
            index,
            wnid: wnid.clone(),
            name: names.get(wnid).cloned().unwrap_or_else(|| wnid.clone()),
        })
        .collect();

    let mut train = Vec::new();
    for (label, dir) in class_dirs.iter().enumerate() {
        let files = walker.files_under(dir)?;
        train.extend(files.iter().map(|f| source_image(root, f, label as i32)));
    }
    let train_skipped = std::mem::take(&mut walker.skipped);

    let val_dir = base.join("val");
    let (val, layout) = if !val_dir.is_dir() {
        (Vec::new(), LayoutKind::TrainOnly)
    } else {
        let (val_class_dirs, val_files) = walker.list_dir(&val_dir)?;
        if !val_class_dirs.is_empty() && val_files.is_empty() {
            let mut val = Vec::new();
            for dir in &val_class_dirs {
                let wnid = file_name(dir);
                for f in walker.files_under(dir)? {
                    match label_of.get(wnid.as_str()) {
                        Some(&label) => val.push(source_image(root, &f, label)),
                        None => walker.skip(&f, format!("val class {wnid} has no train folder")),
                    }
                }
            }
            (
                val,
                if kaggle {
                    LayoutKind::Kaggle
                } else {
                    LayoutKind::ClassFolders
                },
            )
        } else {
            let (wnid_of_file, layout) = flat_val_labels(root, &val_dir, kaggle, val_labels)?;
            let mut val = Vec::new();
            for f in val_files {
                let name = file_name(&f);
                let stem = name.split('.').next().unwrap_or(&name).to_string();
                let wnid = wnid_of_file.get(&name).or_else(|| wnid_of_file.get(&stem));
                match wnid.map(|w| (w, label_of.get(w.as_str()))) {
                    Some((_, Some(&label))) => val.push(source_image(root, &f, label)),
                    Some((w, None)) => {
                        walker.skip(&f, format!("labelled {w}, which has no train folder"))
                    }
                    None => walker.skip(&f, "no label for this file".into()),
                }
            }
            (val, layout)
        }
    };
    Ok(SourceTree {
        root: root.to_path_buf(),
        layout,
        classes,
        train,
        val,
        train_skipped,
        val_skipped: walker.skipped,
    })
}

/// Class names from `LOC_synset_mapping.txt` or `synset_words.txt` (`wnid name, name…`).
fn class_names(root: &Path) -> Result<HashMap<String, String>, LayoutError> {
    for candidate in ["LOC_synset_mapping.txt", "synset_words.txt"] {
        let path = root.join(candidate);
        if path.is_file() {
            let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
            return Ok(text
                .lines()
                .filter_map(|l| l.trim().split_once(' '))
                .map(|(w, n)| (w.to_string(), n.trim().to_string()))
                .collect());
        }
    }
    Ok(HashMap::new())
}

/// Maps flat val file names (with or without extension) to wnids.
fn flat_val_labels(
    root: &Path,
    val_dir: &Path,
    kaggle: bool,
    val_labels: Option<&Path>,
) -> Result<(HashMap<String, String>, LayoutKind), LayoutError> {
    if let Some(path) = val_labels {
        return Ok((read_label_file(path)?, LayoutKind::FlatValLabelFile));
    }
    let solution = root.join("LOC_val_solution.csv");
    if solution.is_file() {
        return Ok((read_kaggle_solution(&solution)?, LayoutKind::Kaggle));
    }
    let ground_truth = [
        root.join("ILSVRC2012_validation_ground_truth.txt"),
        root.join("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"),
    ];
    if let Some(path) = ground_truth.iter().find(|p| p.is_file()) {
        return Ok((read_devkit_ground_truth(path)?, LayoutKind::FlatValDevkit));
    }
    let expected = if kaggle {
        format!("{}", solution.display())
    } else {
        format!(
            "{} or {}",
            ground_truth[0].display(),
            ground_truth[1].display()
        )
    };
    Err(LayoutError::FlatValUnlabelled {
        dir: val_dir.display().to_string(),
        expected,
    })
}

/// `filename wnid` per line (the name may carry directories; only the file name counts).
fn read_label_file(path: &Path) -> Result<HashMap<String, String>, LayoutError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let mut map = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(file), Some(wnid)) = (parts.next(), parts.next()) else {
            return Err(LayoutError::BadLabelFile {
                path: path.display().to_string(),
                line: i + 1,
                message: format!("expected `filename wnid`, found {line:?}"),
            });
        };
        let name = file.rsplit('/').next().unwrap_or(file).to_string();
        map.insert(name, wnid.to_string());
    }
    Ok(map)
}

/// Kaggle's `ImageId,PredictionString`: the first token of the prediction is the wnid.
fn read_kaggle_solution(path: &Path) -> Result<HashMap<String, String>, LayoutError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let mut map = HashMap::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: &str| LayoutError::BadLabelFile {
            path: path.display().to_string(),
            line: i + 1,
            message: message.to_string(),
        };
        let (id, prediction) = line
            .split_once(',')
            .ok_or_else(|| bad("expected `ImageId,PredictionString`"))?;
        let wnid = prediction
            .split_whitespace()
            .next()
            .ok_or_else(|| bad("empty PredictionString"))?;
        map.insert(id.trim().to_string(), wnid.to_string());
    }
    Ok(map)
}

/// The devkit's ground truth: line i holds the ILSVRC2012_ID of
/// `ILSVRC2012_val_{i:08}`; ids map to wnids through the devkit's `meta.mat`
/// order (not sorted-wnid order), embedded in [`devkit`].
fn read_devkit_ground_truth(path: &Path) -> Result<HashMap<String, String>, LayoutError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let table = devkit::devkit_id_to_wnid();
    let mut map = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |message: String| LayoutError::BadLabelFile {
            path: path.display().to_string(),
            line: i + 1,
            message,
        };
        let id: usize = line
            .trim()
            .parse()
            .map_err(|_| bad(format!("expected an ILSVRC2012_ID, found {line:?}")))?;
        let wnid = id
            .checked_sub(1)
            .and_then(|k| table.get(k))
            .ok_or_else(|| bad(format!("ILSVRC2012_ID {id} is outside 1..={}", table.len())))?;
        map.insert(format!("ILSVRC2012_val_{:08}", i + 1), wnid.to_string());
    }
    Ok(map)
}
