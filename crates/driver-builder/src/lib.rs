//! `driver-builder`: builds one driver artifact for one kernel identity, inside a build root of the
//! target's own distro version — resolve headers -> compile with kbuild -> package (.deb/.rpm) ->
//! write a minisign signature and a SHA-256 digest next to the package.
//!
//! IO sits behind small traits so the same logic runs in production and under tests:
//! [`system::CommandRunner`] (spawning commands, directly or through `chroot`), [`http::Http`]
//! (downloads and XML-RPC) and [`headers::HeaderSource`] (one link of the header fallback chain).
//! Every identity value is parsed and every name derived by `kernel-id`.

pub mod artifact;
pub mod cli;
pub mod compile;
pub mod headers;
pub mod http;
pub mod pipeline;
pub mod system;
pub mod xmlrpc;

pub use pipeline::{
    BuildError, BuildOutcome, BuildRequest, ModuleSigning, Phase, PhaseTime, build,
};
