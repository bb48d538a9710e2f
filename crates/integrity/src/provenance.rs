//! Build provenance: an in-toto Statement v1 whose predicate is SLSA Provenance v1, in a DSSE
//! envelope signed by the service's signing key, published beside the package as
//! `<package>.intoto.jsonl` (one envelope per line; the name comes from kernel-id).
//!
//! - subject: the package file name and its SHA-256;
//! - externalParameters: the five identity fields, under the build API's names;
//! - resolvedDependencies: the driver source (`git+<repository>@refs/tags/<version>` with the
//!   commit), every kernel header package installed (with the SHA-256 of the package file), the
//!   build root (its image digest) and the compiler;
//! - runDetails: the builder id, the build id as invocation id, start and finish times.
//!
//! [`verify`] is what the loader runs before anything reaches the kernel; every refusal names the
//! statement field that did not match.

use std::collections::BTreeMap;

use kernel_id::{DriverName, KernelIdentity, SourceCommit};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::digest::Sha256Digest;
use crate::dsse::{DsseError, Envelope};
use crate::facts::{BuildFacts, RootImage};
use crate::keys::{KeyId, Keyring};

/// The in-toto Statement type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The SLSA Provenance v1 predicate type.
pub const SLSA_PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";
/// The DSSE payload type of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// This project's build type: what `externalParameters` and `resolvedDependencies` mean is
/// documented in docs/provenance.md.
pub const BUILD_TYPE: &str = "urn:kdriver:build-type:driver-build:v1";
/// `name` of the driver source in `resolvedDependencies`.
pub const SOURCE_DEPENDENCY: &str = "source";
/// `name` of the build root in `resolvedDependencies`.
pub const ROOT_DEPENDENCY: &str = "build-root";
/// `name` of the compiler in `resolvedDependencies`.
pub const COMPILER_DEPENDENCY: &str = "compiler";
/// `annotations.kind` of a kernel header package in `resolvedDependencies`.
pub const HEADERS_KIND: &str = "kernel-headers";
/// A provenance file holds a few envelopes at most.
pub const MAX_PROVENANCE_BYTES: usize = 4 * 1024 * 1024;

/// An in-toto v1 resource descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResourceDescriptor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digest: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An in-toto Statement v1 with a SLSA Provenance v1 predicate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub statement_type: String,
    pub subject: Vec<ResourceDescriptor>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    pub predicate: Provenance,
}

/// SLSA Provenance v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    pub build_definition: BuildDefinition,
    pub run_details: RunDetails,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildDefinition {
    pub build_type: String,
    pub external_parameters: ExternalParameters,
    #[serde(default)]
    pub resolved_dependencies: Vec<ResourceDescriptor>,
}

/// The five identity fields, named as in the build API's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalParameters {
    pub architecture: String,
    pub distribution: String,
    pub distro_version: String,
    pub driver_version: String,
    pub kernel_version: String,
}

