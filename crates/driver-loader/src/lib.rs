//! `driver_loader`: makes the running kernel get the exact driver build made for it.
//!
//! A run identifies the host (os-release, kernel release, machine) as a `kernel-id` identity, fetches that
//! identity's package from the artifact store, or has the build service build it first, verifies its digest
//! and minisign signature, checks every module's `.modinfo` against the running kernel (and, where the kernel
//! enforces module signatures, the module's own signature against the kernel's trusted keys), and then installs
//! it with the system package manager and modprobes it (host mode) or loads it straight from a private
//! extraction with `finit_module` (container mode). After a run it reports to the build service what
//! happened (`report`). `prefetch` does the fetching, verifying and checking ahead of time for kernels the
//! host has installed but not booted (`pending`), so the reboot into one loads from the verified cache.
//! See the crate README for the CLI and exit codes.

pub mod compat;
pub mod error;
pub mod fetch;
pub mod flow;
pub mod host;
pub mod http;
pub mod install;
pub mod kernel;
pub mod modinfo;
pub mod module_signature;
pub mod module_trust;
pub mod pending;
pub mod prefetch;
pub mod report;
pub mod verify;

pub use error::{FailureKind, LoaderError, Result};
pub use flow::{LoaderConfig, Mode, ModuleAction, RunProgress, RunReport};
