//! The one error type of the crate. Every variant says what to do next where the fix is on the host
//! (install a tool, enable emulation, run as root), because the people reading it operate build hosts.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use kernel_id::Arch;

use crate::toolchain::ToolchainListError;

/// Why a build root could not be made or a command in it did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum BuildRootError {
    /// chroot, mount and mmdebstrap's root mode all need root.
    #[error(
        "the local executor needs root (running with effective uid {euid}): run the build-service or test as root"
    )]
    NotRoot {
        /// The effective uid found.
        euid: u32,
    },

    /// mmdebstrap is not on PATH.
    #[error("mmdebstrap not found on PATH: install it with `apt-get install mmdebstrap`")]
    MmdebstrapMissing,

    /// A foreign-architecture root needs qemu user-mode emulation registered with binfmt_misc.
    #[error(
        "building {arch} roots on this {host} host needs qemu user-mode emulation, which is unavailable ({reason}); \
         enable it with: apt-get install qemu-user-static binfmt-support; \
         mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; update-binfmts --enable {binfmt_name} \
         (with qemu-user-binfmt's systemd packaging instead: /lib/systemd/systemd-binfmt /usr/lib/binfmt.d/{binfmt_name}.conf)"
    )]
    EmulationUnavailable {
        /// The target architecture.
        arch: Arch,
        /// The host machine as `uname -m` reports it.
        host: String,
        /// The binfmt_misc entry that has to be enabled, e.g. `qemu-aarch64`.
        binfmt_name: String,
        /// What exactly is missing.
        reason: String,
    },

    /// The local executor only makes Debian-family roots.
    #[error(
        "{distribution} {version} roots are not supported by the local executor on this host (it makes Debian-family \
         roots with mmdebstrap); use the GitHub backend / container image (docker/Dockerfile.base.{distribution})"
    )]
    UnsupportedDistribution {
        /// The distribution asked for.
        distribution: String,
        /// Its version.
        version: String,
    },

    /// Ubuntu roots are only made from an explicitly configured mirror.
    #[error(
        "{distribution} {version} roots need a configured {distribution} mirror for {arch} (none is configured)"
    )]
    MirrorNotConfigured {
        /// The distribution asked for.
        distribution: String,
        /// Its version.
        version: String,
        /// The architecture, since Ubuntu serves arm64 from a separate ports mirror.
        arch: Arch,
    },

    /// The support table has no suite codename for this version.
    #[error("{distribution} {version} has no suite codename in kernel-id's support table")]
    NoSuite {
        /// The distribution asked for.
        distribution: String,
        /// Its version.
        version: String,
    },

    /// The committed toolchain list is malformed.
    #[error(transparent)]
    ToolchainList(#[from] ToolchainListError),

    /// A configured mirror URL would not be safe inside an apt sources line.
    #[error("mirror URL '{url}' must start with http:// or https:// and contain no whitespace")]
    BadMirror {
        /// The offending URL.
        url: String,
    },

    /// No builder binary is configured for the identity's architecture.
    #[error("no driver-builder binary is configured for {arch}")]
    BuilderMissing {
        /// The architecture of the identity.
        arch: Arch,
    },

    /// mmdebstrap failed.
    #[error("creating the {root} root with mmdebstrap failed ({status}); see {}", log.display())]
    RootCreationFailed {
        /// The root's key, e.g. `debian-12-x86_64`.
        root: String,
        /// How mmdebstrap ended.
        status: String,
        /// Its output.
        log: PathBuf,
    },

    /// A command inside the root exited unsuccessfully.
    #[error("command in the {root} root failed ({status}); see {}", log.display())]
    CommandFailed {
        /// The root's key.
        root: String,
        /// How the command ended.
        status: String,
        /// Its output.
        log: PathBuf,
    },

    /// A command (or mmdebstrap) ran past its time limit and was killed.
    #[error("{what} in the {root} root ran longer than {limit:?} and was killed; see {}", log.display())]
    TimedOut {
        /// What was running.
        what: String,
        /// The root's key.
        root: String,
        /// The limit it exceeded.
        limit: Duration,
        /// Its output so far.
        log: PathBuf,
    },

    /// The build was cancelled (its whole process group killed) before it finished.
    #[error("the build in the {root} root was cancelled; see {}", log.display())]
    Cancelled {
        /// The root's key.
        root: String,
        /// Its output so far.
        log: PathBuf,
    },

    /// The build left something other than files and directories in its output directory.
    #[error("build output {} is not a regular file or directory; refusing to copy it out", path.display())]
    UnexpectedOutput {
        /// The offending entry inside the root.
        path: PathBuf,
    },

    /// The output would overwrite an existing file.
    #[error("output file {} already exists; refusing to overwrite it", path.display())]
    OutputExists {
        /// The existing file.
        path: PathBuf,
    },

    /// An overlay root could not be mounted; the executor unpacks the base image instead.
    #[error("overlay root unavailable: {reason}")]
    OverlayUnavailable {
        /// What failed, e.g. the mount's own error.
        reason: String,
    },

    /// An empty argv was given.
    #[error("the command to run in the root is empty")]
    EmptyCommand,

    /// Any IO failure, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl BuildRootError {
    /// Wraps an IO error with what was being done.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

/// Short form for the crate's results.
pub type Result<T, E = BuildRootError> = std::result::Result<T, E>;
