//! Getting the one verified package for an identity: from the cache when a copy there verifies, else
//! from the artifact store (GitHub Releases layout, or the build service's local artifact route), and when
//! the store has nothing, by asking the build service to build it and waiting until it is done.
//!
//! Nothing reaches the cache's final name unverified: downloads land in a temporary file next to it and
//! are renamed only after the digest, the signature and the provenance check out. A cached copy is
//! never trusted blindly: it is verified again, with its cached signature and provenance, the same way
//! and with the keyring and policy of this run.
//!
//! With trusted keys the package's SHA-256 is checked against the digest its signed provenance
//! binds, so the published `.sha256` (unsigned: whoever can replace the package can replace it) is
//! not downloaded at all; it is what the insecure mode checks, its only protection against a
//! damaged download.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use build_api::{
    ArtifactOrigin, BuildAccepted, BuildDone, BuildRequest, BuildState, BuildStatus, status_path,
};
use integrity::Sha256Digest;
use integrity::provenance::VerifiedProvenance;
use integrity::signature::VerifiedSignature;
use kernel_id::{DriverName, KernelIdentity, ReleaseLayout, percent_encode_segment};
use tracing::{info, warn};

use crate::error::{LoaderError, Result};
use crate::http::{Deadline, Downloaded, Fetched, HttpClient, JsonMethod};
pub use crate::verify::TrustPolicy;
use crate::verify::{self, MAX_DIGEST_BYTES, MAX_PROVENANCE_BYTES, MAX_SIGNATURE_BYTES};

/// Where artifacts come from.
#[derive(Debug, Clone)]
pub struct ArtifactSource {
    /// Base URL the download path is appended to, e.g. `https://github.com/o/r/releases/download` or
    /// `http://127.0.0.1:8080/releases/download`.
    pub base_url: String,
    pub layout: ReleaseLayout,
    /// Bearer token for artifact downloads (private repositories).
    pub token: Option<String>,
    /// Largest package accepted.
    pub max_package_bytes: u64,
}

/// The build service asked on a miss.
#[derive(Debug, Clone)]
pub struct BuildService {
    /// Service root, e.g. `http://build-service:8080`.
    pub url: String,
    pub token: Option<String>,
    /// Long-poll duration of one `GET /status/{id}?wait=`.
    pub wait: Duration,
}

/// A package whose digest, signature and provenance verified (only the digest in the insecure mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPackage {
    pub path: PathBuf,
    pub file_name: String,
    /// The package's SHA-256, as verified against its digest file.
    pub sha256: Sha256Digest,
    /// `None` only when signature checking was skipped (`--insecure-skip-signature`).
    pub signature: Option<VerifiedSignature>,
    /// The verified build provenance; `None` only when signature checking was skipped.
    pub provenance: Option<VerifiedProvenance>,
    /// True when the cached copy was reused and nothing was downloaded.
    pub from_cache: bool,
    /// Whether a build was requested to obtain it.
    pub built_on_demand: bool,
    /// How long the loader waited for an on-demand build: from sending the first `POST /build` to
    /// learning that the build ended. `None` when it waited for none (cached, already published, or
    /// the service answered that the artifact exists).
    pub build_wait: Option<Duration>,
}

impl VerifiedPackage {
    /// Where the package came from, as the node report says it: the verified cache, the store
    /// (already published), or a build the loader waited for.
    pub fn origin(&self) -> ArtifactOrigin {
        if self.from_cache {
            ArtifactOrigin::Cache
        } else if self.build_wait.is_some() {
            ArtifactOrigin::Build
        } else {
            ArtifactOrigin::Store
        }
    }
}

/// The URLs of one identity's artifact files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactUrls {
    pub package: String,
    pub digest: String,
    pub signature: String,
    pub provenance: String,
}

