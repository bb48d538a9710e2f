//! The private apt configuration against the real Debian mirrors: every covered release and both
//! architectures are reachable, kernel image packages are enumerated with the right suite and
//! Debian version, and downloads are cached.

use std::process::Command;

use kernel_id::Arch;
use testkit::{Suite, download_deb, list_kernel_images};

#[test]
fn kernel_images_span_all_releases_flavors_and_architectures() {
    let amd64 = list_kernel_images(Arch::parse("amd64").expect("arch"), &[]).expect("amd64 list");
    let arm64 = list_kernel_images(Arch::parse("arm64").expect("arch"), &[]).expect("arm64 list");
    eprintln!(
        "reachable kernel images: {} amd64, {} arm64",
        amd64.len(),
        arm64.len()
    );

    let bookworm = amd64
        .iter()
        .find(|image| image.release.as_str() == "6.1.0-47-amd64")
        .expect("6.1.0-47-amd64 is reachable");
    assert_eq!(bookworm.package, "linux-image-6.1.0-47-amd64");
    assert_eq!(bookworm.suite.codename(), "bookworm");
    assert_eq!(bookworm.distro_version.as_str(), "12");

    for (codename, version) in [("bullseye", "11"), ("bookworm", "12"), ("trixie", "13")] {
        for flavor in ["amd64", "cloud-amd64", "rt-amd64"] {
            assert!(
                amd64.iter().any(|image| image.suite.codename() == codename
                    && image.flavor == flavor
                    && image.distro_version.as_str() == version),
                "no {flavor} image from {codename}"
            );
        }
    }
    assert!(
        amd64
            .iter()
            .any(|image| image.release.as_str().contains("+deb12-")),
        "bookworm's 6.12 kernels (+deb12) are listed"
    );
    for image in &amd64 {
        assert!(image.package.starts_with("linux-image-"));
        assert!(!image.package.ends_with("-dbg"));
        assert!(image.release.as_str().ends_with(&image.flavor));
    }
    let release_names: Vec<&str> = amd64.iter().map(|image| image.release.as_str()).collect();
    let mut unique = release_names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), release_names.len(), "one entry per release");

    assert!(
        arm64
            .iter()
            .any(|image| image.release.as_str() == "6.1.0-47-arm64"),
        "6.1.0-47-arm64 is reachable"
    );
    assert!(arm64.iter().all(|image| image.flavor.ends_with("arm64")));

    let security_only = list_kernel_images(
        Arch::parse("amd64").expect("arch"),
        &[Suite::new("trixie-security").expect("suite")],
    )
    .expect("security list");
    assert!(
        security_only
            .iter()
            .all(|image| image.suite.name() == "trixie-security")
    );
}

#[test]
fn download_deb_fetches_foreign_architecture_packages_once() {
    let first = download_deb("busybox-static:arm64", None).expect("busybox-static:arm64");
    let second = download_deb("busybox-static:arm64", None).expect("cached");
    assert_eq!(first, second);
    let output = Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&first)
        .args(["Package", "Architecture"])
        .output()
        .expect("dpkg-deb");
    let fields = String::from_utf8_lossy(&output.stdout);
    assert!(fields.contains("Package: busybox-static"), "{fields}");
    assert!(fields.contains("Architecture: arm64"), "{fields}");
}

#[test]
fn unknown_packages_fail_with_apts_message() {
    let error = download_deb("testkit-no-such-package-here", None).expect_err("does not exist");
    assert!(format!("{error:#}").contains("testkit-no-such-package-here"));
}

/// Debian's newest kernels (trixie-backports) split `linux-image-<release>` into a metapackage
/// plus `linux-binary-<release>` (the kernel, beside its modules) and `linux-modules-<release>`;
/// older ones ship everything in the image package. The newest trixie-backports amd64 kernel the
/// mirror serves must come out as a usable kernel either way: a vmlinuz in the cache's /boot and a
/// modules tree (with modules.builtin) where the fleet's network modules resolve.
#[test]
fn the_newest_backports_kernel_unpacks_whatever_its_packaging() {
    let suite = Suite::new("trixie-backports").expect("suite");
    let images = list_kernel_images(Arch::X86_64, &[suite]).expect("trixie-backports images");
    let newest = images
        .iter()
        .rev()
        .find(|info| info.flavor == "amd64")
        .unwrap_or_else(|| panic!("no amd64 image in trixie-backports: {images:#?}"));
    let kernel = testkit::KernelImage::fetch(newest.release.as_str(), Arch::X86_64)
        .unwrap_or_else(|error| panic!("fetching {}: {error:#}", newest.release));
    assert!(kernel.vmlinuz().is_file(), "{}", kernel.vmlinuz().display());
    let mut image = testkit::Initramfs::new(Arch::X86_64).expect("initramfs");
    let modules = image
        .kernel_modules(&kernel, &["virtio_pci", "virtio_net"])
        .unwrap_or_else(|error| panic!("network modules of {}: {error:#}", newest.release));
    assert!(
        modules
            .iter()
            .any(|m| format!("{m:?}").contains("virtio_net")),
        "{modules:?}"
    );
}
