//! Growing kernels.json: [`add_kernel`] idempotently inserts one kernel. The file is locked for the
//! whole read-modify-write and replaced atomically, so concurrent adds of different kernels all land
//! (matrix-gen's `add-kernel` after a build, the repository watcher after a prebuild request); an
//! add of a kernel already present leaves the file untouched, byte for byte. The document itself is
//! kernel-id's ([`KernelsFile`]); this is only its file handling, which kernel-id (no IO) cannot
//! hold. Pure std: no async runtime or HTTP client (available without the `watch` feature).

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

#[cfg(test)]
mod tests {
    use super::*;
    use kernel_id::IdentityInput;

    fn identity(release: &str) -> KernelIdentity {
        KernelIdentity::from_input(&IdentityInput {
            kernel_version: release.to_owned(),
            architecture: "x86_64".to_owned(),
            distribution: "debian".to_owned(),
            distro_version: Some("12".to_owned()),
            driver_version: "v0.1.2".to_owned(),
        })
        .unwrap()
    }

    #[test]
    fn adds_once_and_leaves_the_file_alone_on_a_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kernels.json");
        assert!(
            add_kernel(&path, &identity("6.1.0-48-amd64"))
                .unwrap()
                .changed
        );
        let written = fs::read(&path).unwrap();
        assert!(
            !add_kernel(&path, &identity("6.1.0-48-amd64"))
                .unwrap()
                .changed
        );
        assert_eq!(fs::read(&path).unwrap(), written);
        assert!(
            add_kernel(&path, &identity("6.1.0-9-amd64"))
                .unwrap()
                .changed
        );
        let file = KernelsFile::parse(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(file.entries(kernel_id::Arch::X86_64).len(), 2);
        fs::write(&path, "not json").unwrap();
        let error = add_kernel(&path, &identity("6.1.0-50-amd64")).unwrap_err();
        assert!(error.to_string().contains("kernels.json"), "{error}");
    }
}
