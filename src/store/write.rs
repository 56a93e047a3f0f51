//! Writing a dataset into an object store: whole objects only, each visible
//! complete or not at all (an S3 PUT, and a multipart upload's completion, are
//! atomic), which is what lets ingest publish shard by shard with `dataset.json`
//! last.

use std::io::Read;
use std::path::Path;

use bytes::Bytes;
use futures::StreamExt;
use object_store::{ObjectStoreExt, WriteMultipart};

use super::{Remote, StoreError};

/// Files up to this size go up in one PUT; larger ones as a multipart upload of
/// parts this size (S3 needs parts of at least 5 MiB, and caps one PUT at 5 GB).
pub const PART_BYTES: usize = 8 << 20;
/// Parts of one upload in flight at once (memory: this many parts).
const PARTS_IN_FLIGHT: usize = 4;

impl Remote {
    /// Uploads the local file `local` as `name`: one PUT when small, in parts when
    /// large; never a partial object.
    pub async fn upload_file(&self, local: &Path, name: &str) -> Result<(), StoreError> {
        let io = |source| StoreError::Io {
            url: local.display().to_string(),
            source,
        };
        let mut file = std::fs::File::open(local).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let path = self.object(name);
        if size <= PART_BYTES as u64 {
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes).map_err(io)?;
            return self.put(name, Bytes::from(bytes)).await;
        }
        let upload = self
            .store
            .put_multipart(&path)
            .await
            .map_err(|e| self.error(name, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        loop {
            // Each part read into its own buffer, handed over without a copy.
            let mut part = Vec::with_capacity(PART_BYTES);
            (&mut file)
                .take(PART_BYTES as u64)
                .read_to_end(&mut part)
                .map_err(io)?;
            if part.is_empty() {
                break;
            }
            if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                return Err(self.error(name, e));
            }
            writer.put(Bytes::from(part));
        }
        // On failure `finish` aborts the upload, so no parts are left behind.
        writer
            .finish()
            .await
            .map(drop)
            .map_err(|e| self.error(name, e))
    }

    /// Writes `bytes` as `name` in one PUT.
    pub async fn put(&self, name: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.store
            .put(&self.object(name), bytes.into())
            .await
            .map(drop)
            .map_err(|e| self.error(name, e))
    }

    /// Deletes `name`; one that is already gone is not an error.
    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        match self.store.delete(&self.object(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(name, e)),
        }
    }

    /// The name of some object under the prefix, if there is one (to refuse
    /// writing a dataset into a prefix that holds something else).
    pub async fn first_object(&self) -> Result<Option<String>, StoreError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        match self.store.list(prefix).next().await {
            None => Ok(None),
            Some(Ok(meta)) => Ok(Some(meta.location.to_string())),
            Some(Err(e)) => Err(self.error("", e)),
        }
    }

    /// The names of the objects under the folder `dir` of the prefix, relative to it.
    pub async fn list_names(&self, dir: &str) -> Result<Vec<String>, StoreError> {
        let folder = self.object(dir);
        let mut listed = self.store.list(Some(&folder));
        let mut names = Vec::new();
        while let Some(meta) = listed.next().await {
            let meta = meta.map_err(|e| self.error(dir, e))?;
            if let Some(name) = meta.location.as_ref().strip_prefix(folder.as_ref()) {
                names.push(name.trim_start_matches('/').to_string());
            }
        }
        Ok(names)
    }

    /// The whole of `name`, or `None` when there is no such object.
    pub async fn read_if_present(&self, name: &str) -> Result<Option<Bytes>, StoreError> {
        match self.store.get(&self.object(name)).await {
            Ok(got) => got.bytes().await.map(Some).map_err(|e| self.error(name, e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(name, e)),
        }
    }
}
