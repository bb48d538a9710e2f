//! Does a package's set of modules fit the running kernel? The checks the kernel would make (vermagic,
//! module name) plus the ones modprobe would discover too late (a dependency that exists nowhere), done
//! before anything is installed or loaded, and the order the modules must be loaded in.
//!
//! The same checks judge a package prefetched for a kernel that is installed but not booted yet
//! ([`TargetKernel::pending`]): a package that would be refused after the reboot is refused now,
//! while the node can still fetch another one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use kernel_id::Arch;

use crate::error::{LoaderError, Result};
use crate::modinfo::{MAX_MODULE_BYTES, ModInfo, module_name_from_file_name};

/// One module from the package, read and decompressed.
#[derive(Debug, Clone)]
pub struct PackageModule {
    /// Where it came from: its path in the package, or the file it was read from.
    pub path: PathBuf,
    /// Its kbuild name (from `.modinfo name=`).
    pub name: String,
    pub info: ModInfo,
    /// The uncompressed ELF image, ready for `init_module`.
    pub image: Vec<u8>,
}

impl PackageModule {
    /// Reads a module file and checks it carries a name that agrees with its file name.
    pub fn read(path: &Path) -> Result<PackageModule> {
        let (info, image) = ModInfo::from_file(path)?;
        PackageModule::named(path, info, image)
    }

    /// A module read from its package into memory (decompressed per its name, like a file).
    pub fn from_package(module: driver_package::PackagedModule) -> Result<PackageModule> {
        let driver_package::PackagedModule { path, bytes } = module;
        let shown = path.display().to_string();
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let image =
            driver_package::module_image(&file_name, bytes, MAX_MODULE_BYTES).map_err(|e| {
                LoaderError::incompatible(&shown, format!("cannot read module image: {e}"))
            })?;
        let info = ModInfo::from_elf(&image)
            .map_err(|reason| LoaderError::incompatible(&shown, reason))?;
        PackageModule::named(&path, info, image)
    }

    /// Checks that the module carries a name and that it agrees with its file name.
    fn named(path: &Path, info: ModInfo, image: Vec<u8>) -> Result<PackageModule> {
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let shown = file_name.clone();
        let name = info
            .name()
            .ok_or_else(|| {
                LoaderError::incompatible(
                    &shown,
                    ".modinfo has no name= entry (not built by kbuild?)",
                )
            })?
            .to_owned();
        if let Some(from_file) = module_name_from_file_name(&file_name)
            && from_file != name
        {
            return Err(LoaderError::incompatible(
                &shown,
                format!("file name says module {from_file:?} but .modinfo name= says {name:?}"),
            ));
        }
        Ok(PackageModule {
            path: path.to_path_buf(),
            name,
            info,
            image,
        })
    }
}

/// What the host offers to satisfy `depends=`.
pub trait HostModules {
    /// The module is live in the running kernel (or built in and visible under /sys/module).
    fn is_loaded(&self, name: &str) -> bool;
    /// The module is built into the kernel or installed under /lib/modules/<release> and loadable.
    fn is_available(&self, name: &str) -> bool;
}

/// The kernel a package's modules are checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetKernel<'a> {
    /// Its release (`uname -r` once booted).
    pub release: &'a str,
    /// Installed but not running (prefetch): only how refusals name it differs.
    pub pending: bool,
}

impl<'a> TargetKernel<'a> {
    /// The kernel this machine runs.
    pub fn running(release: &'a str) -> Self {
        TargetKernel {
            release,
            pending: false,
        }
    }

    /// A kernel installed on this machine and not booted yet.
    pub fn pending(release: &'a str) -> Self {
        TargetKernel {
            release,
            pending: true,
        }
    }

    /// How messages name it.
    pub fn noun(&self) -> &'static str {
        if self.pending {
            "the pending (installed, not running) kernel"
        } else {
            "the running kernel"
        }
    }
}

