//! build-service: when a node boots a kernel without its driver, it asks here. The service answers
//! at once when the artifact exists, dispatches exactly one build when it does not (however many nodes
//! ask, across replicas), and tells every caller when it is done.
//!
//! - [`api`]: the HTTP API, which only translates (validation before any lookup; results and errors
//!   to status codes and bodies);
//! - [`coordinator`]: the one owner of coordination state — store, backend, trackers, waiters, the
//!   [`single_flight`] of identical requests, the caps — and the service's operations (artifact store
//!   first, then the in-flight build, then an atomic reservation; audit; status waits);
//! - [`store`]: builds in SQLite or PostgreSQL through one sqlx `Any` code path;
//! - [`tracker`]: a task per in-flight build (dispatch once, poll, deadline, leases with a heartbeat),
//!   the one layer that retries backend calls, with [`retry`]'s policy;
//! - [`waiter`]: one shared watcher per build for every long poll, woken by the trackers and, on
//!   PostgreSQL, by `LISTEN/NOTIFY` across replicas; [`health`]: the cached backend probe;
//! - [`backend`]: the seam to GitHub ([`github`]) or the embedded [`local`] backend;
//! - [`source`]: the driver's git repository, whose tags are the driver versions; each version is
//!   resolved to a commit before any reservation, and the build is made from exactly that commit;
//! - [`access`]: bearer tokens and per-caller rate limits; [`telemetry`]: metrics and logs;
//! - [`module_signing`]: the key and certificate every module is signed with (Secure Boot), checked
//!   at startup; the certificate is served at `GET /module-signing-cert.der`.
//! - [`watcher`]: the repository watcher — the distributions' package indexes read for newer kernels of
//!   the families in use, prebuilt through the coordinator as the built-in principal `watcher`
//!   (`POST /watcher/run`; `build-service watch` runs the same pass from outside).
//! - [`inventory`]: the fleet inventory — each node's latest report (`POST /report`), aggregated per
//!   kernel family for `GET /fleet` ([`fleet_api`], the page by [`fleet_page`]), the
//!   `kdriver_fleet_*` gauges and the families in use.

pub mod access;
pub mod api;
pub mod backend;
pub mod config;
pub mod coordinator;
pub mod fleet_api;
pub mod fleet_page;
pub mod github;
pub mod health;
pub mod inventory;
pub mod local;
pub mod module_signing;
pub mod retry;
pub mod signing;
pub mod single_flight;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod tracker;
pub mod waiter;
pub mod watcher;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::Request;
use tokio::net::TcpListener;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

pub use backend::{ArtifactRef, Backend, BackendError, BuildSpec, Dispatched, RunState};
pub use config::{BackendConfig, LocalConfig, ServiceConfig};

use crate::coordinator::{Coordinator, CoordinatorSettings};
use crate::local::{LocalBackend, LocalSettings};
use crate::store::Store;
use crate::tracker::TrackerSettings;

/// Runs the service on `listener` until `shutdown` completes, then stops its trackers (handing their
/// builds' leases back so the next start resumes them at once).
pub async fn run(
    config: ServiceConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let address = listener.local_addr().context("reading the bound address")?;
    Prepared::new(config, address)
        .await?
        .serve(listener, shutdown)
        .await
}

/// A service with its database open and backend ready, not yet serving.
struct Prepared {
    router: Router,
    access: Arc<access::AccessPolicy>,
    coordinator: Arc<Coordinator>,
    stopping: tokio::sync::watch::Sender<bool>,
    health_probe: health::Probe,
    /// The repository watcher, when a source to watch is configured.
    watcher: Option<Arc<watcher::ServiceWatcher>>,
    /// Where to LISTEN for other replicas' build changes (PostgreSQL only).
    listen_url: Option<String>,
}

