//! A fresh root for one build: a writable layer over the shared base image, commands run in it
//! with chroot, and the work directory always removed afterwards (explicitly, or by `Drop` on any
//! early return, error or timeout).
//!
//! Normally the root is an overlay ([`WorkRoot::overlay`]): the unpacked base image (and the apt
//! list snapshot over it) are read-only lower directories shared by every build, and everything
//! this build writes lands in its own upper directory in the work directory (on tmpfs when
//! available), so starting a root costs a mount and discarding it is removing the upper directory.
//! The overlay is mounted inside a private mount namespace held by a small *holder* process
//! (`unshare --mount` running `sh`, waiting on a pipe from this process): the host never sees the
//! mount, and it goes away when the holder ends — when the root is removed, or when this process
//! dies and the pipe closes. Commands enter the holder's namespace (`nsenter --mount`) and then
//! their own private mount and pid namespaces as before; this process reaches the merged tree
//! through the holder's root (`/proc/<holder>/root/<work dir>/root`), so files copied in and
//! outputs copied out pass through the overlay and nothing can reach a lower directory. Where the
//! mount fails (a lower directory on a file system overlayfs refuses, a container without the
//! capability) the error says why and the executor unpacks the base image instead
//! ([`WorkRoot::unpack`], the pre-overlay behaviour).
//!
//! /dev and /sys are bind-mounted and a new /proc is mounted inside a private mount namespace per
//! command (see `process`), so the host never sees those mounts and removing the work directory can
//! never descend into the host's /dev. Read-only bind mounts the executor asks for (the header
//! cache) are made the same way. Downloaded `.deb` files may be shared between roots through a
//! per-root archive cache ([`WorkRoot`]'s `apt_cache`): hard-linked into the root before the first
//! command (into the upper directory before the overlay is mounted, so the links stay links) and new
//! files linked back after each command, instead of bind-mounting it, because apt takes a
//! non-waiting lock on `/var/cache/apt/archives` and two concurrent builds sharing one directory
//! would fail on it. apt checks every cached file's hash before use, so a build that tampers with
//! its links only causes a re-download.

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{BuildRootError, Result};
use crate::layers::{self, Lease};
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

/// Makes the read-only bind mounts, mounts /dev, /proc and /sys into the root and replaces itself
/// with chroot. It runs inside the private namespaces, so the mounts disappear with the command;
/// arguments arrive as positional parameters (root, number of binds, source/target pairs, argv)
/// and are never interpolated into the script.
const CHROOT_SCRIPT: &str = r#"set -eu
root=$1
binds=$2
shift 2
while [ "$binds" -gt 0 ]; do
    mount --bind "$1" "$root$2"
    mount -o remount,bind,ro "$root$2"
    shift 2
    binds=$((binds - 1))
done
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
exec chroot "$root" "$@"
"#;

/// Mounts the overlay in the holder's new mount namespace, says so, and keeps the namespace alive
/// until its standard input closes (the root is removed, or its owner died).
const HOLDER_SCRIPT: &str = r#"set -eu
mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3$5" "$4"
echo mounted
read -r _ || :
"#;

/// How a root is laid over its base image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootLayering {
    /// A fresh upper directory over the shared read-only lower directories.
    Overlay,
    /// The base image unpacked into the work directory.
    Unpacked,
}