impl ArtifactUrls {
    /// `{base}/{ReleaseLayout::download_path}` for the package and its three sidecar files.
    pub fn new(
        source: &ArtifactSource,
        driver: &DriverName,
        identity: &KernelIdentity,
    ) -> ArtifactUrls {
        let base = source.base_url.trim_end_matches('/');
        let sidecar = |name: String| {
            format!(
                "{base}/{}",
                source.layout.download_path(driver, identity, &name)
            )
        };
        ArtifactUrls {
            package: format!("{base}/{}", source.layout.package_path(driver, identity)),
            digest: sidecar(identity.digest_file_name(driver)),
            signature: sidecar(identity.signature_file_name(driver)),
            provenance: sidecar(identity.provenance_file_name(driver)),
        }
    }

    /// The same files at the package URL the build service announced. It must name this identity's
    /// package file; the sidecars sit next to it (`.sha256`/`.minisig`/`.intoto.jsonl` appended, which
    /// percent-encoding leaves unchanged).
    fn at_announced(url: &str, file_name: &str) -> Result<ArtifactUrls> {
        let expected_tail = format!("/{}", percent_encode_segment(file_name));
        if !url.ends_with(&expected_tail)
            || !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(LoaderError::BuildService(format!(
                "announced download_url {url:?} is not an http(s) URL of {file_name:?}"
            )));
        }
        Ok(ArtifactUrls {
            package: url.to_owned(),
            digest: format!("{url}.sha256"),
            signature: format!("{url}.minisig"),
            provenance: format!("{url}.intoto.jsonl"),
        })
    }
}

/// Everything fetching needs.
#[derive(Debug)]
pub struct Fetcher<'a> {
    pub client: &'a HttpClient,
    pub source: &'a ArtifactSource,
    pub build_service: Option<&'a BuildService>,
    pub trust: &'a TrustPolicy,
    /// Root of the package cache; one directory per identity cache key below it.
    pub cache_root: &'a Path,
}

/// The files of one identity's artifact in its cache directory.
#[derive(Debug)]
struct CachePaths {
    package: PathBuf,
    digest: PathBuf,
    signature: PathBuf,
    provenance: PathBuf,
}

impl CachePaths {
    fn all(&self) -> [&PathBuf; 4] {
        [
            &self.package,
            &self.digest,
            &self.signature,
            &self.provenance,
        ]
    }
}

/// What one package is checked against: the sidecar texts (absent when not published or not
/// needed), and what they proved.
#[derive(Debug)]
struct Checked {
    digest_text: String,
    signature_text: Option<String>,
    provenance_text: Option<String>,
    sha256: Sha256Digest,
    signature: Option<VerifiedSignature>,
    provenance: Option<VerifiedProvenance>,
}

/// A sidecar file: its text when it exists, `None` when it does not.
type Sidecar = Option<String>;

/// A sidecar being downloaded on its own thread.
type Pending<'scope> = std::thread::ScopedJoinHandle<'scope, Result<Sidecar>>;

/// The downloaded sidecars of one package, each as its download ended: the digest file only when
/// the trust policy checks no signature, signature and provenance only when it does.
struct Sidecars {
    digest: Option<Result<Sidecar>>,
    signature: Option<Result<Sidecar>>,
    provenance: Option<Result<Sidecar>>,
}

