//! Property: any valid spec written as .deb or .rpm (every compression) reads back with exactly the
//! files, bytes and modes it was written with, the package lists the parent directories, and its
//! metadata (name, architecture, source commit) reads back too.

mod common;

use driver_package::{
    Compression, EntryKind, ExtractOptions, FileContent, Limits, PackageFile, PackageFormat,
    PackageSpec, WriteOptions,
};
use kernel_id::KernelRelease;
use proptest::prelude::*;

fn files_strategy() -> impl Strategy<Value = Vec<(String, Vec<u8>, u32)>> {
    prop::collection::btree_map(
        "[a-z0-9_]{1,12}\\.ko(\\.zst|\\.xz|\\.gz)?",
        (
            prop::collection::vec(any::<u8>(), 0..3000),
            prop::sample::select(vec![0o644u32, 0o600, 0o755, 0o444]),
        ),
        1..5,
    )
    .prop_map(|map| {
        map.into_iter()
            .map(|(name, (bytes, mode))| (name, bytes, mode))
            .collect()
    })
}

fn spec(format: PackageFormat, files: &[(String, Vec<u8>, u32)], subdir: bool) -> PackageSpec {
    let base = if subdir {
        "/lib/modules/6.1.0-47-amd64/updates/prop-driver/sub"
    } else {
        "/lib/modules/6.1.0-47-amd64/updates/prop-driver"
    };
    PackageSpec {
        format,
        name: "prop-driver-6.1.0-47-amd64".into(),
        version: "1.2.3~rc.1".into(),
        architecture: match format {
            PackageFormat::Deb => "amd64".into(),
            PackageFormat::Rpm => "x86_64".into(),
        },
        summary: "property test package".into(),
        description: "Written and read back by the round-trip property test.".into(),
        maintainer: "Prop Test <prop@example.com>".into(),
        license: "GPL-2.0-only".into(),
        kernel_release: KernelRelease::parse("6.1.0-47-amd64").expect("release"),
        files: files
            .iter()
            .map(|(name, bytes, mode)| PackageFile {
                install_path: format!("{base}/{name}"),
                content: FileContent::Bytes(bytes.clone()),
                mode: *mode,
            })
            .collect(),
        source_date_epoch: 1_700_000_000,
        source_commit: Some(
            kernel_id::SourceCommit::parse(&"ab".repeat(32)).expect("a SHA-256 commit id"),
        ),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn write_then_read_round_trips(
        files in files_strategy(),
        format in prop::sample::select(vec![PackageFormat::Deb, PackageFormat::Rpm]),
        compression in prop::sample::select(vec![Compression::None, Compression::Gzip, Compression::Xz, Compression::Zstd]),
        subdir in any::<bool>(),
    ) {
        let spec = spec(format, &files, subdir);
        let mut package = Vec::new();
        driver_package::write_package(&spec, WriteOptions { compression }, &mut package).expect("write");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pkg");
        std::fs::write(&path, &package).expect("package file");
        prop_assert_eq!(driver_package::detect_format(&path).expect("format"), format);
        let metadata = driver_package::read_metadata(&path).expect("metadata");
        prop_assert_eq!(&metadata.name, &spec.name);
        prop_assert_eq!(&metadata.architecture, &spec.architecture);
        prop_assert_eq!(
            metadata.source_commit.as_deref(),
            spec.source_commit.as_ref().map(|c| c.as_str())
        );

        let listed = driver_package::list(&path, &Limits::default()).expect("list");
        for file in &spec.files {
            let rel = file.install_path.trim_start_matches('/');
            let entry = listed.iter().find(|e| e.path.to_str() == Some(rel)).expect("listed");
            prop_assert_eq!(&entry.kind, &EntryKind::File);
            prop_assert_eq!(entry.mode, file.mode);
        }

        let target = dir.path().join("out");
        driver_package::extract(&path, &target, &ExtractOptions::default()).expect("extract");
        for (file, (_, bytes, mode)) in spec.files.iter().zip(&files) {
            let on_disk = target.join(file.install_path.trim_start_matches('/'));
            prop_assert_eq!(&std::fs::read(&on_disk).expect("read back"), bytes);
            let actual = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&on_disk).expect("meta").permissions());
            prop_assert_eq!(actual & 0o777, *mode);
        }
    }
}
