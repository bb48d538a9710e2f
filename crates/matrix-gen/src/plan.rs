//! From gathered identities to GitHub Actions matrices: filter, subtract what is published, order
//! deterministically, and split into shards of at most 256 jobs whose JSON stays under the output limit.

use std::collections::{BTreeMap, BTreeSet};

use kernel_id::{Arch, Distribution, DriverName, KernelIdentity};
use serde::Serialize;

/// GitHub Actions runs at most this many jobs per matrix.
pub const MAX_JOBS_PER_MATRIX: usize = 256;
/// A job output may be at most 1 MB; stay well below it.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 900_000;

/// One build in a matrix: the full identity plus what the workflow needs to run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Job {
    /// `uname -r`.
    pub kernel_version: String,
    /// `x86_64` or `aarch64`.
    pub architecture: String,
    /// Distribution id.
    pub distribution: String,
    /// Distribution version.
    pub distro_version: String,
    /// Driver version.
    pub driver_version: String,
    /// The package file name the build publishes.
    pub package: String,
    /// The runner label for this architecture.
    pub runner: &'static str,
    /// Header package URLs when the source knows them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
}

/// One matrix: at most 256 jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shard {
    /// The jobs, as `strategy.matrix.include`.
    pub include: Vec<Job>,
}

/// Filters and limits for a plan.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Keep only these architectures (empty: all).
    pub arches: Vec<Arch>,
    /// Keep only these distributions (empty: all).
    pub distributions: Vec<Distribution>,
    /// Keep only these distro versions (empty: all).
    pub distro_versions: Vec<String>,
    /// Jobs per shard (at most 256).
    pub max_jobs_per_shard: usize,
    /// Bytes per shard's `matrix=` JSON.
    pub max_output_bytes: usize,
}

/// Gathered kernels, deduplicated by identity, in a deterministic order.
#[derive(Debug, Default)]
pub struct Plan {
    kernels: BTreeMap<KernelIdentity, BTreeSet<String>>,
}

/// A plan that can't be expressed in GitHub Actions limits.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Too many shards for one fan-out matrix.
    #[error(
        "{jobs} jobs need {shards} shards, but one workflow can fan out to at most {MAX_JOBS_PER_MATRIX}; narrow the plan with --built or filters"
    )]
    TooManyShards {
        /// Jobs in the plan.
        jobs: usize,
        /// Shards needed.
        shards: usize,
    },
    /// One job alone is larger than the output limit.
    #[error("the job for {0} alone exceeds the output size limit")]
    JobTooLarge(String),
    /// A limit outside what Actions allows.
    #[error("--max-jobs-per-shard must be between 1 and {MAX_JOBS_PER_MATRIX} (got {0})")]
    BadShardSize(usize),
}

impl Plan {
    /// Adds a kernel (merging header URLs when it is already there).
    pub fn add(&mut self, identity: KernelIdentity, headers: impl IntoIterator<Item = String>) {
        self.kernels.entry(identity).or_default().extend(headers);
    }

    /// Number of distinct identities.
    pub fn len(&self) -> usize {
        self.kernels.len()
    }

    /// Whether the plan is empty.
    pub fn is_empty(&self) -> bool {
        self.kernels.is_empty()
    }

    /// Drops identities that are already published.
    pub fn remove_built(&mut self, built: &BTreeSet<KernelIdentity>) {
        self.kernels.retain(|identity, _| !built.contains(identity));
    }

    /// The jobs that pass the filters, in deterministic order.
    pub fn jobs(&self, driver: &DriverName, options: &PlanOptions) -> Vec<Job> {
        self.kernels
            .iter()
            .filter(|(id, _)| options.arches.is_empty() || options.arches.contains(&id.arch()))
            .filter(|(id, _)| {
                options.distributions.is_empty()
                    || options.distributions.contains(&id.distribution())
            })
            .filter(|(id, _)| {
                options.distro_versions.is_empty()
                    || options
                        .distro_versions
                        .iter()
                        .any(|v| v == id.distro_version().as_str())
            })
            .map(|(id, headers)| Job {
                kernel_version: id.kernel_release().to_string(),
                architecture: id.arch().to_string(),
                distribution: id.distribution().to_string(),
                distro_version: id.distro_version().to_string(),
                driver_version: id.driver_version().to_string(),
                package: id.package_file_name(driver),
                runner: runner_for(id.arch()),
                headers: headers.iter().cloned().collect(),
            })
            .collect()
    }
}