impl ExternalParameters {
    /// The parameters of an identity.
    pub fn of(identity: &KernelIdentity) -> Self {
        Self {
            architecture: identity.arch().as_str().to_owned(),
            distribution: identity.distribution().as_str().to_owned(),
            distro_version: identity.distro_version().as_str().to_owned(),
            driver_version: identity.driver_version().as_str().to_owned(),
            kernel_version: identity.kernel_release().as_str().to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunDetails {
    pub builder: Builder,
    pub metadata: BuildMetadata,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Builder {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildMetadata {
    pub invocation_id: String,
    pub started_on: String,
    pub finished_on: String,
}

/// Everything a signer knows about one finished build.
#[derive(Debug, Clone)]
pub struct BuildProvenance {
    pub driver: DriverName,
    pub identity: KernelIdentity,
    /// SHA-256 of the package file.
    pub package_sha256: Sha256Digest,
    /// The driver's source repository (`https://github.com/OWNER/REPO`, `file:///srv/driver`).
    pub source_repository: String,
    /// The commit the driver version's tag named when the build was requested.
    pub source_commit: SourceCommit,
    /// What the build root observed (headers, compiler).
    pub facts: BuildFacts,
    /// The build root.
    pub root: RootImage,
    /// Who built it: the local builder's URI or the workflow's `repository/path@ref`.
    pub builder_id: String,
    /// The build id.
    pub invocation_id: String,
    /// RFC 3339 times.
    pub started_on: String,
    pub finished_on: String,
}

impl BuildProvenance {
    /// The statement.
    pub fn statement(&self) -> Statement {
        let package = self.identity.package_file_name(&self.driver);
        let mut dependencies = vec![ResourceDescriptor {
            name: Some(SOURCE_DEPENDENCY.to_owned()),
            uri: Some(format!(
                "git+{}@{}",
                self.source_repository,
                self.identity.driver_version().tag_ref()
            )),
            digest: BTreeMap::from([(
                self.source_commit.digest_algorithm().to_owned(),
                self.source_commit.as_str().to_owned(),
            )]),
            annotations: BTreeMap::new(),
        }];
        for header in &self.facts.headers {
            dependencies.push(ResourceDescriptor {
                name: Some(header.file_name.clone()),
                uri: header.uri.clone(),
                digest: BTreeMap::from([("sha256".to_owned(), header.sha256.clone())]),
                annotations: BTreeMap::from([
                    ("kind".to_owned(), HEADERS_KIND.to_owned()),
                    ("package".to_owned(), header.name.clone()),
                    ("version".to_owned(), header.version.clone()),
                ]),
            });
        }
        dependencies.push(ResourceDescriptor {
            name: Some(ROOT_DEPENDENCY.to_owned()),
            uri: Some(self.root.uri.clone()),
            digest: BTreeMap::from([("sha256".to_owned(), self.root.sha256.clone())]),
            annotations: BTreeMap::new(),
        });
        dependencies.push(ResourceDescriptor {
            name: Some(COMPILER_DEPENDENCY.to_owned()),
            uri: Some(self.facts.compiler.name.clone()),
            digest: BTreeMap::new(),
            annotations: BTreeMap::from([
                (
                    "kernel_cc_version_text".to_owned(),
                    self.facts.compiler.kernel_cc_version_text.clone(),
                ),
                (
                    "root_version_report".to_owned(),
                    self.facts.compiler.root_version_report.clone(),
                ),
            ]),
        });
        Statement {
            statement_type: STATEMENT_TYPE.to_owned(),
            subject: vec![ResourceDescriptor {
                name: Some(package),
                digest: BTreeMap::from([("sha256".to_owned(), self.package_sha256.to_hex())]),
                ..ResourceDescriptor::default()
            }],
            predicate_type: SLSA_PROVENANCE_V1.to_owned(),
            predicate: Provenance {
                build_definition: BuildDefinition {
                    build_type: BUILD_TYPE.to_owned(),
                    external_parameters: ExternalParameters::of(&self.identity),
                    resolved_dependencies: dependencies,
                },
                run_details: RunDetails {
                    builder: Builder {
                        id: self.builder_id.clone(),
                    },
                    metadata: BuildMetadata {
                        invocation_id: self.invocation_id.clone(),
                        started_on: self.started_on.clone(),
                        finished_on: self.finished_on.clone(),
                    },
                },
            },
        }
    }

    /// The `.intoto.jsonl` file: the statement in an envelope signed by `key`, one line.
    #[cfg(feature = "sign")]
    pub fn signed_file(&self, key: &crate::keys::SecretKey) -> String {
        let payload = serde_json::to_vec(&self.statement()).expect("a statement serializes");
        format!(
            "{}\n",
            Envelope::sign(key, PAYLOAD_TYPE, &payload).to_line()
        )
    }
}

/// Adds `key`'s signature to every envelope of a provenance file (key rotation: artifacts signed by
/// the old key gain the new key's signature, so they keep verifying once the old key is dropped).
/// Every envelope must verify with `current` first: nothing unverified is countersigned.
#[cfg(feature = "sign")]
pub fn countersign(
    file_text: &str,
    current: &Keyring,
    key: &crate::keys::SecretKey,
) -> Result<String, ProvenanceError> {
    let mut out = String::new();
    for line in file_text.lines().filter(|line| !line.trim().is_empty()) {
        let mut envelope = Envelope::parse(line).map_err(ProvenanceError::envelope)?;
        envelope
            .verify(current, PAYLOAD_TYPE)
            .map_err(ProvenanceError::envelope)?;
        envelope.add_signature(key);
        out.push_str(&envelope.to_line());
        out.push('\n');
    }
    Ok(out)
}

/// What the verifier requires beyond the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvenancePolicy {
    /// The driver's source repository, e.g. `https://github.com/OWNER/REPO` (compared without a
    /// trailing `/` or `.git`).
    pub expected_source_repository: String,
    /// Builder ids allowed to have built it.
    pub allowed_builders: Vec<String>,
    /// When set, the source commit must be this one.
    pub pinned_commit: Option<SourceCommit>,
}

/// The package the provenance must be about.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub driver: &'a DriverName,
    pub identity: &'a KernelIdentity,
    pub package_sha256: &'a Sha256Digest,
}

/// A verified statement and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProvenance {
    pub statement: Statement,
    /// Trusted keys that signed it.
    pub key_ids: Vec<KeyId>,
    pub source_repository: String,
    pub source_commit: SourceCommit,
    pub builder_id: String,
    pub invocation_id: String,
}

impl VerifiedProvenance {
    /// The kernel header packages the build installed: (file name, sha256).
    pub fn headers(&self) -> Vec<(&str, &str)> {
        self.statement
            .predicate
            .build_definition
            .resolved_dependencies
            .iter()
            .filter(|d| d.annotations.get("kind").map(String::as_str) == Some(HEADERS_KIND))
            .map(|d| {
                (
                    d.name.as_deref().unwrap_or(""),
                    d.digest.get("sha256").map(String::as_str).unwrap_or(""),
                )
            })
            .collect()
    }

    /// A dependency by name.
    pub fn dependency(&self, name: &str) -> Option<&ResourceDescriptor> {
        self.statement
            .predicate
            .build_definition
            .resolved_dependencies
            .iter()
            .find(|d| d.name.as_deref() == Some(name))
    }
}

/// A refusal, naming the statement field (or `envelope`) that failed and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("provenance {field}: {reason}")]
pub struct ProvenanceError {
    pub field: String,
    pub reason: String,
}

impl ProvenanceError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn envelope(error: DsseError) -> Self {
        Self::new("envelope", error.to_string())
    }
}

/// Verifies a provenance file: every envelope signed by a trusted key (an invalid trusted signature
/// is fatal), and every statement they carry about exactly this package, identity, source and
/// builder. At least one envelope must be there.
pub fn verify(
    file_text: &str,
    keyring: &Keyring,
    expected: Expected<'_>,
    policy: &ProvenancePolicy,
) -> Result<VerifiedProvenance, ProvenanceError> {
    if file_text.len() > MAX_PROVENANCE_BYTES {
        return Err(ProvenanceError::new(
            "envelope",
            format!("file is larger than {MAX_PROVENANCE_BYTES} bytes"),
        ));
    }
    let mut verified = None;
    for line in file_text.lines().filter(|line| !line.trim().is_empty()) {
        let envelope = Envelope::parse(line).map_err(ProvenanceError::envelope)?;
        let payload = envelope
            .verify(keyring, PAYLOAD_TYPE)
            .map_err(ProvenanceError::envelope)?;
        let statement: Statement = serde_json::from_slice(&payload.payload).map_err(|error| {
            ProvenanceError::new("statement", format!("not an in-toto statement ({error})"))
        })?;
        let result = check_statement(statement, payload.key_ids, expected, policy)?;
        verified.get_or_insert(result);
    }
    verified
        .ok_or_else(|| ProvenanceError::new("envelope", "the provenance file holds no envelope"))
}

/// The package SHA-256 a provenance file's first statement claims, read WITHOUT checking any
/// signature: only to tell a damaged download from a forged one in a message. [`verify`] is what
/// decides; `None` when the file says nothing readable.
pub fn claimed_package_sha256(file_text: &str) -> Option<String> {
    if file_text.len() > MAX_PROVENANCE_BYTES {
        return None;
    }
    let line = file_text.lines().find(|line| !line.trim().is_empty())?;
    let payload = Envelope::parse(line).ok()?.payload_unverified()?;
    let statement: Statement = serde_json::from_slice(&payload).ok()?;
    let [subject] = statement.subject.as_slice() else {
        return None;
    };
    subject
        .digest
        .get("sha256")
        .map(|digest| digest.to_ascii_lowercase())
}

fn check_statement(
    statement: Statement,
    key_ids: Vec<KeyId>,
    expected: Expected<'_>,
    policy: &ProvenancePolicy,
) -> Result<VerifiedProvenance, ProvenanceError> {
    let mismatch = |field: &str, found: &str, wanted: &str| {
        ProvenanceError::new(field, format!("is {found:?}, expected {wanted:?}"))
    };
    if statement.statement_type != STATEMENT_TYPE {
        return Err(mismatch("_type", &statement.statement_type, STATEMENT_TYPE));
    }
    if statement.predicate_type != SLSA_PROVENANCE_V1 {
        return Err(mismatch(
            "predicateType",
            &statement.predicate_type,
            SLSA_PROVENANCE_V1,
        ));
    }
    let file_name = expected.identity.package_file_name(expected.driver);
    let [subject] = statement.subject.as_slice() else {
        return Err(ProvenanceError::new(
            "subject",
            format!(
                "must name exactly one artifact, names {}",
                statement.subject.len()
            ),
        ));
    };
    if subject.name.as_deref() != Some(file_name.as_str()) {
        return Err(mismatch(
            "subject.name",
            subject.name.as_deref().unwrap_or(""),
            &file_name,
        ));
    }
    let wanted_digest = expected.package_sha256.to_hex();
    match subject.digest.get("sha256") {
        Some(found) if found.eq_ignore_ascii_case(&wanted_digest) => {}
        found => {
            return Err(ProvenanceError::new(
                "subject.digest.sha256",
                format!(
                    "is {:?} but the package hashes to {wanted_digest}: the provenance is for \
                     another build of this package",
                    found.map(String::as_str).unwrap_or("")
                ),
            ));
        }
    }
    let definition = &statement.predicate.build_definition;
    if definition.build_type != BUILD_TYPE {
        return Err(mismatch(
            "buildDefinition.buildType",
            &definition.build_type,
            BUILD_TYPE,
        ));
    }
    let parameters = &definition.external_parameters;
    let host = ExternalParameters::of(expected.identity);
    for (field, found, wanted) in [
        (
            "kernel_version",
            &parameters.kernel_version,
            &host.kernel_version,
        ),
        ("architecture", &parameters.architecture, &host.architecture),
        ("distribution", &parameters.distribution, &host.distribution),
        (
            "distro_version",
            &parameters.distro_version,
            &host.distro_version,
        ),
        (
            "driver_version",
            &parameters.driver_version,
            &host.driver_version,
        ),
    ] {
        if found != wanted {
            return Err(mismatch(
                &format!("externalParameters.{field}"),
                found,
                wanted,
            ));
        }
    }
    let source = definition
        .resolved_dependencies
        .iter()
        .find(|d| d.name.as_deref() == Some(SOURCE_DEPENDENCY))
        .ok_or_else(|| {
            ProvenanceError::new("resolvedDependencies.source", "names no driver source")
        })?;
    let uri = source.uri.as_deref().unwrap_or("");
    let tag_ref = expected.identity.driver_version().tag_ref();
    let repository = uri
        .strip_prefix("git+")
        .and_then(|rest| rest.strip_suffix(&format!("@{tag_ref}")))
        .ok_or_else(|| {
            ProvenanceError::new(
                "resolvedDependencies.source.uri",
                format!("is {uri:?}, expected git+<repository>@{tag_ref}"),
            )
        })?;
    if normalize_repository(repository) != normalize_repository(&policy.expected_source_repository)
    {
        return Err(mismatch(
            "resolvedDependencies.source.uri",
            repository,
            &policy.expected_source_repository,
        ));
    }
    let commit_text = source
        .digest
        .get("gitCommit")
        .or_else(|| source.digest.get("sha256"))
        .map(String::as_str)
        .unwrap_or("");
    let commit = SourceCommit::parse(commit_text).map_err(|error| {
        ProvenanceError::new(
            "resolvedDependencies.source.digest",
            error.rule().to_owned(),
        )
    })?;
    if let Some(pinned) = &policy.pinned_commit
        && pinned != &commit
    {
        return Err(mismatch(
            "resolvedDependencies.source.digest",
            commit.as_str(),
            pinned.as_str(),
        ));
    }
    let builder_id = &statement.predicate.run_details.builder.id;
    if !policy
        .allowed_builders
        .iter()
        .any(|allowed| allowed == builder_id)
    {
        return Err(ProvenanceError::new(
            "runDetails.builder.id",
            format!(
                "{builder_id:?} is not an allowed builder (allowed: {})",
                if policy.allowed_builders.is_empty() {
                    "none".to_owned()
                } else {
                    policy.allowed_builders.join(", ")
                }
            ),
        ));
    }
    Ok(VerifiedProvenance {
        source_repository: repository.to_owned(),
        source_commit: commit,
        builder_id: builder_id.clone(),
        invocation_id: statement
            .predicate
            .run_details
            .metadata
            .invocation_id
            .clone(),
        statement,
        key_ids,
    })
}

fn normalize_repository(uri: &str) -> &str {
    let uri = uri.trim_end_matches('/');
    uri.strip_suffix(".git").unwrap_or(uri)
}

#[cfg(all(test, feature = "sign"))]
mod tests {
    use kernel_id::IdentityInput;

