//! Where a dataset lives: a local folder, or a prefix in an object store
//! (`s3://bucket/prefix`, and the other URLs `object_store` parses), behind one
//! small interface so the readers of shards, `dataset.json` and `mean.npy` do not
//! care which.
//!
//! A local folder (a plain path, or `file://`) stays a path: the stream maps its
//! shards' row groups straight from the page cache (see `stream::source`). An
//! object store is read by name and byte range through `object_store`, which
//! coalesces nearby ranges into one request and retries transient failures with
//! backoff. What does not heal by retrying fails at once and names the full URL:
//! a missing object (404), a refusal (401/403), a malformed URL. A request that
//! stalls times out ([`timeout`]) instead of hanging the stream.
//!
//! Credentials, endpoint and region come from the usual environment
//! (`AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, …), read by the builder's `from_env`.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, ObjectStoreScheme, RetryConfig,
};
use url::Url;

mod cache;
mod write;
pub use cache::{CacheConfig, enable as enable_cache};
pub use write::PART_BYTES;

/// Overrides the per-request timeout, in seconds (default [`DEFAULT_TIMEOUT`]).
pub const TIMEOUT_ENV: &str = "PIPELINE_STORE_TIMEOUT_S";
/// A request that has not finished in this long is abandoned (then retried).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Retries of a transient failure (5xx, reset connection, timeout) before the
/// error reaches the stream.
const MAX_RETRIES: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{url}: not a dataset location: {message}")]
    BadUrl { url: String, message: String },
    #[error("{url}: not found")]
    NotFound { url: String },
    #[error("{url}: access denied (check the credentials in AWS_ACCESS_KEY_ID etc.): {message}")]
    Denied { url: String, message: String },
    #[error(
        "{url}: the object store did not answer within {timeout_s} s, {MAX_RETRIES} retries \
         included (the endpoint is down or stalled; {TIMEOUT_ENV} sets the timeout)"
    )]
    TimedOut { url: String, timeout_s: f64 },
    #[error("{url}: {message}")]
    Failed { url: String, message: String },
    #[error("{url}: {source}")]
    Io { url: String, source: std::io::Error },
}

impl StoreError {
    pub fn is_not_found(&self) -> bool {
        match self {
            StoreError::NotFound { .. } => true,
            StoreError::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

/// A dataset's home: a local folder or a prefix in an object store.
#[derive(Clone, Debug)]
pub enum Location {
    Local(PathBuf),
    Remote(Remote),
}

/// A prefix in an object store, and the URL it was named by (for messages).
#[derive(Clone, Debug)]
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    /// The dataset's URL without a trailing `/`.
    url: String,
    prefix: ObjectPath,
    timeout: Duration,
    /// `--cache`: whole shards kept on local disk.
    cache: Option<Arc<cache::ShardCache>>,
    /// Size and ETag of each object as first seen (its footer was read from that
    /// version; the cache fetches only that version).
    seen: Arc<Mutex<HashMap<String, Seen>>>,
}

/// An object's size and ETag.
type Seen = (u64, Option<String>);

/// Bytes this process has fetched from object stores, and read from `--cache`
/// instead, since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Traffic {
    pub fetched_bytes: u64,
    pub cache_read_bytes: u64,
}

static FETCHED: AtomicU64 = AtomicU64::new(0);
static CACHE_READ: AtomicU64 = AtomicU64::new(0);

pub fn traffic() -> Traffic {
    Traffic {
        fetched_bytes: FETCHED.load(Ordering::Relaxed),
        cache_read_bytes: CACHE_READ.load(Ordering::Relaxed),
    }
}

impl std::ops::Sub for Traffic {
    type Output = Traffic;
    fn sub(self, earlier: Traffic) -> Traffic {
        Traffic {
            fetched_bytes: self.fetched_bytes - earlier.fetched_bytes,
            cache_read_bytes: self.cache_read_bytes - earlier.cache_read_bytes,
        }
    }
}

fn fetched(bytes: u64) {
    FETCHED.fetch_add(bytes, Ordering::Relaxed);
}

/// Whether `dataset` names an object store URL (`scheme://…`) rather than a path.
pub fn is_url(dataset: &Path) -> bool {
    dataset.to_str().is_some_and(|s| {
        s.split_once("://").is_some_and(|(scheme, _)| {
            !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
        })
    })
}

/// The per-request timeout: [`TIMEOUT_ENV`] if set to a positive number of seconds.
pub fn timeout() -> Result<Duration, StoreError> {
    let Ok(text) = std::env::var(TIMEOUT_ENV) else {
        return Ok(DEFAULT_TIMEOUT);
    };
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| StoreError::BadUrl {
            url: format!("{TIMEOUT_ENV}={text}"),
            message: "the timeout must be a positive number of seconds".to_string(),
        })
}

