//! `--cache DIR`: whole shards of object-store datasets kept on local disk, so
//! the epochs after the first read them from disk instead of the network.
//!
//! - **Unit:** a shard, fetched whole the first time one of its row groups is
//!   read (one GET, guarded by the ETag its footer was read under, so a shard
//!   replaced meanwhile is an error, never a mix of two files).
//! - **Bound:** the files' total size stays within the limit; the least
//!   recently used shard is evicted first. A shard larger than the whole limit
//!   is read by byte ranges as without a cache, so a small cache costs nothing
//!   over none (it never thrashes whole-shard downloads it cannot keep).
//! - **Lifetime:** the files outlive the process (the next run starts warm) and
//!   are named by dataset URL, shard and ETag, so a re-ingested dataset is never
//!   served stale; processes may share one folder (files appear by rename, and
//!   one evicted while another reads it stays readable until closed).

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures::StreamExt;
use object_store::{GetOptions, ObjectStore};

use super::{Remote, StoreError};
use crate::fnv::Fnv1a;

/// `--cache DIR --cache-size BYTES`, set once by the command line.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    pub dir: PathBuf,
    pub limit_bytes: u64,
}

static CONFIG: OnceLock<CacheConfig> = OnceLock::new();

/// Turns the cache on for every object-store dataset this process opens. A
/// process-wide setting, like the credentials in the environment: the datasets
/// are opened deep inside the commands, long after the flags are parsed.
pub fn enable(config: CacheConfig) {
    let _ = CONFIG.set(config);
}

/// The cache for the dataset at `url`, when one is enabled.
pub(super) fn for_dataset(url: &str) -> Result<Option<Arc<ShardCache>>, StoreError> {
    let Some(config) = CONFIG.get() else {
        return Ok(None);
    };
    // One index per folder and process, shared by every dataset in it, so the
    // bound holds over all of them.
    static OPEN: Mutex<Vec<Arc<Index>>> = Mutex::new(Vec::new());
    let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    let index = match open.iter().find(|i| i.root == config.dir) {
        Some(index) => index.clone(),
        None => {
            let index = Arc::new(Index::scan(&config.dir, config.limit_bytes)?);
            open.push(index.clone());
            index
        }
    };
    Ok(Some(Arc::new(ShardCache {
        index,
        dataset: dataset_folder(url),
    })))
}

/// The cache as one dataset sees it.
#[derive(Debug)]
pub struct ShardCache {
    index: Arc<Index>,
    /// The dataset's folder inside the cache, relative to its root.
    dataset: PathBuf,
}

/// Every file in one cache folder, with its size and last use.
#[derive(Debug)]
struct Index {
    root: PathBuf,
    limit: u64,
    entries: Mutex<Entries>,
    /// One download of a shard at a time; others wait for it.
    loading: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Debug, Default)]
struct Entries {
    files: HashMap<PathBuf, Entry>,
    total: u64,
    clock: u64,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    size: u64,
    last_used: u64,
    /// Room reserved for a download in progress (not evictable, not readable).
    loading: bool,
}

/// Where a cached read's bytes came from, for the traffic counters.
pub(super) enum Served {
    /// From the cached file.
    Disk,
    /// The whole shard (this many bytes) was fetched first, then read from disk.
    Fetched(u64),
}

/// A name safe as one path component (URLs and ETags carry `/`, `"`, `:`).
fn component(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `s3://bucket/prefix` → `s3_bucket_prefix-<hash>` (readable, and unique even
/// where two URLs map to the same readable name).
fn dataset_folder(url: &str) -> PathBuf {
    let mut hash = Fnv1a::default();
    hash.update(url.as_bytes());
    let readable: String = component(url).chars().take(80).collect();
    PathBuf::from(format!("{readable}-{}", hash.hex()))
}

impl Index {
    /// Reads what earlier runs left in `root` (oldest modification first, as the
    /// least recently used), evicting down to `limit` if it shrank.
    fn scan(root: &Path, limit: u64) -> Result<Self, StoreError> {
        let io = |source| StoreError::Io {
            url: root.display().to_string(),
            source,
        };
        std::fs::create_dir_all(root).map_err(io)?;
        let mut found = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).map_err(io)?.flatten() {
                let path = entry.path();
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "tmp") {
                    // A download a killed process did not finish.
                    let _ = std::fs::remove_file(&path);
                } else if let Ok(relative) = path.strip_prefix(root) {
                    let modified = meta.modified().ok();
                    found.push((modified, relative.to_path_buf(), meta.len()));
                }
            }
        }
        found.sort();
        let mut entries = Entries::default();
        for (_, relative, size) in found {
            entries.add(&relative, size, false);
        }
        let index = Index {
            root: root.to_path_buf(),
            limit,
            entries: Mutex::new(entries),
            loading: Mutex::new(HashMap::new()),
        };
        index.entries().make_room(&index.root, index.limit, 0);
        Ok(index)
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens the cached file, marking it used; `None` if it is not cached.
    fn open(&self, relative: &Path) -> Option<std::fs::File> {
        let mut entries = self.entries();
        entries.clock += 1;
        let clock = entries.clock;
        let entry = entries.files.get_mut(relative).filter(|e| !e.loading)?;
        entry.last_used = clock;
        std::fs::File::open(self.root.join(relative)).ok()
    }

    /// Reserves `size` bytes for downloading `relative`, evicting least recently
    /// used files for room; `false` when downloads in progress leave too little.
    fn reserve(&self, relative: &Path, size: u64) -> bool {
        let mut entries = self.entries();
        if !entries.make_room(&self.root, self.limit, size) {
            return false;
        }
        entries.add(relative, size, true);
        true
    }

    /// The download of `relative` ended: its file is in place (`Some(size)`) or
    /// it failed and its reservation is returned.
    fn loaded(&self, relative: &Path, size: Option<u64>) {
        let mut entries = self.entries();
        if let Some(reserved) = entries.files.remove(relative) {
            entries.total -= reserved.size;
        }
        if let Some(size) = size {
            entries.add(relative, size, false);
        }
    }

    fn loading_lock(&self, relative: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        loading.entry(relative.to_path_buf()).or_default().clone()
    }
}

