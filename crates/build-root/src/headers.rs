//! The host's header package cache: the packages a kernel's header install took, kept by what
//! they are so every later build of that kernel, whatever the driver version, installs the same
//! files without the mirror.
//!
//! One directory per (distribution, distro version, architecture, kernel release):
//! `<roots dir>/headers/<distribution>/<version>/<arch>/<release>/`, holding each package file
//! named by its SHA-256 (`<sha256>.deb`) and [`MANIFEST`], the packages in install order as
//! `integrity::HeaderPackage` entries (name, version, the file name apt gave it, its archive URI and
//! SHA-256) — exactly the `headers` of the `build-facts.json` of the build that downloaded them.
//! The executor bind-mounts it read-only into the root at [`HEADER_CACHE_DIR`]; the builder
//! (`--header-cache`) checks every file against its name and manifest digest before installing
//! from it and records the same facts a download would have.
//!
//! Filled after a successful build whose header packages came from apt's archive: each file the
//! facts name is taken from the root's apt archive (`/var/cache/apt/archives`, where apt, or the
//! builder fetching apt's plan itself, leaves a download only once it matched the archive index's
//! SHA-256), and accepted only when the facts carry its archive URI (so the builder checked its
//! digest against the index) and the copy hashes to the recorded SHA-256. The directory is written under a temporary name and renamed into place; an existing one
//! is replaced only when one of its files no longer matches its digest or the build downloaded a
//! different set (the cached one no longer installed in a remade base image), and never trusted
//! without that check.

use std::path::{Component, Path, PathBuf};

use integrity::HeaderPackage;
use kernel_id::KernelIdentity;

use crate::error::{BuildRootError, Result};
use crate::layers;

/// Where, under the roots directory, the header cache lives.
pub const HEADERS_DIR: &str = "headers";
/// The manifest in each release's directory.
pub const MANIFEST: &str = "packages.json";
/// Where the release's cache directory is mounted (read-only) inside every build root.
pub const HEADER_CACHE_DIR: &str = "/build/header-cache";
/// apt's download directory inside a root, relative to the root.
const APT_ARCHIVES: &str = "var/cache/apt/archives";

/// The header cache of one executor.
#[derive(Debug, Clone)]
pub struct HeaderCache {
    dir: PathBuf,
}

/// What [`HeaderCache::store`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// The release's packages were cached now.
    New(PathBuf),
    /// The cache held them already, every file matching its digest.
    Unchanged(PathBuf),
    /// The cached directory had a file that no longer matched its digest, or held another set of
    /// packages than the one this build downloaded, and was replaced.
    Repaired {
        /// The release's directory.
        dir: PathBuf,
        /// What was wrong with the old one.
        reason: String,
    },
    /// Nothing to cache: the build's header packages did not come from apt's archive.
    Skipped(String),
}

impl HeaderCache {
    /// The cache under `roots_dir`.
    pub fn new(roots_dir: &Path) -> Self {
        Self {
            dir: roots_dir.join(HEADERS_DIR),
        }
    }

    /// The directory for `identity`'s kernel: `<distribution>/<version>/<arch>/<release>`. Every
    /// part is validated by kernel-id (no `/`, no `..`), and checked again here to be one plain
    /// path component.
    pub fn release_dir(&self, identity: &KernelIdentity) -> Result<PathBuf> {
        let parts = [
            identity.distribution().as_str(),
            identity.distro_version().as_str(),
            identity.arch().as_str(),
            identity.kernel_release().as_str(),
        ];
        let mut dir = self.dir.clone();
        for part in parts {
            let mut components = Path::new(part).components();
            match (components.next(), components.next()) {
                (Some(Component::Normal(_)), None) => dir.push(part),
                _ => {
                    return Err(BuildRootError::Io {
                        context: format!("naming the header cache directory of {part:?}"),
                        source: std::io::Error::other("not a single plain path component"),
                    });
                }
            }
        }
        Ok(dir)
    }

