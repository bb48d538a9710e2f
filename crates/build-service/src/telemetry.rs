//! Metrics and logs. One Prometheus recorder per process (the `metrics` facade is global, so the
//! GitHub backend's `github_*` series and ours land in the same registry), rendered by `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests to `POST /build`, by `outcome`.
pub const REQUESTS: &str = "build_requests_total";
/// Requests answered from the artifact store.
pub const CACHE_HITS: &str = "build_cache_hits_total";
/// Dispatch calls to the backend, by `result`.
pub const DISPATCHES: &str = "build_dispatches_total";
/// Builds that ended, by `state`.
pub const BUILDS_FINISHED: &str = "builds_finished_total";
/// Seconds from reservation to the end of a build, by `state`.
pub const BUILD_DURATION: &str = "build_duration_seconds";
/// Builds currently tracked by this replica.
pub const BUILDS_TRACKED: &str = "builds_tracked";
/// Backend calls that failed, by `call` and `kind`.
pub const BACKEND_ERRORS: &str = "backend_errors_total";
/// Cancellations of builds past their deadline, by `result` (`ok`, `failed`).
pub const CANCELS: &str = "build_cancels_total";
/// Finished builds, audit rows and local build directories removed by retention, by `what`.
pub const PRUNED: &str = "retention_pruned_total";
/// Reads of one build from the database (status requests, long-poll watchers, trackers).
pub const STORE_READS: &str = "store_build_reads_total";
/// Reads made by long-poll watchers (one per change, per watched build, plus periodic re-reads).
pub const LONG_POLL_READS: &str = "long_poll_reads_total";
/// Long polls waiting now.
pub const LONG_POLLS_WAITING: &str = "long_polls_waiting";
/// Long polls answered at once because the limit of concurrent long polls was reached.
pub const LONG_POLLS_OVER_LIMIT: &str = "long_polls_over_limit_total";
/// Probes of the backend's health (the cached answer of `/healthz`), by `result`.
pub const HEALTH_PROBES: &str = "backend_health_probes_total";
/// Node reports (`POST /report`), by `outcome` (`accepted`, `invalid`, `forbidden`, `error`). The
/// fleet's own gauges (`kdriver_fleet_*`) are computed at scrape time by `inventory.rs`.
pub const REPORTS: &str = "node_reports_total";

/// Builds take minutes: buckets from 1 s to 1 h.
const DURATION_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0,
];

/// The process-wide recorder, installed on first use. Several services started in one process (tests
/// with two replicas) share it.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(BUILD_DURATION.to_owned()), DURATION_BUCKETS)
            .expect("bucket list is non-empty");
        match builder.install_recorder() {
            Ok(handle) => {
                describe();
                handle
            }
            // Someone else installed a global recorder first: render our own, detached one so
            // /metrics still answers (with only what is recorded through it).
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
}

fn describe() {
    metrics::describe_counter!(REQUESTS, "POST /build requests by outcome");
    metrics::describe_counter!(
        CACHE_HITS,
        "POST /build requests answered from the artifact store"
    );
    metrics::describe_counter!(DISPATCHES, "Build dispatch calls to the backend by result");
    metrics::describe_counter!(BUILDS_FINISHED, "Builds that ended, by final state");
    metrics::describe_counter!(
        CANCELS,
        "Cancellations of builds past their deadline, by result"
    );
    metrics::describe_counter!(PRUNED, "Records removed by retention, by what");
    metrics::describe_histogram!(
        BUILD_DURATION,
        metrics::Unit::Seconds,
        "Time from reservation to the end of a build"
    );
    metrics::describe_gauge!(BUILDS_TRACKED, "Builds tracked by this replica");
    metrics::describe_counter!(BACKEND_ERRORS, "Failed backend calls by call and kind");
    metrics::describe_counter!(STORE_READS, "Reads of one build from the database");
    metrics::describe_counter!(LONG_POLL_READS, "Database reads made by long-poll watchers");
    metrics::describe_gauge!(LONG_POLLS_WAITING, "Long polls waiting now");
    metrics::describe_counter!(
        LONG_POLLS_OVER_LIMIT,
        "Long polls answered at once because the limit of concurrent long polls was reached"
    );
    metrics::describe_counter!(HEALTH_PROBES, "Backend health probes by result");
    metrics::describe_counter!(REPORTS, "Node reports (POST /report) by outcome");
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the current span's fields (build id) in each.
    Json,
}

/// Installs the global tracing subscriber (binary only; tests install none or their own).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}