    use super::*;
    use crate::digest::sha256_bytes;
    use crate::facts::{CompilerFacts, HeaderPackage};
    use crate::keys::SecretKey;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
    const REPO: &str = "https://github.com/example/driver";
    const BUILDER: &str =
        "https://github.com/example/driver/.github/workflows/driver-build.yml@refs/heads/main";

    fn identity(release: &str, version: &str) -> KernelIdentity {
        KernelIdentity::from_input(&IdentityInput {
            kernel_version: release.to_owned(),
            architecture: "x86_64".to_owned(),
            distribution: "debian".to_owned(),
            distro_version: Some("12".to_owned()),
            driver_version: version.to_owned(),
        })
        .unwrap()
    }

    fn build(identity: KernelIdentity, package: &[u8]) -> BuildProvenance {
        BuildProvenance {
            driver: DriverName::parse("example-driver").unwrap(),
            identity,
            package_sha256: sha256_bytes(package),
            source_repository: REPO.to_owned(),
            source_commit: SourceCommit::parse(COMMIT).unwrap(),
            facts: BuildFacts {
                headers: vec![HeaderPackage {
                    name: "linux-headers-6.1.0-47-amd64".to_owned(),
                    version: "6.1.188-1".to_owned(),
                    file_name: "linux-headers-6.1.0-47-amd64_6.1.188-1_amd64.deb".to_owned(),
                    uri: None,
                    sha256: "ab".repeat(32),
                }],
                compiler: CompilerFacts {
                    name: "gcc-12".to_owned(),
                    kernel_cc_version_text: "gcc-12 (Debian 12.2.0-14) 12.2.0".to_owned(),
                    root_version_report: "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0".to_owned(),
                },
            },
            root: RootImage {
                uri: "mmdebstrap:debian/bookworm/amd64".to_owned(),
                sha256: "cd".repeat(32),
            },
            builder_id: BUILDER.to_owned(),
            invocation_id: "build-1".to_owned(),
            started_on: "2026-12-03T10:00:00Z".to_owned(),
            finished_on: "2026-12-03T10:02:00Z".to_owned(),
        }
    }