impl Prepared {
    async fn new(config: ServiceConfig, address: SocketAddr) -> anyhow::Result<Self> {
        let public_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{address}"))
            .trim_end_matches('/')
            .to_owned();
        let store = Store::connect(&config.database_url)
            .await
            .with_context(|| {
                format!(
                    "opening database {}",
                    config::redact_url(&config.database_url)
                )
            })?;
        let (backend, backend_routes, default_poll): (Arc<dyn Backend>, Option<Router>, Duration) =
            match config.backend {
                BackendConfig::Local(local) => {
                    let backend = Arc::new(
                        LocalBackend::new(
                            LocalSettings {
                                artifact_dir: local.artifact_dir,
                                builds_dir: local.builds_dir,
                                driver_repo: local.driver_repo,
                                driver_subdir: local.driver_subdir,
                                source_mirror: local.source_mirror,
                                driver: config.driver.clone(),
                                layout: config.layout,
                                public_url: public_url.clone(),
                                max_concurrent_builds: local.max_concurrent_builds,
                            },
                            local.executor,
                            local.signer,
                        )
                        .context("preparing the local backend (its directories and the driver repository)")?,
                    );
                    let routes = backend.router();
                    (backend, Some(routes), Duration::from_millis(250))
                }
                BackendConfig::Custom(backend) => {
                    (backend, config.extra_routes, Duration::from_secs(15))
                }
            };
        let owner = config
            .replica_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let listen_url =
            (store.kind() == store::DbKind::Postgres).then(|| config.database_url.clone());
        let stopping = tokio::sync::watch::channel(false).0;
        // Install the recorder before the first metric is recorded anywhere.
        telemetry::prometheus();
        let (health_probe, health) =
            health::probe(Arc::clone(&backend), config.health_probe_interval);
        let coordinator = Coordinator::new(
            store.clone(),
            Arc::clone(&backend),
            health,
            stopping.subscribe(),
            CoordinatorSettings {
                driver: config.driver.clone(),
                owner: owner.clone(),
                trackers: TrackerSettings {
                    poll_interval: config.poll_interval.unwrap_or(default_poll),
                    lease: config.lease,
                    retry_base: config.retry_base,
                    retry_max: config.retry_max,
                    retention: config.retention,
                },
                build_timeout: config.build_timeout,
                max_wait: config.max_wait,
                in_flight_linger: config.in_flight_linger,
                caps: config.caps,
                wait_recheck: config.wait_recheck,
                max_long_polls: config.max_long_polls,
                source: config.source,
            },
        );
        config
            .access
            .check_exposure(address)
            .context("checking who may reach the service")?;
        let access = Arc::new(
            access::AccessPolicy::new(config.access)
                .with_client_cap(config.max_requests_per_client),
        );
        let watcher = config
            .watch
            .map(|settings| watcher::ServiceWatcher::new(settings, Arc::clone(&coordinator)))
            .transpose()?
            .map(Arc::new);
        let router = router(
            Arc::clone(&coordinator),
            Arc::clone(&access),
            backend_routes,
            config.module_signing_cert,
            watcher.clone(),
        );
        tracing::info!(%address, backend = backend.name(), replica = %owner, "build-service ready");
        Ok(Self {
            router,
            access,
            coordinator,
            stopping,
            health_probe,
            watcher,
            listen_url,
        })
    }

    async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let trackers = self.coordinator.trackers().clone();
        let sweeper = tokio::spawn(trackers.clone().run_sweeper());
        let reloader = tokio::spawn(reload_on_sighup(Arc::clone(&self.access)));
        let prober = tokio::spawn(self.health_probe.run());
        let listener_task = self.listen_url.map(|url| {
            let notifier = Arc::clone(self.coordinator.notifier());
            tokio::spawn(waiter::listen_postgres(notifier, url))
        });
        let watching = self
            .watcher
            .map(|watcher| tokio::spawn(watcher.run_every(self.stopping.subscribe())));
        let stopping = self.stopping;
        let served = axum::serve(
            listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            // Long polls answer now instead of holding the shutdown up to their wait.
            stopping.send_replace(true);
        })
        .await;
        trackers.shutdown().await;
        reloader.abort();
        prober.abort();
        if let Some(watching) = watching {
            watching.abort();
        }
        if let Some(listener_task) = listener_task {
            listener_task.abort();
        }
        let _ = sweeper.await;
        self.coordinator.close().await;
        served.context("serving HTTP")
    }
}