impl Location {
    /// Parses a `--dataset` argument: a URL with a scheme goes to the object store
    /// it names (`file://` stays local), anything else is a local path.
    pub fn parse(dataset: &Path) -> Result<Self, StoreError> {
        if !is_url(dataset) {
            return Ok(Location::Local(dataset.to_path_buf()));
        }
        let text = dataset.to_string_lossy();
        let url_text = text.trim_end_matches('/').to_string();
        let bad = |message: String| StoreError::BadUrl {
            url: url_text.clone(),
            message,
        };
        let url = Url::parse(&text).map_err(|e| bad(e.to_string()))?;
        let (scheme, prefix) = ObjectStoreScheme::parse(&url).map_err(|e| bad(e.to_string()))?;
        if scheme == ObjectStoreScheme::Local {
            let path = url
                .to_file_path()
                .map_err(|()| bad("not a local file path".to_string()))?;
            return Ok(Location::Local(path));
        }
        let timeout = timeout()?;
        let client = ClientOptions::new()
            .with_timeout(timeout)
            .with_connect_timeout(timeout);
        // Transient failures retry with backoff, all within a few timeouts; a
        // 4xx (missing, denied) is never retried by object_store.
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: MAX_RETRIES,
            retry_timeout: timeout * (MAX_RETRIES as u32 + 1),
        };
        let store: Arc<dyn ObjectStore> = match scheme {
            // `from_env`'s reading of AWS_* applied over our client options (setting
            // them after it would drop what it read into them, AWS_ALLOW_HTTP).
            ObjectStoreScheme::AmazonS3 => Arc::new(
                std::env::vars()
                    .filter(|(key, _)| key.starts_with("AWS_"))
                    .filter_map(|(key, value)| {
                        let key = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>().ok()?;
                        Some((key, value))
                    })
                    .fold(
                        AmazonS3Builder::new()
                            .with_client_options(client)
                            .with_retry(retry),
                        |builder, (key, value)| builder.with_config(key, value),
                    )
                    .with_url(url.as_str())
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            // The other schemes as object_store builds them, given the environment
            // and our timeouts as options.
            _ => {
                let seconds = format!("{}s", timeout.as_secs_f64());
                let options = std::env::vars()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    .chain([
                        ("timeout".to_string(), seconds.clone()),
                        ("connect_timeout".to_string(), seconds),
                    ]);
                let (store, _) =
                    object_store::parse_url_opts(&url, options).map_err(|e| bad(e.to_string()))?;
                Arc::from(store)
            }
        };
        Ok(Location::Remote(Remote {
            store,
            cache: cache::for_dataset(&url_text)?,
            url: url_text,
            prefix,
            timeout,
            seen: Arc::default(),
        }))
    }

    pub fn is_remote(&self) -> bool {
        matches!(self, Location::Remote(_))
    }

    pub fn remote(&self) -> Option<&Remote> {
        match self {
            Location::Local(_) => None,
            Location::Remote(remote) => Some(remote),
        }
    }

    /// The local path of `name` (a `/`-separated name inside the dataset), for a
    /// local dataset.
    pub fn local_path(&self, name: &str) -> Option<PathBuf> {
        match self {
            Location::Local(dir) => Some(dir.join(name)),
            Location::Remote(_) => None,
        }
    }

