//! One home for everything that makes an artifact trustworthy, used by the builder, the service, the
//! loader and the fleet tests alike:
//!
//! - [`digest`]: SHA-256 of files and bytes and the `sha256sum`-format digest file beside a package;
//! - [`keys`]: minisign public keys, a [`keys::Keyring`] of trusted keys by key id and, with the
//!   `sign` feature, secret keys (minisign CLI or crate format; refused when readable by others);
//! - [`signature`]: the detached package signature, whose binding to the package's file name is
//!   mandatory;
//! - [`dsse`]: DSSE envelopes signed with the same Ed25519 keys, each signature naming its key id;
//! - [`module_signing`]: the certificate (DER) and PEM private key of kernel module signing;
//! - [`provenance`]: the in-toto Statement v1 / SLSA Provenance v1 of a driver build, how it is made
//!   from what the build observed ([`facts`]) and what the loader checks before anything reaches
//!   the kernel.
//!
//! No network and no async: the static loader links it.

pub mod digest;
pub mod dsse;
pub mod facts;
pub mod keys;
pub mod module_signing;
pub mod provenance;
pub mod signature;

pub use digest::{DigestFile, Sha256Digest, Sha256Stream, sha256_bytes, sha256_file};
pub use dsse::Envelope;
pub use facts::{BUILD_FACTS_FILE, BuildFacts, CompilerFacts, HeaderPackage, RootImage};
#[cfg(feature = "sign")]
pub use keys::SecretKey;
pub use keys::{KeyError, KeyId, Keyring, PublicKey};
pub use provenance::{BuildProvenance, ProvenanceError, ProvenancePolicy, Statement};
pub use signature::{SignatureError, VerifiedSignature};
