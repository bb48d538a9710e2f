//! matrix-gen: plans the nightly batch. Sources (kernels.json by default; the kernel-crawler feed and
//! Amazon Linux 2023 livepatch repositories on request) become deduplicated identities, minus what is
//! already published, split into GitHub Actions matrices that respect the 256-job and 1 MB limits.
//! Every identity and name comes from kernel-id; this crate only gathers, filters and shards.

pub mod add_kernel;
pub mod crawler;
pub mod livepatch;
pub mod plan;
pub mod report;

pub use plan::{Job, Plan, PlanOptions, Shard};
pub use report::Report;
