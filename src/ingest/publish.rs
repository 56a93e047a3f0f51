//! `ingest --out s3://bucket/prefix`: the ingest runs exactly as into a folder,
//! in a local staging folder, and publishes each finished file to the object
//! store, in an order that keeps the remote copy a valid (resumable) ingest at
//! every moment:
//!
//! 1. a shard, once finished, is uploaded (in parts when large) and deleted from
//!    staging, so staging holds at most the shard being written;
//! 2. then the training sums covering it, then `.ingest/state.json` naming both:
//!    the remote state never counts a shard that is not there;
//! 3. at the end `mean.npy`, then `dataset.json` last, so a reader never sees a
//!    half dataset.
//!
//! A killed ingest resumes from the remote state alone (staging is a fresh
//! temporary folder each run, so a resume may run on another machine). A
//! multipart upload cut off by a kill is invisible to readers; S3 drops its parts
//! under an `AbortIncompleteMultipartUpload` lifecycle rule.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::run::{IngestError, IngestOptions, IngestSummary};
use super::state::{IngestState, STATE_DIR, STATE_FILE};
use crate::dataset::{MANIFEST_FILE, MEAN_FILE};
use crate::store::{Location, Remote, StoreError};

/// The object store side of an ingest into one: where files go once finished.
#[derive(Clone)]
pub struct Publisher {
    remote: Remote,
    url: String,
    staging: PathBuf,
    /// One runtime for every request, so the client's pooled connections stay
    /// alive between them.
    runtime: Arc<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("url", &self.url).finish()
    }
}

/// Runs (or resumes) an ingest whose `--out` is an object store URL.
pub(super) fn ingest_to_store(opts: &IngestOptions) -> Result<IngestSummary, IngestError> {
    let Location::Remote(remote) = Location::parse(&opts.out)? else {
        // `file://` names a folder: the plain ingest.
        let out = Location::parse(&opts.out)?
            .local_path("")
            .unwrap_or_default();
        return super::run::ingest(&IngestOptions {
            out,
            ..opts.clone()
        });
    };
    let url = remote.url().to_string();
    let staging = tempfile::Builder::new()
        .prefix("pipeline-ingest-")
        .tempdir()
        .map_err(|source| IngestError::Io {
            path: std::env::temp_dir().display().to_string(),
            source,
        })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("ingest-upload")
        .enable_all()
        .build()
        .map_err(|source| IngestError::Io {
            path: "object store client runtime".to_string(),
            source,
        })?;
    let publisher = Publisher {
        remote,
        url,
        staging: staging.path().to_path_buf(),
        runtime: Arc::new(runtime),
    };
    publisher.pull_state()?;
    let staged = IngestOptions {
        out: publisher.staging.clone(),
        publish: Some(publisher.clone()),
        ..opts.clone()
    };
    let mut summary = super::run::ingest(&staged)?;
    summary.out = PathBuf::from(&publisher.url);
    Ok(summary)
}

impl Publisher {
    /// The dataset's URL, as messages name it.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn block_on<T>(
        &self,
        future: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, IngestError> {
        self.runtime.block_on(future).map_err(IngestError::from)
    }

    /// Copies what a previous run published of its progress into staging, so the
    /// ingest resumes from it; refuses a prefix that holds anything else.
    fn pull_state(&self) -> Result<(), IngestError> {
        let state_name = format!("{STATE_DIR}/{STATE_FILE}");
        let Some(state) = self.block_on(self.remote.read_if_present(&state_name))? else {
            return match self.block_on(self.remote.first_object())? {
                None => Ok(()),
                Some(name) if name.ends_with(MANIFEST_FILE) => Err(IngestError::ForeignDataset {
                    out: self.url.clone(),
                    state: STATE_DIR,
                }),
                Some(name) => Err(IngestError::OutNotEmpty {
                    out: self.url.clone(),
                    entry: name,
                }),
            };
        };
        let state_dir = IngestState::dir(&self.staging);
        self.write_staged(&state_dir.join(STATE_FILE), &state)?;
        let parsed = IngestState::load(&state_dir)?.expect("written above");
        // As in a folder (`IngestState::load_sums`): a run killed between publishing
        // its state and deleting the previous sums left those behind.
        for name in self.block_on(self.remote.list_names(STATE_DIR))? {
            if parsed.is_stale_sums(&name) {
                self.block_on(self.remote.delete(&format!("{STATE_DIR}/{name}")))?;
            }
        }
        if let Some((sums, _)) = parsed.sums_file_names() {
            let name = format!("{STATE_DIR}/{sums}");
            let bytes = self
                .block_on(self.remote.read_if_present(&name))?
                .ok_or_else(|| StoreError::NotFound {
                    url: format!("{}/{name} (named by {state_name})", self.url),
                })?;
            self.write_staged(&state_dir.join(sums), &bytes)?;
        }
        // A complete dataset is told apart from an unfinished one, as for a folder.
        if let Some(manifest) = self.block_on(self.remote.read_if_present(MANIFEST_FILE))? {
            self.write_staged(&self.staging.join(MANIFEST_FILE), &manifest)?;
        }
        Ok(())
    }

    fn write_staged(&self, path: &Path, bytes: &Bytes) -> Result<(), IngestError> {
        let io = |source| IngestError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        std::fs::write(path, bytes).map_err(io)
    }

    /// Publishes shard `name` (e.g. `train/shard-00003.parquet`), finished in
    /// staging, then the training sums that now include it (`with_sums`), then the
    /// state that counts it; frees its staging copy.
    pub fn shard_done(
        &self,
        name: &str,
        state: &IngestState,
        with_sums: bool,
    ) -> Result<(), IngestError> {
        let local = self.staging.join(name);
        self.block_on(self.remote.upload_file(&local, name))?;
        let _ = std::fs::remove_file(&local);
        let state_dir = IngestState::dir(&self.staging);
        let sums = state.sums_file_names().filter(|_| with_sums);
        if let Some((live, _)) = &sums {
            let remote_name = format!("{STATE_DIR}/{live}");
            self.block_on(self.remote.upload_file(&state_dir.join(live), &remote_name))?;
        }
        let state_name = format!("{STATE_DIR}/{STATE_FILE}");
        self.block_on(
            self.remote
                .upload_file(&state_dir.join(STATE_FILE), &state_name),
        )?;
        // The sums the previous state named are referenced no more.
        if let Some((_, Some(previous))) = sums {
            self.block_on(self.remote.delete(&format!("{STATE_DIR}/{previous}")))?;
        }
        Ok(())
    }

    /// Publishes the finished dataset: the mean image, then `dataset.json` last.
    pub fn dataset_done(&self) -> Result<(), IngestError> {
        for name in [MEAN_FILE, MANIFEST_FILE] {
            self.block_on(self.remote.upload_file(&self.staging.join(name), name))?;
        }
        Ok(())
    }
}
