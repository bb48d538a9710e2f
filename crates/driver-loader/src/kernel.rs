//! The running kernel as the loader sees it: which modules are live (`/sys/module`), what
//! `/lib/modules/<release>` offers (`modules.dep`, `modules.builtin`, a reference vermagic), and the
//! system calls that load and unload modules (`finit_module` on a memfd, `init_module` as fallback,
//! `delete_module`), all through nix so this crate stays free of `unsafe`.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::kmod::{DeleteModuleFlags, ModuleInitFlags, delete_module, finit_module, init_module};
use nix::sys::memfd::{MFdFlags, memfd_create};
use tracing::{debug, warn};

use crate::compat::HostModules;
use crate::error::{LoaderError, Result};
use crate::modinfo::{ModInfo, module_name_from_file_name};

/// A module as the kernel reports it under `/sys/module/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedModule {
    pub name: String,
    /// `srcversion`, absent for modules without MODULE_VERSION.
    pub srcversion: Option<String>,
    /// `version` (MODULE_VERSION).
    pub version: Option<String>,
    /// `initstate`: live, coming, going; absent for built-in modules.
    pub initstate: Option<String>,
}

/// Loading and unloading, behind a trait so the decision logic is testable without CAP_SYS_MODULE.
pub trait KernelModules {
    /// The module's state, `None` when it is not in the kernel.
    fn loaded(&self, name: &str) -> Option<LoadedModule>;
    /// Loads an uncompressed module image.
    fn load(&self, name: &str, image: &[u8]) -> Result<LoadOutcome>;
    /// Unloads a module (fails when it is in use).
    fn unload(&self, name: &str) -> Result<()>;
}

/// What a load call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadOutcome {
    Loaded,
    /// The kernel said EEXIST: a module of that name was already there.
    AlreadyPresent,
}

/// The real kernel, with sysfs at a configurable root (`/sys` normally).
#[derive(Debug, Clone)]
pub struct SysKernel {
    pub sys_root: PathBuf,
}

impl Default for SysKernel {
    fn default() -> Self {
        SysKernel {
            sys_root: PathBuf::from("/sys"),
        }
    }
}

fn read_attr(dir: &Path, attr: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(attr))
        .ok()
        .map(|s| s.trim().to_owned())
}

impl KernelModules for SysKernel {
    fn loaded(&self, name: &str) -> Option<LoadedModule> {
        let dir = self.sys_root.join("module").join(name);
        if !dir.is_dir() {
            return None;
        }
        Some(LoadedModule {
            name: name.to_owned(),
            srcversion: read_attr(&dir, "srcversion"),
            version: read_attr(&dir, "version"),
            initstate: read_attr(&dir, "initstate"),
        })
    }

    fn load(&self, name: &str, image: &[u8]) -> Result<LoadOutcome> {
        let params = CString::default();
        let via_memfd = || -> std::result::Result<(), Errno> {
            let fd = memfd_create(c"driver-loader-module", MFdFlags::MFD_CLOEXEC)?;
            let mut file = std::fs::File::from(fd);
            file.write_all(image)
                .map_err(|e| e.raw_os_error().map_or(Errno::EIO, Errno::from_raw))?;
            finit_module(&file, &params, ModuleInitFlags::empty())
        };
        let result = match via_memfd() {
            // LoadPin and similar LSMs refuse fds that are not on the pinned filesystem, and very old
            // kernels lack memfd_create or finit_module; init_module takes the bytes directly.
            Err(errno @ (Errno::EPERM | Errno::ENOSYS | Errno::EBADF)) => {
                debug!(module = name, %errno, "finit_module on a memfd failed; trying init_module");
                init_module(image, &params)
            }
            other => other,
        };
        match result {
            Ok(()) => Ok(LoadOutcome::Loaded),
            Err(Errno::EEXIST) => Ok(LoadOutcome::AlreadyPresent),
            Err(errno) => Err(load_error(name, errno)),
        }
    }