/// Assembles the routes: rate limit (outermost) and auth only where they apply.
/// Re-reads the principals file on every SIGHUP, the way operators expect a daemon to pick up an
/// edited credentials file without dropping connections or in-flight builds.
async fn reload_on_sighup(access: Arc<access::AccessPolicy>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; principals are not reloadable");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        match access.reload() {
            Ok(count) => tracing::info!(principals = count, "principals reloaded"),
            Err(error) => {
                tracing::error!(%error, "principals file refused; the previous principals stay in force")
            }
        }
    }
}

fn router(
    state: Arc<Coordinator>,
    access: Arc<access::AccessPolicy>,
    backend_routes: Option<Router>,
    module_signing_cert: Option<Vec<u8>>,
    watcher: Option<Arc<watcher::ServiceWatcher>>,
) -> Router {
    // Authentication wraps the scope checks, and the rate limit runs inside authentication: only
    // a known caller (or an allowed anonymous one, by address) gets a bucket.
    let limited = api::limited_routes(Arc::clone(&state))
        .merge(watcher::routes(watcher))
        .route_layer(axum::middleware::from_fn_with_state(
            access,
            access::authenticate,
        ));
    let mut router = limited
        .merge(api::open_routes(state))
        .merge(api::module_signing_routes(module_signing_cert));
    if let Some(backend_routes) = backend_routes {
        router = router.merge(backend_routes);
    }
    router.layer(
        TraceLayer::new_for_http()
            .make_span_with(|request: &Request| {
                tracing::info_span!(
                    "request",
                    method = %request.method(),
                    path = %request.uri().path(),
                    build_id = tracing::field::Empty,
                )
            })
            .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
    )
}

/// Binds `address` with a deep accept queue: a fleet booting at once opens thousands of connections
/// in the same instant, and the default backlog (1024) would reset the overflow.
/// `build-service serve`: logging as the arguments say, the configuration checked, the listener
/// bound, then [`run`] until SIGINT or SIGTERM. The binary calls it, and so does `cargo xtask serve`,
/// which runs the service in its own process so that a fresh clone compiles the service's
/// dependencies once rather than again in a second profile.
pub async fn serve(args: config::ServeArgs) -> anyhow::Result<()> {
    telemetry::init_tracing(args.log_format);
    let listen = args.listen;
    let config = args.into_config()?;
    let listener = bind(listen).with_context(|| format!("binding {listen}"))?;
    run(config, listener, shutdown_signal()).await
}

/// Resolves on SIGINT or SIGTERM (a service that cannot listen for SIGTERM says so and waits for
/// SIGINT alone).
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
}

pub fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(8192)
}

/// A service started in the background (tests, benchmarks).
#[derive(Debug)]
pub struct RunningService {
    /// Where it listens.
    pub address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningService {
    /// Binds 127.0.0.1 on a free port and starts `config` there.
    pub async fn start(config: ServiceConfig) -> anyhow::Result<Self> {
        let listener =
            bind(SocketAddr::from(([127, 0, 0, 1], 0))).context("binding 127.0.0.1:0")?;
        Self::start_on(config, listener).await
    }

    /// Starts `config` on `listener`; returns once the database is open and the backend ready.
    pub async fn start_on(config: ServiceConfig, listener: TcpListener) -> anyhow::Result<Self> {
        let address = listener.local_addr()?;
        let prepared = Prepared::new(config, address).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(prepared.serve(listener, async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            address,
            stop: Some(stop),
            task,
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Stops gracefully and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.context("service task")?
    }
}
