//! A real S3 server on loopback for the object store tests: `moto_server` (PyPI
//! `moto[server]`) on a free port, stopped when the handle drops.
//!
//! Without `moto_server` on PATH a test is skipped with the reason printed; CI sets
//! `PIPELINE_TEST_REQUIRE_PYTHON=1`, which turns that skip into a failure (the same
//! rule as `python.rs`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::python::REQUIRE_ENV;

/// How long moto may take to start answering (a hang guard, not a speed claim).
const START_GUARD: Duration = Duration::from_secs(60);

pub struct Moto {
    child: Child,
    pub port: u16,
    runtime: tokio::runtime::Runtime,
}

/// A free loopback port: bound to port 0, then released for the server to take.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The environment that points `pipeline` (object_store's `from_env`) at `endpoint`.
pub fn s3_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ("AWS_ALLOW_HTTP", "true".to_string()),
        ("AWS_ACCESS_KEY_ID", "testing".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ]
}

impl Moto {
    /// Starts moto, or returns `None` after printing why `test` is skipped (a panic
    /// instead when CI requires it).
    pub fn start(test: &str) -> Option<Moto> {
        let port = free_port();
        let child = match Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                let needs = format!("needs moto_server on PATH ({e})");
                if std::env::var_os(REQUIRE_ENV).is_some_and(|v| v != "0") {
                    panic!("{test}: {needs}, and {REQUIRE_ENV} is set: this check must run here");
                }
                eprintln!(
                    "{test}: skipped: {needs}; `python3 -m pip install 'moto[server]'` lets it run"
                );
                return None;
            }
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut moto = Moto {
            child,
            port,
            runtime,
        };
        let started = Instant::now();
        while http(port, "GET", "/").is_none_or(|reply| !reply.starts_with("HTTP/1.1 200")) {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("{test}: moto_server exited at start: {status}");
            }
            assert!(
                started.elapsed() < START_GUARD,
                "{test}: moto_server did not answer on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(moto)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment for a `pipeline` child that reads from this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        s3_env(&self.endpoint())
    }

    pub fn create_bucket(&self, bucket: &str) {
        let reply = http(self.port, "PUT", &format!("/{bucket}")).expect("moto answers");
        assert!(reply.starts_with("HTTP/1.1 200"), "create bucket: {reply}");
    }

    fn bucket(&self, bucket: &str) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .with_region("us-east-1")
            .with_bucket_name(bucket)
            .build()
            .unwrap()
    }

    /// Uploads every file under `dir` to `bucket` under `prefix/`.
    pub fn upload_dir(&self, bucket: &str, prefix: &str, dir: &Path) {
        let store = self.bucket(bucket);
        for (name, bytes) in super::tree_bytes(dir) {
            let key = ObjectPath::from(format!("{prefix}/{name}"));
            self.runtime
                .block_on(store.put(&key, bytes.into()))
                .unwrap_or_else(|e| panic!("upload {key}: {e}"));
        }
    }

    /// Every object under `prefix/` (name relative to the prefix → bytes), to
    /// compare with a local dataset through `tree_bytes`.
    pub fn objects(&self, bucket: &str, prefix: &str) -> BTreeMap<String, Vec<u8>> {
        let store = self.bucket(bucket);
        let listed: Vec<_> = self
            .runtime
            .block_on(store.list(Some(&ObjectPath::from(prefix))).try_collect())
            .unwrap_or_else(|e| panic!("list {bucket}/{prefix}: {e}"));
        listed
            .into_iter()
            .map(|meta| {
                let key = meta.location.to_string();
                let name = key.strip_prefix(&format!("{prefix}/")).unwrap().to_string();
                (name, self.get(bucket, &key).unwrap())
            })
            .collect()
    }

    /// The object `key`, or `None` if there is none.
    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let store = self.bucket(bucket);
        self.runtime.block_on(async {
            match store.get(&ObjectPath::from(key)).await {
                Ok(got) => Some(got.bytes().await.unwrap().to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("get {key}: {e}"),
            }
        })
    }

    /// The object's ETag (S3 gives a multipart upload's as `"md5-PARTS"`).
    pub fn e_tag(&self, bucket: &str, key: &str) -> String {
        let store = self.bucket(bucket);
        let meta = self
            .runtime
            .block_on(store.head(&ObjectPath::from(key)))
            .unwrap_or_else(|e| panic!("head {key}: {e}"));
        meta.e_tag.unwrap_or_default()
    }

    pub fn put(&self, bucket: &str, key: &str, bytes: Vec<u8>) {
        let store = self.bucket(bucket);
        self.runtime
            .block_on(store.put(&ObjectPath::from(key), bytes.into()))
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }

    pub fn delete(&self, bucket: &str, key: &str) {
        let store = self.bucket(bucket);
        self.runtime
            .block_on(store.delete(&ObjectPath::from(key)))
            .unwrap_or_else(|e| panic!("delete {key}: {e}"));
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One unauthenticated HTTP/1.1 request to the server (moto does not check
/// signatures): the reply's text, or `None` if nothing answers yet.
fn http(port: u16, method: &str, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    Some(reply)
}