    fn unload(&self, name: &str) -> Result<()> {
        let cname = CString::new(name).map_err(|_| LoaderError::Load {
            module: name.to_owned(),
            reason: "module name contains NUL".to_owned(),
        })?;
        delete_module(&cname, DeleteModuleFlags::O_NONBLOCK).map_err(|errno| LoaderError::Load {
            module: name.to_owned(),
            reason: match errno {
                Errno::EWOULDBLOCK | Errno::EBUSY => {
                    "cannot unload: the module is in use".to_owned()
                }
                Errno::ENOENT => "cannot unload: not loaded".to_owned(),
                Errno::EPERM => {
                    "cannot unload: missing CAP_SYS_MODULE (not root / not privileged?)".to_owned()
                }
                other => format!("delete_module failed: {other}"),
            },
        })
    }
}

/// The error of a failed init_module/finit_module. A refused signature (EKEYREJECTED, ENOKEY, EBADMSG)
/// is [`LoaderError::ModuleSignature`], which the flow explains (signer, enforcement, enrolment).
pub fn load_error(name: &str, errno: Errno) -> LoaderError {
    match errno {
        Errno::EKEYREJECTED | Errno::ENOKEY | Errno::EBADMSG => LoaderError::ModuleSignature {
            module: name.to_owned(),
            reason: explain_load_errno(errno),
        },
        _ => LoaderError::Load {
            module: name.to_owned(),
            reason: explain_load_errno(errno),
        },
    }
}

/// What the kernel means by each errno of init_module/finit_module (see init_module(2)).
fn explain_load_errno(errno: Errno) -> String {
    let meaning = match errno {
        Errno::ENOEXEC => {
            "the kernel refused the module format (wrong vermagic, architecture or ELF layout)"
        }
        Errno::EINVAL => {
            "the kernel refused the module (symbol versions disagree, bad parameters or image; see dmesg)"
        }
        Errno::ENOENT => {
            "the module references a symbol the kernel does not export (missing dependency?)"
        }
        Errno::EPERM => {
            "not permitted: missing CAP_SYS_MODULE, module loading disabled, or lockdown"
        }
        Errno::EKEYREJECTED => {
            "the module signature was rejected (Secure Boot / module.sig_enforce)"
        }
        Errno::ENOKEY => "the key that signed the module is not one the kernel trusts",
        Errno::EBADMSG => "the module's signature is malformed",
        Errno::EBUSY => "the kernel is busy loading a module of that name",
        Errno::ENOMEM => "out of kernel memory",
        _ => "init_module failed",
    };
    format!("{meaning} ({errno})")
}

/// What `/lib/modules/<release>` says about the host's own modules.
#[derive(Debug, Clone, Default)]
pub struct HostModuleIndex {
    /// `/lib/modules/<release>`.
    pub dir: PathBuf,
    /// name -> (relative path, dependency paths) from `modules.dep`.
    deps: HashMap<String, (PathBuf, Vec<PathBuf>)>,
    builtin: HashSet<String>,
    /// Where the running kernel's live modules are listed; `None` for a kernel that is installed but
    /// not running, where nothing is live yet.
    sys_root: Option<PathBuf>,
}

impl HostModuleIndex {
    /// Reads `modules.dep` and `modules.builtin` when present (either may be missing, e.g. in an initramfs).
    pub fn load(modules_dir: &Path, sys_root: &Path) -> HostModuleIndex {
        HostModuleIndex::read(modules_dir, Some(sys_root))
    }

    /// The index of a kernel installed but not running (a prefetch target): the running kernel's
    /// live modules say nothing about it, so a dependency counts only when it is installed for it.
    pub fn installed(modules_dir: &Path) -> HostModuleIndex {
        HostModuleIndex::read(modules_dir, None)
    }

