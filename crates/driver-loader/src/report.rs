//! The node report: after every `run` whose host was identified, successful or not, the loader
//! tells the build service what happened (`POST {build service}/report`, a `build_api::NodeReport`,
//! with the build service's bearer token, as for `/build`): which node, which identity, how the
//! run ended (exit code and outcome), where the package came from (cache, store, or a build it
//! waited for), how long that took, and which kernels the node has installed but not booted.
//!
//! The report is an observation, never part of the run: it is sent after the run's outcome is
//! fixed, once, with a short timeout ([`REPORT_TIMEOUT`] for connecting and for the whole request),
//! and whatever happens to it (no service configured, no machine-id, service down, refusal) is one
//! log line; the run's exit code never changes.
//!
//! The node id is not the machine-id itself: machine-id(5) asks that the raw id not leave the
//! machine, so the report carries the SHA-256 of [`NODE_ID_DOMAIN`] followed by the machine-id.
//! The prefix makes the hash specific to this use (a table of plain `sha256(machine-id)` values
//! computed elsewhere does not match it), and the machine-id's 128 random bits make guessing it from
//! the hash infeasible.

use std::path::{Path, PathBuf};
use std::time::Duration;

use build_api::{NodeReport, RunOutcome, RunTimings};
use tracing::{info, warn};

use crate::error::LoaderError;
use crate::fetch::BuildService;
use crate::flow::{LoaderConfig, RunProgress};
use crate::host::read_small;
use crate::http::{Deadline, HttpClient, HttpSettings, RetryPolicy};
use crate::pending::pending_kernels;

/// Connect timeout and whole-request timeout of the one report attempt: a report may not hold up a
/// node (an offline node fails at once; an unresponsive service costs at most this).
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// Domain separation of the node id: `node_id = hex(SHA-256(NODE_ID_DOMAIN || machine-id))`.
pub const NODE_ID_DOMAIN: &str = "kdriver-node-id:";

/// The route reports are sent to, below the build service's root.
pub const REPORT_PATH: &str = "/report";

/// What became of a run's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportOutcome {
    /// The service accepted it (any 2xx), with that status.
    Sent(u16),
    /// Not sent, on purpose or for lack of what it needs; the reason is logged.
    Skipped(String),
    /// Sending failed; the reason is logged as a warning.
    Failed(String),
}

/// The node id for a machine-id (already validated): lowercase hex SHA-256 of the domain prefix and
/// the id.
pub fn node_id_of(machine_id: &str) -> String {
    integrity::sha256_bytes(format!("{NODE_ID_DOMAIN}{machine_id}").as_bytes()).to_hex()
}

/// Whether `text` (a machine-id file's content, trimmed) is a machine-id: 32 lowercase hex digits,
/// not all zero (machine-id(5); `uninitialized` during first boot is not one).
fn valid_machine_id(text: &str) -> bool {
    text.len() == 32
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && text.bytes().any(|b| b != b'0')
}

/// The node id from the first candidate file holding a valid machine-id, or why there is none
/// (every candidate and what was wrong with it).
pub fn node_id(candidates: &[PathBuf]) -> Result<String, String> {
    let mut tried = Vec::new();
    for path in candidates {
        match read_machine_id(path) {
            Ok(id) => return Ok(node_id_of(&id)),
            Err(reason) => tried.push(format!("{}: {reason}", path.display())),
        }
    }
    if tried.is_empty() {
        return Err("no machine-id file configured".to_owned());
    }
    Err(format!("no machine-id found ({})", tried.join("; ")))
}

fn read_machine_id(path: &Path) -> Result<String, String> {
    match std::fs::metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("does not exist".to_owned());
        }
        Err(e) => return Err(e.to_string()),
    }
    let text = read_small(path, 4096).map_err(|e| e.to_string())?;
    let id = text.trim();
    if !valid_machine_id(id) {
        // The content itself is not shown: it may be a real id in an unexpected form.
        return Err("is not 32 lowercase hexadecimal digits (machine-id(5))".to_owned());
    }
    Ok(id.to_owned())
}

/// Milliseconds of a duration, saturating.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The report of a run, or `None` when the run never identified the host (nothing to say which
/// identity it was about).
pub fn node_report(
    config: &LoaderConfig,
    progress: &RunProgress,
    node_id: String,
    exit_code: u8,
    total: Duration,
    pending: Vec<String>,
) -> Option<NodeReport> {
    let id = &progress.identification.as_ref()?.identity;
    let package = progress.package.as_ref();
    Some(NodeReport {
        architecture: id.arch().as_str().to_owned(),
        artifact_origin: package.map(|p| p.origin()),
        distribution: id.distribution().as_str().to_owned(),
        distro_version: id.distro_version().as_str().to_owned(),
        driver_name: config.driver.as_str().to_owned(),
        driver_version: id.driver_version().as_str().to_owned(),
        exit_code,
        kernel_version: id.kernel_release().as_str().to_owned(),
        node_id,
        outcome: RunOutcome::from_exit_code(exit_code),
        pending_kernels: pending,
        timings: RunTimings {
            build_wait_ms: package.and_then(|p| p.build_wait).map(millis),
            fetch_ms: progress.fetch_time.map(millis).unwrap_or(0),
            total_ms: millis(total),
        },
    })
}

