//! Real Debian root filesystems for host-mode nodes: a root made once by `mmdebstrap` (cached per
//! suite, architecture and package set), turned into an ext4 disk image with `mkfs.ext4 -d`
//! (no loop devices, no mounting) together with the running kernel's modules and any extra files
//! (a systemd unit, a loader config).
//!
//! Debian kernels build virtio_blk and ext4 as modules, so a disk cannot be booted with a bare
//! `root=/dev/vda`: the node boots a small initramfs ([`crate::StandardInit::switch_root`]) that
//! loads them, mounts the disk and hands over to its `/sbin/init` (systemd).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use kernel_id::Arch;

use crate::apt::{AptConfig, Suite};
use crate::cache_dir;
use crate::kernel::KernelImage;
use crate::lock::{CacheLock, scratch_path};

/// Modules (with their dependencies) an initramfs needs to mount an ext4 virtio disk.
/// crc32c_generic because ext4's metadata checksums request the crc32c transform at mount time,
/// which an initramfs without modprobe cannot load on demand.
pub const ROOT_DISK_MODULES: [&str; 4] = ["virtio_pci", "virtio_blk", "crc32c_generic", "ext4"];

/// Writes to `out` the initramfs every node with a Debian root disk boots: it loads
/// [`ROOT_DISK_MODULES`] from `kernel` and switches to `/dev/vda`.
pub fn write_root_disk_initrd(arch: Arch, kernel: &KernelImage, out: &Path) -> Result<()> {
    let mut image = crate::Initramfs::new(arch)?;
    let modules = image.kernel_modules(kernel, &ROOT_DISK_MODULES)?;
    image.init(
        &crate::StandardInit::new()
            .modules(modules)
            .switch_root("/dev/vda")
            .render(),
    )?;
    image.write(out)
}

