//! Long polls (`GET /status/{id}?wait=`) share one watcher per build: the first waiter of a build
//! starts it, every later one subscribes to it, and only the watcher reads the database — once when
//! it starts, once per change announcement and once every `recheck` as a safety net for an
//! announcement that never came (a second process on the same SQLite file, a dropped listener
//! connection). However many callers wait, a change costs one read, and the record it returned is
//! handed to all of them.
//!
//! Announcements come from this replica's trackers ([`Notifier::notify`]) and, on PostgreSQL, from
//! every replica: each state change is followed by `pg_notify` on [`crate::store::CHANGES_CHANNEL`]
//! (see the store) and [`listen_postgres`] turns the notifications into local wake-ups.
//!
//! Long polls are an optimisation, so over [`Notifier`]'s limit of concurrent waits a caller is
//! answered at once with the current state instead of being refused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;

use crate::store::{BuildRecord, Store, StoreError};
use crate::telemetry;

/// Long polls waiting at once, service-wide, unless configured.
pub const DEFAULT_MAX_LONG_POLLS: usize = 10_000;

/// What a watcher last read.
#[derive(Debug, Clone)]
struct Seen {
    record: BuildRecord,
    /// When the read that returned `record` began: the database was at least this new.
    as_of: Instant,
}

/// The one reader of a watched build.
#[derive(Debug)]
struct Watcher {
    seen: watch::Sender<Seen>,
    wake: Notify,
    /// A waiter holds a record that may be newer than `seen`: the next read is handed out even if it
    /// changes nothing, so that waiter can tell.
    fresh_wanted: AtomicBool,
}

