//! A fresh root for one build: the base image unpacked into a new work directory, commands run in it
//! with chroot, and the directory always removed afterwards (explicitly, or by `Drop` on any early
//! return, error or timeout).
//!
//! /dev and /sys are bind-mounted and a new /proc is mounted inside a private mount namespace per
//! command (see `process`), so the host never sees those mounts and removing the work directory can
//! never descend into the host's /dev. Downloaded `.deb` files are shared between builds through a
//! per-root archive cache: it is hard-linked into the root before a build and new files are linked back
//! after each command, instead of bind-mounting it, because apt takes a non-waiting lock on
//! `/var/cache/apt/archives` and two concurrent builds sharing one directory would fail on it. apt
//! checks every cached file's hash before use, so a build that tampers with its links only causes a
//! re-download.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::{BuildRootError, Result};
use crate::process::{self, Ended};
use crate::root::BaseImage;

/// Where apt keeps downloaded packages inside a Debian root.
const APT_ARCHIVES: &str = "/var/cache/apt/archives";

/// Host variables passed into the root, so builds work behind the same proxy as the host.
const PASSED_ENV: [&str; 6] = [
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
];

/// The environment commands in the root get; nothing else leaks in from the host's environment.
const ROOT_ENV: [(&str, &str); 5] = [
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("LANG", "C.UTF-8"),
    ("DEBIAN_FRONTEND", "noninteractive"),
    ("TMPDIR", "/tmp"),
];

/// Mounts /dev, /proc and /sys into the root and replaces itself with chroot. It runs inside the
/// private namespaces, so the mounts disappear with the command; arguments arrive as positional
/// parameters and are never interpolated into the script.
const CHROOT_SCRIPT: &str = r#"set -eu
root=$1
shift
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
exec chroot "$root" "$@"
"#;

/// An unpacked root; removed when dropped.
#[derive(Debug)]
pub struct WorkRoot {
    slug: String,
    work_dir: PathBuf,
    root: PathBuf,
    apt_cache: PathBuf,
    removed: bool,
    /// Held for the root's lifetime; a free lock marks a work directory whose owner died (SIGKILL
    /// skips `Drop`), which the next unpack in any process removes.
    _owner_lock: File,
}

impl WorkRoot {
    /// Unpacks `base` into a new directory under `work_parent` and prepares it for builds. The
    /// shared `.deb` cache for this root lives in `apt_cache`.
    pub fn unpack(base: &BaseImage, work_parent: &Path, apt_cache: &Path) -> Result<Self> {
        let slug = base.key.slug();
        for dir in [work_parent, apt_cache] {
            std::fs::create_dir_all(dir)
                .map_err(BuildRootError::io(format!("creating {}", dir.display())))?;
        }
        sweep_abandoned(work_parent, ABANDONED_AFTER);
        let work_dir = tempfile::Builder::new()
            .prefix(&format!("{slug}-"))
            .tempdir_in(work_parent)
            .map_err(BuildRootError::io(format!(
                "creating a work directory in {}",
                work_parent.display()
            )))?
            .keep();
        let owner_lock = match lock_owner(&work_dir) {
            Ok(lock) => lock,
            Err(error) => {
                let _ = remove_work_dir(&work_dir);
                return Err(error);
            }
        };
        // From here on the guard owns the directory, so every early return below removes it.
        let work = Self {
            slug,
            root: work_dir.join("root"),
            work_dir,
            apt_cache: apt_cache.to_owned(),
            removed: false,
            _owner_lock: owner_lock,
        };
        std::fs::create_dir(&work.root).map_err(BuildRootError::io(format!(
            "creating {}",
            work.root.display()
        )))?;
        let unpack_log = work.work_dir.join("unpack.log");
        let mut tar = Command::new("tar");
        tar.arg("--extract")
            .arg("--zstd")
            .arg("--file")
            .arg(&base.tarball)
            .arg("--directory")
            .arg(&work.root)
            .args(["--numeric-owner", "--preserve-permissions"]);
        match process::run_bounded(&mut tar, &unpack_log, Duration::from_secs(600))? {
            Ended::Exited(status) if status.success() => {}
            Ended::Exited(status) => {
                let detail = std::fs::read_to_string(&unpack_log).unwrap_or_default();
                return Err(BuildRootError::Io {
                    context: format!("unpacking {}", base.tarball.display()),
                    source: std::io::Error::other(format!("tar {status}: {}", detail.trim())),
                });
            }
            Ended::TimedOut => {
                return Err(BuildRootError::Io {
                    context: format!("unpacking {}", base.tarball.display()),
                    source: std::io::Error::new(ErrorKind::TimedOut, "tar ran longer than 600 s"),
                });
            }
            Ended::Cancelled => {
                return Err(BuildRootError::Cancelled {
                    root: work.slug.clone(),
                    log: unpack_log,
                });
            }
        }
        work.prepare()?;
        Ok(work)
    }

