//! `dataset.json`: what a dataset directory holds, written last so its presence
//! means every shard it lists is complete.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{MANIFEST_FILE, Split, atomic};
use crate::store::{Location, StoreError};

/// Bumped whenever the on-disk contract changes; readers refuse other versions.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    /// S: every stored image is S×S×3.
    pub image_size: usize,
    /// How the images are stored (absent in manifests from before jpeg shards: raw).
    #[serde(default)]
    pub encoding: super::Encoding,
    /// The JPEG quality the images were encoded at (jpeg datasets only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jpeg_quality: Option<u8>,
    /// Classes in label order (label = position of the wnid in sorted order).
    pub classes: Vec<ClassInfo>,
    pub splits: BTreeMap<Split, SplitInfo>,
    /// Source files that could not be ingested, with the reason.
    pub skipped: Vec<SkippedImage>,
    pub stats: Stats,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassInfo {
    pub index: usize,
    pub wnid: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitInfo {
    pub rows: usize,
    pub shards: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkippedImage {
    /// Source path relative to the ImageNet root.
    pub path: String,
    pub reason: String,
}

/// Training-set statistics for mean subtraction and PCA lighting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stats {
    /// File name of the per-pixel mean image, relative to the dataset directory.
    pub mean_image: String,
    /// Mean R, G, B over all training pixels, 0–255.
    pub mean_rgb: [f64; 3],
    pub pca: PcaStats,
}

/// PCA of the RGB covariance of all training pixels scaled to [0,1].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcaStats {
    /// Descending.
    pub eigenvalues: [f64; 3],
    /// Row-major 3×3; the eigenvectors are the COLUMNS (`eigenvectors[c][i]` is
    /// component c of eigenvector i), as in fb.resnet.torch.
    pub eigenvectors: [[f64; 3]; 3],
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: no dataset here ({MANIFEST_FILE} is missing); run `pipeline ingest` first")]
    Missing { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a valid manifest: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: format_version {found} is not the supported version {FORMAT_VERSION}")]
    Version { path: String, found: u32 },
}

impl Manifest {
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    pub fn split(&self, split: Split) -> Option<&SplitInfo> {
        self.splits.get(&split)
    }

    /// Whether the dataset holds any rows of `split`: ingest records an empty
    /// split for a source without one (no `val/` folder), and a hand-pruned
    /// manifest may lack it altogether.
    pub fn has_rows(&self, split: Split) -> bool {
        self.split(split).is_some_and(|s| s.rows > 0)
    }

    /// Reads `DIR/dataset.json`, checking the format version; `dir` may also be an
    /// object store URL (see [`crate::store`]).
    pub fn load(dir: &Path) -> Result<Self, ManifestError> {
        let location = Location::parse(dir)?;
        Self::parse(&location, location.read_all_blocking(MANIFEST_FILE))
    }

    /// [`Self::load`] from an opened location, on the caller's runtime.
    pub async fn read(location: &Location) -> Result<Self, ManifestError> {
        Self::parse(location, location.read_all(MANIFEST_FILE).await)
    }

    fn parse(location: &Location, read: Result<Bytes, StoreError>) -> Result<Self, ManifestError> {
        let shown = location.display(MANIFEST_FILE);
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(e) if e.is_not_found() => {
                return Err(ManifestError::Missing {
                    path: location.root(),
                });
            }
            Err(StoreError::Io { source, .. }) => {
                return Err(ManifestError::Io {
                    path: shown,
                    source,
                });
            }
            Err(e) => return Err(ManifestError::Store(e)),
        };
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|source| ManifestError::Parse {
                path: shown.clone(),
                source,
            })?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(ManifestError::Version {
                path: shown,
                found: manifest.format_version,
            });
        }
        Ok(manifest)
    }

    /// Writes `DIR/dataset.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let json = serde_json::to_string_pretty(self).expect("a manifest always serialises");
        atomic::write_file(&path, json.as_bytes()).map_err(|source| ManifestError::Io {
            path: path.display().to_string(),
            source,
        })
    }
}