    /// The release's directory when it has a manifest (its files are checked by whoever installs
    /// them, and by [`HeaderCache::store`] before it keeps a directory).
    pub fn lookup(&self, identity: &KernelIdentity) -> Result<Option<PathBuf>> {
        let dir = self.release_dir(identity)?;
        Ok(dir.join(MANIFEST).is_file().then_some(dir))
    }

    /// Caches the header packages a successful build installed (`facts`, the `headers` of its
    /// `build-facts.json`) from `root`'s apt archive (`root` is the root's host path). See the
    /// module documentation for what is checked.
    pub fn store(
        &self,
        identity: &KernelIdentity,
        facts: &[HeaderPackage],
        root: &Path,
    ) -> Result<Stored> {
        if facts.is_empty() {
            return Ok(Stored::Skipped(
                "the build recorded no header packages".to_owned(),
            ));
        }
        let archives = root.join(APT_ARCHIVES);
        for package in facts {
            if let Some(reason) = unusable(package, &archives) {
                return Ok(Stored::Skipped(reason));
            }
        }
        let dir = self.release_dir(identity)?;
        let parent = dir.parent().unwrap_or(&self.dir).to_owned();
        // One writer per release at a time; readers never need the lock (directories are
        // complete when they appear, and replaced by rename).
        let _lock = layers::lock_exclusive(
            &parent.join(format!(".{}.lock", identity.kernel_release().as_str())),
        )?;
        let release = identity.kernel_release().as_str();
        let mut repaired = None;
        if dir.exists() {
            match verify(&dir) {
                Ok(cached) if same_packages(&cached, facts) => return Ok(Stored::Unchanged(dir)),
                // The build downloaded another set for this kernel: the cached one no longer
                // installs in this base image (a remade image resolves other dependencies).
                Ok(_) => {
                    repaired = Some(
                        "this build installed another set of packages for the kernel".to_owned(),
                    );
                }
                Err(reason) => repaired = Some(reason),
            }
        }
        // Fixed names: the release's lock makes this the only writer, and a leftover of a killed
        // one is simply removed.
        let fresh = parent.join(format!(".new-{release}"));
        let trash = parent.join(format!(".trash-{release}"));
        for leftover in [&fresh, &trash] {
            let _ = std::fs::remove_dir_all(leftover);
        }
        std::fs::create_dir_all(&fresh)
            .map_err(BuildRootError::io(format!("creating {}", fresh.display())))?;
        if let Err(error) = fill(&fresh, facts, &archives) {
            let _ = std::fs::remove_dir_all(&fresh);
            return Err(error);
        }
        if repaired.is_some() {
            std::fs::rename(&dir, &trash).map_err(BuildRootError::io(format!(
                "moving {} aside",
                dir.display()
            )))?;
            let _ = std::fs::remove_dir_all(&trash);
        }
        std::fs::rename(&fresh, &dir).map_err(BuildRootError::io(format!(
            "renaming {} to {}",
            fresh.display(),
            dir.display()
        )))?;
        Ok(match repaired {
            Some(reason) => Stored::Repaired { dir, reason },
            None => Stored::New(dir),
        })
    }
}

/// Why a recorded package cannot be cached from the root's apt archive, if it cannot.
fn unusable(package: &HeaderPackage, archives: &Path) -> Option<String> {
    if package.uri.is_none() {
        return Some(format!(
            "{} {} has no archive URI in the build facts, so its digest was not checked against \
             the archive index",
            package.name, package.version
        ));
    }
    if !is_plain_file_name(&package.file_name) || !is_sha256(&package.sha256) {
        return Some(format!(
            "{} {}: file name {:?} or SHA-256 {:?} is malformed",
            package.name, package.version, package.file_name, package.sha256
        ));
    }
    if !archives.join(&package.file_name).is_file() {
        return Some(format!(
            "{} is not in the root's apt archive (installed from the header cache, or by a \
             source other than apt)",
            package.file_name
        ));
    }
    None
}

