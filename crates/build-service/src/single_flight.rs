//! Single flight: concurrent identical requests share one computation.
//!
//! The first request for a key starts the work in its own task (so it completes even when every
//! waiting request goes away); requests for the same key that arrive while it runs, or while its
//! answer lingers, get the same answer. When the work ends, the answer stays shared for as long as
//! the `linger` the leader chose for it (zero: forgotten at once), or until it is forgotten
//! explicitly ([`SingleFlight::forget_where`]), whichever comes first. A linger that expires never
//! forgets a newer flight of the same key.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

/// The shared work did not complete (it panicked or its task was cancelled).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the shared computation did not complete: {0}")]
pub struct Abandoned(String);

/// What a request got from [`SingleFlight::run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Landed<V> {
    /// The shared answer.
    pub value: Result<V, Abandoned>,
    /// Whether this request started the work (rather than joining another's).
    pub leader: bool,
}

type SharedAnswer<V> = Shared<BoxFuture<'static, Result<V, Abandoned>>>;

struct Flight<V> {
    generation: u64,
    answer: SharedAnswer<V>,
}

/// Answers being computed (or lingering) by key.
pub struct SingleFlight<K, V> {
    flights: Mutex<HashMap<K, Flight<V>>>,
    generations: AtomicU64,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self {
            flights: Mutex::new(HashMap::new()),
            generations: AtomicU64::new(0),
        }
    }
}

