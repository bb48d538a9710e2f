//! What a build observed inside its root, written by `driver-builder` next to the package and read
//! by whoever signs the provenance (the service for local builds, the workflow's signing step on
//! GitHub). These are the inputs only the build root can see: which header packages were installed
//! (and the digest of each package file as downloaded) and which compiler built the module. What
//! the signer knows better itself — the source commit, the root image, the builder, the times — is
//! not taken from here.

use serde::{Deserialize, Serialize};

/// The facts file's name in the builder's output directory. It is an input of the provenance, not a
/// published artifact.
pub const BUILD_FACTS_FILE: &str = "build-facts.json";

/// Facts observed by the builder inside the build root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildFacts {
    /// Every kernel header package installed for this build, in install order.
    pub headers: Vec<HeaderPackage>,
    /// The compiler that built the module.
    pub compiler: CompilerFacts,
}

/// One installed kernel header package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderPackage {
    /// The package name, e.g. `linux-headers-6.1.0-47-amd64`.
    pub name: String,
    /// The package version, e.g. `6.1.188-1`.
    pub version: String,
    /// The package file's name as downloaded (`.deb` or `.rpm`).
    pub file_name: String,
    /// Where it was fetched from, when the source knows one (mirror URL, Koji URL).
    pub uri: Option<String>,
    /// SHA-256 of the package file (64 lowercase hex digits).
    pub sha256: String,
}

/// The compiler of a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompilerFacts {
    /// The compiler command, e.g. `gcc-12`.
    pub name: String,
    /// The headers' `CONFIG_CC_VERSION_TEXT`: the compiler the kernel itself was built with.
    pub kernel_cc_version_text: String,
    /// The first line of the root's own `<compiler> --version`.
    pub root_version_report: String,
}

/// The clean root a build ran in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootImage {
    /// What the root is, e.g. `mmdebstrap:debian/bookworm/amd64` or an OCI image reference.
    pub uri: String,
    /// SHA-256 of the root tarball (local builds) or the image manifest digest (containers).
    pub sha256: String,
}