    fn prepare(&self) -> Result<()> {
        let resolv = std::fs::read("/etc/resolv.conf").unwrap_or_default();
        // The image may carry a symlink (e.g. to a resolved stub) that must not be written through.
        let target = self.inside("/etc")?.join("resolv.conf");
        let _ = std::fs::remove_file(&target);
        std::fs::write(&target, resolv)
            .map_err(BuildRootError::io(format!("writing {}", target.display())))?;

        // Downloads are kept (for `apt` too, whose default is to delete them) so they can be harvested
        // into the shared cache; translations are never read by a build.
        self.write_file(
            "/etc/apt/apt.conf.d/90build-root",
            b"APT::Keep-Downloaded-Packages \"true\";\n\
              Binary::apt::APT::Keep-Downloaded-Packages \"true\";\n\
              Acquire::Languages \"none\";\n",
            0o644,
        )?;
        // The root is thrown away after the build, so dpkg's per-file fsync buys nothing; on a busy
        // disk it is most of the header install time.
        self.write_file(
            "/etc/dpkg/dpkg.cfg.d/90build-root",
            b"force-unsafe-io\n",
            0o644,
        )?;
        for dir in ["/build/src", "/build/out", APT_ARCHIVES] {
            let dir = self.inside(dir)?;
            std::fs::create_dir_all(&dir)
                .map_err(BuildRootError::io(format!("creating {}", dir.display())))?;
        }
        self.seed_apt_archives()
    }

    /// The root file system as seen from the host.
    pub fn root_path(&self) -> &Path {
        &self.root
    }

    /// The work directory holding the root (removed as a whole).
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// Maps an absolute path inside the root to the host, refusing `..` and any symlink on the way
    /// so a path inside the root can never lead out of it.
    pub fn inside(&self, path_in_root: &str) -> Result<PathBuf> {
        let relative =
            Path::new(path_in_root)
                .strip_prefix("/")
                .map_err(|_| BuildRootError::Io {
                    context: format!("resolving {path_in_root} in the root"),
                    source: std::io::Error::new(ErrorKind::InvalidInput, "path must be absolute"),
                })?;
        let mut host_path = self.root.clone();
        for component in relative.components() {
            let Component::Normal(name) = component else {
                return Err(BuildRootError::Io {
                    context: format!("resolving {path_in_root} in the root"),
                    source: std::io::Error::new(
                        ErrorKind::InvalidInput,
                        "only plain path components are allowed",
                    ),
                });
            };
            if std::fs::symlink_metadata(&host_path).is_ok_and(|meta| meta.file_type().is_symlink())
            {
                return Err(BuildRootError::UnexpectedOutput { path: host_path });
            }
            host_path.push(name);
        }
        if std::fs::symlink_metadata(&host_path).is_ok_and(|meta| meta.file_type().is_symlink()) {
            return Err(BuildRootError::UnexpectedOutput { path: host_path });
        }
        Ok(host_path)
    }

