//! The real `build-service` binary on loopback with the local backend, as the fleet's nodes reach
//! it: a fresh state directory (SQLite, artifact directory, per-build logs) inside the run's log
//! directory, the shared build-root cache, the static musl `driver-builder`, and a signing key made
//! for the run.
//!
//! Nodes talk to it through qemu's user network, where the host's loopback is 10.0.2.2: so the
//! service announces `http://10.0.2.2:<port>` as its public URL, and the harness itself talks to
//! `http://127.0.0.1:<port>`.
//!
//! The service logs JSON lines: the harness reads its own account of every `POST /build` from
//! them ([`Service::build_answers`]), which text logs (ANSI-coloured even into a file) would
//! make guesswork.

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use build_api::{BuildAccepted, BuildDone, BuildState, BuildStatus, status_path};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::cargo_binary;

/// The builder id the fleet's service writes into provenance; nodes allow exactly it.
pub const BUILDER_ID: &str = "urn:kdriver:builder:fleet";

/// Address of the host's loopback as seen from a qemu user-network guest.
pub const GUEST_HOST_ADDRESS: &str = "10.0.2.2";

/// The service's signing key pair, made for one run with the integrity module (secret key 0600).
#[derive(Debug, Clone)]
pub struct SigningKey {
    pub secret_key: PathBuf,
    pub public_key: PathBuf,
}

impl SigningKey {
    /// A fresh unencrypted key pair in `dir` (`minisign.key`, `minisign.pub`).
    pub fn generate(dir: &Path) -> Result<SigningKey> {
        fs::create_dir_all(dir)?;
        let key = SigningKey {
            secret_key: dir.join("minisign.key"),
            public_key: dir.join("minisign.pub"),
        };
        integrity::SecretKey::generate(&key.secret_key, &key.public_key)
            .context("generating the service's signing key")?;
        Ok(key)
    }

    /// Signs `file` the way the service does (bound to `trusted_file_name`), writing
    /// `<file>.minisig`. Used by the refusal scenarios to make a correctly signed package of the
    /// wrong kernel.
    pub fn sign(&self, file: &Path, trusted_file_name: &str) -> Result<()> {
        let secret = integrity::SecretKey::load(&self.secret_key, None)
            .with_context(|| format!("reading {}", self.secret_key.display()))?;
        let signature = integrity::signature::sign_package(&secret, file, trusted_file_name)
            .with_context(|| format!("signing {}", file.display()))?;
        let mut path = file.as_os_str().to_owned();
        path.push(".minisig");
        fs::write(PathBuf::from(path), signature)?;
        Ok(())
    }

    /// Rewrites the provenance published beside `file` so that it vouches for `file`'s current
    /// bytes, signed by this key: what a holder of the signing key could forge. The refusal
    /// scenarios use it to reach the checks behind provenance (ELF machine, vermagic), which must
    /// hold even then.
    pub fn attest_current_bytes(&self, file: &Path) -> Result<()> {
        let secret = integrity::SecretKey::load(&self.secret_key, None)
            .with_context(|| format!("reading {}", self.secret_key.display()))?;
        let mut path = file.as_os_str().to_owned();
        path.push(".intoto.jsonl");
        let path = PathBuf::from(path);
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let envelope = integrity::Envelope::parse(text.lines().next().unwrap_or_default())
            .map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
        let payload = envelope
            .payload_unverified()
            .context("the provenance payload is not base64")?;
        let mut statement: integrity::Statement =
            serde_json::from_slice(&payload).context("the provenance is not a statement")?;
        let digest = integrity::sha256_file(file)?;
        for subject in &mut statement.subject {
            subject.digest.insert("sha256".to_owned(), digest.to_hex());
        }
        let forged = integrity::Envelope::sign(
            &secret,
            integrity::provenance::PAYLOAD_TYPE,
            &serde_json::to_vec(&statement)?,
        );
        fs::write(&path, format!("{}\n", forged.to_line()))?;
        Ok(())
    }
}

