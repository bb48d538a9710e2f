//! The service's one retry policy. Backend calls make one attempt each and report what went wrong
//! ([`BackendError`]); only the tracker (and the tracker's deadline cancel) tries again, with the delays
//! this policy gives: jittered exponential backoff for transient errors, exactly the backend's
//! `retry_after` for rate limits, never for permanent errors. The HTTP API does not retry either: a
//! transient or rate-limited lookup is answered 503 with `Retry-After` and the caller decides.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::BackendError;

/// Delays between attempts of one backend operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Delay after the first transient failure; it doubles with each further one.
    pub base: Duration,
    /// Longest delay after a transient failure.
    pub max: Duration,
    /// Share of a transient delay that is random (0: none, 0.5: between half and all of it), so
    /// replicas and builds failing together do not retry in lockstep.
    pub jitter: f64,
}

impl RetryPolicy {
    /// Exponential from `base` up to `max`, half of each delay random.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            jitter: 0.5,
        }
    }

    /// How long to wait after `error` ended the attempt that followed `failures` failed ones (0 for
    /// the first attempt); `None` when retrying cannot help.
    pub fn delay(&self, error: &BackendError, failures: u32) -> Option<Duration> {
        match error {
            BackendError::Transient(_) => {
                let ceiling = self
                    .base
                    .saturating_mul(1u32 << failures.min(16))
                    .min(self.max);
                let jitter = self.jitter.clamp(0.0, 1.0);
                Some(ceiling.mul_f64(1.0 - jitter * rand::random::<f64>()))
            }
            BackendError::RateLimited { retry_after } => Some(*retry_after),
            BackendError::Permanent(_) => None,
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the next try could not start before
    /// `give_up` (each attempt is also cut off there). `on_error` sees every failed attempt.
    pub async fn retry_until<T, F, Fut>(
        &self,
        give_up: Instant,
        mut attempt: F,
        mut on_error: impl FnMut(&BackendError),
    ) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let mut failures = 0u32;
        loop {
            let left = give_up.saturating_duration_since(Instant::now());
            let error = match tokio::time::timeout(left, attempt()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) => error,
                Err(_elapsed) => {
                    return Err(BackendError::Transient(format!(
                        "no answer before giving up ({} ms)",
                        left.as_millis()
                    )));
                }
            };
            on_error(&error);
            match self.delay(&error, failures) {
                Some(pause) if Instant::now() + pause < give_up => {
                    failures = failures.saturating_add(1);
                    tokio::time::sleep(pause).await;
                }
                _ => return Err(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(60))
    }

    #[test]
    fn transient_errors_back_off_exponentially_with_jitter_up_to_the_cap() {
        let policy = policy();
        let error = BackendError::Transient("502".to_owned());
        for failures in 0..20 {
            let delay = policy.delay(&error, failures).expect("retried");
            let full = Duration::from_secs(1u64 << failures.min(16)).min(policy.max);
            assert!(
                delay <= full && delay >= full / 2,
                "{failures}: {delay:?} vs {full:?}"
            );
        }
        let steady = RetryPolicy {
            jitter: 0.0,
            ..policy
        };
        assert_eq!(steady.delay(&error, 3), Some(Duration::from_secs(8)));
    }

    #[test]
    fn rate_limits_wait_exactly_as_told_and_permanent_errors_stop() {
        let policy = policy();
        let limited = BackendError::RateLimited {
            retry_after: Duration::from_secs(42),
        };
        assert_eq!(policy.delay(&limited, 3), Some(Duration::from_secs(42)));
        assert_eq!(
            policy.delay(&BackendError::Permanent("bad token".to_owned()), 0),
            None
        );
    }

    #[tokio::test]
    async fn retry_until_retries_transient_errors_and_stops_at_permanent_ones_or_the_bound() {
        let policy = RetryPolicy::new(Duration::from_millis(10), Duration::from_millis(40));
        let calls = AtomicU32::new(0);
        let mut seen = 0;
        let value = policy
            .retry_until(
                Instant::now() + Duration::from_secs(5),
                || async {
                    match calls.fetch_add(1, Ordering::SeqCst) {
                        0 | 1 => Err(BackendError::Transient("502".to_owned())),
                        _ => Ok("done"),
                    }
                },
                |_| seen += 1,
            )
            .await;
        assert_eq!(
            (value, calls.load(Ordering::SeqCst), seen),
            (Ok("done"), 3, 2)
        );

        calls.store(0, Ordering::SeqCst);
        let refused: Result<(), _> = policy
            .retry_until(
                Instant::now() + Duration::from_secs(5),
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(BackendError::Permanent("403".to_owned()))
                },
                |_| {},
            )
            .await;
        assert!(matches!(refused, Err(BackendError::Permanent(_))));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "permanent errors are not retried"
        );

        // A rate limit longer than the time left is returned at once, not slept through.
        let started = Instant::now();
        let limited: Result<(), _> = policy
            .retry_until(
                Instant::now() + Duration::from_millis(500),
                || async {
                    Err(BackendError::RateLimited {
                        retry_after: Duration::from_secs(60),
                    })
                },
                |_| {},
            )
            .await;
        assert!(matches!(limited, Err(BackendError::RateLimited { .. })));
        assert!(started.elapsed() < Duration::from_millis(400));

        // An attempt that never answers is cut off at the bound.
        let hung: Result<(), _> = policy
            .retry_until(
                Instant::now() + Duration::from_millis(200),
                std::future::pending,
                |_| {},
            )
            .await;
        assert!(matches!(hung, Err(BackendError::Transient(_))), "{hung:?}");
    }
}