/// Sends one report: one attempt, [`REPORT_TIMEOUT`] to connect and for the whole request.
pub fn send_report(service: &BuildService, report: &NodeReport) -> crate::Result<u16> {
    let client = HttpClient::new(HttpSettings {
        connect_timeout: REPORT_TIMEOUT,
        request_timeout: REPORT_TIMEOUT,
        retry: RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        },
        ..HttpSettings::default()
    });
    let url = format!("{}{REPORT_PATH}", service.url.trim_end_matches('/'));
    client.post_json_no_answer(
        &url,
        service.token.as_deref(),
        report,
        &Deadline::after(REPORT_TIMEOUT),
    )
}

/// Reports a finished run when it can, and logs what became of the report. Never fails: the run's
/// outcome is already decided.
pub fn report_run(
    config: &LoaderConfig,
    progress: &RunProgress,
    exit_code: u8,
    total: Duration,
) -> ReportOutcome {
    let outcome = try_report(config, progress, exit_code, total);
    match &outcome {
        ReportOutcome::Sent(status) => info!(status, "run reported to the build service"),
        ReportOutcome::Skipped(reason) => info!(reason, "run not reported"),
        ReportOutcome::Failed(reason) => {
            warn!(
                reason,
                "run report not sent (the run's outcome is unchanged)"
            )
        }
    }
    outcome
}

fn try_report(
    config: &LoaderConfig,
    progress: &RunProgress,
    exit_code: u8,
    total: Duration,
) -> ReportOutcome {
    let Some(service) = &config.build_service else {
        return ReportOutcome::Skipped("no build service configured".to_owned());
    };
    let Some(identification) = &progress.identification else {
        return ReportOutcome::Skipped("the host was not identified".to_owned());
    };
    let node_id = match node_id(&config.host_paths.machine_id_candidates()) {
        Ok(id) => id,
        Err(reason) => return ReportOutcome::Skipped(reason),
    };
    let pending = pending_kernels(
        &identification.facts,
        &config.driver_version,
        &config.modules_root,
        &config.boot_dir,
    )
    .into_iter()
    .map(|kernel| kernel.release.as_str().to_owned())
    .collect();
    let Some(report) = node_report(config, progress, node_id, exit_code, total, pending) else {
        return ReportOutcome::Skipped("the host was not identified".to_owned());
    };
    match send_report(service, &report) {
        Ok(status) => ReportOutcome::Sent(status),
        Err(LoaderError::Fetch { url, reason }) => {
            ReportOutcome::Failed(format!("POST {url}: {reason}"))
        }
        Err(e) => ReportOutcome::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_id_is_the_domain_separated_hash_never_the_raw_id() {
        let id = "6b0f4a54c1b24b7e9f3e0d6a2c1e8f70";
        let node = node_id_of(id);
        assert_eq!(node.len(), 64);
        assert!(
            node.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(
            node,
            integrity::sha256_bytes(b"kdriver-node-id:6b0f4a54c1b24b7e9f3e0d6a2c1e8f70").to_hex()
        );
        assert_ne!(node, integrity::sha256_bytes(id.as_bytes()).to_hex());
        assert!(!node.contains(id));
    }

    #[test]
    fn the_first_valid_machine_id_wins_and_every_miss_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let etc = dir.path().join("etc-machine-id");
        let dbus = dir.path().join("dbus-machine-id");
        std::fs::write(&etc, "uninitialized\n").expect("write");
        std::fs::write(&dbus, "0123456789abcdef0123456789abcdef\n").expect("write");
        let missing = dir.path().join("missing");
        assert_eq!(
            node_id(&[missing.clone(), etc.clone(), dbus.clone()]).expect("dbus's"),
            node_id_of("0123456789abcdef0123456789abcdef")
        );
        let reason = node_id(&[missing.clone(), etc.clone()]).expect_err("none valid");
        assert!(
            reason.contains(&format!("{}: does not exist", missing.display()))
                && reason.contains(&format!("{}: is not 32 lowercase", etc.display()))
                && !reason.contains("uninitialized"),
            "{reason}"
        );
        for bad in [
            "0123456789ABCDEF0123456789ABCDEF",
            "00000000000000000000000000000000",
            "0123456789abcdef",
            "",
        ] {
            std::fs::write(&etc, bad).expect("write");
            assert!(node_id(std::slice::from_ref(&etc)).is_err(), "{bad:?}");
        }
        assert!(node_id(&[]).is_err());
    }
}
