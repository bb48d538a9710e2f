//! The backend part of `/healthz`, answered from a cached probe: one background task asks the
//! backend every `every` (bounded by [`PROBE_TIMEOUT`]) and `/healthz` reads its latest answer, so a
//! flood of health checks never reaches GitHub.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::backend::Backend;
use crate::telemetry;

/// How often the backend is probed, unless configured.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(15);
/// A probe not answered within this is a failed probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `/healthz` waits for the very first probe before answering without it.
const FIRST_PROBE_WAIT: Duration = Duration::from_secs(2);

/// The latest probe's answer, as `/healthz` reads it.
#[derive(Debug, Clone)]
pub struct CachedHealth {
    latest: watch::Receiver<Option<Result<(), String>>>,
}

/// The probing task, run with [`Probe::run`].
pub struct Probe {
    backend: Arc<dyn Backend>,
    every: Duration,
    latest: watch::Sender<Option<Result<(), String>>>,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("backend", &self.backend.name())
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

/// A probe of `backend` every `every`, and the cache it fills.
pub fn probe(backend: Arc<dyn Backend>, every: Duration) -> (Probe, CachedHealth) {
    let (latest, receiver) = watch::channel(None);
    (
        Probe {
            backend,
            every: every.max(Duration::from_millis(10)),
            latest,
        },
        CachedHealth { latest: receiver },
    )
}

impl Probe {
    /// Probes now and then every interval, forever (the caller aborts the task).
    pub async fn run(self) {
        loop {
            let result = match tokio::time::timeout(PROBE_TIMEOUT, self.backend.health()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_elapsed) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
            };
            let outcome = if result.is_ok() { "ok" } else { "failed" };
            metrics::counter!(telemetry::HEALTH_PROBES, "result" => outcome).increment(1);
            if let Err(error) = &result {
                tracing::warn!(%error, backend = self.backend.name(), "backend health probe failed");
            }
            self.latest.send_replace(Some(result));
            tokio::time::sleep(self.every).await;
        }
    }
}

impl CachedHealth {
    /// The latest probe's answer; right after start, waits briefly for the first one.
    pub async fn latest(&self) -> Result<(), String> {
        let mut latest = self.latest.clone();
        match tokio::time::timeout(FIRST_PROBE_WAIT, latest.wait_for(Option::is_some)).await {
            Ok(Ok(answer)) => answer.clone().unwrap_or(Ok(())),
            Ok(Err(_)) | Err(_) => Err("the backend has not been probed yet".to_owned()),
        }
    }
}