impl Fetcher<'_> {
    /// The cache directory of an identity (its kernel-id cache key as a relative path).
    pub fn cache_dir(&self, identity: &KernelIdentity) -> PathBuf {
        self.cache_root.join(identity.cache_key())
    }

    /// Returns a verified package for the identity: cached, downloaded, or built then downloaded.
    pub fn fetch(
        &self,
        driver: &DriverName,
        identity: &KernelIdentity,
        deadline: &Deadline,
    ) -> Result<VerifiedPackage> {
        if let TrustPolicy::Missing { reason } = self.trust {
            return Err(LoaderError::Config(format!(
                "{reason}; configure trusted keys (--trusted-keys-dir, --public-key-file or \
                 --public-key) with the provenance policy, or --insecure-skip-signature to knowingly \
                 load unsigned code"
            )));
        }
        let file_name = identity.package_file_name(driver);
        let dir = self.cache_dir(identity);
        std::fs::create_dir_all(&dir)
            .map_err(|e| LoaderError::io(format!("creating cache {}", dir.display()), e))?;
        let paths = CachePaths {
            package: dir.join(&file_name),
            digest: dir.join(identity.digest_file_name(driver)),
            signature: dir.join(identity.signature_file_name(driver)),
            provenance: dir.join(identity.provenance_file_name(driver)),
        };

        if paths.package.exists() {
            match self.verify_cached(driver, identity, &paths, &file_name) {
                Ok(checked) => {
                    info!(path = %paths.package.display(), "using the cached package, verified again");
                    return Ok(self.verified(paths.package, file_name, checked, true, None));
                }
                Err(e) => {
                    warn!(path = %paths.package.display(), error = %e, "cached package does not verify; downloading again");
                    for stale in paths.all() {
                        let _ = std::fs::remove_file(stale);
                    }
                }
            }
        }

        let mut urls = ArtifactUrls::new(self.source, driver, identity);
        let partial = dir.join(format!(".{file_name}.partial-{}", std::process::id()));
        // `Some` once a build was requested: how long the loader waited for it (if it waited).
        let mut build: Option<Option<Duration>> = None;
        // The sidecars are fetched while the package downloads: a published package's files then
        // cost one round trip, not two. When the package is not published they are 404 too and
        // fetched again after the build, where the service says.
        let (downloaded, early_sidecars) = std::thread::scope(|scope| {
            let sidecars = std::thread::Builder::new()
                .name("sidecars".into())
                .spawn_scoped(scope, || self.fetch_sidecars(&urls, deadline));
            let downloaded = self.download_package(&urls.package, &partial, deadline);
            // No thread to be had, or it stopped: they are fetched after the package instead.
            let sidecars = sidecars.ok().and_then(|handle| handle.join().ok());
            (downloaded, sidecars)
        });
        let mut sidecars = None;
        let downloaded = match downloaded {
            Ok(Fetched::Found(bytes)) => {
                sidecars = early_sidecars;
                bytes
            }
            Ok(Fetched::NotFound) => {
                let Some(service) = self.build_service else {
                    return Err(LoaderError::NotFound { url: urls.package });
                };
                info!(url = %urls.package, "artifact not published; requesting a build");
                let requested = request_build(self.client, service, identity, deadline)?;
                if let Some(announced) = &requested.download_url {
                    urls = ArtifactUrls::at_announced(announced, &file_name)?;
                }
                build = Some(requested.waited);
                match self.download_package(&urls.package, &partial, deadline)? {
                    Fetched::Found(bytes) => bytes,
                    Fetched::NotFound => {
                        return Err(LoaderError::BuildService(format!(
                            "the build was reported done but {} is still 404",
                            urls.package
                        )));
                    }
                }
            }
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        };
        info!(url = %urls.package, bytes = downloaded.bytes, "package downloaded");

        let sidecars = match sidecars {
            Some(sidecars) => sidecars,
            None => self.fetch_sidecars(&urls, deadline),
        };
        let checked =
            match self.verify_download(driver, identity, &urls, &partial, downloaded, sidecars) {
                Ok(checked) => checked,
                Err(e) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(e);
                }
            };
        write_file(&paths.digest, checked.digest_text.as_bytes())?;
        for (path, text) in [
            (&paths.signature, &checked.signature_text),
            (&paths.provenance, &checked.provenance_text),
        ] {
            match text {
                Some(text) => write_file(path, text.as_bytes())?,
                None => {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        std::fs::rename(&partial, &paths.package).map_err(|e| {
            LoaderError::io(
                format!("moving the package into {}", paths.package.display()),
                e,
            )
        })?;
        Ok(self.verified(paths.package, file_name, checked, false, build))
    }

    /// The result, logged: what vouched for the package.
    fn verified(
        &self,
        path: PathBuf,
        file_name: String,
        checked: Checked,
        from_cache: bool,
        build: Option<Option<Duration>>,
    ) -> VerifiedPackage {
        if let (Some(signature), Some(provenance)) = (&checked.signature, &checked.provenance) {
            info!(
                package = file_name,
                sha256 = %checked.sha256,
                signature_key = %signature.key_id,
                source_repository = provenance.source_repository,
                source_commit = %provenance.source_commit,
                builder = provenance.builder_id,
                invocation = provenance.invocation_id,
                provenance_keys = verify::key_list(&provenance.key_ids),
                "package verified: digest, signature and provenance"
            );
        }
        VerifiedPackage {
            path,
            file_name,
            sha256: checked.sha256,
            signature: checked.signature,
            provenance: checked.provenance,
            from_cache,
            built_on_demand: build.is_some(),
            build_wait: build.flatten(),
        }
    }

    fn download_package(
        &self,
        url: &str,
        partial: &Path,
        deadline: &Deadline,
    ) -> Result<Fetched<Downloaded>> {
        let result = self.client.download_to_file(
            url,
            self.source.token.as_deref(),
            partial,
            self.source.max_package_bytes,
            deadline,
        );
        if !matches!(result, Ok(Fetched::Found(_))) {
            let _ = std::fs::remove_file(partial);
        }
        result
    }

    /// Downloads the sidecars the trust policy checks, at the same time (one round trip instead of
    /// two, which dominates a node's start on a slow link): signature and provenance with trusted
    /// keys, the digest file without. Only fetched here; [`Self::verify_download`] checks them.
    fn fetch_sidecars(&self, urls: &ArtifactUrls, deadline: &Deadline) -> Sidecars {
        let token = self.source.token.as_deref();
        let get = |url: &str, limit: u64| -> Result<Sidecar> {
            Ok(match self.client.get_text(url, token, limit, deadline)? {
                Fetched::Found(text) => Some(text),
                Fetched::NotFound => None,
            })
        };
        if !matches!(self.trust, TrustPolicy::Verify { .. }) {
            return Sidecars {
                digest: Some(get(&urls.digest, MAX_DIGEST_BYTES)),
                signature: None,
                provenance: None,
            };
        }
        let (signature, provenance) = std::thread::scope(|scope| {
            let get = &get;
            let signature_url = urls.signature.as_str();
            let signature: std::io::Result<Pending<'_>> = std::thread::Builder::new()
                .name("sidecar".into())
                .spawn_scoped(scope, move || get(signature_url, MAX_SIGNATURE_BYTES));
            let provenance = get(&urls.provenance, MAX_PROVENANCE_BYTES);
            let signature = match signature {
                Ok(handle) => handle.join().unwrap_or_else(|_| {
                    Err(LoaderError::io(
                        format!("fetching {signature_url}"),
                        std::io::Error::other("the download thread stopped unexpectedly"),
                    ))
                }),
                // No thread to be had: fetch it here, one after the other.
                Err(_) => get(signature_url, MAX_SIGNATURE_BYTES),
            };
            (signature, provenance)
        });
        Sidecars {
            digest: None,
            signature: Some(signature),
            provenance: Some(provenance),
        }
    }

    /// Checks the package against its downloaded sidecars, strictly digest -> signature ->
    /// provenance, each on its own result, so what is refused and why does not depend on when or
    /// in which order the sidecars arrived.
    fn verify_download(
        &self,
        driver: &DriverName,
        identity: &KernelIdentity,
        urls: &ArtifactUrls,
        package: &Path,
        downloaded: Downloaded,
        sidecars: Sidecars,
    ) -> Result<Checked> {
        let Sidecars {
            digest,
            signature,
            provenance,
        } = sidecars;
        let unused = || Ok(None);
        self.check(
            driver,
            identity,
            package,
            Some(downloaded.sha256),
            || digest.unwrap_or_else(unused),
            || signature.unwrap_or_else(unused),
            || provenance.unwrap_or_else(unused),
            |what| format!("published at {} (404)", what),
            urls,
        )
    }

    /// Verifies a cached package with its cached sidecars, exactly like a download.
    fn verify_cached(
        &self,
        driver: &DriverName,
        identity: &KernelIdentity,
        paths: &CachePaths,
        file_name: &str,
    ) -> Result<Checked> {
        let read = |path: &Path, limit: u64| -> Result<Sidecar> {
            if !path.exists() {
                return Ok(None);
            }
            crate::host::read_small(path, limit).map(Some).map_err(|e| {
                LoaderError::verify(file_name, format!("cached sidecar unreadable: {e}"))
            })
        };
        let urls = ArtifactUrls {
            package: paths.package.display().to_string(),
            digest: paths.digest.display().to_string(),
            signature: paths.signature.display().to_string(),
            provenance: paths.provenance.display().to_string(),
        };
        self.check(
            driver,
            identity,
            &paths.package,
            None,
            || read(&paths.digest, MAX_DIGEST_BYTES),
            || read(&paths.signature, MAX_SIGNATURE_BYTES),
            || read(&paths.provenance, MAX_PROVENANCE_BYTES),
            |what| format!("in the cache at {what}"),
            &urls,
        )
    }

    /// digest -> signature -> provenance, each sidecar taken (read from the cache, or the result of its
    /// download) and checked only when the previous check passed. `located` says where a missing
    /// sidecar was looked for. With trusted keys the digest is the one the provenance binds (its
    /// signature checked last, like everything it says) and the digest file is never taken.
    /// `sha256` is the package's digest when it was hashed as it downloaded; a cached package is
    /// hashed here.
    #[allow(clippy::too_many_arguments)]
    fn check(
        &self,
        driver: &DriverName,
        identity: &KernelIdentity,
        package: &Path,
        sha256: Option<Sha256Digest>,
        digest: impl FnOnce() -> Result<Sidecar>,
        signature: impl FnOnce() -> Result<Sidecar>,
        provenance: impl FnOnce() -> Result<Sidecar>,
        located: impl Fn(&str) -> String,
        urls: &ArtifactUrls,
    ) -> Result<Checked> {
        let file_name = identity.package_file_name(driver);
        let (keyring, policy) = match self.trust {
            TrustPolicy::Verify { keyring, policy } => (keyring, policy),
            TrustPolicy::InsecureSkipSignature => {
                let digest_text = digest()?.ok_or_else(|| {
                    LoaderError::verify(
                        &file_name,
                        format!(
                            "no digest file {}; refusing an unverifiable package",
                            located(&urls.digest)
                        ),
                    )
                })?;
                let sha256 = verify::verify_digest(package, sha256, &file_name, &digest_text)?;
                warn!(
                    package = file_name,
                    "--insecure-skip-signature: NOT checking the package signature nor its provenance; \
                     only the digest protects against corruption, nothing protects against a \
                     substituted package"
                );
                return Ok(Checked {
                    digest_text,
                    signature_text: None,
                    provenance_text: None,
                    sha256,
                    signature: None,
                    provenance: None,
                });
            }
            TrustPolicy::Missing { reason } => return Err(LoaderError::Config(reason.clone())),
        };
        // The digest the provenance binds is checked with the provenance, after the signature.
        let sha256 = verify::package_sha256(package, sha256)?;
        // The provenance's outcome is taken now (its claimed digest explains a refused signature)
        // but acted on only after the signature, so a failed fetch of it never hides a bad one.
        let provenance_text = provenance();
        let signature_text = signature()?.ok_or_else(|| {
            LoaderError::verify(
                &file_name,
                format!(
                    "the package is unsigned (no signature {}); refusing it",
                    located(&urls.signature)
                ),
            )
        })?;
        let signature = verify::verify_signature(keyring, package, &file_name, &signature_text)
            .map_err(|error| {
                let claimed = provenance_text.as_ref().ok().and_then(Option::as_deref);
                verify::with_digest_note(error, &sha256, claimed)
            })?;
        let provenance_name = identity.provenance_file_name(driver);
        let provenance_text = provenance_text?.ok_or_else(|| {
            LoaderError::provenance(
                &provenance_name,
                "envelope",
                format!(
                    "no provenance file {}; a package without verifiable provenance is refused",
                    located(&urls.provenance)
                ),
            )
        })?;
        let provenance = verify::verify_provenance(
            &provenance_text,
            &provenance_name,
            keyring,
            policy,
            driver,
            identity,
            &sha256,
        )?;
        verify::check_package_commit(package, &provenance_name, &provenance)?;
        Ok(Checked {
            // The cache keeps a digest file as the store publishes it, of the verified package:
            // `sha256sum -c` works there, and so does a later insecure run.
            digest_text: integrity::DigestFile::new(sha256, file_name.clone()).render(),
            signature_text: Some(signature_text),
            provenance_text: Some(provenance_text),
            sha256,
            signature: Some(signature),
            provenance: Some(provenance),
        })
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes)
        .map_err(|e| LoaderError::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| LoaderError::io(format!("writing {}", path.display()), e))
}

/// Shortest time between two status requests, whatever the service does with `wait`.
const MIN_STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Reads a `POST /build` answer as the type its HTTP status promises.
fn build_answer<T: serde::de::DeserializeOwned>(
    build_url: &str,
    status: u16,
    answer: serde_json::Value,
) -> Result<T> {
    T::deserialize(&answer).map_err(|e| {
        LoaderError::BuildService(format!(
            "POST {build_url} answered {status} with an unexpected body ({e}): {answer}"
        ))
    })
}

/// A `POST /build` answer that says no build will ever come for this request: 400 or 422 with the
/// API's error body (e.g. `driver_version` is not a tag of the driver's repository). Waiting or
/// retrying cannot help, unlike 401/403 (credentials) or 429 (later).
fn refusal(reason: &str) -> Option<LoaderError> {
    let rest = reason.strip_prefix("HTTP ")?;
    let (status, body) = rest.split_once(": ")?;
    let status: u16 = status.parse().ok()?;
    if !matches!(status, 400 | 422) {
        return None;
    }
    let body: build_api::ApiErrorBody = serde_json::from_str(body).ok()?;
    Some(LoaderError::BuildRefused {
        status,
        field: body.field.unwrap_or_else(|| "body".to_owned()),
        rule: body.rule,
    })
}

/// What asking for a build gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedBuild {
    /// The download URL the service announced, when it gave one.
    pub download_url: Option<String>,
    /// From sending `POST /build` to the build's end, when the service started (or joined) a build
    /// and the loader waited for it; `None` when it answered that the artifact already exists.
    pub waited: Option<Duration>,
}

