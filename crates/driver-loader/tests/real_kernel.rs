//! The loader's package and module handling on a real Debian kernel package: `linux-image-6.1.0-47-amd64`
//! (about 70 MB, downloaded once through testkit's isolated apt). `driver-loader extract` must produce
//! exactly what `dpkg-deb -x` produces, `--ko-only` exactly its modules, and `inspect`, the modinfo
//! parser and the modules.dep index must read the real modules the way the kernel and modprobe do.

use std::collections::BTreeMap;
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

/// path -> (kind, size, link target) for every entry below `root`; file contents are compared separately
/// (byte equality is much cheaper than hashing 400 MB in a debug build).
fn tree(root: &Path) -> BTreeMap<PathBuf, (char, u64, Option<PathBuf>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            let relative = path.strip_prefix(root).expect("below root").to_path_buf();
            if meta.is_dir() {
                out.insert(relative, ('d', 0, None));
                stack.push(path);
            } else if meta.file_type().is_symlink() {
                out.insert(
                    relative,
                    ('l', 0, Some(std::fs::read_link(&path).expect("readlink"))),
                );
            } else {
                out.insert(relative, ('f', meta.len(), None));
            }
        }
    }
    out
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
    let only_ours: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).take(5).collect();
    let only_theirs: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).take(5).collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "{only_ours:?} / {only_theirs:?}"
    );
    let differing: Vec<_> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, _)| k)
        .take(5)
        .collect();
    assert!(differing.is_empty(), "contents differ: {differing:?}");

    // --ko-only: exactly the package's module files.
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
    let expected: Vec<_> = b
        .iter()
        .filter(|(p, v)| v.0 == 'f' && is_module(p))
        .map(|(p, _)| p.clone())
        .collect();
    let got: Vec<_> = tree(&modules_only)
        .into_iter()
        .filter(|(_, v)| v.0 != 'd')
        .map(|(p, _)| p)
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(got, expected);
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

    let (info, image) = ModInfo::from_file(&virtio_net).expect("modinfo");
    assert!(image.starts_with(b"\x7fELF"));
    assert_eq!(info.name(), Some("virtio_net"));
    assert!(info.get_all("alias").count() >= 1);
    // What modinfo(8) says must be what we parse.
    if let Ok(out) = Command::new("modinfo")
        .args(["-F", "vermagic"])
        .arg(&virtio_net)
        .output()
        && out.status.success()
    {
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim_end(),
            info.vermagic().expect("vermagic").trim_end()
        );
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
    assert!(index.is_available("virtio_net") && !index.is_available("example_driver"));
}