    /// Writes a file inside the root with the given mode, creating parent directories.
    pub fn write_file(&self, path_in_root: &str, contents: &[u8], mode: u32) -> Result<()> {
        let target = self.inside(path_in_root)?;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(BuildRootError::io(format!("creating {}", parent.display())))?;
        }
        std::fs::write(&target, contents)
            .map_err(BuildRootError::io(format!("writing {}", target.display())))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).map_err(
            BuildRootError::io(format!("setting the mode of {}", target.display())),
        )
    }

    /// Copies a host file into the root (e.g. the builder binary) with the given mode.
    pub fn copy_file_in(&self, source: &Path, path_in_root: &str, mode: u32) -> Result<()> {
        let contents = std::fs::read(source)
            .map_err(BuildRootError::io(format!("reading {}", source.display())))?;
        self.write_file(path_in_root, &contents, mode)
    }

    /// Copies a secret (the module-signing key) into the root readable by root only: its directory
    /// is created 0700 and the file 0600 from the start (never wider, not even for a moment), and
    /// an existing file is never written through.
    pub fn copy_secret_in(&self, source: &Path, path_in_root: &str) -> Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let target = self.inside(path_in_root)?;
        if let Some(parent) = target.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(BuildRootError::io(format!("creating {}", parent.display())))?;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700)).map_err(
                BuildRootError::io(format!("setting the mode of {}", parent.display())),
            )?;
        }
        let mut input = File::open(source)
            .map_err(BuildRootError::io(format!("reading {}", source.display())))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&target)
            .map_err(BuildRootError::io(format!("creating {}", target.display())))?;
        std::io::copy(&mut input, &mut file)
            .and_then(|_| file.flush())
            .map(drop)
            .map_err(BuildRootError::io(format!("writing {}", target.display())))
    }

    /// Copies a host directory tree (e.g. the driver source) into the root. Files keep their
    /// permission bits; symlinks are copied as links; anything else is refused.
    pub fn copy_dir_in(&self, source: &Path, path_in_root: &str) -> Result<()> {
        let target = self.inside(path_in_root)?;
        copy_tree(source, &target, true)?;
        Ok(())
    }

    /// Runs `argv` inside the root as root, output appended to `log`, killed after `limit`. Returns
    /// how long it ran; a non-zero exit or timeout is an error naming the log.
    pub fn run(&self, argv: &[String], log: &Path, limit: Duration) -> Result<Duration> {
        self.run_cancellable(argv, log, limit, &process::Cancel::new())
    }

    /// [`run`](Self::run) that is also killed, its whole process group and pid namespace with it,
    /// when `cancel` is requested (and never starts when it already was).
    pub fn run_cancellable(
        &self,
        argv: &[String],
        log: &Path,
        limit: Duration,
        cancel: &process::Cancel,
    ) -> Result<Duration> {
        if argv.is_empty() {
            return Err(BuildRootError::EmptyCommand);
        }
        process::log_line(log, &format!("running in {}: {argv:?}", self.slug))?;
        let mut command = process::isolated("/bin/sh");
        command
            .args(["-c", CHROOT_SCRIPT, "build-root"])
            .arg(&self.root)
            .args(argv)
            .env_clear()
            .envs(ROOT_ENV)
            .envs(
                PASSED_ENV
                    .iter()
                    .filter_map(|name| Some((name, std::env::var_os(name)?))),
            );
        let started = Instant::now();
        let ended = process::run_cancellable(&mut command, log, limit, cancel);
        let elapsed = started.elapsed();
        // Harvest even after a failure: whatever apt fetched completely is worth keeping.
        self.harvest_apt_archives();
        match ended? {
            Ended::Exited(status) if status.success() => {
                process::log_line(
                    log,
                    &format!("command finished in {:.1} s", elapsed.as_secs_f64()),
                )?;
                Ok(elapsed)
            }
            Ended::Exited(status) => {
                process::log_line(
                    log,
                    &format!(
                        "command failed ({status}) after {:.1} s",
                        elapsed.as_secs_f64()
                    ),
                )?;
                Err(BuildRootError::CommandFailed {
                    root: self.slug.clone(),
                    status: status.to_string(),
                    log: log.to_owned(),
                })
            }
            Ended::Cancelled => {
                process::log_line(
                    log,
                    &format!(
                        "command cancelled and killed after {:.1} s",
                        elapsed.as_secs_f64()
                    ),
                )?;
                Err(BuildRootError::Cancelled {
                    root: self.slug.clone(),
                    log: log.to_owned(),
                })
            }
            Ended::TimedOut => {
                process::log_line(log, &format!("command killed after the {limit:?} limit"))?;
                Err(BuildRootError::TimedOut {
                    what: format!("{:?}", argv[0]),
                    root: self.slug.clone(),
                    limit,
                    log: log.to_owned(),
                })
            }
        }
    }

    /// Copies the regular files under `path_in_root` to `destination` (created if needed), refusing
    /// symlinks and special files and never overwriting an existing file. Returns the files written.
    /// Every process of the build has exited by now (its pid namespace died with it), so nothing can
    /// swap the tree while it is read.
    pub fn copy_out(&self, path_in_root: &str, destination: &Path) -> Result<Vec<PathBuf>> {
        let source = self.inside(path_in_root)?;
        copy_tree(&source, destination, false)
    }

    /// Removes the work directory now, reporting failure (`Drop` only logs it).
    pub fn remove(mut self) -> Result<()> {
        self.removed = true;
        remove_work_dir(&self.work_dir)
    }

    fn seed_apt_archives(&self) -> Result<()> {
        let archives = self.inside(APT_ARCHIVES)?;
        let entries = std::fs::read_dir(&self.apt_cache).map_err(BuildRootError::io(format!(
            "reading {}",
            self.apt_cache.display()
        )))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(".deb") {
                link_or_copy(&entry.path(), &archives.join(&name));
            }
        }
        Ok(())
    }

    fn harvest_apt_archives(&self) {
        let Ok(archives) = self.inside(APT_ARCHIVES) else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(&archives) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let is_deb = name.to_string_lossy().ends_with(".deb");
            // apt moves a download here only once it is complete and verified.
            if is_deb && entry.file_type().is_ok_and(|kind| kind.is_file()) {
                link_or_copy(&entry.path(), &self.apt_cache.join(&name));
            }
        }
    }
}