/// Checks every module against the target kernel and returns them in load order (dependencies first).
///
/// - the module's ELF machine must be the running machine's `arch` (checked first: an x86_64 module
///   offered to an arm64 node is refused as such, whatever else it claims);
/// - `vermagic` must start with the target's release; when `reference_vermagic` (the vermagic of an
///   in-tree module of the target kernel) is known, the whole string must equal it, so a module built
///   with another configuration (SMP, preempt model, modversions) is refused too.
/// - every `depends=` entry must be in the package, loaded, or available on the host.
pub fn check_and_order(
    modules: Vec<PackageModule>,
    arch: Arch,
    target: TargetKernel<'_>,
    reference_vermagic: Option<&str>,
    host: &dyn HostModules,
) -> Result<Vec<PackageModule>> {
    let mut seen = HashSet::new();
    for module in &modules {
        if !seen.insert(module.name.clone()) {
            return Err(LoaderError::incompatible(
                &module.name,
                "appears twice in the package",
            ));
        }
        check_machine(module, arch)?;
        check_vermagic(module, target, reference_vermagic)?;
    }
    let in_package: HashSet<&str> = modules.iter().map(|m| m.name.as_str()).collect();
    for module in &modules {
        let missing: Vec<String> = module
            .info
            .depends()
            .into_iter()
            .filter(|dep| {
                !in_package.contains(dep.as_str())
                    && !host.is_loaded(dep)
                    && !host.is_available(dep)
            })
            .collect();
        if !missing.is_empty() {
            return Err(LoaderError::incompatible(
                &module.name,
                format!(
                    "depends on {} which is neither in the package, nor loaded, nor installed for this kernel",
                    missing.join(", ")
                ),
            ));
        }
    }
    let order = load_order(
        &modules
            .iter()
            .map(|m| (m.name.clone(), m.info.depends()))
            .collect::<Vec<_>>(),
    )?;
    let mut by_name: HashMap<String, PackageModule> =
        modules.into_iter().map(|m| (m.name.clone(), m)).collect();
    Ok(order
        .into_iter()
        .filter_map(|name| by_name.remove(&name))
        .collect())
}

/// The architecture rule alone: the ELF header's `e_machine` must be `arch`'s. vermagic cannot be
/// relied on for this (x86_64's names no architecture), and the kernel's own refusal ("Invalid ELF
/// header") would come only after the module was handed to it.
pub fn check_machine(module: &PackageModule, arch: Arch) -> Result<()> {
    let header = goblin::elf::Elf::parse_header(&module.image).map_err(|e| {
        LoaderError::incompatible(&module.name, format!("unreadable ELF header: {e}"))
    })?;
    if header.e_machine == arch.elf_machine() {
        return Ok(());
    }
    let built_for = Arch::from_elf_machine(header.e_machine).map_or_else(
        || format!("ELF machine {}", header.e_machine),
        |other| other.as_str().to_owned(),
    );
    Err(LoaderError::incompatible(
        &module.name,
        format!("was compiled for {built_for} but this machine is {arch} (architecture mismatch)"),
    ))
}

/// The vermagic rule alone.
pub fn check_vermagic(
    module: &PackageModule,
    target: TargetKernel<'_>,
    reference_vermagic: Option<&str>,
) -> Result<()> {
    let vermagic = module.info.vermagic().ok_or_else(|| {
        LoaderError::incompatible(&module.name, ".modinfo has no vermagic= entry")
    })?;
    let built_for = vermagic.split_whitespace().next().unwrap_or_default();
    if built_for != target.release {
        return Err(LoaderError::incompatible(
            &module.name,
            format!(
                "built for kernel {built_for:?} (vermagic {vermagic:?}) but {} is {:?}",
                target.noun(),
                target.release
            ),
        ));
    }
    if let Some(reference) = reference_vermagic
        && reference != vermagic
    {
        return Err(LoaderError::incompatible(
            &module.name,
            format!(
                "vermagic {vermagic:?} differs from {}'s own modules' {reference:?}",
                target.noun()
            ),
        ));
    }
    Ok(())
}

