//! Read-only directories that concurrent builds share: the unpacked base image (the overlay's
//! lower directory) and the apt package-list snapshots laid over it.
//!
//! Each such directory is complete before anyone sees it (made under a temporary `.partial-` name
//! and renamed into place) and never changes afterwards. A build that uses one holds a *lease*: a
//! shared `flock` on `<dir>.lock`, kept for the build root's lifetime and released by the kernel
//! when the process dies, however it dies. A directory that is no longer current is removed by
//! the next caller that finds nobody holding its lock (an exclusive `try_lock`). Leases are taken
//! and directories pruned only under the owning store's exclusive lock, so a build can never lease
//! a directory that is being removed.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::{BuildRootError, Result};
use crate::process::{self, Ended};

/// How long unpacking a base image may take before it is killed.
const UNPACK_LIMIT: Duration = Duration::from_secs(600);

/// A shared lease on a complete, read-only directory; released when dropped.
#[derive(Debug)]
pub struct Lease {
    dir: PathBuf,
    _lock: File,
}

impl Lease {
    /// The leased directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

/// The lock file whose shared locks are the leases of `dir`: `<dir>.lock`.
pub(crate) fn lease_lock_path(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes a shared lease on `dir`. Callers hold the store's lock, so `dir` is complete and no
/// pruner is removing it.
pub(crate) fn lease(dir: &Path) -> Result<Lease> {
    let path = lease_lock_path(dir);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(BuildRootError::io(format!("opening {}", path.display())))?;
    lock.lock_shared()
        .map_err(BuildRootError::io(format!("locking {}", path.display())))?;
    Ok(Lease {
        dir: dir.to_owned(),
        _lock: lock,
    })
}

/// Opens (creating it) and exclusively locks a store's lock file, waiting for the holder.
pub(crate) fn lock_exclusive(path: &Path) -> Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(BuildRootError::io(format!("creating {}", parent.display())))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(BuildRootError::io(format!("opening {}", path.display())))?;
    file.lock()
        .map_err(BuildRootError::io(format!("locking {}", path.display())))?;
    Ok(file)
}

/// Removes, under `parent`, every directory `belongs` selects except `keep`: leftovers of an
/// interrupted creation (`.partial-<name>...`, `.trash-<name>...`) at once, complete ones only when
/// no build holds a lease on them. Best effort: a directory that cannot be removed now is tried
/// again next time. Callers hold the store's lock.
pub(crate) fn prune(parent: &Path, belongs: impl Fn(&str) -> bool, keep: &[&Path]) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".lock") || keep.contains(&path.as_path()) {
            continue;
        }
        let leftover = name
            .strip_prefix(".partial-")
            .or_else(|| name.strip_prefix(".trash-"));
        if let Some(rest) = leftover {
            if belongs(rest) {
                let _ = std::fs::remove_dir_all(&path);
            }
            continue;
        }
        if !belongs(&name) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let lock_path = lease_lock_path(&path);
        let Ok(lock) = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
        else {
            continue;
        };
        if lock.try_lock().is_err() {
            // A build still runs on it; the next prune after it ends removes it.
            continue;
        }
        // Renamed first so a half-removed directory never looks complete.
        let trash = parent.join(format!(".trash-{name}-{}", std::process::id()));
        if std::fs::rename(&path, &trash).is_ok() {
            tracing::info!(dir = %path.display(), "removing a layer no build uses any more");
            let _ = std::fs::remove_dir_all(&trash);
            let _ = std::fs::remove_file(&lock_path);
        }
    }
}

/// Unpacks a base image tarball into the existing, empty directory `into`, owners and modes as
/// recorded, killed after ten minutes; tar's output goes to `log`.
pub(crate) fn unpack_tarball(tarball: &Path, into: &Path, log: &Path, root: &str) -> Result<()> {
    let mut tar = Command::new("tar");
    tar.arg("--extract")
        .arg("--zstd")
        .arg("--file")
        .arg(tarball)
        .arg("--directory")
        .arg(into)
        .args(["--numeric-owner", "--preserve-permissions"]);
    let context = || format!("unpacking {} into {}", tarball.display(), into.display());
    match process::run_bounded(&mut tar, log, UNPACK_LIMIT)? {
        Ended::Exited(status) if status.success() => Ok(()),
        Ended::Exited(status) => {
            let detail = std::fs::read_to_string(log).unwrap_or_default();
            Err(BuildRootError::Io {
                context: context(),
                source: std::io::Error::other(format!("tar {status}: {}", detail.trim())),
            })
        }
        Ended::TimedOut => Err(BuildRootError::Io {
            context: context(),
            source: std::io::Error::new(
                ErrorKind::TimedOut,
                format!("tar ran longer than {UNPACK_LIMIT:?}"),
            ),
        }),
        Ended::Cancelled => Err(BuildRootError::Cancelled {
            root: root.to_owned(),
            log: log.to_owned(),
        }),
    }
}

