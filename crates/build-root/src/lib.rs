//! Clean build roots for the local executor, without Docker.
//!
//! A root is a Debian-family file system made by `mmdebstrap` for one (distribution, distro version,
//! arch), with the toolchain from `toolchain/packages.txt` preinstalled, cached as a tarball
//! ([`root::RootCache`], the local "prebuilt base image", whose SHA-256 is computed once and kept
//! beside it) and unpacked once into a shared read-only lower directory ([`layers`]). Each build gets
//! a fresh overlay over it ([`work::WorkRoot`]; unpacked instead where overlayfs cannot be
//! mounted), with apt lists shared and refreshed at most once per interval ([`lists`]) and the
//! kernel's header packages from the host's cache ([`headers`]); it copies in the builder and the
//! driver source, runs the builder with chroot as root under a time limit (telling it the source
//! revision to record), copies `/build/out` back, adds `root-image.json` (the base image's URI and
//! SHA-256), keeps the header packages it downloaded and removes the root whatever happened
//! ([`executor::LocalExecutor`]). RPM distributions are refused with a pointer to the container
//! path.
//!
//! Invariant: an identity is always built in the root of its own distro version and architecture,
//! and nothing a build writes reaches a layer other builds share.

pub mod error;
pub mod executor;
pub mod headers;
pub mod host;
pub mod layers;
pub mod lists;
mod process;
pub mod root;
pub mod toolchain;
pub mod work;

pub use error::{BuildRootError, Result};
pub use process::{CANCEL_LATENCY, Cancel, Ended, run_cancellable};