impl Watcher {
    fn refresh(&self) {
        self.fresh_wanted.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// A build as one request read it, with when.
#[derive(Debug, Clone)]
pub struct Fresh {
    /// The record.
    pub record: BuildRecord,
    began: Instant,
    ended: Instant,
}

/// The shared waiters of this replica, one per build somebody waits for, and the limit on waits.
#[derive(Debug)]
pub struct Notifier {
    store: Store,
    recheck: Duration,
    watchers: Mutex<HashMap<String, Arc<Watcher>>>,
    long_polls: Arc<Semaphore>,
    max_long_polls: usize,
}

impl Notifier {
    /// Waiters reading `store`, re-reading a watched build every `recheck` without announcements,
    /// at most `max_long_polls` waiting at once.
    pub fn new(store: Store, recheck: Duration, max_long_polls: usize) -> Self {
        let max_long_polls = max_long_polls.min(Semaphore::MAX_PERMITS);
        Self {
            store,
            recheck: recheck.max(Duration::from_millis(10)),
            watchers: Mutex::new(HashMap::new()),
            long_polls: Arc::new(Semaphore::new(max_long_polls)),
            max_long_polls,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Watcher>>> {
        self.watchers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Announces a change of `build_id`: its watcher, if anybody waits for it, re-reads it.
    pub fn notify(&self, build_id: &str) {
        if let Some(watcher) = self.lock().get(build_id) {
            watcher.wake.notify_one();
        }
    }

    /// Makes every watcher re-read its build (after announcements may have been missed).
    pub fn notify_all(&self) {
        for watcher in self.lock().values() {
            watcher.wake.notify_one();
        }
    }

    /// Builds watched now.
    pub fn watched(&self) -> usize {
        self.lock().len()
    }

    /// Long polls waiting now.
    pub fn waiting(&self) -> usize {
        self.max_long_polls - self.long_polls.available_permits()
    }

    /// Forgets watchers nobody listens to (a watcher normally removes itself when its last waiter
    /// leaves; this only matters if its task died).
    pub(crate) fn prune(&self) {
        self.lock()
            .retain(|_, watcher| watcher.seen.receiver_count() > 0);
    }

    /// Reads `build_id` for a request, noting when, so a later wait can tell whether the shared
    /// watcher knows more than the request does.
    pub async fn read(&self, build_id: &str) -> Result<Option<Fresh>, StoreError> {
        let began = Instant::now();
        let record = self.store.get(build_id).await?;
        let ended = Instant::now();
        Ok(record.map(|record| Fresh {
            record,
            began,
            ended,
        }))
    }

    /// Waits until the build's public state differs from `fresh`'s, `wait` passes or `stop` turns
    /// true, and answers with the newest record known then. Over the limit of concurrent long polls
    /// it answers at once with `fresh`.
    pub async fn wait_for_change(
        self: &Arc<Self>,
        fresh: Fresh,
        wait: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> BuildRecord {
        let Ok(_permit) = Arc::clone(&self.long_polls).try_acquire_owned() else {
            metrics::counter!(telemetry::LONG_POLLS_OVER_LIMIT).increment(1);
            return fresh.record;
        };
        let _waiting = WaitingGauge::enter();
        let deadline = Instant::now() + wait;
        let (watcher, mut seen) = self.subscribe(&fresh);
        let initial = fresh.record.state.public();
        let mut latest = fresh.record;
        loop {
            {
                let current = seen.borrow_and_update();
                let differs = current.record.state.public() != initial;
                if current.as_of >= fresh.ended {
                    // Read after this request's own read: at least as new.
                    if differs {
                        return current.record.clone();
                    }
                    if current.record != latest {
                        latest = current.record.clone();
                    }
                } else if differs {
                    // The watcher's record may predate this request's: ask it for a new read rather
                    // than answer with an older state.
                    watcher.refresh();
                }
            }
            tokio::select! {
                changed = seen.changed() => {
                    if changed.is_err() {
                        return latest;
                    }
                }
                () = tokio::time::sleep_until(deadline) => return latest,
                () = stopping(&mut stop) => return latest,
            }
        }
    }

    /// Joins the watcher of the build, starting it if there is none.
    fn subscribe(self: &Arc<Self>, fresh: &Fresh) -> (Arc<Watcher>, watch::Receiver<Seen>) {
        let build_id = &fresh.record.build_id;
        let mut watchers = self.lock();
        if let Some(watcher) = watchers.get(build_id) {
            return (Arc::clone(watcher), watcher.seen.subscribe());
        }
        let (seen, receiver) = watch::channel(Seen {
            record: fresh.record.clone(),
            as_of: fresh.began,
        });
        let watcher = Arc::new(Watcher {
            seen,
            wake: Notify::new(),
            fresh_wanted: AtomicBool::new(false),
        });
        watchers.insert(build_id.clone(), Arc::clone(&watcher));
        tokio::spawn(Arc::clone(self).watch(build_id.clone(), Arc::clone(&watcher)));
        (watcher, receiver)
    }

    /// The watcher's task: reads at once (a change announced before it existed is not missed), then
    /// on every announcement and every `recheck`, until the build ended; removes itself when its last
    /// waiter left.
    async fn watch(self: Arc<Self>, build_id: String, watcher: Arc<Watcher>) {
        let mut ended = false;
        loop {
            if !ended {
                let wanted = watcher.fresh_wanted.swap(false, Ordering::AcqRel);
                let as_of = Instant::now();
                metrics::counter!(telemetry::LONG_POLL_READS).increment(1);
                match self.store.get(&build_id).await {
                    Ok(Some(record)) => {
                        ended = record.state.is_terminal();
                        watcher.seen.send_if_modified(|seen| {
                            let changed = seen.record != record;
                            *seen = Seen { record, as_of };
                            changed || wanted
                        });
                    }
                    // Removed by retention: the waiters keep what they know until their wait ends.
                    Ok(None) => ended = true,
                    Err(error) => {
                        tracing::warn!(%error, build_id, "could not re-read a build for its waiters")
                    }
                }
            }
            let pause = if ended {
                Duration::from_secs(24 * 3600)
            } else {
                self.recheck
            };
            tokio::select! {
                () = watcher.wake.notified() => {}
                () = tokio::time::sleep(pause) => {}
                () = watcher.seen.closed() => {
                    // Waiters join under this lock, so none can slip in between the check and the
                    // removal.
                    let mut watchers = self.lock();
                    if watcher.seen.receiver_count() == 0 {
                        if watchers
                            .get(&build_id)
                            .is_some_and(|current| Arc::ptr_eq(current, &watcher))
                        {
                            watchers.remove(&build_id);
                        }
                        return;
                    }
                }
            }
        }
    }
}

/// Completes when `stop` turns true (never, if its sender is gone).
async fn stopping(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Counts a waiting long poll in the gauge for as long as it lives (a caller that hangs up drops it).
struct WaitingGauge;

impl WaitingGauge {
    fn enter() -> Self {
        metrics::gauge!(telemetry::LONG_POLLS_WAITING).increment(1.0);
        Self
    }
}

impl Drop for WaitingGauge {
    fn drop(&mut self) {
        metrics::gauge!(telemetry::LONG_POLLS_WAITING).decrement(1.0);
    }
}

/// Turns PostgreSQL notifications on [`crate::store::CHANGES_CHANNEL`] (from every replica) into
/// wake-ups of this replica's watchers, until the task is dropped. Reconnects with backoff; after
/// every (re)connection every watcher re-reads once, since notifications sent meanwhile are lost.
pub async fn listen_postgres(notifier: Arc<Notifier>, database_url: String) {
    use sqlx::postgres::PgListener;
    let mut pause = Duration::from_millis(100);
    loop {
        match PgListener::connect(&database_url).await {
            Ok(mut listener) => match listener.listen(crate::store::CHANGES_CHANNEL).await {
                Ok(()) => {
                    tracing::info!("listening for build changes of every replica");
                    pause = Duration::from_millis(100);
                    notifier.notify_all();
                    loop {
                        match listener.try_recv().await {
                            Ok(Some(notification)) => notifier.notify(notification.payload()),
                            Ok(None) => {
                                tracing::warn!("lost the connection listening for build changes");
                                break;
                            }
                            Err(error) => {
                                tracing::warn!(%error, "listening for build changes failed");
                                break;
                            }
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "could not listen for build changes"),
            },
            Err(error) => {
                tracing::warn!(%error, "could not connect to listen for build changes")
            }
        }
        // Meanwhile the watchers' periodic re-reads keep every wait correct, only slower.
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewBuild;

    async fn store_with_build(dir: &tempfile::TempDir) -> (Store, String) {
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("b.db").display());
        let store = Store::connect(&url).await.expect("store");
        let build_id = "00000000-0000-4000-8000-000000000001".to_owned();
        let new = NewBuild::for_test(&build_id);
        store
            .reserve(&new, crate::store::InFlightCaps::default())
            .await
            .expect("reserve");
        (store, build_id)
    }

    #[tokio::test]
    async fn many_waiters_share_one_watcher_that_answers_them_all_and_then_goes() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, build_id) = store_with_build(&dir).await;
        let notifier = Arc::new(Notifier::new(store.clone(), Duration::from_secs(60), 100));
        let (_stopping, stop) = watch::channel(false);
        let mut waits = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let fresh = notifier
                .read(&build_id)
                .await
                .expect("read")
                .expect("build");
            let notifier = Arc::clone(&notifier);
            let stop = stop.clone();
            waits.spawn(async move {
                notifier
                    .wait_for_change(fresh, Duration::from_secs(30), stop)
                    .await
            });
        }
        while notifier.waiting() < 50 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(notifier.watched(), 1);
        let finished = store
            .finish(
                &build_id,
                "me",
                crate::store::BuildState::Done,
                Some("http://x/y"),
                None,
                crate::store::now_ms(),
            )
            .await
            .expect("finish");
        assert!(finished);
        notifier.notify(&build_id);
        while let Some(answer) = waits.join_next().await {
            assert_eq!(answer.expect("task").state, crate::store::BuildState::Done);
        }
        // The watcher leaves with its last waiter.
        for _ in 0..200 {
            if notifier.watched() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(notifier.watched(), 0);
        assert_eq!(notifier.waiting(), 0);
    }

    #[tokio::test]
    async fn over_the_limit_a_long_poll_answers_at_once() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, build_id) = store_with_build(&dir).await;
        let notifier = Arc::new(Notifier::new(store, Duration::from_secs(60), 1));
        let (_stopping, stop) = watch::channel(false);
        let fresh = notifier
            .read(&build_id)
            .await
            .expect("read")
            .expect("build");
        let first = {
            let notifier = Arc::clone(&notifier);
            let fresh = fresh.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                notifier
                    .wait_for_change(fresh, Duration::from_secs(30), stop)
                    .await
            })
        };
        while notifier.waiting() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started = std::time::Instant::now();
        let answer = notifier
            .wait_for_change(fresh.clone(), Duration::from_secs(30), stop)
            .await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(answer, fresh.record);
        first.abort();
    }

    #[tokio::test]
    async fn a_change_nobody_announced_is_found_by_the_periodic_re_read() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, build_id) = store_with_build(&dir).await;
        let notifier = Arc::new(Notifier::new(store.clone(), Duration::from_millis(100), 10));
        let (_stopping, stop) = watch::channel(false);
        let fresh = notifier
            .read(&build_id)
            .await
            .expect("read")
            .expect("build");
        let wait = {
            let notifier = Arc::clone(&notifier);
            tokio::spawn(async move {
                notifier
                    .wait_for_change(fresh, Duration::from_secs(30), stop)
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        store
            .finish(
                &build_id,
                "me",
                crate::store::BuildState::Error,
                None,
                Some("failed"),
                crate::store::now_ms(),
            )
            .await
            .expect("finish");
        let answer = tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("answered by the re-read")
            .expect("task");
        assert_eq!(answer.state, crate::store::BuildState::Error);
    }
}
