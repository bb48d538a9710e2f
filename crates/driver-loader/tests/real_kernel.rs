//! The loader's package and module handling on a real Debian kernel package: `linux-image-6.1.0-47-amd64`
//! (about 70 MB, downloaded once through testkit's isolated apt). `driver-loader extract` must produce
//! exactly what `dpkg-deb -x` produces (paths, bytes, permission modes, link targets), `--ko-only`
//! exactly its modules, `inspect` and the modinfo parser must read what modinfo(8) reads (the
//! `.modinfo` fields and the signer, key and digest of Debian's module signature), and the
//! modules.dep index must load a module's dependencies in the order `modprobe --show-depends` does.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use driver_loader::compat::HostModules;
use driver_loader::kernel::HostModuleIndex;
use driver_loader::modinfo::ModInfo;
use kernel_id::Arch;

const RELEASE: &str = "6.1.0-47-amd64";

fn loader() -> Command {
    Command::new(env!("CARGO_BIN_EXE_driver-loader"))
}

/// What the comparison with `dpkg-deb -x` looks at for one entry: its kind, its permission bits
/// (setuid, setgid and sticky included, so a dropped bit shows), the SHA-256 of a file's bytes and a
/// symlink's target.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        size: u64,
        sha256: String,
    },
    Symlink {
        target: PathBuf,
    },
}

impl Entry {
    fn is_file(&self) -> bool {
        matches!(self, Entry::File { .. })
    }
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Dir { mode } => write!(f, "directory {mode:04o}"),
            Entry::File { mode, size, sha256 } => {
                write!(f, "file {mode:04o} {size} bytes sha256 {sha256}")
            }
            Entry::Symlink { target } => write!(f, "symlink to {}", target.display()),
        }
    }
}

fn sha256_of(path: &Path) -> String {
    integrity::sha256_file(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_hex()
}

/// path -> entry for everything below `root`.
fn tree(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            let relative = path.strip_prefix(root).expect("below root").to_path_buf();
            let mode = meta.permissions().mode() & 0o7777;
            let entry = if meta.is_dir() {
                stack.push(path);
                Entry::Dir { mode }
            } else if meta.file_type().is_symlink() {
                Entry::Symlink {
                    target: std::fs::read_link(&path).expect("readlink"),
                }
            } else {
                assert!(
                    meta.is_file(),
                    "{}: neither file, directory nor symlink",
                    path.display()
                );
                Entry::File {
                    mode,
                    size: meta.len(),
                    sha256: sha256_of(&path),
                }
            };
            out.insert(relative, entry);
        }
    }
    out
}

/// The first few entries that differ between two trees, both sides shown.
fn differences(ours: &BTreeMap<PathBuf, Entry>, theirs: &BTreeMap<PathBuf, Entry>) -> Vec<String> {
    let mut keys: Vec<&PathBuf> = ours.keys().chain(theirs.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| ours.get(*k) != theirs.get(*k))
        .take(5)
        .map(|k| {
            let show = |e: Option<&Entry>| e.map_or("absent".to_owned(), Entry::to_string);
            format!(
                "{}: loader {}, dpkg-deb {}",
                k.display(),
                show(ours.get(k)),
                show(theirs.get(k))
            )
        })
        .collect()
}

#[test]
fn extract_matches_dpkg_deb_on_a_real_linux_image_package() {
    let deb =
        testkit::download_deb(&format!("linux-image-{RELEASE}"), None).expect("linux-image .deb");
    let dir = tempfile::tempdir().expect("tempdir");
    let ours = dir.path().join("loader");
    let theirs = dir.path().join("dpkg");
    let out = loader()
        .arg("extract")
        .arg(&deb)
        .arg("--to")
        .arg(&ours)
        .output()
        .expect("run extract");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::create_dir_all(&theirs).expect("mkdir");
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&theirs)
        .status()
        .expect("dpkg-deb");
    assert!(status.success());
    let (a, b) = (tree(&ours), tree(&theirs));
    assert!(
        a.len() > 1000,
        "a kernel package holds thousands of entries, got {}",
        a.len()
    );
    let differing = differences(&a, &b);
    assert!(
        differing.is_empty(),
        "driver-loader extract and dpkg-deb -x disagree:\n{}",
        differing.join("\n")
    );

    // --ko-only: exactly the package's module files, byte for byte and mode for mode.
    let modules_only = dir.path().join("ko");
    let out = loader()
        .arg("extract")
        .arg(&deb)
        .arg("--to")
        .arg(&modules_only)
        .arg("--ko-only")
        .output()
        .expect("run extract --ko-only");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let is_module = |p: &Path| {
        driver_package::is_kernel_module_name(&p.file_name().unwrap_or_default().to_string_lossy())
    };
    let expected: BTreeMap<PathBuf, Entry> = b
        .iter()
        .filter(|(p, v)| v.is_file() && is_module(p))
        .map(|(p, v)| (p.clone(), v.clone()))
        .collect();
    let got: BTreeMap<PathBuf, Entry> = tree(&modules_only)
        .into_iter()
        .filter(|(_, v)| !matches!(v, Entry::Dir { .. }))
        .collect();
    assert!(!expected.is_empty());
    let differing = differences(&got, &expected);
    assert!(
        differing.is_empty(),
        "driver-loader extract --ko-only and the modules of dpkg-deb -x disagree:\n{}",
        differing.join("\n")
    );
}

