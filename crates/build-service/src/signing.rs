//! The service's signing identity: the one secret key that signs what the local backend publishes —
//! each package's detached signature (bound to its file name) and its build provenance (an in-toto
//! statement in a DSSE envelope) — and that countersigns published artifacts when keys rotate.
//!
//! The provenance is composed here, outside the build root, from what the service knows itself (the
//! identity, the package's digest as it computed it, the source commit it resolved, the root image
//! the executor used, its own builder id, the build id and times) and what only the root could see
//! (the header packages and compiler, from the builder's facts file).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use integrity::facts::{BUILD_FACTS_FILE, BuildFacts, RootImage};
use integrity::keys::{KeyError, SecretKey};
use integrity::provenance::BuildProvenance;
use integrity::{Keyring, Sha256Digest};
use kernel_id::{DriverName, KernelIdentity, SourceCommit};

/// The file the local executor writes the build root's identity to, beside the builder's outputs.
pub const ROOT_IMAGE_FILE: &str = "root-image.json";

/// The local backend's builder id when none is configured.
pub const DEFAULT_LOCAL_BUILDER_ID: &str = "urn:kdriver:builder:build-service-local";

/// The signing key and the builder id it vouches for. Holds the key: `Debug` shows only its id.
pub struct ServiceSigner {
    key: SecretKey,
    builder_id: String,
}

impl std::fmt::Debug for ServiceSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceSigner")
            .field("key_id", &self.key.id().to_string())
            .field("builder_id", &self.builder_id)
            .finish()
    }
}

/// One finished local build, as the signer needs it.
#[derive(Debug, Clone)]
pub struct FinishedBuild<'a> {
    pub build_id: &'a str,
    pub driver: &'a DriverName,
    pub identity: &'a KernelIdentity,
    pub source_repository: &'a str,
    pub source_commit: &'a SourceCommit,
    /// The executor's output directory (package, facts file, root image file).
    pub out_dir: &'a Path,
    pub package_sha256: Sha256Digest,
    pub started: SystemTime,
    pub finished: SystemTime,
}

impl ServiceSigner {
    /// Loads the secret key (refused when readable by group or others; an encrypted key needs its
    /// password).
    pub fn load(
        path: &Path,
        password: Option<String>,
        builder_id: impl Into<String>,
    ) -> Result<Self, KeyError> {
        Ok(Self::new(SecretKey::load(path, password)?, builder_id))
    }

    /// A signer around a key already loaded.
    pub fn new(key: SecretKey, builder_id: impl Into<String>) -> Self {
        Self {
            key,
            builder_id: builder_id.into(),
        }
    }

    /// The key.
    pub fn key(&self) -> &SecretKey {
        &self.key
    }

    /// The builder id written into provenance.
    pub fn builder_id(&self) -> &str {
        &self.builder_id
    }

    /// The `.minisig` text of a package, bound to its file name.
    pub fn sign_package(&self, package: &Path, file_name: &str) -> Result<String, String> {
        integrity::signature::sign_package(&self.key, package, file_name)
            .map_err(|error| error.to_string())
    }

    /// The `.intoto.jsonl` text of a finished build. Fails when the build left no facts file or no
    /// root image file: an artifact without complete provenance is not published.
    pub fn provenance(&self, build: &FinishedBuild<'_>) -> Result<String, String> {
        let facts: BuildFacts = read_json(&build.out_dir.join(BUILD_FACTS_FILE))?;
        let root: RootImage = read_json(&build.out_dir.join(ROOT_IMAGE_FILE))?;
        let provenance = BuildProvenance {
            driver: build.driver.clone(),
            identity: build.identity.clone(),
            package_sha256: build.package_sha256,
            source_repository: build.source_repository.to_owned(),
            source_commit: build.source_commit.clone(),
            facts,
            root,
            builder_id: self.builder_id.clone(),
            invocation_id: build.build_id.to_owned(),
            started_on: rfc3339(build.started),
            finished_on: rfc3339(build.finished),
        };
        Ok(provenance.signed_file(&self.key))
    }
}