impl Drop for WorkRoot {
    fn drop(&mut self) {
        if !self.removed
            && let Err(error) = remove_work_dir(&self.work_dir)
        {
            tracing::error!(work_dir = %self.work_dir.display(), %error, "could not remove a build work directory");
        }
    }
}

/// Work directories untouched for this long with a free owner lock belong to a dead process.
const ABANDONED_AFTER: Duration = Duration::from_secs(120);

/// The lock file that marks a work directory as in use.
const OWNER_LOCK: &str = ".owner.lock";

fn lock_owner(work_dir: &Path) -> Result<File> {
    let path = work_dir.join(OWNER_LOCK);
    let file =
        File::create(&path).map_err(BuildRootError::io(format!("creating {}", path.display())))?;
    file.lock()
        .map_err(BuildRootError::io(format!("locking {}", path.display())))?;
    Ok(file)
}

/// Removes work directories left behind by killed processes: older than `min_age` (so one being
/// created right now is never taken) and with no live owner holding the lock.
fn sweep_abandoned(work_parent: &Path, min_age: Duration) {
    let Ok(entries) = std::fs::read_dir(work_parent) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let old_enough = entry
            .metadata()
            .ok()
            .filter(|meta| meta.is_dir())
            .and_then(|meta| meta.modified().ok())
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age >= min_age);
        if !old_enough {
            continue;
        }
        // Holding the lock while removing keeps two sweepers from racing on one directory.
        let lock = File::open(path.join(OWNER_LOCK)).ok();
        if lock.as_ref().is_none_or(|lock| lock.try_lock().is_ok()) {
            tracing::warn!(work_dir = %path.display(), "removing a work directory abandoned by a killed build");
            let _ = remove_work_dir(&path);
        }
    }
}

/// Removes a work directory, but never through a mount point: if anything is mounted below it (which
/// the private namespaces should make impossible) it is left in place and reported.
fn remove_work_dir(work_dir: &Path) -> Result<()> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if let Some(mount_point) = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .find(|mount_point| Path::new(mount_point).starts_with(work_dir))
    {
        return Err(BuildRootError::Io {
            context: format!("removing {}", work_dir.display()),
            source: std::io::Error::other(format!(
                "{mount_point} is still mounted below it; leaving it in place"
            )),
        });
    }
    match std::fs::remove_dir_all(work_dir) {
        Err(error) if error.kind() != ErrorKind::NotFound => Err(BuildRootError::Io {
            context: format!("removing {}", work_dir.display()),
            source: error,
        }),
        _ => Ok(()),
    }
}

/// Adds `source` under `target`'s name unless it exists: a hard link when both are on one file system,
/// else a copy renamed into place, so a reader never sees a partial file.
fn link_or_copy(source: &Path, target: &Path) {
    if target.exists() || std::fs::hard_link(source, target).is_ok() {
        return;
    }
    let partial = target.with_extension(format!("partial-{}", std::process::id()));
    if std::fs::copy(source, &partial).is_ok() && std::fs::rename(&partial, target).is_ok() {
        return;
    }
    let _ = std::fs::remove_file(&partial);
}

