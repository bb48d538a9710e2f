//! The build host's header package cache (`--header-cache DIR`; the local executor mounts it
//! read-only): the packages an earlier build of this same kernel installed, each named by its
//! SHA-256 (`<sha256>.deb`), and `packages.json`, their `integrity::HeaderPackage` facts in
//! install order (what that build recorded in `build-facts.json`).
//!
//! Every file is hashed and must match its name and the manifest before anything is installed; one
//! mismatch refuses the whole cache, and the chain goes on to apt (the executor then replaces the
//! cache from that download). The checked files are extracted into the root as a download's are
//! ([`super::direct::extract`]: no dpkg database, no maintainer scripts, no apt, so nothing can
//! reach a mirror), skipping a kernel image an older cache may hold. The facts recorded are the
//! same as a download's: each package's name, version, the file name and archive URI apt gave it,
//! and the SHA-256 of the very file installed (checked just before).

use std::path::{Path, PathBuf};

use integrity::HeaderPackage;

use crate::facts;
use crate::system::CommandLine;

use super::direct::{extract, is_kernel_image};
use super::{HeaderContext, HeaderSource, SourceFailure};

/// The manifest in a cache directory.
pub const MANIFEST: &str = "packages.json";

/// Installs the header packages of the executor's cache for this kernel.
#[derive(Debug, Clone)]
pub struct CachedDebsSource {
    /// The cache directory as seen in the root.
    dir: PathBuf,
}

impl CachedDebsSource {
    pub fn new(dir: PathBuf) -> CachedDebsSource {
        CachedDebsSource { dir }
    }
}

/// Reads the manifest and checks every file against its digest; the guest path and digest of each.
fn verified_files(
    ctx: &HeaderContext<'_>,
    dir: &Path,
) -> Result<Vec<(HeaderPackage, PathBuf)>, SourceFailure> {
    let manifest = ctx.system.host_path(&dir.join(MANIFEST));
    if !manifest.is_file() {
        return Err(SourceFailure::Skipped(format!(
            "no cached header packages for this kernel ({} has no {MANIFEST})",
            dir.display()
        )));
    }
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| SourceFailure::Failed(format!("reading {}: {e}", manifest.display())))?;
    let packages: Vec<HeaderPackage> = serde_json::from_str(&text)
        .map_err(|e| SourceFailure::Failed(format!("{}: {e}", manifest.display())))?;
    if packages.is_empty() {
        return Err(SourceFailure::Skipped(format!(
            "{} lists no packages",
            manifest.display()
        )));
    }
    let mut files = Vec::new();
    for package in packages {
        let well_formed = package.sha256.len() == 64
            && package
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !well_formed {
            return Err(SourceFailure::Failed(format!(
                "{}: {} has a malformed SHA-256 {:?}; refusing the cache",
                manifest.display(),
                package.name,
                package.sha256
            )));
        }
        let guest = dir.join(format!("{}.deb", package.sha256));
        let digest = facts::sha256_hex(&ctx.system.host_path(&guest))
            .map_err(|e| SourceFailure::Failed(format!("{e}; refusing the cache")))?;
        if digest != package.sha256 {
            return Err(SourceFailure::Failed(format!(
                "cached {} ({} {}) hashes to {digest}, not its recorded SHA-256; refusing the cache",
                guest.display(),
                package.name,
                package.version
            )));
        }
        files.push((package, guest));
    }
    Ok(files)
}