    /// The dataset itself as the user named it.
    pub fn root(&self) -> String {
        match self {
            Location::Local(dir) => dir.display().to_string(),
            Location::Remote(remote) => remote.url.clone(),
        }
    }

    /// `name` as a user would type it: the path, or the full URL.
    pub fn display(&self, name: &str) -> String {
        match self {
            Location::Local(dir) => dir.join(name).display().to_string(),
            Location::Remote(remote) => remote.url_of(name),
        }
    }

    /// The whole of `name`.
    pub async fn read_all(&self, name: &str) -> Result<Bytes, StoreError> {
        match self {
            Location::Local(dir) => {
                let path = dir.join(name);
                tokio::fs::read(&path)
                    .await
                    .map(Bytes::from)
                    .map_err(|source| StoreError::Io {
                        url: path.display().to_string(),
                        source,
                    })
            }
            Location::Remote(remote) => {
                let path = remote.object(name);
                let got = remote.store.get(&path).await;
                let got = match got {
                    Ok(got) => got.bytes().await,
                    Err(e) => Err(e),
                };
                let got = got.map_err(|e| remote.error(name, e))?;
                fetched(got.len() as u64);
                Ok(got)
            }
        }
    }

    /// Byte ranges of `name`, in the order asked (an object store coalesces
    /// nearby ones into one request).
    pub async fn read_ranges(
        &self,
        name: &str,
        ranges: &[Range<u64>],
    ) -> Result<Vec<Bytes>, StoreError> {
        match self {
            Location::Local(dir) => {
                let path = dir.join(name);
                let ranges = ranges.to_vec();
                let shown = path.display().to_string();
                let io = |source| StoreError::Io {
                    url: shown.clone(),
                    source,
                };
                tokio::task::spawn_blocking(move || read_file_ranges(&path, &ranges))
                    .await
                    .map_err(|e| io(std::io::Error::other(e)))?
                    .map_err(io)
            }
            Location::Remote(remote) => remote.read_ranges(name, ranges, true).await,
        }
    }

    /// The last `len` bytes of `name` (`size` bytes long), where a footer is: from
    /// the cache if the shard is there, never a reason to fetch it whole.
    pub async fn read_tail(&self, name: &str, size: u64, len: u64) -> Result<Bytes, StoreError> {
        let range = size.saturating_sub(len)..size;
        let range = std::slice::from_ref(&range);
        let mut pieces = match self {
            Location::Local(_) => self.read_ranges(name, range).await?,
            Location::Remote(remote) => remote.read_ranges(name, range, false).await?,
        };
        Ok(pieces.pop().unwrap_or_default())
    }

    /// The size of `name` in bytes.
    pub async fn size(&self, name: &str) -> Result<u64, StoreError> {
        match self {
            Location::Local(dir) => {
                let path = dir.join(name);
                tokio::fs::metadata(&path)
                    .await
                    .map(|m| m.len())
                    .map_err(|source| StoreError::Io {
                        url: path.display().to_string(),
                        source,
                    })
            }
            Location::Remote(remote) => remote.head(name).await.map(|(size, _)| size),
        }
    }

    /// [`Self::read_all`] from synchronous code (the CLI before a stream exists): a
    /// local file is read directly; an object on a runtime of its own, on a thread
    /// of its own, so it works whether or not the caller is inside a runtime.
    pub fn read_all_blocking(&self, name: &str) -> Result<Bytes, StoreError> {
        match self {
            Location::Local(dir) => {
                let path = dir.join(name);
                std::fs::read(&path)
                    .map(Bytes::from)
                    .map_err(|source| StoreError::Io {
                        url: path.display().to_string(),
                        source,
                    })
            }
            Location::Remote(_) => block_on(self.read_all(name)),
        }
    }
}

