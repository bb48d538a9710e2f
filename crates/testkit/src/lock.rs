//! Advisory locks on cache entries. Parallel test processes must not download or unpack the same
//! thing twice, nor read a half-written entry; an exclusive `flock` on a sibling `.lock` file
//! serialises the makers, and entries are published by rename so readers never see partial state.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Held for as long as the lock should last; the kernel drops the lock when the file closes, so a
/// crashed test process never leaves a stale lock behind.
#[derive(Debug)]
pub(crate) struct CacheLock {
    _file: File,
}

impl CacheLock {
    /// Blocks until the exclusive lock on `path` (created if missing) is ours.
    pub(crate) fn acquire(path: &Path) -> Result<CacheLock> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating lock directory {}", parent.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        file.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(CacheLock { _file: file })
    }
}

/// A scratch path next to `final_path`, unique to this process and call, for build-then-rename.
pub(crate) fn scratch_path(final_path: &Path, label: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    final_path.with_file_name(format!(".{name}.{label}-{}-{n}", std::process::id()))
}