impl Entries {
    /// Adds `relative` as the most recently used file.
    fn add(&mut self, relative: &Path, size: u64, loading: bool) {
        self.clock += 1;
        let entry = Entry {
            size,
            last_used: self.clock,
            loading,
        };
        self.files.insert(relative.to_path_buf(), entry);
        self.total += size;
    }

    /// Evicts least recently used files until `incoming` more bytes fit within
    /// `limit`; `false` if only downloads in progress are left to evict.
    fn make_room(&mut self, root: &Path, limit: u64, incoming: u64) -> bool {
        while self.total + incoming > limit {
            let oldest = self
                .files
                .iter()
                .filter(|(_, e)| !e.loading)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(path, e)| (path.clone(), e.size));
            let Some((path, size)) = oldest else {
                return false;
            };
            // A reader that has the file open keeps reading it (Unix unlink).
            let _ = std::fs::remove_file(root.join(&path));
            self.files.remove(&path);
            self.total -= size;
        }
        true
    }
}

impl ShardCache {
    /// Reads `ranges` of `name` (`size` bytes, ETag `e_tag` when its footer was
    /// read) through the cache, fetching the whole shard first if needed and
    /// `fetch` allows; `None` when it is not to be cached (larger than the limit,
    /// or not cached and not `fetch`): read it by ranges.
    pub(super) async fn read_ranges(
        &self,
        remote: &Remote,
        name: &str,
        (size, e_tag): (u64, Option<&str>),
        ranges: &[Range<u64>],
        fetch: bool,
    ) -> Result<Option<(Vec<Bytes>, Served)>, StoreError> {
        let index = &self.index;
        if size > index.limit {
            return Ok(None);
        }
        let relative = self
            .dataset
            .join(format!("{name}@{}", component(e_tag.unwrap_or("no-etag"))));
        let target = index.root.join(&relative);
        let io = |source| StoreError::Io {
            url: target.display().to_string(),
            source,
        };
        let read = |file| {
            let ranges = ranges.to_vec();
            async move {
                tokio::task::spawn_blocking(move || super::read_at(&file, &ranges))
                    .await
                    .map_err(std::io::Error::other)?
            }
        };
        if let Some(file) = index.open(&relative) {
            return Ok(Some((read(file).await.map_err(io)?, Served::Disk)));
        }
        if !fetch {
            return Ok(None);
        }
        let lock = index.loading_lock(&relative);
        let _loading = lock.lock().await;
        if let Some(file) = index.open(&relative) {
            // Another reader fetched it while this one waited.
            return Ok(Some((read(file).await.map_err(io)?, Served::Disk)));
        }
        if !index.reserve(&relative, size) {
            return Ok(None);
        }
        let partial = target.with_extension(format!("{}.tmp", std::process::id()));
        let fetched = async {
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let fetched = fetch_whole(remote, name, e_tag, &partial).await?;
            std::fs::rename(&partial, &target).map_err(io)?;
            Ok::<_, StoreError>(fetched)
        }
        .await;
        if fetched.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        index.loaded(&relative, fetched.as_ref().ok().copied());
        let fetched = fetched?;
        let file = std::fs::File::open(&target).map_err(io)?;
        Ok(Some((
            read(file).await.map_err(io)?,
            Served::Fetched(fetched),
        )))
    }
}

/// Downloads `name` into `partial`, only if its ETag is still `e_tag`; its size.
async fn fetch_whole(
    remote: &Remote,
    name: &str,
    e_tag: Option<&str>,
    partial: &Path,
) -> Result<u64, StoreError> {
    let options = GetOptions {
        if_match: e_tag.map(str::to_string),
        ..GetOptions::default()
    };
    let failed = |e: object_store::Error| match e {
        object_store::Error::Precondition { .. } => StoreError::Failed {
            url: remote.url_of(name),
            message: "the object changed while the dataset was open (re-ingested?); \
                      start again"
                .to_string(),
        },
        e => remote.error(name, e),
    };
    let got = remote
        .store
        .get_opts(&remote.object(name), options)
        .await
        .map_err(failed)?;
    let io = |source| StoreError::Io {
        url: partial.display().to_string(),
        source,
    };
    let mut file = std::fs::File::create(partial).map_err(io)?;
    let mut stream = got.into_stream();
    let mut written = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(failed)?;
        std::io::Write::write_all(&mut file, &chunk).map_err(io)?;
        written += chunk.len() as u64;
    }
    Ok(written)
}
