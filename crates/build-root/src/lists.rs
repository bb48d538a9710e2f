//! apt package lists shared by every build of a base image, refreshed at most once per interval.
//!
//! A base image carries the package lists of the day it was made. Rather than each build running
//! `apt-get update` (seconds, and a request to the mirror per build), the executor keeps snapshots
//! of a root's lists under `<roots dir>/apt-lists/<root>-<image SHA-256>/<unix time>/`, each the
//! `var/lib/apt/lists` of one refresh plus apt's caches built from them
//! (`var/cache/apt/{pkg,srcpkg}cache.bin`, which every apt command in a build would otherwise
//! rebuild), laid over the base image as one more read-only overlay layer (copied in when the
//! root is unpacked instead). Keyed by the image digest, since the lists belong to its sources.
//!
//! A refresh runs as the first command in a fresh build root, before the driver source or any
//! driver code is in it, so what it leaves is apt's own verified download; it is taken when the
//! newest snapshot is older than the interval (six hours by default), or when the kernel's header
//! package is missing from it and it is at least [`MISS_REFRESH_AFTER`] old (a kernel published
//! since). One build refreshes at a time per image (`.refresh.lock`); builds that start meanwhile
//! use the snapshot they find. Snapshots are leased and pruned like lower directories
//! ([`crate::layers`]); file times are kept, since apt checks its caches against them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{BuildRootError, Result};
use crate::layers::{self, Lease};
use crate::root::RootKey;

/// Where, under the roots directory, the list snapshots live.
pub const LISTS_DIR: &str = "apt-lists";
/// The package lists inside a root.
pub const APT_LISTS: &str = "var/lib/apt/lists";
/// apt's binary caches inside a root, built from the lists.
pub const APT_CACHES: [&str; 2] = [
    "var/cache/apt/pkgcache.bin",
    "var/cache/apt/srcpkgcache.bin",
];
/// A snapshot missing the wanted header package is refreshed once it is at least this old, so a
/// burst of builds for a kernel that is not in the suite at all (a backports kernel) refreshes
/// once, not per build.
pub const MISS_REFRESH_AFTER: Duration = Duration::from_secs(10 * 60);

/// The snapshots of one base image.
#[derive(Debug, Clone)]
pub struct ListsStore {
    dir: PathBuf,
}

/// A leased snapshot and when it was refreshed.
#[derive(Debug)]
pub struct Snapshot {
    /// The snapshot directory (a tree with `var/lib/apt/lists`), leased.
    pub lease: Lease,
    /// When its refresh ran.
    pub refreshed: SystemTime,
}

impl Snapshot {
    /// How old the lists are (zero for a clock that went backwards).
    pub fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.refreshed)
            .unwrap_or_default()
    }
}

/// Held by the one build refreshing an image's lists; others skip the refresh meanwhile.
#[derive(Debug)]
pub struct RefreshGuard {
    _lock: File,
}

impl ListsStore {
    /// The store of `key`'s image with the given SHA-256, under `roots_dir`.
    pub fn new(roots_dir: &Path, key: &RootKey, image_sha256: &str) -> Self {
        Self {
            dir: roots_dir
                .join(LISTS_DIR)
                .join(format!("{}-{image_sha256}", key.slug())),
        }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The newest snapshot, leased, if there is one.
    pub fn newest(&self) -> Result<Option<Snapshot>> {
        let _lock = layers::lock_exclusive(&self.dir.join(".lock"))?;
        let newest = std::fs::read_dir(&self.dir)
            .map_err(BuildRootError::io(format!(
                "reading {}",
                self.dir.display()
            )))?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| snapshot_time(&e.file_name().to_string_lossy()))
            .max();
        let Some(secs) = newest else {
            return Ok(None);
        };
        let lease = layers::lease(&self.dir.join(snapshot_name(secs)))?;
        Ok(Some(Snapshot {
            lease,
            refreshed: UNIX_EPOCH + Duration::from_secs(secs),
        }))
    }