    fn policy() -> ProvenancePolicy {
        ProvenancePolicy {
            expected_source_repository: format!("{REPO}.git"),
            allowed_builders: vec![BUILDER.to_owned()],
            pinned_commit: None,
        }
    }

    #[test]
    fn the_claimed_digest_is_read_without_a_key_and_only_from_a_well_formed_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate(&dir.path().join("k"), &dir.path().join("k.pub")).unwrap();
        let package = b"the package";
        let file = build(identity("6.1.0-47-amd64", "v0.1.2"), package).signed_file(&key);
        assert_eq!(
            claimed_package_sha256(&file),
            Some(sha256_bytes(package).to_hex())
        );
        assert_eq!(claimed_package_sha256(""), None);
        assert_eq!(claimed_package_sha256("{\"payload\": 1}"), None);
        assert_eq!(claimed_package_sha256(&file[..file.len() / 2]), None);
    }

    #[test]
    fn a_signed_statement_verifies_and_each_mismatch_names_its_field() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate(&dir.path().join("k"), &dir.path().join("k.pub")).unwrap();
        let mut ring = Keyring::new();
        ring.insert(key.public().clone(), "k").unwrap();
        let driver = DriverName::parse("example-driver").unwrap();
        let id = identity("6.1.0-47-amd64", "v0.1.2");
        let package = b"the package";
        let digest = sha256_bytes(package);
        let file = build(id.clone(), package).signed_file(&key);
        let expected = Expected {
            driver: &driver,
            identity: &id,
            package_sha256: &digest,
        };
        let verified = verify(&file, &ring, expected, &policy()).unwrap();
        assert_eq!(verified.source_commit.as_str(), COMMIT);
        assert_eq!(verified.key_ids, vec![key.id()]);
        assert_eq!(verified.headers().len(), 1);

