//! Integration tests of the local executor against real parts: real mmdebstrap roots of the target
//! suites as overlays over their shared unpacked image (and unpacked, the fallback), real Debian
//! kernel headers installed with apt inside them and kept in the header cache by the real static
//! builder, the sample driver compiled with kbuild, and the repository's Dockerfiles linted with
//! hadolint.
//!
//! Base images and downloaded packages are cached under `testkit::cache_dir()/build-root`, locked per
//! root, so parallel test processes share one mmdebstrap run per suite and architecture.

mod arm64;
mod cleanup;
mod debian;
mod docker;
mod header_cache;
mod helpers;
mod overlay;