/// Copies each package file into `into` as `<sha256>.deb`, checking the copy's digest, then writes
/// the manifest.
fn fill(into: &Path, facts: &[HeaderPackage], archives: &Path) -> Result<()> {
    for package in facts {
        let source = archives.join(&package.file_name);
        let target = into.join(format!("{}.deb", package.sha256));
        if target.exists() {
            continue;
        }
        std::fs::copy(&source, &target).map_err(BuildRootError::io(format!(
            "copying {} to {}",
            source.display(),
            target.display()
        )))?;
        let digest = integrity::sha256_file(&target)
            .map_err(BuildRootError::io(format!("hashing {}", target.display())))?
            .to_hex();
        if digest != package.sha256 {
            return Err(BuildRootError::Io {
                context: format!("caching {}", source.display()),
                source: std::io::Error::other(format!(
                    "its SHA-256 is {digest}, not the {} the build recorded for {} {}",
                    package.sha256, package.name, package.version
                )),
            });
        }
    }
    let manifest = into.join(MANIFEST);
    let json = serde_json::to_vec_pretty(facts).map_err(|error| BuildRootError::Io {
        context: format!("serializing {}", manifest.display()),
        source: std::io::Error::other(error),
    })?;
    std::fs::write(&manifest, json).map_err(BuildRootError::io(format!(
        "writing {}",
        manifest.display()
    )))
}

/// Reads a release directory's manifest and checks every file it names against its digest.
pub fn verify(dir: &Path) -> std::result::Result<Vec<HeaderPackage>, String> {
    let manifest = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&manifest)
        .map_err(|error| format!("reading {}: {error}", manifest.display()))?;
    let packages: Vec<HeaderPackage> =
        serde_json::from_str(&text).map_err(|error| format!("{}: {error}", manifest.display()))?;
    for package in &packages {
        if !is_sha256(&package.sha256) {
            return Err(format!(
                "{}: {} has a malformed SHA-256 {:?}",
                manifest.display(),
                package.name,
                package.sha256
            ));
        }
        let file = dir.join(format!("{}.deb", package.sha256));
        let digest = integrity::sha256_file(&file)
            .map_err(|error| format!("hashing {}: {error}", file.display()))?
            .to_hex();
        if digest != package.sha256 {
            return Err(format!(
                "{} hashes to {digest}, not its name's digest",
                file.display()
            ));
        }
    }
    Ok(packages)
}

/// The same packages in the same versions with the same digests, in any order.
fn same_packages(a: &[HeaderPackage], b: &[HeaderPackage]) -> bool {
    let key = |p: &HeaderPackage| (p.name.clone(), p.version.clone(), p.sha256.clone());
    let mut a: Vec<_> = a.iter().map(key).collect();
    let mut b: Vec<_> = b.iter().map(key).collect();
    a.sort();
    b.sort();
    a == b
}

fn is_sha256(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A file name apt could have given a package: one component of `[A-Za-z0-9._+~%:-]`, not hidden.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+~%:-".contains(c))
}

#[cfg(test)]
mod tests {
    use kernel_id::IdentityInput;
    use sha2::{Digest, Sha256};

    use super::*;

    fn identity() -> KernelIdentity {
        KernelIdentity::from_input(&IdentityInput {
            kernel_version: "6.1.0-57-amd64".to_owned(),
            architecture: "x86_64".to_owned(),
            distribution: "debian".to_owned(),
            distro_version: Some("12".to_owned()),
            driver_version: "v0.1.2".to_owned(),
        })
        .expect("identity")
    }

    /// A root whose apt archive holds two packages, and their facts.
    fn root_with_downloads(dir: &Path) -> (PathBuf, Vec<HeaderPackage>) {
        let root = dir.join("root");
        let archives = root.join(APT_ARCHIVES);
        std::fs::create_dir_all(&archives).expect("mkdir");
        let facts = [
            (
                "linux-headers-6.1.0-57-common",
                "6.1.192-3",
                "all",
                b"common".as_slice(),
            ),
            (
                "linux-headers-6.1.0-57-amd64",
                "6.1.192-3",
                "amd64",
                b"amd64".as_slice(),
            ),
        ]
        .map(|(name, version, arch, content)| {
            let file_name = format!("{name}_{version}_{arch}.deb");
            std::fs::write(archives.join(&file_name), content).expect("write");
            HeaderPackage {
                name: name.to_owned(),
                version: version.to_owned(),
                uri: Some(format!(
                    "http://deb.debian.org/debian/pool/main/l/linux/{file_name}"
                )),
                file_name,
                sha256: hex::encode(Sha256::digest(content)),
            }
        })
        .to_vec();
        (root, facts)
    }