/// Re-signs what is published under `artifact_dir` with `signer`'s key after verifying it with the
/// keys trusted until now (`current`): every package's signature is replaced by one of the new key
/// (the old `.minisig` is kept as `.minisig.<old key id>` beside it) and every provenance envelope
/// gains the new key's signature. Nothing that does not verify is re-signed. Returns the packages
/// re-signed; an artifact already signed by the new key is left as it is.
pub fn resign_published(
    artifact_dir: &Path,
    current: &Keyring,
    signer: &ServiceSigner,
) -> Result<Vec<PathBuf>, String> {
    let mut resigned = Vec::new();
    let mut releases: Vec<PathBuf> = std::fs::read_dir(artifact_dir)
        .map_err(|error| format!("reading {}: {error}", artifact_dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.is_dir()
                && !path
                    .file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with('.'))
        })
        .collect();
    releases.sort();
    for release in releases {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&release)
            .map_err(|error| format!("reading {}: {error}", release.display()))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .collect();
        files.sort();
        for package in files {
            let Some(name) = package
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
            else {
                continue;
            };
            let Ok((driver, identity)) = KernelIdentity::parse_any_package_file_name(&name) else {
                continue;
            };
            if identity.package_file_name(&driver) != name {
                continue;
            }
            if resign_one(&release, &name, &driver, &identity, current, signer)? {
                resigned.push(package);
            }
        }
    }
    Ok(resigned)
}

fn resign_one(
    release: &Path,
    name: &str,
    driver: &DriverName,
    identity: &KernelIdentity,
    current: &Keyring,
    signer: &ServiceSigner,
) -> Result<bool, String> {
    let package = release.join(name);
    let signature_path = release.join(identity.signature_file_name(driver));
    let provenance_path = release.join(identity.provenance_file_name(driver));
    let signature = std::fs::read_to_string(&signature_path)
        .map_err(|error| format!("{}: {error}", signature_path.display()))?;
    let new_id = signer.key.id();
    if integrity::signature::signature_key_id(&signature) == Some(new_id) {
        return Ok(false);
    }
    let verified = integrity::signature::verify_package(current, &package, name, &signature)
        .map_err(|error| format!("not re-signing {name}: {error}"))?;
    let countersigned = match std::fs::read_to_string(&provenance_path) {
        Ok(text) => Some(
            integrity::provenance::countersign(&text, current, &signer.key)
                .map_err(|error| format!("not re-signing {name}: {error}"))?,
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(format!("{}: {error}", provenance_path.display())),
    };
    let new_signature = signer.sign_package(&package, name)?;
    let retired = release.join(format!(
        "{}.{}",
        identity.signature_file_name(driver),
        verified.key_id
    ));
    if !retired.exists() {
        std::fs::copy(&signature_path, &retired)
            .map_err(|error| format!("keeping {}: {error}", retired.display()))?;
    }
    replace_file(&signature_path, new_signature.as_bytes())?;
    if let Some(text) = countersigned {
        replace_file(&provenance_path, text.as_bytes())?;
    }
    Ok(true)
}

/// Writes beside and renames over: a reader sees the old file or the new one, never a mix.
fn replace_file(path: &Path, contents: &[u8]) -> Result<(), String> {
    let staging = path.with_extension("resign-tmp");
    std::fs::write(&staging, contents)
        .and_then(|()| std::fs::File::open(&staging)?.sync_all())
        .and_then(|()| std::fs::rename(&staging, path))
        .map_err(|error| format!("writing {}: {error}", path.display()))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        format!(
            "the build left no {} ({error}); no provenance, nothing published",
            path.file_name().unwrap_or_default().to_string_lossy()
        )
    })?;
    serde_json::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))
}

