//! Test support shared by the integration tests of every crate and by the fleet harness: one cache
//! directory for slow-to-make things (downloaded Debian packages, unpacked kernels, build roots), an
//! isolated apt configuration that reaches every supported Debian suite without touching the host's
//! `/etc/apt`, real Debian kernels, initramfs images assembled in Rust, and qemu nodes booted from them
//! with hard timeouts.
//!
//! Everything that lands in the cache is created under an advisory file lock, because nextest runs
//! each test in its own process and several of them may ask for the same kernel at the same moment.
//!
//! Environment:
//! - `KDRIVER_TEST_CACHE`: cache directory (default `<workspace>/target/test-cache`).
//! - `KDRIVER_DEBIAN_MIRROR`, `KDRIVER_DEBIAN_SECURITY_MIRROR`: Debian mirrors (default
//!   deb.debian.org's `debian` and `debian-security`).
//! - `KDRIVER_APT_MAX_AGE_HOURS`: how old the private apt lists may get before a refresh (12).
//!
//! [`driver_repo`] makes the sample driver a git repository with tagged versions, as the
//! build-service reads driver sources.
//!
//! [`mirror`] serves package indexes on loopback (ETags, 304, a request log) for the repository
//! watcher's tests, and writes apt suites for it.
//!
//! [`deploy`] reads the Kubernetes DaemonSet manifest strictly, checks what it asks for and spells its
//! container for a real runtime; [`oci`] writes a `FROM scratch` image as an OCI archive without Docker.
//!
//! Host tools used: git (for [`driver_repo`]), apt, dpkg-deb, kmod (depmod), xz-utils, coreutils `timeout`,
//! qemu-system-x86 / qemu-system-arm, busybox-static, and for root disks mmdebstrap and e2fsprogs.
//! Nodes on UEFI firmware ([`uefi`]) need ovmf and python3-virt-firmware (bookworm-backports);
//! [`modsign`]'s test module signatures need openssl.
//!
//! A node in a few lines:
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use testkit::{Initramfs, KernelImage, QemuConfig, QemuNode, StandardInit};
//!
//! let arch = kernel_id::Arch::parse("amd64")?;
//! let kernel = KernelImage::fetch("6.1.0-47-amd64", arch)?;
//! let mut image = Initramfs::new(arch)?;
//! let modules = image.kernel_modules(&kernel, &["virtio_pci", "virtio_net"])?;
//! image.init(&StandardInit::new().modules(modules).command("wget -O- http://10.0.2.2:8080/").render())?;
//! let logs = testkit::test_log_dir("example")?;
//! image.write(&logs.join("initrd.gz"))?;
//! let node = QemuNode::boot(
//!     QemuConfig::new(arch, kernel.qemu_kernel(), &logs.join("console.log"))
//!         .initrd(&logs.join("initrd.gz"))
//!         .hard_timeout(Duration::from_secs(120)),
//! )?;
//! node.wait_for_line(testkit::initramfs::INIT_MARKER, Duration::from_secs(60))?;
//! let console = node.run_to_completion()?;
//! # let _ = console;
//! # Ok(())
//! # }
//! ```

pub mod apt;
pub mod cpio;
pub mod deploy;
pub mod driver_repo;
pub mod initramfs;
pub mod kernel;
mod lock;
pub mod mirror;
pub mod modsign;
pub mod musl;
pub mod oci;
pub mod qemu;
pub mod rootfs;
pub mod uefi;

use std::path::{Path, PathBuf};

pub use apt::{AptConfig, IsolatedApt, KernelImageInfo, Suite, download_deb, list_kernel_images};
pub use driver_repo::SampleDriverRepo;
pub use initramfs::{Initramfs, Network, StandardInit};
pub use kernel::{KernelImage, KernelModule};
pub use musl::musl_binary;
pub use qemu::{QemuConfig, QemuNode, VmError};
pub use rootfs::{DiskImage, ROOT_DISK_MODULES, debian_root, write_root_disk_initrd};
pub use uefi::UefiFirmware;

/// Runs `command` to its end and returns its standard output; a failure to start or a non-zero
/// exit is an error carrying the command line, the status and its standard error.
pub fn command_output(command: &mut std::process::Command) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        anyhow::bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The workspace root, found from this crate's manifest directory so tests work from any cwd.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/testkit sits two levels below the workspace root")
        .to_path_buf()
}

/// Where slow-to-make test inputs are kept between runs: `$KDRIVER_TEST_CACHE`, or
/// `<workspace>/target/test-cache`. Created on first use.
pub fn cache_dir() -> PathBuf {
    let dir = std::env::var_os("KDRIVER_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target").join("test-cache"));
    std::fs::create_dir_all(&dir).expect("test cache directory must be creatable");
    dir
}

/// A fresh directory for one test's logs and scratch artifacts (consoles, initramfs images):
/// `<workspace>/target/test-logs/<name>`, emptied first. It is left in place afterwards so a
/// failure can be examined; its path is in every timeout error.
pub fn test_log_dir(name: &str) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        anyhow::bail!("test log dir name '{name}': must be a single path component");
    }
    let dir = workspace_root().join("target").join("test-logs").join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
