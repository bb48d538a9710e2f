//! Integrity, authenticity and provenance of a downloaded package, checked before anything is
//! extracted, installed or loaded, in this order:
//!
//! 1. the SHA-256 digest file (`sha256sum` format, naming this package): catches truncation and
//!    corruption cheaply;
//! 2. the detached minisign signature, by a key of the trusted keyring and bound to this package's
//!    file name (a signature naming no file or another file is refused): whoever can replace the
//!    package can also replace its digest, so this is what makes it trustworthy;
//! 3. the build provenance (`<package>.intoto.jsonl`, an in-toto statement in a DSSE envelope
//!    signed by a trusted key): it must be about exactly this package (name and digest) and the
//!    host's identity, name the expected source repository (and the pinned commit when one is set)
//!    and an allowed builder.
//!
//! The checks themselves are the `integrity` crate's; this module maps their refusals to the
//! loader's errors (exit 6 for digest and signature, exit 10 for provenance), each naming the file
//! and the rule (or the statement field).

use std::path::Path;

use integrity::provenance::{self, Expected, VerifiedProvenance};
use integrity::signature::{SignatureError, VerifiedSignature};
use integrity::{DigestFile, Keyring, ProvenancePolicy, Sha256Digest};
use kernel_id::{DriverName, KernelIdentity};

use crate::error::{LoaderError, Result};

/// Digest files are one line; anything bigger is not one.
pub const MAX_DIGEST_BYTES: u64 = 16 * 1024;

/// Signature files are a few hundred bytes.
pub const MAX_SIGNATURE_BYTES: u64 = integrity::signature::MAX_SIGNATURE_BYTES;

/// A provenance file holds a few envelopes at most.
pub const MAX_PROVENANCE_BYTES: u64 = provenance::MAX_PROVENANCE_BYTES as u64;

/// What makes a package trusted.
#[derive(Debug, Clone)]
pub enum TrustPolicy {
    /// Every package needs a signature by a key of the keyring, bound to its file name, and a
    /// provenance file signed by a key of the keyring that satisfies the policy.
    Verify {
        keyring: Keyring,
        policy: ProvenancePolicy,
    },
    /// Only the digest is checked: anyone able to replace the artifact can put code into the
    /// kernel. Development only, and never together with a configured key.
    InsecureSkipSignature,
    /// No trusted key is configured: fetching is refused. `reason` says what is missing.
    Missing { reason: String },
}

/// Checks `package` against the digest file text: the named file must be the package and the digest
/// must match. Returns the package's SHA-256.
pub fn verify_digest(
    package: &Path,
    sha256: Option<Sha256Digest>,
    expected_file_name: &str,
    digest_text: &str,
) -> Result<Sha256Digest> {
    let digest_name = format!("{expected_file_name}.sha256");
    let digest = DigestFile::parse(digest_text)
        .map_err(|reason| LoaderError::verify(&digest_name, reason))?;
    if digest.file_name != expected_file_name {
        // Named before hashing: a digest of another file says nothing about this one.
        return Err(LoaderError::verify(
            digest_name,
            format!(
                "digest file names {:?}, not the expected package {expected_file_name:?}",
                digest.file_name
            ),
        ));
    }
    let actual = package_sha256(package, sha256)?;
    digest
        .check(expected_file_name, &actual)
        .map_err(|reason| LoaderError::verify(expected_file_name, reason))?;
    Ok(actual)
}

/// The package's SHA-256: `known` when it was hashed as it downloaded, else read from the file.
pub fn package_sha256(package: &Path, known: Option<Sha256Digest>) -> Result<Sha256Digest> {
    match known {
        Some(sha256) => Ok(sha256),
        None => integrity::sha256_file(package)
            .map_err(|e| LoaderError::io(format!("reading {}", package.display()), e)),
    }
}

/// A refused signature, explained when the provenance can tell why: a package whose SHA-256 is not
/// the one its provenance claims is damaged or replaced, and the message says so with both digests
/// (a truncated download reads as such, not only as a bad signature). The claim is read for the
/// message alone; the provenance's own check is what trusts it.
pub fn with_digest_note(
    error: LoaderError,
    actual: &Sha256Digest,
    provenance_text: Option<&str>,
) -> LoaderError {
    let LoaderError::Verify { file, reason } = error else {
        return error;
    };
    let claimed = provenance_text.and_then(provenance::claimed_package_sha256);
    let reason = match claimed {
        Some(claimed) if claimed != actual.to_hex() => format!(
            "{reason}; SHA-256 mismatch: the file hashes to {actual} but its provenance names \
             {claimed} (truncated or corrupted download, or a tampered package)"
        ),
        _ => reason,
    };
    LoaderError::Verify { file, reason }
}

