//! `cargo xtask fleet --all`: every amd64 and arm64 kernel image reachable from the configured
//! Debian suites (generic, cloud and rt flavors) gets a cold node (build on demand) and then a warm
//! node (prebuilt hit), a bounded number of kernels at a time, and the results become a table.
//!
//! "Reachable" means listed in a suite's package index. Two kinds of listed kernel cannot reach a
//! driver here, and the table says which rather than calling them failures of the system: an image
//! the mirror no longer serves, and a kernel whose headers are in no configured suite (Debian keeps
//! some superseded signed images in -security after their headers are gone; in production the
//! builder's snapshot source covers those).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use build_api::BuildState;
use kernel_id::Arch;
use testkit::KernelImageInfo;

use crate::node::{self, NodeOutcome, NodeSpec};
use crate::{COLD_NODE_TIMEOUT, Fleet, WARM_NODE_TIMEOUT};

/// One kernel's line of the table.
#[derive(Debug, Clone)]
pub struct SweepRow {
    pub kernel: String,
    pub arch: Arch,
    pub flavor: String,
    pub distro_version: String,
    pub build_time: Option<Duration>,
    pub cold: Option<Duration>,
    pub warm: Option<Duration>,
    /// `loaded` (cold and warm both loaded), or what went wrong first.
    pub result: String,
    pub outcome: Outcome,
}

/// How a kernel's row ended, for the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Cold and warm nodes both had the driver live.
    Loaded,
    /// The image is in a package index but the mirror does not serve it.
    ImageUnavailable,
    /// The build found the kernel's headers in no configured source.
    NoHeaders,
    /// Anything else: a real failure to look into.
    Failed,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Loaded => "loaded",
            Outcome::ImageUnavailable => "image not served by the mirror",
            Outcome::NoHeaders => "no headers in the configured sources",
            Outcome::Failed => "failed",
        }
    }
}

/// Every kernel image of `arches` in the configured suites, per architecture oldest Debian release
/// first.
pub fn reachable_kernels(arches: &[Arch]) -> Result<Vec<KernelImageInfo>> {
    let mut all = Vec::new();
    for &arch in arches {
        all.extend(testkit::list_kernel_images(arch, &[])?);
    }
    Ok(all)
}

/// Runs a cold then a warm node per kernel, `jobs` kernels at a time, appending each row to
/// `progress` as it completes (so an interrupted sweep still leaves its rows). Kernels that were
/// not in the cache before are evicted afterwards (about 400 MB each).
pub fn sweep(
    fleet: &Fleet,
    kernels: &[KernelImageInfo],
    jobs: usize,
    progress: &Path,
) -> Vec<SweepRow> {
    let next = AtomicUsize::new(0);
    let rows: Mutex<BTreeMap<usize, SweepRow>> = Mutex::new(BTreeMap::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, 8) {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::SeqCst);
                    let Some(info) = kernels.get(index) else {
                        break;
                    };
                    let row = sweep_one(fleet, info);
                    let line = render_row(&row);
                    eprintln!(
                        "fleet: [{}/{}] {}",
                        index + 1,
                        kernels.len(),
                        line.trim_end()
                    );
                    if let Ok(mut file) = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(progress)
                    {
                        let _ = file.write_all(line.as_bytes());
                    }
                    rows.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(index, row);
                }
            });
        }
    });
    rows.into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_values()
        .collect()
}

fn sweep_one(fleet: &Fleet, info: &KernelImageInfo) -> SweepRow {
    let mut row = SweepRow {
        kernel: info.release.to_string(),
        arch: info.arch,
        flavor: info.flavor.clone(),
        distro_version: format!("debian {}", info.distro_version),
        build_time: None,
        cold: None,
        warm: None,
        result: String::new(),
        outcome: Outcome::Failed,
    };
    let was_cached = testkit::cache_dir()
        .join("kernels")
        .join(info.release.as_str())
        .join(".complete")
        .exists();
    let result = run_pair(fleet, info, &mut row);
    let build = kernel_build(fleet, &row.kernel);
    row.build_time = build.as_ref().and_then(|build| build.duration);
    (row.outcome, row.result) = match result {
        Ok(result) if result == "loaded" => (Outcome::Loaded, result),
        Ok(result) if build.as_ref().is_some_and(|build| build.no_headers) => (
            Outcome::NoHeaders,
            format!("{}; {result}", Outcome::NoHeaders.label()),
        ),
        Ok(result) => (Outcome::Failed, result),
        Err(error) => {
            let text = format!("{error:#}");
            if text.contains("fetching kernel") && text.contains("404") {
                (
                    Outcome::ImageUnavailable,
                    format!("{} (404)", Outcome::ImageUnavailable.label()),
                )
            } else {
                (Outcome::Failed, format!("error: {}", first_line(&text)))
            }
        }
    };
    if !was_cached {
        let _ = testkit::KernelImage::evict(info.release.as_str());
    }
    row
}

