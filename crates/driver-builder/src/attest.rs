//! `driver-builder attest`: the build provenance of a package (`<package>.intoto.jsonl`), signed by a
//! signer outside the build root — the GitHub workflow's signing step, which holds the key the build
//! container never sees. The statement is [`integrity::provenance::BuildProvenance`], the same one
//! the build-service signs for local builds: what only the root could see comes from the builder's
//! `build-facts.json`; everything else is what the signer knows itself (the package's digest, which
//! is computed here, the identity, which is read from the package's kernel-id file name, the source
//! revision, the root image, the builder id, the build id and the times).
//!
//! A provenance file that already exists is never replaced.

use std::path::{Path, PathBuf};

use integrity::facts::{BuildFacts, RootImage};
use integrity::provenance::BuildProvenance;
use integrity::{SecretKey, Sha256Digest};
use kernel_id::SourceCommit;

use crate::artifact::{ArtifactError, identify_package, package_digest, write_new};

/// Everything the signer knows about one finished build, validated.
#[derive(Debug, Clone)]
pub struct Attestation {
    /// The package; its file name must be kernel-id's name for its identity.
    pub package: PathBuf,
    /// What the build root observed (the builder's `build-facts.json`).
    pub facts: BuildFacts,
    /// The build root: image reference and digest.
    pub root: RootImage,
    pub source_repository: String,
    pub source_commit: SourceCommit,
    pub builder_id: String,
    pub invocation_id: String,
    /// RFC 3339, UTC.
    pub started_on: String,
    pub finished_on: String,
}

/// Writes `<package>.intoto.jsonl` beside the package, signed by `key`; returns its path.
pub fn write_provenance(
    attestation: &Attestation,
    key: &SecretKey,
) -> Result<PathBuf, ArtifactError> {
    let package = &attestation.package;
    let (driver, identity) = identify_package(package)?;
    let dir = package.parent().unwrap_or(Path::new("."));
    let path = dir.join(identity.provenance_file_name(&driver));
    // Checked first so that a refusal costs no hashing; the write below refuses a race's loser too.
    if path.exists() {
        return Err(ArtifactError::Exists {
            path: path.display().to_string(),
        });
    }
    let package_sha256 = package_digest(package)?;
    let provenance = BuildProvenance {
        driver,
        identity,
        package_sha256,
        source_repository: attestation.source_repository.clone(),
        source_commit: attestation.source_commit.clone(),
        facts: attestation.facts.clone(),
        root: attestation.root.clone(),
        builder_id: attestation.builder_id.clone(),
        invocation_id: attestation.invocation_id.clone(),
        started_on: attestation.started_on.clone(),
        finished_on: attestation.finished_on.clone(),
    };
    write_new(&path, provenance.signed_file(key).as_bytes())?;
    tracing::info!(
        file = %path.display(),
        sha256 = %package_sha256,
        key_id = %key.id(),
        "wrote the build provenance"
    );
    Ok(path)
}

/// A root image digest: 64 hex digits, optionally written `sha256:<hex>` as registries show it;
/// returned as 64 lowercase hex digits.
pub fn parse_root_digest(text: &str) -> Result<String, String> {
    let hex_digits = text.strip_prefix("sha256:").unwrap_or(text);
    Sha256Digest::from_hex(hex_digits).map(|digest| digest.to_hex())
}

/// An RFC 3339 time, normalized to UTC (`2026-12-03T10:00:00Z`).
pub fn parse_time(text: &str) -> Result<time::OffsetDateTime, String> {
    use time::format_description::well_known::Rfc3339;
    let at = time::OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|error| format!("{text:?} is not an RFC 3339 time ({error})"))?;
    at.checked_to_offset(time::UtcOffset::UTC)
        .ok_or_else(|| format!("{text:?} is out of range in UTC"))
}

/// The RFC 3339 text of a time, in UTC.
pub fn format_time(at: time::OffsetDateTime) -> String {
    use time::format_description::well_known::Rfc3339;
    at.checked_to_offset(time::UtcOffset::UTC)
        .and_then(|utc| utc.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_digests_and_times_are_normalized() {
        let hex = "AB".repeat(32);
        assert_eq!(parse_root_digest(&hex).unwrap(), "ab".repeat(32));
        assert_eq!(
            parse_root_digest(&format!("sha256:{hex}")).unwrap(),
            "ab".repeat(32)
        );
        for bad in ["", "sha256:", "sha512:abcd", &"g".repeat(64)] {
            assert!(parse_root_digest(bad).is_err(), "{bad:?}");
        }
        let at = parse_time("2026-12-03T12:00:00+02:00").unwrap();
        assert_eq!(format_time(at), "2026-12-03T10:00:00Z");
        assert_eq!(
            format_time(parse_time("2026-12-03T10:00:00.5Z").unwrap()),
            "2026-12-03T10:00:00.5Z"
        );
        for bad in ["", "2026-12-03", "2026-12-03 10:00:00", "yesterday"] {
            assert!(parse_time(bad).is_err(), "{bad:?}");
        }
    }
}