        let field_of =
            |result: Result<VerifiedProvenance, ProvenanceError>| result.unwrap_err().field;
        let other_digest = sha256_bytes(b"another package");
        assert_eq!(
            field_of(verify(
                &file,
                &ring,
                Expected {
                    package_sha256: &other_digest,
                    ..expected
                },
                &policy()
            )),
            "subject.digest.sha256"
        );
        let other_kernel = identity("6.1.0-50-amd64", "v0.1.2");
        assert_eq!(
            field_of(verify(
                &file,
                &ring,
                Expected {
                    identity: &other_kernel,
                    ..expected
                },
                &policy()
            )),
            "subject.name"
        );
        let mut wrong_repo = policy();
        wrong_repo.expected_source_repository = "https://github.com/evil/driver".to_owned();
        assert_eq!(
            field_of(verify(&file, &ring, expected, &wrong_repo)),
            "resolvedDependencies.source.uri"
        );
        let mut no_builder = policy();
        no_builder.allowed_builders = vec!["https://other".to_owned()];
        assert_eq!(
            field_of(verify(&file, &ring, expected, &no_builder)),
            "runDetails.builder.id"
        );
        let mut pinned = policy();
        pinned.pinned_commit = Some(SourceCommit::parse(&"f".repeat(40)).unwrap());
        assert_eq!(
            field_of(verify(&file, &ring, expected, &pinned)),
            "resolvedDependencies.source.digest"
        );
        assert_eq!(
            field_of(verify(&file, &Keyring::new(), expected, &policy())),
            "envelope"
        );
        assert_eq!(field_of(verify("", &ring, expected, &policy())), "envelope");

