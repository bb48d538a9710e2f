//! Kernel identity: the one definition of what a driver artifact is for — kernel release,
//! architecture, distribution, distro version and driver version — and of every name derived from it
//! (package file names, package metadata, release tags, download paths, cache keys, kernels.json
//! entries). Every other crate calls this one instead of re-deriving names.
//!
//! Architecture invariant: this crate does no IO, no async and no networking (CI checks its dependency
//! tree). Validation here is the security boundary for strings that later reach shells, workflow
//! inputs, file names and URLs.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod arch;
mod crawler;
mod derive;
mod distro;
mod driver;
mod error;
mod family;
mod identity;
pub mod kernels_json;
mod layout;
mod livepatch;
mod macros;
mod os_release;
mod release;
pub mod version_order;

pub use arch::Arch;
pub use crawler::{CrawlerKernel, Underivable, deb_kernel_from_headers};
pub use derive::derive_distro_version;
pub use distro::{Distribution, DistroVersion, PackageFormat};
pub use driver::{
    DriverName, DriverVersion, MAX_DRIVER_NAME_LEN, MAX_DRIVER_VERSION_LEN, SourceCommit,
};
pub use error::{Field, IdError};
pub use family::{DEFAULT_RPM_FLAVOR, KernelFamily};
pub use identity::{IdentityInput, KernelIdentity};
pub use kernels_json::{KernelsEntry, KernelsFile};
pub use layout::{ReleaseLayout, percent_encode_segment};
pub use livepatch::{AL2023_LIVEPATCH_PREFIX, al2023_livepatch_kernel, al2023_livepatch_package};
pub use os_release::{MAX_OS_RELEASE_LEN, OsRelease};
pub use release::{KernelRelease, MAX_RELEASE_LEN};
pub use version_order::{
    DebVersion, RpmEvr, VersionError, dpkg_cmp, kernel_release_cmp, rpmvercmp,
};