fn run_pair(fleet: &Fleet, info: &KernelImageInfo, row: &mut SweepRow) -> Result<String> {
    let slug = info.release.as_str().replace(['+', '.'], "_");
    let cold_spec = NodeSpec {
        name: format!("{slug}-cold"),
        release: info.release.clone(),
        arch: info.arch,
        distro_version: info.distro_version.clone(),
    };
    let cold = run(fleet, &cold_spec, COLD_NODE_TIMEOUT)?;
    row.cold = cold.time_to_driver_live;
    if !cold.loaded() {
        return Ok(verdict("cold", &cold));
    }
    let warm_spec = NodeSpec {
        name: format!("{slug}-warm"),
        ..cold_spec
    };
    let warm = run(fleet, &warm_spec, WARM_NODE_TIMEOUT)?;
    row.warm = warm.time_to_driver_live;
    if !warm.loaded() {
        return Ok(verdict("warm", &warm));
    }
    Ok("loaded".to_owned())
}

fn run(fleet: &Fleet, spec: &NodeSpec, timeout: Duration) -> Result<NodeOutcome> {
    let prepared = fleet.prepare(spec)?;
    let outcome = node::observe(node::boot(&prepared, timeout)?);
    let _ = std::fs::remove_file(&prepared.initrd);
    Ok(outcome)
}

fn verdict(phase: &str, outcome: &NodeOutcome) -> String {
    let what = match (&outcome.vm_error, outcome.loader_exit) {
        (Some(error), _) => first_line(error),
        (None, Some(code)) => format!("loader exit {code}"),
        (None, None) => "no loader result".to_owned(),
    };
    format!(
        "{phase} failed: {what} ({})",
        outcome.console_path.display()
    )
}

fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(120)
        .collect()
}

/// What the service did for one kernel: the wall time of its finished build and whether the build
/// failed for want of headers.
struct KernelBuild {
    duration: Option<Duration>,
    no_headers: bool,
}

/// Finds the build of `kernel` among the service's builds.
fn kernel_build(fleet: &Fleet, kernel: &str) -> Option<KernelBuild> {
    fleet.service.build_ids().into_iter().find_map(|id| {
        let status = fleet.service.status(&id).ok()?;
        if status.request.kernel_version != kernel {
            return None;
        }
        let log = std::fs::read_to_string(fleet.service.builds_dir().join(&id).join("build.log"))
            .unwrap_or_default();
        Some(KernelBuild {
            duration: (status.status == BuildState::Done)
                .then(|| fleet.service.build_duration(&id).ok())
                .flatten(),
            no_headers: status.status == BuildState::Error && log.contains("no kernel headers for"),
        })
    })
}

fn seconds(duration: Option<Duration>) -> String {
    duration.map_or_else(|| "-".to_owned(), |d| format!("{:.1}s", d.as_secs_f64()))
}

impl SweepRow {
    /// What the cold node waited beyond the build itself and the warm path: cold − (build + warm),
    /// in seconds (negative when the cold node's fetch overlapped the build's end). Both nodes'
    /// times run from VM start, so boot cancels out; the on-demand promise is that this stays
    /// within about a second (the loader noticing the end of the build, and asking first).
    pub fn cold_overhead(&self) -> Option<f64> {
        Some(self.cold?.as_secs_f64() - self.build_time?.as_secs_f64() - self.warm?.as_secs_f64())
    }
}

fn signed_seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:+.1}s"))
}

/// One line of the table; the header and the rows share it so the columns line up.
fn table_line(cells: [&str; 8]) -> String {
    let [kernel, flavor, distro, build, cold, warm, overhead, result] = cells;
    format!(
        "{kernel:<34} {flavor:<12} {distro:<10} {build:>8} {cold:>10} {warm:>10} {overhead:>12}  {result}\n"
    )
}

fn render_row(row: &SweepRow) -> String {
    table_line([
        &row.kernel,
        &row.flavor,
        &row.distro_version,
        &seconds(row.build_time),
        &seconds(row.cold),
        &seconds(row.warm),
        &signed_seconds(row.cold_overhead()),
        &row.result,
    ])
}