/// GitHub-hosted runner labels per architecture (arm64 runs natively on arm64 runners).
fn runner_for(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "ubuntu-24.04",
        Arch::Aarch64 => "ubuntu-24.04-arm",
    }
}

/// Splits jobs into shards of at most `max_jobs_per_shard` jobs whose JSON fits `max_output_bytes`.
pub fn shard(jobs: Vec<Job>, options: &PlanOptions) -> Result<Vec<Shard>, PlanError> {
    let max_jobs = if options.max_jobs_per_shard == 0 {
        MAX_JOBS_PER_MATRIX
    } else {
        options.max_jobs_per_shard
    };
    if max_jobs > MAX_JOBS_PER_MATRIX {
        return Err(PlanError::BadShardSize(max_jobs));
    }
    let max_bytes = if options.max_output_bytes == 0 {
        DEFAULT_MAX_OUTPUT_BYTES
    } else {
        options.max_output_bytes
    };
    // `{"include":[` + `]}` plus a comma per job.
    const ENVELOPE: usize = 14;
    let total = jobs.len();
    let mut shards = Vec::new();
    let mut current: Vec<Job> = Vec::new();
    let mut bytes = ENVELOPE;
    for job in jobs {
        // Counted, not collected: only one shard's JSON is ever printed.
        let mut counter = ByteCounter(0);
        let size = serde_json::to_writer(&mut counter, &job)
            .map(|()| counter.0 + 1)
            .unwrap_or(usize::MAX);
        if size + ENVELOPE > max_bytes {
            return Err(PlanError::JobTooLarge(job.package));
        }
        if current.len() == max_jobs || bytes + size > max_bytes {
            shards.push(Shard {
                include: std::mem::take(&mut current),
            });
            bytes = ENVELOPE;
        }
        bytes += size;
        current.push(job);
    }
    if !current.is_empty() {
        shards.push(Shard { include: current });
    }
    if shards.len() > MAX_JOBS_PER_MATRIX {
        return Err(PlanError::TooManyShards {
            jobs: total,
            shards: shards.len(),
        });
    }
    Ok(shards)
}

/// A writer that only counts what it is given.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `$GITHUB_OUTPUT` lines describing the plan: job count and the shard indexes to fan out over.
pub fn plan_outputs(shards: &[Shard]) -> String {
    let indexes: Vec<usize> = (0..shards.len()).collect();
    let jobs: usize = shards.iter().map(|s| s.include.len()).sum();
    format!(
        "jobs={jobs}\nshard-count={}\nshards={}\n",
        shards.len(),
        serde_json::to_string(&indexes).expect("integers serialize")
    )
}

/// The `matrix=<json>` line of one shard.
pub fn matrix_output(shard: &Shard) -> String {
    format!(
        "matrix={}\n",
        serde_json::to_string(shard).expect("jobs serialize")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: usize) -> Job {
        Job {
            kernel_version: format!("6.1.0-{n}-amd64"),
            architecture: "x86_64".into(),
            distribution: "debian".into(),
            distro_version: "12".into(),
            driver_version: "v0.1.0".into(),
            package: format!("p{n}"),
            runner: "ubuntu-24.04",
            headers: vec!["h".repeat(100)],
        }
    }

    #[test]
    fn shards_respect_count_and_size() {
        let jobs: Vec<Job> = (0..600).map(job).collect();
        let by_count = shard(jobs.clone(), &PlanOptions::default()).unwrap();
        assert_eq!(
            by_count.iter().map(|s| s.include.len()).collect::<Vec<_>>(),
            [256, 256, 88]
        );
        let by_size = shard(
            jobs,
            &PlanOptions {
                max_output_bytes: 10_000,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(by_size.len() > 3);
        for s in &by_size {
            assert!(matrix_output(s).len() <= 10_000 + "matrix=\n".len());
        }
    }
}