/// Runs `future` to completion on a fresh current-thread runtime on a scoped
/// thread (a runtime cannot be blocked on from inside another).
pub fn block_on<T: Send>(
    future: impl std::future::Future<Output = Result<T, StoreError>> + Send,
) -> Result<T, StoreError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|source| StoreError::Io {
                        url: "object store client runtime".to_string(),
                        source,
                    })?
                    .block_on(future)
            })
            .join()
            .unwrap_or_else(|_| {
                Err(StoreError::Failed {
                    url: "object store client".to_string(),
                    message: "the read thread panicked (a bug in pipeline)".to_string(),
                })
            })
    })
}

fn read_file_ranges(path: &Path, ranges: &[Range<u64>]) -> std::io::Result<Vec<Bytes>> {
    read_at(&std::fs::File::open(path)?, ranges)
}

fn read_at(file: &std::fs::File, ranges: &[Range<u64>]) -> std::io::Result<Vec<Bytes>> {
    use std::os::unix::fs::FileExt;
    ranges
        .iter()
        .map(|r| {
            let mut buffer = vec![0; (r.end - r.start) as usize];
            file.read_exact_at(&mut buffer, r.start)?;
            Ok(Bytes::from(buffer))
        })
        .collect()
}

impl Remote {
    /// The URL the dataset was named by, without a trailing `/`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Size and ETag of `name`: as first seen, else asked for now.
    async fn head(&self, name: &str) -> Result<Seen, StoreError> {
        if let Some(seen) = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(seen.clone());
        }
        let meta = self
            .store
            .head(&self.object(name))
            .await
            .map_err(|e| self.error(name, e))?;
        let seen = (meta.size, meta.e_tag);
        let mut known = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        Ok(known.entry(name.to_string()).or_insert(seen).clone())
    }

    /// Byte ranges of `name`: through the cache for a shard when there is one
    /// (fetching it whole first if `fetch`), else straight from the store (which
    /// coalesces nearby ranges).
    async fn read_ranges(
        &self,
        name: &str,
        ranges: &[Range<u64>],
        fetch: bool,
    ) -> Result<Vec<Bytes>, StoreError> {
        if let Some(cache) = self.cache.as_ref().filter(|_| name.ends_with(".parquet")) {
            let (size, e_tag) = self.head(name).await?;
            let wanted: u64 = ranges.iter().map(|r| r.end - r.start).sum();
            if let Some((pieces, served)) = cache
                .read_ranges(self, name, (size, e_tag.as_deref()), ranges, fetch)
                .await?
            {
                if let cache::Served::Fetched(shard_bytes) = served {
                    fetched(shard_bytes);
                }
                CACHE_READ.fetch_add(wanted, Ordering::Relaxed);
                return Ok(pieces);
            }
        }
        let pieces = self
            .store
            .get_ranges(&self.object(name), ranges)
            .await
            .map_err(|e| self.error(name, e))?;
        fetched(pieces.iter().map(|p| p.len() as u64).sum());
        Ok(pieces)
    }

    fn object(&self, name: &str) -> ObjectPath {
        if self.prefix.as_ref().is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        }
    }

    fn url_of(&self, name: &str) -> String {
        if name.is_empty() {
            self.url.clone()
        } else {
            format!("{}/{name}", self.url)
        }
    }

    /// An object store error as ours, naming the full URL; a timeout is told
    /// apart from the other transient failures it was retried with.
    fn error(&self, name: &str, e: object_store::Error) -> StoreError {
        let url = self.url_of(name);
        match e {
            object_store::Error::NotFound { .. } => StoreError::NotFound { url },
            object_store::Error::PermissionDenied { source, .. }
            | object_store::Error::Unauthenticated { source, .. } => StoreError::Denied {
                url,
                message: source.to_string(),
            },
            e if timed_out(&e) => StoreError::TimedOut {
                url,
                timeout_s: self.timeout.as_secs_f64(),
            },
            e => StoreError::Failed {
                url,
                message: e.to_string(),
            },
        }
    }
}

/// Whether an error's cause is an HTTP request that timed out.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if let Some(http) = e.downcast_ref::<object_store::client::HttpError>()
            && http.kind() == object_store::client::HttpErrorKind::Timeout
        {
            return true;
        }
        cause = e.source();
    }
    false
}