    #[test]
    fn packages_are_stored_by_digest_with_the_facts_as_manifest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (root, facts) = root_with_downloads(dir.path());
        let cache = HeaderCache::new(&dir.path().join("roots"));
        assert_eq!(cache.lookup(&identity()).expect("lookup"), None);
        let stored = cache.store(&identity(), &facts, &root).expect("store");
        let release = dir
            .path()
            .join("roots/headers/debian/12/x86_64/6.1.0-57-amd64");
        assert_eq!(stored, Stored::New(release.clone()));
        assert_eq!(
            cache.lookup(&identity()).expect("lookup"),
            Some(release.clone())
        );
        for package in &facts {
            assert!(release.join(format!("{}.deb", package.sha256)).is_file());
        }
        assert_eq!(verify(&release).expect("verifies"), facts);
        assert_eq!(
            cache.store(&identity(), &facts, &root).expect("again"),
            Stored::Unchanged(release.clone())
        );
    }

    #[test]
    fn a_corrupted_cache_is_replaced_and_a_corrupted_download_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (root, facts) = root_with_downloads(dir.path());
        let cache = HeaderCache::new(&dir.path().join("roots"));
        cache.store(&identity(), &facts, &root).expect("store");
        let release = cache.release_dir(&identity()).expect("dir");
        let cached = release.join(format!("{}.deb", facts[0].sha256));
        std::fs::write(&cached, b"tampered").expect("tamper");
        let error = verify(&release).expect_err("tampered");
        assert!(error.contains("hashes to"), "{error}");
        let stored = cache.store(&identity(), &facts, &root).expect("repair");
        assert!(matches!(stored, Stored::Repaired { .. }), "{stored:?}");
        assert_eq!(verify(&release).expect("repaired"), facts);

        // A download that no longer matches what the build recorded is never cached.
        std::fs::remove_dir_all(&release).expect("clear");
        std::fs::write(root.join(APT_ARCHIVES).join(&facts[1].file_name), b"other").expect("w");
        let error = cache
            .store(&identity(), &facts, &root)
            .expect_err("mismatch");
        assert!(error.to_string().contains("not the"), "{error}");
        assert_eq!(cache.lookup(&identity()).expect("lookup"), None);
        let parent = release.parent().expect("parent");
        let leftovers: Vec<_> = std::fs::read_dir(parent)
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn packages_apt_did_not_download_are_not_cached() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (root, mut facts) = root_with_downloads(dir.path());
        let cache = HeaderCache::new(&dir.path().join("roots"));
        facts[0].uri = None;
        assert!(matches!(
            cache.store(&identity(), &facts, &root).expect("store"),
            Stored::Skipped(reason) if reason.contains("archive URI")
        ));
        facts[0].uri = Some("http://x/a.deb".to_owned());
        facts[1].file_name = "../../etc/passwd".to_owned();
        assert!(matches!(
            cache.store(&identity(), &facts, &root).expect("store"),
            Stored::Skipped(reason) if reason.contains("malformed")
        ));
        facts[1].file_name = "missing_1_amd64.deb".to_owned();
        assert!(matches!(
            cache.store(&identity(), &facts, &root).expect("store"),
            Stored::Skipped(reason) if reason.contains("not in the root's apt archive")
        ));
        assert!(matches!(
            cache.store(&identity(), &[], &root).expect("store"),
            Stored::Skipped(_)
        ));
        assert_eq!(cache.lookup(&identity()).expect("lookup"), None);
    }
}