fn rfc3339(at: SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

#[cfg(test)]
mod tests {
    use integrity::facts::CompilerFacts;
    use integrity::provenance::{Expected, ProvenancePolicy};
    use kernel_id::{IdentityInput, ReleaseLayout};

    use super::*;

    fn key(dir: &Path, name: &str) -> SecretKey {
        SecretKey::generate(&dir.join(name), &dir.join(format!("{name}.pub"))).unwrap()
    }

    /// Publishes one package as the local backend lays it out, signed by `signer`.
    fn publish(artifacts: &Path, work: &Path, signer: &ServiceSigner) -> (PathBuf, KernelIdentity) {
        let driver = DriverName::parse("example-driver").unwrap();
        let identity = KernelIdentity::from_input(&IdentityInput {
            kernel_version: "6.1.0-47-amd64".to_owned(),
            architecture: "x86_64".to_owned(),
            distribution: "debian".to_owned(),
            distro_version: Some("12".to_owned()),
            driver_version: "v0.1.2".to_owned(),
        })
        .unwrap();
        let out = work.join("out");
        std::fs::create_dir_all(&out).unwrap();
        let name = identity.package_file_name(&driver);
        std::fs::write(out.join(&name), b"package").unwrap();
        let facts = BuildFacts {
            headers: Vec::new(),
            compiler: CompilerFacts {
                name: "gcc-12".to_owned(),
                kernel_cc_version_text: "gcc-12".to_owned(),
                root_version_report: "gcc-12".to_owned(),
            },
        };
        std::fs::write(
            out.join(BUILD_FACTS_FILE),
            serde_json::to_vec(&facts).unwrap(),
        )
        .unwrap();
        let root = RootImage {
            uri: "test:root".to_owned(),
            sha256: "00".repeat(32),
        };
        std::fs::write(
            out.join(ROOT_IMAGE_FILE),
            serde_json::to_vec(&root).unwrap(),
        )
        .unwrap();
        let commit = SourceCommit::parse(&"a".repeat(40)).unwrap();
        let release = artifacts.join(ReleaseLayout::PerArtifact.release_tag(&driver, &identity));
        std::fs::create_dir_all(&release).unwrap();
        let package = release.join(&name);
        std::fs::copy(out.join(&name), &package).unwrap();
        std::fs::write(
            release.join(identity.signature_file_name(&driver)),
            signer.sign_package(&package, &name).unwrap(),
        )
        .unwrap();
        let provenance = signer
            .provenance(&FinishedBuild {
                build_id: "b1",
                driver: &driver,
                identity: &identity,
                source_repository: "file:///repo",
                source_commit: &commit,
                out_dir: &out,
                package_sha256: integrity::sha256_file(&package).unwrap(),
                started: SystemTime::now(),
                finished: SystemTime::now(),
            })
            .unwrap();
        std::fs::write(
            release.join(identity.provenance_file_name(&driver)),
            provenance,
        )
        .unwrap();
        (package, identity)
    }

    fn verifies(package: &Path, identity: &KernelIdentity, ring: &Keyring) -> Result<(), String> {
        let driver = DriverName::parse("example-driver").unwrap();
        let name = identity.package_file_name(&driver);
        let release = package.parent().unwrap();
        let signature =
            std::fs::read_to_string(release.join(identity.signature_file_name(&driver))).unwrap();
        integrity::signature::verify_package(ring, package, &name, &signature)
            .map_err(|e| e.to_string())?;
        let provenance =
            std::fs::read_to_string(release.join(identity.provenance_file_name(&driver))).unwrap();
        integrity::provenance::verify(
            &provenance,
            ring,
            Expected {
                driver: &driver,
                identity,
                package_sha256: &integrity::sha256_file(package).unwrap(),
            },
            &ProvenancePolicy {
                expected_source_repository: "file:///repo".to_owned(),
                allowed_builders: vec![DEFAULT_LOCAL_BUILDER_ID.to_owned()],
                pinned_commit: None,
            },
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    #[test]
    fn resigning_moves_published_artifacts_to_the_new_key_and_keeps_the_old_signature() {
        let dir = tempfile::tempdir().unwrap();
        let old = ServiceSigner::new(key(dir.path(), "old"), DEFAULT_LOCAL_BUILDER_ID);
        let new = ServiceSigner::new(key(dir.path(), "new"), DEFAULT_LOCAL_BUILDER_ID);
        let artifacts = dir.path().join("artifacts");
        let (package, identity) = publish(&artifacts, dir.path(), &old);
        let mut old_ring = Keyring::new();
        old_ring.insert(old.key().public().clone(), "old").unwrap();
        let mut new_ring = Keyring::new();
        new_ring.insert(new.key().public().clone(), "new").unwrap();
        assert!(verifies(&package, &identity, &old_ring).is_ok());
        assert!(verifies(&package, &identity, &new_ring).is_err());

        // Verified with the wrong keys: nothing is re-signed.
        let refused = resign_published(&artifacts, &new_ring, &new).unwrap_err();
        assert!(refused.contains("not re-signing"), "{refused}");
        assert!(verifies(&package, &identity, &new_ring).is_err());

        let resigned = resign_published(&artifacts, &old_ring, &new).unwrap();
        assert_eq!(resigned, vec![package.clone()]);
        assert!(verifies(&package, &identity, &new_ring).is_ok());
        let retired = package.parent().unwrap().join(format!(
            "{}.minisig.{}",
            package.file_name().unwrap().to_string_lossy(),
            old.key().id()
        ));
        assert!(retired.is_file(), "the old signature is kept");
        // Twice is a no-op.
        assert!(
            resign_published(&artifacts, &old_ring, &new)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn times_are_rfc3339_in_whole_seconds() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_796_292_000_123);
        assert_eq!(rfc3339(at), "2026-12-03T10:00:00Z");
    }
}