    /// The right to refresh, unless another build is refreshing right now.
    pub fn try_refresh(&self) -> Result<Option<RefreshGuard>> {
        std::fs::create_dir_all(&self.dir).map_err(BuildRootError::io(format!(
            "creating {}",
            self.dir.display()
        )))?;
        let path = self.dir.join(".refresh.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(BuildRootError::io(format!("opening {}", path.display())))?;
        Ok(file
            .try_lock()
            .is_ok()
            .then_some(RefreshGuard { _lock: file }))
    }

    /// Notes a refresh that failed, so builds in the next [`MISS_REFRESH_AFTER`] do not each wait
    /// for an unreachable mirror again.
    pub fn note_failed_refresh(&self) {
        let _ = std::fs::write(self.dir.join(".refresh-failed"), b"");
    }

    /// Whether a refresh failed less than [`MISS_REFRESH_AFTER`] ago.
    pub fn refresh_failed_recently(&self) -> bool {
        std::fs::metadata(self.dir.join(".refresh-failed"))
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|at| SystemTime::now().duration_since(at).ok())
            .is_some_and(|age| age < MISS_REFRESH_AFTER)
    }

    /// Stores the lists and caches of `root` (a root's host path, right after its refresh ran at
    /// `refreshed`) as the newest snapshot, and removes older ones no build holds. Returns the
    /// snapshot directory.
    pub fn store(
        &self,
        root: &Path,
        refreshed: SystemTime,
        _guard: &RefreshGuard,
    ) -> Result<PathBuf> {
        let secs = refreshed
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let _lock = layers::lock_exclusive(&self.dir.join(".lock"))?;
        let snapshot = self.dir.join(snapshot_name(secs));
        if !snapshot.exists() {
            layers::create_atomically(&snapshot, |partial| copy_lists(root, partial))?;
        }
        let _ = std::fs::remove_file(self.dir.join(".refresh-failed"));
        layers::prune(
            &self.dir,
            |name| {
                name.split('-')
                    .next()
                    .is_some_and(|n| snapshot_time(n).is_some())
            },
            &[&snapshot],
        );
        Ok(snapshot)
    }
}

/// Removes the list stores of `key`'s other (older) images once none of their snapshots is
/// leased: they belong to images that were remade. Best effort, like [`layers::prune`].
pub fn prune_other_images(roots_dir: &Path, key: &RootKey, keep_sha256: &str) {
    let parent = roots_dir.join(LISTS_DIR);
    let prefix = format!("{}-", key.slug());
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(digest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let is_image = digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_image || digest == keep_sha256 {
            continue;
        }
        let store = entry.path();
        let Ok(_lock) = layers::lock_exclusive(&store.join(".lock")) else {
            continue;
        };
        // Every snapshot without a lease goes; the store itself once nothing is left in it.
        layers::prune(
            &store,
            |n| {
                n.split('-')
                    .next()
                    .is_some_and(|n| snapshot_time(n).is_some())
            },
            &[],
        );
        let left = std::fs::read_dir(&store)
            .map(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            })
            .unwrap_or(true);
        if !left {
            let _ = std::fs::remove_dir_all(&store);
        }
    }
}

/// A snapshot's directory name: its refresh time in seconds since the epoch, zero-padded so names
/// sort by time.
fn snapshot_name(secs: u64) -> String {
    format!("{secs:012}")
}