/// The process holding an overlay root's private mount namespace.
#[derive(Debug)]
struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Holder {
    /// Mounts the overlay of `lowers` (topmost first) with `upper` and `work` at `mount_point`
    /// in a new mount namespace; the reason when it cannot.
    fn start(
        lowers: &[&Path],
        upper: &Path,
        work: &Path,
        mount_point: &Path,
        options: &[String],
        log: &Path,
    ) -> std::result::Result<Self, String> {
        if let Some(bad) = options.iter().find(|option| {
            option.is_empty()
                || !option
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_=.-".contains(c))
        }) {
            return Err(format!(
                "overlay mount option {bad:?} is not a plain option ([A-Za-z0-9_=.-])"
            ));
        }
        let extra: String = options.iter().map(|option| format!(",{option}")).collect();
        // Mount options are comma-separated and lower directories colon-separated; a path with
        // either (or a backslash, overlayfs's escape) would be misread, so it is not attempted.
        let mut paths: Vec<&Path> = lowers.to_vec();
        paths.extend([upper, work]);
        if let Some(bad) = paths.iter().find(|p| {
            p.to_str()
                .is_none_or(|s| s.contains([',', ':', '\\']) || s.chars().any(char::is_whitespace))
        }) {
            return Err(format!(
                "{} contains a character overlayfs mount options cannot carry (',', ':', '\\', whitespace or non-UTF-8)",
                bad.display()
            ));
        }
        let lowerdir = lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let stderr = process::open_log(log).map_err(|e| e.to_string())?;
        let mut child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
            .arg(HOLDER_SCRIPT)
            .arg("build-root-overlay")
            .arg(&lowerdir)
            .arg(upper)
            .arg(work)
            .arg(mount_point)
            .arg(&extra)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|error| format!("starting unshare: {error}"))?;
        let mut line = String::new();
        let ready = child
            .stdout
            .take()
            .map(|stdout| BufReader::new(stdout).read_line(&mut line));
        let stdin = child.stdin.take();
        let holder = Holder { child, stdin };
        if matches!(ready, Some(Ok(_))) && line.trim() == "mounted" {
            return Ok(holder);
        }
        drop(holder);
        let detail = std::fs::read_to_string(log).unwrap_or_default();
        Err(format!(
            "mounting the overlay failed: {}",
            detail
                .trim()
                .lines()
                .last()
                .unwrap_or("the holder exited without a reason")
        ))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ends the namespace: closing the pipe makes the holder exit; it is killed if it does not
    /// within five seconds. Waiting for it makes sure the mount is gone before the upper directory
    /// is removed.
    fn stop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fresh root; removed when dropped.
#[derive(Debug)]
pub struct WorkRoot {
    slug: String,
    work_dir: PathBuf,
    /// The root as this process reaches it: `<work dir>/root`, or for an overlay the same path
    /// through the holder's mount namespace.
    root: PathBuf,
    /// The root's path inside the namespaces commands run in: `<work dir>/root`.
    mount_point: PathBuf,
    layering: RootLayering,
    holder: Option<Holder>,
    /// For an overlay, the upper directory: this root's own files (new downloads are found here).
    upper: Option<PathBuf>,
    /// Read-only bind mounts made for every command: (host directory, path in the root).
    binds: Vec<(PathBuf, String)>,
    apt_cache: Option<PathBuf>,
    removed: bool,
    /// The shared directories the overlay is made of, leased for the root's lifetime.
    _leases: Vec<Lease>,
    /// Held for the root's lifetime; a free lock marks a work directory whose owner died (SIGKILL
    /// skips `Drop`), which the next root in any process removes.
    _owner_lock: File,
}

impl WorkRoot {
    /// Unpacks `base` into a new directory under `work_parent` and prepares it for builds. With
    /// `apt_cache`, `.deb` files are shared with other roots through that directory.
    pub fn unpack(base: &BaseImage, work_parent: &Path, apt_cache: Option<&Path>) -> Result<Self> {
        let mut work = Self::new_work_dir(base, work_parent, apt_cache, RootLayering::Unpacked)?;
        std::fs::create_dir(&work.root).map_err(BuildRootError::io(format!(
            "creating {}",
            work.root.display()
        )))?;
        let unpack_log = work.work_dir.join("unpack.log");
        layers::unpack_tarball(&base.tarball, &work.root, &unpack_log, &work.slug)?;
        work.mount_point = work.root.clone();
        if work.apt_cache.is_some() {
            work.seed_apt_archives(&work.root.clone())?;
        }
        work.prepare()?;
        Ok(work)
    }

    /// A fresh overlay root under `work_parent`: `lowers` (leased read-only directories, topmost
    /// first, the unpacked base image last) with a new upper directory, mounted with the extra
    /// overlayfs `options` (plain `name` or `name=value` words). With `apt_cache`, `.deb` files
    /// are shared with other roots through that directory. A mount that fails is
    /// [`BuildRootError::OverlayUnavailable`] with the reason, and leaves nothing behind.
    pub fn overlay(
        base: &BaseImage,
        lowers: Vec<Lease>,
        work_parent: &Path,
        apt_cache: Option<&Path>,
        options: &[String],
    ) -> Result<Self> {
        let mut work = Self::new_work_dir(base, work_parent, apt_cache, RootLayering::Overlay)?;
        let upper = work.work_dir.join("upper");
        let overlay_work = work.work_dir.join("overlay-work");
        for dir in [&upper, &overlay_work, &work.mount_point] {
            std::fs::create_dir(dir)
                .map_err(BuildRootError::io(format!("creating {}", dir.display())))?;
        }
        // The merged root's top directory takes the upper directory's mode and owner.
        if let Some(base_lower) = lowers.last() {
            layers::copy_dir_attributes(base_lower.path(), &upper)?;
        }
        work.upper = Some(upper.clone());
        if work.apt_cache.is_some() {
            // Before the mount, straight into the upper directory: links across the overlay's
            // mount would have to be copies.
            if let Some(base_lower) = lowers.last() {
                layers::make_dirs_like(
                    base_lower.path(),
                    &upper,
                    Path::new(APT_ARCHIVES.trim_start_matches('/')),
                )?;
            }
            work.seed_apt_archives(&upper)?;
        }
        let lower_paths: Vec<&Path> = lowers.iter().map(Lease::path).collect();
        let holder = Holder::start(
            &lower_paths,
            &upper,
            &overlay_work,
            &work.mount_point,
            options,
            &work.work_dir.join("overlay.log"),
        )
        .map_err(|reason| BuildRootError::OverlayUnavailable { reason })?;
        let through_holder = PathBuf::from(format!("/proc/{}/root", holder.pid())).join(
            work.mount_point
                .strip_prefix("/")
                .unwrap_or(&work.mount_point),
        );
        work.holder = Some(holder);
        work.root = through_holder;
        work._leases = lowers;
        if !work.root.join("usr").is_dir() {
            return Err(BuildRootError::OverlayUnavailable {
                reason: format!(
                    "the mounted root is not reachable at {} (no /proc access to the holder's namespace?)",
                    work.root.display()
                ),
            });
        }
        work.prepare()?;
        Ok(work)
    }

    /// Creates the work directory and its owner lock; the guard returned owns the directory, so
    /// every early return of the caller removes it.
    fn new_work_dir(
        base: &BaseImage,
        work_parent: &Path,
        apt_cache: Option<&Path>,
        layering: RootLayering,
    ) -> Result<Self> {
        let slug = base.key.slug();
        let work_parent = std::path::absolute(work_parent).map_err(BuildRootError::io(format!(
            "resolving {}",
            work_parent.display()
        )))?;
        for dir in std::iter::once(work_parent.as_path()).chain(apt_cache) {
            std::fs::create_dir_all(dir)
                .map_err(BuildRootError::io(format!("creating {}", dir.display())))?;
        }
        sweep_abandoned(&work_parent, ABANDONED_AFTER);
        let work_dir = tempfile::Builder::new()
            .prefix(&format!("{slug}-"))
            .tempdir_in(&work_parent)
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
        Ok(Self {
            slug,
            root: work_dir.join("root"),
            mount_point: work_dir.join("root"),
            work_dir,
            layering,
            holder: None,
            upper: None,
            binds: Vec::new(),
            apt_cache: apt_cache.map(Path::to_owned),
            removed: false,
            _leases: Vec::new(),
            _owner_lock: owner_lock,
        })
    }

    fn prepare(&self) -> Result<()> {
        let resolv = std::fs::read("/etc/resolv.conf").unwrap_or_default();
        // The image may carry a symlink (e.g. to a resolved stub) that must not be written through.
        let target = self.inside("/etc")?.join("resolv.conf");
        let _ = std::fs::remove_file(&target);
        std::fs::write(&target, resolv)
            .map_err(BuildRootError::io(format!("writing {}", target.display())))?;

        // Downloads are kept (for `apt` too, whose default is to delete them) so they can be harvested
        // into the shared caches; translations are never read by a build.
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
        Ok(())
    }

    /// How this root is laid over its base image.
    pub fn layering(&self) -> RootLayering {
        self.layering
    }

    /// Links (or copies) every complete `.deb` download of later commands into `apt_cache`, without
    /// seeding the root from it first: the executor's builds keep the archive cache up to date for
    /// tools and tests that read it, while their header packages come from the header cache.
    pub fn harvest_downloads_into(&mut self, apt_cache: &Path) -> Result<()> {
        std::fs::create_dir_all(apt_cache).map_err(BuildRootError::io(format!(
            "creating {}",
            apt_cache.display()
        )))?;
        self.apt_cache = Some(apt_cache.to_owned());
        Ok(())
    }

    /// Mounts `host_dir` read-only at `path_in_root` for every later command (in the command's
    /// private namespace, like /dev and /proc). The mount point is created now.
    pub fn bind_read_only(&mut self, host_dir: &Path, path_in_root: &str) -> Result<()> {
        let target = self.inside(path_in_root)?;
        std::fs::create_dir_all(&target)
            .map_err(BuildRootError::io(format!("creating {}", target.display())))?;
        let host_dir = std::path::absolute(host_dir).map_err(BuildRootError::io(format!(
            "resolving {}",
            host_dir.display()
        )))?;
        self.binds.push((host_dir, path_in_root.to_owned()));
        Ok(())
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

    /// Creates a directory (and its parents) inside the root.
    pub fn create_dir(&self, path_in_root: &str) -> Result<()> {
        let target = self.inside(path_in_root)?;
        std::fs::create_dir_all(&target)
            .map_err(BuildRootError::io(format!("creating {}", target.display())))
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
        // A bind's mount point is checked again: a command before may have replaced it.
        for (_, path_in_root) in &self.binds {
            let target = self.inside(path_in_root)?;
            if !target.is_dir() {
                return Err(BuildRootError::UnexpectedOutput { path: target });
            }
        }
        // Into the holder's namespace, where the overlay is mounted; `nsenter` execs the usual
        // isolation, so the process group killed on a timeout is the same.
        let namespace = self
            .holder
            .as_ref()
            .map(|holder| PathBuf::from(format!("/proc/{}/ns/mnt", holder.pid())));
        let mut command = process::isolated_in(namespace.as_deref(), "/bin/sh");
        command
            .args(["-c", CHROOT_SCRIPT, "build-root"])
            .arg(&self.mount_point)
            .arg(self.binds.len().to_string());
        for (host_dir, path_in_root) in &self.binds {
            command.arg(host_dir).arg(path_in_root);
        }
        command.args(argv).env_clear().envs(ROOT_ENV).envs(
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

    /// Removes the work directory now, reporting failure (`Drop` only logs it). An overlay's
    /// namespace is ended first, so its mount is gone before the upper directory is removed.
    pub fn remove(mut self) -> Result<()> {
        self.removed = true;
        if let Some(mut holder) = self.holder.take() {
            holder.stop();
        }
        remove_work_dir(&self.work_dir)
    }

    /// Links (or copies) the shared archive cache's `.deb` files into `tree`'s apt archive: the
    /// root itself, or an overlay's upper directory before it is mounted.
    fn seed_apt_archives(&self, tree: &Path) -> Result<()> {
        let Some(apt_cache) = &self.apt_cache else {
            return Ok(());
        };
        let archives = tree.join(APT_ARCHIVES.trim_start_matches('/'));
        std::fs::create_dir_all(&archives).map_err(BuildRootError::io(format!(
            "creating {}",
            archives.display()
        )))?;
        let entries = std::fs::read_dir(apt_cache).map_err(BuildRootError::io(format!(
            "reading {}",
            apt_cache.display()
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
        let Some(apt_cache) = &self.apt_cache else {
            return;
        };
        // An overlay's own files are in its upper directory, on the host's side of the mount,
        // where a link to the cache can be a hard link.
        let archives = match &self.upper {
            Some(upper) => upper.join(APT_ARCHIVES.trim_start_matches('/')),
            None => match self.inside(APT_ARCHIVES) {
                Ok(archives) => archives,
                Err(_) => return,
            },
        };
        let Ok(entries) = std::fs::read_dir(&archives) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let is_deb = name.to_string_lossy().ends_with(".deb");
            // apt moves a download here only once it is complete and verified.
            if is_deb && entry.file_type().is_ok_and(|kind| kind.is_file()) {
                link_or_copy(&entry.path(), &apt_cache.join(&name));
            }
        }
    }
}

impl Drop for WorkRoot {
    fn drop(&mut self) {
        if let Some(mut holder) = self.holder.take() {
            holder.stop();
        }
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