/// Refuses the cache when the root already holds one of its packages at another version: the base
/// image was remade since the cache was filled (a point release, a security update), and extracting
/// the cached files, which no solver checks, would put an older library beside its newer siblings.
/// The chain then downloads what apt plans for the root as it is now, and the executor replaces the
/// cache with that.
fn root_has_not_moved(
    ctx: &HeaderContext<'_>,
    files: &[(HeaderPackage, PathBuf)],
) -> Result<(), SourceFailure> {
    let mut args = vec![
        "-W".to_owned(),
        "-f".to_owned(),
        "${Package} ${Version} ${db:Status-Abbrev}\\n".to_owned(),
    ];
    args.extend(files.iter().map(|(package, _)| package.name.clone()));
    // dpkg-query exits 1 when some names are not installed, which is the usual case (the headers
    // themselves); what it prints for the installed ones is what counts.
    let output = ctx
        .system
        .run(&CommandLine::new("dpkg-query", args))
        .map_err(|e| SourceFailure::Failed(e.to_string()))?;
    match moved_packages(&output.stdout, files) {
        moved if moved.is_empty() => Ok(()),
        moved => Err(SourceFailure::Failed(format!(
            "the root holds {} at other versions than the cache; refusing the cache",
            moved.join(", ")
        ))),
    }
}

/// `name installed-version → cached-version` for each cached package the root has installed
/// (`ii`) at another version, from `dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}'`.
fn moved_packages(dpkg_query: &str, files: &[(HeaderPackage, PathBuf)]) -> Vec<String> {
    dpkg_query
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (name, version, status) = (fields.next()?, fields.next()?, fields.next()?);
            if status != "ii" {
                return None;
            }
            let (cached, _) = files.iter().find(|(package, _)| package.name == name)?;
            (cached.version != version)
                .then(|| format!("{name} {version} (cache: {})", cached.version))
        })
        .collect()
}

impl HeaderSource for CachedDebsSource {
    fn describe(&self) -> String {
        format!("header package cache ({})", self.dir.display())
    }