/// A running build-service process. Dropping it stops the process.
#[derive(Debug)]
pub struct Service {
    child: Option<Child>,
    port: u16,
    state_dir: PathBuf,
    log_file: PathBuf,
    key: SigningKey,
    /// The driver repository as provenance names it (`file://<path>`).
    source_repository: String,
    agent: ureq::Agent,
    /// Bearer token of the run's `fleet-admin` principal (scope `admin`); nodes stay anonymous.
    admin_token: AdminToken,
}

/// A bearer token whose `Debug` does not show it.
#[derive(Clone)]
struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Writes the run's principals file: one `fleet-admin` principal holding only `admin`, for the
/// harness's admin calls (`POST /watcher/run`); every node calls anonymously (`--allow-anonymous`
/// keeps that on with principals configured), as on a loopback service without principals.
fn write_admin_principal(dir: &Path) -> Result<(PathBuf, String)> {
    let token = format!(
        "fleet-admin-{}",
        integrity::sha256_bytes(format!("{:?}{}", Instant::now(), std::process::id()).as_bytes())
            .to_hex()
    );
    let digest = integrity::sha256_bytes(token.as_bytes()).to_hex();
    let path = dir.join("principals.toml");
    fs::write(
        &path,
        format!(
            "[[principal]]\nname = \"fleet-admin\"\ntoken_sha256 = \"{digest}\"\nscopes = [\"admin\"]\n"
        ),
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok((path, token))
}

impl Service {
    /// Builds (if needed) and starts the service with its state under `dir`.
    pub fn start(dir: &Path) -> Result<Service> {
        Service::start_with(dir, &ServiceOptions::default())
    }

    /// [`Service::start`] with options: e.g. a module-signing key, so that every module the
    /// service builds is signed for nodes that enforce module signatures (Secure Boot).
    pub fn start_with(dir: &Path, options: &ServiceOptions) -> Result<Service> {
        let binary = cargo_binary("build-service", "build-service", None)?;
        let builder_x86_64 = testkit::musl_binary(
            "driver-builder",
            "driver-builder",
            "x86_64-unknown-linux-musl",
        )
        .context("building the static x86_64 driver-builder")?;
        let builder_aarch64 = testkit::musl_binary(
            "driver-builder",
            "driver-builder",
            "aarch64-unknown-linux-musl",
        )
        .context("building the static aarch64 driver-builder (needs gcc-aarch64-linux-gnu)")?;
        let key = SigningKey::generate(&dir.join("keys"))?;
        let state_dir = dir.join("service");
        fs::create_dir_all(&state_dir)?;
        let log_file = dir.join("service.log");
        let root_cache = testkit::cache_dir().join("build-root");
        let (principals, admin_token) = write_admin_principal(dir)?;
        // The driver's source is a git repository whose tag is the fleet's driver version.
        let repo = testkit::SampleDriverRepo::refresh(
            &dir.join("driver-repo"),
            "",
            &[crate::DRIVER_VERSION],
        )
        .context("making the sample driver repository")?;
        // The port is chosen here (not by the service) because the public URL carries it; a lost
        // race for it is retried with another port.
        let mut last_error = None;
        for _attempt in 0..3 {
            let port = free_port()?;
            let log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_file)?;
            let child = Command::new(&binary)
                .arg("serve")
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .arg("--state-dir")
                .arg(&state_dir)
                .args(["--backend", "local"])
                .args([
                    "--public-url",
                    &format!("http://{GUEST_HOST_ADDRESS}:{port}"),
                ])
                .arg("--driver-repo")
                .arg(repo.path())
                .arg("--builder-x86-64")
                .arg(&builder_x86_64)
                .arg("--builder-aarch64")
                .arg(&builder_aarch64)
                .arg("--root-cache")
                .arg(&root_cache)
                .arg("--signing-key")
                .arg(&key.secret_key)
                .args(options.service_args())
                .args(["--builder-id", BUILDER_ID])
                .arg("--principals-file")
                .arg(&principals)
                .arg("--allow-anonymous")
                .args(["--poll-interval", "250ms", "--build-timeout", "20m"])
                .args(["--max-concurrent-builds", "2", "--max-wait", "30s"])
                .args(["--log-format", "json"])
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(30)))
                .http_status_as_error(false)
                .build()
                .into();
            let mut service = Service {
                child: Some(child),
                port,
                state_dir: state_dir.clone(),
                log_file: log_file.clone(),
                key: key.clone(),
                source_repository: format!("file://{}", repo.path().display()),
                agent,
                admin_token: AdminToken(admin_token.clone()),
            };
            match service.wait_healthy(Duration::from_secs(60)) {
                Ok(()) => return Ok(service),
                Err(error) => {
                    service.stop();
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("build-service did not start")))
    }

    fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "build-service exited ({status}) before answering /healthz; log {}:\n{}",
                    self.log_file.display(),
                    fs::read_to_string(&self.log_file).unwrap_or_default()
                );
            }
            if let Ok(mut response) = self.agent.get(format!("{}/healthz", self.url())).call()
                && response.status().is_success()
            {
                let _ = response.body_mut().read_to_string();
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "build-service did not answer /healthz within {timeout:?}; log {}",
                    self.log_file.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The driver repository nodes expect provenance to name.
    pub fn source_repository(&self) -> &str {
        &self.source_repository
    }

    /// `http://127.0.0.1:<port>`: the harness's view.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://10.0.2.2:<port>`: the nodes' view.
    pub fn node_url(&self) -> String {
        format!("http://{GUEST_HOST_ADDRESS}:{}", self.port)
    }

    /// The artifact base nodes download from.
    pub fn node_artifact_base(&self) -> String {
        format!("{}/releases/download", self.node_url())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// Published artifacts, laid out `<tag>/<file>`.
    pub fn artifact_dir(&self) -> PathBuf {
        self.state_dir.join("artifacts")
    }

    /// Where the package of `identity` is published (whether or not it exists yet).
    pub fn published_package(
        &self,
        driver: &kernel_id::DriverName,
        identity: &kernel_id::KernelIdentity,
    ) -> PathBuf {
        self.artifact_dir()
            .join(kernel_id::ReleaseLayout::PerArtifact.release_tag(driver, identity))
            .join(identity.package_file_name(driver))
    }

    /// The HTTP status a node gets when it downloads `identity`'s package from the artifact base.
    pub fn package_download_status(
        &self,
        driver: &kernel_id::DriverName,
        identity: &kernel_id::KernelIdentity,
    ) -> Result<u16> {
        let url = format!(
            "{}/releases/download/{}",
            self.url(),
            kernel_id::ReleaseLayout::PerArtifact.package_path(driver, identity)
        );
        let mut response = self
            .agent
            .get(&url)
            .call()
            .with_context(|| format!("GET {url}"))?;
        let _ = response.body_mut().read_to_vec();
        Ok(response.status().as_u16())
    }

    /// Requests a build of `identity` (which must not be published yet), waits for it to end
    /// (`timeout` at most) and returns the published package's path; an error names the
    /// build's last status.
    pub fn build_and_wait(
        &self,
        driver: &kernel_id::DriverName,
        identity: &kernel_id::KernelIdentity,
        timeout: Duration,
    ) -> Result<PathBuf> {
        let id = self
            .request_build(identity)?
            .with_context(|| format!("{} is already published", identity.cache_key()))?;
        let status = self.wait_build(&id, timeout)?;
        if status.status != BuildState::Done {
            bail!("build {id} of {} ended: {status:?}", identity.cache_key());
        }
        Ok(self.published_package(driver, identity))
    }

    /// Per-build state and `build.log`.
    pub fn builds_dir(&self) -> PathBuf {
        self.state_dir.join("builds")
    }

    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// `POST /watcher/run`: one pass of the service's repository watcher now (it reads real
    /// mirrors, so it gets minutes rather than the harness's usual 30 s), and its summary.
    pub fn run_watcher(&self) -> Result<build_api::WatchPass> {
        let url = format!("{}/watcher/run", self.url());
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(600)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = agent
            .post(&url)
            .header("Authorization", &format!("Bearer {}", self.admin_token.0))
            .send_empty()
            .with_context(|| format!("POST {url}"))?;
        let status = response.status();
        let body = response.body_mut().read_to_string()?;
        if !status.is_success() {
            bail!("POST {url}: {status}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("POST {url}: {status}: {body}"))
    }

    /// The HTTP requests the service has answered so far, as (method, path) in order, read from
    /// its log's per-request lines (every route, downloads included). The harness's own calls
    /// count too: compare two readings around what should have sent nothing.
    pub fn requests_served(&self) -> Result<Vec<(String, String)>> {
        let log = fs::read_to_string(&self.log_file)
            .with_context(|| format!("reading {}", self.log_file.display()))?;
        Ok(log
            .lines()
            .filter(|line| line.contains("\"finished processing request\""))
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .map(|entry| {
                let field = |name: &str| entry["span"][name].as_str().unwrap_or("").to_owned();
                (field("method"), field("path"))
            })
            .collect())
    }

    /// The current `/metrics`.
    pub fn metrics(&self) -> Result<Metrics> {
        let text = self.get_text("/metrics")?;
        Ok(Metrics::parse(&text))
    }

    /// `GET /status/<id>`.
    pub fn status(&self, build_id: &str) -> Result<BuildStatus> {
        self.get_status(&status_path(build_id))
    }

    fn get_status(&self, path: &str) -> Result<BuildStatus> {
        let text = self.get_text(path)?;
        serde_json::from_str(&text).with_context(|| format!("{path}: {text}"))
    }

    fn get_text(&self, path: &str) -> Result<String> {
        let url = format!("{}{path}", self.url());
        let mut response = self
            .agent
            .get(&url)
            .call()
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let body = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading {url}"))?;
        if !status.is_success() {
            bail!("GET {url}: {status}: {body}");
        }
        Ok(body)
    }

    /// `POST /build` for `identity` as a node would send it; returns the build id (`None` when
    /// the artifact already exists).
    pub fn request_build(&self, identity: &kernel_id::KernelIdentity) -> Result<Option<String>> {
        let url = format!("{}/build", self.url());
        let mut response = self
            .agent
            .post(&url)
            .send_json(build_api::BuildRequest::from(identity))
            .with_context(|| format!("POST {url}"))?;
        let status = response.status();
        let body = response.body_mut().read_to_string()?;
        if !status.is_success() {
            bail!("POST {url}: {status}: {body}");
        }
        let context = || format!("POST {url}: {status}: {body}");
        if status.as_u16() == 200 {
            serde_json::from_str::<BuildDone>(&body).with_context(context)?;
            return Ok(None);
        }
        let accepted: BuildAccepted = serde_json::from_str(&body).with_context(context)?;
        Ok(Some(accepted.build_id))
    }

    /// Long-polls `/status/<id>` until the build ends (`timeout` at most) and returns the last answer.
    pub fn wait_build(&self, build_id: &str, timeout: Duration) -> Result<BuildStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.get_status(&format!("{}?wait=20", status_path(build_id)))?;
            if status.status.is_terminal() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("build {build_id} not finished within {timeout:?}: {status:?}");
            }
        }
    }

    /// Builds the local backend knows of (ids), oldest first by directory name order.
    pub fn build_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = fs::read_dir(self.builds_dir())
            .map(|entries| {
                entries
                    .filter_map(|entry| entry.ok())
                    .filter(|entry| entry.path().is_dir())
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// Wall time of a finished build from its `/status` timestamps (request to end).
    pub fn build_duration(&self, build_id: &str) -> Result<Duration> {
        let times = self.build_times(build_id)?;
        let finished = times
            .finished_at
            .with_context(|| format!("build {build_id} has not finished"))?;
        let elapsed = finished - times.created_at;
        Ok(Duration::from_secs_f64(elapsed.as_seconds_f64().max(0.0)))
    }

    /// When a build was reserved and when the service recorded its end, from `/status`.
    pub fn build_times(&self, build_id: &str) -> Result<BuildTimes> {
        let status = self.status(build_id)?;
        let at = |field: &str, text: &str| {
            OffsetDateTime::parse(text, &Rfc3339)
                .with_context(|| format!("/status/{build_id} {field} '{text}'"))
        };
        Ok(BuildTimes {
            created_at: at("created_at", &status.created_at)?,
            finished_at: status
                .finished_at
                .as_deref()
                .map(|text| at("finished_at", text))
                .transpose()?,
        })
    }

    /// Every `POST /build` the service has answered so far, oldest first, as its log tells it.
    pub fn build_answers(&self) -> Result<Vec<BuildAnswer>> {
        let log = fs::read_to_string(&self.log_file)
            .with_context(|| format!("reading {}", self.log_file.display()))?;
        parse_build_answers(&log).with_context(|| format!("reading {}", self.log_file.display()))
    }

    /// Stops the process (SIGTERM, then SIGKILL after 10 s). Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A build's life span as the service recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildTimes {
    /// When the build was reserved (before anything was dispatched).
    pub created_at: OffsetDateTime,
    /// When the service saw it end; for a build that ended `done`, the package was published
    /// before this moment.
    pub finished_at: Option<OffsetDateTime>,
}

/// One `POST /build` as the service answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildAnswer {
    /// When the service sent its answer.
    pub answered_at: OffsetDateTime,
    /// 202 when no package was published and the caller got a build to wait for (new or joined),
    /// 200 when the package already existed, 4xx/5xx otherwise.
    pub status: u16,
    /// The build named in the answer.
    pub build_id: Option<String>,
}

/// The `POST /build` answers in a JSON-lines service log: tower-http's "finished processing
/// request" event in a `request` span for `POST /build` (the handler records the build id into
/// that span). Lines that are not JSON (a panic message) are skipped; a matching event whose
/// time or status cannot be read is an error, since dropping it would miscount the requests.
pub fn parse_build_answers(log: &str) -> Result<Vec<BuildAnswer>> {
    let mut requests = Vec::new();
    for (index, line) in log.lines().enumerate() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let span = &event["span"];
        if event["fields"]["message"] != "finished processing request"
            || span["name"] != "request"
            || span["method"] != "POST"
            || span["path"] != "/build"
        {
            continue;
        }
        let line_no = index + 1;
        let answered_at = event["timestamp"]
            .as_str()
            .and_then(|text| OffsetDateTime::parse(text, &Rfc3339).ok())
            .with_context(|| format!("line {line_no}: no readable timestamp: {line}"))?;
        let status = event["fields"]["status"]
            .as_u64()
            .and_then(|status| u16::try_from(status).ok())
            .with_context(|| format!("line {line_no}: no readable status: {line}"))?;
        requests.push(BuildAnswer {
            answered_at,
            status,
            build_id: span["build_id"].as_str().map(str::to_owned),
        });
    }
    Ok(requests)
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// A Prometheus text exposition, reduced to `series -> value` (the series with its labels as
/// rendered, e.g. `build_dispatches_total{result="ok"}`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    series: BTreeMap<String, f64>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let series = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                Some((name.trim().to_owned(), value.trim().parse::<f64>().ok()?))
            })
            .collect();
        Metrics { series }
    }

    /// Sum of every series of `name` whose labels include all of `labels` (`("result", "ok")`).
    /// Absent series count as 0, as Prometheus counters do before their first increment.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series
            .iter()
            .filter(|(series, _)| {
                let (series_name, series_labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, rest.trim_end_matches('}')),
                    None => (series.as_str(), ""),
                };
                series_name == name
                    && labels
                        .iter()
                        .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, value)| value)
            .sum()
    }

    /// The counters that move when a build is started: dispatches and finished builds.
    pub fn build_counters(&self) -> BuildCounters {
        BuildCounters {
            dispatches_ok: self.sum("build_dispatches_total", &[("result", "ok")]),
            builds_done: self.sum("builds_finished_total", &[("state", "done")]),
            builds_finished: self.sum("builds_finished_total", &[]),
            cache_hits: self.sum("build_cache_hits_total", &[]),
        }
    }
}

