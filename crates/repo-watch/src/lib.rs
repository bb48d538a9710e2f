//! repo-watch: watches the distributions' own package indexes for newer kernels of the families a
//! fleet runs, so their drivers can be prebuilt before the first node boots one.
//!
//! - [`fetch`]: the [`fetch::IndexFetcher`] seam (one conditional GET) and its reqwest
//!   implementation;
//! - [`apt`]: Debian and Ubuntu (`InRelease` + `Packages.xz`, every pocket);
//! - [`rpm`]: Fedora, CentOS Stream and Amazon Linux 2023 (`repomd.xml` + primary metadata,
//!   including AL2023's livepatch repository), over [`rpmmd`]'s readers;
//! - [`state`]: what is remembered between passes, so an unchanged pass costs only the small
//!   conditional requests;
//! - [`watch`]: one pass over every index the fleet's targets need; [`plan`]: the pure choice of
//!   what to prebuild.
//!
//! [`compression`] and [`rpmmd`] are pure readers, and [`kernels_json`] grows the fleet's kernels.json
//! under a file lock, all without an async runtime or HTTP client; they are all that remains with the
//! default `watch` feature off (matrix-gen's `add-kernel` and AL2023 livepatch discovery use them so).

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod compression;
pub mod kernels_json;
pub mod rpmmd;

#[cfg(feature = "watch")]
pub mod apt;
#[cfg(feature = "watch")]
pub mod fetch;
#[cfg(feature = "watch")]
pub mod plan;
#[cfg(feature = "watch")]
pub mod rpm;
#[cfg(feature = "watch")]
pub mod state;
#[cfg(feature = "watch")]
pub mod watch;

#[cfg(feature = "watch")]
pub use fetch::{
    FetchError, FetchRequest, Fetched, HttpFetcher, IndexFetcher, IndexKind, Validators,
};
#[cfg(feature = "watch")]
pub use plan::{Catalog, FamilyDemand, FamilyPlan, Published, plan};
#[cfg(feature = "watch")]
pub use watch::{Observation, PassStats, RequestResult, RpmSource, Sources, WatchError, Watcher};