/// Creates `dir` by filling a sibling `.partial-<name>` directory with `fill` and renaming it
/// into place, so `dir` exists only complete. A leftover partial directory is removed first;
/// callers hold the store's lock, so nobody else is filling it.
pub(crate) fn create_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(BuildRootError::Io {
            context: format!("creating {}", dir.display()),
            source: std::io::Error::new(ErrorKind::InvalidInput, "no parent directory"),
        });
    };
    let partial = parent.join(format!(".partial-{}", name.to_string_lossy()));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(BuildRootError::io(format!(
        "creating {}",
        partial.display()
    )))?;
    let filled = fill(&partial).and_then(|()| {
        std::fs::rename(&partial, dir).map_err(BuildRootError::io(format!(
            "renaming {} to {}",
            partial.display(),
            dir.display()
        )))
    });
    if filled.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    filled
}

/// Creates `relative`'s directories under `to` with the modes and owners they have under `from`.
/// Gives `to` the mode and owner of `from`.
pub(crate) fn copy_dir_attributes(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(from)
        .map_err(BuildRootError::io(format!("reading {}", from.display())))?;
    std::fs::set_permissions(to, meta.permissions())
        .and_then(|()| std::os::unix::fs::chown(to, Some(meta.uid()), Some(meta.gid())))
        .map_err(BuildRootError::io(format!(
            "setting the mode and owner of {}",
            to.display()
        )))
}

pub(crate) fn make_dirs_like(from: &Path, to: &Path, relative: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut current = PathBuf::new();
    for component in relative.components() {
        current.push(component);
        let target = to.join(&current);
        if target.is_dir() {
            continue;
        }
        let source = from.join(&current);
        let meta = std::fs::metadata(&source)
            .map_err(BuildRootError::io(format!("reading {}", source.display())))?;
        std::fs::create_dir(&target)
            .map_err(BuildRootError::io(format!("creating {}", target.display())))?;
        std::fs::set_permissions(&target, meta.permissions())
            .and_then(|()| std::os::unix::fs::chown(&target, Some(meta.uid()), Some(meta.gid())))
            .map_err(BuildRootError::io(format!(
                "setting the mode and owner of {}",
                target.display()
            )))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unleased_directories_of_the_store_are_pruned() {
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = |name: &str| {
            let path = parent.path().join(name);
            std::fs::create_dir_all(path.join("usr/bin")).expect("mkdir");
            path
        };
        let current = dir("debian-12-x86_64-aaaa");
        let leased = dir("debian-12-x86_64-bbbb");
        let unused = dir("debian-12-x86_64-cccc");
        let other_root = dir("debian-13-x86_64-dddd");
        let partial = dir(".partial-debian-12-x86_64-eeee");
        let _held = lease(&leased).expect("lease");

        prune(
            parent.path(),
            |name| name.starts_with("debian-12-x86_64-"),
            &[&current],
        );
        assert!(current.exists(), "the current directory is kept");
        assert!(leased.exists(), "a leased directory is kept");
        assert!(!unused.exists(), "an unleased old directory is removed");
        assert!(!lease_lock_path(&unused).exists());
        assert!(
            other_root.exists(),
            "another store's directory is untouched"
        );
        assert!(!partial.exists(), "an interrupted creation is cleaned up");
        let trash: Vec<_> = std::fs::read_dir(parent.path())
            .expect("list")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".trash-"))
            .collect();
        assert!(trash.is_empty(), "{trash:?}");
    }

    #[test]
    fn an_atomic_creation_that_fails_leaves_nothing() {
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = parent.path().join("layer");
        let error = create_atomically(&dir, |partial| {
            std::fs::write(partial.join("half"), b"x").expect("write");
            Err(BuildRootError::EmptyCommand)
        })
        .expect_err("fill fails");
        assert!(matches!(error, BuildRootError::EmptyCommand));
        assert!(!dir.exists());
        assert_eq!(std::fs::read_dir(parent.path()).expect("list").count(), 0);

        create_atomically(&dir, |partial| {
            std::fs::write(partial.join("whole"), b"x")
                .map_err(BuildRootError::io("writing".to_owned()))
        })
        .expect("fill works");
        assert!(dir.join("whole").is_file());
    }
}