/// Verifies the package's detached signature with the keyring: the signing key must be trusted, the
/// signature must verify over the whole file, be prehashed, and its trusted comment must name
/// exactly this file.
pub fn verify_signature(
    keyring: &Keyring,
    package: &Path,
    expected_file_name: &str,
    signature_text: &str,
) -> Result<VerifiedSignature> {
    integrity::signature::verify_package(keyring, package, expected_file_name, signature_text)
        .map_err(signature_error)
}

/// A signature refusal as the loader's error: `verify <file>: <rule>` (exit 6); local IO errors stay
/// IO errors.
fn signature_error(error: SignatureError) -> LoaderError {
    let file = match error {
        SignatureError::Io { context, source } => return LoaderError::io(context, source),
        SignatureError::Malformed { ref file, .. }
        | SignatureError::UntrustedKey { ref file, .. }
        | SignatureError::Invalid { ref file, .. }
        | SignatureError::Unbound { ref file, .. }
        | SignatureError::WrongFile { ref file, .. }
        | SignatureError::Legacy { ref file } => file.clone(),
    };
    let text = error.to_string();
    let reason = text
        .strip_prefix(&format!("{file}: "))
        .unwrap_or(&text)
        .to_owned();
    LoaderError::verify(file, reason)
}

/// Verifies a provenance file's text for the package: signed by a trusted key, about exactly this
/// package (its file name and `package_sha256`) and the host's `identity`, and within the policy.
/// `provenance_file` names the file in errors.
pub fn verify_provenance(
    text: &str,
    provenance_file: &str,
    keyring: &Keyring,
    policy: &ProvenancePolicy,
    driver: &DriverName,
    identity: &KernelIdentity,
    package_sha256: &Sha256Digest,
) -> Result<VerifiedProvenance> {
    provenance::verify(
        text,
        keyring,
        Expected {
            driver,
            identity,
            package_sha256,
        },
        policy,
    )
    .map_err(|e| LoaderError::provenance(provenance_file, e.field, e.reason))
}