/// Copies a tree without following symlinks. Into a root (`keep_links`), links are recreated as
/// links; out of a root, only directories and regular files are accepted, and existing files are
/// never overwritten.
fn copy_tree(source: &Path, target: &Path, keep_links: bool) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for entry in walkdir::WalkDir::new(source)
        .follow_links(false)
        .follow_root_links(false)
    {
        let entry = entry.map_err(|error| BuildRootError::Io {
            context: format!("walking {}", source.display()),
            source: error.into(),
        })?;
        let relative = entry.path().strip_prefix(source).unwrap_or(Path::new(""));
        let destination = target.join(relative);
        let kind = entry.file_type();
        if kind.is_dir() {
            std::fs::create_dir_all(&destination).map_err(BuildRootError::io(format!(
                "creating {}",
                destination.display()
            )))?;
        } else if kind.is_file() {
            if !keep_links && destination.symlink_metadata().is_ok() {
                return Err(BuildRootError::OutputExists { path: destination });
            }
            std::fs::copy(entry.path(), &destination).map_err(BuildRootError::io(format!(
                "copying {} to {}",
                entry.path().display(),
                destination.display()
            )))?;
            written.push(destination);
        } else if kind.is_symlink() && keep_links {
            let link = std::fs::read_link(entry.path()).map_err(BuildRootError::io(format!(
                "reading link {}",
                entry.path().display()
            )))?;
            std::os::unix::fs::symlink(&link, &destination).map_err(BuildRootError::io(
                format!("creating link {}", destination.display()),
            ))?;
        } else {
            return Err(BuildRootError::UnexpectedOutput {
                path: entry.path().to_owned(),
            });
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_out_refuses_links_and_existing_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("out");
        std::fs::create_dir_all(source.join("sub")).expect("mkdir");
        std::fs::write(source.join("a.ko"), b"a").expect("write");
        std::fs::write(source.join("sub/b.deb"), b"b").expect("write");
        let destination = dir.path().join("dest");
        let mut written = copy_tree(&source, &destination, false).expect("copies");
        written.sort();
        assert_eq!(
            written,
            [destination.join("a.ko"), destination.join("sub/b.deb")]
        );
        assert_eq!(
            std::fs::read(destination.join("sub/b.deb")).expect("read"),
            b"b"
        );

        let again = copy_tree(&source, &destination, false).expect_err("exists");
        assert!(
            matches!(again, BuildRootError::OutputExists { .. }),
            "{again}"
        );

        std::os::unix::fs::symlink("/etc/shadow", source.join("escape")).expect("symlink");
        let error = copy_tree(&source, &dir.path().join("dest2"), false).expect_err("link");
        assert!(
            matches!(error, BuildRootError::UnexpectedOutput { .. }),
            "{error}"
        );
    }

    #[test]
    fn only_work_dirs_without_a_live_owner_are_swept() {
        let parent = tempfile::tempdir().expect("tempdir");
        let live = parent.path().join("debian-12-x86_64-live");
        let dead = parent.path().join("debian-12-x86_64-dead");
        let unlocked = parent.path().join("debian-12-x86_64-crashed-early");
        for dir in [&live, &dead, &unlocked] {
            std::fs::create_dir_all(dir.join("root/etc")).expect("mkdir");
        }
        let _live_owner = lock_owner(&live).expect("lock");
        drop(lock_owner(&dead).expect("lock"));

        sweep_abandoned(parent.path(), Duration::from_secs(3600));
        assert!(
            live.exists() && dead.exists() && unlocked.exists(),
            "young directories are never swept"
        );

        sweep_abandoned(parent.path(), Duration::ZERO);
        assert!(live.exists());
        assert!(!dead.exists());
        assert!(!unlocked.exists());
    }

    #[test]
    fn a_work_dir_with_a_mount_below_it_is_left_alone() {
        // /proc is always a mount point, so asking to remove its parent must refuse without touching it.
        let error = remove_work_dir(Path::new("/")).expect_err("mounts below /");
        assert!(error.to_string().contains("still mounted"), "{error}");
    }
}
