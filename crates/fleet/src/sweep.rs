//! `cargo xtask fleet --all`: every amd64 kernel image reachable from the configured Debian suites
//! (generic, cloud and rt flavors) gets a cold node (build on demand) and then a warm node
//! (prebuilt hit), a bounded number of kernels at a time, and the results become a table.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use testkit::KernelImageInfo;

use crate::node::{self, NodeOutcome, NodeSpec};
use crate::{COLD_NODE_TIMEOUT, Fleet, WARM_NODE_TIMEOUT};

/// One kernel's line of the table.
#[derive(Debug, Clone)]
pub struct SweepRow {
    pub kernel: String,
    pub flavor: String,
    pub distro_version: String,
    pub build_time: Option<Duration>,
    pub cold: Option<Duration>,
    pub warm: Option<Duration>,
    /// `loaded` (cold and warm both loaded), or what went wrong first.
    pub result: String,
}

/// Every amd64 kernel image of the configured suites, oldest Debian release first.
pub fn reachable_kernels() -> Result<Vec<KernelImageInfo>> {
    testkit::list_kernel_images(kernel_id::Arch::X86_64, &[])
}

/// Runs a cold then a warm node per kernel, `jobs` kernels at a time. Kernels that were not in
/// the cache before are evicted afterwards (about 400 MB each).
pub fn sweep(fleet: &Fleet, kernels: &[KernelImageInfo], jobs: usize) -> Vec<SweepRow> {
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
                    eprintln!(
                        "fleet: [{}/{}] {} {} cold={} warm={} -> {}",
                        index + 1,
                        kernels.len(),
                        row.kernel,
                        row.distro_version,
                        seconds(row.cold),
                        seconds(row.warm),
                        row.result
                    );
                    rows.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(index, row);
                }
            });
        }
    });
    let mut rows: Vec<SweepRow> = rows
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_values()
        .collect();
    attach_build_times(fleet, &mut rows);
    rows
}

fn sweep_one(fleet: &Fleet, info: &KernelImageInfo) -> SweepRow {
    let mut row = SweepRow {
        kernel: info.release.to_string(),
        flavor: info.flavor.clone(),
        distro_version: format!("debian {}", info.distro_version),
        build_time: None,
        cold: None,
        warm: None,
        result: String::new(),
    };
    let was_cached = testkit::cache_dir()
        .join("kernels")
        .join(info.release.as_str())
        .join(".complete")
        .exists();
    row.result = match run_pair(fleet, info, &mut row) {
        Ok(result) => result,
        Err(error) => format!("error: {}", first_line(&format!("{error:#}"))),
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

/// Build time per kernel from the service's `/status` of each build.
fn attach_build_times(fleet: &Fleet, rows: &mut [SweepRow]) {
    let mut by_kernel: BTreeMap<String, Duration> = BTreeMap::new();
    for id in fleet.service.build_ids() {
        let Ok(status) = fleet.service.status(&id) else {
            continue;
        };
        if status["status"] != "done" {
            continue;
        }
        let Some(kernel) = status["request"]["kernel_version"].as_str() else {
            continue;
        };
        if let Ok(duration) = fleet.service.build_duration(&id) {
            by_kernel.insert(kernel.to_owned(), duration);
        }
    }
    for row in rows {
        row.build_time = by_kernel.get(&row.kernel).copied();
    }
}

fn seconds(duration: Option<Duration>) -> String {
    duration.map_or_else(|| "-".to_owned(), |d| format!("{:.1}s", d.as_secs_f64()))
}

/// The table and a summary: kernels, loaded, median and max time to driver live (cold, warm).
pub fn render(rows: &[SweepRow]) -> String {
    let mut out = format!(
        "{:<34} {:<12} {:<10} {:>10} {:>10} {:>10}  {}\n",
        "kernel", "flavor", "distro", "build", "cold live", "warm live", "result"
    );
    for row in rows {
        out.push_str(&format!(
            "{:<34} {:<12} {:<10} {:>10} {:>10} {:>10}  {}\n",
            row.kernel,
            row.flavor,
            row.distro_version,
            seconds(row.build_time),
            seconds(row.cold),
            seconds(row.warm),
            row.result
        ));
    }
    let loaded = rows.iter().filter(|row| row.result == "loaded").count();
    out.push_str(&format!("\n{} kernels, {loaded} loaded\n", rows.len()));
    for (label, values) in [
        (
            "cold",
            rows.iter().filter_map(|r| r.cold).collect::<Vec<_>>(),
        ),
        (
            "warm",
            rows.iter().filter_map(|r| r.warm).collect::<Vec<_>>(),
        ),
        (
            "build",
            rows.iter().filter_map(|r| r.build_time).collect::<Vec<_>>(),
        ),
    ] {
        let (median, max) = median_max(&values);
        out.push_str(&format!(
            "{label}: n={} median={} max={}\n",
            values.len(),
            seconds(median),
            seconds(max)
        ));
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
            flavor: "amd64".into(),
            distro_version: "debian 12".into(),
            build_time: Some(Duration::from_secs(60)),
            cold: Some(Duration::from_secs(70)),
            warm: Some(Duration::from_secs(9)),
            result: "loaded".into(),
        };
        let failed = SweepRow {
            result: "cold failed: loader exit 5".into(),
            ..row.clone()
        };
        let table = render(&[row, failed]);
        assert!(table.contains("2 kernels, 1 loaded"), "{table}");
        assert!(table.contains("6.1.0-47-amd64"), "{table}");
    }
}