/// The commit the package's own metadata records (the .deb `Kdriver-Source-Commit` field, the rpm
/// `VCS` tag) must be the one its provenance names: a package whose metadata disagrees was not made
/// the way its provenance says. A package recording none is left to the provenance alone.
pub fn check_package_commit(
    package: &Path,
    provenance_file: &str,
    provenance: &VerifiedProvenance,
) -> Result<()> {
    let metadata = driver_package::read_metadata(package).map_err(|e| LoaderError::Package {
        package: package.to_path_buf(),
        reason: e.to_string(),
    })?;
    match metadata.source_commit {
        Some(recorded) if recorded != provenance.source_commit.as_str() => {
            Err(LoaderError::provenance(
                provenance_file,
                "resolvedDependencies.source.digest",
                format!(
                    "names commit {} but the package's metadata records {recorded}",
                    provenance.source_commit
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// The key ids as one comma-separated list.
pub fn key_list(ids: &[integrity::KeyId]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use integrity::SecretKey;
    use integrity::facts::{BuildFacts, CompilerFacts, RootImage};
    use integrity::provenance::BuildProvenance;
    use kernel_id::SourceCommit;

    use super::*;
    use crate::FailureKind;

    const REPO: &str = "https://github.com/example/example-driver";
    const BUILDER: &str = "urn:kdriver:builder:test";
    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn identity() -> KernelIdentity {
        KernelIdentity::from_input(&kernel_id::IdentityInput {
            kernel_version: "6.1.0-47-amd64".to_owned(),
            architecture: "x86_64".to_owned(),
            distribution: "debian".to_owned(),
            distro_version: Some("12".to_owned()),
            driver_version: "v0.1.2".to_owned(),
        })
        .expect("valid")
    }

    fn driver() -> DriverName {
        DriverName::parse("example-driver").expect("valid")
    }

    struct Fixture {
        dir: tempfile::TempDir,
        key: SecretKey,
        ring: Keyring,
        package: std::path::PathBuf,
        file_name: String,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SecretKey::generate(&dir.path().join("k"), &dir.path().join("k.pub"))
            .expect("generate");
        let mut ring = Keyring::new();
        ring.insert(key.public().clone(), "test").expect("insert");
        let file_name = identity().package_file_name(&driver());
        let package = dir.path().join(&file_name);
        std::fs::write(&package, b"hello").expect("write");
        Fixture {
            dir,
            key,
            ring,
            package,
            file_name,
        }
    }

    #[test]
    fn digest_mismatch_and_wrong_name_are_verify_errors_naming_the_file() {
        let f = fixture();
        // sha256("hello")
        let good = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let name = &f.file_name;
        let digest =
            verify_digest(&f.package, None, name, &format!("{good}  {name}\n")).expect("ok");
        assert_eq!(digest.to_hex(), good);
        let err = verify_digest(
            &f.package,
            None,
            name,
            &format!("{}  {name}\n", "0".repeat(64)),
        )
        .expect_err("mismatch");
        assert_eq!(err.kind(), FailureKind::Verify);
        assert!(err.to_string().contains("SHA-256 mismatch"), "{err}");
        assert!(
            err.to_string().starts_with(&format!("verify {name}: ")),
            "{err}"
        );
        let err = verify_digest(&f.package, None, name, &format!("{good}  other.deb\n"))
            .expect_err("other file");
        assert!(
            err.to_string().starts_with(&format!(
                "verify {name}.sha256: digest file names \"other.deb\""
            )),
            "{err}"
        );
        let err = verify_digest(&f.package, None, name, "abc  x").expect_err("malformed");
        assert_eq!(err.kind(), FailureKind::Verify);
        // A digest taken while downloading is the one compared (the file is not read again).
        let streamed = integrity::sha256_bytes(b"what arrived");
        let err = verify_digest(
            &f.package,
            Some(streamed),
            name,
            &format!("{good}  {name}\n"),
        )
        .expect_err("the streamed digest differs");
        assert!(err.to_string().contains(&streamed.to_hex()), "{err}");
    }

    #[test]
    fn signature_refusals_name_the_file_and_the_rule_once() {
        let f = fixture();
        let name = &f.file_name;
        let signature = integrity::signature::sign_package(&f.key, &f.package, name).expect("sign");
        let verified = verify_signature(&f.ring, &f.package, name, &signature).expect("verifies");
        assert_eq!(verified.key_id, f.key.id());

        let err =
            verify_signature(&Keyring::new(), &f.package, name, &signature).expect_err("untrusted");
        assert_eq!(err.kind(), FailureKind::Verify);
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("verify {name}: signed by key {}", f.key.id())),
            "{text}"
        );
        assert_eq!(text.matches(name.as_str()).count(), 1, "{text}");

        let other =
            integrity::signature::sign_package(&f.key, &f.package, "other.deb").expect("sign");
        let err = verify_signature(&f.ring, &f.package, name, &other).expect_err("other file");
        assert!(
            err.to_string()
                .contains("the signature was made for file \"other.deb\""),
            "{err}"
        );

        let err = verify_signature(&f.ring, &f.package, name, "garbage").expect_err("malformed");
        assert!(
            err.to_string()
                .starts_with(&format!("verify {name}.minisig: not a minisign signature")),
            "{err}"
        );

        let err = verify_signature(&f.ring, &f.dir.path().join("absent"), name, &signature)
            .expect_err("io");
        assert_eq!(err.kind(), FailureKind::Internal);
    }

    fn build(package: &[u8], builder: &str) -> BuildProvenance {
        BuildProvenance {
            driver: driver(),
            identity: identity(),
            package_sha256: integrity::sha256_bytes(package),
            source_repository: REPO.to_owned(),
            source_commit: SourceCommit::parse(COMMIT).expect("commit"),
            facts: BuildFacts {
                headers: Vec::new(),
                compiler: CompilerFacts {
                    name: "gcc-12".to_owned(),
                    kernel_cc_version_text: "gcc-12 (Debian 12.2.0-14) 12.2.0".to_owned(),
                    root_version_report: "gcc-12 (Debian 12.2.0-14) 12.2.0".to_owned(),
                },
            },
            root: RootImage {
                uri: "mmdebstrap:debian/bookworm/amd64".to_owned(),
                sha256: "cd".repeat(32),
            },
            builder_id: builder.to_owned(),
            invocation_id: "b-1".to_owned(),
            started_on: "2026-12-03T10:00:00Z".to_owned(),
            finished_on: "2026-12-03T10:02:00Z".to_owned(),
        }
    }

    #[test]
    fn provenance_refusals_are_exit_10_and_name_the_field() {
        let f = fixture();
        let policy = ProvenancePolicy {
            expected_source_repository: REPO.to_owned(),
            allowed_builders: vec![BUILDER.to_owned()],
            pinned_commit: None,
        };
        let digest = integrity::sha256_bytes(b"hello");
        let check = |text: &str| {
            verify_provenance(
                text,
                "p.intoto.jsonl",
                &f.ring,
                &policy,
                &driver(),
                &identity(),
                &digest,
            )
        };
        let good = build(b"hello", BUILDER).signed_file(&f.key);
        let verified = check(&good).expect("verifies");
        assert_eq!(verified.builder_id, BUILDER);
        assert_eq!(verified.key_ids, vec![f.key.id()]);

        let evil = build(b"hello", "https://evil").signed_file(&f.key);
        let err = check(&evil).expect_err("builder");
        assert_eq!(err.kind(), FailureKind::Provenance);
        assert_eq!(FailureKind::Provenance.exit_code(), 10);
        assert!(
            err.to_string().starts_with(
                "provenance p.intoto.jsonl: runDetails.builder.id: \"https://evil\" is not an allowed builder"
            ),
            "{err}"
        );
        let other = build(b"another build", BUILDER).signed_file(&f.key);
        let LoaderError::Provenance { field, .. } = check(&other).expect_err("digest") else {
            panic!("a provenance error")
        };
        assert_eq!(field, "subject.digest.sha256");
    }

    #[test]
    fn a_package_whose_metadata_names_another_commit_is_refused() {
        let f = fixture();
        let write = |commit: Option<&str>, dir: &Path| {
            let mut spec = driver_package::PackageSpec::for_driver(
                &driver(),
                &identity(),
                [(
                    "example_driver.ko".to_owned(),
                    driver_package::FileContent::Bytes(b"module".to_vec()),
                )],
            )
            .expect("spec");
            spec.source_commit = commit.map(|c| SourceCommit::parse(c).expect("commit"));
            driver_package::write_package_file(
                &spec,
                driver_package::WriteOptions::default_for(spec.format),
                dir,
                &f.file_name,
            )
            .expect("package")
        };
        let policy = ProvenancePolicy {
            expected_source_repository: REPO.to_owned(),
            allowed_builders: vec![BUILDER.to_owned()],
            pinned_commit: None,
        };
        let verified = |package: &Path| {
            let bytes = std::fs::read(package).expect("read");
            verify_provenance(
                &build(&bytes, BUILDER).signed_file(&f.key),
                "p.intoto.jsonl",
                &f.ring,
                &policy,
                &driver(),
                &identity(),
                &integrity::sha256_bytes(&bytes),
            )
            .expect("verifies")
        };
        let same = f.dir.path().join("same");
        std::fs::create_dir_all(&same).expect("dir");
        let package = write(Some(COMMIT), &same);
        check_package_commit(&package, "p.intoto.jsonl", &verified(&package)).expect("agrees");

        let other = f.dir.path().join("other");
        std::fs::create_dir_all(&other).expect("dir");
        let package = write(Some(&"f".repeat(40)), &other);
        let err = check_package_commit(&package, "p.intoto.jsonl", &verified(&package))
            .expect_err("disagrees");
        assert_eq!(err.kind(), FailureKind::Provenance);
        assert!(
            err.to_string().contains("package's metadata records ffff"),
            "{err}"
        );
    }

    #[test]
    fn key_lists_read_like_minisign_ids() {
        let a = integrity::KeyId::from_bytes([1, 0, 0, 0, 0, 0, 0, 0]);
        let b = integrity::KeyId::from_bytes([2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(key_list(&[a, b]), "0000000000000001, 0000000000000002");
        assert_eq!(key_list(&[]), "");
    }
}