/// `POST /build`, then long-poll `GET /status/{id}?wait=` until a final state.
pub fn request_build(
    client: &HttpClient,
    service: &BuildService,
    identity: &KernelIdentity,
    deadline: &Deadline,
) -> Result<RequestedBuild> {
    // Measured from before the request is sent: the node's wait includes the service's answer time.
    let asked_at = Instant::now();
    let root = service.url.trim_end_matches('/');
    let build_url = format!("{root}/build");
    let body = BuildRequest::from(identity);
    let (status, answer): (u16, serde_json::Value) = client
        .json(
            JsonMethod::Post(&body),
            &build_url,
            service.token.as_deref(),
            Duration::from_secs(60),
            deadline,
        )
        .map_err(|e| match e {
            LoaderError::Fetch { reason, .. } => refusal(&reason).unwrap_or_else(|| {
                LoaderError::BuildService(format!("POST {build_url}: {reason}"))
            }),
            other => other,
        })?;
    if status == 200 {
        let done: BuildDone = build_answer(&build_url, status, answer)?;
        info!("build service: artifact already exists");
        return Ok(RequestedBuild {
            download_url: Some(done.download_url),
            waited: None,
        });
    }
    let accepted: BuildAccepted = build_answer(&build_url, status, answer)?;
    let build_id = accepted.build_id;
    if build_id.is_empty() {
        return Err(LoaderError::BuildService(format!(
            "POST {build_url} answered {status} with an empty build_id (message: {:?})",
            accepted.message
        )));
    }
    info!(build_id, message = ?accepted.message, "build requested; waiting for it");
    loop {
        let remaining = deadline.remaining();
        if remaining.is_zero() {
            return Err(deadline.exceeded(&format!("waiting for build {build_id}")));
        }
        let wait = service.wait.min(remaining).as_secs().max(1);
        let status_url = format!(
            "{root}{}?wait={wait}",
            status_path(&percent_encode_segment(&build_id))
        );
        let asked = Instant::now();
        let (_, answer): (u16, BuildStatus) = client
            .json::<(), _>(
                JsonMethod::Get,
                &status_url,
                service.token.as_deref(),
                Duration::from_secs(wait + 30),
                deadline,
            )
            .map_err(|e| match e {
                LoaderError::Fetch { reason, .. } => {
                    LoaderError::BuildService(format!("GET {status_url}: {reason}"))
                }
                other => other,
            })?;
        match answer.status {
            BuildState::Done => {
                let waited = asked_at.elapsed();
                info!(
                    build_id,
                    waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                    "build done"
                );
                return Ok(RequestedBuild {
                    download_url: answer.download_url,
                    waited: Some(waited),
                });
            }
            BuildState::Queued | BuildState::InProgress => {
                info!(build_id, status = %answer.status, "build still running");
                // A service that ignores `wait` must not turn this loop into a busy poll.
                let floor = MIN_STATUS_INTERVAL.min(deadline.remaining());
                if let Some(rest) = floor.checked_sub(asked.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            BuildState::Error | BuildState::TimedOut => {
                return Err(LoaderError::BuildFailed {
                    build_id,
                    status: answer.status.to_string(),
                    reason: answer.error.unwrap_or_else(|| "no reason given".to_owned()),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernel_id::{Arch, Distribution, DistroVersion, DriverVersion, KernelRelease};

    fn identity(release: &str) -> KernelIdentity {
        KernelIdentity::new(
            KernelRelease::parse(release).expect("valid"),
            Arch::X86_64,
            DistroVersion::supported(Distribution::parse("debian").expect("valid"), "12")
                .expect("valid"),
            DriverVersion::parse("v0.1.2").expect("valid"),
        )
        .expect("valid")
    }

    #[test]
    fn an_invalid_request_is_a_refusal_with_its_field_and_nothing_else_is() {
        let body =
            r#"{"error":"x","field":"driver_version","rule":"v9.9.9 is not a tag of file:///r"}"#;
        let refused = refusal(&format!("HTTP 422: {body}")).expect("a refusal");
        assert_eq!(refused.kind(), crate::FailureKind::Build);
        assert!(
            refused
                .to_string()
                .contains("driver_version: v9.9.9 is not a tag of file:///r"),
            "{refused}"
        );
        for other in [
            format!("HTTP 401: {body}"),
            format!("HTTP 429: {body}"),
            "HTTP 422: not json".to_owned(),
            "connection refused".to_owned(),
        ] {
            assert!(refusal(&other).is_none(), "{other}");
        }
    }

    #[test]
    fn urls_follow_the_release_layout_and_encode_plus() {
        let driver = DriverName::parse("example-driver").expect("valid");
        let source = ArtifactSource {
            base_url: "http://127.0.0.1:9/releases/download/".to_owned(),
            layout: ReleaseLayout::PerArtifact,
            token: None,
            max_package_bytes: 1,
        };
        let id = identity("6.1.0-47-amd64");
        let urls = ArtifactUrls::new(&source, &driver, &id);
        assert_eq!(
            urls.package,
            format!(
                "http://127.0.0.1:9/releases/download/{}",
                ReleaseLayout::PerArtifact.package_path(&driver, &id)
            )
        );
        assert_eq!(urls.digest, format!("{}.sha256", urls.package));
        assert_eq!(urls.signature, format!("{}.minisig", urls.package));
        assert_eq!(urls.provenance, format!("{}.intoto.jsonl", urls.package));
        let plus = identity("6.12.43+deb12-amd64");
        let urls = ArtifactUrls::new(&source, &driver, &plus);
        assert!(urls.package.contains("%2Bdeb12"), "{}", urls.package);
    }

    #[test]
    fn announced_url_must_name_the_expected_package() {
        let name = "example-driver-debian-12-6.12.43+deb12-amd64_v0.1.2_amd64.deb";
        let good = format!(
            "http://h/releases/download/t/{}",
            percent_encode_segment(name)
        );
        let urls = ArtifactUrls::at_announced(&good, name).expect("matches");
        assert_eq!(urls.signature, format!("{good}.minisig"));
        assert_eq!(urls.provenance, format!("{good}.intoto.jsonl"));
        assert!(
            ArtifactUrls::at_announced("http://h/releases/download/t/other.deb", name).is_err()
        );
        assert!(
            ArtifactUrls::at_announced(&format!("file:///{}", percent_encode_segment(name)), name)
                .is_err()
        );
    }
}
