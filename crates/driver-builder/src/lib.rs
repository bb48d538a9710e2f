//! `driver-builder`: builds one driver artifact for one kernel identity, inside a build root of the
//! target's own distro version — resolve headers -> compile with kbuild -> package (.deb/.rpm) ->
//! write a minisign signature and a SHA-256 digest next to the package, and `build-facts.json`
//! (the header packages installed, with the digest of each package file, and the compiler).
//! The source commit given on the command line is passed to kbuild as `KDRIVER_SOURCE_COMMIT`,
//! checked in every module's `scmversion` and recorded in the package. Keys, digests, signatures
//! and provenance are the [`integrity`] crate's; `driver-builder attest` writes a package's signed
//! build provenance for signers outside the build root.
//!
//! IO sits behind small traits so the same logic runs in production and under tests:
//! [`system::CommandRunner`] (spawning commands, directly or through `chroot`), [`http::Http`]
//! (downloads and XML-RPC) and [`headers::HeaderSource`] (one link of the header fallback chain).
//! Every identity value is parsed and every name derived by `kernel-id`.

pub mod artifact;
pub mod attest;
pub mod cli;
pub mod compile;
pub mod facts;
pub mod headers;
pub mod http;
pub mod pipeline;
pub mod system;
pub mod xmlrpc;

pub use pipeline::{
    BuildError, BuildOutcome, BuildRequest, Phase, PhaseTime, SourceRevision, build,
};
