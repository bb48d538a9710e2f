//! `add-kernel`: idempotently inserts one kernel into kernels.json. The file is locked for the whole
//! read-modify-write and replaced atomically, so concurrent adds of different kernels all land; an add
//! of a kernel already present leaves the file untouched, byte for byte.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use kernel_id::{KernelIdentity, KernelsFile};

/// What an add did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// False when the kernel was already listed (and nothing was written).
    pub changed: bool,
    /// The predictable branch name for the PR.
    pub branch: String,
}

/// Failures while updating kernels.json.
#[derive(Debug, thiserror::Error)]
pub enum AddKernelError {
    /// Filesystem trouble.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The existing file is invalid.
    #[error("{path}: {source}")]
    Invalid {
        /// The file involved.
        path: PathBuf,
        /// The validation error.
        source: kernel_id::IdError,
    },
}

/// Inserts `identity`'s kernel into the kernels.json at `path` (created if missing).
pub fn add_kernel(path: &Path, identity: &KernelIdentity) -> Result<Added, AddKernelError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| AddKernelError::Io { path: p, source }
    };
    // A sibling lock file: the data file itself is replaced by rename, so it can't carry the lock.
    let lock_path = path.with_extension("json.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;

    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(path)(e)),
    };
    let mut file = if text.trim().is_empty() {
        KernelsFile::default()
    } else {
        KernelsFile::parse(&text).map_err(|source| AddKernelError::Invalid {
            path: path.to_path_buf(),
            source,
        })?
    };
    let branch = identity.add_kernel_branch();
    if !file.insert(identity) {
        return Ok(Added {
            changed: false,
            branch,
        });
    }
    let temp = path.with_extension("json.tmp");
    let mut out = File::create(&temp).map_err(io(&temp))?;
    out.write_all(file.to_json_string().as_bytes())
        .map_err(io(&temp))?;
    out.sync_all().map_err(io(&temp))?;
    fs::rename(&temp, path).map_err(io(path))?;
    Ok(Added {
        changed: true,
        branch,
    })
}