    fn install(&self, ctx: &HeaderContext<'_>) -> Result<Vec<HeaderPackage>, SourceFailure> {
        let release = ctx.identity.kernel_release().as_str();
        // A cache filled before kernel images were planned away may hold the image: skipped, as
        // a download now skips it.
        let files: Vec<(HeaderPackage, PathBuf)> = verified_files(ctx, &self.dir)?
            .into_iter()
            .filter(|(package, _)| !is_kernel_image(&package.name, release))
            .collect();
        root_has_not_moved(ctx, &files)?;
        tracing::info!(
            packages = files.len(),
            "every cached header package matches its SHA-256: extracting them, without a download"
        );
        extract(ctx, &files)?;
        Ok(files.into_iter().map(|(package, _)| package).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_package_the_root_holds_at_another_version_is_reported() {
        let cached = |name: &str, version: &str| {
            (
                HeaderPackage {
                    name: name.to_owned(),
                    version: version.to_owned(),
                    file_name: format!("{name}_{version}_amd64.deb"),
                    uri: None,
                    sha256: "0".repeat(64),
                },
                PathBuf::from("/build/header-cache/x.deb"),
            )
        };
        let files = [
            cached("linux-headers-6.12.48+deb13-amd64", "6.12.48-1"),
            cached("libdw1t64", "0.192-4"),
            cached("pahole", "1.30-1"),
        ];
        // The headers are not installed (dpkg-query prints nothing for them); pahole is at the
        // cached version; libdw moved; a removed-but-configured package does not count.
        let query = "libdw1t64 0.192-4+deb13u1 ii \npahole 1.30-1 ii \nlibbpf1 1:1.5.0-3 rc \n";
        assert_eq!(
            moved_packages(query, &files),
            vec!["libdw1t64 0.192-4+deb13u1 (cache: 0.192-4)".to_owned()]
        );
        assert!(moved_packages("pahole 1.30-1 ii \n", &files).is_empty());
        assert!(moved_packages("", &files).is_empty());
    }
    use crate::http::Http;
    use crate::system::{DirectRunner, System};

    #[derive(Debug)]
    struct NoHttp;

    impl Http for NoHttp {
        fn download(&self, url: &str, _dest: &Path) -> Result<u64, crate::http::HttpError> {
            panic!("no download expected: {url}")
        }
        fn get_text(&self, url: &str) -> Result<String, crate::http::HttpError> {
            panic!("no request expected: {url}")
        }
        fn post_xml(&self, url: &str, _body: &str) -> Result<String, crate::http::HttpError> {
            panic!("no request expected: {url}")
        }
    }

    /// A root with a cache directory holding one package file and its manifest.
    fn root_with_cache(content: &[u8]) -> (tempfile::TempDir, HeaderPackage) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("build/header-cache");
        std::fs::create_dir_all(&cache).expect("mkdir");
        let sha256 = integrity::sha256_bytes(content).to_hex();
        std::fs::write(cache.join(format!("{sha256}.deb")), content).expect("write");
        let package = HeaderPackage {
            name: "linux-headers-6.1.0-57-amd64".to_owned(),
            version: "6.1.192-3".to_owned(),
            file_name: "linux-headers-6.1.0-57-amd64_6.1.192-3_amd64.deb".to_owned(),
            uri: Some("http://deb.debian.org/debian/pool/main/l/linux/x.deb".to_owned()),
            sha256,
        };
        std::fs::write(
            cache.join(MANIFEST),
            serde_json::to_vec(&[&package]).expect("json"),
        )
        .expect("write");
        (dir, package)
    }

    fn check(root: &Path) -> Result<Vec<(HeaderPackage, PathBuf)>, SourceFailure> {
        let system = System::new(root, Box::new(DirectRunner));
        let identity = kernel_id::KernelIdentity::from_input(&kernel_id::IdentityInput {
            kernel_version: "6.1.0-57-amd64".to_owned(),
            architecture: "x86_64".to_owned(),
            distribution: "debian".to_owned(),
            distro_version: Some("12".to_owned()),
            driver_version: "v0.1.2".to_owned(),
        })
        .expect("identity");
        let downloads = system.scratch_dir("downloads").expect("scratch");
        let ctx = HeaderContext {
            identity: &identity,
            system: &system,
            http: &NoHttp,
            downloads: &downloads,
        };
        verified_files(&ctx, Path::new("/build/header-cache"))
    }

    #[test]
    fn cached_files_are_used_only_when_they_match_their_digest() {
        let (root, package) = root_with_cache(b"a header package");
        let files = check(root.path()).expect("verified");
        assert_eq!(
            files,
            [(
                package.clone(),
                PathBuf::from(format!("/build/header-cache/{}.deb", package.sha256))
            )]
        );

        let file = root
            .path()
            .join(format!("build/header-cache/{}.deb", package.sha256));
        std::fs::write(&file, b"a header package, changed").expect("tamper");
        let refused = check(root.path()).expect_err("tampered");
        assert!(
            matches!(&refused, SourceFailure::Failed(why) if why.contains("refusing the cache") && why.contains("hashes to")),
            "{refused}"
        );

        std::fs::remove_file(&file).expect("remove");
        assert!(matches!(
            check(root.path()).expect_err("missing"),
            SourceFailure::Failed(why) if why.contains("refusing the cache")
        ));
    }

    #[test]
    fn a_missing_or_malformed_manifest_is_never_trusted() {
        let (root, mut package) = root_with_cache(b"x");
        let manifest = root.path().join("build/header-cache").join(MANIFEST);
        package.sha256 = "../../etc/passwd".to_owned();
        std::fs::write(&manifest, serde_json::to_vec(&[&package]).expect("json")).expect("w");
        assert!(matches!(
            check(root.path()).expect_err("malformed"),
            SourceFailure::Failed(why) if why.contains("malformed SHA-256")
        ));
        std::fs::write(&manifest, "not json").expect("w");
        assert!(matches!(
            check(root.path()).expect_err("not json"),
            SourceFailure::Failed(_)
        ));
        std::fs::remove_file(&manifest).expect("remove");
        assert!(matches!(
            check(root.path()).expect_err("none"),
            SourceFailure::Skipped(why) if why.contains("no cached header packages")
        ));
    }
}