/// A root directory made by `mmdebstrap --variant=minbase` for `suite` and `arch` with
/// `packages` included, built once and cached under `cache_dir()/roots/`. Treat it as read-only:
/// [`DiskImage`] copies it before adding files.
pub fn debian_root(suite: &str, arch: Arch, packages: &[&str]) -> Result<PathBuf> {
    let suite = Suite::new(suite)?;
    for package in packages {
        if package.is_empty()
            || !package
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
        {
            bail!("package '{package}': must be a Debian package name");
        }
    }
    let mut sorted: Vec<&str> = packages.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let key = format!(
        "{}-{}-{:016x}",
        suite,
        arch.debian_name(),
        fnv1a(sorted.join(",").as_bytes())
    );
    let roots = cache_dir().join("roots");
    fs::create_dir_all(&roots)?;
    let root = roots.join(&key);
    let _lock = CacheLock::acquire(&roots.join(format!("{key}.lock")))?;
    if root.join(".complete").exists() {
        return Ok(root);
    }
    let scratch = scratch_path(&root, "mmdebstrap");
    let mirror = AptConfig::from_env()?.archive_mirror;
    let mut command = Command::new("mmdebstrap");
    command
        .arg("--variant=minbase")
        .arg(format!("--architectures={}", arch.debian_name()))
        .arg("--quiet");
    if !sorted.is_empty() {
        command.arg(format!("--include={}", sorted.join(",")));
    }
    command.arg(suite.name()).arg(&scratch).arg(&mirror);
    let output = command
        .output()
        .context("running mmdebstrap (install mmdebstrap; foreign architectures need binfmt)")?;
    if !output.status.success() {
        let _ = fs::remove_dir_all(&scratch);
        bail!(
            "mmdebstrap {suite} for {} failed ({}):\n{}",
            arch.debian_name(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    fs::write(scratch.join(".complete"), format!("{key}\n"))?;
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::rename(&scratch, &root)?;
    Ok(root)
}

/// An ext4 disk image assembled from a cached root plus extra files.
#[derive(Debug, Clone)]
pub struct DiskImage {
    root: PathBuf,
    files: Vec<(String, Vec<u8>, u32)>,
    symlinks: Vec<(String, String)>,
    kernel: Option<KernelImage>,
    size_mib: u32,
}

impl DiskImage {
    /// Starts from `root` (e.g. from [`debian_root`]); 2 GiB sparse by default.
    pub fn from_root(root: &Path) -> DiskImage {
        DiskImage {
            root: root.to_path_buf(),
            files: Vec::new(),
            symlinks: Vec::new(),
            kernel: None,
            size_mib: 2048,
        }
    }

    pub fn size_mib(mut self, size_mib: u32) -> Self {
        self.size_mib = size_mib;
        self
    }

    /// Adds a file at absolute guest path `path` (parents created as needed).
    pub fn file(mut self, path: &str, data: &[u8], permissions: u32) -> Self {
        self.files
            .push((path.to_owned(), data.to_vec(), permissions));
        self
    }

    /// Adds a symlink (e.g. enabling a unit in `multi-user.target.wants`).
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.symlinks.push((path.to_owned(), target.to_owned()));
        self
    }

    /// Networking for a systemd node under qemu's user-mode network: systemd-networkd enabled with
    /// the guest's fixed address (10.0.2.15, gateway 10.0.2.2, which is the host's loopback), and
    /// `network-online.target` waiting for it.
    pub fn qemu_user_network(self) -> Self {
        self.file(
            "/etc/systemd/network/10-eth.network",
            b"[Match]\nName=e*\n\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\n",
            0o644,
        )
        .symlink(
            "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
            "/lib/systemd/system/systemd-networkd.service",
        )
        .symlink(
            "/etc/systemd/system/sockets.target.wants/systemd-networkd.socket",
            "/lib/systemd/system/systemd-networkd.socket",
        )
        .symlink(
            "/etc/systemd/system/network-online.target.wants/systemd-networkd-wait-online.service",
            "/lib/systemd/system/systemd-networkd-wait-online.service",
        )
    }

    /// Installs `kernel`'s modules tree (with modules.dep) as `/lib/modules/<release>` so
    /// `modprobe` and `depmod` work on the node as on a real install.
    pub fn kernel_modules(mut self, kernel: &KernelImage) -> Self {
        self.kernel = Some(kernel.clone());
        self
    }

    /// Writes the image to `out` (sparse raw ext4, label `root`).
    pub fn write(&self, out: &Path) -> Result<()> {
        let staging = scratch_path(out, "staging");
        let result = (|| {
            run(Command::new("cp")
                .arg("-a")
                .arg("--reflink=auto")
                .arg(&self.root)
                .arg(&staging))?;
            let _ = fs::remove_file(staging.join(".complete"));
            if let Some(kernel) = &self.kernel {
                // usrmerged roots have /lib -> usr/lib; write through the real directory.
                let modules_parent = if staging.join("lib").is_symlink() {
                    staging.join("usr/lib/modules")
                } else {
                    staging.join("lib/modules")
                };
                fs::create_dir_all(&modules_parent)?;
                run(Command::new("cp")
                    .arg("-a")
                    .arg("--dereference")
                    .arg(kernel.modules_dir())
                    .arg(modules_parent.join(kernel.release().as_str())))?;
            }
            for (path, data, permissions) in &self.files {
                let target = guest_path(&staging, path)?;
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent)?;
                }
                fs::write(&target, data)?;
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&target, fs::Permissions::from_mode(*permissions))?;
            }
            for (path, link_target) in &self.symlinks {
                let link = guest_path(&staging, path)?;
                if let Some(parent) = link.parent() {
                    fs::create_dir_all(parent)?;
                }
                let _ = fs::remove_file(&link);
                std::os::unix::fs::symlink(link_target, &link)?;
            }
            let _ = fs::remove_file(out);
            run(Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", "root", "-d"])
                .arg(&staging)
                .arg(out)
                .arg(format!("{}M", self.size_mib)))
            .context("mkfs.ext4 -d (install e2fsprogs >= 1.43)")
        })();
        let _ = fs::remove_dir_all(&staging);
        result
    }
}

fn guest_path(staging: &Path, path: &str) -> Result<PathBuf> {
    let relative = path
        .strip_prefix('/')
        .with_context(|| format!("disk path '{path}' must be absolute"))?;
    if relative.is_empty()
        || relative
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
    {
        bail!("disk path '{path}' must be normalised");
    }
    Ok(staging.join(relative))
}

fn run(command: &mut Command) -> Result<()> {
    crate::command_output(command).map(drop)
}

/// A stable 64-bit FNV-1a hash for cache keys (std's hasher is randomly seeded per process).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_keys_are_stable_across_processes() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn disk_paths_cannot_escape_the_root() {
        let staging = Path::new("/s");
        assert_eq!(
            guest_path(staging, "/etc/x").expect("ok"),
            Path::new("/s/etc/x")
        );
        assert!(guest_path(staging, "/../etc").is_err());
        assert!(guest_path(staging, "etc").is_err());
    }
}