fn snapshot_time(name: &str) -> Option<u64> {
    (name.len() == 12 && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

/// Copies `var/lib/apt/lists` (regular files; not apt's `lock` or `partial/`) and apt's caches
/// from the tree `from` into the tree `to`, keeping modes and modification times, and giving the
/// directories on the way the modes and owners they have in `from` (in an overlay, the topmost
/// layer's directory is what the merged tree shows).
pub fn copy_lists(from: &Path, to: &Path) -> Result<()> {
    let lists = from.join(APT_LISTS);
    layers::make_dirs_like(from, to, Path::new(APT_LISTS))?;
    let entries = std::fs::read_dir(&lists)
        .map_err(BuildRootError::io(format!("reading {}", lists.display())))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name == "lock" || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        copy_keeping_times(&entry.path(), &to.join(APT_LISTS).join(&name))?;
    }
    for cache in APT_CACHES {
        let source = from.join(cache);
        if source.is_file() {
            layers::make_dirs_like(from, to, Path::new(cache).parent().unwrap_or(Path::new("")))?;
            copy_keeping_times(&source, &to.join(cache))?;
        }
    }
    Ok(())
}

fn copy_keeping_times(source: &Path, target: &Path) -> Result<()> {
    let context = || format!("copying {} to {}", source.display(), target.display());
    let modified = std::fs::metadata(source)
        .and_then(|m| m.modified())
        .map_err(BuildRootError::io(context()))?;
    std::fs::copy(source, target).map_err(BuildRootError::io(context()))?;
    File::options()
        .write(true)
        .open(target)
        .and_then(|file| file.set_modified(modified))
        .map_err(BuildRootError::io(context()))
}

/// Whether the package lists under `root` (a root's host path) name the binary package `package`:
/// a `Package: <package>` line in one of its `*_Packages` files. The smallest files are read
/// first: a kernel published since the last point release is in the small security or updates
/// lists, not in the suite's 50 MB main list.
pub fn lists_name_package(root: &Path, package: &str) -> bool {
    let needle = format!("\nPackage: {package}\n");
    let Ok(entries) = std::fs::read_dir(root.join(APT_LISTS)) else {
        return false;
    };
    let mut lists: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().ends_with("_Packages"))
        .map(|entry| (entry.metadata().map(|m| m.len()).unwrap_or(0), entry.path()))
        .collect();
    lists.sort();
    lists.iter().any(|(_, path)| {
        std::fs::read_to_string(path)
            .is_ok_and(|text| text.starts_with(&needle[1..]) || text.contains(&needle))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree_with_lists(dir: &Path) {
        std::fs::create_dir_all(dir.join(APT_LISTS).join("partial")).expect("mkdir");
        std::fs::create_dir_all(dir.join("var/cache/apt")).expect("mkdir");
        std::fs::write(
            dir.join(APT_LISTS).join("m_dists_bookworm_main_binary-amd64_Packages"),
            "Package: bash\nVersion: 5\n\nPackage: linux-headers-6.1.0-57-amd64\nVersion: 6.1.192-3\n",
        )
        .expect("write");
        std::fs::write(dir.join(APT_LISTS).join("lock"), "").expect("write");
        std::fs::write(dir.join("var/cache/apt/srcpkgcache.bin"), "cache").expect("write");
    }

    #[test]
    fn a_snapshot_keeps_lists_and_caches_with_their_times_but_not_apts_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        tree_with_lists(&root);
        let old = SystemTime::now() - Duration::from_secs(86_400);
        let packages = root
            .join(APT_LISTS)
            .join("m_dists_bookworm_main_binary-amd64_Packages");
        File::options()
            .write(true)
            .open(&packages)
            .and_then(|f| f.set_modified(old))
            .expect("mtime");
        let to = dir.path().join("snapshot");
        std::fs::create_dir(&to).expect("mkdir");
        copy_lists(&root, &to).expect("copy");
        let copied = to
            .join(APT_LISTS)
            .join("m_dists_bookworm_main_binary-amd64_Packages");
        assert_eq!(
            std::fs::metadata(&copied)
                .and_then(|m| m.modified())
                .expect("mtime"),
            old
        );
        assert!(to.join("var/cache/apt/srcpkgcache.bin").is_file());
        assert!(!to.join(APT_LISTS).join("lock").exists());
        assert!(!to.join(APT_LISTS).join("partial").exists());
    }

    #[test]
    fn the_newest_snapshot_is_leased_and_older_unleased_ones_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        tree_with_lists(&root);
        let debian = kernel_id::Distribution::parse("debian").expect("debian");
        let key = RootKey::new(
            kernel_id::DistroVersion::supported(debian, "12").expect("12"),
            kernel_id::Arch::X86_64,
        );
        let store = ListsStore::new(dir.path(), &key, &"ab".repeat(32));
        assert!(store.try_refresh().expect("try").is_some());
        assert!(store.newest().expect("newest").is_none());
        let guard = store.try_refresh().expect("try").expect("free");
        assert!(
            store.try_refresh().expect("try").is_none(),
            "one refresh at a time"
        );
        let first = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        store.store(&root, first, &guard).expect("store");
        let held = store.newest().expect("newest").expect("one");
        assert_eq!(held.refreshed, first);
        let second = first + Duration::from_secs(3600);
        let newest = store.store(&root, second, &guard).expect("store");
        assert!(held.lease.path().exists(), "a leased snapshot stays");
        drop(held);
        let third = second + Duration::from_secs(3600);
        store.store(&root, third, &guard).expect("store");
        assert!(!newest.exists(), "an unleased older snapshot goes");
        assert_eq!(
            store.newest().expect("newest").expect("one").refreshed,
            third
        );
    }

    #[test]
    fn header_packages_are_found_by_exact_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        tree_with_lists(dir.path());
        assert!(lists_name_package(
            dir.path(),
            "linux-headers-6.1.0-57-amd64"
        ));
        assert!(lists_name_package(dir.path(), "bash"));
        assert!(!lists_name_package(dir.path(), "linux-headers-6.1.0-57"));
        assert!(!lists_name_package(
            dir.path(),
            "linux-headers-6.1.0-58-amd64"
        ));
    }
}