    fn read(modules_dir: &Path, sys_root: Option<&Path>) -> HostModuleIndex {
        let mut index = HostModuleIndex {
            dir: modules_dir.to_path_buf(),
            sys_root: sys_root.map(Path::to_path_buf),
            ..HostModuleIndex::default()
        };
        if let Ok(text) = std::fs::read_to_string(modules_dir.join("modules.dep")) {
            for line in text.lines() {
                let Some((module, deps)) = line.split_once(':') else {
                    continue;
                };
                let path = PathBuf::from(module.trim());
                let Some(name) = path
                    .file_name()
                    .and_then(|f| module_name_from_file_name(&f.to_string_lossy()))
                else {
                    continue;
                };
                let deps = deps.split_whitespace().map(PathBuf::from).collect();
                index.deps.insert(name, (path, deps));
            }
        }
        if let Ok(text) = std::fs::read_to_string(modules_dir.join("modules.builtin")) {
            for line in text.lines() {
                if let Some(name) = Path::new(line.trim())
                    .file_name()
                    .and_then(|f| module_name_from_file_name(&f.to_string_lossy()))
                {
                    index.builtin.insert(name);
                }
            }
        }
        index
    }

    /// The host module files to load, dependencies first, so that `name` becomes available; empty for a
    /// built-in module. `None` when the host has no such module.
    pub fn load_chain(&self, name: &str) -> Option<Vec<PathBuf>> {
        if self.builtin.contains(name) {
            return Some(Vec::new());
        }
        let (path, deps) = self.deps.get(name)?;
        // modules.dep lists the full transitive closure, the module that must be loaded last first.
        let mut chain: Vec<PathBuf> = deps.iter().rev().map(|d| self.dir.join(d)).collect();
        chain.push(self.dir.join(path));
        Some(chain)
    }

    /// The vermagic of one of the running kernel's own modules, with the file it came from: the reference a
    /// package module must equal. Tries the modules named in `modules.dep` first, then walks `kernel/`.
    pub fn reference_vermagic(&self) -> Option<(PathBuf, String)> {
        // Only the kernel's own tree: extra/ and updates/ hold out-of-tree builds (ours among them).
        let mut candidates: Vec<PathBuf> = self
            .deps
            .values()
            .filter(|(p, _)| p.starts_with("kernel"))
            .map(|(p, _)| self.dir.join(p))
            .collect();
        candidates.sort();
        candidates.truncate(8);
        if candidates.is_empty() {
            candidates = find_module_files(&self.dir.join("kernel"), 8);
        }
        for path in candidates {
            match ModInfo::of_file(&path) {
                Ok(info) => {
                    if let Some(vermagic) = info.vermagic() {
                        return Some((path, vermagic.to_owned()));
                    }
                }
                Err(e) => warn!(path = %path.display(), error = %e, "in-tree module unreadable"),
            }
        }
        None
    }
}

/// Up to `limit` module files below `dir`, depth-first in name order.
fn find_module_files(dir: &Path, limit: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.file_name()));
        for entry in entries {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file()
                && module_name_from_file_name(&entry.file_name().to_string_lossy()).is_some()
            {
                found.push(path);
                if found.len() >= limit {
                    return found;
                }
            }
        }
    }
    found
}

impl HostModules for HostModuleIndex {
    fn is_loaded(&self, name: &str) -> bool {
        self.sys_root
            .as_ref()
            .is_some_and(|sys| sys.join("module").join(name).is_dir())
    }