/// The service's build counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BuildCounters {
    pub dispatches_ok: f64,
    pub builds_done: f64,
    pub builds_finished: f64,
    pub cache_hits: f64,
}

/// How [`Service::start_with`] starts the service.
#[derive(Debug, Clone, Default)]
pub struct ServiceOptions {
    /// Sign every built module with this key (`--module-signing-key`, `--module-signing-cert`).
    pub module_signing: Option<ModuleSigningKey>,
    /// More service arguments, passed as given (e.g. the repository watcher's mirrors).
    pub extra_args: Vec<std::ffi::OsString>,
}

impl ServiceOptions {
    /// The service's command-line arguments for these options.
    pub fn service_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = Vec::new();
        if let Some(key) = &self.module_signing {
            args.extend([
                "--module-signing-key".into(),
                key.key.clone().into_os_string(),
                "--module-signing-cert".into(),
                key.cert_der.clone().into_os_string(),
            ]);
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// A module-signing key pair for the service's builds (Secure Boot, `module.sig_enforce=1`), made
/// with openssl the way the kernel's `certs/x509.genkey` makes one: RSA 4096, self-signed,
/// `basicConstraints=critical,CA:FALSE`, `keyUsage=digitalSignature`,
/// `subjectKeyIdentifier=hash`, `authorityKeyIdentifier=keyid`, valid for a century, subject
/// `CN=kdriver module signing (test)`. For tests and `cargo xtask serve` only: a real deployment
/// makes its own and keeps the key in a secret store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSigningKey {
    /// `<dir>/module-signing.key`: the PEM private key, mode 0600.
    pub key: PathBuf,
    /// `<dir>/module-signing.der`: the certificate, DER (what `mokutil --import` takes).
    pub cert_der: PathBuf,
}

impl ModuleSigningKey {
    /// The certificate's subject CN.
    pub const COMMON_NAME: &str = "kdriver module signing (test)";