impl<K, V> std::fmt::Debug for SingleFlight<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleFlight").finish_non_exhaustive()
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn lock(&self) -> MutexGuard<'_, HashMap<K, Flight<V>>> {
        self.flights
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Joins the flight of `key`, or starts `work` as a new one. When the work ends, `linger` says
    /// how long its answer keeps being shared.
    pub async fn run<F, L>(self: &Arc<Self>, key: K, work: F, linger: L) -> Landed<V>
    where
        F: Future<Output = V> + Send + 'static,
        L: FnOnce(&V) -> Duration + Send + 'static,
    {
        let (answer, leader) = {
            let mut flights = self.lock();
            match flights.get(&key) {
                Some(flight) => (flight.answer.clone(), false),
                None => {
                    let generation = self.generations.fetch_add(1, Ordering::Relaxed);
                    let this = Arc::clone(self);
                    let task_key = key.clone();
                    let handle = tokio::spawn(async move {
                        let value = work.await;
                        let linger = linger(&value);
                        if linger.is_zero() {
                            this.land(&task_key, generation);
                        } else {
                            tokio::spawn(async move {
                                tokio::time::sleep(linger).await;
                                this.land(&task_key, generation);
                            });
                        }
                        value
                    });
                    let this = Arc::clone(self);
                    let failed_key = key.clone();
                    let answer = async move {
                        handle.await.map_err(|error| {
                            // The task never reached its own clean-up.
                            this.land(&failed_key, generation);
                            Abandoned(error.to_string())
                        })
                    }
                    .boxed()
                    .shared();
                    flights.insert(
                        key,
                        Flight {
                            generation,
                            answer: answer.clone(),
                        },
                    );
                    (answer, true)
                }
            }
        };
        Landed {
            value: answer.await,
            leader,
        }
    }

    /// Ends the flight `generation` of `key`, unless a newer flight replaced it.
    fn land(&self, key: &K, generation: u64) {
        let mut flights = self.lock();
        if flights
            .get(key)
            .is_some_and(|flight| flight.generation == generation)
        {
            flights.remove(key);
        }
    }

    /// Forgets every flight whose key matches (running ones finish, but new requests start anew).
    /// Costs one pass over the flights, which are only the requests in flight or lingering.
    pub fn forget_where(&self, matches: impl Fn(&K) -> bool) {
        self.lock().retain(|key, _| !matches(key));
    }

    /// How many flights are running or lingering.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no flight is running or lingering.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    type Flights = Arc<SingleFlight<&'static str, usize>>;

    /// Work that counts its runs and answers after `gate` opens.
    fn counted(
        runs: &Arc<AtomicUsize>,
        gate: &tokio::sync::watch::Receiver<bool>,
    ) -> impl Future<Output = usize> + Send + 'static {
        let runs = Arc::clone(runs);
        let mut gate = gate.clone();
        async move {
            let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
            let _ = gate.wait_for(|open| *open).await;
            run
        }
    }

    #[tokio::test]
    async fn identical_requests_share_one_run_and_one_leader() {
        let flights: Flights = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let (open, gate) = tokio::sync::watch::channel(false);
        let mut requests = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (flights, work) = (Arc::clone(&flights), counted(&runs, &gate));
            requests.spawn(async move { flights.run("k", work, |_| Duration::ZERO).await });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        open.send_replace(true);
        let mut leaders = 0;
        while let Some(landed) = requests.join_next().await {
            let landed = landed.expect("request");
            assert_eq!(landed.value, Ok(1));
            leaders += usize::from(landed.leader);
        }
        assert_eq!(leaders, 1);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(flights.is_empty(), "a zero linger forgets at once");
    }

    #[tokio::test]
    async fn distinct_keys_run_separately() {
        let flights: Flights = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let (_open, gate) = tokio::sync::watch::channel(true);
        let a = flights.run("a", counted(&runs, &gate), |_| Duration::ZERO);
        let b = flights.run("b", counted(&runs, &gate), |_| Duration::ZERO);
        let (a, b) = tokio::join!(a, b);
        assert!(a.leader && b.leader);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_answer_lingers_then_is_forgotten() {
        let flights: Flights = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let (_open, gate) = tokio::sync::watch::channel(true);
        let linger = |_: &usize| Duration::from_millis(200);
        let first = flights.run("k", counted(&runs, &gate), linger).await;
        assert!(first.leader);
        let again = flights.run("k", counted(&runs, &gate), linger).await;
        assert_eq!((again.value, again.leader), (Ok(1), false));
        tokio::time::sleep(Duration::from_millis(400)).await;
        let later = flights.run("k", counted(&runs, &gate), linger).await;
        assert_eq!((later.value, later.leader), (Ok(2), true));
    }

    #[tokio::test]
    async fn forgetting_ends_a_linger_and_an_old_linger_spares_a_newer_flight() {
        let flights: Flights = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let (_open, gate) = tokio::sync::watch::channel(true);
        let first = flights
            .run("k", counted(&runs, &gate), |_| Duration::from_millis(200))
            .await;
        assert_eq!(first.value, Ok(1));
        flights.forget_where(|key| *key == "k");
        let second = flights
            .run("k", counted(&runs, &gate), |_| Duration::from_secs(60))
            .await;
        assert_eq!((second.value, second.leader), (Ok(2), true));
        // The first flight's linger ends now; the second one must stay.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let joined = flights
            .run("k", counted(&runs, &gate), |_| Duration::ZERO)
            .await;
        assert_eq!((joined.value, joined.leader), (Ok(2), false));
    }

    #[tokio::test]
    async fn the_work_completes_when_every_request_goes_away() {
        let flights: Flights = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let (open, gate) = tokio::sync::watch::channel(false);
        let request = tokio::spawn({
            let (flights, work) = (Arc::clone(&flights), counted(&runs, &gate));
            async move { flights.run("k", work, |_| Duration::from_secs(60)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        request.abort();
        open.send_replace(true);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let joined = flights
            .run("k", counted(&runs, &gate), |_| Duration::ZERO)
            .await;
        assert_eq!((joined.value, joined.leader), (Ok(1), false));
    }

    #[tokio::test]
    async fn a_panicking_work_is_abandoned_and_forgotten() {
        let flights: Flights = Arc::default();
        let landed = flights
            .run("k", async { panic!("boom") }, |_| Duration::from_secs(60))
            .await;
        assert!(landed.value.is_err());
        assert!(flights.is_empty());
    }
}