/// The table and a summary per architecture: kernels, how each ended, and the median and max
/// build time and time to driver live (cold, warm) of the loaded ones.
pub fn render(rows: &[SweepRow]) -> String {
    let mut out = table_line([
        "kernel",
        "flavor",
        "distro",
        "build",
        "cold live",
        "warm live",
        "cold-b-w",
        "result",
    ]);
    for row in rows {
        out.push_str(&render_row(row));
    }
    for arch in Arch::ALL {
        let rows: Vec<&SweepRow> = rows.iter().filter(|row| row.arch == arch).collect();
        if rows.is_empty() {
            continue;
        }
        let mut by_outcome: BTreeMap<Outcome, usize> = BTreeMap::new();
        for row in &rows {
            *by_outcome.entry(row.outcome).or_default() += 1;
        }
        let counts: Vec<String> = by_outcome
            .iter()
            .map(|(outcome, count)| format!("{count} {}", outcome.label()))
            .collect();
        out.push_str(&format!(
            "\n{arch}: {} kernels: {}\n",
            rows.len(),
            counts.join(", ")
        ));
        let loaded: Vec<&&SweepRow> = rows
            .iter()
            .filter(|row| row.outcome == Outcome::Loaded)
            .collect();
        for (label, values) in [
            (
                "build",
                loaded
                    .iter()
                    .filter_map(|r| r.build_time)
                    .collect::<Vec<_>>(),
            ),
            (
                "cold live",
                loaded.iter().filter_map(|r| r.cold).collect::<Vec<_>>(),
            ),
            (
                "warm live",
                loaded.iter().filter_map(|r| r.warm).collect::<Vec<_>>(),
            ),
        ] {
            let (median, max) = median_max(&values);
            out.push_str(&format!(
                "  {label}: n={} median={} max={}\n",
                values.len(),
                seconds(median),
                seconds(max)
            ));
        }
        let mut overheads: Vec<f64> = loaded.iter().filter_map(|r| r.cold_overhead()).collect();
        overheads.sort_by(f64::total_cmp);
        if let (Some(median), Some(max)) = (
            overheads.get((overheads.len().max(1) - 1) / 2),
            overheads.last(),
        ) {
            out.push_str(&format!(
                "  cold - (build + warm): n={} median={} max={}\n",
                overheads.len(),
                signed_seconds(Some(*median)),
                signed_seconds(Some(*max))
            ));
        }
    }
    out
}

/// Median (lower middle for even counts) and maximum.
pub fn median_max(values: &[Duration]) -> (Option<Duration>, Option<Duration>) {
    let mut sorted = values.to_vec();
    sorted.sort();
    let median = (!sorted.is_empty()).then(|| sorted[(sorted.len() - 1) / 2]);
    (median, sorted.last().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_max() {
        let s = Duration::from_secs;
        assert_eq!(median_max(&[]), (None, None));
        assert_eq!(median_max(&[s(3), s(1), s(2)]), (Some(s(2)), Some(s(3))));
        assert_eq!(median_max(&[s(4), s(1)]), (Some(s(1)), Some(s(4))));
    }

    #[test]
    fn table_counts_loaded_rows() {
        let row = SweepRow {
            kernel: "6.1.0-47-amd64".into(),
            arch: Arch::X86_64,
            flavor: "amd64".into(),
            distro_version: "debian 12".into(),
            build_time: Some(Duration::from_secs(60)),
            cold: Some(Duration::from_secs(70)),
            warm: Some(Duration::from_secs(9)),
            result: "loaded".into(),
            outcome: Outcome::Loaded,
        };
        let failed = SweepRow {
            result: "cold failed: loader exit 5".into(),
            outcome: Outcome::NoHeaders,
            ..row.clone()
        };
        let arm = SweepRow {
            kernel: "6.1.0-47-arm64".into(),
            arch: Arch::Aarch64,
            cold: Some(Duration::from_secs(90)),
            ..row.clone()
        };
        let table = render(&[row, failed, arm]);
        assert!(
            table.contains("x86_64: 2 kernels: 1 loaded, 1 no headers in the configured sources"),
            "{table}"
        );
        assert!(table.contains("aarch64: 1 kernels: 1 loaded"), "{table}");
        assert!(
            table.contains("  cold live: n=1 median=70.0s max=70.0s"),
            "only loaded rows count: {table}"
        );
        assert!(table.contains("6.1.0-47-amd64"), "{table}");
        // 70 s cold against a 60 s build and a 9 s warm path: one second beyond both.
        assert!(
            table.contains("  cold - (build + warm): n=1 median=+1.0s max=+1.0s"),
            "{table}"
        );
    }
}