        // A statement for the same package name but another kernel inside: the identity check.
        let mut lying = build(id.clone(), package);
        lying.identity = other_kernel.clone();
        let mut statement = lying.statement();
        statement.subject[0].name = Some(id.package_file_name(&driver));
        let payload = serde_json::to_vec(&statement).unwrap();
        let forged = Envelope::sign(&key, PAYLOAD_TYPE, &payload).to_line();
        assert_eq!(
            field_of(verify(&forged, &ring, expected, &policy())),
            "externalParameters.kernel_version"
        );

        // Tampering with the signed payload breaks the envelope.
        let mut envelope = Envelope::parse(file.trim()).unwrap();
        let mut statement: Statement =
            serde_json::from_slice(&envelope.payload_unverified().unwrap()).unwrap();
        statement.predicate.run_details.builder.id = "https://evil".to_owned();
        use base64::Engine as _;
        envelope.payload = base64::engine::general_purpose::STANDARD
            .encode(serde_json::to_vec(&statement).unwrap());
        assert_eq!(
            field_of(verify(&envelope.to_line(), &ring, expected, &policy())),
            "envelope"
        );
    }

    #[test]
    fn countersigning_keeps_artifacts_verifiable_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let old =
            SecretKey::generate(&dir.path().join("old"), &dir.path().join("old.pub")).unwrap();
        let new =
            SecretKey::generate(&dir.path().join("new"), &dir.path().join("new.pub")).unwrap();
        let mut old_ring = Keyring::new();
        old_ring.insert(old.public().clone(), "old").unwrap();
        let mut new_ring = Keyring::new();
        new_ring.insert(new.public().clone(), "new").unwrap();
        let driver = DriverName::parse("example-driver").unwrap();
        let id = identity("6.1.0-47-amd64", "v0.1.2");
        let digest = sha256_bytes(b"p");
        let expected = Expected {
            driver: &driver,
            identity: &id,
            package_sha256: &digest,
        };
        let file = build(id.clone(), b"p").signed_file(&old);
        assert!(verify(&file, &new_ring, expected, &policy()).is_err());
        assert!(
            countersign(&file, &new_ring, &new).is_err(),
            "unverified envelopes are not countersigned"
        );
        let both = countersign(&file, &old_ring, &new).unwrap();
        assert_eq!(
            verify(&both, &new_ring, expected, &policy())
                .unwrap()
                .key_ids,
            vec![new.id()]
        );
        assert!(verify(&both, &old_ring, expected, &policy()).is_ok());
    }
}