    fn is_available(&self, name: &str) -> bool {
        self.builtin.contains(name) || self.deps.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modinfo::tests::{modinfo_bytes, tiny_module};

    #[test]
    fn modules_dep_gives_dependency_first_chains_and_builtins_need_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("modules.dep"),
            "kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz\n\
             kernel/net/core/failover.ko.xz:\n\
             kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("modules.builtin"),
            "kernel/drivers/virtio/virtio.ko\n",
        )
        .expect("write");
        let index = HostModuleIndex::load(dir.path(), &dir.path().join("sys"));
        let chain = index.load_chain("virtio_net").expect("known");
        let rel: Vec<_> = chain
            .iter()
            .map(|p| p.strip_prefix(dir.path()).expect("under dir").to_path_buf())
            .collect();
        assert_eq!(
            rel,
            vec![
                PathBuf::from("kernel/net/core/failover.ko.xz"),
                PathBuf::from("kernel/drivers/net/net_failover.ko.xz"),
                PathBuf::from("kernel/drivers/net/virtio_net.ko.xz"),
            ]
        );
        assert_eq!(index.load_chain("virtio"), Some(vec![]));
        assert!(index.is_available("virtio") && index.is_available("failover"));
        assert!(index.load_chain("nosuch").is_none());
        assert!(!index.is_available("nosuch"));
    }

    #[test]
    fn reference_vermagic_comes_from_an_in_tree_module() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kdir = dir.path().join("kernel/drivers");
        std::fs::create_dir_all(&kdir).expect("mkdir");
        let vermagic = "6.1.0-47-amd64 SMP preempt mod_unload modversions ";
        let image = tiny_module(
            &modinfo_bytes(&["name=failover", &format!("vermagic={vermagic}")]),
            goblin::elf::header::ET_REL,
        );
        std::fs::write(kdir.join("failover.ko"), image).expect("write");
        let index = HostModuleIndex::load(dir.path(), dir.path());
        let (path, found) = index
            .reference_vermagic()
            .expect("found by walking kernel/");
        assert_eq!(found, vermagic);
        assert!(path.ends_with("failover.ko"));
    }

    #[test]
    fn out_of_tree_modules_are_never_the_reference() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |rel: &str, vermagic: &str| {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            let image = tiny_module(
                &modinfo_bytes(&["name=m", &format!("vermagic={vermagic}")]),
                goblin::elf::header::ET_REL,
            );
            std::fs::write(path, image).expect("write");
        };
        write("extra/dkms.ko", "6.1.0-47-amd64 SMP mod_unload ");
        write(
            "kernel/fs/real.ko",
            "6.1.0-47-amd64 SMP preempt mod_unload modversions ",
        );
        std::fs::write(
            dir.path().join("modules.dep"),
            "extra/dkms.ko:\nkernel/fs/real.ko:\n",
        )
        .expect("write");
        let index = HostModuleIndex::load(dir.path(), dir.path());
        let (path, vermagic) = index.reference_vermagic().expect("found");
        assert!(path.ends_with("kernel/fs/real.ko"), "{}", path.display());
        assert_eq!(
            vermagic,
            "6.1.0-47-amd64 SMP preempt mod_unload modversions "
        );
    }

    #[test]
    fn an_installed_kernels_index_counts_nothing_as_loaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("modules.dep"), "kernel/lib/helper.ko:\n").expect("write");
        std::fs::create_dir_all(dir.path().join("sys/module/virtio")).expect("mkdir");
        let running = HostModuleIndex::load(dir.path(), &dir.path().join("sys"));
        assert!(running.is_loaded("virtio"));
        // Live in the running kernel says nothing about a kernel that is not booted.
        let installed = HostModuleIndex::installed(dir.path());
        assert!(!installed.is_loaded("virtio"));
        assert!(installed.is_available("helper"));
    }

    #[test]
    fn signature_refusals_of_the_kernel_are_module_signature_errors() {
        for errno in [Errno::EKEYREJECTED, Errno::ENOKEY, Errno::EBADMSG] {
            let error = load_error("m", errno);
            assert_eq!(error.kind(), crate::FailureKind::ModuleSignature, "{errno}");
        }
        let error = load_error("m", Errno::EKEYREJECTED);
        assert!(
            error.to_string().contains("Key was rejected by service"),
            "{error}"
        );
        for errno in [Errno::ENOEXEC, Errno::EPERM, Errno::EINVAL] {
            assert_eq!(load_error("m", errno).kind(), crate::FailureKind::Load);
        }
    }

    #[test]
    fn sysfs_state_is_read_from_the_configured_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = dir.path().join("module/example_driver");
        std::fs::create_dir_all(&m).expect("mkdir");
        std::fs::write(m.join("srcversion"), "ABC\n").expect("write");
        std::fs::write(m.join("initstate"), "live\n").expect("write");
        let kernel = SysKernel {
            sys_root: dir.path().to_path_buf(),
        };
        let loaded = kernel.loaded("example_driver").expect("present");
        assert_eq!(loaded.srcversion.as_deref(), Some("ABC"));
        assert_eq!(loaded.initstate.as_deref(), Some("live"));
        assert!(loaded.version.is_none());
        assert!(kernel.loaded("other").is_none());
    }
}