/// Orders `(name, depends)` so every module comes after the in-set modules it depends on; dependencies
/// outside the set are ignored (they are the host's). Ties are broken by name so the order is stable.
/// A cycle is an error naming its members.
pub fn load_order(modules: &[(String, Vec<String>)]) -> Result<Vec<String>> {
    let names: BTreeSet<&str> = modules.iter().map(|(n, _)| n.as_str()).collect();
    let mut pending: BTreeMap<&str, BTreeSet<&str>> = modules
        .iter()
        .map(|(name, deps)| {
            (
                name.as_str(),
                deps.iter()
                    .map(String::as_str)
                    .filter(|d| names.contains(d) && *d != name)
                    .collect(),
            )
        })
        .collect();
    let mut order = Vec::with_capacity(modules.len());
    while !pending.is_empty() {
        let ready: Vec<&str> = pending
            .iter()
            .filter(|(_, deps)| deps.is_empty())
            .map(|(name, _)| *name)
            .collect();
        if ready.is_empty() {
            let cycle: Vec<&str> = pending.keys().copied().collect();
            return Err(LoaderError::incompatible(
                cycle.join(", "),
                "modules depend on each other in a cycle; no load order exists",
            ));
        }
        for name in ready {
            pending.remove(name);
            for deps in pending.values_mut() {
                deps.remove(name);
            }
            order.push(name.to_owned());
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modinfo::tests::{modinfo_bytes, tiny_module};

    struct Host {
        loaded: Vec<&'static str>,
        available: Vec<&'static str>,
    }

    impl HostModules for Host {
        fn is_loaded(&self, name: &str) -> bool {
            self.loaded.contains(&name)
        }
        fn is_available(&self, name: &str) -> bool {
            self.available.contains(&name)
        }
    }

    fn module(name: &str, vermagic: &str, depends: &str) -> PackageModule {
        let entries = [
            format!("depends={depends}"),
            format!("name={name}"),
            format!("vermagic={vermagic}"),
        ];
        let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
        let image = tiny_module(&modinfo_bytes(&refs), goblin::elf::header::ET_REL);
        PackageModule {
            path: PathBuf::from(format!("{name}.ko")),
            name: name.to_owned(),
            info: ModInfo::from_elf(&image).expect("valid"),
            image,
        }
    }

    const VM: &str = "6.1.0-47-amd64 SMP preempt mod_unload modversions ";

    #[test]
    fn module_for_another_architecture_is_refused_before_vermagic() {
        // tiny_module writes EM_X86_64; the vermagic is right for the release, so only the
        // machine can be the reason.
        let m = module("example_driver", VM, "");
        check_machine(&m, Arch::X86_64).expect("same machine");
        let err = check_machine(&m, Arch::Aarch64).expect_err("x86_64 module on arm64");
        assert_eq!(err.kind(), crate::FailureKind::Incompatible);
        assert!(
            err.to_string()
                .contains("was compiled for x86_64 but this machine is aarch64"),
            "{err}"
        );
        let err = check_and_order(
            vec![m],
            Arch::Aarch64,
            TargetKernel::running("6.1.0-47-amd64"),
            Some(VM),
            &no_host(),
        )
        .expect_err("refused by check_and_order too");
        assert!(err.to_string().contains("architecture mismatch"), "{err}");

        let mut foreign = module("example_driver", VM, "");
        foreign.image[18..20].copy_from_slice(&40u16.to_le_bytes()); // EM_ARM (32-bit)
        let err = check_machine(&foreign, Arch::Aarch64).expect_err("EM_ARM");
        assert!(err.to_string().contains("ELF machine 40"), "{err}");
    }

    fn no_host() -> Host {
        Host {
            loaded: vec![],
            available: vec![],
        }
    }

    #[test]
    fn vermagic_must_name_the_running_release() {
        let m = module("example_driver", VM, "");
        check_vermagic(&m, TargetKernel::running("6.1.0-47-amd64"), None).expect("same release");
        let err = check_vermagic(&m, TargetKernel::running("6.1.0-50-amd64"), None)
            .expect_err("other release");
        assert_eq!(err.kind(), crate::FailureKind::Incompatible);
        assert!(
            err.to_string().contains("\"6.1.0-47-amd64\"")
                && err.to_string().contains("6.1.0-50-amd64"),
            "{err}"
        );
    }

    #[test]
    fn a_pending_kernel_is_judged_by_its_own_release_and_named_as_pending() {
        // The running kernel is 6.1.0-47; a package prefetched for the installed 6.1.0-50 must carry
        // 6.1.0-50 modules, and a refusal must not claim 6.1.0-50 is running.
        let m = module("example_driver", VM, "");
        let err = check_and_order(
            vec![m],
            Arch::X86_64,
            TargetKernel::pending("6.1.0-50-amd64"),
            None,
            &no_host(),
        )
        .expect_err("47 module for the pending 50 kernel");
        let text = err.to_string();
        assert!(
            text.contains("but the pending (installed, not running) kernel is \"6.1.0-50-amd64\""),
            "{text}"
        );
        let m = module("example_driver", "6.1.0-50-amd64 SMP mod_unload ", "");
        check_vermagic(&m, TargetKernel::pending("6.1.0-50-amd64"), None).expect("its own release");
        let err = check_vermagic(
            &m,
            TargetKernel::pending("6.1.0-50-amd64"),
            Some("6.1.0-50-amd64 SMP preempt mod_unload "),
        )
        .expect_err("reference differs");
        assert!(
            err.to_string().contains(
                "differs from the pending (installed, not running) kernel's own modules'"
            ),
            "{err}"
        );
    }

    #[test]
    fn full_vermagic_must_equal_the_in_tree_reference() {
        let m = module("example_driver", VM, "");
        check_vermagic(&m, TargetKernel::running("6.1.0-47-amd64"), Some(VM)).expect("identical");
        let err = check_vermagic(
            &m,
            TargetKernel::running("6.1.0-47-amd64"),
            Some("6.1.0-47-amd64 SMP mod_unload modversions "),
        )
        .expect_err("preempt differs");
        assert!(err.to_string().contains("differs"), "{err}");
        // A prefix that only looks like the release is not accepted.
        let m = module("x", "6.1.0-47-amd64-custom SMP", "");
        assert!(check_vermagic(&m, TargetKernel::running("6.1.0-47-amd64"), None).is_err());
    }

    #[test]
    fn dependencies_come_first_and_order_is_stable() {
        let order = load_order(&[
            ("c".to_owned(), vec!["b".to_owned(), "virtio".to_owned()]),
            ("a".to_owned(), vec![]),
            ("b".to_owned(), vec!["a".to_owned()]),
            ("d".to_owned(), vec![]),
        ])
        .expect("acyclic");
        assert_eq!(order, vec!["a", "d", "b", "c"]);
    }

    #[test]
    fn cycles_are_refused_with_their_members() {
        let err = load_order(&[
            ("a".to_owned(), vec!["b".to_owned()]),
            ("b".to_owned(), vec!["a".to_owned()]),
            ("c".to_owned(), vec![]),
        ])
        .expect_err("cycle");
        assert!(err.to_string().starts_with("module a, b:"), "{err}");
    }

    #[test]
    fn depends_must_be_satisfiable() {
        let host = Host {
            loaded: vec!["virtio"],
            available: vec!["virtio_ring"],
        };
        let ok = check_and_order(
            vec![
                module("top", VM, "helper,virtio,virtio_ring"),
                module("helper", VM, ""),
            ],
            Arch::X86_64,
            TargetKernel::running("6.1.0-47-amd64"),
            Some(VM),
            &host,
        )
        .expect("all satisfiable");
        assert_eq!(
            ok.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            vec!["helper", "top"]
        );
        let err = check_and_order(
            vec![module("top", VM, "nosuch,virtio")],
            Arch::X86_64,
            TargetKernel::running("6.1.0-47-amd64"),
            None,
            &host,
        )
        .expect_err("missing dependency");
        assert!(
            err.to_string().contains("nosuch") && !err.to_string().contains("virtio,"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_modules_are_refused() {
        let err = check_and_order(
            vec![module("x", VM, ""), module("x", VM, "")],
            Arch::X86_64,
            TargetKernel::running("6.1.0-47-amd64"),
            None,
            &no_host(),
        )
        .expect_err("duplicate");
        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[test]
    fn module_file_name_must_agree_with_modinfo_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = tiny_module(
            &modinfo_bytes(&["name=other", &format!("vermagic={VM}")]),
            goblin::elf::header::ET_REL,
        );
        let path = dir.path().join("example_driver.ko");
        std::fs::write(&path, &image).expect("write");
        let err = PackageModule::read(&path).expect_err("name mismatch");
        assert!(err.to_string().contains("\"other\""), "{err}");
        let image = tiny_module(
            &modinfo_bytes(&[&format!("vermagic={VM}")]),
            goblin::elf::header::ET_REL,
        );
        std::fs::write(&path, &image).expect("write");
        let err = PackageModule::read(&path).expect_err("no name");
        assert!(err.to_string().contains("name="), "{err}");
    }
}