#[test]
fn real_modules_are_read_like_modinfo_and_modprobe_read_them() {
    let kernel = testkit::KernelImage::fetch(RELEASE, Arch::X86_64).expect("kernel");
    let virtio_net = kernel.module("virtio_net").expect("virtio_net").path;

    let out = loader()
        .arg("inspect")
        .arg(&virtio_net)
        .output()
        .expect("inspect");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "vermagic:       {RELEASE} SMP preempt mod_unload modversions"
        )),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l == "name:           virtio_net"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("depends:") && l.contains("net_failover")),
        "{text}"
    );

    // Debian's build signed the module (sign-file, the build-time key): `inspect` names the signer,
    // the key and the digest exactly as modinfo(8) does.
    for field in ["signer", "sig_key", "sig_hashalgo"] {
        let out = Command::new("modinfo")
            .args(["-F", field])
            .arg(&virtio_net)
            .output()
            .expect("modinfo (kmod) must be installed");
        let theirs = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            !theirs.is_empty(),
            "modinfo shows the {field} of a Debian module"
        );
        let expected = format!("{:<16}{theirs}", format!("{field}:"));
        assert!(
            text.lines().any(|l| l == expected),
            "{expected:?} (modinfo) in:\n{text}"
        );
    }

    let (info, image) = ModInfo::from_file(&virtio_net).expect("modinfo");
    assert!(image.starts_with(b"\x7fELF"));
    assert_eq!(info.name(), Some("virtio_net"));
    assert!(info.get_all("alias").count() >= 1);
    // What modinfo(8) says must be what we parse; kmod is part of the test environment (.ci/run
    // installs it), so its absence is a failure, not a reason to compare nothing.
    let mut fields: Vec<&str> = info
        .entries()
        .iter()
        .map(|(key, _)| key.as_str())
        // modinfo(8) prints parmtype merged into parm, so neither is a raw .modinfo value there.
        .filter(|key| !matches!(*key, "parm" | "parmtype"))
        .collect();
    fields.sort_unstable();
    fields.dedup();
    for needed in ["vermagic", "name", "depends", "alias"] {
        assert!(fields.contains(&needed), "{needed} in {fields:?}");
    }
    for field in fields {
        let out = Command::new("modinfo")
            .args(["-F", field])
            .arg(&virtio_net)
            .output()
            .expect("modinfo (kmod) must be installed");
        assert!(
            out.status.success(),
            "modinfo -F {field} {}: {}",
            virtio_net.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        let ours: Vec<String> = info.get_all(field).map(str::to_owned).collect();
        assert_eq!(ours, theirs, "{field}: our parser vs modinfo(8)");
    }

    let index = HostModuleIndex::load(kernel.modules_dir(), Path::new("/nonexistent-sys"));
    let (_, reference) = index.reference_vermagic().expect("in-tree reference");
    assert_eq!(reference, info.vermagic().expect("vermagic"));
    let chain = index
        .load_chain("virtio_net")
        .expect("virtio_net in modules.dep");
    let names: Vec<String> = chain
        .iter()
        .filter_map(|p| {
            driver_loader::modinfo::module_name_from_file_name(&p.file_name()?.to_string_lossy())
        })
        .collect();
    let position = |n: &str| {
        names
            .iter()
            .position(|x| x == n)
            .unwrap_or_else(|| panic!("{n} in {names:?}"))
    };
    assert!(
        position("failover") < position("net_failover")
            && position("net_failover") < position("virtio_net")
    );

    // The judge of the order is modprobe itself, reading the same tree; an empty configuration
    // directory keeps the host's /etc/modprobe.d (softdeps, options) out of the comparison.
    assert!(
        kernel.modules_dir().join("modules.dep").is_file(),
        "testkit runs depmod -b when it unpacks the kernel"
    );
    let no_config = tempfile::tempdir().expect("tempdir");
    let out = Command::new("modprobe")
        .arg("-C")
        .arg(no_config.path())
        .arg("-d")
        .arg(kernel.root())
        .args(["-S", RELEASE, "--show-depends", "virtio_net"])
        .output()
        .expect("modprobe (kmod) must be installed");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "modprobe --show-depends virtio_net: {}\n{shown}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `insmod <path> [options]` for each file to load, `builtin <name>` for what needs no loading.
    let modprobe_order: Vec<PathBuf> = shown
        .lines()
        .filter_map(
            |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["insmod", path, ..] => Some(std::fs::canonicalize(path).expect("modprobe's path")),
                ["builtin", _] => None,
                _ => panic!("unexpected modprobe --show-depends line: {line:?}"),
            },
        )
        .collect();
    let loader_order: Vec<PathBuf> = chain
        .iter()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect();
    assert_eq!(
        loader_order, modprobe_order,
        "load_chain(virtio_net) vs modprobe --show-depends"
    );
    assert!(index.is_available("virtio_net") && !index.is_available("example_driver"));
}
