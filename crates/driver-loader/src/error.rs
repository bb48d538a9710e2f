//! The loader's error type. Every failure belongs to one [`FailureKind`], and each kind has a fixed process
//! exit code, so a systemd unit, a DaemonSet or a script can tell "no artifact yet" from "tampered
//! artifact" without parsing messages.

use std::path::PathBuf;

use thiserror::Error;

/// What went wrong, coarsely; one exit code per kind (documented in the crate README).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// Bad configuration or command line (also what clap uses for usage errors).
    Config,
    /// The host could not be mapped to a kernel identity (unknown distribution, unreadable os-release...).
    Identify,
    /// The artifact could not be obtained: network failure after retries, deadline, 404 with no build service.
    Fetch,
    /// The build service reported the build as failed or timed out.
    Build,
    /// Digest or signature verification failed, or the package is unsigned.
    Verify,
    /// The package's build provenance is missing, does not verify with the trusted keys, or says
    /// something the policy refuses (another package, source repository, builder or commit).
    Provenance,
    /// A module in the package does not fit the running kernel (vermagic, name, dependencies).
    Incompatible,
    /// Installing the package or loading a module failed.
    Load,
    /// A different version of the module is loaded and replacing it was not allowed.
    VersionConflict,
    /// The running kernel enforces module signatures (module.sig_enforce, lockdown) and the module is
    /// unsigned or signed by a key it does not trust (found before loading, or the kernel said so).
    ModuleSignature,
    /// Anything else (local IO errors, malformed packages).
    Internal,
}

impl FailureKind {
    /// The process exit code for this kind.
    pub fn exit_code(self) -> u8 {
        match self {
            FailureKind::Internal => 1,
            FailureKind::Config => 2,
            FailureKind::Identify => 3,
            FailureKind::Fetch => 4,
            FailureKind::Build => 5,
            FailureKind::Verify => 6,
            FailureKind::Incompatible => 7,
            FailureKind::Load => 8,
            FailureKind::VersionConflict => 9,
            FailureKind::Provenance => 10,
            FailureKind::ModuleSignature => 11,
        }
    }
}

/// Errors of the loader library.
#[derive(Debug, Error)]
pub enum LoaderError {
    #[error("configuration: {0}")]
    Config(String),

    #[error("identify: {0}")]
    Identify(String),

    #[error("identify: {0}")]
    Identity(#[from] kernel_id::IdError),

    #[error("fetch {url}: {reason}")]
    Fetch { url: String, reason: String },

    #[error("deadline of {seconds} s exceeded while {doing}")]
    Deadline { seconds: u64, doing: String },

    #[error("artifact {url} does not exist (404) and no build service is configured")]
    NotFound { url: String },

    #[error("build service: {0}")]
    BuildService(String),

    #[error(
        "the build service refused to build it (HTTP {status}): {field}: {rule}; no build will come"
    )]
    BuildRefused {
        status: u16,
        field: String,
        rule: String,
    },

    #[error("build {build_id} ended with status {status}: {reason}")]
    BuildFailed {
        build_id: String,
        status: String,
        reason: String,
    },

    #[error("verify {file}: {reason}")]
    Verify { file: String, reason: String },

    /// A provenance refusal: `field` is the statement field that did not match (`envelope` when
    /// the file itself is missing, unsigned by a trusted key or altered).
    #[error("provenance {file}: {field}: {reason}")]
    Provenance {
        file: String,
        field: String,
        reason: String,
    },

    #[error("module {module}: {reason}")]
    Incompatible { module: String, reason: String },

    /// The kernel would refuse (or refused) the module's signature; the reason names the signer, the
    /// enforcement and how to enrol the build service's certificate.
    #[error("module {module}: {reason}")]
    ModuleSignature { module: String, reason: String },

    #[error("package {package}: {reason}")]
    Package { package: PathBuf, reason: String },

    #[error("install: {0}")]
    Install(String),

    #[error("load module {module}: {reason}")]
    Load { module: String, reason: String },

    #[error(
        "module {module} is loaded with srcversion {loaded} but the package carries {wanted}; \
         pass --replace (DRIVER_LOADER_REPLACE=true) to unload and replace it"
    )]
    VersionConflict {
        module: String,
        loaded: String,
        wanted: String,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl LoaderError {
    /// The failure kind, which decides the exit code.
    pub fn kind(&self) -> FailureKind {
        match self {
            LoaderError::Config(_) => FailureKind::Config,
            LoaderError::Identify(_) | LoaderError::Identity(_) => FailureKind::Identify,
            LoaderError::Fetch { .. }
            | LoaderError::Deadline { .. }
            | LoaderError::NotFound { .. }
            | LoaderError::BuildService(_) => FailureKind::Fetch,
            LoaderError::BuildFailed { .. } | LoaderError::BuildRefused { .. } => {
                FailureKind::Build
            }
            LoaderError::Verify { .. } => FailureKind::Verify,
            LoaderError::Provenance { .. } => FailureKind::Provenance,
            LoaderError::Incompatible { .. } => FailureKind::Incompatible,
            LoaderError::Install(_) | LoaderError::Load { .. } => FailureKind::Load,
            LoaderError::VersionConflict { .. } => FailureKind::VersionConflict,
            LoaderError::ModuleSignature { .. } => FailureKind::ModuleSignature,
            LoaderError::Package { .. } | LoaderError::Io { .. } => FailureKind::Internal,
        }
    }

    /// An IO error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        LoaderError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn verify(file: impl Into<String>, reason: impl Into<String>) -> Self {
        LoaderError::Verify {
            file: file.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn provenance(
        file: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        LoaderError::Provenance {
            file: file.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn incompatible(module: impl Into<String>, reason: impl Into<String>) -> Self {
        LoaderError::Incompatible {
            module: module.into(),
            reason: reason.into(),
        }
    }
}

/// Result alias of the loader library.
pub type Result<T, E = LoaderError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_exit_code_provenance_is_10_and_module_signature_11() {
        let kinds = [
            FailureKind::Internal,
            FailureKind::Config,
            FailureKind::Identify,
            FailureKind::Fetch,
            FailureKind::Build,
            FailureKind::Verify,
            FailureKind::Incompatible,
            FailureKind::Load,
            FailureKind::VersionConflict,
            FailureKind::Provenance,
            FailureKind::ModuleSignature,
        ];
        let codes: Vec<u8> = kinds.iter().map(|k| k.exit_code()).collect();
        assert_eq!(codes, (1..=11).collect::<Vec<u8>>());
        let error = LoaderError::provenance(
            "p.intoto.jsonl",
            "runDetails.builder.id",
            "\"https://evil\" is not an allowed builder (allowed: x)",
        );
        assert_eq!(error.kind(), FailureKind::Provenance);
        assert_eq!(
            error.to_string(),
            "provenance p.intoto.jsonl: runDetails.builder.id: \"https://evil\" is not an allowed builder (allowed: x)"
        );
    }
}