    /// Where the pair lives in `dir` (made or not).
    pub fn in_dir(dir: &Path) -> ModuleSigningKey {
        ModuleSigningKey {
            key: dir.join("module-signing.key"),
            cert_der: dir.join("module-signing.der"),
        }
    }

    /// The pair in `dir`, made now unless both files are already there.
    pub fn existing_or_generate(dir: &Path) -> Result<ModuleSigningKey> {
        let pair = ModuleSigningKey::in_dir(dir);
        if pair.key.is_file() && pair.cert_der.is_file() {
            return Ok(pair);
        }
        ModuleSigningKey::generate(dir)
    }

    /// A fresh pair in `dir` (`module-signing.key`, `module-signing.der`); refuses to replace an
    /// existing key.
    pub fn generate(dir: &Path) -> Result<ModuleSigningKey> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let pair = ModuleSigningKey::in_dir(dir);
        // Created 0600 before openssl writes into it, so the key is never readable by others.
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&pair.key)
            .with_context(|| format!("creating {} (it must not exist yet)", pair.key.display()))?;
        let genkey = dir.join("module-signing.genkey");
        fs::write(
            &genkey,
            format!(
                "[ req ]\n\
                 default_bits = 4096\n\
                 distinguished_name = req_distinguished_name\n\
                 prompt = no\n\
                 string_mask = utf8only\n\
                 x509_extensions = myexts\n\
                 \n\
                 [ req_distinguished_name ]\n\
                 CN = {}\n\
                 \n\
                 [ myexts ]\n\
                 basicConstraints=critical,CA:FALSE\n\
                 keyUsage=digitalSignature\n\
                 subjectKeyIdentifier=hash\n\
                 authorityKeyIdentifier=keyid\n",
                ModuleSigningKey::COMMON_NAME
            ),
        )?;
        let output = Command::new("openssl")
            .args([
                "req", "-new", "-nodes", "-utf8", "-sha256", "-days", "36500",
            ])
            .args(["-batch", "-x509", "-config"])
            .arg(&genkey)
            .args(["-outform", "DER", "-out"])
            .arg(&pair.cert_der)
            .arg("-keyout")
            .arg(&pair.key)
            .stdin(Stdio::null())
            .output()
            .context("running openssl (install Debian's openssl package)")?;
        let _ = fs::remove_file(&genkey);
        if !output.status.success() {
            let _ = fs::remove_file(&pair.key);
            bail!(
                "openssl could not make a module-signing key ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        fs::set_permissions(&pair.key, fs::Permissions::from_mode(0o600))?;
        Ok(pair)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_is_summed_by_labels() {
        let text = "# HELP build_dispatches_total x\n\
                    # TYPE build_dispatches_total counter\n\
                    build_dispatches_total{result=\"ok\"} 2\n\
                    build_dispatches_total{result=\"transient\"} 1\n\
                    builds_finished_total{state=\"done\"} 2\n\
                    build_cache_hits_total 5\n";
        let metrics = Metrics::parse(text);
        assert_eq!(metrics.sum("build_dispatches_total", &[]), 3.0);
        assert_eq!(
            metrics.sum("build_dispatches_total", &[("result", "ok")]),
            2.0
        );
        assert_eq!(metrics.sum("absent_total", &[]), 0.0);
        let counters = metrics.build_counters();
        assert_eq!(counters.builds_done, 2.0);
        assert_eq!(counters.cache_hits, 5.0);
    }

    #[test]
    fn build_answers_are_read_from_the_json_log() {
        // Lines as the service writes them (`--log-format json`), plus a stray non-JSON line.
        let log = r#"{"timestamp":"2026-12-03T08:59:09.978815Z","level":"INFO","fields":{"message":"build-service ready"},"target":"build_service"}
{"timestamp":"2026-12-03T08:59:12.900000Z","level":"INFO","fields":{"message":"new build reserved","build_id":"b1"},"target":"build_service::api","span":{"method":"POST","path":"/build","name":"request"}}
{"timestamp":"2026-12-03T08:59:12.943863Z","level":"INFO","fields":{"message":"finished processing request","latency":"3 ms","status":202},"target":"tower_http::trace::on_response","span":{"build_id":"b1","method":"POST","path":"/build","name":"request"}}
{"timestamp":"2026-12-03T08:59:13.000000Z","level":"INFO","fields":{"message":"finished processing request","latency":"0 ms","status":200},"target":"tower_http::trace::on_response","span":{"build_id":"b1","method":"GET","path":"/status/b1","name":"request"}}
thread 'main' panicked at somewhere
{"timestamp":"2026-12-03T08:59:14.5Z","level":"INFO","fields":{"message":"finished processing request","latency":"0 ms","status":422},"target":"tower_http::trace::on_response","span":{"method":"POST","path":"/build","name":"request"}}
"#;
        let requests = parse_build_answers(log).expect("parse");
        assert_eq!(requests.len(), 2, "{requests:?}");
        assert_eq!(requests[0].status, 202);
        assert_eq!(requests[0].build_id.as_deref(), Some("b1"));
        assert_eq!(
            requests[0].answered_at,
            OffsetDateTime::parse("2026-12-03T08:59:12.943863Z", &Rfc3339).expect("time")
        );
        assert_eq!(requests[1].status, 422);
        assert_eq!(requests[1].build_id, None);

        let unreadable = r#"{"timestamp":"yesterday","fields":{"message":"finished processing request","status":202},"span":{"method":"POST","path":"/build","name":"request"}}"#;
        assert!(parse_build_answers(unreadable).is_err());
    }

    #[test]
    fn a_module_signing_key_is_made_like_the_kernels_x509_genkey() {
        use std::os::unix::fs::PermissionsExt;
        let dir = testkit::test_log_dir("fleet-module-signing-key").expect("dir");
        let pair = ModuleSigningKey::generate(&dir).expect("generated");
        assert_eq!(pair, ModuleSigningKey::in_dir(&dir));
        let mode = fs::metadata(&pair.key).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = Command::new("openssl")
            .args(["x509", "-inform", "DER", "-noout", "-text", "-in"])
            .arg(&pair.cert_der)
            .output()
            .expect("openssl x509");
        let text = String::from_utf8_lossy(&text.stdout);
        for expected in [
            "CN = kdriver module signing (test)",
            "Public-Key: (4096 bit)",
            "CA:FALSE",
            "Digital Signature",
            // (authorityKeyIdentifier=keyid: OpenSSL 3 leaves it out of a self-signed
            // certificate, as the kernel's own genkey gets it.)
            "X509v3 Subject Key Identifier",
        ] {
            assert!(text.contains(expected), "{expected} missing:\n{text}");
        }
        assert!(
            ModuleSigningKey::generate(&dir).is_err(),
            "an existing key is never replaced"
        );
        assert_eq!(
            ModuleSigningKey::existing_or_generate(&dir).expect("reused"),
            pair
        );
        let args = ServiceOptions {
            module_signing: Some(pair.clone()),
            ..ServiceOptions::default()
        }
        .service_args();
        assert_eq!(args[0], "--module-signing-key");
        assert_eq!(args[3], pair.cert_der.as_os_str());
    }
}
