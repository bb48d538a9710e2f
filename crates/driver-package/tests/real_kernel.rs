//! The real 70 MB Debian `linux-image-6.1.0-47-amd64` package, downloaded once with apt into the test
//! cache: extracting it with this crate yields exactly the tree `dpkg-deb -x` yields, and the
//! kernel-modules-only extraction yields exactly its `.ko` files and nothing else.

mod common;

use std::path::PathBuf;

use driver_package::{ExtractOptions, Limits, PackageFormat, Selection};

#[test]
fn real_kernel_image_extracts_exactly_like_dpkg_deb() {
    let deb = common::real_kernel_deb();
    let reference = common::real_kernel_reference_tree();
    let scratch = tempfile::tempdir().expect("tempdir");
    let ours = scratch.path().join("ours");
    let report = driver_package::extract(&deb, &ours, &ExtractOptions::default())
        .expect("real kernel extracts");
    assert_eq!(report.format, PackageFormat::Deb);
    assert!(
        report.bytes > 300 << 20,
        "a real kernel image is big: {}",
        report.bytes
    );
    common::assert_same_tree(&reference, &ours);
}

#[test]
fn real_kernel_modules_only_extraction() {
    let deb = common::real_kernel_deb();
    let reference = common::real_kernel_reference_tree();
    let mut expected: Vec<PathBuf> = common::snapshot(&reference)
        .into_iter()
        .filter(|(path, node)| {
            matches!(node, common::Node::File { .. })
                && driver_package::is_kernel_module_name(&path.to_string_lossy())
        })
        .map(|(path, _)| path)
        .collect();
    expected.sort();
    assert!(expected.len() > 3000, "{} modules", expected.len());

    let scratch = tempfile::tempdir().expect("tempdir");
    let target = scratch.path().join("modules");
    let options = ExtractOptions {
        limits: Limits::default(),
        selection: Selection::KernelModules,
    };
    let report = driver_package::extract(&deb, &target, &options).expect("modules extract");
    let mut written = report.files.clone();
    written.sort();
    assert_eq!(written, expected);
    // Only the modules and the directories leading to them were written.
    let files_on_disk = common::snapshot(&target)
        .values()
        .filter(|node| !matches!(node, common::Node::Dir { .. }))
        .count();
    assert_eq!(files_on_disk, expected.len());
    // Modules are plain .ko in this kernel: the loader's decompress helper returns them unchanged.
    let module = driver_package::decompress_module_file(&target.join(&written[0]), 64 << 20)
        .expect("module reads");
    assert_eq!(
        module,
        std::fs::read(reference.join(&written[0])).expect("reference module")
    );
}
