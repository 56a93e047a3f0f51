//! Atomic file writes: write a temporary sibling, fsync, rename over the target.
//! A reader (or a resumed run) never sees a half-written file.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The temporary sibling a file is written to before it is renamed into place.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Moves a finished temporary file into place (same directory, so the rename is atomic).
pub fn commit(temp: &Path, path: &Path) -> std::io::Result<()> {
    std::fs::rename(temp, path)
}

/// Writes `bytes` to `path` atomically.
pub fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temp = temp_path(path);
    {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    commit(&temp, path)
}
